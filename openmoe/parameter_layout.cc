#include "openmoe/parameter_layout.h"

#include "absl/strings/str_cat.h"

namespace openmoe {

namespace {

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool ParameterLayout::ContinuesFusedProduct(const std::string& name) {
  return EndsWith(name, ".up_proj.weight") || EndsWith(name, ".self_attn.k_proj.weight") ||
         EndsWith(name, ".self_attn.v_proj.weight");
}

ParameterLayout::ParameterLayout(const std::vector<TensorSpec>& table) {
  int64_t end = 0;  // one past the last element placed
  for (const TensorSpec& spec : table) {
    const bool continues = !slots_.empty() && ContinuesFusedProduct(spec.name);
    const int64_t offset = continues ? end : (end + kAlignment - 1) / kAlignment * kAlignment;
    index_[spec.name] = slots_.size();
    slots_.push_back({spec.name, offset, spec.numel()});
    end = offset + spec.numel();
  }
  total_ = (end + kAlignment - 1) / kAlignment * kAlignment;
}

absl::StatusOr<ParameterSlot> ParameterLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return absl::NotFoundError(absl::StrCat("no parameter named '", name, "'"));
  return slots_[it->second];
}

ModelOffsets ResolveModelOffsets(const ParameterLayout& layout, const OpenMoeConfig& config) {
  auto at = [&](const std::string& name) { return layout.slot(name).offset; };
  ModelOffsets offsets;
  offsets.embed_tokens = at("model.embed_tokens.weight");
  offsets.final_norm   = at("model.norm.weight");
  offsets.lm_head      = at("lm_head.weight");
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string pre = absl::StrCat("model.layers.", i);
    LayerOffsets lo;
    lo.input_norm = at(pre + ".input_layernorm.weight");
    lo.qkv = at(pre + ".self_attn.q_proj.weight");
    lo.k = at(pre + ".self_attn.k_proj.weight"), lo.v = at(pre + ".self_attn.v_proj.weight");
    lo.o = at(pre + ".self_attn.o_proj.weight");
    lo.post_attention_norm = at(pre + ".post_attention_layernorm.weight");
    const std::string mlp = pre + (config.IsMoeLayer(i) ? ".extra_mlp" : ".mlp");
    lo.mlp = {at(mlp + ".gate_proj.weight"), at(mlp + ".down_proj.weight")};
    if (config.IsMoeLayer(i)) {
      lo.pre_extra_mlp_norm = at(pre + ".pre_extra_mlp_layernorm.weight");
      lo.router = at(pre + ".mlp.gate_weight");
      lo.wi_gate = at(pre + ".mlp.experts.wi_gate"), lo.wi_up = at(pre + ".mlp.experts.wi_up");
      lo.wo = at(pre + ".mlp.experts.wo");
    }
    offsets.layers.push_back(lo);
  }
  return offsets;
}

}  // namespace openmoe
