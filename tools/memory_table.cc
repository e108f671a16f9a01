// memory_table: prints the per-GPU memory of training OpenMoE-8B and -34B at full depth with
// each Colossal-AI plugin on 2, 4, 8 and 16 GPUs, as the markdown that docs/parallel.md shows
// (parallel/memory_model.h does the counting; docs/parallel.md states the formulas).
//
//   bazel run //tools:memory_table > table.md
//   bazel run //tools:memory_table -- --usable_gib 70 --seq_len 4096 --models 8b
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "openmoe/config.h"
#include "parallel/memory_model.h"

// An "80 GB" card has 80 GiB; 4 GiB of it are kept back for what the model does not count: the
// CUDA context, cuBLAS workspaces, NCCL's buffers, allocator fragmentation.
ABSL_FLAG(double, usable_gib, 76.0, "GPU memory a rank may fill (GiB); a configuration fits if its fullest rank does.");
ABSL_FLAG(int64_t, batch, 1, "Micro-batch rows per rank.");
ABSL_FLAG(int64_t, seq_len, 2048, "Tokens per row.");
ABSL_FLAG(std::string, models, "8b,34b", "Presets, comma-separated (base, 8b, 34b).");
ABSL_FLAG(std::string, worlds, "2,4,8,16", "GPU counts, comma-separated.");

namespace {

using openmoe::parallel::ActivationShape;
using openmoe::parallel::ParallelPlan;
using openmoe::parallel::Plugin;
using openmoe::parallel::RankMemory;

constexpr double kGiB = double(int64_t(1) << 30);

std::string GiB(int64_t bytes) { return absl::StrFormat("%.1f", double(bytes) / kGiB); }

// The configurations of the table for `world` GPUs: ep and ep_zero (k = 2, 4) with ZeRO 1 and 2;
// hybrid with 2, 4, 8 stages, EP over the rest, no expert replicas (replicas only add memory),
// ZeRO 1 (upstream's limit with a pipeline).
std::vector<ParallelPlan> Plans(int64_t world) {
  std::vector<ParallelPlan> plans;
  for (int64_t zero : {1, 2}) plans.push_back({Plugin::kEp, world, zero});
  for (int64_t k : {2, 4}) {
    if (k > world || world % k != 0) continue;
    for (int64_t zero : {1, 2}) plans.push_back({Plugin::kEpZero, world, zero, k});
  }
  for (int64_t pp : {2, 4, 8}) {
    if (pp > world || world % pp != 0) continue;
    plans.push_back({Plugin::kHybrid, world, 1, 1, pp, world / pp, 1});
  }
  return plans;
}

std::string MeshText(const ParallelPlan& plan, const openmoe::parallel::Mesh& mesh, const RankMemory& m) {
  std::string text;
  if (mesh.pp > 1) text = absl::StrCat("pp ", mesh.pp, " (", absl::StrJoin(m.stage_layers, "+"), ") × ");
  return absl::StrCat(text, "ep ", mesh.ep, " × edp ", mesh.expert_dp, ", ddp ", mesh.dense_dp);
}

struct Fit {
  ParallelPlan plan;
  int64_t total = 0;
  std::string mesh;
};

std::string PlanText(const Fit& f) {
  return absl::StrCat(f.plan.world, " GPUs, ", openmoe::parallel::PluginName(f.plan.plugin), " ZeRO-",
                      f.plan.zero_stage, " (", f.mesh, "): ", GiB(f.total), " GiB");
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Prints docs/parallel.md's memory table: per-GPU bytes of OpenMoE training with the "
                               "ep / ep_zero / hybrid plugins (bf16, fp32 master + gradients + AdamW).");
  absl::ParseCommandLine(argc, argv);
  const int64_t usable = int64_t(absl::GetFlag(FLAGS_usable_gib) * kGiB);
  ActivationShape shape;
  shape.batch = absl::GetFlag(FLAGS_batch), shape.seq_len = absl::GetFlag(FLAGS_seq_len);
  std::vector<int64_t> worlds;
  for (absl::string_view w : absl::StrSplit(absl::GetFlag(FLAGS_worlds), ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(w, &n) || n < 1) {
      std::fprintf(stderr, "memory_table: bad --worlds entry '%s'\n", std::string(w).c_str());
      return 2;
    }
    worlds.push_back(n);
  }

  std::printf("Per-GPU memory, GiB, of the fullest rank; micro-batch %lld x %lld tokens, bf16 compute; fits = at most "
              "%.0f GiB.\nColumns: bf16 working weights | fp32 master weights | fp32 gradients | AdamW m + v | "
              "activations | total, then activations and total with recomputation (--grad_checkpoint).\n"
              "Mesh: pp stages (layers per stage) × ep (EP size) × edp (replicas of each expert), ddp = replicas of "
              "each dense parameter.\n",
              (long long)shape.batch, (long long)shape.seq_len, absl::GetFlag(FLAGS_usable_gib));
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_models), ',')) {
    absl::StatusOr<openmoe::OpenMoeConfig> config = openmoe::PresetConfig(std::string(name));
    if (!config.ok()) {
      std::fprintf(stderr, "memory_table: %s\n", std::string(config.status().message()).c_str());
      return 2;
    }
    const openmoe::parallel::ModelParameters p = openmoe::parallel::CountModelParameters(*config);
    const int64_t N = shape.batch * shape.seq_len;
    int64_t kept = 0;
    for (int64_t l = 0; l < config->num_hidden_layers; ++l) kept += openmoe::parallel::KeptLayerBytes(*config, l, shape);
    std::printf("\n### OpenMoE-%s\n\n", std::string(name).c_str());
    std::printf("Parameters: %s dense + %s expert = %s. Expert capacity C = %lld at %lld tokens; kept activations of "
                "all %lld layers: %s GiB (dense layer %s GiB, MoE layer %s GiB).\n\n",
                absl::StrFormat("%.3fB", p.Dense() / 1e9).c_str(), absl::StrFormat("%.3fB", p.Expert() / 1e9).c_str(),
                absl::StrFormat("%.3fB", (p.Dense() + p.Expert()) / 1e9).c_str(),
                (long long)openmoe::parallel::TrainingCapacity(*config, N), (long long)N,
                (long long)config->num_hidden_layers, GiB(kept).c_str(),
                absl::StrFormat("%.3f", openmoe::parallel::KeptLayerBytes(*config, 0, shape) / kGiB).c_str(),
                absl::StrFormat("%.3f", openmoe::parallel::KeptLayerBytes(*config, config->moe_layer_interval - 1,
                                                                          shape) / kGiB).c_str());
    std::printf("| GPUs | plugin | mesh | ZeRO | weights bf16 | master fp32 | grads fp32 | AdamW m+v | activations "
                "| total | fits | act. (recompute) | total (recompute) | fits |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    std::optional<Fit> smallest[2];  // [recompute]
    for (int64_t world : worlds) {
      for (const ParallelPlan& plan : Plans(world)) {
        absl::StatusOr<openmoe::parallel::Mesh> mesh = openmoe::parallel::MakeMesh(plan, *config);
        if (!mesh.ok()) continue;  // e.g. more EP ranks than experts, or more stages than layers
        RankMemory m[2];
        bool ok = true;
        for (int recompute = 0; recompute < 2; ++recompute) {
          ActivationShape s = shape;
          s.recompute = recompute == 1;
          absl::StatusOr<RankMemory> r = openmoe::parallel::PeakRankMemory(*config, plan, s);
          if (!r.ok()) ok = false;
          else m[recompute] = *r;
        }
        if (!ok) continue;
        std::string mesh_text = MeshText(plan, *mesh, m[0]);
        if (m[1].stage_layers != m[0].stage_layers) {  // recomputation balances the stages differently
          mesh_text += absl::StrCat("; recompute: ", absl::StrJoin(m[1].stage_layers, "+"));
        }
        std::printf("| %lld | %s | %s | %lld | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", (long long)world,
                    openmoe::parallel::PluginName(plan.plugin), mesh_text.c_str(), (long long)plan.zero_stage,
                    GiB(m[0].weights).c_str(), GiB(m[0].master).c_str(), GiB(m[0].grads).c_str(),
                    GiB(m[0].moments).c_str(), GiB(m[0].activations).c_str(), GiB(m[0].total()).c_str(),
                    m[0].total() <= usable ? "yes" : "no", GiB(m[1].activations).c_str(), GiB(m[1].total()).c_str(),
                    m[1].total() <= usable ? "yes" : "no");
        for (int recompute = 0; recompute < 2; ++recompute) {
          const int64_t total = m[recompute].total();
          std::optional<Fit>& best = smallest[recompute];
          const bool better = !best || world < best->plan.world || (world == best->plan.world && total < best->total);
          if (total <= usable && better) best = Fit{plan, total, MeshText(plan, *mesh, m[recompute])};
        }
      }
    }
    std::printf("\nSmallest configuration that fits (fewest GPUs, then least memory):\n");
    std::printf("- keeping activations: %s\n", smallest[0] ? PlanText(*smallest[0]).c_str() : "none in this table");
    std::printf("- with recomputation: %s\n", smallest[1] ? PlanText(*smallest[1]).c_str() : "none in this table");
  }
  return 0;
}
