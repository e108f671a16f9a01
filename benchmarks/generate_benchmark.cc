// generate_benchmark: prefill and KV-cache decode throughput of the OpenMoE model at a preset's
// real shapes with random weights (drawn on the device; no checkpoint needed), on the build's
// default backend. Peer: tools/reference/bench_hf_generate.py (PyTorch eager, same shapes).
//
//   generate_benchmark [--preset=8b] [--dtype=bf16] [--prompt_len=512] [--new_tokens=64] [--batches=1,16]
// Prints one RESULT line per batch size: prefill tokens/s, time to first token, decode tokens/s,
// the batch-1 fraction of the read-bandwidth roofline (active weight bytes per token / the
// bandwidth: the H200's 4.8 TB/s on CUDA, --read_gbps on host, e.g. from
// tools/reference/read_bandwidth.sh; 0 when not known), memory.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <Kokkos_Core.hpp>

#include "kernels/attention.h"
#include "kernels/linear.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/decode_graph.h"
#include "openmoe/runtime/generation.h"

namespace {

constexpr double kH200Bandwidth = 4.8e12;  // bytes/s, HBM3e peak
// The read bandwidth the roofline divides by: the H200's on CUDA; on host --read_gbps (0: unknown).
double RooflineBandwidth(double host_read_gbps) {
  return Kokkos::SpaceAccessibility<Kokkos::HostSpace, Kokkos::DefaultExecutionSpace::memory_space>::accessible
             ? host_read_gbps * 1e9
             : kH200Bandwidth;
}

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  return fallback;
}

double GpuMemoryInUseGiB() {
#if defined(KOKKOS_ENABLE_CUDA)
  size_t free_bytes = 0, total = 0;
  cudaMemGetInfo(&free_bytes, &total);
  return double(total - free_bytes) / double(1ull << 30);
#else
  return 0.0;
#endif
}

// The ablation switches of the command line, applied to the model's execution context.
struct Tuning {
  openmoe::kernels::Tuning attention;  // decode attention and decode Linear kernels
  openmoe::DependentLaunch dependent_launch = openmoe::DependentLaunch::kAll;
  double host_read_gbps = 0;  // --read_gbps: the host's measured read bandwidth (roofline)
  int split_probs = -1;       // --split_probs: 1 / 0 forces Tuning::split_16bit_probs; -1 keeps the model's
  uint32_t leave_out = 0;     // --leave_out: kernels::LeaveOut bits (timing only)
};

template <class T>
int Run(const std::string& preset, const std::string& dtype, int64_t prompt_len, int64_t new_tokens,
        const std::vector<int64_t>& batches, const Tuning& tuning) {
  using Space = Kokkos::DefaultExecutionSpace;
  auto config = openmoe::PresetConfig(preset);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  Kokkos::Timer timer;
  auto model = openmoe::OpenMoeModel<Space, T>::RandomInit(*config, /*seed=*/20261129);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  // The command line's switches over the model's own tuning (which rounds the 16-bit attention
  // probabilities once for inference: kernels::Tuning::split_16bit_probs).
  openmoe::kernels::Tuning& model_tuning = model->context().tuning();
  model_tuning.split_key_team_warps = tuning.attention.split_key_team_warps;
  model_tuning.split_key_warp_keys  = tuning.attention.split_key_warp_keys;
  model_tuning.decode_linear_kernel = tuning.attention.decode_linear_kernel;
  model_tuning.decode_attention_kernel = tuning.attention.decode_attention_kernel;
  model_tuning.block_split_lane_keys   = tuning.attention.block_split_lane_keys;
  model_tuning.block_split_warps       = tuning.attention.block_split_warps;
  model_tuning.decode_leave_out     = tuning.leave_out;
  if (tuning.split_probs >= 0) model_tuning.split_16bit_probs = tuning.split_probs != 0;
  std::printf("split_16bit_probs=%d\n", int(model_tuning.split_16bit_probs));
  model->set_dependent_launch(tuning.dependent_launch);
  // Weights a batch-1 decode step must read.
  const double active_bytes = double(openmoe::ActiveParameters(*config)) * sizeof(T);
  std::printf("openmoe-kokkos %s %s on %s: random init in %.1f s, %.2f GB of weights, %.2f GB read per "
              "batch-1 token (roofline %.0f tokens/s at %.1f TB/s)\n",
              preset.c_str(), dtype.c_str(), Space::name(), timer.seconds(), model->WeightBytes() / 1e9,
              active_bytes / 1e9, RooflineBandwidth(tuning.host_read_gbps) / active_bytes,
              RooflineBandwidth(tuning.host_read_gbps) / 1e12);

  std::mt19937_64 rng(1234);
  std::uniform_int_distribution<int64_t> token(3, 255999);
  for (int64_t B : batches) {
    std::vector<int64_t> ids(B * prompt_len), mask(B * prompt_len, 1);
    for (int64_t& id : ids) id = token(rng);
    for (int64_t b = 0; b < B; ++b) ids[b * prompt_len] = 0;  // <pad> BOS
    openmoe::GenerationOptions warmup;
    warmup.max_new_tokens = 4;
    if (auto warm = openmoe::Generate(*model, ids, mask, B, prompt_len, warmup); !warm.ok()) {  // allocates buffers
      std::fprintf(stderr, "generate_benchmark: warm-up at batch %lld failed: %s\n", static_cast<long long>(B),
                   std::string(warm.status().message()).c_str());
      return 1;
    }
    openmoe::GenerationOptions options;
    options.max_new_tokens = new_tokens;
    options.allowed_vocab  = 256000;
    const int64_t syncs_before = model->host_syncs();
    model->profile().Clear();
    auto result = openmoe::Generate(*model, ids, mask, B, prompt_len, options);
    if (!result.ok()) {
      std::fprintf(stderr, "%s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    const double decode_tok_s = double(B * (result->steps - 1)) / result->decode_seconds;
    std::printf("RESULT impl=openmoe_kokkos preset=%s dtype=%s batch=%lld prompt=%lld new=%lld "
                "prefill_tok_s=%.1f ttft_ms=%.1f decode_tok_s=%.1f roofline_frac_b1=%.3f gpu_mem_gib=%.1f "
                "host_syncs_per_step=%.1f%s\n",
                preset.c_str(), dtype.c_str(), static_cast<long long>(B), static_cast<long long>(prompt_len),
                static_cast<long long>(result->steps), double(B * prompt_len) / result->prefill_seconds,
                result->prefill_seconds * 1e3, decode_tok_s,
                B == 1 && RooflineBandwidth(tuning.host_read_gbps) > 0
                    ? decode_tok_s / (RooflineBandwidth(tuning.host_read_gbps) / active_bytes)
                    : 0.0,
                GpuMemoryInUseGiB(),
                double(model->host_syncs() - syncs_before) / double(result->steps),
                tuning.leave_out != 0 ? " leave_out=timing_only" : "");
    if (model->profile().enabled()) {
      std::printf("per-step phase times (OPENMOE_PROFILE, fenced; prefill included), batch %lld:\n",
                  static_cast<long long>(B));
      model->profile().Print(stdout, double(result->steps));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help")) {
      std::printf("generate_benchmark [--preset=base|8b|34b] [--dtype=bf16|fp32] [--prompt_len=512] "
                  "[--new_tokens=64] [--batches=1,16]\n"
                  "  host backends: [--read_gbps=G] the machine's read bandwidth (tools/reference/read_bandwidth.sh) "
                  "for roofline_frac_b1 (on CUDA: the H200's 4.8 TB/s)\n"
                  "  ablation of the CUDA decode attention: [--decode_attention=auto|warp_split|block_split]\n"
                  "    warp split: [--attention_team_warps=1] (warps per team), "
                  "[--attention_warp_keys=0] (keys per warp: 16, 32, or 0 for automatic)\n"
                  "    block split: [--attention_lane_keys=0] (keys per lane: 4, 8, or 0 for automatic), "
                  "[--attention_block_warps=0] (warps per block: 1..8, or 0 for automatic)\n"
                  "  ablation of the decode Linear kernel (<= 4 rows): "
                  "[--decode_linear=auto|cublas|warp_per_column|split_k]\n"
                  "  ablation of programmatic dependent launch in the CUDA decode graphs: "
                  "[--dependent_launch=all|own|off] (default all)\n"
                  "    (all: edges from any kernel into the project's kernels; own: only between the project's kernels)\n"
                  "  ablation of the 16-bit prefill attention probabilities: [--split_probs=1] keeps them as two\n"
                  "    16-bit halves (training's choice), 0 rounds them once (the model's inference default)\n"
                  "  what parts of a decode step cost inside the replayed graph: [--leave_out=a,b,...] of norms,\n"
                  "    attention_core, attention_products, dense_mlp, moe: decode steps skip them (timing only:\n"
                  "    the generated tokens are then wrong)\n");
      return 0;
    }
  const std::string preset = Arg(argc, argv, "preset", "8b"), dtype = Arg(argc, argv, "dtype", "bf16");
  const int64_t prompt_len = std::atoll(Arg(argc, argv, "prompt_len", "512").c_str());
  const int64_t new_tokens = std::atoll(Arg(argc, argv, "new_tokens", "64").c_str());
  std::vector<int64_t> batches;
  std::stringstream list(Arg(argc, argv, "batches", "1,16"));
  for (std::string item; std::getline(list, item, ',');) batches.push_back(std::atoll(item.c_str()));
  setenv("OMP_PROC_BIND", "false", 0);
  Kokkos::ScopeGuard kokkos(argc, argv);
  Tuning tuning;
  tuning.host_read_gbps = std::atof(Arg(argc, argv, "read_gbps", "0").c_str());
  tuning.split_probs    = std::atoi(Arg(argc, argv, "split_probs", "-1").c_str());
  tuning.attention.split_key_team_warps = std::atoi(Arg(argc, argv, "attention_team_warps", "1").c_str());
  tuning.attention.split_key_warp_keys  = std::atoi(Arg(argc, argv, "attention_warp_keys", "0").c_str());
  tuning.attention.block_split_lane_keys = std::atoi(Arg(argc, argv, "attention_lane_keys", "0").c_str());
  tuning.attention.block_split_warps     = std::atoi(Arg(argc, argv, "attention_block_warps", "0").c_str());
  if (tuning.attention.block_split_lane_keys != 0 && tuning.attention.block_split_lane_keys != 4 &&
      tuning.attention.block_split_lane_keys != 8) {
    std::fprintf(stderr, "generate_benchmark: --attention_lane_keys must be 4, 8 or 0 (automatic)\n");
    return 2;
  }
  if (tuning.attention.block_split_warps < 0 || tuning.attention.block_split_warps > 8) {
    std::fprintf(stderr, "generate_benchmark: --attention_block_warps must be 1..8, or 0 (automatic)\n");
    return 2;
  }
  {
    using K = openmoe::kernels::DecodeAttentionKernel;
    const std::string name = Arg(argc, argv, "decode_attention", "auto");
    const std::map<std::string, K> kernels = {{"auto", K::kAuto}, {"warp_split", K::kWarpSplit},
                                             {"block_split", K::kBlockSplit}};
    if (!kernels.count(name)) {
      std::fprintf(stderr, "generate_benchmark: unknown --decode_attention=%s (auto, warp_split, block_split)\n",
                   name.c_str());
      return 2;
    }
    tuning.attention.decode_attention_kernel = kernels.at(name);
    std::printf("decode_attention=%s lane_keys=%d block_warps=%d\n", name.c_str(),
                tuning.attention.block_split_lane_keys, tuning.attention.block_split_warps);
  }
  {
    using K = openmoe::kernels::DecodeLinearKernel;
    const std::string name = Arg(argc, argv, "decode_linear", "auto");
    const std::map<std::string, K> kernels = {{"auto", K::kAuto}, {"cublas", K::kCublas},
                                             {"warp_per_column", K::kWarpPerColumn},
                                             {"split_k", K::kSplitK}};
    if (!kernels.count(name)) {
      std::fprintf(stderr, "generate_benchmark: unknown --decode_linear=%s\n", name.c_str());
      return 2;
    }
    tuning.attention.decode_linear_kernel = kernels.at(name);
    std::printf("decode_linear=%s\n", name.c_str());
  }
  {
    namespace k = openmoe::kernels;
    const std::map<std::string, uint32_t> parts = {
        {"norms", k::kLeaveOutNorms}, {"attention_core", k::kLeaveOutAttentionCore},
        {"attention_products", k::kLeaveOutAttentionProducts}, {"dense_mlp", k::kLeaveOutDenseMlp},
        {"moe", k::kLeaveOutMoe}};
    std::stringstream names(Arg(argc, argv, "leave_out", ""));
    for (std::string name; std::getline(names, name, ',');) {
      if (!parts.count(name)) {
        std::fprintf(stderr, "generate_benchmark: unknown --leave_out part '%s' (norms, attention_core, "
                     "attention_products, dense_mlp, moe)\n", name.c_str());
        return 2;
      }
      tuning.leave_out |= parts.at(name);
    }
    if (tuning.leave_out != 0)
      std::printf("leave_out=%s (decode steps skip these: timing only, outputs invalid)\n",
                  Arg(argc, argv, "leave_out", "").c_str());
  }
  {
    using D = openmoe::DependentLaunch;
    const std::string dependent = Arg(argc, argv, "dependent_launch", "all");
    const std::map<std::string, D> modes = {{"all", D::kAll}, {"own", D::kBetweenOwnKernels}, {"off", D::kOff}};
    if (!modes.count(dependent)) {
      std::fprintf(stderr, "generate_benchmark: --dependent_launch must be all, own or off, not %s\n", dependent.c_str());
      return 2;
    }
    tuning.dependent_launch = modes.at(dependent);
    std::printf("dependent_launch=%s\n", dependent.c_str());
  }
  return dtype == "fp32" ? Run<float>(preset, dtype, prompt_len, new_tokens, batches, tuning)
                         : Run<openmoe::bf16>(preset, dtype, prompt_len, new_tokens, batches, tuning);
}
