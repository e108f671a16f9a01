#include "openmoe/trainable_model.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/backward.h"
#include "kernels/elementwise.h"
#include "kernels/instantiate.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "kernels/rms_norm.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/model.h"

namespace openmoe {
namespace {

int64_t Numel(const TensorSpec& spec) {
  int64_t n = 1;
  for (int64_t d : spec.shape) n *= d;
  return n;
}

constexpr int64_t kLossRowsPerChunk = 256;  // LM head rows whose [rows, V] logits exist at once

}  // namespace

template <class ExecSpace>
absl::StatusOr<TrainableModel<ExecSpace>> TrainableModel<ExecSpace>::Load(const std::string& model_dir) {
  OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig config, LoadConfig(model_dir + "/config.json"));
  OPENMOE_ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(model_dir));
  return FromCheckpoint(config, reader);
}

template <class ExecSpace>
absl::StatusOr<TrainableModel<ExecSpace>> TrainableModel<ExecSpace>::FromCheckpoint(const OpenMoeConfig& config,
                                                                                    const CheckpointReader& reader) {
  TrainableModel model;
  model.config_ = config;
  model.table_  = CheckpointTable(config);
  OPENMOE_RETURN_IF_ERROR(reader.Validate(model.table_));
  for (const TensorSpec& spec : model.table_) {
    const int64_t n = Numel(spec);
    Vector<float, ExecSpace> p(spec.name, n);
    auto host = Kokkos::create_mirror_view(p);
    OPENMOE_RETURN_IF_ERROR(reader.ReadAsFloat(spec.name, host.data(), n));
    Kokkos::deep_copy(p, host);
    model.params_.emplace(spec.name, p);
    model.grads_.emplace(spec.name, Vector<float, ExecSpace>("grad." + spec.name, n));
  }
  return model;
}

template <class ExecSpace>
absl::StatusOr<TrainableModel<ExecSpace>> TrainableModel<ExecSpace>::RandomInit(const OpenMoeConfig& config,
                                                                                uint64_t seed) {
  OPENMOE_RETURN_IF_ERROR(ValidateConfig(config, "RandomInit"));
  TrainableModel model;
  model.config_ = config;
  model.table_  = CheckpointTable(config);
  std::mt19937_64 rng(seed);  // host draws: the same weights on every backend
  for (const TensorSpec& spec : model.table_) {
    const int64_t n = Numel(spec);
    Vector<float, ExecSpace> p(spec.name, n);
    auto host = Kokkos::create_mirror_view(p);
    if (spec.orientation == Orientation::kVector) {
      for (int64_t i = 0; i < n; ++i) host(i) = 1.0f;
    } else {
      const bool expert_out = spec.name.find(".experts.wo") != std::string::npos;
      const bool moe_in = spec.name.find(".experts.wi_") != std::string::npos ||
                          spec.name.find(".mlp.gate_weight") != std::string::npos;
      const double std = expert_out ? std::sqrt(0.1 / config.intermediate_size)
                                    : moe_in ? std::sqrt(0.1 / config.hidden_size) : 0.02;
      std::normal_distribution<float> normal(0.0f, float(std));
      for (int64_t i = 0; i < n; ++i) host(i) = normal(rng);
      if (spec.name == "model.embed_tokens.weight") {
        for (int64_t h = 0; h < config.hidden_size; ++h) host(config.pad_token_id * config.hidden_size + h) = 0.0f;
      }
    }
    Kokkos::deep_copy(p, host);
    model.params_.emplace(spec.name, p);
    model.grads_.emplace(spec.name, Vector<float, ExecSpace>("grad." + spec.name, n));
  }
  return model;
}

template <class ExecSpace>
Matrix<float, ExecSpace> TrainableModel<ExecSpace>::P(const std::string& name, int64_t rows, int64_t cols) const {
  return Matrix<float, ExecSpace>(params_.at(name).data(), rows, cols);
}
template <class ExecSpace>
Matrix<float, ExecSpace> TrainableModel<ExecSpace>::G(const std::string& name, int64_t rows, int64_t cols) const {
  return Matrix<float, ExecSpace>(grads_.at(name).data(), rows, cols);
}

template <class ExecSpace>
absl::StatusOr<LossParts> TrainableModel<ExecSpace>::ForwardBackward(const std::vector<int64_t>& input_ids,
                                                                    const std::vector<int64_t>& attention_mask,
                                                                    int64_t B, int64_t S) {
  using M    = Matrix<float, ExecSpace>;
  using CM   = ConstMatrix<float, ExecSpace>;
  using T3   = kernels::Tensor3<float, ExecSpace>;
  using CT3  = kernels::Tensor3<const float, ExecSpace>;
  using IntM = Matrix<int32_t, ExecSpace>;
  const OpenMoeConfig& c = config_;
  OPENMOE_RETURN_IF_ERROR(ValidateInputs(c, input_ids, attention_mask, B, S));
  const int64_t N = B * S, H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, E = c.num_experts;
  const int64_t Nh = c.num_attention_heads, Nkv = c.num_key_value_heads, Dh = c.head_dim;
  const int64_t Wq = Nh * Dh, Wkv = Nkv * Dh, L = c.num_hidden_layers;
  const float eps = c.rms_norm_eps;
  ExecSpace space;
  for (auto& [name, g] : grads_) Kokkos::deep_copy(g, 0.0f);

  Vector<int64_t, ExecSpace> ids("ids", N);
  Kokkos::deep_copy(ids, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(input_ids.data(), N));
  Kokkos::View<int64_t**, Kokkos::LayoutRight, MemSpace> mask("mask", B, S);
  Kokkos::deep_copy(mask, Kokkos::View<const int64_t**, Kokkos::LayoutRight, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                              attention_mask.data(), B, S));

  // ---- forward, keeping what the backward pass reads ----
  struct Mlp {  // a dense MLP's activations
    M g, u, act;
  };
  struct Layer {
    M h_in, x1, q, k, v, attn, h_mid, x2;  // q, k rotated; [N, width]
    Mlp mlp;                              // dense layers: the MLP; MoE layers: the extra MLP
    M h2, x3;                             // MoE layers: after the experts, normed for the extra MLP
    M router_logits, probs, dispatched, eg, eu, eact, eo;
    IntM experts, rank;
    int64_t capacity = 0;
  };
  std::vector<Layer> layers(L);
  auto run_mlp = [&](const std::string& prefix, CM x, M out) -> absl::StatusOr<Mlp> {
    Mlp m{M("mlp.g", N, 2 * I), M("mlp.u", N, I), M("mlp.act", N, I)};
    OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, x, P(prefix + ".gate_proj.weight", 2 * I, H), m.g));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, x, P(prefix + ".up_proj.weight", I, H), m.u));
    OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombine<float>(space, m.g, m.u, m.act));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, CM(m.act), P(prefix + ".down_proj.weight", H, I), out));
    return m;
  };
  auto add = [&](M y, M x) { return kernels::AddInPlace<float>(space, y, CM(x)); };
  auto copy = [&](M x) {
    M y(x.label(), x.extent(0), x.extent(1));
    Kokkos::deep_copy(y, x);
    return y;
  };

  M h("h", N, H);
  OPENMOE_RETURN_IF_ERROR(kernels::Embedding<float>(space, P("model.embed_tokens.weight", V, H), ids, h));
  // One layer's forward: h (the residual stream) goes from the layer's input to its output;
  // layers[i] receives every activation the backward pass reads.
  auto layer_forward = [&](int64_t i, M h) -> absl::Status {
    const std::string pre = absl::StrCat("model.layers.", i);
    Layer& a = layers[i];
    a.h_in = copy(h);
    a.x1   = M("x1", N, H);
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<float>(space, a.h_in, params_.at(pre + ".input_layernorm.weight"), a.x1, eps));
    a.q = M("q", N, Wq), a.k = M("k", N, Wkv), a.v = M("v", N, Wkv);
    OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, CM(a.x1), P(pre + ".self_attn.q_proj.weight", Wq, H), a.q));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, CM(a.x1), P(pre + ".self_attn.k_proj.weight", Wkv, H), a.k));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, CM(a.x1), P(pre + ".self_attn.v_proj.weight", Wkv, H), a.v));
    OPENMOE_RETURN_IF_ERROR(kernels::ApplyRope<float>(space, T3(a.q.data(), B, S, Wq), Dh, 0));
    OPENMOE_RETURN_IF_ERROR(kernels::ApplyRope<float>(space, T3(a.k.data(), B, S, Wkv), Dh, 0));
    a.attn = M("attn", N, Wq);
    OPENMOE_RETURN_IF_ERROR(kernels::CausalAttention<float>(space, CT3(a.q.data(), B, S, Wq), CT3(a.k.data(), B, S, Wkv),
                                                            CT3(a.v.data(), B, S, Wkv), mask, Nh, Nkv, Dh, S, 0,
                                                            T3(a.attn.data(), B, S, Wq)));
    M delta("delta", N, H);
    OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, CM(a.attn), P(pre + ".self_attn.o_proj.weight", H, Wq), delta));
    OPENMOE_RETURN_IF_ERROR(add(h, delta));
    a.h_mid = copy(h);
    a.x2    = M("x2", N, H);
    OPENMOE_RETURN_IF_ERROR(
        kernels::RmsNorm<float>(space, a.h_mid, params_.at(pre + ".post_attention_layernorm.weight"), a.x2, eps));
    if (c.IsMoeLayer(i)) {
      a.router_logits = M("router_logits", N, E), a.probs = M("probs", N, E);
      a.experts = IntM("experts", N, 2), a.rank = IntM("rank", N, 2);
      OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, CM(a.x2), P(pre + ".mlp.gate_weight", E, H), a.router_logits));
      OPENMOE_RETURN_IF_ERROR(kernels::RouterTop2<float>(space, a.router_logits, a.probs, a.experts));
      OPENMOE_RETURN_IF_ERROR(kernels::AssignSlots<ExecSpace>(space, a.experts, E, a.rank));
      const int64_t C = a.capacity = kernels::ExpertCapacity(N, E, c.router_capacity_factor_train, c.router_min_capacity);
      a.dispatched = M("dispatched", E * C, H), a.eg = M("eg", E * C, 2 * I), a.eu = M("eu", E * C, I);
      a.eact = M("eact", E * C, I), a.eo = M("eo", E * C, H);
      OPENMOE_RETURN_IF_ERROR(kernels::Dispatch<float>(space, a.x2, a.experts, a.rank, C, a.dispatched));
      for (int64_t e = 0; e < E; ++e) {
        const auto rows = std::make_pair(e * C, (e + 1) * C);
        OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(Kokkos::subview(a.dispatched, rows, Kokkos::ALL)),
                                                       CM(params_.at(pre + ".mlp.experts.wi_gate").data() + e * H * 2 * I, H, 2 * I),
                                                       Kokkos::subview(a.eg, rows, Kokkos::ALL)));
        OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(Kokkos::subview(a.dispatched, rows, Kokkos::ALL)),
                                                       CM(params_.at(pre + ".mlp.experts.wi_up").data() + e * H * I, H, I),
                                                       Kokkos::subview(a.eu, rows, Kokkos::ALL)));
      }
      OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombine<float>(space, a.eg, a.eu, a.eact));
      for (int64_t e = 0; e < E; ++e) {
        const auto rows = std::make_pair(e * C, (e + 1) * C);
        OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(Kokkos::subview(a.eact, rows, Kokkos::ALL)),
                                                       CM(params_.at(pre + ".mlp.experts.wo").data() + e * I * H, I, H),
                                                       Kokkos::subview(a.eo, rows, Kokkos::ALL)));
      }
      OPENMOE_RETURN_IF_ERROR(kernels::Combine<float>(space, a.eo, a.probs, a.experts, a.rank, C, delta));
      OPENMOE_RETURN_IF_ERROR(add(h, delta));
      a.h2 = copy(h), a.x3 = M("x3", N, H);
      OPENMOE_RETURN_IF_ERROR(
          kernels::RmsNorm<float>(space, a.h2, params_.at(pre + ".pre_extra_mlp_layernorm.weight"), a.x3, eps));
      OPENMOE_ASSIGN_OR_RETURN(a.mlp, run_mlp(pre + ".extra_mlp", CM(a.x3), delta));
    } else {
      OPENMOE_ASSIGN_OR_RETURN(a.mlp, run_mlp(pre + ".mlp", CM(a.x2), delta));
    }
    return add(h, delta);
  };
  for (int64_t i = 0; i < L; ++i) {
    OPENMOE_RETURN_IF_ERROR(layer_forward(i, h));
    if (recompute_) {  // keep only the layer's input; the backward pass runs the layer again
      M h_in = layers[i].h_in;
      layers[i] = Layer{};
      layers[i].h_in = h_in;
    }
  }
  M h_final = copy(h), xf("xf", N, H);
  OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<float>(space, h_final, params_.at("model.norm.weight"), xf, eps));

  // ---- LM loss and its gradient, a chunk of rows at a time (never [N, V] logits at once) ----
  LossParts parts;
  M dh("dh", N, H);  // gradient of the residual stream, walked backwards
  {
    std::vector<int64_t> labels(N);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) labels[b * S + s] = s + 1 < S ? input_ids[b * S + s + 1] : -1;
    Vector<int64_t, ExecSpace> labels_d("labels", N);
    Kokkos::deep_copy(labels_d, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(labels.data(), N));
    M dxf("dxf", N, H);
    const int64_t chunk = std::min(N, kLossRowsPerChunk);
    M logits("logits_chunk", chunk, V);
    Vector<double, ExecSpace> row_loss("row_loss", chunk);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t r1 = std::min(N, r0 + chunk), R = r1 - r0;
      const auto rows = std::make_pair(r0, r1);
      M lg(logits.data(), R, V);
      CM x_rows(Kokkos::subview(xf, rows, Kokkos::ALL));
      OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, x_rows, P("lm_head.weight", V, H), lg));
      Vector<double, ExecSpace> loss_rows(row_loss.data(), R);
      OPENMOE_RETURN_IF_ERROR(kernels::LmLossBackward<ExecSpace>(space, lg, Kokkos::subview(labels_d, rows),
                                                                 c.label_smoothing, c.z_loss_factor, loss_rows));
      auto loss_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), loss_rows);
      for (int64_t r = 0; r < R; ++r) parts.lm += loss_host(r);
      OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(lg), P("lm_head.weight", V, H),
                                                     Kokkos::subview(dxf, rows, Kokkos::ALL)));
      OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, x_rows, CM(lg), G("lm_head.weight", V, H)));
    }
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNormBackward<ExecSpace>(space, CM(h_final), params_.at("model.norm.weight"),
                                                                CM(dxf), eps, dh, grads_.at("model.norm.weight")));
  }

  // ---- backward through the layers ----
  M dx("dx", N, H), dnorm("dnorm", N, H);
  // MLP backward: dy -> dx (written); weight gradients accumulated.
  auto mlp_backward = [&](const std::string& prefix, CM x, const Mlp& m, CM dy, M dx_out) -> absl::Status {
    M dact("dact", N, I), dg("dg", N, 2 * I), du("du", N, I);
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, dy, P(prefix + ".down_proj.weight", H, I), dact));
    OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, CM(m.act), dy, G(prefix + ".down_proj.weight", H, I)));
    OPENMOE_RETURN_IF_ERROR(kernels::SwigluBackward<ExecSpace>(space, CM(m.g), CM(m.u), CM(dact), dg, du));
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(dg), P(prefix + ".gate_proj.weight", 2 * I, H), dx_out));
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(du), P(prefix + ".up_proj.weight", I, H), dx_out, true));
    OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, x, CM(dg), G(prefix + ".gate_proj.weight", 2 * I, H)));
    return kernels::LinearWeightGrad<ExecSpace>(space, x, CM(du), G(prefix + ".up_proj.weight", I, H));
  };
  // Norm backward into the residual gradient: dh += RmsNormBackward(x_in, dy).
  auto norm_backward = [&](const std::string& weight, CM x_in, CM dy) -> absl::Status {
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNormBackward<ExecSpace>(space, x_in, params_.at(weight), dy, eps, dnorm, grads_.at(weight)));
    return add(dh, dnorm);
  };
  const double moe_layers = std::max<int64_t>(1, c.NumMoeLayers());
  std::vector<std::pair<double, double>> router_parts;  // per MoE layer (aux, z), unweighted
  for (int64_t i = L - 1; i >= 0; --i) {
    const std::string pre = absl::StrCat("model.layers.", i);
    if (recompute_) {  // the same kernels on the same input: the same activations, bit for bit
      M h_again = copy(layers[i].h_in);
      OPENMOE_RETURN_IF_ERROR(layer_forward(i, h_again));
    }
    Layer& a = layers[i];
    if (c.IsMoeLayer(i)) {
      const int64_t C = a.capacity;
      OPENMOE_RETURN_IF_ERROR(mlp_backward(pre + ".extra_mlp", CM(a.x3), a.mlp, CM(dh), dx));
      OPENMOE_RETURN_IF_ERROR(norm_backward(pre + ".pre_extra_mlp_layernorm.weight", CM(a.h2), CM(dx)));
      // Experts: dh is the gradient of the combined output.
      M d_eo("d_eo", E * C, H), dprobs("dprobs", N, E), d_eact("d_eact", E * C, I);
      M d_eg("d_eg", E * C, 2 * I), d_eu("d_eu", E * C, I), d_disp("d_disp", E * C, H);
      OPENMOE_RETURN_IF_ERROR(kernels::CombineBackward<ExecSpace>(space, CM(dh), CM(a.eo), CM(a.probs), a.experts, a.rank,
                                                                  C, d_eo, dprobs));
      const float* wi_gate = params_.at(pre + ".mlp.experts.wi_gate").data();
      const float* wi_up = params_.at(pre + ".mlp.experts.wi_up").data();
      const float* wo = params_.at(pre + ".mlp.experts.wo").data();
      float* g_wi_gate = grads_.at(pre + ".mlp.experts.wi_gate").data();
      float* g_wi_up = grads_.at(pre + ".mlp.experts.wi_up").data();
      float* g_wo = grads_.at(pre + ".mlp.experts.wo").data();
      for (int64_t e = 0; e < E; ++e) {
        const auto rows = std::make_pair(e * C, (e + 1) * C);
        CM d_eo_e(Kokkos::subview(d_eo, rows, Kokkos::ALL));
        OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, d_eo_e, CM(wo + e * I * H, I, H), Kokkos::subview(d_eact, rows, Kokkos::ALL)));
        OPENMOE_RETURN_IF_ERROR(kernels::MatMulWeightGrad<ExecSpace>(space, CM(Kokkos::subview(a.eact, rows, Kokkos::ALL)), d_eo_e,
                                                                     M(g_wo + e * I * H, I, H)));
      }
      OPENMOE_RETURN_IF_ERROR(kernels::SwigluBackward<ExecSpace>(space, CM(a.eg), CM(a.eu), CM(d_eact), d_eg, d_eu));
      for (int64_t e = 0; e < E; ++e) {
        const auto rows = std::make_pair(e * C, (e + 1) * C);
        CM disp_e(Kokkos::subview(a.dispatched, rows, Kokkos::ALL));
        CM d_eg_e(Kokkos::subview(d_eg, rows, Kokkos::ALL)), d_eu_e(Kokkos::subview(d_eu, rows, Kokkos::ALL));
        M d_disp_e = Kokkos::subview(d_disp, rows, Kokkos::ALL);
        OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, d_eg_e, CM(wi_gate + e * H * 2 * I, H, 2 * I), d_disp_e));
        OPENMOE_RETURN_IF_ERROR(kernels::Linear<float>(space, d_eu_e, CM(wi_up + e * H * I, H, I), d_disp_e, true));
        OPENMOE_RETURN_IF_ERROR(kernels::MatMulWeightGrad<ExecSpace>(space, disp_e, d_eg_e, M(g_wi_gate + e * H * 2 * I, H, 2 * I)));
        OPENMOE_RETURN_IF_ERROR(kernels::MatMulWeightGrad<ExecSpace>(space, disp_e, d_eu_e, M(g_wi_up + e * H * I, H, I)));
      }
      Kokkos::deep_copy(dx, 0.0f);
      OPENMOE_RETURN_IF_ERROR(kernels::DispatchBackward<ExecSpace>(space, CM(d_disp), a.experts, a.rank, C, dx));
      // Router: combine weights + aux loss through the softmax, z-loss on the logits (host,
      // double: [N, E] is small).
      auto probs_h  = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), a.probs);
      auto dprobs_h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dprobs);
      auto logits_h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), a.router_logits);
      std::vector<float> layer_logits(logits_h.data(), logits_h.data() + N * E);
      double aux = 0, z = 0;
      RouterLosses(layer_logits, N, E, aux, z);
      router_parts.push_back({aux, z});
      const double aux_w = c.router_aux_loss_factor / moe_layers, z_w = c.router_z_loss_factor / moe_layers;
      std::vector<double> fraction(E, 0.0);
      auto experts_h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), a.experts);
      for (int64_t t = 0; t < N; ++t) fraction[experts_h(t, 0)] += 1.0 / N, fraction[experts_h(t, 1)] += 1.0 / N;
      auto d_logits_h = Kokkos::create_mirror_view(a.router_logits);
      for (int64_t t = 0; t < N; ++t) {
        double mx = logits_h(t, 0);
        for (int64_t e = 1; e < E; ++e) mx = std::max(mx, double(logits_h(t, e)));
        double sum = 0;
        std::vector<double> p(E), dp(E);
        for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(double(logits_h(t, e)) - mx);
        const double log_z = mx + std::log(sum);
        double dot = 0;
        for (int64_t e = 0; e < E; ++e) {
          p[e] /= sum;
          dp[e] = dprobs_h(t, e) + aux_w * double(E) * fraction[e] / double(N);
          dot += p[e] * dp[e];
        }
        for (int64_t e = 0; e < E; ++e) d_logits_h(t, e) = float(p[e] * (dp[e] - dot) + z_w * 2.0 * log_z * p[e] / double(N));
      }
      M d_router("d_router", N, E);
      Kokkos::deep_copy(d_router, d_logits_h);
      OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(d_router), P(pre + ".mlp.gate_weight", E, H), dx, true));
      OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, CM(a.x2), CM(d_router), G(pre + ".mlp.gate_weight", E, H)));
    } else {
      OPENMOE_RETURN_IF_ERROR(mlp_backward(pre + ".mlp", CM(a.x2), a.mlp, CM(dh), dx));
    }
    OPENMOE_RETURN_IF_ERROR(norm_backward(pre + ".post_attention_layernorm.weight", CM(a.h_mid), CM(dx)));
    // Attention block: dh is the gradient of h_mid = h_in + o_proj(attn).
    M dattn("dattn", N, Wq), dq("dq", N, Wq), dk("dk", N, Wkv), dv("dv", N, Wkv);
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(dh), P(pre + ".self_attn.o_proj.weight", H, Wq), dattn));
    OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, CM(a.attn), CM(dh), G(pre + ".self_attn.o_proj.weight", H, Wq)));
    OPENMOE_RETURN_IF_ERROR(kernels::CausalAttentionBackward<ExecSpace>(
        space, CT3(a.q.data(), B, S, Wq), CT3(a.k.data(), B, S, Wkv), CT3(a.v.data(), B, S, Wkv), mask,
        CT3(dattn.data(), B, S, Wq), Nh, Nkv, Dh, T3(dq.data(), B, S, Wq), T3(dk.data(), B, S, Wkv), T3(dv.data(), B, S, Wkv)));
    OPENMOE_RETURN_IF_ERROR(kernels::RopeBackward<ExecSpace>(space, T3(dq.data(), B, S, Wq), Dh, 0));
    OPENMOE_RETURN_IF_ERROR(kernels::RopeBackward<ExecSpace>(space, T3(dk.data(), B, S, Wkv), Dh, 0));
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(dq), P(pre + ".self_attn.q_proj.weight", Wq, H), dx));
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(dk), P(pre + ".self_attn.k_proj.weight", Wkv, H), dx, true));
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul<float>(space, CM(dv), P(pre + ".self_attn.v_proj.weight", Wkv, H), dx, true));
    OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, CM(a.x1), CM(dq), G(pre + ".self_attn.q_proj.weight", Wq, H)));
    OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, CM(a.x1), CM(dk), G(pre + ".self_attn.k_proj.weight", Wkv, H)));
    OPENMOE_RETURN_IF_ERROR(kernels::LinearWeightGrad<ExecSpace>(space, CM(a.x1), CM(dv), G(pre + ".self_attn.v_proj.weight", Wkv, H)));
    OPENMOE_RETURN_IF_ERROR(norm_backward(pre + ".input_layernorm.weight", CM(a.h_in), CM(dx)));
    a = Layer{};  // this layer's activations are no longer needed
  }
  OPENMOE_RETURN_IF_ERROR(kernels::EmbeddingBackward<ExecSpace>(space, ids, CM(dh), c.pad_token_id,
                                                                G("model.embed_tokens.weight", V, H)));
  Kokkos::fence();
  double aux_sum = 0, z_sum = 0;
  for (auto [aux, z] : router_parts) aux_sum += aux, z_sum += z;
  parts.router_aux = c.router_aux_loss_factor * aux_sum / moe_layers;
  parts.router_z   = c.router_z_loss_factor * z_sum / moe_layers;
  parts.total      = parts.lm + parts.router_aux + parts.router_z;
  return parts;
}

#define OPENMOE_INSTANTIATE_TRAINABLE(Space) template class TrainableModel<Space>;
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_TRAINABLE)

}  // namespace openmoe
