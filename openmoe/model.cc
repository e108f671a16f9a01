#include "openmoe/model.h"

#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <type_traits>


#include "absl/strings/str_cat.h"
#include "kernels/argmax.h"
#include "kernels/attention.h"
#include "kernels/execution_context.h"
#include "kernels/elementwise.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "kernels/rms_norm.h"
#include "openmoe/blocks.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/parameter_store.h"
#include "openmoe/core/execution_spaces.h"
#include "openmoe/core/status_macros.h"

namespace openmoe {
namespace {
// Steps of at most this many tokens (decode steps of small batches) run the experts straight from
// their weights (GroupedExpertProduct, no host sync) instead of dispatch + per-expert GEMMs, and
// can be replayed as graphs. (16 measured 2x slower at batch 16 on the H200: more tokens share
// an expert than one pass of GroupedExpertProduct serves well.)
constexpr int64_t kDecodeTokens = 4;
// Larger steps dispatch the tokens into expert queues of C rows. Up to this many rows a product
// reads the expert's weights once whatever its row count, so an expert in use multiplies its whole
// queue; the kernels are then the same in every such step, and a decode graph can run them in
// conditional branches, one per expert, that only the experts in use take (no host sync).
constexpr int64_t kWholeQueueRows = 16;
// cuBLAS workspace of each expert's products when they multiply whole queues (branches run at the
// same time, so each has its own).
constexpr int64_t kExpertWorkspaceBytes = int64_t(4) << 20;

#if defined(KOKKOS_ENABLE_CUDA)
constexpr int64_t kMaxConditionalExperts = kernels::kMaxExpertConditions;
#else
constexpr int64_t kMaxConditionalExperts = 0;
#endif

// The step's mask values new_mask [B, S] (device memory) into the cache's mask [B, capacity] at
// columns L0 + s, or *device_position + s when given (read on the device: graph replay).
template <class ExecSpace>
void AppendMask(const ExecSpace& space, Kokkos::View<int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> mask,
                const int64_t* new_mask, int64_t N, int64_t S, int64_t L0, const int64_t* device_position) {
  kernels::DependentParallelFor(
      "openmoe::model::AppendMask", Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>>(space, 0, N),
      KOKKOS_LAMBDA(const int64_t i) {
        const int64_t column = (device_position != nullptr ? *device_position : L0) + i % S;
        mask(i / S, column) = new_mask[i];
      });
}

// As ReadParameters for one pipeline stage: checks the whole checkpoint against the config's table
// (ReadParameters' check of the stage's table alone would refuse the other stages' tensors), then
// reads the stage's tensors `part` into their slots of `flat` [layout.total()], one at a time.
template <class T, class ExecSpace>
absl::Status ReadStageParameters(const CheckpointReader& reader, const OpenMoeConfig& config,
                                 const std::vector<TensorSpec>& part, const ParameterLayout& layout,
                                 Vector<T, ExecSpace> flat) {
  OPENMOE_RETURN_IF_ERROR(reader.Validate(CheckpointTable(config)));
  std::vector<float> staging;  // one tensor as float
  std::vector<T> rounded;      // the same in T
  for (const TensorSpec& spec : part) {
    const ParameterSlot& slot = layout.slot(spec.name);
    staging.resize(slot.numel), rounded.resize(slot.numel);
    OPENMOE_RETURN_IF_ERROR(reader.ReadAsFloat(spec.name, staging.data(), slot.numel));
    for (int64_t i = 0; i < slot.numel; ++i) rounded[i] = FromFloat<T>(staging[i]);
    Kokkos::deep_copy(Vector<T, ExecSpace>(flat.data() + slot.offset, slot.numel),
                      Kokkos::View<const T*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(rounded.data(), slot.numel));
  }
  return absl::OkStatus();
}

// head_in [B, H] = the last of each row's S columns of h [B*S, H].
template <class T, class ExecSpace>
void GatherLastColumn(const ExecSpace& space, Matrix<T, ExecSpace> h, int64_t S, Matrix<T, ExecSpace> head_in) {
  const int64_t H = h.extent(1);
  kernels::DependentParallelFor(
      "openmoe::model::GatherLastColumn",
      Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>>(space, 0, int64_t(head_in.extent(0)) * H),
      KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t b = idx / H, j = idx % H;
        head_in(b, j) = h(b * S + S - 1, j);
      });
}
}  // namespace


absl::Status ValidateInputs(const OpenMoeConfig& config, const std::vector<int64_t>& input_ids,
                            const std::vector<int64_t>& attention_mask, int64_t batch,
                            int64_t seq_len) {
  if (batch <= 0 || seq_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("input_ids must be a non-empty [B, S] tensor, got [",
                                                   batch, ", ", seq_len, "]"));
  }
  if (seq_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input_ids: sequence length ", seq_len, " exceeds the model's max_position_embeddings ",
        config.max_position_embeddings));
  }
  if (int64_t(input_ids.size()) != batch * seq_len || int64_t(attention_mask.size()) != batch * seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("input_ids and attention_mask must both hold B*S = ",
                                                   batch * seq_len, " values"));
  }
  for (int64_t i = 0; i < batch * seq_len; ++i) {
    if (input_ids[i] < 0 || input_ids[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("input_ids[", i / seq_len, ", ", i % seq_len, "] = ",
                                                     input_ids[i], " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
    if (attention_mask[i] != 0 && attention_mask[i] != 1) {
      return absl::InvalidArgumentError(absl::StrCat("attention_mask[", i / seq_len, ", ", i % seq_len,
                                                     "] = ", attention_mask[i], " must be 0 or 1"));
    }
  }
  return absl::OkStatus();
}

template <class ExecSpace, class T>
absl::StatusOr<OpenMoeModel<ExecSpace, T>> OpenMoeModel<ExecSpace, T>::Load(const std::string& model_dir) {
  OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig config, LoadConfig(model_dir + "/config.json"));
  OPENMOE_ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(model_dir));
  return FromCheckpoint(config, reader);
}

template <class ExecSpace, class T>
absl::StatusOr<OpenMoeModel<ExecSpace, T>> OpenMoeModel<ExecSpace, T>::LoadStage(
    const std::string& model_dir, std::shared_ptr<comm::Communicator<ExecSpace>> stages) {
  if (stages == nullptr) return absl::InvalidArgumentError("OpenMoeModel::LoadStage: no communicator");
  OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig config, LoadConfig(model_dir + "/config.json"));
  OPENMOE_ASSIGN_OR_RETURN(const LayerRange range, PipelineStageLayers(config, stages->rank(), stages->size()));
  OPENMOE_ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(model_dir));
  OpenMoeModel model;
  model.AllocateWeights(config, range);
  OPENMOE_RETURN_IF_ERROR((ReadStageParameters<T, ExecSpace>(reader, config, model.table_, model.layout_, model.weights_)));
  if (stages->size() > 1) model.stages_ = std::move(stages);
  return model;
}

template <class ExecSpace, class T>
void OpenMoeModel<ExecSpace, T>::AllocateWeights(const OpenMoeConfig& config, const LayerRange& range) {
  config_  = config;
  range_   = range;
  table_   = StageCheckpointTable(config, range);  // CheckpointTable(config) for the whole model
  layout_  = ParameterLayout(table_);
  offsets_ = ResolveModelOffsets(layout_, config, range);
  weights_ = Vector<T, ExecSpace>("weights", layout_.total());  // zero: the gaps stay 0
  const char* graphs = std::getenv("OPENMOE_CUDA_GRAPHS");
  cuda_graphs_env_ = graphs == nullptr || std::string(graphs) != "0";
}

template <class ExecSpace, class T>
absl::StatusOr<OpenMoeModel<ExecSpace, T>> OpenMoeModel<ExecSpace, T>::FromCheckpoint(
    const OpenMoeConfig& config, const CheckpointReader& reader) {
  OpenMoeModel model;
  model.AllocateWeights(config, WholeModel(config));
  OPENMOE_RETURN_IF_ERROR((ReadParameters<T, ExecSpace>(reader, model.table_, model.layout_, model.weights_)));
  return model;
}

template <class ExecSpace, class T>
absl::StatusOr<OpenMoeModel<ExecSpace, T>> OpenMoeModel<ExecSpace, T>::RandomInit(const OpenMoeConfig& config,
                                                                                uint64_t seed) {
  OPENMOE_RETURN_IF_ERROR(ValidateConfig(config, "RandomInit"));
  OpenMoeModel model;
  model.AllocateWeights(config, WholeModel(config));
  InitializeParameters<T, ExecSpace>(ExecSpace(), config, model.table_, model.layout_, seed, model.weights_);
  Kokkos::fence();
  return model;
}

template <class ExecSpace, class T>
int64_t OpenMoeModel<ExecSpace, T>::WeightBytes() const {
  int64_t bytes = 0;  // the tensors', not the alignment gaps'
  for (const ParameterSlot& slot : layout_.slots()) bytes += slot.numel * int64_t(sizeof(T));
  return bytes;
}

template <class ExecSpace, class T>
template <class U>
Kokkos::View<U*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>
OpenMoeModel<ExecSpace, T>::Buffer(const std::string& name, int64_t count) {
  Kokkos::View<char*, MemSpace>& bytes = workspace_[name];
  const size_t need = size_t(count) * sizeof(U);
  if (bytes.extent(0) < need) {
    ++workspace_generation_;  // captured decode graphs point at the old buffer
    bytes = Kokkos::View<char*, MemSpace>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "workspace." + name),
                                          std::max(need, bytes.extent(0) * 2));
  }
  return Kokkos::View<U*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(reinterpret_cast<U*>(bytes.data()), count);
}

template <class ExecSpace, class T>
template <class U>
Matrix<U, ExecSpace> OpenMoeModel<ExecSpace, T>::Buffer2(const std::string& name, int64_t rows, int64_t cols) {
  return Matrix<U, ExecSpace>(Buffer<U>(name, rows * cols).data(), rows, cols);
}

template <class ExecSpace, class T>
ConstMatrix<T, ExecSpace> OpenMoeModel<ExecSpace, T>::W(int64_t offset, int64_t rows, int64_t cols) const {
  return ConstMatrix<T, ExecSpace>(weights_.data() + offset, rows, cols);
}

template <class ExecSpace, class T>
Vector<T, ExecSpace> OpenMoeModel<ExecSpace, T>::WV(int64_t offset) const {
  return Vector<T, ExecSpace>(weights_.data() + offset, config_.hidden_size);
}

template <class ExecSpace, class T>
absl::Status OpenMoeModel<ExecSpace, T>::Mlp(const kernels::ExecutionContext<ExecSpace>& ctx, const MlpOffsets& mlp,
                                          ConstMatrix<T, ExecSpace> x,
                                          Matrix<T, ExecSpace> out) {
  const auto& space = ctx.space();
  const int64_t N = x.extent(0), H = config_.hidden_size, I = config_.intermediate_size;
  Matrix<T, ExecSpace> gate_up = Buffer2<T>("mlp.gate_up", N, 3 * I);  // [N, 3I] = [g1 | g2 | up]
  Matrix<T, ExecSpace> act     = Buffer2<T>("mlp.act", N, I);          // [N, I]
  return DenseMlpForward<T>(ctx, x, W(mlp.gate_up, 3 * I, H), W(mlp.down, H, I), gate_up, act, out);
}

template <class ExecSpace, class T>
absl::Status OpenMoeModel<ExecSpace, T>::RecordStats(int64_t layer, int64_t C, Matrix<T, ExecSpace> router_logits,
                                                  Matrix<int32_t, ExecSpace> rank,
                                                  std::vector<MoeLayerStats>* stats) {
  const int64_t N = router_logits.extent(0), E = router_logits.extent(1);
  if (stats != nullptr) {  // named host sync: only when statistics are asked for
    auto rank_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rank);
    MoeLayerStats s{layer, C, 0, 2 * N, {}};
    for (int64_t t = 0; t < N; ++t)
      for (int k = 0; k < 2; ++k) s.kept += rank_host(t, k) < C;
    auto logits_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), router_logits);
    s.router_logits.resize(N * E);
    for (int64_t i = 0; i < N * E; ++i) s.router_logits[i] = ToFloat(logits_host.data()[i]);
    stats->push_back(std::move(s));
  }
  return absl::OkStatus();
}

template <class ExecSpace, class T>
absl::Status OpenMoeModel<ExecSpace, T>::SparseMoe(const kernels::ExecutionContext<ExecSpace>& ctx, int64_t layer,
                                                ConstMatrix<T, ExecSpace> x, RoutingMode mode,
                                                Matrix<T, ExecSpace> out,
                                                std::vector<MoeLayerStats>* stats) {
  const auto& space = ctx.space();
  const int64_t N = x.extent(0), H = config_.hidden_size, I = config_.intermediate_size;
  const int64_t E = config_.num_experts;
  const LayerOffsets& lo = offsets_.layers[layer];
  // Router: float32 logits and probabilities, top-2, queue ranks.
  Matrix<T, ExecSpace> router_logits = Buffer2<T>("moe.router_logits", N, E);  // [N, E]
  Matrix<float, ExecSpace> probs      = Buffer2<float>("moe.probs", N, E);     // [N, E] float32
  Matrix<int32_t, ExecSpace> experts  = Buffer2<int32_t>("moe.experts", N, 2); // [N, 2]
  Matrix<int32_t, ExecSpace> rank     = Buffer2<int32_t>("moe.rank", N, 2);    // [N, 2]
  const double cf = mode == RoutingMode::kEval ? config_.router_capacity_factor_eval
                                               : config_.router_capacity_factor_train;
  OPENMOE_ASSIGN_OR_RETURN(const int64_t C, RouteTokens<T>(ctx, x, W(lo.router, E, H), cf,
                                                           config_.router_min_capacity, router_logits, probs, experts,
                                                           rank));

  const T* wi_gate = weights_.data() + lo.wi_gate;  // [E, H, 2I]
  const T* wi_up   = weights_.data() + lo.wi_up;    // [E, H, I]
  const T* wo      = weights_.data() + lo.wo;       // [E, I, H]
  if (!dispatch_every_step_ && N <= kDecodeTokens && kernels::GroupedExpertShapesFit(wi_gate, 2 * I) &&
      kernels::GroupedExpertShapesFit(wi_up, I) && kernels::GroupedExpertShapesFit(wo, H)) {
    // A decode step: each kept assignment a = 2 t + k runs through its expert's weights directly,
    // no dispatch buffer and no host round trip (so the step can be captured as a CUDA graph).
    const int64_t A = 2 * N;
    auto partials = [&](const char* name, int64_t inner, int64_t cols) {
      const int64_t splits = kernels::GroupedExpertSplits(A, inner, cols, kernels::Pack<T>::kSize);
      return kernels::Partials<ExecSpace>(Buffer<float>(name, splits * A * cols).data(), splits, A, cols);
    };
    auto gate_partial = partials("moe.gate_partial", H, 2 * I);  // [splits, A, 2I]
    auto up_partial   = partials("moe.up_partial", H, I);        // [splits, A, I]
    auto out_partial  = partials("moe.out_partial", I, H);       // [splits, A, H]
    Matrix<T, ExecSpace> act = Buffer2<T>("moe.act", A, I);      // [A, I]
    OPENMOE_RETURN_IF_ERROR(kernels::GroupedExpertProduct<T>(space, x, true, experts, rank, C, wi_gate, E, gate_partial));
    OPENMOE_RETURN_IF_ERROR(kernels::GroupedExpertProduct<T>(space, x, true, experts, rank, C, wi_up, E, up_partial));
    OPENMOE_RETURN_IF_ERROR(kernels::SwigluFromPartials<T>(space, gate_partial, up_partial, act));
    OPENMOE_RETURN_IF_ERROR(kernels::GroupedExpertProduct<T>(space, ConstMatrix<T, ExecSpace>(act), false, experts,
                                                             rank, C, wo, E, out_partial));
    OPENMOE_RETURN_IF_ERROR(kernels::CombineFromPartials<T>(space, out_partial, probs, experts, rank, C, out));
    profile_.Mark(space, "moe.experts");
    return RecordStats(layer, C, router_logits, rank, stats);
  }

  // Dispatch -> experts (x @ W per expert on its R rows) -> combine. This rank runs the
  // dispatcher's local experts [first, first + EL): all E with the default SingleRankDispatcher
  // (R = C), E/P under an installed expert-sharded dispatcher.
  const int64_t first = dispatcher_->first_local_expert(), EL = dispatcher_->local_experts(E);
  const int64_t R = dispatcher_->rows_per_expert(C);
  Matrix<T, ExecSpace> dispatched = Buffer2<T>("moe.dispatched", EL * R, H);  // [EL*R, H]
  Matrix<T, ExecSpace> gate       = Buffer2<T>("moe.gate", EL * R, 2 * I);    // [EL*R, 2I]
  Matrix<T, ExecSpace> up         = Buffer2<T>("moe.up", EL * R, I);          // [EL*R, I]
  Matrix<T, ExecSpace> act        = Buffer2<T>("moe.act", EL * R, I);         // [EL*R, I]
  Matrix<T, ExecSpace> expert_out = Buffer2<T>("moe.expert_out", EL * R, H);  // [EL*R, H]
  profile_.Mark(space, "moe.router");
  OPENMOE_RETURN_IF_ERROR(dispatcher_->Dispatch(space, x, experts, rank, C, dispatched));
  profile_.Mark(space, "moe.dispatch+combine");
  // Whole queues only where decode graphs exist (CUDA); host backends multiply the rows in use.
  const bool whole_queues = kIsCuda<ExecSpace> && R <= kWholeQueueRows;
  char* workspaces = whole_queues ? Buffer<char>("moe.expert_workspaces", EL * kExpertWorkspaceBytes).data() : nullptr;
  // Local expert e (global first + e) on the first `rows` rows of its queue: act = swiglu(x W_gate,
  // x W_up), out = act W_o.
  auto run_expert = [&](int64_t e, int64_t rows, const ExecSpace& on) -> absl::Status {
    const int64_t g = first + e;  // the expert's index in the stacked weights
#if defined(KOKKOS_ENABLE_CUDA)
    // Branches run at the same time: each expert's products get a cuBLAS workspace of their own.
    const kernels::ExecutionContext<ExecSpace> on_ctx =
        workspaces != nullptr ? ctx.OnStream(on, workspaces + e * kExpertWorkspaceBytes, size_t(kExpertWorkspaceBytes))
                              : ctx.OnStream(on);
#else
    const kernels::ExecutionContext<ExecSpace> on_ctx = ctx.OnStream(on);
#endif
    const auto range = std::make_pair(e * R, e * R + rows);
    Matrix<T, ExecSpace> in_e   = Kokkos::subview(dispatched, range, Kokkos::ALL);
    Matrix<T, ExecSpace> gate_e = Kokkos::subview(gate, range, Kokkos::ALL);
    Matrix<T, ExecSpace> up_e   = Kokkos::subview(up, range, Kokkos::ALL);
    Matrix<T, ExecSpace> act_e  = Kokkos::subview(act, range, Kokkos::ALL);
    Matrix<T, ExecSpace> out_e  = Kokkos::subview(expert_out, range, Kokkos::ALL);
    return ExpertForward<T>(on_ctx, ConstMatrix<T, ExecSpace>(in_e), ConstMatrix<T, ExecSpace>(wi_gate + g * H * 2 * I, H, 2 * I),
                            ConstMatrix<T, ExecSpace>(wi_up + g * H * I, H, I), ConstMatrix<T, ExecSpace>(wo + g * I * H, I, H),
                            gate_e, up_e, act_e, out_e);
  };
  if (graphs_ != nullptr && graphs_->capturing() && whole_queues) {
    // A decode step being captured: one conditional branch per expert, taken when the expert
    // holds a kept assignment (set on the GPU), all branches in parallel.
#if defined(KOKKOS_ENABLE_CUDA)
    if constexpr (kIsCuda<ExecSpace>) {
      OPENMOE_ASSIGN_OR_RETURN(std::vector<uint64_t> conditions, graphs_->NewConditions(E));
      OPENMOE_RETURN_IF_ERROR(kernels::SetExpertConditions(space, experts, rank, C, conditions));
      OPENMOE_RETURN_IF_ERROR(graphs_->EnqueueConditionalBranches(
          conditions, [&](int64_t e, const ExecSpace& branch) { return run_expert(e, C, branch); }));
    }
#endif
  } else {
    // Named host sync "moe.expert_counts_to_host": how many rows each expert really holds, so that
    // idle experts cost nothing (a decode step of B tokens touches at most 2B of E experts).
    auto experts_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), experts);
    ++host_syncs_;
    std::vector<int64_t> rows_used(E, 0);  // min(assignments, C) per expert
    for (int64_t t = 0; t < N; ++t)
      for (int k = 0; k < 2; ++k) ++rows_used[experts_host(t, k)];
    for (int64_t& r : rows_used) r = std::min(r, C);
    profile_.Mark(space, "moe.host_sync");
    for (int64_t e = 0; e < EL; ++e) {
      // R > C (queues holding other ranks' tokens too): their counts are not known here, all R rows.
      const int64_t rows = whole_queues || R != C ? R : rows_used[first + e];
      if (R != C || rows_used[first + e] > 0) OPENMOE_RETURN_IF_ERROR(run_expert(e, rows, space));
    }
  }
  profile_.Mark(space, "moe.experts");
  OPENMOE_RETURN_IF_ERROR(dispatcher_->Combine(space, ConstMatrix<T, ExecSpace>(expert_out), probs, experts, rank, C, out));
  profile_.Mark(space, "moe.dispatch+combine");

  return RecordStats(layer, C, router_logits, rank, stats);
}

template <class ExecSpace, class T>
absl::StatusOr<std::vector<float>> OpenMoeModel<ExecSpace, T>::Logits(
    const std::vector<int64_t>& input_ids, const std::vector<int64_t>& attention_mask, int64_t B,
    int64_t S, RoutingMode mode, std::vector<MoeLayerStats>* stats) {
  OPENMOE_RETURN_IF_ERROR(ValidateInputs(config_, input_ids, attention_mask, B, S));
  OPENMOE_ASSIGN_OR_RETURN(Cache cache, NewCache(B, S));
  return Step(cache, input_ids, attention_mask, S, mode, /*last_only=*/false, stats);
}

template <class ExecSpace, class T>
absl::StatusOr<KvCache<ExecSpace, T>> OpenMoeModel<ExecSpace, T>::NewCache(int64_t batch,
                                                                          int64_t capacity) const {
  if (batch <= 0 || capacity <= 0 || capacity > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache of ", batch, " rows x ", capacity, " columns: need batch > 0 and 0 < columns <= ",
        "max_position_embeddings (", config_.max_position_embeddings, ")"));
  }
  Cache cache;
  cache.batch = batch, cache.capacity = capacity;
  const int64_t width = config_.num_key_value_heads * config_.head_dim;
  for (int64_t i = range_.first; i < range_.end; ++i) {  // keys[i - first]
    cache.keys.emplace_back(absl::StrCat("kv.keys.", i), batch, capacity, width);
    cache.values.emplace_back(absl::StrCat("kv.values.", i), batch, capacity, width);
  }
  cache.mask = decltype(cache.mask)("kv.mask", batch, capacity);
  return cache;
}

template <class ExecSpace, class T>
bool OpenMoeModel<ExecSpace, T>::UseDecodeGraph(int64_t B, int64_t S, RoutingMode mode, bool last_only,
                                                const std::vector<MoeLayerStats>* stats) {
  if (!DecodeGraphs<ExecSpace>::kSupported || !std::is_same_v<T, bf16> || S != 1 || !last_only ||
      stats != nullptr || !decode_graphs_ || dispatch_every_step_ || stages_ != nullptr) {
    return false;
  }
  // MoE layers take the grouped-expert path (steps of <= kDecodeTokens tokens whose expert
  // weights fit it) or the dispatch path, whose experts run in conditional branches while the
  // step is captured: that needs whole queues and a condition per expert.
  const double cf = mode == RoutingMode::kEval ? config_.router_capacity_factor_eval
                                               : config_.router_capacity_factor_train;
  const int64_t C = kernels::ExpertCapacity(B * S, config_.num_experts, cf, config_.router_min_capacity);
  if (C > kWholeQueueRows || config_.num_experts > kMaxConditionalExperts) return false;
  return cuda_graphs_env_;
}

template <class ExecSpace, class T>
absl::Status OpenMoeModel<ExecSpace, T>::RunStep(Cache& cache, const std::vector<int64_t>& input_ids,
                                                 const std::vector<int64_t>& attention_mask, int64_t S,
                                                 RoutingMode mode, bool last_only,
                                                 std::vector<MoeLayerStats>* stats, ExecSpace* used_space) {
  const int64_t B = cache.batch, L0 = cache.length;
  profile_.Restart();
  OPENMOE_RETURN_IF_ERROR(ValidateInputs(config_, input_ids, attention_mask, B, S));
  if (L0 + S > cache.capacity) {
    return absl::InvalidArgumentError(absl::StrCat("sequence of ", L0 + S, " tokens exceeds the KV cache (",
                                                   cache.capacity, " columns)"));
  }
  const int64_t N = B * S;
  const bool graphed = UseDecodeGraph(B, S, mode, last_only, stats);
  if (graphed && graphs_ == nullptr) graphs_ = std::make_shared<DecodeGraphs<ExecSpace>>();
  // (Applied when a graph is captured; the graph key below holds it, so a change captures anew.)
  if (graphed) graphs_->set_dependent_launch(dependent_launch_);
  const ExecSpace space = graphed ? graphs_->space() : ExecSpace();
  *used_space = space;

  // Per-step inputs in one device buffer [ids (N) | mask (N) | position (1)], written before
  // the kernels run (a replayed graph reads them from there).
  Vector<int64_t, ExecSpace> inputs(Buffer<int64_t>("step_inputs", 2 * N + 1).data(), 2 * N + 1);
  std::vector<int64_t> staged(input_ids);
  staged.insert(staged.end(), attention_mask.begin(), attention_mask.end());
  staged.push_back(L0);
  Kokkos::deep_copy(space, inputs, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                                       staged.data(), staged.size()));
  const int64_t* position = inputs.data() + 2 * N;  // device pointer
  auto enqueue = [&]() -> absl::Status {
    // Decode steps read their position from device memory whether or not they are replayed as a
    // graph, so that both run the same kernels (the attention variant depends on it).
    return Forward(context_.OnStream(space), cache, inputs, S, graphed || S == 1 ? position : nullptr, mode, last_only, stats);
  };
  profile_.Mark(space, "inputs");
  if (graphed) {  // under OPENMOE_PROFILE the whole replayed step is one phase
    // The captured kernels point at the cache's buffers, the workspace and the attention scratch.
    uint64_t cache_id = reinterpret_cast<uintptr_t>(cache.mask.data());
    for (size_t i = 0; i < cache.keys.size(); ++i) {
      cache_id = cache_id * 1000003u ^ reinterpret_cast<uintptr_t>(cache.keys[i].data());
      cache_id = cache_id * 1000003u ^ reinterpret_cast<uintptr_t>(cache.values[i].data());
    }
    // The decode tuning the kernels are chosen with (a graph replays the kernels chosen at capture;
    // split_16bit_probs, attention_path and max_score_elements concern prefill only), the routing
    // mode (its capacity factor sizes the expert queues) and the dependent-launch mode.
    const kernels::Tuning& tuning = context_.tuning();
    uint64_t tuning_id = 0;
    for (uint64_t value : {uint64_t(mode), uint64_t(dependent_launch_),
                           uint64_t(tuning.decode_leave_out), uint64_t(tuning.decode_linear_kernel),
                           uint64_t(tuning.split_key_team_warps), uint64_t(tuning.split_key_warp_keys),
                           uint64_t(tuning.decode_attention_kernel), uint64_t(tuning.block_split_lane_keys),
                           uint64_t(tuning.block_split_warps)})
      tuning_id = tuning_id * 1000003u ^ value;
    auto generation = [this] { return workspace_generation_ + (context_.scratch_generation() << 32); };
    const DecodeGraphKey key{cache_id, B, cache.capacity, generation(), tuning_id};
    profile_.set_paused(true);
    const absl::Status status = graphs_->Run(key, generation, enqueue);
    profile_.set_paused(false);
    OPENMOE_RETURN_IF_ERROR(status);
    profile_.Mark(space, "decode_step_graph");
  } else {
    OPENMOE_RETURN_IF_ERROR(enqueue());
  }
  cache.length += S;
  return absl::OkStatus();
}

template <class ExecSpace, class T>
absl::StatusOr<std::vector<float>> OpenMoeModel<ExecSpace, T>::Step(
    Cache& cache, const std::vector<int64_t>& input_ids, const std::vector<int64_t>& attention_mask,
    int64_t S, RoutingMode mode, bool last_only, std::vector<MoeLayerStats>* stats) {
  ExecSpace space;
  OPENMOE_RETURN_IF_ERROR(RunStep(cache, input_ids, attention_mask, S, mode, last_only, stats, &space));
  if (!range_.head) return std::vector<float>();  // a pipeline stage before the last: no logits here
  const int64_t rows = last_only ? cache.batch : cache.batch * S, V = config_.vocab_size;
  Matrix<T, ExecSpace> logits = Buffer2<T>("logits", rows, V);  // [rows, V], written by Forward
  auto logits_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), logits);
  std::vector<float> result(rows * V);
  for (int64_t i = 0; i < rows * V; ++i) result[i] = ToFloat(logits_host.data()[i]);
  profile_.Mark(space, "logits_to_host");
  return result;
}

template <class ExecSpace, class T>
absl::StatusOr<std::vector<int64_t>> OpenMoeModel<ExecSpace, T>::StepGreedy(
    Cache& cache, const std::vector<int64_t>& input_ids, const std::vector<int64_t>& attention_mask,
    int64_t S, RoutingMode mode, int64_t allowed_vocab) {
  ExecSpace space;
  OPENMOE_RETURN_IF_ERROR(RunStep(cache, input_ids, attention_mask, S, mode, /*last_only=*/true, nullptr, &space));
  const int64_t B = cache.batch, V = config_.vocab_size;
  if (!range_.head) return std::vector<int64_t>(B, 0);  // placeholders: the last stage picks (ShareStepIds)
  Matrix<T, ExecSpace> logits = Buffer2<T>("logits", B, V);  // [B, V], written by Forward
  Vector<int64_t, ExecSpace> ids(Buffer<int64_t>("greedy_ids", B).data(), B);
  OPENMOE_RETURN_IF_ERROR(kernels::RowArgmax<T>(context_.OnStream(space), ConstMatrix<T, ExecSpace>(logits),
                                                allowed_vocab > 0 ? std::min(allowed_vocab, V) : V, ids));
  std::vector<int64_t> result(B);
  Kokkos::deep_copy(space, Kokkos::View<int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(result.data(), B), ids);
  space.fence();
  profile_.Mark(space, "argmax+ids_to_host");
  return result;
}

template <class ExecSpace, class T>
absl::Status OpenMoeModel<ExecSpace, T>::Forward(const kernels::ExecutionContext<ExecSpace>& ctx, Cache& cache,
                                                 Vector<int64_t, ExecSpace> inputs, int64_t S,
                                                 const int64_t* device_position, RoutingMode mode,
                                                 bool last_only, std::vector<MoeLayerStats>* stats) {
  const auto& space = ctx.space();
  const OpenMoeConfig& c = config_;
  const int64_t B = cache.batch, L0 = cache.length;
  const int64_t N = B * S, H = c.hidden_size, V = c.vocab_size;
  const int64_t Nh = c.num_attention_heads, Nkv = c.num_key_value_heads, Dh = c.head_dim;
  Vector<int64_t, ExecSpace> ids(inputs.data(), N);  // [N]
  const int64_t* new_mask = inputs.data() + N;       // [B, S]
  AppendMask<ExecSpace>(space, cache.mask, new_mask, N, S, L0, device_position);

  Matrix<T, ExecSpace> h     = Buffer2<T>("hidden", N, H);  // [N, H]
  Matrix<T, ExecSpace> x     = Buffer2<T>("normed", N, H);  // [N, H]
  Matrix<T, ExecSpace> delta = Buffer2<T>("delta", N, H);   // [N, H]
  const AttentionHeads heads{Nh, Nkv, Dh};
  const int64_t Wq = Nh * Dh, qkv_width = Wq + 2 * Nkv * Dh;

  profile_.Mark(space, "inputs");
  const int stage = stages_ != nullptr ? stages_->rank() : 0;
  if (range_.embedding) {
    OPENMOE_RETURN_IF_ERROR(kernels::Embedding<T>(space, W(offsets_.embed_tokens, V, H), ids, h));
    profile_.Mark(space, "embedding");
  } else {  // h [N, H] after the previous stage's layers, residual included
    OPENMOE_RETURN_IF_ERROR(stages_->Recv(space, h, stage - 1));
    profile_.Mark(space, "pipeline.recv");
  }
  // Benchmark ablation (kernels::Tuning::decode_leave_out): decode steps may skip parts.
  const uint32_t leave_out = device_position != nullptr ? ctx.tuning().decode_leave_out : 0;
  // The residual add of each block is fused into the norm that follows it.
  bool delta_pending = false;  // delta not yet added to h
  auto norm_into = [&](Matrix<T, ExecSpace> out, int64_t weight) -> absl::Status {
    const absl::Status status = delta_pending
        ? kernels::AddRmsNorm<T>(space, h, delta, WV(weight), out, c.rms_norm_eps)
        : kernels::RmsNorm<T>(space, h, WV(weight), out, c.rms_norm_eps);
    delta_pending = false;
    profile_.Mark(space, "norm+residual");
    return status;
  };
  // (A left-out layer norm keeps delta pending: the next norm still adds it, as in the whole step.)
  auto norm_into_x = [&](int64_t weight) {
    return (leave_out & kernels::kLeaveOutNorms) ? absl::OkStatus() : norm_into(x, weight);
  };
  for (int64_t i = range_.first; i < range_.end; ++i) {
    const LayerOffsets& lo = offsets_.layers[i];
    // Attention block: new keys/values join the cache at their absolute columns.
    OPENMOE_RETURN_IF_ERROR(norm_into_x(lo.input_norm));
    const AttentionBuffers<T, ExecSpace> attention{
        ConstMatrix<T, ExecSpace>(x),
        Buffer2<T>("qkv", N, qkv_width),                                         // [N, Wq + 2Wkv]
        kernels::Tensor3<T, ExecSpace>(Buffer<T>("q", N * Wq).data(), B, S, Wq),  // [B, S, Wq]
        cache.keys[i - range_.first], cache.values[i - range_.first], cache.mask,
        kernels::Tensor3<T, ExecSpace>(Buffer<T>("attn", N * Wq).data(), B, S, Wq),  // [B, S, Wq]
        delta};
    OPENMOE_RETURN_IF_ERROR(AttentionForward<T>(ctx, heads, W(lo.qkv, qkv_width, H), W(lo.o, H, Wq),
                                                /*offset=*/L0, device_position, attention, &profile_));
    delta_pending = true;
    // Feed-forward block(s).
    OPENMOE_RETURN_IF_ERROR(norm_into_x(lo.post_attention_norm));
    if (c.IsMoeLayer(i)) {
      if (!(leave_out & kernels::kLeaveOutMoe)) OPENMOE_RETURN_IF_ERROR(SparseMoe(ctx, i, x, mode, delta, stats));
      delta_pending = true;
      OPENMOE_RETURN_IF_ERROR(norm_into_x(lo.pre_extra_mlp_norm));
    }
    if (!(leave_out & kernels::kLeaveOutDenseMlp)) OPENMOE_RETURN_IF_ERROR(Mlp(ctx, lo.mlp, x, delta));
    profile_.Mark(space, "dense_mlp");
    delta_pending = true;
  }
  if (!range_.head) {
    // h [N, H] with the last residual added (AddRmsNorm's arithmetic, which the next stage's
    // RmsNorm continues bit for bit) to the next stage.
    if (delta_pending) OPENMOE_RETURN_IF_ERROR(kernels::AddInPlace<T>(space, h, delta));
    OPENMOE_RETURN_IF_ERROR(stages_->Send(space, h, stage + 1));
    profile_.Mark(space, "pipeline.send");
    return absl::OkStatus();
  }
  // Final norm and LM head, on every new column or only on the last one of each row.
  const int64_t rows = last_only ? B : N;
  Matrix<T, ExecSpace> normed = Buffer2<T>("head_normed", rows, H);  // [rows, H]
  if (rows == N) {
    // Every column of h (all of them, or S = 1 in a decode step): the last residual add and the
    // final norm as one kernel, no copy of h.
    OPENMOE_RETURN_IF_ERROR(norm_into(normed, offsets_.final_norm));
  } else {
    if (delta_pending) OPENMOE_RETURN_IF_ERROR(kernels::AddInPlace<T>(space, h, delta));
    Matrix<T, ExecSpace> head_in = Buffer2<T>("head_in", rows, H);  // [rows, H]
    GatherLastColumn<T, ExecSpace>(space, h, S, head_in);
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<T>(space, head_in, WV(offsets_.final_norm), normed, c.rms_norm_eps));
    profile_.Mark(space, "norm+residual");
  }
  Matrix<T, ExecSpace> logits = Buffer2<T>("logits", rows, V);  // [rows, V]
  OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(ctx, ConstMatrix<T, ExecSpace>(normed), W(offsets_.lm_head, V, H), logits));
  profile_.Mark(space, "lm_head");
  return absl::OkStatus();
}

template <class ExecSpace, class T>
absl::Status OpenMoeModel<ExecSpace, T>::ShareStepIds(std::vector<int64_t>& ids) {
  if (stages_ == nullptr) return absl::OkStatus();
  const int64_t B = int64_t(ids.size());
  const ExecSpace space;
  Vector<int64_t, ExecSpace> shared(Buffer<int64_t>("pipeline.step_ids", B).data(), B);  // [B]
  Kokkos::View<int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged> host(ids.data(), B);
  Kokkos::deep_copy(space, shared, host);
  OPENMOE_RETURN_IF_ERROR(stages_->Broadcast(space, shared, stages_->size() - 1));
  Kokkos::deep_copy(space, host, shared);
  space.fence();
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_MODEL(Space, T) template class OpenMoeModel<Space, T>;
OPENMOE_FOR_EACH_SPACE_AND_DTYPE(OPENMOE_INSTANTIATE_MODEL)

}  // namespace openmoe
