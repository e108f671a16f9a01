// The flat layout: table order, aligned starts (up_proj right after gate_proj, k_proj and v_proj
// right after q_proj), no overlap, every element of every tensor inside the total, lookups by
// name with an error naming an unknown one, and the per-layer offsets both models compute with.
#include "openmoe/parameter_layout.h"

#include "gtest/gtest.h"
#include "openmoe/config.h"

namespace openmoe {
namespace {

TEST(ParameterLayout, TensorsInTableOrderAlignedAndDisjoint) {
  absl::StatusOr<OpenMoeConfig> config = LoadConfig("tests/data/openmoe/tiny8b/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  const std::vector<TensorSpec> table = CheckpointTable(*config);
  const ParameterLayout layout(table);
  ASSERT_EQ(layout.slots().size(), table.size());
  int64_t end = 0, sum = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    const ParameterSlot& s = layout.slots()[i];
    EXPECT_EQ(s.name, table[i].name);
    EXPECT_EQ(s.numel, table[i].numel());
    auto ends_with = [&](const std::string& suffix) {
      return s.name.size() > suffix.size() && s.name.compare(s.name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    const bool up = ends_with(".up_proj.weight");
    const bool kv = ends_with(".self_attn.k_proj.weight") || ends_with(".self_attn.v_proj.weight");
    if (up) {  // the fused [gate_proj; up_proj] product: no gap
      EXPECT_EQ(s.offset, end) << s.name << " does not follow its gate_proj";
      EXPECT_EQ(layout.slots()[i - 1].name.substr(0, s.name.size() - 15), s.name.substr(0, s.name.size() - 15));
    } else if (kv) {  // the fused [q_proj; k_proj; v_proj] product: no gap
      EXPECT_EQ(s.offset, end) << s.name << " does not follow the projection before it";
    } else {
      EXPECT_EQ(s.offset % ParameterLayout::kAlignment, 0) << s.name;
    }
    EXPECT_GE(s.offset, end) << s.name << " overlaps the tensor before it";
    EXPECT_LT(s.offset - end, ParameterLayout::kAlignment) << s.name << ": gap larger than the alignment";
    end = s.offset + s.numel, sum += s.numel;
    EXPECT_EQ(layout.slot(s.name).offset, s.offset);
  }
  EXPECT_GE(layout.total(), end);
  EXPECT_LT(layout.total() - sum, ParameterLayout::kAlignment * int64_t(table.size()));
  absl::StatusOr<ParameterSlot> missing = layout.Find("model.layers.99.mlp.gate_weight");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("model.layers.99.mlp.gate_weight"), std::string::npos);
}

// Sizes that are no multiples of the alignment (the fixtures' are): gate_proj [6, 5] is 30
// elements, so only the fused-product rule puts up_proj [3, 5] at 30 rather than at 64; the
// tensor after it is aligned again.
TEST(ParameterLayout, UpProjFollowsGateProjEvenWhenUnaligned) {
  const std::vector<TensorSpec> table = {{"model.layers.0.mlp.gate_proj.weight", {6, 5}, Orientation::kLinear},
                                         {"model.layers.0.mlp.up_proj.weight", {3, 5}, Orientation::kLinear},
                                         {"model.layers.0.mlp.down_proj.weight", {5, 3}, Orientation::kLinear}};
  const ParameterLayout layout(table);
  EXPECT_EQ(layout.slot("model.layers.0.mlp.gate_proj.weight").offset, 0);
  EXPECT_EQ(layout.slot("model.layers.0.mlp.up_proj.weight").offset, 30);
  EXPECT_EQ(layout.slot("model.layers.0.mlp.down_proj.weight").offset, ParameterLayout::kAlignment);
  EXPECT_EQ(layout.total(), 2 * ParameterLayout::kAlignment);
}

// q_proj [6, 5] is 30 elements: only the fused-product rule puts k_proj [2, 5] at 30 and v_proj at
// 40 rather than at multiples of 64; o_proj is aligned again.
TEST(ParameterLayout, KAndVFollowQEvenWhenUnaligned) {
  const std::vector<TensorSpec> table = {{"model.layers.0.self_attn.q_proj.weight", {6, 5}, Orientation::kLinear},
                                         {"model.layers.0.self_attn.k_proj.weight", {2, 5}, Orientation::kLinear},
                                         {"model.layers.0.self_attn.v_proj.weight", {2, 5}, Orientation::kLinear},
                                         {"model.layers.0.self_attn.o_proj.weight", {5, 6}, Orientation::kLinear}};
  const ParameterLayout layout(table);
  EXPECT_EQ(layout.slot("model.layers.0.self_attn.k_proj.weight").offset, 30);
  EXPECT_EQ(layout.slot("model.layers.0.self_attn.v_proj.weight").offset, 40);
  EXPECT_EQ(layout.slot("model.layers.0.self_attn.o_proj.weight").offset, ParameterLayout::kAlignment);
}

// Every offset ResolveModelOffsets gives is the slot of the tensor it names (checked against the
// table by name, for a dense and an MoE layer), and dense layers have no MoE offsets.
TEST(ModelOffsets, NameTheTensorsOfEachLayer) {
  absl::StatusOr<OpenMoeConfig> config = LoadConfig("tests/data/openmoe/tiny8b/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  const ParameterLayout layout(CheckpointTable(*config));
  const ModelOffsets offsets = ResolveModelOffsets(layout, *config);
  auto at = [&](const std::string& name) { return layout.slot(name).offset; };
  EXPECT_EQ(offsets.embed_tokens, at("model.embed_tokens.weight"));
  EXPECT_EQ(offsets.final_norm, at("model.norm.weight"));
  EXPECT_EQ(offsets.lm_head, at("lm_head.weight"));
  ASSERT_EQ(int64_t(offsets.layers.size()), config->num_hidden_layers);
  bool saw_dense = false, saw_moe = false;
  for (int64_t i = 0; i < config->num_hidden_layers; ++i) {
    const LayerOffsets& lo = offsets.layers[i];
    const std::string pre = "model.layers." + std::to_string(i);
    EXPECT_EQ(lo.input_norm, at(pre + ".input_layernorm.weight"));
    EXPECT_EQ(lo.qkv, at(pre + ".self_attn.q_proj.weight"));
    EXPECT_EQ(lo.k, at(pre + ".self_attn.k_proj.weight"));
    EXPECT_EQ(lo.v, at(pre + ".self_attn.v_proj.weight"));
    EXPECT_EQ(lo.o, at(pre + ".self_attn.o_proj.weight"));
    EXPECT_EQ(lo.post_attention_norm, at(pre + ".post_attention_layernorm.weight"));
    const std::string mlp = pre + (config->IsMoeLayer(i) ? ".extra_mlp" : ".mlp");
    EXPECT_EQ(lo.mlp.gate_up, at(mlp + ".gate_proj.weight"));
    EXPECT_EQ(lo.mlp.down, at(mlp + ".down_proj.weight"));
    if (config->IsMoeLayer(i)) {
      saw_moe = true;
      EXPECT_EQ(lo.pre_extra_mlp_norm, at(pre + ".pre_extra_mlp_layernorm.weight"));
      EXPECT_EQ(lo.router, at(pre + ".mlp.gate_weight"));
      EXPECT_EQ(lo.wi_gate, at(pre + ".mlp.experts.wi_gate"));
      EXPECT_EQ(lo.wi_up, at(pre + ".mlp.experts.wi_up"));
      EXPECT_EQ(lo.wo, at(pre + ".mlp.experts.wo"));
    } else {
      saw_dense = true;
      EXPECT_EQ(lo.router, -1);
      EXPECT_EQ(lo.wi_gate, -1);
    }
  }
  EXPECT_TRUE(saw_dense && saw_moe) << "the fixture should have both layer kinds";
}

}  // namespace
}  // namespace openmoe
