#include "parallel/memory_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "openmoe/checkpoint_table.h"

namespace openmoe::parallel {
namespace {

void Add(ParameterSplit& split, const TensorSpec& spec, int64_t num_experts) {
  if (spec.name.find(".experts.") != std::string::npos) {
    // The backward pass finishes one expert's slice of a stacked tensor at a time.
    split.expert += spec.numel(), split.largest_expert = std::max(split.largest_expert, spec.numel() / num_experts);
  } else {
    split.dense += spec.numel(), split.largest_dense = std::max(split.largest_dense, spec.numel());
  }
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of `count` fp32 values per rank of a group of `group` replicas: this rank's shard when
// the ZeRO stage shards them, all of them otherwise.
int64_t Fp32(int64_t count, int64_t group, bool sharded) { return 4 * (sharded ? CeilDiv(count, group) : count); }

}  // namespace

int64_t ModelParameters::Dense() const {
  int64_t n = embedding.dense + head.dense;
  for (const ParameterSplit& l : layers) n += l.dense;
  return n;
}

int64_t ModelParameters::Expert() const {
  int64_t n = embedding.expert + head.expert;
  for (const ParameterSplit& l : layers) n += l.expert;
  return n;
}

ModelParameters CountModelParameters(const OpenMoeConfig& config) {
  ModelParameters p;
  p.layers.resize(config.num_hidden_layers);
  for (const TensorSpec& spec : CheckpointTable(config)) {
    int64_t layer = -1;
    if (spec.name.rfind("model.layers.", 0) == 0) {
      const std::string rest = spec.name.substr(13);
      (void)absl::SimpleAtoi(rest.substr(0, rest.find('.')), &layer);
    }
    const int64_t E = config.num_experts;
    if (layer >= 0) Add(p.layers[layer], spec, E);
    else if (spec.name == "model.embed_tokens.weight") Add(p.embedding, spec, E);
    else Add(p.head, spec, E);  // model.norm, lm_head
  }
  return p;
}

const char* PluginName(Plugin plugin) {
  switch (plugin) {
    case Plugin::kEp: return "ep";
    case Plugin::kEpZero: return "ep_zero";
    default: return "hybrid";
  }
}

absl::StatusOr<Mesh> MakeMesh(const ParallelPlan& plan, const OpenMoeConfig& config) {
  if (plan.world < 1) return absl::InvalidArgumentError(absl::StrCat("world size ", plan.world, " < 1"));
  if (plan.zero_stage < 0 || plan.zero_stage > 2) {
    return absl::InvalidArgumentError(absl::StrCat("ZeRO stage ", plan.zero_stage, " is not 0, 1 or 2"));
  }
  Mesh m;
  switch (plan.plugin) {
    case Plugin::kEp:  // every rank one EP shard, no expert replicas
      m.ep = plan.world, m.expert_dp = 1, m.dense_dp = plan.world;
      break;
    case Plugin::kEpZero:  // k replicas of each EP shard, ZeRO inside the k-group
      if (plan.extra_dp < 1 || plan.world % plan.extra_dp != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("ep_zero: extra_dp_size ", plan.extra_dp, " does not divide the world size ", plan.world));
      }
      m.ep = plan.world / plan.extra_dp, m.expert_dp = plan.extra_dp, m.dense_dp = plan.world;
      break;
    case Plugin::kHybrid:
      if (plan.pp < 1 || plan.ep < 1 || plan.dp < 1 || plan.pp * plan.ep * plan.dp != plan.world) {
        return absl::InvalidArgumentError(absl::StrCat("hybrid: pp ", plan.pp, " x ep ", plan.ep, " x dp ", plan.dp,
                                                       " is not the world size ", plan.world));
      }
      if (plan.pp > config.num_hidden_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("hybrid: ", plan.pp, " stages for ", config.num_hidden_layers, " layers"));
      }
      if (plan.pp > 1 && plan.zero_stage > 1) {
        return absl::InvalidArgumentError("hybrid: ZeRO-2 with a pipeline (upstream allows ZeRO <= 1 with pp > 1)");
      }
      m.pp = plan.pp, m.ep = plan.ep, m.expert_dp = plan.dp, m.dense_dp = plan.ep * plan.dp;
      break;
  }
  if (config.num_experts % m.ep != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(PluginName(plan.plugin), ": ", config.num_experts, " experts do not split over EP size ", m.ep));
  }
  return m;
}

int64_t TrainingCapacity(const OpenMoeConfig& c, int64_t tokens) {
  int64_t capacity = int64_t(std::floor(double(c.router_topk) * double(c.router_capacity_factor_train) *
                                        double(tokens) / double(c.num_experts)));
  capacity += capacity % 2;
  return std::max(capacity, c.router_min_capacity);
}

int64_t KeptLayerBytes(const OpenMoeConfig& c, int64_t layer, const ActivationShape& s) {
  const int64_t N = s.batch * s.seq_len, T = s.compute_bytes, H = c.hidden_size, I = c.intermediate_size;
  const int64_t Wq = c.num_attention_heads * c.head_dim, Wkv = c.num_key_value_heads * c.head_dim;
  // h_in, x1, h_mid, x2 [N, H]; q, attn [N, Wq]; k, v [N, Wkv]; the (extra) MLP's gate_up [N, 3I], act [N, I].
  int64_t bytes = N * (4 * H + 2 * Wq + 2 * Wkv + 4 * I) * T;
  if (c.IsMoeLayer(layer)) {
    const int64_t E = c.num_experts, R = E * TrainingCapacity(c, N);  // expert rows
    bytes += N * (2 * H + E) * T;   // h2, x3 [N, H]; router_logits [N, E]
    bytes += N * E * 4 + N * 4 * 4;  // probs [N, E] float; experts, rank [N, 2] int32
    bytes += R * (2 * H + 4 * I) * T;  // dispatched, eo [R, H]; eg [R, 2I]; eu, eact [R, I]
  }
  return bytes;
}

int64_t LayerWorkspaceBytes(const OpenMoeConfig& c, int64_t layer, const ActivationShape& s, bool expert_parallel) {
  const int64_t N = s.batch * s.seq_len, T = s.compute_bytes, H = c.hidden_size, I = c.intermediate_size;
  const int64_t Wq = c.num_attention_heads * c.head_dim, Wkv = c.num_key_value_heads * c.head_dim;
  // Attention backward: dattn, dq [N, Wq], dk, dv [N, Wkv] float; float copies of q [N, Wq],
  // k, v [N, Wkv]; 16-bit dq, dk, dv; dh in 16 bits, matmul_sum's 16-bit product and its float copy [N, H].
  const int64_t attention = N * ((3 * Wq + 4 * Wkv) * 4 + (Wq + 2 * Wkv) * T + H * (2 * T + 4));
  // MLP backward: dact [N, I] float, d_gate_up [N, 3I] float, gate_up's float copy [N, 3I],
  // 16-bit d_gate_up [N, 3I] and dy [N, H], matmul_sum's product [N, I] in 16 bits and float.
  const int64_t mlp = N * (4 * I * 4 + 3 * I * 4 + 3 * I * T + H * T + I * (T + 4));
  int64_t bytes = std::max(attention, mlp);
  if (c.IsMoeLayer(layer)) {
    const int64_t E = c.num_experts, R = E * TrainingCapacity(c, N);
    // d_eo, d_disp, eo's float copy [R, H]; d_eact, d_eu, eu's float copy [R, I]; d_eg, eg's
    // float copy [R, 2I]; dprobs [N, E]; with EP the [R, H] all-to-all buffer.
    const int64_t experts = R * (3 * H + 7 * I) * 4 + N * E * 4 + (expert_parallel ? R * H * T : 0);
    bytes = std::max(bytes, experts);
  }
  return bytes;
}

int64_t HeadWorkspaceBytes(const OpenMoeConfig& c, const ActivationShape& s) {
  const int64_t N = s.batch * s.seq_len, T = s.compute_bytes, H = c.hidden_size, V = c.vocab_size;
  const int64_t rows = std::min<int64_t>(N, 256);  // trainable_model.cc's kLossRowsPerChunk
  // Logits of a chunk in 16 bits, as float, and their 16-bit gradient [rows, V]; dxf [N, H];
  // float copies of h_final and dxf for the final norm's backward [N, H]; and all rows' logit
  // gradients [N, V] where they fit TrainableModel's default lm_head_gradient_bytes_ (1 GiB: one LM-head
  // weight product over all rows).
  const int64_t all_rows = N * V * T <= (int64_t(1) << 30) ? N * V * T : 0;
  return rows * V * (2 * T + 4) + N * H * T + 2 * N * H * 4 + all_rows;
}

int64_t AttentionScratchBytes(const OpenMoeConfig& c, const ActivationShape& s) {
  const int64_t S = s.seq_len, Nh = c.num_attention_heads, Wq = Nh * c.head_dim;
  const int64_t max_scores = int64_t(64) << 20;  // the default tuning's max_score_elements (64 Mi a chunk)
  const int64_t chunk = std::clamp<int64_t>(max_scores / std::max<int64_t>(1, Nh * S), 1, S);
  const int64_t scores = Nh * chunk * S;
  // scores and their gradient (float), probabilities as two 16-bit halves; P.V's float chunk.
  return scores * (8 + 2 * s.compute_bytes) + chunk * Wq * 4;
}

RankMemory StageMemory(const OpenMoeConfig& c, const ModelParameters& p, const ParallelPlan& plan, const Mesh& mesh,
                       int64_t stage, int64_t first_layer, int64_t end_layer, const ActivationShape& s) {
  const bool first = stage == 0, last = stage == mesh.pp - 1;
  // Parameters this rank holds: the stage's dense ones whole, its experts' E / ep share.
  std::vector<ParameterSplit> parts(p.layers.begin() + first_layer, p.layers.begin() + end_layer);
  if (first) parts.push_back(p.embedding);
  if (last) parts.push_back(p.head);
  int64_t dense = 0, expert = 0, largest_dense = 0, largest_expert = 0;
  for (const ParameterSplit& part : parts) {
    dense += part.dense, expert += part.expert / mesh.ep;
    largest_dense = std::max(largest_dense, part.largest_dense);
    largest_expert = std::max(largest_expert, part.largest_expert);
  }
  const bool shard_states = plan.zero_stage >= 1, shard_grads = plan.zero_stage >= 2;
  RankMemory m;
  m.stage = stage;
  m.weights = s.compute_bytes * (dense + expert);
  m.master = Fp32(dense, mesh.dense_dp, shard_states) + Fp32(expert, mesh.expert_dp, shard_states);
  m.moments = 2 * m.master;
  m.grads = Fp32(dense, mesh.dense_dp, shard_grads) + Fp32(expert, mesh.expert_dp, shard_grads);
  if (shard_grads) {  // one whole tensor's (or expert's) gradient before its reduce-scatter
    m.grads += 4 * std::max(mesh.dense_dp > 1 ? largest_dense : 0, mesh.expert_dp > 1 ? largest_expert : 0);
  }

  const int64_t N = s.batch * s.seq_len, T = s.compute_bytes, H = c.hidden_size;
  const int64_t in_flight = mesh.pp - stage;  // 1F1B: stage s holds pp - s micro-batches
  int64_t kept = N * H * T + 3 * 8 * N;  // the residual stream h; ids, mask, labels (int64)
  int64_t largest_layer = 0, workspace = last ? HeadWorkspaceBytes(c, s) : 0;
  for (int64_t l = first_layer; l < end_layer; ++l) {
    const int64_t layer = KeptLayerBytes(c, l, s);
    kept += s.recompute ? N * H * T : layer;  // recomputation keeps only the layer's input
    largest_layer = std::max(largest_layer, layer);
    workspace = std::max(workspace, LayerWorkspaceBytes(c, l, s, mesh.ep > 1));
  }
  m.activations = in_flight * kept;
  if (last) m.activations += 2 * N * H * T;              // h_final, xf
  if (s.recompute) m.activations += largest_layer;        // the layer being recomputed
  if (mesh.pp > 1) m.activations += 2 * N * H * T;        // pipeline send / receive buffers
  m.activations += 3 * N * H * 4 + workspace + AttentionScratchBytes(c, s);  // dh, dx, dnorm float
  return m;
}

absl::StatusOr<RankMemory> PeakRankMemory(const OpenMoeConfig& c, const ParallelPlan& plan, const ActivationShape& s) {
  absl::StatusOr<Mesh> mesh_or = MakeMesh(plan, c);
  if (!mesh_or.ok()) return mesh_or.status();
  const Mesh mesh = *mesh_or;
  const ModelParameters p = CountModelParameters(c);
  const int64_t L = c.num_hidden_layers, P = mesh.pp;
  // best[k][j]: the smallest possible fullest rank when stages 0..k-1 hold layers [0, j); the
  // memory of a stage depends on its index (micro-batches in flight, embedding, head).
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::vector<std::vector<int64_t>> best(P + 1, std::vector<int64_t>(L + 1, kNone));
  std::vector<std::vector<int64_t>> cut(P + 1, std::vector<int64_t>(L + 1, -1));
  best[0][0] = 0;
  for (int64_t k = 1; k <= P; ++k) {
    for (int64_t j = k; j <= L; ++j) {
      for (int64_t i = k - 1; i < j; ++i) {
        if (best[k - 1][i] == kNone) continue;
        const int64_t stage = StageMemory(c, p, plan, mesh, k - 1, i, j, s).total();
        const int64_t fullest = std::max(best[k - 1][i], stage);
        if (fullest < best[k][j]) best[k][j] = fullest, cut[k][j] = i;
      }
    }
  }
  std::vector<int64_t> ends(P + 1, L);  // stage k holds layers [ends[k], ends[k + 1])
  for (int64_t k = P; k >= 1; --k) ends[k - 1] = cut[k][ends[k]];
  RankMemory fullest;
  std::vector<int64_t> stage_layers;
  for (int64_t k = 0; k < P; ++k) {
    stage_layers.push_back(ends[k + 1] - ends[k]);
    RankMemory m = StageMemory(c, p, plan, mesh, k, ends[k], ends[k + 1], s);
    if (k == 0 || m.total() > fullest.total()) fullest = m;
  }
  fullest.stage_layers = stage_layers;
  return fullest;
}

}  // namespace openmoe::parallel
