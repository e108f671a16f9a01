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

bool ExpertShard::IsExpertTensor(const std::string& name) { return name.find(".experts.") != std::string::npos; }

std::vector<TensorSpec> TrainingTable(const std::vector<TensorSpec>& full, const ExpertShard& shard) {
  std::vector<TensorSpec> table;
  table.reserve(full.size());
  for (const TensorSpec& spec : full) {
    if (!ExpertShard::IsExpertTensor(spec.name)) table.push_back(spec);
  }
  for (const TensorSpec& spec : full) {
    if (!ExpertShard::IsExpertTensor(spec.name)) continue;
    table.push_back(spec);
    table.back().shape[0] = shard.count;
  }
  return table;
}

int64_t ExpertSegmentBegin(const ParameterLayout& layout) {
  for (const ParameterSlot& s : layout.slots()) {
    if (ExpertShard::IsExpertTensor(s.name)) return s.offset;
  }
  return layout.total();
}

absl::StatusOr<ParameterSlot> ParameterLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return absl::NotFoundError(absl::StrCat("no parameter named '", name, "'"));
  return slots_[it->second];
}

ModelOffsets ResolveModelOffsets(const ParameterLayout& layout, const OpenMoeConfig& config) {
  return ResolveModelOffsets(layout, config, WholeModel(config));
}

ModelOffsets ResolveModelOffsets(const ParameterLayout& layout, const OpenMoeConfig& config, const LayerRange& range) {
  auto at = [&](const std::string& name) { return layout.slot(name).offset; };
  ModelOffsets offsets;
  offsets.embed_tokens = range.embedding ? at("model.embed_tokens.weight") : -1;
  offsets.final_norm   = range.head ? at("model.norm.weight") : -1;
  offsets.lm_head      = range.head ? at("lm_head.weight") : -1;
  offsets.layers.resize(range.first);  // layers before the range: not held
  for (int64_t i = range.first; i < range.end; ++i) {
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
  offsets.layers.resize(config.num_hidden_layers);  // layers after the range: not held
  return offsets;
}

}  // namespace openmoe
