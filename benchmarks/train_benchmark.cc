// train_benchmark: tokens/s and model-FLOPs utilisation of a training step (forward, loss,
// backward, AdamW on every parameter; fp32 master weights and compute) at a preset's real shapes
// with random weights and random tokens, on the build's default backend.
// Peer: tools/reference/bench_hf_train.py (PyTorch eager on the project's HF model, same shapes).
//
//   train_benchmark [--preset=base] [--precision=fp32|bf16] [--seq=2048] [--batch=1] [--steps=3] [--layers=N]
// --layers keeps the preset's layer shapes but builds N layers (8B with fp32 masters + AdamW moments
// needs ~144 GB for its 9B parameters alone: more than one H200).
// Model FLOPs per token = 6 x (parameters a token uses: everything but the embedding table and
// the E-2 experts it is not routed to) + 12 x layers x heads x head_dim x seq (attention), the
// usual MFU convention; MFU is quoted against the H200's 67 TFLOP/s of non-tensor-core FP32 for
// fp32 and its 989 TFLOP/s of dense bf16 tensor-core math for bf16.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include <Kokkos_Core.hpp>

#include "kernels/adamw.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/trainable_model.h"

namespace {

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  return fallback;
}

int Run(const std::string& preset, const std::string& precision, int64_t S, int64_t B, int steps, int layers) {
  using Space = Kokkos::DefaultExecutionSpace;
  if (precision != "fp32" && precision != "bf16") {  // fp16 needs loss scaling: //tools:train
    return std::fprintf(stderr, "--precision must be fp32 or bf16, got %s\n", precision.c_str()), 1;
  }
  auto config = openmoe::PresetConfig(preset);
  if (!config.ok()) return std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str()), 1;
  if (layers > 0) config->num_hidden_layers = layers;
  auto model = openmoe::TrainableModel<Space>::RandomInit(*config, 20261129);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str()), 1;
  model->set_compute_dtype(precision == "bf16" ? openmoe::TrainableModel<Space>::ComputeDtype::kBf16
                                              : openmoe::TrainableModel<Space>::ComputeDtype::kFp32);
  const openmoe::OpenMoeConfig& c = *config;
  const int64_t active = openmoe::ActiveParameters(c);
  const double flops_per_token = 6.0 * double(active) +
                                 12.0 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * double(S);
  openmoe::kernels::AdamWOptions adamw;
  adamw.lr = 1e-5;
  // AdamW moments in the model's flat layout: one optimizer kernel per step, as the trainer runs it.
  openmoe::Vector<float, Space> m("m", model->layout().total()), v("v", model->layout().total());
  std::mt19937_64 rng(1234);
  std::uniform_int_distribution<int64_t> token(3, 255999);
  std::vector<int64_t> ids(B * S), mask(B * S, 1);
  for (int64_t& id : ids) id = token(rng);
  for (int64_t b = 0; b < B; ++b) ids[b * S] = 0;
  double best = 1e30;
  for (int step = 0; step <= steps; ++step) {  // step 0 warms up (allocations, cuBLAS)
    Kokkos::fence();
    const auto t0 = std::chrono::steady_clock::now();
    auto loss = model->ForwardBackward(ids, mask, B, S);
    if (!loss.ok()) return std::fprintf(stderr, "%s\n", std::string(loss.status().message()).c_str()), 1;
    (void)openmoe::kernels::AdamWStep<Space>(Space(), model->flat_params(), model->flat_grads(), m, v, step + 1, adamw);
    Kokkos::fence();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step > 0) best = std::min(best, seconds);
    std::printf("step %d: %.3f s, loss %.2f\n", step, seconds, loss->total);
  }
  const double tokens_s = double(B * S) / best;
  const double peak_flops = precision == "bf16" ? 989e12 : 67e12;
  std::printf("RESULT impl=openmoe_kokkos preset=%s precision=%s layers=%lld batch=%lld seq=%lld step_s=%.3f tokens_s=%.1f "
              "model_tflops=%.2f mfu_%s=%.3f active_params=%lld\n",
              preset.c_str(), precision.c_str(), (long long)c.num_hidden_layers, (long long)B, (long long)S, best, tokens_s,
              tokens_s * flops_per_token / 1e12, precision.c_str(), tokens_s * flops_per_token / peak_flops, (long long)active);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help")) {
      std::printf("train_benchmark [--preset=base|8b|34b] [--precision=fp32|bf16] [--seq=2048] [--batch=1] [--steps=3] [--layers=N]\n");
      return 0;
    }
  const std::string preset = Arg(argc, argv, "preset", "base");
  const int64_t S = std::atoll(Arg(argc, argv, "seq", "2048").c_str()), B = std::atoll(Arg(argc, argv, "batch", "1").c_str());
  const int steps = std::atoi(Arg(argc, argv, "steps", "3").c_str());
  setenv("OMP_PROC_BIND", "false", 0);
  Kokkos::ScopeGuard kokkos(argc, argv);
  return Run(preset, Arg(argc, argv, "precision", "fp32"), S, B, steps, std::atoi(Arg(argc, argv, "layers", "0").c_str()));
}
