#include "openmoe/model.h"

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/instantiate.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "kernels/rms_norm.h"
#include "openmoe/core/status_macros.h"

namespace openmoe {

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

template <class ExecSpace>
absl::StatusOr<OpenMoeModel<ExecSpace>> OpenMoeModel<ExecSpace>::Load(const std::string& model_dir) {
  OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig config, LoadConfig(model_dir + "/config.json"));
  OPENMOE_ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(model_dir));
  return FromCheckpoint(config, reader);
}

template <class ExecSpace>
absl::StatusOr<OpenMoeModel<ExecSpace>> OpenMoeModel<ExecSpace>::FromCheckpoint(
    const OpenMoeConfig& config, const CheckpointReader& reader) {
  const std::vector<TensorSpec> table = CheckpointTable(config);
  OPENMOE_RETURN_IF_ERROR(reader.Validate(table));
  OpenMoeModel model;
  model.config_ = config;
  std::vector<float> staging;  // one tensor at a time: host memory stays at the largest tensor
  for (const TensorSpec& spec : table) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    staging.resize(numel);
    OPENMOE_RETURN_IF_ERROR(reader.ReadAsFloat(spec.name, staging.data(), numel));
    Kokkos::View<float*, MemSpace> device(spec.name, numel);
    Kokkos::deep_copy(device, Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                                  staging.data(), numel));
    model.weights_.emplace(spec.name, device);
  }
  return model;
}

template <class ExecSpace>
Matrix<float, ExecSpace> OpenMoeModel<ExecSpace>::Weight(const std::string& name, int64_t rows,
                                                         int64_t cols) const {
  return Matrix<float, ExecSpace>(weights_.at(name).data(), rows, cols);
}

template <class ExecSpace>
Vector<float, ExecSpace> OpenMoeModel<ExecSpace>::WeightVector(const std::string& name) const {
  return weights_.at(name);
}

template <class ExecSpace>
absl::Status OpenMoeModel<ExecSpace>::Mlp(const ExecSpace& space, const std::string& prefix,
                                          ConstMatrix<float, ExecSpace> x,
                                          Matrix<float, ExecSpace> out) {
  const int64_t T = x.extent(0), H = config_.hidden_size, I = config_.intermediate_size;
  Matrix<float, ExecSpace> gate("mlp.gate", T, 2 * I), up("mlp.up", T, I), act("mlp.act", T, I);
  OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, x, Weight(prefix + ".gate_proj.weight", 2 * I, H), gate));
  OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, x, Weight(prefix + ".up_proj.weight", I, H), up));
  OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombine<ExecSpace>(space, gate, up, act));
  return kernels::Linear(space, ConstMatrix<float, ExecSpace>(act),
                         Weight(prefix + ".down_proj.weight", H, I), out);
}

template <class ExecSpace>
absl::Status OpenMoeModel<ExecSpace>::SparseMoe(const ExecSpace& space, int64_t layer,
                                                ConstMatrix<float, ExecSpace> x, RoutingMode mode,
                                                Matrix<float, ExecSpace> out,
                                                std::vector<MoeLayerStats>* stats) {
  const int64_t T = x.extent(0), H = config_.hidden_size, I = config_.intermediate_size;
  const int64_t E = config_.num_experts;
  const std::string prefix = absl::StrCat("model.layers.", layer, ".mlp");
  // Router: float32 logits and probabilities, top-2, queue ranks.
  Matrix<float, ExecSpace> router_logits("moe.router_logits", T, E), probs("moe.probs", T, E);  // [T, E]
  Matrix<int32_t, ExecSpace> experts("moe.experts", T, 2), rank("moe.rank", T, 2);              // [T, 2]
  OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, x, Weight(prefix + ".gate_weight", E, H), router_logits));
  OPENMOE_RETURN_IF_ERROR(kernels::RouterTop2<ExecSpace>(space, router_logits, probs, experts));
  OPENMOE_RETURN_IF_ERROR(kernels::AssignSlots<ExecSpace>(space, experts, E, rank));
  const double cf = mode == RoutingMode::kEval ? config_.router_capacity_factor_eval
                                               : config_.router_capacity_factor_train;
  const int64_t C = kernels::ExpertCapacity(T, E, cf, config_.router_min_capacity);

  // Dispatch -> experts (x @ W per expert on its C rows) -> combine.
  Matrix<float, ExecSpace> dispatched("moe.dispatched", E * C, H);  // [E*C, H]
  Matrix<float, ExecSpace> gate("moe.gate", E * C, 2 * I), up("moe.up", E * C, I);
  Matrix<float, ExecSpace> act("moe.act", E * C, I), expert_out("moe.expert_out", E * C, H);
  OPENMOE_RETURN_IF_ERROR(kernels::Dispatch<ExecSpace>(space, x, experts, rank, C, dispatched));
  const float* wi_gate = weights_.at(prefix + ".experts.wi_gate").data();  // [E, H, 2I]
  const float* wi_up   = weights_.at(prefix + ".experts.wi_up").data();    // [E, H, I]
  const float* wo      = weights_.at(prefix + ".experts.wo").data();       // [E, I, H]
  for (int64_t e = 0; e < E; ++e) {
    auto rows = std::make_pair(e * C, (e + 1) * C);
    Matrix<float, ExecSpace> in_e  = Kokkos::subview(dispatched, rows, Kokkos::ALL);
    Matrix<float, ExecSpace> gate_e = Kokkos::subview(gate, rows, Kokkos::ALL);
    Matrix<float, ExecSpace> up_e  = Kokkos::subview(up, rows, Kokkos::ALL);
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul(
        space, ConstMatrix<float, ExecSpace>(in_e),
        ConstMatrix<float, ExecSpace>(wi_gate + e * H * 2 * I, H, 2 * I), gate_e));
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul(space, ConstMatrix<float, ExecSpace>(in_e),
                                            ConstMatrix<float, ExecSpace>(wi_up + e * H * I, H, I), up_e));
  }
  OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombine<ExecSpace>(space, gate, up, act));
  for (int64_t e = 0; e < E; ++e) {
    auto rows = std::make_pair(e * C, (e + 1) * C);
    Matrix<float, ExecSpace> act_e = Kokkos::subview(act, rows, Kokkos::ALL);
    Matrix<float, ExecSpace> out_e = Kokkos::subview(expert_out, rows, Kokkos::ALL);
    OPENMOE_RETURN_IF_ERROR(kernels::MatMul(space, ConstMatrix<float, ExecSpace>(act_e),
                                            ConstMatrix<float, ExecSpace>(wo + e * I * H, I, H), out_e));
  }
  OPENMOE_RETURN_IF_ERROR(kernels::Combine<ExecSpace>(space, expert_out, probs, experts, rank, C, out));

  if (stats != nullptr) {  // named host sync: only when statistics are asked for
    auto rank_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rank);
    MoeLayerStats s{layer, C, 0, 2 * T};
    for (int64_t t = 0; t < T; ++t)
      for (int k = 0; k < 2; ++k) s.kept += rank_host(t, k) < C;
    stats->push_back(s);
  }
  return absl::OkStatus();
}

template <class ExecSpace>
absl::StatusOr<std::vector<float>> OpenMoeModel<ExecSpace>::Logits(
    const std::vector<int64_t>& input_ids, const std::vector<int64_t>& attention_mask, int64_t B,
    int64_t S, RoutingMode mode, std::vector<MoeLayerStats>* stats) {
  OPENMOE_RETURN_IF_ERROR(ValidateInputs(config_, input_ids, attention_mask, B, S));
  const OpenMoeConfig& c = config_;
  const int64_t T = B * S, H = c.hidden_size, V = c.vocab_size;
  const int64_t Nh = c.num_attention_heads, Nkv = c.num_key_value_heads, Dh = c.head_dim;
  ExecSpace space;

  Vector<int64_t, ExecSpace> ids("input_ids", T);  // [T]
  Kokkos::View<int64_t**, Kokkos::LayoutRight, MemSpace> mask("attention_mask", B, S);  // [B, S]
  Kokkos::deep_copy(ids, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                             input_ids.data(), T));
  Kokkos::deep_copy(mask, Kokkos::View<const int64_t**, Kokkos::LayoutRight, Kokkos::HostSpace,
                                       Kokkos::MemoryUnmanaged>(attention_mask.data(), B, S));

  Matrix<float, ExecSpace> h("hidden", T, H), x("normed", T, H), delta("delta", T, H);  // [T, H]
  kernels::Tensor3<float, ExecSpace> q("q", B, S, Nh * Dh), k("k", B, S, Nkv * Dh);
  kernels::Tensor3<float, ExecSpace> v("v", B, S, Nkv * Dh), attn("attn", B, S, Nh * Dh);
  Matrix<float, ExecSpace> q2(q.data(), T, Nh * Dh), k2(k.data(), T, Nkv * Dh);  // [T, Nh*Dh] views
  Matrix<float, ExecSpace> v2(v.data(), T, Nkv * Dh), attn2(attn.data(), T, Nh * Dh);

  OPENMOE_RETURN_IF_ERROR(kernels::Embedding<ExecSpace>(space, Weight("model.embed_tokens.weight", V, H), ids, h));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string layer = absl::StrCat("model.layers.", i);
    // Attention block.
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<ExecSpace>(space, h, WeightVector(layer + ".input_layernorm.weight"), x, c.rms_norm_eps));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, ConstMatrix<float, ExecSpace>(x), Weight(layer + ".self_attn.q_proj.weight", Nh * Dh, H), q2));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, ConstMatrix<float, ExecSpace>(x), Weight(layer + ".self_attn.k_proj.weight", Nkv * Dh, H), k2));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, ConstMatrix<float, ExecSpace>(x), Weight(layer + ".self_attn.v_proj.weight", Nkv * Dh, H), v2));
    OPENMOE_RETURN_IF_ERROR(kernels::ApplyRope<ExecSpace>(space, q, Dh, /*position_offset=*/0));
    OPENMOE_RETURN_IF_ERROR(kernels::ApplyRope<ExecSpace>(space, k, Dh, /*position_offset=*/0));
    OPENMOE_RETURN_IF_ERROR(kernels::CausalAttention<ExecSpace>(space, q, k, v, mask, Nh, Nkv, Dh, S, 0, attn));
    OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, ConstMatrix<float, ExecSpace>(attn2), Weight(layer + ".self_attn.o_proj.weight", H, Nh * Dh), delta));
    OPENMOE_RETURN_IF_ERROR(kernels::AddInPlace<ExecSpace>(space, h, delta));
    // Feed-forward block(s).
    OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<ExecSpace>(space, h, WeightVector(layer + ".post_attention_layernorm.weight"), x, c.rms_norm_eps));
    if (c.IsMoeLayer(i)) {
      OPENMOE_RETURN_IF_ERROR(SparseMoe(space, i, x, mode, delta, stats));
      OPENMOE_RETURN_IF_ERROR(kernels::AddInPlace<ExecSpace>(space, h, delta));
      OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<ExecSpace>(space, h, WeightVector(layer + ".pre_extra_mlp_layernorm.weight"), x, c.rms_norm_eps));
      OPENMOE_RETURN_IF_ERROR(Mlp(space, layer + ".extra_mlp", x, delta));
    } else {
      OPENMOE_RETURN_IF_ERROR(Mlp(space, layer + ".mlp", x, delta));
    }
    OPENMOE_RETURN_IF_ERROR(kernels::AddInPlace<ExecSpace>(space, h, delta));
  }
  OPENMOE_RETURN_IF_ERROR(kernels::RmsNorm<ExecSpace>(space, h, WeightVector("model.norm.weight"), x, c.rms_norm_eps));
  Matrix<float, ExecSpace> logits("logits", T, V);  // [T, V]
  OPENMOE_RETURN_IF_ERROR(kernels::Linear(space, ConstMatrix<float, ExecSpace>(x), Weight("lm_head.weight", V, H), logits));
  std::vector<float> result(T * V);
  Kokkos::deep_copy(Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                        result.data(), T, V),
                    logits);
  return result;
}

#define OPENMOE_INSTANTIATE_MODEL(Space) template class OpenMoeModel<Space>;
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_MODEL)

}  // namespace openmoe
