#include "openmoe/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tuple>
#include <utility>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "openmoe/config.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/parameter_store.h"
#include "openmoe/text/tokenizer.h"
#include "openmoe/train/train_data.h"

namespace openmoe::train {
namespace {

namespace fs = std::filesystem;
using Space = TrainSpace;

// The MoE-layer index of a stacked expert tensor "model.layers.<layer>.mlp.experts.<...>".
int64_t MoeIndexOf(const OpenMoeConfig& config, const std::string& expert_tensor) {
  return config.MoeIndex(std::atoll(expert_tensor.c_str() + std::strlen("model.layers.")));
}

absl::Status CheckSameShapes(const OpenMoeConfig& a, const OpenMoeConfig& b, const std::string& what) {
  const std::vector<std::pair<const char*, std::pair<int64_t, int64_t>>> keys = {
      {"vocab_size", {a.vocab_size, b.vocab_size}}, {"hidden_size", {a.hidden_size, b.hidden_size}},
      {"intermediate_size", {a.intermediate_size, b.intermediate_size}},
      {"num_hidden_layers", {a.num_hidden_layers, b.num_hidden_layers}},
      {"num_attention_heads", {a.num_attention_heads, b.num_attention_heads}},
      {"num_experts", {a.num_experts, b.num_experts}}, {"moe_layer_interval", {a.moe_layer_interval, b.moe_layer_interval}}};
  for (const auto& [key, values] : keys) {
    if (values.first != values.second) {
      return absl::InvalidArgumentError(absl::StrCat("--resume: the checkpoint's ", key, " is ", values.second, ", ", what,
                                                     " has ", values.first));
    }
  }
  return absl::OkStatus();
}

TrainModel::ComputeDtype ComputeDtypeOf(const std::string& precision) {  // fp32 | bf16 | fp16
  using Dtype = TrainModel::ComputeDtype;
  return precision == "bf16" ? Dtype::kBf16 : precision == "fp16" ? Dtype::kFp16 : Dtype::kFp32;
}

// An unwritable output path fails before any work.
absl::Status PrepareOutputPath(const std::string& output_path) {
  std::error_code error;
  fs::create_directories(output_path, error);
  const std::string probe = (fs::path(output_path) / absl::StrCat(".probe-", getpid())).string();
  if (error || !std::ofstream(probe)) {
    return absl::PermissionDeniedError(absl::StrCat("--output_path '", output_path, "' is not writable",
                                                    error ? ": " + error.message() : ""));
  }
  fs::remove(probe, error);
  return absl::OkStatus();
}

// The model to train: the checkpoint in `folder` (the --resume one, or --model), else a random
// init of --model_name; the loss factors, precision and recomputation of `o`.
// `experts` (size > 0): only this EP position's experts are stored.
// `pipeline` (stages > 1): only its stage's tensors are stored.
absl::StatusOr<TrainModel> LoadModel(const TrainOptions& o, const std::string& folder, const ExpertParallelism& experts,
                                     const PipelineHooks& pipeline, bool writer) {
  OPENMOE_ASSIGN_OR_RETURN(const OpenMoeConfig config,
                           !folder.empty() ? LoadConfig(folder + "/config.json") : PresetConfig(o.model_name));
  ExpertShard shard;  // every expert
  if (experts.size > 0) {
    const int64_t E = config.num_experts;
    if (E % experts.size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("expert parallelism over ", experts.size, " ranks: the model's ", E,
                                                     " experts (num_experts) cannot be split evenly"));
    }
    shard = {experts.index * (E / experts.size), E / experts.size, E};
  }
  std::optional<LayerRange> layers;  // the whole model
  if (pipeline.stages > 1) {
    OPENMOE_ASSIGN_OR_RETURN(layers, PipelineStageLayers(config, pipeline.stage, pipeline.stages));
  }
  absl::StatusOr<TrainModel> model = absl::UnknownError("no model");
  if (!folder.empty()) {
    model = TrainModel::Load(folder, shard, layers);
  } else {
    if (writer) std::fprintf(stderr, "random init of the %s preset (seed %llu)\n", o.model_name.c_str(), (unsigned long long)o.seed);
    model = TrainModel::RandomInit(config, o.seed, shard, layers);
  }
  if (!model.ok()) return model.status();
  if (!o.resume.empty() && (!o.model_dir.empty() || !o.model_name.empty())) {  // the run's own model must match
    OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig given, !o.model_dir.empty() ? LoadConfig(o.model_dir + "/config.json")
                                                                        : PresetConfig(o.model_name));
    OPENMOE_RETURN_IF_ERROR(CheckSameShapes(given, model->config(), !o.model_dir.empty() ? "--model" : "--model_name"));
  }
  const OpenMoeConfig& c = model->config();
  model->set_recompute_activations(o.grad_checkpoint);
  model->set_compute_dtype(ComputeDtypeOf(o.precision));
  model->SetLossFactors(o.label_smoothing.value_or(c.label_smoothing), o.z_loss_factor.value_or(c.z_loss_factor),
                        o.router_aux_loss_factor.value_or(c.router_aux_loss_factor),
                        o.router_z_loss_factor.value_or(c.router_z_loss_factor));
  return model;
}

// The dataset as token rows [N, S]: a pre-tokenized .safetensors batch, or text records tokenized
// with `tokenizer_file` and padded / truncated to max_length (at most the model's positions).
absl::StatusOr<io::TokenBatch> LoadDataset(const TrainOptions& o, const std::string& tokenizer_file,
                                           int64_t max_position_embeddings) {
  if (IsPretokenized(o.dataset)) return io::ReadTokenBatch(o.dataset, "--dataset");
  if (tokenizer_file.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("--dataset '", o.dataset, "' is text, but the model has no tokenizer.model "
                                                      "or spiece.model; give --model DIR with one, or pre-tokenized "
                                                      ".safetensors data"));
  }
  OPENMOE_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::LoadFile(tokenizer_file));
  OPENMOE_ASSIGN_OR_RETURN(std::vector<InstructionRecord> records, ReadInstructionRecords(o.dataset));
  return TokenizeRecords(records, tokenizer, std::min(o.max_length, max_position_embeddings));
}

// One line per rank of a multi-rank run: how many fp32 master weights it keeps of the flat layout
// it stores, with the ZeRO partition's parts as "<elements> over <ranks> ranks" (the dense range
// over the data-parallel ranks, then with sharded experts the expert range over the replicas).
// ZeRO-1/2 of a bf16 / fp16 run keeps its chunk plus the replicated tail of each part; fp32 runs
// and ZeRO-0 keep them whole (said so).
std::string MastersLine(const TrainModel& model, const AdamWOptimizer& optimizer, const DataParallelRank& dp, int stage) {
  std::string how = absl::StrCat("ZeRO-", optimizer.zero_stage());
  if (optimizer.sharded()) {
    const char* separator = " parts: ";
    for (const ZeroPartition& p : optimizer.partitions()) {
      absl::StrAppend(&how, separator, p.total, " over ", p.size, " ranks");
      separator = ", ";
    }
  }
  if (!model.masters_sharded()) {
    absl::StrAppend(&how, model.compute_dtype() == TrainModel::ComputeDtype::kFp32 ? "; whole: an fp32 run computes with them"
                                                                                   : "; whole");
  }
  return absl::StrCat("fp32 masters: stage ", stage, ", data-parallel rank ", dp.rank, " of ", dp.size, " keeps ",
                      model.flat_masters().extent(0), " of ", model.layout().total(), " (", how, ")");
}

}  // namespace

absl::StatusOr<Trainer> Trainer::Create(const TrainOptions& o, DataParallelRank dp, GradientReduction reduce_gradients,
                                        LossReduction reduce_loss, ZeroSharding zero, PipelineHooks pipeline,
                                        ExpertParallelism experts) {
  OPENMOE_RETURN_IF_ERROR(ValidateTrainOptions(o));
  OPENMOE_RETURN_IF_ERROR(ValidateDataParallelRank(dp));
  if (zero.stage < 0 || zero.stage > 2) return absl::InvalidArgumentError(absl::StrCat("ZeRO stage ", zero.stage, ": 0, 1 or 2"));
  if (zero.stage > 0 && (!zero.comm || zero.comm->size() != dp.size || zero.comm->rank() != dp.rank)) {
    return absl::InvalidArgumentError(absl::StrCat("ZeRO-", zero.stage, " needs a communicator over the ", dp.size,
                                                   " data-parallel ranks"));
  }
  if (dp.size > 1 && !reduce_gradients && zero.stage != 2) {
    return absl::InvalidArgumentError(absl::StrCat("data-parallel training over ", dp.size, " ranks needs a gradient reduction"));
  }
  const bool writer = dp.rank == 0 && pipeline.writer;
  if (writer) OPENMOE_RETURN_IF_ERROR(PrepareOutputPath(o.output_path));

  // Model (and where to continue from).
  std::string model_source = o.model_dir;
  TrainerState resumed;
  if (!o.resume.empty()) {
    OPENMOE_ASSIGN_OR_RETURN(model_source, ResumeFolder(o.resume));
    OPENMOE_ASSIGN_OR_RETURN(resumed, ReadTrainerState(model_source, o.initial_loss_scale));
    if (writer) std::fprintf(stderr, "resuming from step %lld of %s\n", (long long)resumed.position.step, model_source.c_str());
  }
  if (experts.size > 0 && (!experts.group || experts.group->size() != experts.size || experts.group->rank() != experts.index ||
                           !experts.replicas)) {
    return absl::InvalidArgumentError(absl::StrCat("expert parallelism over ", experts.size, " ranks needs its EP group "
                                                   "(this rank at position ", experts.index, ") and replica communicators"));
  }
  if (pipeline.stages > 1 && (!pipeline.pipeline || pipeline.pipeline->size() != pipeline.stages ||
                              pipeline.pipeline->rank() != pipeline.stage)) {
    return absl::InvalidArgumentError(absl::StrCat("pipeline stage ", pipeline.stage, " of ", pipeline.stages,
                                                   " needs the communicator of its pipeline"));
  }
  OPENMOE_ASSIGN_OR_RETURN(TrainModel model, LoadModel(o, model_source, experts, pipeline, writer));
  Trainer t(o, dp, std::move(reduce_gradients), std::move(model));
  t.experts_ = experts;
  t.reduce_loss_ = std::move(reduce_loss);
  t.pipeline_ = std::move(pipeline);
  t.writer_ = writer;
  t.stage_writer_ = dp.rank == 0;
  t.position_ = resumed.position;

  // Data.
  for (const std::string& dir : {model_source, o.model_dir}) {
    for (const char* name : {"tokenizer.model", "spiece.model"})
      if (t.tokenizer_file_.empty() && !dir.empty() && fs::exists(fs::path(dir) / name)) t.tokenizer_file_ = (fs::path(dir) / name).string();
  }
  OPENMOE_ASSIGN_OR_RETURN(t.data_, LoadDataset(o, t.tokenizer_file_, t.model_.config().max_position_embeddings));
  const int64_t N = t.data_.batch, S = t.data_.seq_len, B = o.batch_size;
  OPENMOE_ASSIGN_OR_RETURN(t.sharding_, DataSharding::Create(N, B, dp, o.seed, o.shuffle));
  if (!o.resume.empty()) {  // the saved global example index in this run's batches (any world size or plugin)
    std::string note;
    OPENMOE_ASSIGN_OR_RETURN(t.position_, ResumePosition(resumed, {B, N, S, int64_t(o.seed), int64_t(o.shuffle), dp.size}, &note));
    if (writer && !note.empty()) std::fprintf(stderr, "%s\n", note.c_str());
  }
  t.total_steps_ = t.sharding_.batches_per_epoch() * o.num_epochs;
  if (o.max_steps > 0) t.total_steps_ = std::min(t.total_steps_, o.max_steps);
  t.schedule_ = {o.lr, o.warmup_steps, o.lr_schedule == "cosine" ? LrSchedule::Decay::kCosine : LrSchedule::Decay::kConstant,
                 t.total_steps_};

  // Optimizer state: zeros, or the checkpoint's moments.
  OptimizerOptions optimizer;
  optimizer.adamw.lr = o.lr, optimizer.adamw.weight_decay = o.weight_decay;
  optimizer.max_grad_norm = o.max_grad_norm;
  optimizer.compute_dtype = ComputeDtypeOf(o.precision);
  optimizer.loss_scaler.initial_scale = o.initial_loss_scale;
  const ExpertGroups groups = t.model_.expert_shard().all() ? ExpertGroups{} : ExpertGroups{experts.replicas, experts.group};
  t.dp_comm_ = zero.comm;
  t.optimizer_ = AdamWOptimizer(t.model_.layout(), optimizer, std::move(zero), groups, t.model_.expert_begin());
  if (t.pipeline_.stages > 1) {
    t.optimizer_.set_pipeline(t.pipeline_.pipeline);  // the norm covers every stage
    if (t.stage_writer_) {  // one line per stage
      int64_t stored = 0, whole = 0;
      for (const TensorSpec& spec : t.model_.table()) stored += spec.numel();
      for (const TensorSpec& spec : CheckpointTable(t.model_.config())) whole += spec.numel();
      std::fprintf(stderr, "pipeline stage %d of %d stores %s: %lld of the model's %lld parameters\n", t.pipeline_.stage,
                   t.pipeline_.stages, t.model_.layers().ToString().c_str(), (long long)stored, (long long)whole);
    }
  }
  // ZeRO-1/2 of a 16-bit run: the model keeps only this rank's fp32 masters (its whole working
  // copy converted from the loaded or initialised ones first); a resume's moments follow below.
  OPENMOE_RETURN_IF_ERROR(t.optimizer_.ShardMasters(t.model_));
  if (dp.size > 1 || t.pipeline_.stages > 1) {
    std::fprintf(stderr, "%s\n", MastersLine(t.model_, t.optimizer_, dp, t.pipeline_.stage).c_str());
  }
  t.optimizer_.set_steps(resumed.position.step);
  if (!o.resume.empty()) {
    OPENMOE_RETURN_IF_ERROR(LoadOptimizerMoments(model_source, t.model_, t.optimizer_));
    t.optimizer_.set_steps(resumed.optimizer_steps);
    if (t.optimizer_.loss_scaling() && resumed.loss_scaler) t.optimizer_.RestoreScaler(*resumed.loss_scaler);
  }

  if (o.load_balance) {
    if (experts.size < 2) {
      return absl::InvalidArgumentError("--load_balance moves experts between expert-parallel ranks: it needs expert "
                                        "parallelism (mpirun with --plugin ep, or ep_zero with --extra_dp_size smaller "
                                        "than the world size)");
    }
    t.model_.set_count_expert_loads(true);
    t.placements_.assign(t.model_.config().NumMoeLayers(),
                         ExpertPlacement::Identity(t.model_.config().num_experts, experts.size));
  }

  if (writer) {
    const std::string ranks =
        dp.size > 1 ? absl::StrCat(", data parallel over ", dp.size, " ranks",
                                   t.optimizer_.sharded() ? absl::StrCat(" with ZeRO-", t.optimizer_.zero_stage()) : "")
                    : "";
    std::fprintf(stderr, "training %lld examples of %lld tokens, batch %lld, %lld steps (from step %lld), lr %g (%s), "
                 "%s, seed %llu%s, on %s; checkpoints in %s\n", (long long)N, (long long)S, (long long)B,
                 (long long)t.total_steps_, (long long)t.position_.step, o.lr, o.lr_schedule.c_str(), o.precision.c_str(),
                 (unsigned long long)o.seed, ranks.c_str(), Space::name(), o.output_path.c_str());
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<JsonlMetricsSink> jsonl, JsonlMetricsSink::Open(t.metrics_path(), t.position_.step));
    t.sinks_.push_back(std::move(jsonl));
    if (o.progress) t.sinks_.push_back(std::make_unique<ProgressPrinter>(stderr));
  }
  return t;
}

std::string Trainer::metrics_path() const { return (fs::path(options_.output_path) / "metrics.jsonl").string(); }

absl::StatusOr<StepMetrics> Trainer::Step() {
  if (done()) return absl::FailedPreconditionError(absl::StrCat("the run is complete at step ", position_.step));
  if (steps_this_run_ == 0) start_time_ = std::chrono::steady_clock::now();
  const TrainOptions& o = options_;
  const int64_t B = o.batch_size, S = data_.seq_len;
  const io::TokenBatch batch = GatherRows(data_, sharding_.Batch(position_.epoch, position_.batch));
  model_.set_loss_scale(float(optimizer_.loss_scale()));
  OPENMOE_ASSIGN_OR_RETURN(LossParts loss, pipeline_.forward_backward
                                               ? pipeline_.forward_backward(model_, batch.ids, batch.mask, B, S)
                                               : model_.ForwardBackward(batch.ids, batch.mask, B, S));
  if (reduce_loss_) OPENMOE_RETURN_IF_ERROR(reduce_loss_(loss));  // the mean over ranks: all stop together on NaN
  const int64_t step = position_.step + 1;
  if (!optimizer_.loss_scaling() && !std::isfinite(loss.total)) {
    return absl::InternalError(absl::StrCat("the loss is ", loss.total, " at step ", step,
                                            "; stopping without saving (the last checkpoint in '", o.output_path,
                                            "' is kept)"));
  }
  if (optimizer_.zero_stage() == 2) {
    OPENMOE_RETURN_IF_ERROR(optimizer_.ReduceScatterGradients(model_));
  } else if (reduce_gradients_) {
    OPENMOE_RETURN_IF_ERROR(reduce_gradients_(model_.flat_grads()));
  }
  std::vector<std::vector<float>> dump_grads;  // the first step's gradients, before clipping
  const bool dump = !o.dump_step_state.empty() && steps_this_run_ == 0;
  if (dump && optimizer_.zero_stage() == 2) OPENMOE_RETURN_IF_ERROR(optimizer_.GatherGradients(model_));  // every rank
  if (dump) {  // every rank: expert tensors are gathered
    for (const TensorSpec& spec : model_.table()) {
      OPENMOE_ASSIGN_OR_RETURN(std::vector<float> whole, WholeTensor(spec, model_.flat_grads()));
      dump_grads.push_back(std::move(whole));
    }
  }
  const double lr = schedule_.At(step);
  OPENMOE_ASSIGN_OR_RETURN(const OptimizerStepResult result, optimizer_.Step(model_, lr, std::isfinite(loss.total)));
  if (result.overflow_at_minimum_scale) {
    return absl::InternalError(absl::StrCat("fp16 overflow at step ", step, " even at loss scale ", result.loss_scale, " (loss ",
                                            loss.total, "): the values exceed fp16's range (e.g. a zero <pad> embedding row: "
                                            "position 0 then enters RMSNorm as a zero vector, whose gradient is "
                                            "1/sqrt(eps) times larger); use --precision bf16 (the last checkpoint in '",
                                            o.output_path, "' is kept)"));
  }
  Kokkos::fence();
  StepMetrics m;
  m.step = step, m.epoch = position_.epoch, m.total_steps = total_steps_, m.loss = loss, m.lr = lr;
  m.grad_norm = result.grad_norm;
  m.loss_scaling = optimizer_.loss_scaling(), m.loss_scale = result.loss_scale, m.skipped = !result.applied;
  position_ = {step, position_.epoch, position_.batch + 1};
  if (position_.batch == sharding_.batches_per_epoch()) position_ = {step, position_.epoch + 1, 0};
  ++steps_this_run_;
  if (dump) {
    model_.ReleaseStepBuffers();  // the whole-tensor gathers need the memory the step's buffers hold
    OPENMOE_RETURN_IF_ERROR(DumpStepState(loss, dump_grads));
  }
  if (o.load_balance && step % o.load_balance_interval == 0) OPENMOE_RETURN_IF_ERROR(BalanceExperts());
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time_).count();
  m.tokens_per_s = double(steps_this_run_ * B * S * dp_.size) / elapsed;
  m.eta_seconds = elapsed / double(steps_this_run_) * double(total_steps_ - step);
  for (const std::unique_ptr<MetricsSink>& sink : sinks_) OPENMOE_RETURN_IF_ERROR(sink->Record(m));
  return m;
}

absl::StatusOr<std::vector<float>> Trainer::WholeTensor(const TensorSpec& spec, Vector<float, TrainSpace> flat) const {
  const ParameterSlot& slot = model_.layout().slot(spec.name);
  return WholeFromStored(spec, Vector<float, Space>(flat.data() + slot.offset, slot.numel));
}

absl::StatusOr<std::vector<float>> Trainer::WholeMasterTensor(const TensorSpec& spec) const {
  const ParameterSlot& slot = model_.layout().slot(spec.name);
  OPENMOE_ASSIGN_OR_RETURN(const auto stored,  // [slot.numel]
                           optimizer_.GatherMasters(model_, slot.offset, slot.offset + slot.numel));
  return WholeFromStored(spec, stored);
}

absl::StatusOr<std::vector<float>> Trainer::WholeFromStored(const TensorSpec& spec, Vector<float, TrainSpace> stored) const {
  const ParameterSlot& slot = model_.layout().slot(spec.name);
  const bool gathered = !model_.expert_shard().all() && ExpertShard::IsExpertTensor(spec.name);
  if (!gathered) return stage_writer_ ? ToHost(stored) : std::vector<float>();
  // Only the stage writer's EP group (replica 0; the stage writer is its position 0) takes part:
  // EP position p sends its experts [p * count, (p + 1) * count) to position 0, which puts them in
  // slot order on the host; one slice at a time on the device.
  if (experts_.replicas->rank() != 0) return std::vector<float>();
  const Space space;
  comm::Communicator<Space>& group = *experts_.group;
  if (group.rank() != 0) {
    OPENMOE_RETURN_IF_ERROR(group.Send(space, stored, 0));
    space.fence();
    return std::vector<float>();
  }
  std::vector<float> slots(slot.numel * group.size());
  Vector<float, Space> received(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("expert_slice")), slot.numel);
  for (int p = 0; p < group.size(); ++p) {
    if (p > 0) OPENMOE_RETURN_IF_ERROR(group.Recv(space, received, p));
    space.fence();
    Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(slots.data() + p * slot.numel,
                                                                                       slot.numel),
                      p == 0 ? stored : received);
  }
  if (!stage_writer_) return std::vector<float>();
  const std::vector<int32_t>& slot_expert = model_.expert_placement(MoeIndexOf(model_.config(), spec.name));
  if (std::is_sorted(slot_expert.begin(), slot_expert.end())) return slots;  // the identity
  // Checkpoints and dumps hold the experts in canonical order, wherever they are stored.
  const int64_t per_expert = slot.numel / model_.expert_shard().count;
  std::vector<float> canonical(slots.size());
  for (int64_t s = 0; s < int64_t(slot_expert.size()); ++s) {
    std::copy(slots.begin() + s * per_expert, slots.begin() + (s + 1) * per_expert,
              canonical.begin() + slot_expert[s] * per_expert);
  }
  return canonical;
}

namespace {

// Swaps `buf` with the same-sized buffer of `peer` in `comm`; `first`: this side sends first (the
// other receives first), so blocking point-to-point cannot deadlock.
template <class T>
absl::Status SwapWithPeer(comm::Communicator<Space>& comm, Vector<T, Space> buf, int peer, bool first) {
  const Space space;
  if (first) {
    OPENMOE_RETURN_IF_ERROR(comm.Send(space, buf, peer));
    return comm.Recv(space, buf, peer);
  }
  Vector<T, Space> received(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("swap")), buf.extent(0));
  OPENMOE_RETURN_IF_ERROR(comm.Recv(space, received, peer));
  OPENMOE_RETURN_IF_ERROR(comm.Send(space, buf, peer));
  Kokkos::deep_copy(space, buf, received);
  space.fence();
  return absl::OkStatus();
}

}  // namespace

absl::Status Trainer::ExchangeExpertSlot(int64_t moe_layer, const ExpertSwap& swap) {
  const int me = experts_.index;
  if (me != swap.position_a && me != swap.position_b) return absl::OkStatus();
  const int peer = int(me == swap.position_a ? swap.position_b : swap.position_a);
  const bool first = me < peer;
  const int64_t layer = model_.config().MoeLayer(moe_layer);
  for (const char* tensor : {"wi_gate", "wi_up", "wo"}) {
    const ParameterSlot& slot = model_.layout().slot(absl::StrCat("model.layers.", layer, ".mlp.experts.", tensor));
    const int64_t per_expert = slot.numel / model_.expert_shard().count;
    const int64_t begin = slot.offset + swap.local * per_expert, end = begin + per_expert;
    // The fp32 master pieces (the whole slot, or under 16-bit ZeRO the pieces this rank keeps) and
    // the AdamW moment pieces of the slot: the peer (same replica index, same ZeRO position) keeps
    // the same pieces of its slot.
    for (const TrainModel::MasterPiece& piece : model_.OwnedMasters(begin, end)) {
      OPENMOE_RETURN_IF_ERROR(SwapWithPeer(
          *experts_.group, Vector<float, Space>(model_.flat_masters().data() + piece.master, piece.count), peer, first));
    }
    for (const AdamWOptimizer::MomentPiece& piece : optimizer_.OwnedMoments(begin, end)) {
      for (Vector<float, Space> moments : {optimizer_.flat_m(), optimizer_.flat_v()}) {
        OPENMOE_RETURN_IF_ERROR(
            SwapWithPeer(*experts_.group, Vector<float, Space>(moments.data() + piece.moment, piece.count), peer, first));
      }
    }
    // bf16 / fp16 runs: the whole slot of the 16-bit working copy (the rounding of its masters; with
    // sharded masters the only whole copy of the weights). Raw 16-bit words, moved as bf16.
    if (model_.compute_dtype() != TrainModel::ComputeDtype::kFp32) {
      OPENMOE_RETURN_IF_ERROR(SwapWithPeer(
          *experts_.group, Vector<bf16, Space>(reinterpret_cast<bf16*>(model_.flat_working().data()) + begin, per_expert),
          peer, first));
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::BalanceExperts() {
  const Space space;
  const int64_t E = model_.config().num_experts;
  std::vector<int64_t> loads = model_.TakeExpertLoads();  // [moe_layers * E], this rank's tokens
  // Summed over every data-parallel rank: the EP group, then the ranks holding the same experts.
  Kokkos::View<int64_t*, Space> summed("expert_loads", loads.size());
  Kokkos::deep_copy(summed, Kokkos::View<int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(loads.data(), loads.size()));
  OPENMOE_RETURN_IF_ERROR(experts_.group->AllReduce(space, summed, comm::ReduceOp::kSum));
  OPENMOE_RETURN_IF_ERROR(experts_.replicas->AllReduce(space, summed, comm::ReduceOp::kSum));
  space.fence();
  Kokkos::deep_copy(Kokkos::View<int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(loads.data(), loads.size()), summed);
  std::string report;
  for (int64_t l = 0; l < int64_t(placements_.size()); ++l) {
    const std::vector<int64_t> layer_loads(loads.begin() + l * E, loads.begin() + (l + 1) * E);
    const std::vector<ExpertSwap> swaps = PlanExpertSwaps(placements_[l], layer_loads);
    if (swaps.empty()) continue;
    const std::vector<int64_t> before = placements_[l].PositionLoads(layer_loads);
    for (const ExpertSwap& swap : swaps) {
      OPENMOE_RETURN_IF_ERROR(ExchangeExpertSlot(l, swap));
      placements_[l].Swap(swap);
    }
    OPENMOE_RETURN_IF_ERROR(model_.SetExpertPlacement(l, placements_[l].slot_expert));
    const std::vector<int64_t> after = placements_[l].PositionLoads(layer_loads);
    absl::StrAppend(&report, report.empty() ? "" : ";", " MoE layer ", l, ": busiest rank ",
                    *std::max_element(before.begin(), before.end()), " -> ", *std::max_element(after.begin(), after.end()),
                    " tokens (", swaps.size(), swaps.size() == 1 ? " swap)" : " swaps)");
  }
  // (The 16-bit working copy moved with the weights: it stays the rounding of the masters.)
  if (writer_ && !report.empty()) std::fprintf(stderr, "load balance at step %lld:%s\n", (long long)position_.step, report.c_str());
  return absl::OkStatus();
}

absl::Status Trainer::DumpStepState(const LossParts& loss, const std::vector<std::vector<float>>& stage_grads) const {
  std::vector<std::vector<float>> stage_params;
  stage_params.reserve(model_.table().size());
  for (const TensorSpec& spec : model_.table()) {
    OPENMOE_ASSIGN_OR_RETURN(std::vector<float> whole, WholeMasterTensor(spec));
    stage_params.push_back(std::move(whole));
  }
  OPENMOE_ASSIGN_OR_RETURN(auto grads, GatherStages(stage_grads));
  OPENMOE_ASSIGN_OR_RETURN(auto params, GatherStages(std::move(stage_params)));
  if (!writer_) return absl::OkStatus();
  const std::vector<TensorSpec>& whole_specs = params.first;
  const std::vector<std::vector<float>>& hold = params.second;
  std::vector<io::TensorToWrite> tensors;
  const float parts[4] = {float(loss.total), float(loss.lm), float(loss.router_aux), float(loss.router_z)};
  const char* names[4] = {"loss.total", "loss.lm", "loss.router_aux", "loss.router_z"};
  for (int i = 0; i < 4; ++i) tensors.push_back({names[i], io::DType::kF32, {1}, &parts[i]});
  for (size_t k = 0; k < whole_specs.size(); ++k) {
    const TensorSpec& spec = whole_specs[k];
    tensors.push_back({"grad." + spec.name, io::DType::kF32, spec.shape, grads.second[k].data()});
    tensors.push_back({"param." + spec.name, io::DType::kF32, spec.shape, hold[k].data()});
  }
  return io::WriteSafetensors(options_.dump_step_state, tensors);
}

std::vector<OptimizerShardPiece> Trainer::OptimizerShardPieces() const {
  std::vector<OptimizerShardPiece> pieces;
  const ExpertShard& shard = model_.expert_shard();
  const int replica = experts_.replicas ? experts_.replicas->rank() : 0;
  const auto to_host = [](Vector<float, Space> flat, int64_t offset, int64_t count) {
    return ToHost(Vector<float, Space>(flat.data() + offset, count));
  };
  const int replicas = experts_.replicas ? experts_.replicas->size() : 1;
  for (size_t k = 0; k < model_.table().size(); ++k) {
    const TensorSpec& spec = model_.table()[k];
    const ParameterSlot& slot = model_.layout().slot(spec.name);
    const bool stored_experts = !shard.all() && ExpertShard::IsExpertTensor(spec.name);
    // State the ranks of a group keep alike (the data-parallel group for dense tensors and every
    // tensor without sharded experts, the replicas for a rank's experts) is written once: ZeRO-0's
    // whole tensors round-robin over the group (tensor k by its member k mod size), a ZeRO
    // partition's small replicated tail by its first member.
    const int group_rank = stored_experts ? replica : int(dp_.rank);
    const int group_size = stored_experts ? replicas : int(dp_.size);
    const bool first_of_group = group_rank == 0, turn = int(k % size_t(group_size)) == group_rank;
    const int64_t per_expert = stored_experts ? spec.numel() / shard.count : spec.numel();
    for (const AdamWOptimizer::MomentPiece& piece : optimizer_.OwnedMoments(slot.offset, slot.offset + slot.numel)) {
      const bool own = optimizer_.sharded() ? (!piece.tail || first_of_group) : turn;
      if (!own) continue;
      // Split at expert boundaries: stored slot j holds expert slot_expert[first + j].
      for (int64_t x = piece.layout - slot.offset, end = x + piece.count; x < end;) {
        const int64_t j = x / per_expert, next = std::min(end, (j + 1) * per_expert);
        int64_t whole = x;
        if (stored_experts) {
          const int64_t moe_layer = MoeIndexOf(model_.config(), spec.name);
          whole = int64_t(model_.expert_placement(moe_layer)[shard.first + j]) * per_expert + x % per_expert;
        }
        const int64_t moment = piece.moment + (x - (piece.layout - slot.offset));
        pieces.push_back({spec.name, whole, to_host(optimizer_.flat_m(), moment, next - x),
                          to_host(optimizer_.flat_v(), moment, next - x)});
        x = next;
      }
    }
  }
  return pieces;
}

absl::StatusOr<std::pair<std::vector<TensorSpec>, std::vector<std::vector<float>>>> Trainer::GatherStages(
    std::vector<std::vector<float>> mine) const {
  std::pair<std::vector<TensorSpec>, std::vector<std::vector<float>>> all;
  const OpenMoeConfig& config = model_.config();
  // Stage s's tensors, whole, in the order of its model's table.
  const auto stage_specs = [&](int stage) -> absl::StatusOr<std::vector<TensorSpec>> {
    LayerRange layers = WholeModel(config);
    if (pipeline_.stages > 1) {
      OPENMOE_ASSIGN_OR_RETURN(layers, PipelineStageLayers(config, stage, pipeline_.stages));
    }
    return TrainingTable(StageCheckpointTable(config, layers), ExpertShard::All(config.num_experts));
  };
  const Space space;
  if (pipeline_.stages > 1 && pipeline_.stage > 0) {  // a stage writer sends its tensors to the writer
    if (!stage_writer_) return all;
    for (const std::vector<float>& values : mine) {
      Vector<float, Space> buf(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("stage_tensor")), values.size());
      Kokkos::deep_copy(buf, Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(values.data(),
                                                                                                   values.size()));
      OPENMOE_RETURN_IF_ERROR(pipeline_.pipeline->Send(space, buf, 0));
      space.fence();
    }
    return all;
  }
  if (!writer_) return all;
  for (int stage = 0; stage < pipeline_.stages; ++stage) {
    OPENMOE_ASSIGN_OR_RETURN(std::vector<TensorSpec> specs, stage_specs(stage));
    if (stage == 0 && specs.size() != mine.size()) return absl::InternalError("GatherStages: not the stage's tensors");
    for (size_t k = 0; k < specs.size(); ++k) {
      if (stage == 0) {
        all.second.push_back(std::move(mine[k]));
      } else {
        Vector<float, Space> buf(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("stage_tensor")),
                                 specs[k].numel());
        OPENMOE_RETURN_IF_ERROR(pipeline_.pipeline->Recv(space, buf, stage));
        space.fence();
        all.second.push_back(ToHost(buf));
      }
      all.first.push_back(specs[k]);
    }
  }
  return all;
}

absl::Status Trainer::BarrierAll() const {
  const Space space;
  if (dp_comm_) OPENMOE_RETURN_IF_ERROR(dp_comm_->Barrier(space));
  if (pipeline_.pipeline) OPENMOE_RETURN_IF_ERROR(pipeline_.pipeline->Barrier(space));
  if (dp_comm_) OPENMOE_RETURN_IF_ERROR(dp_comm_->Barrier(space));
  return absl::OkStatus();
}

absl::Status Trainer::SaveCheckpoint() const {
  model_.ReleaseStepBuffers();  // the gathers below need the memory the step's buffers hold
  // With several ranks (data-parallel or pipeline stages) every rank writes its own optimizer shard
  // into the step's staging folder (the writer then completes and renames it); otherwise the
  // moments are gathered (ZeRO) and the writer writes them whole. Expert tensors are gathered over
  // each stage writer's EP group, the other stages' tensors sent to the writer, which writes the
  // weights.
  const bool shards = (dp_comm_ && dp_comm_->size() > 1) || pipeline_.stages > 1;
  const bool gathers = shards || optimizer_.sharded() || !model_.expert_shard().all();
  if (!writer_ && !gathers) return absl::OkStatus();
  CheckpointContents c;
  if (shards) {
    const std::string staging = CheckpointStagingDir(options_.output_path, position_.step);
    if (writer_) {
      std::error_code error;
      fs::remove_all(staging, error);
      fs::create_directories(fs::path(staging) / "optimizer", error);
      if (error) return absl::UnavailableError(absl::StrCat("--output_path: cannot create '", staging, "': ", error.message()));
    }
    OPENMOE_RETURN_IF_ERROR(BarrierAll());  // the folder exists
    const int ranks = pipeline_.stages * int(dp_.size);
    OPENMOE_RETURN_IF_ERROR(WriteOptimizerShard(staging, pipeline_.stage * int(dp_.size) + int(dp_.rank), ranks,
                                                OptimizerShardPieces()));
    OPENMOE_RETURN_IF_ERROR(BarrierAll());  // every shard is written
    c.optimizer_shards = ranks;
  }
  std::pair<Vector<float, Space>, Vector<float, Space>> moments;
  if (!shards) {
    OPENMOE_ASSIGN_OR_RETURN(moments, optimizer_.GatherMoments());
  }
  std::vector<std::vector<float>> stage_params;
  for (const TensorSpec& spec : model_.table()) {
    OPENMOE_ASSIGN_OR_RETURN(std::vector<float> params, WholeMasterTensor(spec));
    stage_params.push_back(std::move(params));
    if (shards) continue;
    OPENMOE_ASSIGN_OR_RETURN(std::vector<float> m, WholeTensor(spec, moments.first));
    OPENMOE_ASSIGN_OR_RETURN(std::vector<float> v, WholeTensor(spec, moments.second));
    c.m.push_back(std::move(m)), c.v.push_back(std::move(v));
  }
  OPENMOE_ASSIGN_OR_RETURN(std::tie(c.table, c.params), GatherStages(std::move(stage_params)));
  if (!writer_) return absl::OkStatus();
  c.options = &options_, c.optimizer = &optimizer_, c.config = model_.config(), c.position = position_;
  c.data_order = {options_.batch_size, data_.batch, data_.seq_len, int64_t(options_.seed), int64_t(options_.shuffle), dp_.size};
  c.tokenizer_file = tokenizer_file_;
  return train::SaveCheckpoint(c);
}

absl::Status Trainer::Run() {
  bool saved_last = false;
  while (!done()) {
    OPENMOE_RETURN_IF_ERROR(Step().status());
    saved_last = false;
    if (position_.step % options_.save_interval == 0) {
      OPENMOE_RETURN_IF_ERROR(SaveCheckpoint());
      saved_last = true;
    }
  }
  for (const std::unique_ptr<MetricsSink>& sink : sinks_) OPENMOE_RETURN_IF_ERROR(sink->Finish());
  if (!saved_last && steps_this_run_ > 0) OPENMOE_RETURN_IF_ERROR(SaveCheckpoint());
  return absl::OkStatus();
}

}  // namespace openmoe::train
