#include "openmoe/trainable_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <set>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/backward.h"
#include "kernels/elementwise.h"
#include "kernels/instantiate.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "kernels/rms_norm.h"
#include "openmoe/blocks.h"
#include "openmoe/parameter_store.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/model.h"

namespace openmoe {
namespace {

// x as a U matrix: the same data when its element type already is U, else a converted copy in a
// buffer of the context's pool.
template <class U, class V, class ExecSpace>
absl::StatusOr<ConstMatrix<U, ExecSpace>> As(const kernels::ExecutionContext<ExecSpace>& ctx, ConstMatrix<V, ExecSpace> x) {
  if constexpr (std::is_same_v<U, V>) {
    return x;
  } else {
    Matrix<U, ExecSpace> y = ctx.Pool().template Take<U>(ctx.space(), "converted", x.extent(0), x.extent(1),
                                                         /*zeroed=*/false);  // every element written below
    OPENMOE_RETURN_IF_ERROR((kernels::Convert<V, U>(ctx.space(), x, y)));
    return ConstMatrix<U, ExecSpace>(y);
  }
}

// Misuse of a model that keeps only its share of the fp32 masters: it has no whole buffer.
[[noreturn]] void NoWholeMasters(const char* accessor) {
  std::fprintf(stderr, "TrainableModel::%s: this model keeps only its share of the fp32 master weights (ShardMasters: "
               "ZeRO-1/2 of a bf16 / fp16 run), there is no whole buffer; use flat_masters() / OwnedMasters(), or "
               "AdamWOptimizer::GatherMasters for whole tensors\n", accessor);
  std::abort();
}

constexpr int64_t kLossRowsPerChunk = 256;  // LM head rows whose [rows, V] logits exist at once

// Expert placement (SetExpertPlacement): each assignment's slot, slots(t, k) = expert_slot(experts(t,
// k)), and the combine weights in slot order, slot_probs(t, s) = probs(t, slot_expert(s)).
template <class ExecSpace, class Map>
void PlaceAssignments(const ExecSpace& space, ConstMatrix<int32_t, ExecSpace> experts, Map expert_slot,
                      ConstMatrix<float, ExecSpace> probs, Map slot_expert, Matrix<int32_t, ExecSpace> slots,
                      Matrix<float, ExecSpace> slot_probs) {
  const int64_t N = experts.extent(0), K = experts.extent(1), E = probs.extent(1);
  Kokkos::parallel_for("openmoe::place_assignments", Kokkos::RangePolicy<ExecSpace>(space, 0, N * K),
                       KOKKOS_LAMBDA(int64_t i) { slots(i / K, i % K) = expert_slot(experts(i / K, i % K)); });
  Kokkos::parallel_for("openmoe::place_probs", Kokkos::RangePolicy<ExecSpace>(space, 0, N * E),
                       KOKKOS_LAMBDA(int64_t i) { slot_probs(i / E, i % E) = probs(i / E, slot_expert(i % E)); });
}

// The combine weights' gradient back in canonical order: dprobs(t, e) = slot_dprobs(t, expert_slot(e)).
template <class ExecSpace, class Map>
void UnplaceProbGradients(const ExecSpace& space, ConstMatrix<float, ExecSpace> slot_dprobs, Map expert_slot,
                          Matrix<float, ExecSpace> dprobs) {
  const int64_t N = dprobs.extent(0), E = dprobs.extent(1);
  Kokkos::parallel_for("openmoe::unplace_prob_gradients", Kokkos::RangePolicy<ExecSpace>(space, 0, N * E),
                       KOKKOS_LAMBDA(int64_t i) { dprobs(i / E, i % E) = slot_dprobs(i / E, expert_slot(i % E)); });
}

// Every MoE layer's experts in their own slots: slot_expert(l, s) = expert_slot(l, s) = s.
template <class ExecSpace, class Placement>
void IdentityPlacement(Placement slot_expert, Placement expert_slot) {
  const int64_t E = slot_expert.extent(1);
  Kokkos::parallel_for("openmoe::identity_placement", Kokkos::RangePolicy<ExecSpace>(0, slot_expert.extent(0) * E),
                       KOKKOS_LAMBDA(int64_t i) { slot_expert(i / E, i % E) = expert_slot(i / E, i % E) = int32_t(i % E); });
}

// loads(e) += the assignments of `experts` [N, 2] to expert e.
template <class ExecSpace, class Loads>
void CountExpertLoads(const ExecSpace& space, ConstMatrix<int32_t, ExecSpace> experts, Loads loads) {
  const int64_t K = experts.extent(1);
  Kokkos::parallel_for("openmoe::count_expert_loads", Kokkos::RangePolicy<ExecSpace>(space, 0, experts.extent(0) * K),
                       KOKKOS_LAMBDA(int64_t i) { Kokkos::atomic_add(&loads(experts(i / K, i % K)), int64_t(1)); });
}

}  // namespace

template <class ExecSpace>
absl::StatusOr<TrainableModel<ExecSpace>> TrainableModel<ExecSpace>::Load(const std::string& model_dir,
                                                                          ExpertShard shard,
                                                                          std::optional<LayerRange> layers) {
  OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig config, LoadConfig(model_dir + "/config.json"));
  OPENMOE_ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(model_dir));
  return FromCheckpoint(config, reader, shard, layers);
}

template <class ExecSpace>
absl::Status TrainableModel<ExecSpace>::SetTable(ExpertShard shard, std::optional<LayerRange> layers) {
  const int64_t E = config_.num_experts;
  if (shard.total == 0) shard = ExpertShard::All(E);
  if (shard.total != E || shard.count < 1 || shard.first < 0 || shard.first + shard.count > E) {
    return absl::InvalidArgumentError(absl::StrCat("expert shard [", shard.first, ", ", shard.first + shard.count,
                                                   ") of ", shard.total, " experts does not fit the model's ", E,
                                                   " experts (num_experts)"));
  }
  shard_ = shard;
  layers_ = layers ? *layers : WholeModel(config_);
  if (layers_.first < 0 || layers_.first >= layers_.end || layers_.end > config_.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("the stored layers [", layers_.first, ", ", layers_.end,
                                                   ") are not a range of the model's ", config_.num_hidden_layers,
                                                   " layers (num_hidden_layers)"));
  }
  table_ = TrainingTable(StageCheckpointTable(config_, layers_), shard_);
  return absl::OkStatus();
}

template <class ExecSpace>
absl::StatusOr<TrainableModel<ExecSpace>> TrainableModel<ExecSpace>::FromCheckpoint(const OpenMoeConfig& config,
                                                                                    const CheckpointReader& reader,
                                                                                    ExpertShard shard,
                                                                                    std::optional<LayerRange> layers) {
  TrainableModel model;
  model.config_ = config;
  OPENMOE_RETURN_IF_ERROR(model.SetTable(shard, layers));
  OPENMOE_RETURN_IF_ERROR(reader.Validate(CheckpointTable(config)));  // before allocating anything
  model.AllocateFlatBuffers();
  OPENMOE_RETURN_IF_ERROR(
      (ReadParameters<float, ExecSpace>(reader, model.table_, model.layout_, model.flat_params_, model.shard_,
                                        /*check_table=*/false)));  // checked against the whole model above
  return model;
}

template <class ExecSpace>
Vector<uint16_t, ExecSpace> TrainableModel<ExecSpace>::flat_working() {
  if (int64_t(flat_working_.extent(0)) != layout_.total()) {
    flat_working_ = Vector<uint16_t, ExecSpace>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "working"), layout_.total());
    working_current_ = false;
  }
  return flat_working_;
}

template <class ExecSpace>
Vector<float, ExecSpace> TrainableModel<ExecSpace>::flat_params() const {
  if (masters_sharded()) NoWholeMasters("flat_params");
  return flat_params_;
}

template <class ExecSpace>
Vector<float, ExecSpace> TrainableModel<ExecSpace>::param(const std::string& name) const {
  if (masters_sharded()) NoWholeMasters("param");
  return params_.at(name);
}

template <class ExecSpace>
template <class T>
absl::Status TrainableModel<ExecSpace>::ConvertMastersToWorking(const ExecSpace& space) {
  const int64_t total = layout_.total();
  Vector<uint16_t, ExecSpace> working = flat_working();
  return kernels::Convert<float, T>(space, ConstMatrix<float, ExecSpace>(flat_params_.data(), 1, total),
                                    Matrix<T, ExecSpace>(reinterpret_cast<T*>(working.data()), 1, total));
}

template <class ExecSpace>
template <class T>
absl::Status TrainableModel<ExecSpace>::RefreshWorkingCopy(const ExecSpace& space) {
  if (masters_sharded()) {  // the working copy is the only whole copy of the weights, in sharded_dtype_
    if (dtype_ == sharded_dtype_) return absl::OkStatus();
    return absl::FailedPreconditionError("the compute dtype changed after ShardMasters: the sharded fp32 masters "
                                         "cannot be converted into a new whole working copy");
  }
  if constexpr (std::is_same_v<T, float>) {
    return absl::OkStatus();  // fp32 computes with the masters themselves
  } else {
    if (working_current_) return absl::OkStatus();  // the optimizer wrote it with the weights
    return ConvertMastersToWorking<T>(space);
  }
}

template <class ExecSpace>
absl::Status TrainableModel<ExecSpace>::ShardMasters(const std::vector<MasterPiece>& pieces) {
  if (dtype_ == ComputeDtype::kFp32) {
    return absl::FailedPreconditionError("ShardMasters: an fp32 run computes with its fp32 master weights, which "
                                         "must stay whole (only bf16 / fp16 runs keep a share of them)");
  }
  if (masters_sharded()) return absl::FailedPreconditionError("ShardMasters: the masters are already sharded");
  int64_t kept = 0, end = 0;
  for (const MasterPiece& piece : pieces) {
    if (piece.count <= 0 || piece.layout < end || piece.layout + piece.count > layout_.total() || piece.master != kept) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ShardMasters: piece [", piece.layout, ", ", piece.layout + piece.count, ") at ", piece.master,
          ": the pieces must be ascending, disjoint, non-empty ranges of the layout [0, ", layout_.total(),
          ") packed in order (each at the sum of the counts before it)"));
    }
    end = piece.layout + piece.count, kept += piece.count;
  }
  // The whole working copy from the whole masters, then the kept pieces into their own buffer.
  const ExecSpace& space = context_.space();
  OPENMOE_RETURN_IF_ERROR(dtype_ == ComputeDtype::kBf16 ? ConvertMastersToWorking<bf16>(space)
                                                        : ConvertMastersToWorking<f16>(space));
  Vector<float, ExecSpace> masters(Kokkos::view_alloc(Kokkos::WithoutInitializing, "masters"), kept);
  for (const MasterPiece& piece : pieces) {
    Kokkos::deep_copy(space, Vector<float, ExecSpace>(masters.data() + piece.master, piece.count),
                      Vector<float, ExecSpace>(flat_params_.data() + piece.layout, piece.count));
  }
  space.fence();
  flat_params_ = masters;  // frees the whole masters (params_ held unmanaged views into them)
  params_.clear();
  master_pieces_ = pieces;
  sharded_dtype_ = dtype_;
  return absl::OkStatus();
}

template <class ExecSpace>
std::vector<typename TrainableModel<ExecSpace>::MasterPiece> TrainableModel<ExecSpace>::OwnedMasters(int64_t begin,
                                                                                                     int64_t end) const {
  std::vector<MasterPiece> owned;
  if (!masters_sharded()) {  // the whole range, at its own offset
    if (begin < end) owned.push_back({begin, begin, end - begin});
    return owned;
  }
  for (const MasterPiece& piece : master_pieces_) {
    const int64_t b = std::max(begin, piece.layout), e = std::min(end, piece.layout + piece.count);
    if (b < e) owned.push_back({b, piece.master + (b - piece.layout), e - b});
  }
  return owned;
}

template <class ExecSpace>
void TrainableModel<ExecSpace>::AllocateFlatBuffers() {
  layout_ = ParameterLayout(table_);
  expert_begin_ = ExpertSegmentBegin(layout_);
  const int64_t E = config_.num_experts, moe_layers = config_.NumMoeLayers();
  slot_expert_.assign(moe_layers, std::vector<int32_t>(E));
  for (std::vector<int32_t>& placement : slot_expert_) {
    for (int64_t s = 0; s < E; ++s) placement[s] = int32_t(s);
  }
  placed_.assign(moe_layers, false);
  slot_expert_d_ = Kokkos::View<int32_t**, Kokkos::LayoutRight, MemSpace>("slot_expert", moe_layers, E);
  expert_slot_d_ = Kokkos::View<int32_t**, Kokkos::LayoutRight, MemSpace>("expert_slot", moe_layers, E);
  IdentityPlacement<ExecSpace>(slot_expert_d_, expert_slot_d_);
  flat_params_ = Vector<float, ExecSpace>("params", layout_.total());  // zero: the gaps stay 0
  master_pieces_.clear(), sharded_dtype_ = ComputeDtype::kFp32;  // whole masters
  flat_grads_  = Vector<float, ExecSpace>("grads", layout_.total());
  offsets_ = ResolveModelOffsets(layout_, config_, layers_);
  params_.clear(), grads_.clear();
  for (const ParameterSlot& s : layout_.slots()) {
    params_.emplace(s.name, Vector<float, ExecSpace>(flat_params_.data() + s.offset, s.numel));
    grads_.emplace(s.name, Vector<float, ExecSpace>(flat_grads_.data() + s.offset, s.numel));
  }
}

template <class ExecSpace>
absl::StatusOr<TrainableModel<ExecSpace>> TrainableModel<ExecSpace>::RandomInit(const OpenMoeConfig& config,
                                                                                uint64_t seed, ExpertShard shard,
                                                                                std::optional<LayerRange> layers) {
  OPENMOE_RETURN_IF_ERROR(ValidateConfig(config, "RandomInit"));
  TrainableModel model;
  model.config_ = config;
  OPENMOE_RETURN_IF_ERROR(model.SetTable(shard, layers));
  model.AllocateFlatBuffers();
  InitializeParameters<float, ExecSpace>(ExecSpace(), config, model.table_, model.layout_, seed, model.flat_params_,
                                         model.shard_);
  Kokkos::fence();
  return model;
}

template <class ExecSpace>
absl::Status TrainableModel<ExecSpace>::SetExpertPlacement(int64_t moe_layer, const std::vector<int32_t>& slot_expert) {
  const int64_t E = config_.num_experts;
  if (moe_layer < 0 || moe_layer >= int64_t(slot_expert_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("SetExpertPlacement: no MoE layer ", moe_layer));
  }
  std::vector<int32_t> expert_slot(E, -1);
  for (int64_t s = 0; s < int64_t(slot_expert.size()); ++s) {
    const int32_t e = slot_expert[s];
    if (int64_t(slot_expert.size()) != E || e < 0 || e >= E || expert_slot[e] != -1) {
      return absl::InvalidArgumentError(absl::StrCat("SetExpertPlacement: not a permutation of the ", E, " experts"));
    }
    expert_slot[e] = int32_t(s);
  }
  slot_expert_[moe_layer] = slot_expert;
  bool identity = true;
  for (int64_t s = 0; s < E; ++s) identity = identity && slot_expert[s] == s;
  placed_[moe_layer] = !identity;
  const auto copy_row = [&](auto device, const std::vector<int32_t>& host) {
    Kokkos::deep_copy(Kokkos::subview(device, moe_layer, Kokkos::ALL),
                      Kokkos::View<const int32_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(host.data(), E));
  };
  copy_row(slot_expert_d_, slot_expert);
  copy_row(expert_slot_d_, expert_slot);
  return absl::OkStatus();
}

template <class ExecSpace>
void TrainableModel<ExecSpace>::set_count_expert_loads(bool count) {
  const int64_t n = count ? std::max<int64_t>(1, config_.NumMoeLayers()) * config_.num_experts : 0;
  expert_loads_ = Kokkos::View<int64_t*, MemSpace>("expert_loads", n);
}

template <class ExecSpace>
std::vector<int64_t> TrainableModel<ExecSpace>::TakeExpertLoads() {
  std::vector<int64_t> loads(expert_loads_.extent(0));
  Kokkos::deep_copy(Kokkos::View<int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(loads.data(), loads.size()),
                    expert_loads_);
  Kokkos::deep_copy(expert_loads_, int64_t(0));
  loads.resize(config_.NumMoeLayers() * config_.num_experts);
  return loads;
}

template <class ExecSpace>
void TrainableModel<ExecSpace>::ReleaseStepBuffers() const {
  context_.space().fence();
  context_.Pool().Clear();
}

template <class ExecSpace>
Matrix<float, ExecSpace> TrainableModel<ExecSpace>::G(int64_t offset, int64_t rows, int64_t cols) const {
  return Matrix<float, ExecSpace>(flat_grads_.data() + offset, rows, cols);
}
template <class ExecSpace>
Vector<float, ExecSpace> TrainableModel<ExecSpace>::GV(int64_t offset) const {
  return Vector<float, ExecSpace>(flat_grads_.data() + offset, config_.hidden_size);
}

template <class ExecSpace>
absl::StatusOr<LossParts> TrainableModel<ExecSpace>::ForwardBackward(const std::vector<int64_t>& input_ids,
                                                                    const std::vector<int64_t>& attention_mask,
                                                                    int64_t B, int64_t S) {
  if (layers_.first != 0 || layers_.end != config_.num_hidden_layers || !layers_.embedding || !layers_.head) {
    return absl::FailedPreconditionError(absl::StrCat("ForwardBackward needs the whole model; this one stores ",
                                                      layers_.ToString(), " (use ForwardBackwardStage)"));
  }
  const StagePlan plan{0, config_.num_hidden_layers, B, nullptr};
  switch (dtype_) {
    case ComputeDtype::kBf16: return Step<bf16>(input_ids, attention_mask, B, S, plan);
    case ComputeDtype::kFp16: return Step<f16>(input_ids, attention_mask, B, S, plan);
    default: return Step<float>(input_ids, attention_mask, B, S, plan);
  }
}

template <class ExecSpace>
absl::StatusOr<LossParts> TrainableModel<ExecSpace>::ForwardBackwardStage(
    int64_t first_layer, int64_t end_layer, const std::vector<int64_t>& input_ids,
    const std::vector<int64_t>& attention_mask, int64_t B, int64_t S, int64_t microbatch_size,
    const PipelineSchedule& schedule) {
  const int64_t L = config_.num_hidden_layers;
  if (first_layer < 0 || first_layer >= end_layer || end_layer > L) {
    return absl::InvalidArgumentError(absl::StrCat("pipeline stage layers [", first_layer, ", ", end_layer,
                                                   ") are not a non-empty range of the model's ", L, " layers"));
  }
  // The stage's tensors must be stored here: its layers, the embedding on the first stage and the
  // final norm and LM head on the last.
  if (first_layer < layers_.first || end_layer > layers_.end || (first_layer == 0 && !layers_.embedding) ||
      (end_layer == L && !layers_.head)) {
    return absl::FailedPreconditionError(absl::StrCat("pipeline stage layers [", first_layer, ", ", end_layer,
                                                      ") are not all stored by this model (", layers_.ToString(), ")"));
  }
  if (microbatch_size < 1 || B % microbatch_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("the batch of ", B, " examples does not split into microbatches of ",
                                                   microbatch_size));
  }
  if (!schedule) return absl::InvalidArgumentError("pipeline stage without a schedule");
  const StagePlan plan{first_layer, end_layer, microbatch_size, &schedule};
  switch (dtype_) {
    case ComputeDtype::kBf16: return Step<bf16>(input_ids, attention_mask, B, S, plan);
    case ComputeDtype::kFp16: return Step<f16>(input_ids, attention_mask, B, S, plan);
    default: return Step<float>(input_ids, attention_mask, B, S, plan);
  }
}

// Working weights of the step in T: the master weights themselves for float, a 16-bit copy
// (rounded once per step) for bf16 and f16.
template <class ExecSpace>
template <class T>
const T* TrainableModel<ExecSpace>::Working(int64_t offset) const {
  if constexpr (std::is_same_v<T, float>) {
    return flat_params_.data() + offset;
  } else {
    return reinterpret_cast<const T*>(flat_working_.data()) + offset;
  }
}

template <class ExecSpace>
template <class T>
absl::StatusOr<LossParts> TrainableModel<ExecSpace>::Step(const std::vector<int64_t>& input_ids,
                                                         const std::vector<int64_t>& attention_mask,
                                                         int64_t batch, int64_t S, const StagePlan& plan) {
  using M    = Matrix<T, ExecSpace>;   // activations, in the run dtype
  using CM   = ConstMatrix<T, ExecSpace>;
  using FM   = Matrix<float, ExecSpace>;  // gradients, float32
  using CFM  = ConstMatrix<float, ExecSpace>;
  using T3   = kernels::Tensor3<T, ExecSpace>;
  using CT3  = kernels::Tensor3<const T, ExecSpace>;
  using F3   = kernels::Tensor3<float, ExecSpace>;
  using CF3  = kernels::Tensor3<const float, ExecSpace>;
  using IntM = Matrix<int32_t, ExecSpace>;
  constexpr bool kFloat = std::is_same_v<T, float>;
  const OpenMoeConfig& c = config_;
  OPENMOE_RETURN_IF_ERROR(ValidateInputs(c, input_ids, attention_mask, batch, S));
  // B: examples per microbatch (the whole batch unless pipelined); Mb microbatches, each its own
  // routing group; this stage's layers [l0, l1), first / last: with the embedding / the loss.
  const int64_t B = plan.microbatch_size, Mb = batch / B;
  const int64_t l0 = plan.first_layer, l1 = plan.end_layer;
  const bool first_stage = l0 == 0, last_stage = l1 == c.num_hidden_layers;
  const int64_t N = B * S, H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, E = c.num_experts;
  const int64_t Nh = c.num_attention_heads, Nkv = c.num_key_value_heads, Dh = c.head_dim;
  const int64_t Wq = Nh * Dh, Wkv = Nkv * Dh, L = c.num_hidden_layers;
  const int64_t e0 = dispatcher_->first_local_expert(), El = dispatcher_->local_experts(E);  // this rank's experts
  // Where expert e0's weights are in this model's stacked expert tensors, which hold the experts of
  // expert_shard() only.
  const int64_t es = e0 - shard_.first;
  if (es < 0 || es + El > shard_.count) {
    return absl::FailedPreconditionError(absl::StrCat("the token dispatcher runs experts [", e0, ", ", e0 + El,
                                                      ") here, but this model stores experts [", shard_.first, ", ",
                                                      shard_.first + shard_.count, ")"));
  }
  const float eps = c.rms_norm_eps;
  const kernels::ExecutionContext<ExecSpace>& ctx = context_;
  const ExecSpace& space = ctx.space();
  // The step's inputs, activations and temporaries come from the context's pool: after the first
  // step the step itself allocates and frees none of them (a free waits for the device on CUDA)
  // and fills none that their producer writes completely. (Still allocated per call: the
  // expert-parallel dispatcher's staging buffers and the pipeline schedule's transfer buffers.)
  kernels::BufferPool<MemSpace>& pool = ctx.Pool();
  pool.Trim();  // frees what the previous step did not use
  // Gradients: zeros where products do not write first (all of it in the first step).
  std::set<int64_t> products_written;  // product regions written so far in this step
  bool relearn_product_grads = false;  // a product outside the learned regions: learn them again
  if (product_grads_known_) {
    int64_t gap = 0;
    for (const auto& [offset, size] : product_grads_) {
      kernels::ZeroFill(space, Kokkos::subview(flat_grads_, std::make_pair(gap, offset)));
      gap = offset + size;
    }
    kernels::ZeroFill(space, Kokkos::subview(flat_grads_, std::make_pair(gap, int64_t(flat_grads_.extent(0)))));
  } else {
    kernels::ZeroFill(space, flat_grads_);
    product_grads_.clear();
  }
  OPENMOE_RETURN_IF_ERROR(RefreshWorkingCopy<T>(space));  // 16-bit: at most one conversion of the masters
  working_current_ = false;
  auto W = [&](int64_t offset, int64_t rows, int64_t cols) { return CM(Working<T>(offset), rows, cols); };
  auto WV = [&](int64_t offset) { return ConstVector<T, ExecSpace>(Working<T>(offset), H); };
  // Float views of run-dtype data and run-dtype views of float gradients (no copy for float runs).
  auto to_f = [&](CM x) { return As<float>(ctx, x); };
  auto to_t = [&](CFM x) { return As<T>(ctx, x); };
  // Weight gradient c += a^T b in the run dtype (16-bit operands, float32 accumulation and c, as
  // autocast does; float runs: SGEMM).
  // The first product into a known region in this step writes it; later ones add.
  auto weight_grad = [&](CM a, CM b, FM c) {
    const int64_t offset = c.data() - flat_grads_.data(), size = int64_t(c.size());
    const bool first = products_written.insert(offset).second;
    bool overwrite = false;
    if (product_grads_known_) {
      auto next = product_grads_.upper_bound(offset);  // the first learned region after offset
      const auto region = next == product_grads_.begin() ? product_grads_.end() : std::prev(next);
      const bool learned = region != product_grads_.end() && region->first == offset && region->second == size;
      overwrite = first && learned;
      if (first && !learned) {  // not a learned region (none today): it may hold stale values
        const bool overlaps = (region != product_grads_.end() && region->first + region->second > offset) ||
                              (next != product_grads_.end() && next->first < offset + size);
        if (overlaps) {  // part of it may already hold this step's gradients: nothing safe to do
          return absl::InternalError(absl::StrCat("weight gradient [", offset, ", ", offset + size,
                                                  ") overlaps a region learned with another shape"));
        }
        kernels::ZeroFill(space, c);
        relearn_product_grads = true;
      }
    } else if (!product_grads_.emplace(offset, size).second && product_grads_[offset] != size) {
      relearn_product_grads = true;  // two shapes at one offset: not learned, this step zero-filled all
    }
    return kernels::AddTransposedProduct<T, ExecSpace>(ctx, a, b, c, /*accumulate=*/!overwrite);
  };
  auto rows_of = [](auto x, int64_t r0, int64_t r1) { return Kokkos::subview(x, std::make_pair(r0, r1), Kokkos::ALL); };

  // The current microbatch's ids and mask (the lambdas below read these; set per microbatch).
  using MaskView = Kokkos::View<int64_t**, Kokkos::LayoutRight, MemSpace>;
  Vector<int64_t, ExecSpace> ids;
  MaskView mask;
  std::vector<Vector<int64_t, ExecSpace>> micro_ids(Mb);
  std::vector<MaskView> micro_mask(Mb);
  for (int64_t j = 0; j < Mb; ++j) {
    micro_ids[j] = pool.template TakeVector<int64_t>(space, "ids", N, /*zeroed=*/false);
    Kokkos::deep_copy(micro_ids[j], Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                                        input_ids.data() + j * N, N));
    micro_mask[j] = pool.template Take<int64_t>(space, "mask", B, S, /*zeroed=*/false);
    Kokkos::deep_copy(micro_mask[j], Kokkos::View<const int64_t**, Kokkos::LayoutRight, Kokkos::HostSpace,
                                                  Kokkos::MemoryUnmanaged>(attention_mask.data() + j * N, B, S));
  }

  // ---- forward, keeping what the backward pass reads ----
  struct Mlp {  // a dense MLP's activations
    M gate_up, act;  // [N, 3I] = [g1 | g2 | up], [N, I]
  };
  struct Layer {
    M h_in, x1, q, k, v, attn, h_mid, x2;  // q, k rotated; [N, width]
    Mlp mlp;                              // dense layers: the MLP; MoE layers: the extra MLP
    M h2, x3;                             // MoE layers: after the experts, normed for the extra MLP
    M router_logits, dispatched, eg, eu, eact, eo;
    FM probs;
    IntM experts, rank;
    // What the dispatcher is handed: each assignment's slot and the combine weights in slot order
    // (experts and probs themselves unless the layer's experts were moved: SetExpertPlacement).
    IntM slots;
    FM slot_probs;
    int64_t capacity = 0;
  };
  std::vector<Layer> layers;  // the current microbatch's (swapped in and out of its Micro)
  // Buffers that the op writing them fills completely: fresh (uninitialised). Buffers that are
  // accumulated into or partly written: zeros.
  auto fresh = [&](const char* label, int64_t rows, int64_t cols) -> M {
    return pool.template Take<T>(space, label, rows, cols, /*zeroed=*/false);
  };
  auto fresh_f = [&](const char* label, int64_t rows, int64_t cols) -> FM {
    return pool.template Take<float>(space, label, rows, cols, /*zeroed=*/false);
  };
  auto zeros = [&](const char* label, int64_t rows, int64_t cols) -> M {
    return pool.template Take<T>(space, label, rows, cols, /*zeroed=*/true);
  };
  auto zeros_f = [&](const char* label, int64_t rows, int64_t cols) -> FM {
    return pool.template Take<float>(space, label, rows, cols, /*zeroed=*/true);
  };
  auto zeros_i = [&](const char* label, int64_t rows, int64_t cols) -> IntM {
    return pool.template Take<int32_t>(space, label, rows, cols, /*zeroed=*/true);
  };
  // gate_proj [2I, H] and up_proj [I, H] are adjacent in the flat layout: one [3I, H] product.
  auto run_mlp = [&](const MlpOffsets& mlp, CM x, M out) -> absl::StatusOr<Mlp> {
    Mlp m{fresh("mlp.gate_up", N, 3 * I), fresh("mlp.act", N, I)};
    OPENMOE_RETURN_IF_ERROR(DenseMlpForward<T>(ctx, x, W(mlp.gate_up, 3 * I, H),
                                               W(mlp.down, H, I), m.gate_up, m.act, out));
    return m;
  };
  auto add = [&](M y, M x) { return kernels::AddInPlace<T>(space, y, CM(x)); };
  auto copy = [&](M x) {
    M y = fresh("copy", x.extent(0), x.extent(1));
    Kokkos::deep_copy(space, y, x);
    return y;
  };

  // One layer's forward: h (the residual stream) goes from the layer's input to its output;
  // layers[i] receives every activation the backward pass reads.
  auto layer_forward = [&](int64_t i, M h) -> absl::Status {
    const LayerOffsets& lo = offsets_.layers[i];
    Layer& a = layers[i];
    a.h_in = copy(h);
    a.x1   = fresh("x1", N, H);
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<T>(space, a.h_in, WV(lo.input_norm), a.x1, eps));
    a.q = fresh("q", N, Wq), a.k = fresh("k", N, Wkv), a.v = fresh("v", N, Wkv), a.attn = fresh("attn", N, Wq);
    M delta = fresh("delta", N, H);
    // The keys and values of the whole sequence are the "cache" (capacity S, offset 0).
    const AttentionBuffers<T, ExecSpace> attention{CM(a.x1), fresh("qkv", N, Wq + 2 * Wkv),
                                                   T3(a.q.data(), B, S, Wq), T3(a.k.data(), B, S, Wkv),
                                                   T3(a.v.data(), B, S, Wkv), mask,
                                                   T3(a.attn.data(), B, S, Wq), delta};
    OPENMOE_RETURN_IF_ERROR(AttentionForward<T>(ctx, AttentionHeads{Nh, Nkv, Dh}, W(lo.qkv, Wq + 2 * Wkv, H),
                                                W(lo.o, H, Wq), /*offset=*/0, /*decode_position=*/nullptr, attention));
    OPENMOE_RETURN_IF_ERROR(add(h, delta));
    a.h_mid = copy(h);
    a.x2    = fresh("x2", N, H);
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<T>(space, a.h_mid, WV(lo.post_attention_norm), a.x2, eps));
    if (c.IsMoeLayer(i)) {
      a.router_logits = zeros("router_logits", N, E), a.probs = zeros_f("probs", N, E);
      a.experts = zeros_i("experts", N, 2), a.rank = zeros_i("rank", N, 2);
      OPENMOE_ASSIGN_OR_RETURN(a.capacity, RouteTokens<T>(ctx, CM(a.x2), W(lo.router, E, H),
                                                          c.router_capacity_factor_train, c.router_min_capacity,
                                                          a.router_logits, a.probs, a.experts, a.rank));
      const int64_t C = a.capacity;
      const int64_t moe_layer = c.MoeIndex(i);
      a.slots = a.experts, a.slot_probs = a.probs;
      if (placed_[moe_layer]) {
        a.slots = zeros_i("slots", N, 2), a.slot_probs = zeros_f("slot_probs", N, E);
        PlaceAssignments<ExecSpace>(space, a.experts, Kokkos::subview(expert_slot_d_, moe_layer, Kokkos::ALL), CFM(a.probs),
                                    Kokkos::subview(slot_expert_d_, moe_layer, Kokkos::ALL), a.slots, a.slot_probs);
      }
      // Rows per local expert in the expert-major buffers: C here; P * C (every rank's slots) when an
      // expert-parallel dispatcher brings the rows of P ranks.
      const int64_t Ce = dispatcher_->rows_per_expert(C);
      // This rank's experts [e0, e0 + El): their weights and expert-major rows [El * Ce, ...].
      a.dispatched = zeros("dispatched", El * Ce, H), a.eg = zeros("eg", El * Ce, 2 * I), a.eu = zeros("eu", El * Ce, I);
      a.eact = zeros("eact", El * Ce, I), a.eo = zeros("eo", El * Ce, H);
      const T* wi_gate = Working<T>(lo.wi_gate) + es * H * 2 * I;
      const T* wi_up   = Working<T>(lo.wi_up) + es * H * I;
      const T* wo      = Working<T>(lo.wo) + es * I * H;
      // Local experts [first, end) on their rows: the dispatcher calls it between its exchanges (in
      // chunks of experts with --comm_overlap; each expert's products are the same either way).
      auto run_experts = [&](int64_t first, int64_t end) -> absl::Status {
        for (int64_t e = first; e < end; ++e) {
          const auto rows = std::make_pair(e * Ce, (e + 1) * Ce);
          OPENMOE_RETURN_IF_ERROR(ExpertForward<T>(ctx, CM(rows_of(a.dispatched, rows.first, rows.second)),
                                                   CM(wi_gate + e * H * 2 * I, H, 2 * I), CM(wi_up + e * H * I, H, I),
                                                   CM(wo + e * I * H, I, H), rows_of(a.eg, rows.first, rows.second),
                                                   rows_of(a.eu, rows.first, rows.second),
                                                   rows_of(a.eact, rows.first, rows.second),
                                                   rows_of(a.eo, rows.first, rows.second)));
        }
        return absl::OkStatus();
      };
      OPENMOE_RETURN_IF_ERROR(dispatcher_->RunExpertBlock(space, CM(a.x2), CFM(a.slot_probs), a.slots, a.rank, C,
                                                          a.dispatched, a.eo, run_experts, delta));
      OPENMOE_RETURN_IF_ERROR(add(h, delta));
      a.h2 = copy(h), a.x3 = zeros("x3", N, H);
      OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<T>(space, a.h2, WV(lo.pre_extra_mlp_norm), a.x3, eps));
      OPENMOE_ASSIGN_OR_RETURN(a.mlp, run_mlp(lo.mlp, CM(a.x3), delta));
    } else {
      OPENMOE_ASSIGN_OR_RETURN(a.mlp, run_mlp(lo.mlp, CM(a.x2), delta));
    }
    return add(h, delta);
  };
  // Per microbatch: its layers' activations between its forward and its backward.
  struct Micro {
    std::vector<Layer> layers;
    M h_out;  // the last stage: the residual stream after its layers (the loss starts from it)
    Kokkos::View<double*, MemSpace> router_parts;  // (aux, z) of each MoE layer of the stage
    int64_t moe_count = 0;
    bool forwarded = false, backwarded = false;
  };
  std::vector<Micro> micro(Mb);
  auto check_micro = [&](const char* what, int64_t j, bool forward) -> absl::Status {
    if (j < 0 || j >= Mb || (forward ? micro[j].forwarded : !micro[j].forwarded || micro[j].backwarded)) {
      return absl::InternalError(absl::StrCat("pipeline schedule: ", what, " of microbatch ", j, " of ", Mb,
                                              " out of order"));
    }
    return absl::OkStatus();
  };
  // Microbatch j's forward through layers [l0, l1) (StageOps::forward).
  auto forward_micro = [&](int64_t j, CFM in, FM out) -> absl::Status {
    OPENMOE_RETURN_IF_ERROR(check_micro("forward", j, true));
    micro[j].forwarded = true;
    ids = micro_ids[j], mask = micro_mask[j];
    micro[j].layers.resize(L);
    layers.swap(micro[j].layers);
    M h = zeros("h", N, H);
    if (first_stage) {
      OPENMOE_RETURN_IF_ERROR(kernels::Embedding<T>(space, W(offsets_.embed_tokens, V, H), ids, h));
    } else {  // the previous stage's output
      OPENMOE_ASSIGN_OR_RETURN(CM in_t, to_t(in));
      Kokkos::deep_copy(space, h, in_t);
    }
    for (int64_t i = l0; i < l1; ++i) {
      OPENMOE_RETURN_IF_ERROR(layer_forward(i, h));
      if (recompute_) {  // keep only the layer's input; the backward pass runs the layer again
        M h_in = layers[i].h_in;
        layers[i] = Layer{};
        layers[i].h_in = h_in;
      }
    }
    if (last_stage) {
      micro[j].h_out = h;
    } else {
      OPENMOE_ASSIGN_OR_RETURN(CFM h_f, to_f(CM(h)));
      Kokkos::deep_copy(out, h_f);  // fenced: the schedule sends `out` to the next stage
    }
    layers.swap(micro[j].layers);
    return absl::OkStatus();
  };

  // Float copies of the norm weights the backward pass reads (the step's working values).
  auto norm_weight = [&](int64_t offset) -> absl::StatusOr<ConstVector<float, ExecSpace>> {
    OPENMOE_ASSIGN_OR_RETURN(CFM w, to_f(CM(Working<T>(offset), 1, H)));
    return ConstVector<float, ExecSpace>(Kokkos::subview(w, 0, Kokkos::ALL));  // holds the pooled buffer
  };

  // ---- LM loss and its gradient, a chunk of rows at a time (never [N, V] logits at once) ----
  LossParts parts;
  FM dh = zeros_f("dh", N, H);  // gradient of the residual stream, walked backwards (float32)
  // The last stage: microbatch j's loss from its final residual stream; its gradient into dh.
  auto lm_loss_backward = [&](int64_t j) -> absl::Status {
    M h_final = micro[j].h_out, xf = zeros("xf", N, H);
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<T>(space, h_final, WV(offsets_.final_norm), xf, eps));
    const int64_t* micro_input = input_ids.data() + j * N;
    std::vector<int64_t> labels(N);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) labels[b * S + s] = s + 1 < S ? micro_input[b * S + s + 1] : -1;
    Vector<int64_t, ExecSpace> labels_d = pool.template TakeVector<int64_t>(space, "labels", N, /*zeroed=*/false);
    Kokkos::deep_copy(labels_d, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(labels.data(), N));
    FM dxf = fresh_f("dxf", N, H);  // every chunk writes its rows
    const int64_t chunk = std::min(N, kLossRowsPerChunk);
    M logits = fresh("logits_chunk", chunk, V);  // each chunk's product writes its rows
    FM logits_f = fresh_f("logits_chunk_f32", kFloat ? 0 : chunk, kFloat ? 0 : V);
    // Every row's loss, read back once per microbatch after its last chunk (no wait for the device
    // per chunk).
    Vector<double, ExecSpace> row_loss = pool.template TakeVector<double>(space, "row_loss", N, /*zeroed=*/true);
    // Where the run-dtype logit gradients of all N rows fit lm_head_gradient_bytes_, they are kept
    // and the LM head's weight gradient is one product over all rows: a product per chunk would
    // read and write the whole [V, H] float32 gradient once per chunk (8 x 4.2 GB at 8B shapes).
    const bool one_head_product = N * V * int64_t(sizeof(T)) <= lm_head_gradient_bytes_;
    M dlg_all;  // every chunk writes its rows
    if (one_head_product) dlg_all = fresh("dlogits", N, V);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t r1 = std::min(N, r0 + chunk), R = r1 - r0;
      M lg(logits.data(), R, V);
      CM x_rows(rows_of(xf, r0, r1));
      OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(ctx, x_rows, W(offsets_.lm_head, V, H), lg));
      FM lgf = kFloat ? FM(reinterpret_cast<float*>(lg.data()), R, V) : FM(logits_f.data(), R, V);  // float logits
      if constexpr (!kFloat) OPENMOE_RETURN_IF_ERROR((kernels::Convert<T, float>(space, CM(lg), lgf)));
      Vector<double, ExecSpace> loss_rows(row_loss.data() + r0, R);
      OPENMOE_RETURN_IF_ERROR(kernels::LmLossBackward<ExecSpace>(ctx, lgf, Kokkos::subview(labels_d, std::make_pair(r0, r1)),
                                                                 c.label_smoothing, c.z_loss_factor, loss_rows,
                                                                 loss_scale_));
      CM dlg;  // the chunk's logit gradients [R, V] in the run dtype
      if (one_head_product) {
        const M dlg_rows(dlg_all.data() + r0 * V, R, V);
        if constexpr (kFloat) {
          Kokkos::deep_copy(space, dlg_rows, lg);  // (LmLossBackward wrote them over the float logits)
        } else {
          OPENMOE_RETURN_IF_ERROR((kernels::Convert<float, T>(space, CFM(lgf), dlg_rows)));
        }
        dlg = CM(dlg_rows);
      } else {
        OPENMOE_ASSIGN_OR_RETURN(dlg, to_t(CFM(lgf)));
      }
      OPENMOE_RETURN_IF_ERROR(kernels::ProductIntoFloat<T>(ctx, dlg, W(offsets_.lm_head, V, H), rows_of(dxf, r0, r1),
                                                           /*w_is_out_in=*/false));
      if (!one_head_product) OPENMOE_RETURN_IF_ERROR(weight_grad(dlg, x_rows, G(offsets_.lm_head, V, H)));
    }
    if (one_head_product) OPENMOE_RETURN_IF_ERROR(weight_grad(CM(dlg_all), CM(xf), G(offsets_.lm_head, V, H)));
    auto loss_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), row_loss);
    for (int64_t r = 0; r < N; ++r) parts.lm += loss_host(r);  // in row order, as chunk by chunk before
    OPENMOE_ASSIGN_OR_RETURN(CFM hf, to_f(CM(h_final)));
    const CFM dxf_f(dxf);
    OPENMOE_ASSIGN_OR_RETURN(auto w_norm, norm_weight(offsets_.final_norm));
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNormBackward<ExecSpace>(ctx, hf, w_norm, dxf_f, eps, dh, GV(offsets_.final_norm)));
    micro[j].h_out = M();
    return absl::OkStatus();
  };

  // ---- backward through the layers (float32 gradients; products in the run dtype) ----
  FM dx = zeros_f("dx", N, H), dnorm = zeros_f("dnorm", N, H);
  // out (float) = sum of dy_k @ w_k over the given pairs: run-dtype products summed in float32
  // (kernels::ProductIntoFloat; the first one writes out). The gradients dy_k come in the run dtype
  // (converted once by the caller, which also uses them for the weight gradients).
  auto matmul_sum = [&](const std::vector<std::pair<CM, CM>>& terms, FM out) -> absl::Status {
    for (size_t k = 0; k < terms.size(); ++k) {
      OPENMOE_RETURN_IF_ERROR(kernels::ProductIntoFloat<T>(ctx, terms[k].first, terms[k].second, out,
                                                           /*w_is_out_in=*/false, /*accumulate=*/k > 0));
    }
    return absl::OkStatus();
  };
  // MLP backward: dy -> dx (written); weight gradients accumulated.
  // (gate_proj; up_proj) as one [3I, H] matrix, in the weights and in the gradients.
  auto mlp_backward = [&](const MlpOffsets& mlp, CM x, const Mlp& m, CFM dy, FM dx_out) -> absl::Status {
    FM dact = zeros_f("dact", N, I), d_gate_up = zeros_f("d_gate_up", N, 3 * I);
    OPENMOE_ASSIGN_OR_RETURN(CM dy_t, to_t(dy));
    OPENMOE_RETURN_IF_ERROR(matmul_sum({{dy_t, W(mlp.down, H, I)}}, dact));
    OPENMOE_RETURN_IF_ERROR(weight_grad(dy_t, CM(m.act), G(mlp.down, H, I)));
    OPENMOE_ASSIGN_OR_RETURN(CFM gate_up_f, to_f(CM(m.gate_up)));
    OPENMOE_RETURN_IF_ERROR(kernels::SwigluBackwardFused<ExecSpace>(space, gate_up_f, CFM(dact), d_gate_up));
    OPENMOE_ASSIGN_OR_RETURN(CM d_gate_up_t, to_t(CFM(d_gate_up)));
    OPENMOE_RETURN_IF_ERROR(matmul_sum({{d_gate_up_t, W(mlp.gate_up, 3 * I, H)}}, dx_out));
    return weight_grad(d_gate_up_t, x, G(mlp.gate_up, 3 * I, H));
  };
  // Norm backward into the residual gradient: dh += RmsNormBackward(x_in, dy).
  auto norm_backward = [&](int64_t weight, CM x_in, CFM dy) -> absl::Status {
    OPENMOE_ASSIGN_OR_RETURN(CFM x_f, to_f(x_in));
    OPENMOE_ASSIGN_OR_RETURN(auto w, norm_weight(weight));
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNormBackward<ExecSpace>(ctx, x_f, w, dy, eps, dnorm, GV(weight)));
    return kernels::AddInPlace<float>(space, dh, CFM(dnorm));
  };
  const double moe_layers = std::max<int64_t>(1, c.NumMoeLayers());
  // Microbatch j's backward through layers [l1, l0) (StageOps::backward).
  auto backward_micro = [&](int64_t j, CFM dout, FM din) -> absl::Status {
  OPENMOE_RETURN_IF_ERROR(check_micro("backward", j, false));
  micro[j].backwarded = true;
  ids = micro_ids[j], mask = micro_mask[j];
  layers.swap(micro[j].layers);
  if (last_stage) {
    OPENMOE_RETURN_IF_ERROR(lm_loss_backward(j));
  } else {  // the gradient of this stage's output, from the next stage
    Kokkos::deep_copy(space, dh, dout);
  }
  // Per MoE layer, in backward order: its unweighted (aux, z) [2 * MoE layers].
  Kokkos::View<double*, MemSpace> router_parts_d =
      pool.template TakeVector<double>(space, "router_parts", 2 * std::max<int64_t>(1, c.NumMoeLayers()), /*zeroed=*/true);
  int64_t moe_index = 0;
  for (int64_t i = l1 - 1; i >= l0; --i) {
    const LayerOffsets& lo = offsets_.layers[i];
    if (recompute_) {  // the same kernels on the same input: the same activations, bit for bit
      M h_again = copy(layers[i].h_in);
      OPENMOE_RETURN_IF_ERROR(layer_forward(i, h_again));
    }
    Layer& a = layers[i];
    if (c.IsMoeLayer(i)) {
      const int64_t C = a.capacity;
      const int64_t Ce = dispatcher_->rows_per_expert(C);
      OPENMOE_RETURN_IF_ERROR(mlp_backward(lo.mlp, CM(a.x3), a.mlp, CFM(dh), dx));
      OPENMOE_RETURN_IF_ERROR(norm_backward(lo.pre_extra_mlp_norm, CM(a.h2), CFM(dx)));
      // Experts: dh is the gradient of the combined output.
      FM d_eo = zeros_f("d_eo", El * Ce, H), dprobs = zeros_f("dprobs", N, E), d_eact = zeros_f("d_eact", El * Ce, I);
      FM d_eg = zeros_f("d_eg", El * Ce, 2 * I), d_eu = zeros_f("d_eu", El * Ce, I), d_disp = zeros_f("d_disp", El * Ce, H);
      OPENMOE_ASSIGN_OR_RETURN(CFM eo_f, to_f(CM(a.eo)));
      const T* wi_gate = Working<T>(lo.wi_gate) + es * H * 2 * I;
      const T* wi_up   = Working<T>(lo.wi_up) + es * H * I;
      const T* wo      = Working<T>(lo.wo) + es * I * H;
      float* g_wi_gate = (flat_grads_.data() + lo.wi_gate) + es * H * 2 * I;
      float* g_wi_up   = (flat_grads_.data() + lo.wi_up) + es * H * I;
      float* g_wo      = (flat_grads_.data() + lo.wo) + es * I * H;
      OPENMOE_ASSIGN_OR_RETURN(CFM eg_f, to_f(CM(a.eg)));
      OPENMOE_ASSIGN_OR_RETURN(CFM eu_f, to_f(CM(a.eu)));
      // Local experts [first, end): d_eo rows -> d_disp rows and their weight gradients (the dispatcher
      // calls it between its exchanges, in chunks of experts with --comm_overlap).
      auto run_experts_backward = [&](int64_t first, int64_t end) -> absl::Status {
        for (int64_t e = first; e < end; ++e) {
          // d_eact_e = d_eo_e @ wo_e^T (wo_e [I, H] is Linear's [out = I, in = H]).
          OPENMOE_ASSIGN_OR_RETURN(CM d_eo_t, to_t(CFM(rows_of(d_eo, e * Ce, (e + 1) * Ce))));
          OPENMOE_RETURN_IF_ERROR(kernels::ProductIntoFloat<T>(ctx, d_eo_t, CM(wo + e * I * H, I, H),
                                                               rows_of(d_eact, e * Ce, (e + 1) * Ce), /*w_is_out_in=*/true));
          OPENMOE_RETURN_IF_ERROR(weight_grad(CM(rows_of(a.eact, e * Ce, (e + 1) * Ce)), d_eo_t, FM(g_wo + e * I * H, I, H)));
        }
        const int64_t r0 = first * Ce, r1 = end * Ce;  // the range's rows (SwigluBackward is row-wise)
        OPENMOE_RETURN_IF_ERROR(kernels::SwigluBackward<ExecSpace>(space, rows_of(eg_f, r0, r1), rows_of(eu_f, r0, r1),
                                                                   CFM(rows_of(d_eact, r0, r1)), rows_of(d_eg, r0, r1),
                                                                   rows_of(d_eu, r0, r1)));
        for (int64_t e = first; e < end; ++e) {
          OPENMOE_ASSIGN_OR_RETURN(CM d_eg_t, to_t(CFM(rows_of(d_eg, e * Ce, (e + 1) * Ce))));
          OPENMOE_ASSIGN_OR_RETURN(CM d_eu_t, to_t(CFM(rows_of(d_eu, e * Ce, (e + 1) * Ce))));
          const FM d_disp_e = rows_of(d_disp, e * Ce, (e + 1) * Ce);
          OPENMOE_RETURN_IF_ERROR(kernels::ProductIntoFloat<T>(ctx, d_eg_t, CM(wi_gate + e * H * 2 * I, H, 2 * I), d_disp_e,
                                                               /*w_is_out_in=*/true));
          OPENMOE_RETURN_IF_ERROR(kernels::ProductIntoFloat<T>(ctx, d_eu_t, CM(wi_up + e * H * I, H, I), d_disp_e,
                                                               /*w_is_out_in=*/true, /*accumulate=*/true));
          CM disp_e(rows_of(a.dispatched, e * Ce, (e + 1) * Ce));
          OPENMOE_RETURN_IF_ERROR(weight_grad(disp_e, d_eg_t, FM(g_wi_gate + e * H * 2 * I, H, 2 * I)));
          OPENMOE_RETURN_IF_ERROR(weight_grad(disp_e, d_eu_t, FM(g_wi_up + e * H * I, H, I)));
        }
        return absl::OkStatus();
      };
      kernels::ZeroFill(space, dx);
      const int64_t moe_layer = c.MoeIndex(i);
      const bool placed = placed_[moe_layer];
      FM slot_dprobs = placed ? zeros_f("slot_dprobs", N, E) : dprobs;  // the combine weights' gradient in slot order
      OPENMOE_RETURN_IF_ERROR(dispatcher_->RunExpertBlockBackward(space, CFM(dh), eo_f, CFM(a.slot_probs), a.slots,
                                                                  a.rank, C, d_eo, slot_dprobs, d_disp,
                                                                  run_experts_backward, dx));
      if (placed) {
        UnplaceProbGradients<ExecSpace>(space, CFM(slot_dprobs), Kokkos::subview(expert_slot_d_, moe_layer, Kokkos::ALL),
                                        dprobs);
      }
      if (expert_loads_.extent(0) > 0) {  // once per step and layer (the backward pass runs once)
        CountExpertLoads<ExecSpace>(space, a.experts,
                                    Kokkos::subview(expert_loads_, std::make_pair(moe_layer * E, (moe_layer + 1) * E)));
      }
      // Router: combine weights + aux loss through the softmax, z-loss on the logits (device;
      // this layer's unweighted aux and z land in router_parts_d, read once after the pass).
      OPENMOE_ASSIGN_OR_RETURN(CFM router_f, to_f(CM(a.router_logits)));
      const double aux_w = c.router_aux_loss_factor / moe_layers, z_w = c.router_z_loss_factor / moe_layers;
      FM d_router = fresh_f("d_router", N, E);
      OPENMOE_RETURN_IF_ERROR(kernels::RouterLossBackward<ExecSpace>(
          space, router_f, a.experts, CFM(dprobs), aux_w, z_w, loss_scale_, d_router,
          Kokkos::subview(router_parts_d, std::make_pair(2 * moe_index, 2 * moe_index + 2))));
      ++moe_index;
      FM dx_router = zeros_f("dx_router", N, H);
      OPENMOE_ASSIGN_OR_RETURN(CM d_router_t, to_t(CFM(d_router)));
      OPENMOE_RETURN_IF_ERROR(matmul_sum({{d_router_t, W(lo.router, E, H)}}, dx_router));
      OPENMOE_RETURN_IF_ERROR(kernels::AddInPlace<float>(space, dx, CFM(dx_router)));
      OPENMOE_ASSIGN_OR_RETURN(CFM x2_f, to_f(CM(a.x2)));
      // float32 for the router (its gradient is the sensitive one; [N, E] is small).
      OPENMOE_RETURN_IF_ERROR((kernels::AddTransposedProduct<float, ExecSpace>(ctx, CFM(d_router), x2_f, G(lo.router, E, H))));
    } else {
      OPENMOE_RETURN_IF_ERROR(mlp_backward(lo.mlp, CM(a.x2), a.mlp, CFM(dh), dx));
    }
    OPENMOE_RETURN_IF_ERROR(norm_backward(lo.post_attention_norm, CM(a.h_mid), CFM(dx)));
    // Attention block: dh is the gradient of h_mid = h_in + o_proj(attn).
    FM dattn = fresh_f("dattn", N, Wq), dq = fresh_f("dq", N, Wq), dk = fresh_f("dk", N, Wkv), dv = fresh_f("dv", N, Wkv);
    OPENMOE_ASSIGN_OR_RETURN(CM dh_t, to_t(CFM(dh)));
    OPENMOE_RETURN_IF_ERROR(matmul_sum({{dh_t, W(lo.o, H, Wq)}}, dattn));
    OPENMOE_RETURN_IF_ERROR(weight_grad(dh_t, CM(a.attn), G(lo.o, H, Wq)));
    OPENMOE_ASSIGN_OR_RETURN(CFM q_f, to_f(CM(a.q)));
    OPENMOE_ASSIGN_OR_RETURN(CFM k_f, to_f(CM(a.k)));
    OPENMOE_ASSIGN_OR_RETURN(CFM v_f, to_f(CM(a.v)));
    OPENMOE_RETURN_IF_ERROR(kernels::CausalAttentionBackward<ExecSpace>(
        ctx, CF3(q_f.data(), B, S, Wq), CF3(k_f.data(), B, S, Wkv), CF3(v_f.data(), B, S, Wkv), mask,
        CF3(dattn.data(), B, S, Wq), Nh, Nkv, Dh, F3(dq.data(), B, S, Wq), F3(dk.data(), B, S, Wkv), F3(dv.data(), B, S, Wkv),
        /*tf32_products=*/!kFloat));
    OPENMOE_RETURN_IF_ERROR(kernels::ApplyRope<float>(space, F3(dq.data(), B, S, Wq), Dh, 0, /*inverse=*/true));
    OPENMOE_RETURN_IF_ERROR(kernels::ApplyRope<float>(space, F3(dk.data(), B, S, Wkv), Dh, 0, /*inverse=*/true));
    OPENMOE_ASSIGN_OR_RETURN(CM dq_t, to_t(CFM(dq)));
    OPENMOE_ASSIGN_OR_RETURN(CM dk_t, to_t(CFM(dk)));
    OPENMOE_ASSIGN_OR_RETURN(CM dv_t, to_t(CFM(dv)));
    OPENMOE_RETURN_IF_ERROR(matmul_sum({{dq_t, W(lo.qkv, Wq, H)},
                                        {dk_t, W(lo.k, Wkv, H)},
                                        {dv_t, W(lo.v, Wkv, H)}}, dx));
    OPENMOE_RETURN_IF_ERROR(weight_grad(dq_t, CM(a.x1), G(lo.qkv, Wq, H)));
    OPENMOE_RETURN_IF_ERROR(weight_grad(dk_t, CM(a.x1), G(lo.k, Wkv, H)));
    OPENMOE_RETURN_IF_ERROR(weight_grad(dv_t, CM(a.x1), G(lo.v, Wkv, H)));
    OPENMOE_RETURN_IF_ERROR(norm_backward(lo.input_norm, CM(a.h_in), CFM(dx)));
    a = Layer{};  // this layer's activations are no longer needed
  }
  if (first_stage) {
    OPENMOE_RETURN_IF_ERROR(kernels::EmbeddingBackward<ExecSpace>(space, ids, CFM(dh), c.pad_token_id,
                                                                  G(offsets_.embed_tokens, V, H)));
  } else {  // the gradient of this stage's input, for the previous stage
    Kokkos::deep_copy(din, dh);  // fenced: the schedule sends `din` to the previous stage
  }
  micro[j].router_parts = router_parts_d, micro[j].moe_count = moe_index;
  layers.swap(micro[j].layers);
  micro[j].layers.clear();
  return absl::OkStatus();
  };

  if (plan.schedule == nullptr) {  // ForwardBackward: the one microbatch through every layer
    OPENMOE_RETURN_IF_ERROR(forward_micro(0, CFM(), FM()));
    OPENMOE_RETURN_IF_ERROR(backward_micro(0, CFM(), FM()));
  } else {
    StageOps ops;
    ops.microbatches = Mb, ops.rows = N, ops.hidden = H, ops.first = first_stage, ops.last = last_stage;
    ops.forward = forward_micro, ops.backward = backward_micro;
    OPENMOE_RETURN_IF_ERROR((*plan.schedule)(ops));
    for (int64_t j = 0; j < Mb; ++j) {
      if (!micro[j].backwarded) {
        return absl::InternalError(absl::StrCat("pipeline schedule: microbatch ", j, " of ", Mb, " has no backward pass"));
      }
    }
  }
  if (product_grads_known_) {  // a known region no product wrote this step holds last step's values
    for (const auto& [offset, size] : product_grads_) {
      if (!products_written.count(offset)) {
        kernels::ZeroFill(space, Kokkos::subview(flat_grads_, std::make_pair(offset, offset + size)));
      }
    }
    if (relearn_product_grads) product_grads_known_ = false;  // the next step zero-fills all and learns
  } else {  // learned: used from the next step on if the regions are disjoint and only products wrote them
    int64_t end = 0;
    bool disjoint = true;
    for (const auto& [offset, size] : product_grads_) disjoint = disjoint && offset >= end, end = offset + size;
    product_grads_known_ = disjoint && !relearn_product_grads && end <= int64_t(flat_grads_.extent(0));
  }
  // Back to the loss's own gradients (inf / NaN stay), of the mean over microbatches.
  if (loss_scale_ != 1.0f || Mb != 1) {
    OPENMOE_RETURN_IF_ERROR(kernels::Scale<ExecSpace>(space, flat_grads_, 1.0f / (loss_scale_ * float(Mb))));
  }
  Kokkos::fence();
  double aux_sum = 0, z_sum = 0;
  for (int64_t j = 0; j < Mb; ++j) {
    auto router_parts = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), micro[j].router_parts);
    for (int64_t k = 0; k < micro[j].moe_count; ++k) aux_sum += router_parts(2 * k), z_sum += router_parts(2 * k + 1);
  }
  parts.lm         = parts.lm / double(Mb);
  parts.router_aux = c.router_aux_loss_factor * aux_sum / moe_layers / double(Mb);
  parts.router_z   = c.router_z_loss_factor * z_sum / moe_layers / double(Mb);
  parts.total      = parts.lm + parts.router_aux + parts.router_z;
  return parts;
}

#define OPENMOE_INSTANTIATE_TRAINABLE(Space) template class TrainableModel<Space>;
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_TRAINABLE)

}  // namespace openmoe
