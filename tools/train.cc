// train: fine-tunes an OpenMoE model (single device, fp32 master weights) with the flags of
// Colossal-AI's OpenMoE train.py: flags -> openmoe::train::TrainOptions -> openmoe::train::Trainer
// (openmoe/train/trainer.h; output layout in openmoe/train/checkpoint.h), then the loss curve.
// Under `mpirun -np N` (host ranks through MPI; in a CUDA build one GPU per rank, GPU = local rank,
// through NCCL: parallel/world_communicator.h) with `--plugin ep_zero --extra_dp_size N --zero_stage 0|1|2`
// it trains data-parallel: every rank holds the whole model (every expert replicated), takes its
// DistributedSampler share of each global batch, and the gradient and logged loss are the means
// over ranks (all-reduce); ZeRO-1 shards the AdamW state and update over the ranks, ZeRO-2
// also reduce-scatters the gradient (openmoe/train/optimizer.h); rank 0 alone prints and writes.
// `--plugin ep` (EP size N) and `--plugin ep_zero --extra_dp_size k` (k < N, EP size N/k) run the
// MoE layers expert parallel inside EP groups (rank layout: WireExpertParallel), ZeRO 0/1/2 as
// above; every rank still holds the full flat buffers. hybrid: --pp_size P stages (1F1B) x --ep_size e
// x --dp_size d inside a stage (world = P e d; dense DP over e d, layout in the pipeline section).
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
#include "openmoe/parameter_store.h"
#include "parallel/expert_parallel_dispatcher.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_runtime.h"
#include "parallel/world_communicator.h"
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
          "flags given again override them. Bit-identical to an uninterrupted run. Another world size, plugin or ZeRO "
          "stage may resume it (the state is resharded on load); the data continues at the saved global example, which "
          "this run's global batch (--batch_size x data-parallel ranks) must divide; keep the global batch to continue "
          "the same run.");
ABSL_FLAG(std::string, dump_step_state, "", "After the first optimizer step, write loss.*, grad.<param> (step-1 "
          "gradient) and param.<param> (after the step) to this safetensors file.");
ABSL_FLAG(bool, progress, true, "Progress on stderr: a bar redrawn in place on a terminal, one line per step otherwise.");
ABSL_FLAG(int64_t, max_shard_bytes, int64_t(5) << 30, "Checkpoint weights larger than this are written as "
          "model-0000K-of-0000N.safetensors shards plus model.safetensors.index.json.");
ABSL_FLAG(bool, grad_checkpoint, false, "Activation recomputation (upstream's gradient checkpointing): keep only "
          "each layer's input and run the layer again in the backward pass; same results, less memory.");
// Upstream's parallelism and kernel flags. Supported today over MPI ranks (host: MPI; CUDA: NCCL): `--plugin ep` and
// `--plugin ep_zero --extra_dp_size k` (k dividing the world size), `--zero_stage 0|1|2`; the rest
// are parsed and refused.
ABSL_FLAG(std::string, plugin, "hybrid", "hybrid | ep | ep_zero, over MPI ranks (mpirun -np N; host builds: MPI, "
          "CUDA builds: NCCL, rank r on GPU local_rank; under mpirun -np 1 the plugin still runs its communicators, over "
          "one rank). ep_zero: EP size "
          "N / --extra_dp_size, each expert replicated --extra_dp_size times (--extra_dp_size N: pure data parallelism, "
          "every expert on every rank). ep: the experts split over all N ranks (num_experts divisible by the EP size). "
          "Dense parameters data parallel over all ranks; --zero_stage 0, 1 or 2. Without mpirun: omit it (one device). "
          "hybrid: --pp_size P pipeline stages (1F1B) x --ep_size e x --dp_size d on P*e*d ranks.");
ABSL_FLAG(int64_t, zero_stage, 2, "ZeRO stage 0 | 1 | 2 (--plugin ep or ep_zero; over all ranks' full flat buffer): 0 "
          "replicates the optimizer state; 1 shards the AdamW moments and the master-weight update over the ranks "
          "(updated slices all-gathered), and in bf16 / fp16 runs the fp32 master weights themselves; 2 also reduce-scatters the gradient. Same results as 0; checkpoints are "
          "complete (rank 0 gathers the state) and resume under any stage, plugin or world size.");
ABSL_FLAG(int64_t, extra_dp_size, 1, "ep_zero: replicas of each expert (EP size = world size / this; it must divide "
          "the world size, and the EP size num_experts). Equal to the world size: pure data parallelism.");
ABSL_FLAG(int64_t, pp_size, 2, "--plugin hybrid: pipeline stages (world size = --pp_size x --ep_size x --dp_size).");
ABSL_FLAG(int64_t, dp_size, 1, "--plugin hybrid: expert-replica DP size inside a stage (dense DP over ep x dp ranks).");
ABSL_FLAG(int64_t, ep_size, 2, "--plugin hybrid: EP size inside a stage (num_experts divisible by it).");
ABSL_FLAG(int64_t, microbatch_size, 1, "--plugin hybrid: examples per pipeline microbatch (dividing --batch_size).");
ABSL_FLAG(bool, use_kernel, false, "Not supported yet (upstream's Triton/CUDA MoE kernels).");
ABSL_FLAG(bool, use_layernorm_kernel, false, "Not supported yet (fused normalization).");
ABSL_FLAG(bool, load_balance, false, "Expert parallelism (--plugin ep, or ep_zero with --extra_dp_size < world size): "
          "every --load_balance_interval steps, sum the tokens routed to each expert over the ranks and move experts "
          "(weights and AdamW moments) between EP ranks so that the busiest rank of each MoE layer gets fewer tokens. "
          "The router keeps its canonical expert order, so a move never changes what the model computes; "
          "checkpoints hold the experts in canonical order. Also inside --plugin hybrid's stages (--ep_size > 1).");
ABSL_FLAG(int64_t, load_balance_interval, 1000, "--load_balance: steps between rebalancings.");
ABSL_FLAG(bool, comm_overlap, false, "Expert parallelism (--plugin ep, or ep_zero with --extra_dp_size < world size): "
          "exchange the MoE all-to-alls in --comm_overlap_chunks chunks of local experts, each chunk's exchange "
          "overlapping the previous chunk's expert compute (CUDA: on its own stream; host ranks: the same order, "
          "no overlap). Results identical to no overlap, bit for bit. Without expert parallelism: an error.");
ABSL_FLAG(int64_t, comm_overlap_chunks, 4, "--comm_overlap: chunks of each rank's local experts (at most their count; "
          "1: a single exchange each way, as without --comm_overlap).");

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
// on `world` ranks: OkStatus for a single-device run (world 1, none of the three given), for
// `--plugin ep` and for `--plugin ep_zero --extra_dp_size k` with k dividing the world size (k =
// world: pure data parallelism; k < world: EP groups of world / k ranks), each with --zero_stage 0,
// 1 or 2; otherwise an error naming the first offending flag and what works today. The expert count
// against the EP size is checked once the model is known (CheckExpertSplit). Before any work.
absl::Status CheckHybridFlags(int world);
// --comm_overlap / --comm_overlap_chunks on `world` ranks under --plugin ep / ep_zero (after the
// plugin flags passed): they need expert parallelism (an EP size > 1) and chunks >= 1.
absl::Status CheckCommOverlap(int world);
// --load_balance / --load_balance_interval on `world` ranks (not hybrid): they need an EP size > 1.
absl::Status CheckLoadBalance(int world);
bool HybridPipeline() { return FlagGiven("plugin") && absl::GetFlag(FLAGS_plugin) == "hybrid"; }

absl::Status CheckParallelFlags(int world) {
  if (HybridPipeline()) return CheckHybridFlags(world);  // --plugin hybrid: see the pipeline section below
  const std::string supported = absl::StrCat(
      "supported today on MPI host ranks: --plugin ep, or --plugin ep_zero --extra_dp_size k with k dividing the "
      "world size ", world, " (k = ", world, ": pure data parallelism), each with --zero_stage 0, 1 or 2",
      world == 1 ? "; or drop the parallel flags to train on one device" : "");
  for (const char* flag : {"pp_size", "dp_size", "ep_size", "microbatch_size", "use_kernel", "use_layernorm_kernel"}) {
    if (FlagGiven(flag)) {
      return absl::UnimplementedError(absl::StrCat("--", flag, " is not supported yet here (--pp_size, --ep_size, "
                                                   "--dp_size and --microbatch_size need --plugin hybrid; fused kernels "
                                                   "and load balancing are not implemented); ", supported));
    }
  }
  if (world == 1 && !FlagGiven("plugin") && !FlagGiven("zero_stage") && !FlagGiven("extra_dp_size")) {
    OPENMOE_RETURN_IF_ERROR(CheckLoadBalance(world));
    return CheckCommOverlap(world);  // one device, as before
  }
  const std::string plugin = absl::GetFlag(FLAGS_plugin);
  const int64_t zero = absl::GetFlag(FLAGS_zero_stage), extra_dp = absl::GetFlag(FLAGS_extra_dp_size);
  const std::string where = absl::StrCat(" on ", world, world == 1 ? " rank" : " ranks", "; ");
  if (plugin != "ep" && plugin != "ep_zero") {
    return absl::UnimplementedError(absl::StrCat("--plugin is not supported yet as '", plugin, "'", where, supported));
  }
  if (plugin == "ep_zero" && (extra_dp < 1 || extra_dp > world || world % extra_dp != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--extra_dp_size must divide the world size (the EP size is world / --extra_dp_size), not ", extra_dp, where,
        supported));
  }
  if (zero != 0 && zero != 1 && zero != 2) {
    return absl::InvalidArgumentError(absl::StrCat("--zero_stage must be 0, 1 or 2, not ", zero, where, supported));
  }
  OPENMOE_RETURN_IF_ERROR(CheckLoadBalance(world));  // after the plugin flags, which its message takes as valid
  return CheckCommOverlap(world);
}

// ---- process groups: every communicator of a run, each distinct group of ranks made once ----
// MakeProcessGroups (before Train) creates the world once per process (RankGroup::World; on CUDA
// ranks one ncclCommInitRank over every rank) and each other group as a Split of it, only where it
// is not a group already made (same ranks in the same order); every hook takes its group from here
// (shared_ptr), so a run holds one communicator per distinct group, as upstream's ProcessGroupMesh.
// Every rank prints their count at startup (parallel::CommunicatorsCreated()). Per plugin, W ranks
// (layouts: the expert- and pipeline-parallel sections below):
//  - pure data parallelism (ep_zero --extra_dp_size W; or one rank with --plugin under mpirun):
//    the world, which is the data-parallel hooks' and ZeRO's group: 1 communicator;
//  - ep: the world = data parallel = ZeRO = the EP group; the expert replicas: each rank alone (a
//    Split; the world itself on one rank): 2 (one rank: 1);
//  - ep_zero k (1 < k < W): the world = data parallel = ZeRO; the EP group (the W / k ranks of this
//    replica index) and the expert replicas (the k ranks of this EP index): 3;
//  - hybrid P x e x d: the world; the pipeline (P > 1: the P ranks of this inner index; the world
//    when e d = 1); the stage (data parallel and ZeRO over its e d ranks when e d > 1; the world
//    when P = 1); with e > 1 the EP group (the stage itself when d = 1) and the expert replicas (d
//    ranks). P = 2: e 1 d 1 -> 1, e 1 d 2 -> 3, e 2 d 1 -> 4, e 2 d 2 -> 5.
template <class Space>
struct ProcessGroups {
  using Group = openmoe::parallel::RankGroup<Space>;
  std::shared_ptr<const Group> world;            // null: one device, no communicator
  std::shared_ptr<const Group> data_parallel;    // the data-parallel hooks and ZeRO (null: none)
  std::shared_ptr<const Group> expert_group;     // the EP all-to-alls (null: not expert parallel)
  std::shared_ptr<const Group> expert_replicas;  // the ranks storing this rank's experts
  std::shared_ptr<const Group> pipeline;         // the pipeline's stages (null: one stage)
  int ep_size = 0, ep_index = 0;                 // expert_group's size and this rank's position in it
};

// The data-parallel hooks over `comm` (ProcessGroups::data_parallel: the world, or under --plugin
// hybrid the data-parallel ranks of this rank's pipeline stage): flat gradients summed in place and
// divided by the group's size (the mean of the ranks' gradients), loss parts averaged in float64 on
// the host. Host ranks: MPI; CUDA ranks: the gradients through NCCL (stream-ordered), the loss parts
// through MPI over the same ranks (parallel/world_communicator.h).
template <class Space>
absl::Status MakeDataParallelHooks(std::shared_ptr<const openmoe::parallel::RankGroup<Space>> comm,
                                   openmoe::train::GradientReduction& grads, openmoe::train::LossReduction& loss) {
  if constexpr (openmoe::parallel::kHasWorldCommunicator<Space>) {
    grads = [comm](openmoe::Vector<float, Space> g) -> absl::Status {
      const Space space;
      OPENMOE_RETURN_IF_ERROR(comm->comm()->AllReduce(space, g, openmoe::comm::ReduceOp::kSum));
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
                                                 " ranks: this build has no communicator for them"));
  }
}

// ZeRO-1/2 of pure data parallelism (--zero_stage 1|2; with 0, the data-parallel group for the
// checkpoints' optimizer shards): the optimizer runs on the device communicator of `group`, the
// data-parallel hooks' group (ProcessGroups::data_parallel; host ranks: MPI, CUDA ranks: NCCL).
template <class Space>
absl::Status MakeZeroSharding(int stage, const openmoe::parallel::RankGroup<Space>& group,
                              openmoe::train::ZeroSharding& zero) {
  if constexpr (openmoe::parallel::kHasWorldCommunicator<Space>) {
    zero.stage = stage, zero.comm = group.comm();
    return absl::OkStatus();
  } else {
    return absl::UnimplementedError(absl::StrCat("ZeRO on ", Space::name(), " ranks: this build has no communicator "
                                                 "for them"));
  }
}

// ---- expert parallelism: --plugin ep, and --plugin ep_zero with --extra_dp_size k < world ----
// Rank layout (docs/parallel.md, upstream's use_ep_inside=False mesh order): with EP size
// P_ep = world / k, rank = ep_index * k + replica. EP group of a rank (the all-to-all of the MoE
// layers): the P_ep ranks with its replica index rank % k, i.e. {replica, replica + k, ...}, in
// which it has position ep_index = rank / k and owns experts [ep_index * E/P_ep, (ep_index + 1) *
// E/P_ep); the k replicas of an expert are the neighbouring ranks {ep_index * k, ..., ep_index * k
// + k - 1}. `ep` is k = 1 (one EP group of every rank).

// The EP size of this run: world for --plugin ep, world / --extra_dp_size for --plugin ep_zero
// with --extra_dp_size < world; 0 when the run is not expert parallel (one rank, or pure DP).
// Under mpirun a world of one with --plugin ep is EP over that one rank (see `communicate` in Train).
int ExpertParallelSize(int world) {
  if (world < 1 || (world == 1 && !openmoe::parallel::MpiIsActive())) return 0;
  const std::string plugin = absl::GetFlag(FLAGS_plugin);
  if (plugin == "ep") return world;
  const int64_t k = absl::GetFlag(FLAGS_extra_dp_size);
  if (plugin == "ep_zero" && k >= 1 && k < world && world % k == 0) return int(world / k);
  return 0;
}

// The EP size of this run under any plugin (hybrid: --ep_size when above 1); 0 when not expert parallel.
int RunExpertParallelSize(int world) {
  if (HybridPipeline()) return absl::GetFlag(FLAGS_ep_size) > 1 ? int(absl::GetFlag(FLAGS_ep_size)) : 0;
  return ExpertParallelSize(world);
}

absl::Status CheckLoadBalance(int world) {
  const bool balance = absl::GetFlag(FLAGS_load_balance);
  if (FlagGiven("load_balance_interval") && !balance) {
    return absl::InvalidArgumentError("--load_balance_interval is given without --load_balance");
  }
  if (!balance) return absl::OkStatus();
  if (RunExpertParallelSize(world) < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--load_balance moves experts between expert-parallel ranks, and this run on ", world,
        world == 1 ? " rank" : " ranks", " is not expert parallel: it needs mpirun with --plugin ep, --plugin ep_zero "
        "with --extra_dp_size smaller than the world size, or --plugin hybrid with --ep_size > 1"));
  }
  if (const int64_t interval = absl::GetFlag(FLAGS_load_balance_interval); interval < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--load_balance_interval must be at least 1, not ", interval));
  }
  return absl::OkStatus();
}

absl::Status CheckCommOverlap(int world) {
  const bool overlap = absl::GetFlag(FLAGS_comm_overlap);
  if (FlagGiven("comm_overlap_chunks") && !overlap) {
    return absl::InvalidArgumentError("--comm_overlap_chunks is given without --comm_overlap");
  }
  if (!overlap) return absl::OkStatus();
  if (RunExpertParallelSize(world) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--comm_overlap overlaps the all-to-alls of expert parallelism with the experts' compute, and this run on ",
        world, world == 1 ? " rank" : " ranks", " is not expert parallel: it needs mpirun with --plugin ep, "
        "--plugin ep_zero with --extra_dp_size smaller than the world size, or --plugin hybrid with --ep_size > 1"));
  }
  if (const int64_t chunks = absl::GetFlag(FLAGS_comm_overlap_chunks); chunks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--comm_overlap_chunks must be at least 1, not ", chunks));
  }
  return absl::OkStatus();
}

// "--plugin ep" or "--plugin ep_zero --extra_dp_size k" (for messages).
std::string PluginName() {
  const std::string plugin = absl::GetFlag(FLAGS_plugin);
  if (HybridPipeline()) return absl::StrCat("--plugin hybrid --ep_size ", absl::GetFlag(FLAGS_ep_size));
  return plugin == "ep" ? "--plugin ep"
                        : absl::StrCat("--plugin ep_zero --extra_dp_size ", absl::GetFlag(FLAGS_extra_dp_size));
}

// Before any work: the model's expert count must split evenly over the `ep_size` ranks of an EP
// group. The config of --model or --model_name's preset; a --resume run without them is checked
// when the dispatcher is made (WireExpertParallel), after the model loads.
absl::Status CheckExpertSplit(const openmoe::train::TrainOptions& o, int ep_size, int world) {
  absl::StatusOr<openmoe::OpenMoeConfig> config = absl::NotFoundError("no model given");
  if (!o.model_dir.empty()) config = openmoe::LoadConfig((std::filesystem::path(o.model_dir) / "config.json").string());
  else if (!o.model_name.empty()) config = openmoe::PresetConfig(o.model_name);
  if (!config.ok()) return absl::OkStatus();  // Trainer::Create reports a bad model itself
  if (config->num_experts % ep_size != 0) {
    if (HybridPipeline()) {
      return absl::InvalidArgumentError(absl::StrCat(PluginName(), " splits each stage's experts over EP groups of ",
                                                     ep_size, " ranks, but the model's ", config->num_experts,
                                                     " experts (num_experts) cannot be split evenly over ", ep_size,
                                                     " ranks; choose an --ep_size dividing ", config->num_experts));
    }
    if (ep_size == world) {
      return absl::InvalidArgumentError(absl::StrCat(PluginName(), " splits the experts over the ranks, but the model's ",
                                                     config->num_experts, " experts (num_experts) cannot be split evenly "
                                                     "over ", ep_size, " ranks; use a world size dividing ",
                                                     config->num_experts));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        PluginName(), " splits the experts over EP groups of ", world, " / ", world / ep_size, " = ", ep_size,
        " ranks, but the model's ", config->num_experts, " experts (num_experts) cannot be split evenly over ", ep_size,
        " ranks; choose --extra_dp_size so that world size / --extra_dp_size divides ", config->num_experts));
  }
  return absl::OkStatus();
}

// The gradient hook of expert parallelism (ZeRO-0/1). Each rank stores only its EP position's
// experts, after the dense parameters (TrainingTable: [0, D) dense, [D, total) its experts; D
// comes from the model once the trainer exists). The step's gradient is the mean over the D_dp
// data-parallel ranks of each rank's gradient of its own loss, for every parameter:
//  - dense parameters [0, D): the data-parallel hook (sum over the data-parallel ranks, / D_dp);
//  - the rank's experts [D, total): the model ran each of them on every EP-group member's tokens
//    (the all-to-all's backward brought their output gradients), so this slice holds the SUM over
//    its EP group of each member's gradient. The ranks storing the same experts (one per EP group,
//    the `replicas` communicator) together cover every data-parallel rank once, so their sum is
//    the sum over all of them; / D_dp makes it the mean.
// Under ZeRO-2 the optimizer does the same per range (ExpertGroups, openmoe/train/optimizer.h).
openmoe::train::GradientReduction ShardedExpertGradients(
    std::shared_ptr<const int64_t> expert_begin, openmoe::train::GradientReduction dense,
    std::shared_ptr<openmoe::comm::Communicator<openmoe::train::TrainSpace>> replicas, int data_parallel_size) {
  using Space = openmoe::train::TrainSpace;
  return [expert_begin, dense = std::move(dense), replicas, data_parallel_size](openmoe::Vector<float, Space> g) -> absl::Status {
    const int64_t begin = *expert_begin, total = int64_t(g.extent(0));
    if (begin < 0 || begin > total) return absl::InternalError("expert parallelism: the experts' range is not set");
    if (dense) OPENMOE_RETURN_IF_ERROR(dense(openmoe::Vector<float, Space>(g.data(), begin)));
    const openmoe::Vector<float, Space> experts(g.data() + begin, total - begin);
    const Space space;
    OPENMOE_RETURN_IF_ERROR(replicas->AllReduce(space, experts, openmoe::comm::ReduceOp::kSum));
    const float inv = 1.0f / float(data_parallel_size);
    Kokkos::parallel_for("train::expert_mean_over_ranks", Kokkos::RangePolicy<Space>(space, 0, experts.extent(0)),
                         KOKKOS_LAMBDA(int64_t i) { experts(i) *= inv; });
    space.fence();
    return absl::OkStatus();
  };
}

// The communicators of expert parallelism as the trainer takes them: `groups`' EP group (this
// rank's position in it = its EP index, which decides the experts it stores) and expert replicas
// (the ranks storing the same experts); MakeProcessGroups made them in the layout above.
template <class Space>
openmoe::train::ExpertParallelism ExpertParallelismOf(const ProcessGroups<Space>& groups) {
  openmoe::train::ExpertParallelism experts;
  experts.size = groups.ep_size, experts.index = groups.ep_index;
  experts.group = groups.expert_group->comm(), experts.replicas = groups.expert_replicas->comm();
  return experts;
}

// Hands the trainer's model an ExpertParallelDispatcher over this rank's EP group `group` of
// `ep_size` ranks (ProcessGroups::expert_group; the whole world for `ep`), whose position decides
// the local experts: the ones the model stores. `replicas` k: copies of each expert (world / ep_size
// under ep / ep_zero; --dp_size under hybrid; for the message).
template <class Space>
absl::Status WireExpertParallel(openmoe::train::Trainer& trainer, int rank, int world, int ep_size, int replicas,
                                std::shared_ptr<openmoe::comm::Communicator<Space>> group) {
  if constexpr (openmoe::parallel::kHasWorldCommunicator<Space>) {  // MPI on host ranks, NCCL on CUDA ranks
    const int k = replicas, stage_ranks = ep_size * k;
    const int64_t E = trainer.model().config().num_experts, P = ep_size;
    absl::StatusOr<std::shared_ptr<openmoe::parallel::ExpertParallelDispatcher<Space>>> created =
        openmoe::parallel::ExpertParallelDispatcher<Space>::Create(
            group, E, /*overlap_chunks=*/absl::GetFlag(FLAGS_comm_overlap) ? absl::GetFlag(FLAGS_comm_overlap_chunks) : 1);
    if (!created.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(PluginName(), ": ", created.status().message(), " (num_experts)"));
    }
    const std::shared_ptr<openmoe::parallel::ExpertParallelDispatcher<Space>> dispatcher = *std::move(created);
    const int64_t local = E / P;
    const openmoe::ExpertShard& stored = trainer.model().expert_shard();
    if (dispatcher->first_local_expert() != stored.first || local != stored.count) {
      return absl::InternalError(absl::StrCat("expert parallelism: rank ", rank, " stores experts [", stored.first, ", ",
                                              stored.first + stored.count, ") but its EP position runs [",
                                              dispatcher->first_local_expert(), ", ",
                                              dispatcher->first_local_expert() + local, ")"));
    }
    trainer.model().set_token_dispatcher(dispatcher);
    if (rank == 0) {
      std::string groups;
      if (k > 1) {
        groups = absl::StrCat(", each expert on ", k, " ranks; EP groups");
        for (int r = 0; r < k; ++r) {
          groups += r == 0 ? " {" : " {";
          for (int p = 0; p < ep_size; ++p) absl::StrAppend(&groups, p ? "," : "", p * k + r);
          groups += "}";
        }
      }
      if (stage_ranks < world) groups += absl::StrCat(" in stage 0 (the same in each of the ", world / stage_ranks, " stages)");
      const int64_t chunks = dispatcher->overlap_chunks();
      const std::string overlap = absl::GetFlag(FLAGS_comm_overlap)
          ? absl::StrCat("; --comm_overlap: all-to-alls in ", chunks, chunks == 1 ? " chunk" : " chunks",
                         " of local experts", chunks == 1 ? " (one local expert: nothing to overlap)" : "")
          : "";
      std::fprintf(stderr, "expert parallel: %lld experts over %lld ranks (%lld each)%s; dense parameters data parallel "
                   "over %d ranks%s\n", (long long)E, (long long)P, (long long)local, groups.c_str(), stage_ranks,
                   overlap.c_str());
      int64_t stored_params = 0, whole_params = 0;
      for (const openmoe::TensorSpec& spec : trainer.model().table()) {
        stored_params += spec.numel(), whole_params += openmoe::WholeSpec(spec, stored).numel();
      }
      std::fprintf(stderr, "expert parallel: each rank stores its own experts only: %lld of the model's %lld parameters "
                   "(weights, gradients and AdamW moments)\n", (long long)stored_params, (long long)whole_params);
    }
    return absl::OkStatus();
  } else {
    return absl::UnimplementedError(absl::StrCat("expert-parallel training on ", Space::name(),
                                                 " ranks: this build has no communicator for them"));
  }
}

// ---- pipeline parallelism: --plugin hybrid --pp_size P --ep_size e --dp_size d (world = P e d) ----
// Rank layout (docs/parallel.md's mesh, (pp, ep, edp) order, replica innermost): rank = stage * (e d)
// + inner, inner = ep_index * d + replica. Pipeline of a rank: the P ranks with its inner index
// (stage +- 1 are its neighbours; a Split of the world by inner, ordered by stage); inside a stage
// the e d ranks are D = e d data-parallel ranks (data rank = inner: DistributedSampler share, dense
// gradient mean, loss mean, ZeRO-1), and the stage's experts are split over the EP group of its e
// ranks with the same replica index (WireExpertParallel), each expert on d ranks.
// A rank stores only its stage's tensors (its layers, of the MoE layers only its EP index's
// experts; the embedding on stage 0, the final norm and LM head on stage P - 1): stage s has layers
// [s L / P, (s + 1) L / P) (integer division: stage sizes differ by at most one layer; the
// trainer's PipelineStageLayers). Every stage of a pipeline takes the same --batch_size examples
// (its data rank's share), split into batch_size / --microbatch_size microbatches, each its own
// routing group. Schedule: 1F1B (Megatron's PipeDream-flush order: min(P - 1 - s, M) warm-up
// forwards, then a forward and a backward in turn, then the remaining backwards); hidden states
// [m S, H] go to the next stage and their gradients back as float32 by blocking point-to-point
// calls, the steady state's paired transfers as one exchange each so that neighbouring stages never
// both block in a send (the EP all-to-alls of a stage's MoE layers run in the same order on all e
// ranks of an EP group: they share the stage, hence the schedule).
// Gradient: after the schedule each rank holds its data rank's gradient of the mean microbatch
// loss for its stage's tensors; the loss parts are summed over the pipeline's stages (the router
// losses of every stage). Then, D > 1, the data-parallel hooks over the stage's e d ranks: dense
// slices summed over the e d ranks and expert slices over their d replicas, / D. Dense parameters:
// the mean over the D data ranks; an expert: the owner in each of the d EP groups holds the sum
// over its group's e data ranks (the all-to-all's backward), so its d replicas sum to all D data
// ranks. The gradient norm adds every stage's part (the trainer's optimizer, over the pipeline).
// The loss: the pipeline's sum, then the mean over the D data ranks. ZeRO-1 shards each stage's
// state over the stage's D ranks; rank 0 (stage 0, data rank 0) alone writes metrics, dumps and
// checkpoints (the other stages send it their tensors; every rank writes its optimizer shard).
// ZeRO-2 with P > 1 is refused (as upstream).

// --plugin hybrid on `world` ranks, before any work.
absl::Status CheckHybridFlags(int world) {
  const std::string supported = absl::StrCat(
      "--plugin hybrid supports today over MPI host ranks: --pp_size P --ep_size e --dp_size d on P x e x d ranks "
      "(mpirun -np P*e*d), --microbatch_size m dividing --batch_size, --zero_stage 0 or 1 (2 only with --pp_size 1)");
  for (const char* flag : {"extra_dp_size", "use_kernel", "use_layernorm_kernel"}) {
    if (FlagGiven(flag)) {
      return absl::UnimplementedError(absl::StrCat("--", flag, " is not supported with --plugin hybrid yet; ", supported));
    }
  }
  const int64_t P = absl::GetFlag(FLAGS_pp_size), e = absl::GetFlag(FLAGS_ep_size), d = absl::GetFlag(FLAGS_dp_size);
  const int64_t m = absl::GetFlag(FLAGS_microbatch_size), zero = absl::GetFlag(FLAGS_zero_stage);
  if (P < 1 || e < 1 || d < 1 || m < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--pp_size, --ep_size, --dp_size and --microbatch_size must be >= 1, "
                                                   "not ", P, ", ", e, ", ", d, ", ", m, "; ", supported));
  }
  if (world % (P * e * d) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--plugin hybrid: the world size ", world, " is not divisible by "
                                                   "--pp_size ", P, " x --ep_size ", e, " x --dp_size ", d, " = ",
                                                   P * e * d, "; ", supported));
  }
  if (world != P * e * d) {
    return absl::UnimplementedError(absl::StrCat("--plugin hybrid on ", world, " ranks with --pp_size ", P, " --ep_size ",
                                                 e, " --dp_size ", d, " (", P * e * d, " ranks): a world larger than "
                                                 "P x e x d is not supported yet; ", supported));
  }
  if (zero != 0 && zero != 1 && zero != 2) {
    return absl::InvalidArgumentError(absl::StrCat("--zero_stage must be 0, 1 or 2, not ", zero, "; ", supported));
  }
  if (zero == 2 && P > 1) {
    return absl::InvalidArgumentError(absl::StrCat("--zero_stage 2 cannot be combined with pipeline parallelism "
                                                   "(--pp_size ", P, "), as upstream; ", supported));
  }
  OPENMOE_RETURN_IF_ERROR(CheckLoadBalance(world));  // --ep_size > 1 for these two
  return CheckCommOverlap(world);
}

// Layers [first, end) of pipeline stage `stage` of `stages` in a model of `layers` layers.
std::pair<int64_t, int64_t> StageLayers(int64_t layers, int64_t stage, int64_t stages) {
  return {stage * layers / stages, (stage + 1) * layers / stages};
}

// 1F1B over `comm` (stage = its rank; null for one stage): see the section comment. The transfers
// are RankGroup's float32 point-to-point: blocking MPI on host ranks, stream-ordered NCCL on CUDA.
template <class Space>
absl::Status RunOneFOneB(const openmoe::parallel::RankGroup<Space>* comm, int stage, int stages,
                         const typename openmoe::TrainableModel<Space>::StageOps& ops) {
  using FM = openmoe::Matrix<float, Space>;
  using CFM = openmoe::ConstMatrix<float, Space>;
  const int64_t M = ops.microbatches, rows = ops.rows, H = ops.hidden;
  FM in("pipeline_in", ops.first ? 0 : rows, H), out("pipeline_out", ops.last ? 0 : rows, H);
  FM dout("pipeline_dout", ops.last ? 0 : rows, H), din("pipeline_din", ops.first ? 0 : rows, H);
  const int64_t count = rows * H;
  const Space space;
  auto recv_forward = [&]() -> absl::Status {
    if (ops.first) return absl::OkStatus();
    return comm->Recv(space, in.data(), count, stage - 1, "pipeline hidden states");
  };
  auto send_forward = [&]() -> absl::Status {
    if (ops.last) return absl::OkStatus();
    return comm->Send(space, out.data(), count, stage + 1, "pipeline hidden states");
  };
  auto recv_backward = [&]() -> absl::Status {
    if (ops.last) return absl::OkStatus();
    return comm->Recv(space, dout.data(), count, stage + 1, "pipeline gradients");
  };
  auto send_backward = [&]() -> absl::Status {
    if (ops.first) return absl::OkStatus();
    return comm->Send(space, din.data(), count, stage - 1, "pipeline gradients");
  };
  auto send_forward_recv_backward = [&]() -> absl::Status {
    if (ops.last) return absl::OkStatus();
    return comm->SendRecv(space, out.data(), dout.data(), count, stage + 1, "pipeline hidden states / gradients");
  };
  auto send_backward_recv_forward = [&]() -> absl::Status {
    if (ops.first) return absl::OkStatus();
    return comm->SendRecv(space, din.data(), in.data(), count, stage - 1, "pipeline gradients / hidden states");
  };
  const int64_t warmup = std::min<int64_t>(stages - 1 - stage, M), steady = M - warmup;
  for (int64_t j = 0; j < warmup; ++j) {
    OPENMOE_RETURN_IF_ERROR(recv_forward());
    OPENMOE_RETURN_IF_ERROR(ops.forward(j, CFM(in), out));
    OPENMOE_RETURN_IF_ERROR(send_forward());
  }
  if (steady > 0) OPENMOE_RETURN_IF_ERROR(recv_forward());
  for (int64_t i = 0; i < steady; ++i) {
    OPENMOE_RETURN_IF_ERROR(ops.forward(warmup + i, CFM(in), out));
    OPENMOE_RETURN_IF_ERROR(send_forward_recv_backward());
    OPENMOE_RETURN_IF_ERROR(ops.backward(i, CFM(dout), din));
    OPENMOE_RETURN_IF_ERROR(i + 1 == steady ? send_backward() : send_backward_recv_forward());
  }
  for (int64_t j = steady; j < M; ++j) {
    OPENMOE_RETURN_IF_ERROR(recv_backward());
    OPENMOE_RETURN_IF_ERROR(ops.backward(j, CFM(dout), din));
    OPENMOE_RETURN_IF_ERROR(send_backward());
  }
  return absl::OkStatus();
}

// The trainer's pipeline hooks for world rank `rank` of `world` = P e d ranks (stage rank / (e d),
// pipeline = the ranks of its inner index) over `comm`, ProcessGroups::pipeline (a Split of the
// world by inner index, ordered by stage, so a stage's pipeline rank is its stage; null for one
// stage).
template <class Space>
absl::Status MakePipelineHooks(const openmoe::train::TrainOptions& options, int rank, int world,
                               std::shared_ptr<const openmoe::parallel::RankGroup<Space>> comm,
                               openmoe::train::PipelineHooks& hooks) {
  if constexpr (openmoe::parallel::kHasWorldCommunicator<Space>) {  // MPI on host ranks, NCCL (+ MPI) on CUDA ranks
    const int stages = int(absl::GetFlag(FLAGS_pp_size));
    const int inner_ranks = world / stages, stage = rank / inner_ranks;
    const int64_t m = absl::GetFlag(FLAGS_microbatch_size);
    if (options.batch_size % m != 0) {
      return absl::InvalidArgumentError(absl::StrCat("--plugin hybrid: --batch_size ", options.batch_size,
                                                     " is not divisible by --microbatch_size ", m));
    }
    hooks.writer = rank == 0;
    hooks.stage = stage, hooks.stages = stages;
    if (comm) hooks.pipeline = comm->comm();  // the trainer's: norms over every stage, weights to the writer
    hooks.forward_backward = [comm, stages, m, rank = stage](openmoe::TrainableModel<Space>& model,
                                                     const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                                                     int64_t batch, int64_t seq_len) -> absl::StatusOr<openmoe::LossParts> {
      const int64_t L = model.config().num_hidden_layers;
      if (L < stages) {
        return absl::InvalidArgumentError(absl::StrCat("--plugin hybrid: ", L, " layers (num_hidden_layers) cannot be "
                                                       "split over --pp_size ", stages, " stages"));
      }
      const auto [first, end] = StageLayers(L, rank, stages);
      const typename openmoe::TrainableModel<Space>::PipelineSchedule schedule =
          [&](const typename openmoe::TrainableModel<Space>::StageOps& ops) {
            return RunOneFOneB<Space>(comm.get(), rank, stages, ops);
          };
      OPENMOE_ASSIGN_OR_RETURN(openmoe::LossParts loss,
                               model.ForwardBackwardStage(first, end, ids, mask, batch, seq_len, m, schedule));
      if (comm) {  // the whole loss (each stage's model stores and has gradients of its own tensors only)
        double parts[3] = {loss.lm, loss.router_aux, loss.router_z};
        OPENMOE_RETURN_IF_ERROR(openmoe::parallel::MpiResult(
            MPI_Allreduce(MPI_IN_PLACE, parts, 3, MPI_DOUBLE, MPI_SUM, comm->mpi_comm()), "MPI_Allreduce (pipeline loss)"));
        loss.lm = parts[0], loss.router_aux = parts[1], loss.router_z = parts[2];
        loss.total = loss.lm + loss.router_aux + loss.router_z;
      }
      return loss;
    };
    if (rank == 0) {
      std::fprintf(stderr, "pipeline parallel: %d stages (1F1B), --batch_size %lld in microbatches of %lld\n", stages,
                   (long long)options.batch_size, (long long)m);
      if (inner_ranks > 1) {
        std::string pipes;
        for (int i = 0; i < inner_ranks; ++i) {
          pipes += " {";
          for (int s = 0; s < stages; ++s) absl::StrAppend(&pipes, s ? "," : "", s * inner_ranks + i);
          pipes += "}";
        }
        std::fprintf(stderr, "hybrid: %d data-parallel ranks (--ep_size %lld x --dp_size %lld) in each of %d stages; "
                     "pipelines%s\n", inner_ranks, (long long)absl::GetFlag(FLAGS_ep_size),
                     (long long)absl::GetFlag(FLAGS_dp_size), stages, pipes.c_str());
      }
    }
    return absl::OkStatus();
  } else {
    return absl::UnimplementedError(absl::StrCat("pipeline-parallel training on ", Space::name(),
                                                 " ranks: this build has no communicator for them"));
  }
}

// The run's process groups (the layout of the section comment at ProcessGroups) for world rank
// `rank` of `world`: `stages` pipeline stages of world / stages ranks each (1 but under hybrid),
// `data_parallel`: the data-parallel hooks and ZeRO over a stage's ranks; `ep_size` > 0: expert
// parallel with `replicas` copies of each expert (ep_size x replicas = a stage's ranks). Collective
// over the world; nothing (no world) for one device.
template <class Space>
absl::StatusOr<ProcessGroups<Space>> MakeProcessGroups(int rank, int world, int stages, bool data_parallel,
                                                       int ep_size, int replicas) {
  ProcessGroups<Space> groups;
  if (stages <= 1 && !data_parallel) return groups;  // one device
  if constexpr (openmoe::parallel::kHasWorldCommunicator<Space>) {  // MPI on host ranks, NCCL (+ MPI) on CUDA ranks
    using Group = openmoe::parallel::RankGroup<Space>;
    OPENMOE_ASSIGN_OR_RETURN(Group created, Group::World());
    groups.world = std::make_shared<const Group>(std::move(created));
    // The world ranks of `color`, ordered by (key, rank).
    const auto split = [&](int color, int key) -> absl::StatusOr<std::shared_ptr<const Group>> {
      OPENMOE_ASSIGN_OR_RETURN(Group sub, groups.world->Split(color, key));
      return std::make_shared<const Group>(std::move(sub));
    };
    const int inner_ranks = world / stages, stage = rank / inner_ranks, inner = rank % inner_ranks;
    if (stages > 1) {  // the pipeline: the stages' ranks of this inner index, ordered by stage
      groups.pipeline = groups.world;
      if (inner_ranks > 1) {
        OPENMOE_ASSIGN_OR_RETURN(groups.pipeline, split(/*color=*/inner, /*key=*/stage));
      }
      if (groups.pipeline->size() != stages || groups.pipeline->rank() != stage) {
        return absl::InternalError(absl::StrCat("pipeline: rank ", rank, " has position ", groups.pipeline->rank(),
                                                " of ", groups.pipeline->size(), " in its pipeline, expected ", stage,
                                                " of ", stages));
      }
    }
    std::shared_ptr<const Group> stage_ranks = groups.world;  // this rank's stage, ordered by rank
    if (stages > 1 && (data_parallel || ep_size > 0)) {
      OPENMOE_ASSIGN_OR_RETURN(stage_ranks, split(/*color=*/stage, /*key=*/rank));
    }
    if (data_parallel) groups.data_parallel = stage_ranks;
    if (ep_size > 0) {  // inside the stage: inner = ep_index * k + replica
      const int k = replicas, ep_index = inner / k;
      // EP group: the stage's ranks with this rank's replica index, ordered by rank (position ep_index).
      groups.expert_group = stage_ranks;
      if (k > 1) {
        OPENMOE_ASSIGN_OR_RETURN(groups.expert_group, split(/*color=*/stage * k + inner % k, /*key=*/rank));
      }
      // Replicas: the stage's ranks with this rank's EP index.
      groups.expert_replicas = stage_ranks;
      if (ep_size > 1) {
        OPENMOE_ASSIGN_OR_RETURN(groups.expert_replicas, split(/*color=*/stage * ep_size + ep_index, /*key=*/rank));
      }
      const Group &group = *groups.expert_group, &same = *groups.expert_replicas;
      if (group.size() != ep_size || group.rank() != ep_index || same.size() != k) {
        return absl::InternalError(absl::StrCat("expert parallelism: rank ", rank, " has position ", group.rank(), " of ",
                                                group.size(), " in its EP group (expected ", ep_index, " of ", ep_size,
                                                ") and ", same.size(), " replicas (expected ", k, ")"));
      }
      groups.ep_size = ep_size, groups.ep_index = ep_index;
    }
    return groups;
  } else {
    return absl::UnimplementedError(absl::StrCat(stages > 1 ? "pipeline-parallel" : "data-parallel", " training on ",
                                                 Space::name(), " ranks: this build has no communicator for them"));
  }
}

// The startup line of every rank with process groups, once all hooks exist: "rank 1: communicators:
// 3 (world of 4 ranks: data parallel + ZeRO; 2 ranks: EP group; 2 ranks: expert replicas)", the
// communicators this process made (parallel::CommunicatorsCreated()) and each distinct group of
// `groups` once, with what uses it.
template <class Space>
void PrintCommunicators(int rank, const ProcessGroups<Space>& groups) {
  using Group = openmoe::parallel::RankGroup<Space>;
  if (groups.world == nullptr) return;  // one device
  const std::pair<const char*, const std::shared_ptr<const Group>*> uses[] = {
      {"pipeline", &groups.pipeline}, {"data parallel + ZeRO", &groups.data_parallel},
      {"EP group", &groups.expert_group}, {"expert replicas", &groups.expert_replicas}};
  std::vector<const Group*> listed;
  std::string described;
  for (const std::shared_ptr<const Group>* group : {&groups.world, &groups.pipeline, &groups.data_parallel,
                                                    &groups.expert_group, &groups.expert_replicas}) {
    if (*group == nullptr || std::find(listed.begin(), listed.end(), group->get()) != listed.end()) continue;
    listed.push_back(group->get());
    std::string by;
    for (const auto& [name, user] : uses) {
      if (*user == *group) absl::StrAppend(&by, by.empty() ? ": " : " + ", name);
    }
    const int n = (*group)->size();
    absl::StrAppend(&described, described.empty() ? "" : "; ", group == &groups.world ? "world of " : "", n,
                    n == 1 ? " rank" : " ranks", by);
  }
  std::fprintf(stderr, "rank %d: communicators: %d (%s)\n", rank, openmoe::parallel::CommunicatorsCreated(),
               described.c_str());
}

// The run, then output_path/loss_curve.png from every step of metrics.jsonl (those before a
// resume too), the summed loss per label position. With dp.size > 1: data parallel over the MPI
// world; only rank 0 writes the curve and the summary.
absl::Status Train(const openmoe::train::TrainOptions& options, openmoe::train::DataParallelRank dp) {
  using Space = openmoe::train::TrainSpace;
  const int world_rank = int(dp.rank), world_size = int(dp.size);
  const bool hybrid = HybridPipeline();
  const int stages = hybrid ? int(absl::GetFlag(FLAGS_pp_size)) : 1;
  if (hybrid) {  // D = e d data-parallel ranks, data rank = the index inside the stage; every stage of a pipeline alike
    const int64_t inner_ranks = dp.size / stages;
    dp = {dp.rank % inner_ranks, inner_ranks};
  }
  // Under mpirun a world of one with --plugin given runs the plugin's communicators over itself (the
  // same results as one device, no MPI-free shortcut): how a single GPU checks the NCCL wiring.
  const bool communicate = dp.size > 1 || (world_size == 1 && openmoe::parallel::MpiIsActive() && FlagGiven("plugin"));
  const int ep_size = RunExpertParallelSize(world_size);  // 0: not EP
  const int replicas = ep_size > 0 ? int(dp.size) / ep_size : 0;  // copies of each expert
  if (ep_size > 0) OPENMOE_RETURN_IF_ERROR(CheckExpertSplit(options, ep_size, int(dp.size)));
  // Every communicator of the run, each group made once; it outlives the trainer and its hooks (and
  // is freed before the MPI session ends).
  OPENMOE_ASSIGN_OR_RETURN(const ProcessGroups<Space> groups,
                           MakeProcessGroups<Space>(world_rank, world_size, stages, communicate, ep_size, replicas));
  openmoe::train::PipelineHooks pipeline;
  if (hybrid) OPENMOE_RETURN_IF_ERROR(MakePipelineHooks<Space>(options, world_rank, world_size, groups.pipeline, pipeline));
  openmoe::train::GradientReduction reduce_gradients;
  openmoe::train::LossReduction reduce_loss;
  if (communicate) OPENMOE_RETURN_IF_ERROR(MakeDataParallelHooks<Space>(groups.data_parallel, reduce_gradients, reduce_loss));
  openmoe::train::ExpertParallelism experts;          // ep_size > 0: the EP group and replica communicators
  auto expert_begin = std::make_shared<int64_t>(-1);  // where the model's experts start (set once it exists)
  if (ep_size > 0) {
    experts = ExpertParallelismOf(groups);
    reduce_gradients = ShardedExpertGradients(expert_begin, std::move(reduce_gradients), experts.replicas, int(dp.size));
  }
  openmoe::train::ZeroSharding zero;  // one rank: nothing to shard, ZeRO-0
  // Every multi-rank run gets the data-parallel communicator (with stage 0 too: checkpoints write
  // one optimizer shard per rank through it).
  if (const int64_t stage = absl::GetFlag(FLAGS_zero_stage); communicate) {
    OPENMOE_RETURN_IF_ERROR(MakeZeroSharding<Space>(int(stage), *groups.data_parallel, zero));
  }
  OPENMOE_ASSIGN_OR_RETURN(openmoe::train::Trainer trainer,
                           openmoe::train::Trainer::Create(options, dp, std::move(reduce_gradients), std::move(reduce_loss),
                                                           std::move(zero), std::move(pipeline), experts));
  if (ep_size > 0) {
    *expert_begin = trainer.model().expert_begin();
    OPENMOE_RETURN_IF_ERROR(
        WireExpertParallel<Space>(trainer, world_rank, world_size, ep_size, replicas, experts.group));
  }
  PrintCommunicators(world_rank, groups);  // every communicator of the run exists by now
  OPENMOE_RETURN_IF_ERROR(trainer.Run());
  if (world_rank != 0) return absl::OkStatus();
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
      "Fine-tunes an OpenMoE model with the flags of Colossal-AI's OpenMoE train.py (one device, or parallel over "
      "MPI ranks: host builds communicate through MPI, CUDA builds through NCCL with one GPU per rank, GPU = local "
      "rank; fp32, bf16 or fp16).\n"
      "  train                                   # default run: the embedded tiny model (tools/default_model) on\n"
      "                                          # tools/train_data/tiny_instructions.jsonl, on CPU in about a minute;\n"
      "                                          # writes outputs/default_finetune, which `generate` then uses\n"
      "  train --model DIR --dataset data.jsonl [--output_path out] [--batch_size 4] [--lr 1e-5] ...\n"
      "  train --model_name base --dataset tokens.safetensors --max_steps 10\n"
      "  train --resume out [flags to change]    # continue from out/latest with the run's own options\n"
      "  train --model DIR --dataset d --max_steps 1 --dump_step_state step1.safetensors\n"
      "  mpirun -np 2 train --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --model DIR --dataset d ...\n"
      "                                          # pure data parallelism on 2 host ranks (mean gradient and loss);\n"
      "                                          # --zero_stage 1 / 2 shard the optimizer state / also the gradient\n"
      "  mpirun -np 4 train --plugin ep_zero --extra_dp_size 2 --zero_stage 1 ...  # EP groups of 2 ranks, experts x2\n"
      "  mpirun -np 2 train --plugin ep --zero_stage 2 ...                          # experts split over the ranks");
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
    o.max_length = 28, o.batch_size = 16, o.lr = 3e-3, o.num_epochs = 100, o.save_interval = 1000000;
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
  o.load_balance = absl::GetFlag(FLAGS_load_balance);
  o.load_balance_interval = absl::GetFlag(FLAGS_load_balance_interval);
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
  // CUDA build under mpirun: Kokkos (and so every NCCL communicator) on GPU local_rank.
  const std::unique_ptr<Kokkos::ScopeGuard> kokkos = openmoe::parallel::RankKokkos(argc, argv, session.get());
  const absl::Status status = Train(o, dp);
  if (!status.ok()) {
    // Under mpirun the other ranks may wait in a collective for this one: end them all.
    if (dp.size > 1) openmoe::parallel::AbortAll(status);
    return Fail(std::string(status.message()));
  }
  return 0;
}
