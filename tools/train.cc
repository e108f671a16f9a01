// train: fine-tunes an OpenMoE model (single device, fp32 master weights) with the flags of
// Colossal-AI's OpenMoE train.py: flags -> openmoe::train::TrainOptions -> openmoe::train::Trainer
// (openmoe/train/trainer.h; output layout in openmoe/train/checkpoint.h), then the loss curve.
// Under `mpirun -np N` (host ranks) with `--plugin ep_zero --extra_dp_size N --zero_stage 0|1|2`
// it trains data-parallel: every rank holds the whole model (every expert replicated), takes its
// DistributedSampler share of each global batch, and the gradient and logged loss are the means
// over ranks (MPI all-reduce); ZeRO-1 shards the AdamW state and update over the ranks, ZeRO-2
// also reduce-scatters the gradient (openmoe/train/optimizer.h); rank 0 alone prints and writes.
// Other plugins: not yet.
//
//   bazel run //tools:train          # default run: the embedded tiny model on the shipped data
//   bazel run //tools:train -- --model DIR --dataset data.jsonl --output_path out --batch_size 4
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Kokkos_Core.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/train/checkpoint.h"
#include "openmoe/train/trainer.h"
#include "openmoe/config.h"
#include "parallel/expert_parallel_dispatcher.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_runtime.h"
#include "tools/cli_flags.h"
#include "tools/loss_plot.h"

ABSL_FLAG(std::string, model, "", "Model folder to fine-tune (config.json, weights; tokenizer.model for text data).");
ABSL_FLAG(std::string, model_name, "", "Instead of --model: random init of a preset, base | 8b | 34b (upstream's "
          "initialiser); needs pre-tokenized --dataset.");
ABSL_FLAG(std::string, output_path, "./outputs", "Checkpoints (step-N/ folders + `latest`), metrics.jsonl, loss_curve.png.");
ABSL_FLAG(int64_t, num_epochs, 1, "Epochs over the dataset (upstream --num_epoch).");
ABSL_FLAG(int64_t, num_epoch, 1, "Alias of --num_epochs (upstream spelling).");
ABSL_FLAG(int64_t, max_steps, 0, "Stop after this many optimizer steps (0 = all epochs).");
ABSL_FLAG(int64_t, batch_size, 1, "Examples per step (upstream default 1).");
ABSL_FLAG(int64_t, save_interval, 1000, "Save a checkpoint every this many steps (and at the end). Alias: -i.");
ABSL_FLAG(int64_t, i, 0, "Alias of --save_interval (upstream README's -i).");
ABSL_FLAG(std::string, precision, "fp32", "fp32 | bf16 | fp16. bf16 / fp16: fp32 master weights, gradients and AdamW; "
          "each step computes with 16-bit weight copies and activations. fp16 adds dynamic loss scaling (Colossal-AI's "
          "rules: start --initial_loss_scale, x0.5 after 2 overflowing steps, which are skipped, x2 after 1000 finite "
          "ones). Upstream's default is bf16; ours is fp32.");
ABSL_FLAG(double, initial_loss_scale, 65536.0, "fp16: the starting loss scale (upstream 2^16).");
ABSL_FLAG(int64_t, max_length, 2048, "Tokens per example (text data: padded / truncated to this).");
ABSL_FLAG(std::string, dataset, "", "Local .jsonl / .json self_instruct records {\"prompt\", \"completion\"}, or a "
          ".safetensors file with int64 input_ids, attention_mask [N, S].");
ABSL_FLAG(std::string, task_name, "super_natural_instructions", "Recorded in the checkpoints (upstream's dataset config).");
ABSL_FLAG(double, lr, 1e-5, "Peak learning rate (upstream 1e-5, constant).");
ABSL_FLAG(double, weight_decay, 0.0, "AdamW decoupled weight decay (upstream 0).");
ABSL_FLAG(uint64_t, seed, 42, "Seed of the data order and of --model_name's random init (printed).");
ABSL_FLAG(bool, shuffle, true, "Shuffle the examples every epoch (false: file order).");
ABSL_FLAG(int64_t, warmup_steps, 0, "Linear warmup steps (upstream: none).");
ABSL_FLAG(std::string, lr_schedule, "constant", "After warmup: constant (upstream) or cosine (to 0 at the last step).");
ABSL_FLAG(double, max_grad_norm, 0.0, "Clip the global gradient norm to this (0 = off, as upstream).");
ABSL_FLAG(double, label_smoothing, -1, "Label smoothing of the LM loss (default: the config's, 0.001 for OpenMoE). "
          "Unlike upstream's train.py, the flag takes effect.");
ABSL_FLAG(double, z_loss_factor, -1, "Output z-loss factor (default: the config's, 0.01).");
ABSL_FLAG(double, router_aux_loss_factor, -1, "Router load-balancing loss factor (default: the config's, 0.01).");
ABSL_FLAG(double, router_z_loss_factor, -1, "Router z-loss factor (default: the config's, 0.0001).");
ABSL_FLAG(std::string, resume, "", "Continue from a step-N folder or an --output_path with a `latest` file, "
          "with the options saved there (model, --dataset, hyperparameters; --output_path: the checkpoint's folder); "
          "flags given again override them. Bit-identical to an uninterrupted run.");
ABSL_FLAG(std::string, dump_step_state, "", "After the first optimizer step, write loss.*, grad.<param> (step-1 "
          "gradient) and param.<param> (after the step) to this safetensors file.");
ABSL_FLAG(bool, progress, true, "Progress on stderr: a bar redrawn in place on a terminal, one line per step otherwise.");
ABSL_FLAG(int64_t, max_shard_bytes, int64_t(5) << 30, "Checkpoint weights larger than this are written as "
          "model-0000K-of-0000N.safetensors shards plus model.safetensors.index.json.");
ABSL_FLAG(bool, grad_checkpoint, false, "Activation recomputation (upstream's gradient checkpointing): keep only "
          "each layer's input and run the layer again in the backward pass; same results, less memory.");
// Upstream's parallelism and kernel flags. Supported today: pure data parallelism over host MPI
// ranks (`--plugin ep_zero --extra_dp_size <world size> --zero_stage 0|1|2`); the rest are parsed
// and refused.
ABSL_FLAG(std::string, plugin, "hybrid", "hybrid | ep | ep_zero. Supported today: ep_zero with --extra_dp_size equal to "
          "the world size and --zero_stage 0, 1 or 2, i.e. pure data parallelism over MPI host ranks (mpirun -np N; every "
          "expert replicated on every rank). Without mpirun: omit it (one device). ep (--zero_stage 0): the experts split over the ranks (num_experts divisible by the world size), "
          "dense parameters data parallel. hybrid: not supported yet.");
ABSL_FLAG(int64_t, zero_stage, 2, "ZeRO stage 0 | 1 | 2 (with --plugin ep_zero --extra_dp_size <world size>): 0 "
          "replicates the optimizer state; 1 shards the AdamW moments and the master-weight update over the ranks "
          "(updated slices all-gathered); 2 also reduce-scatters the gradient. Same results as 0; checkpoints are "
          "complete (rank 0 gathers the state) and resume under any stage with the same world size.");
ABSL_FLAG(int64_t, extra_dp_size, 1, "ep_zero: replicas of each expert (EP size = world size / this). Supported "
          "today: equal to the world size (EP size 1: pure data parallelism).");
ABSL_FLAG(int64_t, pp_size, 2, "Not supported yet (hybrid plugin).");
ABSL_FLAG(int64_t, dp_size, 1, "Not supported yet (hybrid plugin).");
ABSL_FLAG(int64_t, ep_size, 2, "Not supported yet (hybrid plugin).");
ABSL_FLAG(int64_t, microbatch_size, 1, "Not supported yet (hybrid plugin).");
ABSL_FLAG(bool, use_kernel, false, "Not supported yet (upstream's Triton/CUDA MoE kernels).");
ABSL_FLAG(bool, use_layernorm_kernel, false, "Not supported yet (fused normalization).");
ABSL_FLAG(bool, load_balance, false, "Not supported yet (expert load balancing).");
ABSL_FLAG(int64_t, load_balance_interval, 1000, "Not supported yet.");
ABSL_FLAG(bool, comm_overlap, false, "Not supported yet.");

namespace {

constexpr char kDefaultModel[] = "tools/default_model/openmoe-tiny-random";   // runfiles paths
constexpr char kDefaultData[] = "tools/train_data/tiny_instructions.jsonl";

using openmoe::tools::FlagGiven;
using openmoe::tools::ResolvePath;

int Fail(const std::string& message) {
  std::fprintf(stderr, "train: %s\n", message.c_str());
  return 2;
}

// What --plugin / --zero_stage / --extra_dp_size (and the other parallel and kernel flags) allow
// on `world` ranks: OkStatus for a single-device run (world 1, none of the three given) and for
// pure data parallelism (--plugin ep_zero --extra_dp_size <world> --zero_stage 0); otherwise an
// error naming the first offending flag and what works today. Checked before any work.
absl::Status CheckParallelFlags(int world) {
  const std::string supported = absl::StrCat(
      "supported today: pure data parallelism over MPI host ranks, --plugin ep_zero --extra_dp_size ", world,
      " (the world size) --zero_stage 0, 1 or 2 (every expert replicated on every rank)",
      world == 1 ? "; or drop the parallel flags to train on one device" : "");
  for (const char* flag : {"pp_size", "dp_size", "ep_size", "microbatch_size", "use_kernel", "use_layernorm_kernel",
                           "load_balance", "load_balance_interval", "comm_overlap"}) {
    if (FlagGiven(flag)) {
      return absl::UnimplementedError(absl::StrCat("--", flag, " is not supported yet (upstream's hybrid plugin, fused "
                                                   "kernels and load balancing are not implemented); ", supported));
    }
  }
  if (world == 1 && !FlagGiven("plugin") && !FlagGiven("zero_stage") && !FlagGiven("extra_dp_size")) {
    return absl::OkStatus();  // one device, as before
  }
  const std::string plugin = absl::GetFlag(FLAGS_plugin);
  const int64_t zero = absl::GetFlag(FLAGS_zero_stage), extra_dp = absl::GetFlag(FLAGS_extra_dp_size);
  const std::string where = absl::StrCat(" on ", world, world == 1 ? " rank" : " ranks", "; ");
  if (plugin == "ep") {  // expert parallel: the expert count is checked once the model is known (CheckExpertSplit)
    if (zero != 0) {
      return absl::UnimplementedError(absl::StrCat("--zero_stage is not supported yet as ", zero, " with --plugin ep",
                                                   where, "--plugin ep needs --zero_stage 0"));
    }
    return absl::OkStatus();
  }
  if (plugin != "ep_zero") {
    return absl::UnimplementedError(absl::StrCat("--plugin is not supported yet as '", plugin, "'", where, supported));
  }
  if (extra_dp != world) {
    return absl::UnimplementedError(absl::StrCat("--extra_dp_size is not supported yet as ", extra_dp, where, supported));
  }
  if (zero != 0 && zero != 1 && zero != 2) {
    return absl::InvalidArgumentError(absl::StrCat("--zero_stage must be 0, 1 or 2, not ", zero, where, supported));
  }
  return absl::OkStatus();
}

// The data-parallel hooks of world `comm`: flat gradients summed in place and divided by the
// world size (the mean of the ranks' gradients), loss parts averaged in float64. Host ranks only
// (MPI over host memory); a device TrainSpace needs NCCL, not there yet.
template <class Space>
absl::Status MakeDataParallelHooks(std::shared_ptr<void>& keep, openmoe::train::GradientReduction& grads,
                                   openmoe::train::LossReduction& loss) {
  if constexpr (std::is_same_v<typename Space::memory_space, Kokkos::HostSpace>) {
    using Comm = openmoe::parallel::MpiCommunicator<Space>;
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<Comm> world, Comm::World());
    std::shared_ptr<Comm> comm(std::move(world));
    keep = comm;
    grads = [comm](openmoe::Vector<float, Space> g) -> absl::Status {
      const Space space;
      OPENMOE_RETURN_IF_ERROR(comm->AllReduce(space, g, openmoe::comm::ReduceOp::kSum));
      const float inv = 1.0f / float(comm->size());
      Kokkos::parallel_for("train::mean_over_ranks", Kokkos::RangePolicy<Space>(space, 0, g.extent(0)),
                           KOKKOS_LAMBDA(int64_t i) { g(i) *= inv; });
      space.fence();
      return absl::OkStatus();
    };
    loss = [comm](openmoe::LossParts& l) -> absl::Status {
      double parts[4] = {l.total, l.lm, l.router_aux, l.router_z};
      OPENMOE_RETURN_IF_ERROR(openmoe::parallel::MpiResult(
          MPI_Allreduce(MPI_IN_PLACE, parts, 4, MPI_DOUBLE, MPI_SUM, comm->mpi_comm()), "MPI_Allreduce (loss)"));
      const double n = double(comm->size());
      l.total = parts[0] / n, l.lm = parts[1] / n, l.router_aux = parts[2] / n, l.router_z = parts[3] / n;
      return absl::OkStatus();
    };
    return absl::OkStatus();
  } else {
    return absl::UnimplementedError(absl::StrCat("data-parallel training on ", Space::name(),
                                                 " ranks needs NCCL, which is not supported yet; host ranks only"));
  }
}

// ZeRO-1/2 of pure data parallelism (--zero_stage 1|2): the optimizer's own communicator over the
// MPI world (a duplicate of MPI_COMM_WORLD, freed with the trainer). Host ranks only, as above.
template <class Space>
absl::Status MakeZeroSharding(int stage, std::shared_ptr<void>& keep, openmoe::train::ZeroSharding& zero) {
  if constexpr (std::is_same_v<typename Space::memory_space, Kokkos::HostSpace>) {
    using Comm = openmoe::parallel::MpiCommunicator<Space>;
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<Comm> world, Comm::World());
    std::shared_ptr<openmoe::comm::Communicator<Space>> comm(std::move(world));
    keep = comm;
    zero.stage = stage, zero.comm = comm;
    return absl::OkStatus();
  } else {
    return absl::UnimplementedError(absl::StrCat("ZeRO on ", Space::name(), " ranks needs NCCL, which is not supported "
                                                 "yet; host ranks only"));
  }
}

// ---- --plugin ep (expert parallelism over every rank; dense parameters data parallel) ----
// Whether this run is expert parallel: --plugin ep on more than one rank (on one rank every expert
// is local: the single-device run).
bool ExpertParallelRun(int world) { return world > 1 && absl::GetFlag(FLAGS_plugin) == "ep"; }

// Before any work: the model's expert count must split evenly over the `world` ranks. The config
// of --model or --model_name's preset; a --resume run without them is checked when the dispatcher
// is made (WireExpertParallel), after the model loads.
absl::Status CheckExpertSplit(const openmoe::train::TrainOptions& o, int world) {
  absl::StatusOr<openmoe::OpenMoeConfig> config = absl::NotFoundError("no model given");
  if (!o.model_dir.empty()) config = openmoe::LoadConfig((std::filesystem::path(o.model_dir) / "config.json").string());
  else if (!o.model_name.empty()) config = openmoe::PresetConfig(o.model_name);
  if (!config.ok()) return absl::OkStatus();  // Trainer::Create reports a bad model itself
  if (config->num_experts % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--plugin ep splits the experts over the ranks, but the model's ",
                                                   config->num_experts, " experts (num_experts) cannot be split evenly "
                                                   "over ", world, " ranks; use a world size dividing ",
                                                   config->num_experts));
  }
  return absl::OkStatus();
}

// The gradient hook of --plugin ep: the dense data-parallel reduction (sum over ranks, then / P)
// over the whole flat buffer, after zeroing the experts this rank does not own. Why that is the
// step's gradient (the mean over ranks of each rank's gradient of its own loss) for every parameter:
//  - dense parameters: the mean of the ranks' gradients, as in pure data parallelism;
//  - an expert owned by rank r: the model ran it on every rank's tokens (the all-to-all's backward
//    brought every rank's output gradients), so r's slice already holds the SUM over ranks of each
//    rank's gradient of its own loss; every other rank's slice is zero, so the all-reduce sum keeps
//    that sum (x + 0 = x exactly) and the division by P makes it the mean;
//  - the all-reduce thereby also gathers every expert's gradient on every rank: the replicated
//    (ZeRO-0) AdamW applies the same update to each copy of each expert on every rank, so all
//    copies stay identical and rank 0's checkpoints and --dump_step_state hold the full model.
// Zeroing the non-owned slices is a guard: the model writes only its local experts' gradients
// (flat_grads() is zeroed every step). Memory and traffic savings (hold and reduce only the local
// experts, all-gather them for checkpoints) are a follow-up.
openmoe::train::GradientReduction ExpertParallelGradients(
    std::shared_ptr<const std::vector<std::pair<int64_t, int64_t>>> not_owned, openmoe::train::GradientReduction dense) {
  return [not_owned, dense = std::move(dense)](openmoe::Vector<float, openmoe::train::TrainSpace> g) -> absl::Status {
    for (const auto& [begin, end] : *not_owned) {
      Kokkos::deep_copy(openmoe::train::TrainSpace(), Kokkos::subview(g, std::make_pair(begin, end)), 0.0f);
    }
    return dense(g);
  };
}

// Hands the trainer's model an ExpertParallelDispatcher over every rank (rank r runs experts
// [r * E/P, (r + 1) * E/P)) and fills `not_owned` with the flat-buffer ranges of the other ranks'
// experts. Collective (the dispatcher's communicator duplicates MPI_COMM_WORLD; it lives with the
// model, which every rank destroys at the same point).
template <class Space>
absl::Status WireExpertParallel(openmoe::train::Trainer& trainer, int rank,
                                std::vector<std::pair<int64_t, int64_t>>& not_owned) {
  if constexpr (std::is_same_v<typename Space::memory_space, Kokkos::HostSpace>) {
    using Comm = openmoe::parallel::MpiCommunicator<Space>;
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<Comm> world, Comm::World());
    std::shared_ptr<openmoe::comm::Communicator<Space>> comm(std::move(world));
    const int64_t E = trainer.model().config().num_experts, P = comm->size();
    absl::StatusOr<std::shared_ptr<openmoe::parallel::ExpertParallelDispatcher<Space>>> dispatcher =
        openmoe::parallel::ExpertParallelDispatcher<Space>::Create(comm, E);
    if (!dispatcher.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--plugin ep: ", dispatcher.status().message(), " (num_experts)"));
    }
    const int64_t first = (*dispatcher)->first_local_expert(), local = E / P;
    not_owned.clear();
    for (const openmoe::ParameterSlot& s : trainer.model().layout().slots()) {
      if (s.name.find(".experts.") == std::string::npos) continue;
      const int64_t per_expert = s.numel / E;  // stacked [E, ...]: one expert is one slice
      if (first > 0) not_owned.push_back({s.offset, s.offset + first * per_expert});
      if (first + local < E) not_owned.push_back({s.offset + (first + local) * per_expert, s.offset + E * per_expert});
    }
    trainer.model().set_token_dispatcher(*std::move(dispatcher));
    if (rank == 0) {
      std::fprintf(stderr, "expert parallel: %lld experts over %lld ranks (%lld each), dense parameters data parallel\n",
                   (long long)E, (long long)P, (long long)local);
    }
    return absl::OkStatus();
  } else {
    return absl::UnimplementedError(absl::StrCat("expert-parallel training on ", Space::name(),
                                                 " ranks needs NCCL, which is not supported yet; host ranks only"));
  }
}

// The run, then output_path/loss_curve.png from every step of metrics.jsonl (those before a
// resume too), the summed loss per label position. With dp.size > 1: data parallel over the MPI
// world; only rank 0 writes the curve and the summary.
absl::Status Train(const openmoe::train::TrainOptions& options, openmoe::train::DataParallelRank dp) {
  std::shared_ptr<void> comm;  // outlives the trainer's hooks (freed before the MPI session ends)
  openmoe::train::GradientReduction reduce_gradients;
  openmoe::train::LossReduction reduce_loss;
  if (dp.size > 1) {
    OPENMOE_RETURN_IF_ERROR(MakeDataParallelHooks<openmoe::train::TrainSpace>(comm, reduce_gradients, reduce_loss));
  }
  const bool expert_parallel = ExpertParallelRun(int(dp.size));  // --plugin ep
  auto not_owned = std::make_shared<std::vector<std::pair<int64_t, int64_t>>>();  // filled by WireExpertParallel
  if (expert_parallel) {
    OPENMOE_RETURN_IF_ERROR(CheckExpertSplit(options, int(dp.size)));
    reduce_gradients = ExpertParallelGradients(not_owned, std::move(reduce_gradients));
  }
  std::shared_ptr<void> zero_comm;
  openmoe::train::ZeroSharding zero;  // one rank: nothing to shard, ZeRO-0
  if (const int64_t stage = absl::GetFlag(FLAGS_zero_stage); dp.size > 1 && stage > 0) {
    OPENMOE_RETURN_IF_ERROR(MakeZeroSharding<openmoe::train::TrainSpace>(int(stage), zero_comm, zero));
  }
  OPENMOE_ASSIGN_OR_RETURN(openmoe::train::Trainer trainer,
                           openmoe::train::Trainer::Create(options, dp, std::move(reduce_gradients), std::move(reduce_loss),
                                                           std::move(zero)));
  if (expert_parallel) {
    OPENMOE_RETURN_IF_ERROR(WireExpertParallel<openmoe::train::TrainSpace>(trainer, int(dp.rank), *not_owned));
  }
  OPENMOE_RETURN_IF_ERROR(trainer.Run());
  if (dp.rank != 0) return absl::OkStatus();
  const std::string png = (std::filesystem::path(options.output_path) / "loss_curve.png").string();
  OPENMOE_ASSIGN_OR_RETURN(openmoe::tools::LossCurve curve, openmoe::tools::ReadLossCurve(trainer.metrics_path()));
  std::vector<double> finite;
  for (double& l : curve.losses) {
    if (std::isfinite(l)) finite.push_back(l);  // the first and last for the summary (fp16 overflow steps have none)
    l /= double(options.batch_size * std::max<int64_t>(1, trainer.seq_len() - 1));
  }
  OPENMOE_RETURN_IF_ERROR(openmoe::tools::WriteLossCurvePng(png, curve.steps, curve.losses, curve.learning_rates));
  if (!finite.empty()) {
    std::fprintf(stderr, "done: step %lld, loss %.4f (first %.4f); checkpoint %s/step-%lld, curve %s\n",
                 (long long)trainer.position().step, finite.back(), finite.front(), options.output_path.c_str(),
                 (long long)trainer.position().step, png.c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Fine-tunes an OpenMoE model with the flags of Colossal-AI's OpenMoE train.py (one device, or data parallel over "
      "MPI host ranks; fp32, bf16 or fp16).\n"
      "  train                                   # default run: the embedded tiny model (tools/default_model) on\n"
      "                                          # tools/train_data/tiny_instructions.jsonl, on CPU in about a minute;\n"
      "                                          # writes outputs/default_finetune, which `generate` then uses\n"
      "  train --model DIR --dataset data.jsonl [--output_path out] [--batch_size 4] [--lr 1e-5] ...\n"
      "  train --model_name base --dataset tokens.safetensors --max_steps 10\n"
      "  train --resume out [flags to change]    # continue from out/latest with the run's own options\n"
      "  train --model DIR --dataset d --max_steps 1 --dump_step_state step1.safetensors\n"
      "  mpirun -np 2 train --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --model DIR --dataset d ...\n"
      "                                          # pure data parallelism on 2 host ranks (mean gradient and loss);\n"
      "                                          # --zero_stage 1 / 2 shard the optimizer state / also the gradient");
  // MPI first (it may edit argv), only when mpirun started this process (it sets
  // OMPI_COMM_WORLD_SIZE): a plain run is a world of one without MPI at all, so concurrent plain
  // runs (tests) share no OpenMPI session files.
  std::unique_ptr<openmoe::parallel::MpiSession> session;
  openmoe::train::DataParallelRank dp{0, 1};
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {
    absl::StatusOr<std::unique_ptr<openmoe::parallel::MpiSession>> created =
        openmoe::parallel::MpiSession::Create(&argc, &argv);
    if (!created.ok()) openmoe::parallel::AbortAll(created.status());
    session = std::move(*created);
    dp = {session->world_rank(), session->world_size()};
  }
  openmoe::tools::RecordArgs(argc, argv);
  absl::ParseCommandLine(argc, argv);

  // Every rank checks the same flags, so all stop alike; rank 0 says why.
  if (const absl::Status parallel = CheckParallelFlags(int(dp.size)); !parallel.ok()) {
    return dp.rank == 0 ? Fail(std::string(parallel.message())) : 2;
  }
  openmoe::train::TrainOptions o;
  // --resume DIR: the checkpoint's run_config.json gives the run's own options (model, data,
  // hyperparameters, output folder); flags given again override them.
  bool restored = false;
  if (FlagGiven("resume")) {
    const std::string resume = ResolvePath(absl::GetFlag(FLAGS_resume));
    absl::StatusOr<bool> loaded = openmoe::train::LoadRunConfig(resume, o);
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
    restored = *loaded;
    if (restored) std::fprintf(stderr, "--resume: the run's options from %s (flags given here override them)\n", resume.c_str());
  }
  const bool default_run = !FlagGiven("model") && !FlagGiven("model_name") && !FlagGiven("dataset") && !FlagGiven("resume");
  if (default_run) {  // the demo: every other flag still applies on top
    o.model_dir = kDefaultModel, o.dataset = kDefaultData;
    o.output_path = openmoe::tools::DefaultFinetuneDir();
    o.max_length = 24, o.batch_size = 16, o.lr = 2e-3, o.num_epochs = 40, o.save_interval = 1000000;
    o.warmup_steps = 20, o.lr_schedule = "cosine", o.max_grad_norm = 1.0;
  }
  // A flag applies when given; otherwise the demo's or the restored run's value stays, and any
  // other run takes the flag's default.
  const auto use = [&](const char* name) { return FlagGiven(name) || (!default_run && !restored); };
  if (FlagGiven("model")) o.model_dir = ResolvePath(absl::GetFlag(FLAGS_model));
  if (FlagGiven("model_name")) o.model_name = absl::GetFlag(FLAGS_model_name);
  if (FlagGiven("dataset")) o.dataset = ResolvePath(absl::GetFlag(FLAGS_dataset));
  if (use("output_path")) o.output_path = ResolvePath(absl::GetFlag(FLAGS_output_path));
  if (use("num_epochs")) o.num_epochs = absl::GetFlag(FLAGS_num_epochs);
  if (FlagGiven("num_epoch")) o.num_epochs = absl::GetFlag(FLAGS_num_epoch);
  if (use("batch_size")) o.batch_size = absl::GetFlag(FLAGS_batch_size);
  if (use("save_interval")) o.save_interval = absl::GetFlag(FLAGS_save_interval);
  if (FlagGiven("i")) o.save_interval = absl::GetFlag(FLAGS_i);
  if (use("max_length")) o.max_length = absl::GetFlag(FLAGS_max_length);
  if (use("lr")) o.lr = absl::GetFlag(FLAGS_lr);
  if (use("warmup_steps")) o.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  if (use("lr_schedule")) o.lr_schedule = absl::GetFlag(FLAGS_lr_schedule);
  if (use("max_grad_norm")) o.max_grad_norm = absl::GetFlag(FLAGS_max_grad_norm);
  if (use("max_steps")) o.max_steps = absl::GetFlag(FLAGS_max_steps);
  if (use("precision")) o.precision = absl::GetFlag(FLAGS_precision);
  if (use("initial_loss_scale")) o.initial_loss_scale = absl::GetFlag(FLAGS_initial_loss_scale);
  if (use("task_name")) o.task_name = absl::GetFlag(FLAGS_task_name);
  if (use("weight_decay")) o.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  if (use("seed")) o.seed = absl::GetFlag(FLAGS_seed);
  if (use("shuffle")) o.shuffle = absl::GetFlag(FLAGS_shuffle);
  if (use("grad_checkpoint")) o.grad_checkpoint = absl::GetFlag(FLAGS_grad_checkpoint);
  if (use("max_shard_bytes")) o.max_shard_bytes = absl::GetFlag(FLAGS_max_shard_bytes);
  o.resume = ResolvePath(absl::GetFlag(FLAGS_resume));
  o.dump_step_state = ResolvePath(absl::GetFlag(FLAGS_dump_step_state));
  o.progress = absl::GetFlag(FLAGS_progress);
  // Loss factors: a value >= 0 sets one; a negative one given explicitly means the config's.
  const std::pair<const char*, std::pair<double, std::optional<double>*>> factors[] = {
      {"label_smoothing", {absl::GetFlag(FLAGS_label_smoothing), &o.label_smoothing}},
      {"z_loss_factor", {absl::GetFlag(FLAGS_z_loss_factor), &o.z_loss_factor}},
      {"router_aux_loss_factor", {absl::GetFlag(FLAGS_router_aux_loss_factor), &o.router_aux_loss_factor}},
      {"router_z_loss_factor", {absl::GetFlag(FLAGS_router_z_loss_factor), &o.router_z_loss_factor}}};
  for (const auto& [name, flag] : factors) {
    if (flag.first >= 0) *flag.second = flag.first;
    else if (FlagGiven(name)) flag.second->reset();
  }
  if (!o.resume.empty() && !FlagGiven("model") && !FlagGiven("model_name")) o.model_dir.clear(), o.model_name.clear();

  setenv("OMP_PROC_BIND", "false", 0);
  Kokkos::ScopeGuard kokkos(argc, argv);
  const absl::Status status = Train(o, dp);
  if (!status.ok()) {
    // Under mpirun the other ranks may wait in a collective for this one: end them all.
    if (dp.size > 1) openmoe::parallel::AbortAll(status);
    return Fail(std::string(status.message()));
  }
  return 0;
}
