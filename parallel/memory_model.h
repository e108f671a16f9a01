// File: parallel/memory_model.h
// GPU memory of distributed training on paper: which parameters each rank of a Colossal-AI
// plugin (ep, ep_zero, hybrid) holds, and the bytes of its bf16 weights, fp32 master weights,
// fp32 gradients, AdamW moments and activations, for a model config at a micro-batch shape.
// The numbers follow what the trainer stores today (openmoe/trainable_model.h: fp32 master +
// fp32 gradients + a 16-bit working copy, one flat buffer each; openmoe/train/optimizer.h: two
// fp32 moments) and the activations trainable_model.cc keeps per layer; docs/parallel.md states
// every formula and //tools:memory_table prints the table for the presets.
//
//   ParallelPlan plan{Plugin::kEpZero, /*world=*/8, /*zero_stage=*/1, /*extra_dp=*/2};
//   OPENMOE_ASSIGN_OR_RETURN(RankMemory m, PeakRankMemory(config, plan, ActivationShape{}));
//   m.total()   // bytes on the fullest rank
#ifndef PARALLEL_MEMORY_MODEL_H_
#define PARALLEL_MEMORY_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "openmoe/config.h"

namespace openmoe::parallel {

// Parameters of a part of the model, by how the plugins place them.
struct ParameterSplit {
  int64_t dense = 0;   // on every EP rank (data parallel): embedding, attention, norms, dense and extra MLPs, routers, lm_head
  int64_t expert = 0;  // stacked experts (`.experts.` tensors): split over the EP group
  // The largest single tensor (elements) of each kind, for experts one expert's slice of a
  // stacked tensor: ZeRO-2 forms such a gradient whole before reduce-scattering it.
  int64_t largest_dense = 0, largest_expert = 0;
};

struct ModelParameters {
  ParameterSplit embedding;            // model.embed_tokens (pipeline stage 0)
  std::vector<ParameterSplit> layers;  // model.layers.i.*
  ParameterSplit head;                 // model.norm + lm_head (the last pipeline stage)
  int64_t Dense() const;
  int64_t Expert() const;
};
// Counted from openmoe::CheckpointTable(config), the tensors the trainer allocates.
ModelParameters CountModelParameters(const OpenMoeConfig& config);

enum class Plugin { kEp, kEpZero, kHybrid };
const char* PluginName(Plugin plugin);  // "ep", "ep_zero", "hybrid" (train.py's --plugin)

struct ParallelPlan {
  Plugin plugin = Plugin::kEp;
  int64_t world = 1;
  int64_t zero_stage = 1;  // 0, 1 (fp32 master + moments sharded) or 2 (+ gradients sharded)
  int64_t extra_dp = 1;    // ep_zero: k, the replicas of each expert (upstream --extra_dp_size)
  int64_t pp = 1, ep = 1, dp = 1;  // hybrid: stages, EP size, expert-replica DP (pp * ep * dp = world)
};

// The process-group sizes of a plan, the same on every rank.
struct Mesh {
  int64_t pp = 1;         // pipeline stages
  int64_t ep = 1;         // ranks an MoE layer's experts are split over (E / ep experts each)
  int64_t expert_dp = 1;  // replicas of each expert: its gradient all-reduce / ZeRO group
  int64_t dense_dp = 1;   // replicas of each dense parameter: its gradient all-reduce / ZeRO group
};
// ep: ep = world, expert_dp 1, dense_dp world. ep_zero: ep = world / k, expert_dp k, dense_dp
// world. hybrid: pp, ep, expert_dp = dp, dense_dp = ep * dp. Errors say which size does not
// divide (experts over ep, world over the mesh, layers over stages) and refuse ZeRO-2 with a
// pipeline (upstream allows ZeRO <= 1 there).
absl::StatusOr<Mesh> MakeMesh(const ParallelPlan& plan, const OpenMoeConfig& config);

// One rank's micro-batch.
struct ActivationShape {
  int64_t batch = 1, seq_len = 2048;
  int64_t compute_bytes = 2;  // bf16 activations and working weights
  bool recompute = false;     // --grad_checkpoint: keep each layer's input only
};

// Training capacity per expert (kernels::ExpertCapacity's rule, restated here without Kokkos):
// floor(K * cf_train * tokens / E), rounded up to even, at least router_min_capacity.
int64_t TrainingCapacity(const OpenMoeConfig& config, int64_t tokens);
// Bytes a layer keeps from its forward pass for its backward pass (one micro-batch, no
// recomputation): trainable_model.cc's Layer. With expert parallelism each rank's local experts
// receive ep x (E / ep) x C = E x C rows, as many as one device running all experts.
int64_t KeptLayerBytes(const OpenMoeConfig& config, int64_t layer, const ActivationShape& shape);
// Largest temporary working set of the layer's backward pass (the attention, MLP or expert
// block's float32 gradients and converted copies); `expert_parallel` adds the all-to-all buffer.
int64_t LayerWorkspaceBytes(const OpenMoeConfig& config, int64_t layer, const ActivationShape& shape,
                            bool expert_parallel);
// The LM head and loss, a chunk of 256 rows at a time.
int64_t HeadWorkspaceBytes(const OpenMoeConfig& config, const ActivationShape& shape);
// CUDA attention's GEMM scratch (kernels/attention_gemm.cc; the execution context keeps it
// between steps): scores, 16-bit probabilities (two halves) and score gradients of a chunk of at
// most 64 Mi scores, and P.V's float32 chunk.
int64_t AttentionScratchBytes(const OpenMoeConfig& config, const ActivationShape& shape);

struct RankMemory {
  int64_t weights = 0;      // 16-bit working copy of every parameter the rank computes with
  int64_t master = 0;       // fp32 master weights (ZeRO >= 1: this rank's shard)
  int64_t grads = 0;        // fp32 gradients (ZeRO 2: the shard + one whole tensor in flight)
  int64_t moments = 0;      // AdamW m and v, fp32 (ZeRO >= 1: the shard)
  int64_t activations = 0;  // kept activations of the micro-batches in flight + workspace
  int64_t total() const { return weights + master + grads + moments + activations; }
  int64_t stage = 0;                 // pipeline stage of this rank
  std::vector<int64_t> stage_layers;  // layers per stage (one entry without a pipeline)
};

// A rank of pipeline stage `stage` of `mesh`, holding layers [first_layer, end_layer) (plus the
// embedding on stage 0 and the head on the last). 1F1B keeps pp - stage micro-batches in flight
// on it (at least pp micro-batches per step assumed).
RankMemory StageMemory(const OpenMoeConfig& config, const ModelParameters& params, const ParallelPlan& plan,
                       const Mesh& mesh, int64_t stage, int64_t first_layer, int64_t end_layer,
                       const ActivationShape& shape);
// The fullest rank of the plan. Pipelines take the contiguous split of the layers into stages
// whose fullest stage is smallest.
absl::StatusOr<RankMemory> PeakRankMemory(const OpenMoeConfig& config, const ParallelPlan& plan,
                                          const ActivationShape& shape);

}  // namespace openmoe::parallel

#endif  // PARALLEL_MEMORY_MODEL_H_
