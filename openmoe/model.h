// File: openmoe/model.h
// The OpenMoE decoder over Kokkos Views (float32), written once for every backend.
//
//   h = embed[ids]                                                  // [T, H], T = B * S
//   per layer i:  h += Attn(RMSNorm_in(h))
//                 dense:  h += MLP(RMSNorm_post(h))
//                 MoE:    h += SparseMoE(RMSNorm_post(h)); h += ExtraMLP(RMSNorm_pre_extra(h))
//   logits = lm_head(RMSNorm_final(h))                              // [T, V]
// The quirks (no attention scaling, key 0 always visible, 2I-wide gate with SiLU on its second
// half, top-2 on probabilities with capacity and top-1-first queueing) live in //kernels.
//
//   OPENMOE_ASSIGN_OR_RETURN(auto model, OpenMoeModel<Kokkos::DefaultExecutionSpace>::Load(dir));
//   OPENMOE_ASSIGN_OR_RETURN(std::vector<float> logits, model.Logits(ids, mask, B, S, RoutingMode::kEval));
//
// Pipeline stages (LoadStage): each rank of a communicator holds consecutive layers (layer_range.h)
// and only their weights and KV cache; a step receives the hidden state [N, H] from the previous
// stage (or embeds the ids on the first), runs its layers and sends h to the next stage (or, on
// the last, runs the final norm and LM head). Every stage runs every step with the same ids.
#ifndef OPENMOE_MODEL_H_
#define OPENMOE_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "openmoe/checkpoint.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/comm/communicator.h"
#include "openmoe/config.h"
#include "openmoe/layer_range.h"
#include "openmoe/parameter_layout.h"
#include "kernels/execution_context.h"
#include "openmoe/decode_graph.h"
#include "openmoe/token_dispatcher.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/op_timer.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe {

// Eval routing uses router_capacity_factor_eval (2.0), train routing _train (1.25).
enum class RoutingMode { kEval, kTrain };

// Per MoE layer: capacity C, how many of the 2 * N assignments were kept, and the float32
// router logits [N, E] (for the router losses).
struct MoeLayerStats {
  int64_t layer    = 0;
  int64_t capacity = 0;
  int64_t kept     = 0;
  int64_t assigned = 0;
  std::vector<float> router_logits;  // [N, E]
};

// Keys and values of every layer the model holds (all of them, or a pipeline stage's [first, end):
// keys[i - first]) for incremental decoding. Keys are stored after RoPE (at
// their absolute column position, which is what re-rotating the un-rotated cache every step
// gives); the mask records which columns are real tokens.
template <class ExecSpace, class T>
struct KvCache {
  int64_t batch    = 0;  // B
  int64_t capacity = 0;  // S_max
  int64_t length   = 0;  // columns filled so far
  std::vector<Kokkos::View<T***, Kokkos::LayoutRight, typename ExecSpace::memory_space>> keys;    // L_held x [B, S_max, Nkv*Dh]
  std::vector<Kokkos::View<T***, Kokkos::LayoutRight, typename ExecSpace::memory_space>> values;  // L_held x [B, S_max, Nkv*Dh]
  Kokkos::View<int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> mask;           // [B, S_max]
};

// T is the run dtype of weights and activations: float or bf16 (float32 accumulation, float32
// softmax and router probabilities, float32 logits out).
template <class ExecSpace, class T = float>
class OpenMoeModel {
 public:
  using MemSpace = typename ExecSpace::memory_space;
  using Cache    = KvCache<ExecSpace, T>;

  // Reads config.json and the weights of `model_dir` (see CheckpointReader for the layouts).
  static absl::StatusOr<OpenMoeModel> Load(const std::string& model_dir);
  static absl::StatusOr<OpenMoeModel> FromCheckpoint(const OpenMoeConfig& config,
                                                     const CheckpointReader& reader);
  // Pipeline stage stages->rank() of stages->size() (PipelineStageLayers): checks the whole
  // checkpoint against the config, then allocates and reads only the stage's tensors. Steps are
  // collective over `stages` (blocking Send / Recv of h between neighbours, a broadcast of each
  // step's ids); decode graphs are off. One stage is the whole model. InvalidArgument naming
  // num_hidden_layers when there are more stages than layers.
  static absl::StatusOr<OpenMoeModel> LoadStage(const std::string& model_dir,
                                                std::shared_ptr<comm::Communicator<ExecSpace>> stages);
  // Random weights drawn on the device (uniform with the spec 2.6 standard deviations; norms 1):
  // for benchmarks at real shapes without a checkpoint on disk.
  static absl::StatusOr<OpenMoeModel> RandomInit(const OpenMoeConfig& config, uint64_t seed);
  // Bytes of weights in the run dtype (a pipeline stage: its own tensors only).
  int64_t WeightBytes() const;

  const OpenMoeConfig& config() const { return config_; }
  // The layers (and embedding / head) this model holds: WholeModel(config) unless LoadStage.
  const LayerRange& layers() const { return range_; }
  // Whether steps produce logits here: the whole model, or the last pipeline stage. Elsewhere Step
  // returns no logits (an empty vector) and StepGreedy B placeholder ids (0): the tokens are
  // chosen on the last stage and reach the others through ShareStepIds.
  bool holds_lm_head() const { return range_.head; }
  // Pipeline: the last stage's ids [B] replace every stage's `ids` (collective over the stages;
  // call it once per step on every stage). Without a pipeline: nothing.
  absl::Status ShareStepIds(std::vector<int64_t>& ids);

  // input_ids and attention_mask are row-major [B, S] (mask 1 = real token, 0 = padding).
  // Returns float32 logits [B, S, V] on the host. Errors name the flag-level input
  // (token id out of range, sequence too long, bad mask).
  absl::StatusOr<std::vector<float>> Logits(const std::vector<int64_t>& input_ids,
                                            const std::vector<int64_t>& attention_mask,
                                            int64_t batch, int64_t seq_len, RoutingMode mode,
                                            std::vector<MoeLayerStats>* stats = nullptr);

  // An empty cache for `batch` rows and up to `capacity` columns (<= max_position_embeddings).
  absl::StatusOr<Cache> NewCache(int64_t batch, int64_t capacity) const;

  // Appends [B, S] tokens to `cache` and runs them: the S*B new tokens form one routing group
  // (the prompt in prefill, the B new tokens of a decode step). Returns float32 logits
  // [B, S, V], or [B, 1, V] of the last new column when last_only.
  absl::StatusOr<std::vector<float>> Step(Cache& cache, const std::vector<int64_t>& input_ids,
                                          const std::vector<int64_t>& attention_mask, int64_t seq_len,
                                          RoutingMode mode, bool last_only,
                                          std::vector<MoeLayerStats>* stats = nullptr);

  // Step followed by greedy selection on the device: the first largest logit of each row's last
  // new column among ids < allowed_vocab (0 = all), as SelectToken's greedy path. Returns [B]
  // ids; the logits never leave the device.
  absl::StatusOr<std::vector<int64_t>> StepGreedy(Cache& cache, const std::vector<int64_t>& input_ids,
                                                  const std::vector<int64_t>& attention_mask, int64_t seq_len,
                                                  RoutingMode mode, int64_t allowed_vocab);

 private:
  // config_, range_, the parameter table, layout and offsets, and zeroed weights_ for the part
  // `range` of `config`.
  void AllocateWeights(const OpenMoeConfig& config, const LayerRange& range);
  // The weights at `offset` of the flat store as [rows, cols] / as a norm weight [H].
  ConstMatrix<T, ExecSpace> W(int64_t offset, int64_t rows, int64_t cols) const;
  Vector<T, ExecSpace> WV(int64_t offset) const;

  absl::Status Mlp(const kernels::ExecutionContext<ExecSpace>& ctx, const MlpOffsets& mlp, ConstMatrix<T, ExecSpace> x,
                   Matrix<T, ExecSpace> out);
  // Everything of Step but reading the results: the logits are left in the "logits" buffer;
  // *used_space is the instance the work was enqueued on.
  absl::Status RunStep(Cache& cache, const std::vector<int64_t>& input_ids,
                       const std::vector<int64_t>& attention_mask, int64_t seq_len, RoutingMode mode,
                       bool last_only, std::vector<MoeLayerStats>* stats, ExecSpace* used_space);
  // Whether this step runs as a replayed CUDA graph: bf16 decode steps on CUDA whose expert
  // queues have at most 16 rows (batches up to 128 with 32 experts at OpenMoE's eval capacity factor 2) and models
  // of at most 64 experts, not pipeline stages; OPENMOE_CUDA_GRAPHS=0 turns it off.
  bool UseDecodeGraph(int64_t batch, int64_t seq_len, RoutingMode mode, bool last_only,
                      const std::vector<MoeLayerStats>* stats);

  // Enqueues a whole step on `space`: mask append, layers, final norm and LM head into the
  // "logits" buffer (a pipeline stage: embedding or h from the previous stage, its layers, then h
  // to the next stage or the head). inputs = [ids (B*S) | mask (B*S) | position] on the device; with
  // device_position the kernels read the step's column from there (graph replay).
  absl::Status Forward(const kernels::ExecutionContext<ExecSpace>& ctx, Cache& cache, Vector<int64_t, ExecSpace> inputs, int64_t seq_len,
                       const int64_t* device_position, RoutingMode mode, bool last_only,
                       std::vector<MoeLayerStats>* stats);

 private:
  // Appends layer statistics (kept assignments, router logits) when `stats` is given.
  absl::Status RecordStats(int64_t layer, int64_t capacity, Matrix<T, ExecSpace> router_logits,
                           Matrix<int32_t, ExecSpace> rank, std::vector<MoeLayerStats>* stats);
  absl::Status SparseMoe(const kernels::ExecutionContext<ExecSpace>& ctx, int64_t layer, ConstMatrix<T, ExecSpace> x,
                         RoutingMode mode, Matrix<T, ExecSpace> out,
                         std::vector<MoeLayerStats>* stats);

  // Work buffers reused across calls (allocated once, grown when a call needs more, never
  // initialised): the decode loop then allocates nothing.
  template <class U>
  Kokkos::View<U*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> Buffer(const std::string& name, int64_t count);
  template <class U>
  Matrix<U, ExecSpace> Buffer2(const std::string& name, int64_t rows, int64_t cols);

  OpenMoeConfig config_;
  LayerRange range_;
  // Pipeline stages (LoadStage with more than one): rank = this stage; null otherwise.
  std::shared_ptr<comm::Communicator<ExecSpace>> stages_;
  // Every weight this model holds in one buffer [layout_.total()] at layout_'s offsets (parameter_layout.h): the
  // fused q/k/v and gate/up products are views of adjacent rows; offsets_ resolved at load.
  std::vector<TensorSpec> table_;
  ParameterLayout layout_;
  ModelOffsets offsets_;
  Vector<T, ExecSpace> weights_;
  std::map<std::string, Kokkos::View<char*, MemSpace>> workspace_;  // name -> bytes
  int64_t host_syncs_ = 0;  // named device->host syncs ("moe.expert_counts_to_host")
  uint64_t workspace_generation_ = 0;  // bumped when a work buffer is reallocated
  bool decode_graphs_ = true;
  bool cuda_graphs_env_ = true;
  DependentLaunch dependent_launch_ = DependentLaunch::kAll;  // OPENMOE_CUDA_GRAPHS is not "0" (read when the model is made)
  // The stream, scratch arena, tuning and cuBLAS handle of this model's ops (copies share them).
  // Inference rounds the 16-bit attention probabilities once (Tuning::split_16bit_probs).
  kernels::ExecutionContext<ExecSpace> context_ = [] {
    kernels::ExecutionContext<ExecSpace> context;
    context.tuning().split_16bit_probs = false;
    return context;
  }();
  // The dispatch path's token movement: every expert on this device by default; set_token_dispatcher
  // installs another (expert-parallel inference: this rank runs only the dispatcher's local experts).
  std::shared_ptr<TokenDispatcher<ExecSpace>> dispatcher_ = std::make_shared<SingleRankDispatcher<ExecSpace>>();
  bool dispatch_every_step_ = false;  // set by set_token_dispatcher
  std::shared_ptr<DecodeGraphs<ExecSpace>> graphs_;  // created on the first graphed step

 public:
  // Device->host synchronisations so far (expert token counts: one per MoE layer in steps of more
  // than 4 tokens; decode steps take the grouped-expert path and have none).
  int64_t host_syncs() const { return host_syncs_; }
  // Decode steps as replayed CUDA graphs (on by default where supported; see UseDecodeGraph).
  void set_decode_graphs(bool enabled) { decode_graphs_ = enabled; }
  // Installs the dispatch path's token movement, e.g. an expert-sharded dispatcher from parallel/
  // whose Dispatch / Combine are collective over its ranks. From then on every MoE layer of every
  // step takes the dispatch path (the grouped-expert decode path of steps of <= 4 tokens, which
  // would run all experts locally, is off), the experts run are the dispatcher's local ones
  // [first_local_expert(), + local_experts(E)), and decode graphs are off. The default model
  // (SingleRankDispatcher, nothing installed) is unchanged.
  void set_token_dispatcher(std::shared_ptr<TokenDispatcher<ExecSpace>> dispatcher) {
    dispatcher_ = std::move(dispatcher);
    dispatch_every_step_ = true;
  }
  // Which edges of the decode graphs become programmatic (kAll by default; decode_graph.h). Takes
  // effect at the next graphed step: the mode is in the graph key, so a change captures anew.
  void set_dependent_launch(DependentLaunch mode) { dependent_launch_ = mode; }
  // What the decode graphs did so far: graph launches (0 where steps ran directly), and the
  // conditional expert branches of the graph captured last.
  int64_t decode_graph_launches() const { return graphs_ ? graphs_->launches() : 0; }
  int64_t decode_graph_conditional_branches() const { return graphs_ ? graphs_->conditional_branches() : 0; }
  static constexpr bool kDecodeGraphsSupported = DecodeGraphs<ExecSpace>::kSupported;
  // The context the model's ops run with: benchmarks and tests set its tuning().
  const kernels::ExecutionContext<ExecSpace>& context() const { return context_; }
  // Per-phase times of Step when OPENMOE_PROFILE is set (see op_timer.h).
  OpTimer& profile() { return profile_; }

 private:
  OpTimer profile_;
};

// Checks ids/mask/shape against the config; used before any kernel runs.
absl::Status ValidateInputs(const OpenMoeConfig& config, const std::vector<int64_t>& input_ids,
                            const std::vector<int64_t>& attention_mask, int64_t batch,
                            int64_t seq_len);

}  // namespace openmoe

#endif  // OPENMOE_MODEL_H_
