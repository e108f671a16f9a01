#include "openmoe/checkpoint_table.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace openmoe {

std::vector<TensorSpec> CheckpointTable(const OpenMoeConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  const int64_t q_out = c.num_attention_heads * c.head_dim, kv_out = c.num_key_value_heads * c.head_dim;
  std::vector<TensorSpec> table;
  table.push_back({"model.embed_tokens.weight", {V, H}, Orientation::kRowTable});
  auto add_mlp = [&](const std::string& prefix) {
    table.push_back({prefix + ".gate_proj.weight", {2 * I, H}, Orientation::kLinear});
    table.push_back({prefix + ".up_proj.weight", {I, H}, Orientation::kLinear});
    table.push_back({prefix + ".down_proj.weight", {H, I}, Orientation::kLinear});
  };
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string layer = absl::StrCat("model.layers.", i);
    table.push_back({layer + ".input_layernorm.weight", {H}, Orientation::kVector});
    table.push_back({layer + ".self_attn.q_proj.weight", {q_out, H}, Orientation::kLinear});
    table.push_back({layer + ".self_attn.k_proj.weight", {kv_out, H}, Orientation::kLinear});
    table.push_back({layer + ".self_attn.v_proj.weight", {kv_out, H}, Orientation::kLinear});
    table.push_back({layer + ".self_attn.o_proj.weight", {H, q_out}, Orientation::kLinear});
    table.push_back({layer + ".post_attention_layernorm.weight", {H}, Orientation::kVector});
    if (c.IsMoeLayer(i)) {
      table.push_back({layer + ".mlp.gate_weight", {E, H}, Orientation::kLinear});
      table.push_back({layer + ".mlp.experts.wi_gate", {E, H, 2 * I}, Orientation::kStackedXW});
      table.push_back({layer + ".mlp.experts.wi_up", {E, H, I}, Orientation::kStackedXW});
      table.push_back({layer + ".mlp.experts.wo", {E, I, H}, Orientation::kStackedXW});
      table.push_back({layer + ".pre_extra_mlp_layernorm.weight", {H}, Orientation::kVector});
      add_mlp(layer + ".extra_mlp");
    } else {
      add_mlp(layer + ".mlp");
    }
  }
  table.push_back({"model.norm.weight", {H}, Orientation::kVector});
  table.push_back({"lm_head.weight", {V, H}, Orientation::kRowTable});
  return table;
}

int64_t CountParameters(const OpenMoeConfig& config) {
  int64_t total = 0;
  for (const TensorSpec& spec : CheckpointTable(config)) total += spec.numel();
  return total;
}

int64_t ActiveParameters(const OpenMoeConfig& config) {
  int64_t active = 0;
  for (const TensorSpec& spec : CheckpointTable(config)) {
    if (spec.name == "model.embed_tokens.weight") continue;
    const bool expert = spec.name.find(".experts.") != std::string::npos;
    active += expert ? spec.numel() / config.num_experts * 2 : spec.numel();
  }
  return active;
}

double InitStd(const OpenMoeConfig& config, const TensorSpec& spec) {
  if (spec.orientation == Orientation::kVector) return 0.0;
  if (spec.name.find(".experts.wo") != std::string::npos) return std::sqrt(0.1 / double(config.intermediate_size));
  if (spec.name.find(".experts.wi_") != std::string::npos || spec.name.find(".mlp.gate_weight") != std::string::npos) {
    return std::sqrt(0.1 / double(config.hidden_size));
  }
  return 0.02;
}

}  // namespace openmoe
