// Config parsing and presets against independent numbers: the spec's parameter counts of the
// released checkpoints (section 1.1) and the fixture configs.
#include "openmoe/config.h"

#include <string>

#include "gtest/gtest.h"
#include "openmoe/checkpoint_table.h"

namespace openmoe {
namespace {

void ExpectError(const std::string& json, const std::string& key) {
  absl::StatusOr<OpenMoeConfig> c = ParseConfig(json, "cfg.json");
  ASSERT_FALSE(c.ok()) << json;
  EXPECT_NE(std::string(c.status().message()).find("'" + key + "'"), std::string::npos) << c.status();
  EXPECT_NE(std::string(c.status().message()).find("cfg.json"), std::string::npos) << c.status();
  std::printf("error shown to the user: %s\n", std::string(c.status().message()).c_str());
}

TEST(Config, PresetParameterCountsMatchTheReleasedCheckpoints) {
  // Spec section 1.1: base 799,663,104; 8B 11,855,046,656 (= the sum of its hub shards);
  // 34B 46,270,737,408.
  EXPECT_EQ(CountParameters(*PresetConfig("base")), 799663104);
  EXPECT_EQ(CountParameters(*PresetConfig("8b")), 11855046656);
  EXPECT_EQ(CountParameters(*PresetConfig("34b")), 46270737408);
  EXPECT_FALSE(PresetConfig("7b").ok());
}

TEST(Config, ActiveParametersLeaveOutTheEmbeddingAndUnusedExperts) {
  // 8B: 11,855,046,656 total - embedding 256384 x 2048 - 30/32 of 4 MoE layers x 32 experts x
  // (2048 x 16384 + 2048 x 8192 + 8192 x 2048) = 3,276,908,544 (6.55 GB in bf16).
  EXPECT_EQ(ActiveParameters(*PresetConfig("8b")), 11855046656 - 256384LL * 2048 - 4LL * 30 * 67108864);
  // base: 799,663,104 - 256384 x 768 - 14/16 of 3 layers x 16 experts x 6,291,456.
  EXPECT_EQ(ActiveParameters(*PresetConfig("base")), 799663104 - 256384LL * 768 - 3LL * 14 * 6291456);
}

TEST(Config, MoeLayersFollowTheInterval) {
  OpenMoeConfig eight_b = *PresetConfig("8b");
  std::vector<int64_t> moe;
  for (int64_t i = 0; i < eight_b.num_hidden_layers; ++i)
    if (eight_b.IsMoeLayer(i)) moe.push_back(i);
  EXPECT_EQ(moe, (std::vector<int64_t>{5, 11, 17, 23}));
}

TEST(Config, ParsesTheFixtureConfig) {
  absl::StatusOr<OpenMoeConfig> c = LoadConfig("tests/data/openmoe/tiny8b/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 320);
  EXPECT_EQ(c->head_dim, 24);
  EXPECT_EQ(c->num_attention_heads * c->head_dim, 96);  // != hidden_size 64, like 8B
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->moe_layer_interval, 2);
  EXPECT_FLOAT_EQ(c->router_capacity_factor_train, 1.25f);
}

TEST(Config, AcceptsOldKeyNamesAndDefaults) {
  absl::StatusOr<OpenMoeConfig> c = ParseConfig(
      R"({"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_experts": 4, "moe_layer_interval": 2, "topk": 2,
          "capacity_factor_train": 1.5, "capacity_factor_eval": 3.0, "min_capacity": 8,
          "gated": true, "drop_tks": true, "noisy_policy": null})",
      "old.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FLOAT_EQ(c->router_capacity_factor_train, 1.5f);
  EXPECT_FLOAT_EQ(c->router_capacity_factor_eval, 3.0f);
  EXPECT_EQ(c->router_min_capacity, 8);
  EXPECT_EQ(c->head_dim, 8);              // hidden / heads when head_dim is absent
  EXPECT_EQ(c->num_key_value_heads, 4);   // = heads when absent
  EXPECT_EQ(c->max_position_embeddings, 2048);
}

TEST(Config, RejectsUnsupportedOrInconsistentConfigsNamingTheKey) {
  const std::string base = R"("vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_experts": 4, "moe_layer_interval": 2)";
  ExpectError("{" + base + R"(, "router_topk": 1})", "router_topk");
  ExpectError("{" + base + R"(, "hidden_act": "gelu"})", "hidden_act");
  ExpectError("{" + base + R"(, "num_key_value_heads": 3})", "num_key_value_heads");
  ExpectError("{" + base + R"(, "tie_word_embeddings": true})", "tie_word_embeddings");
  ExpectError("{" + base + R"(, "router_noisy_policy": "Jitter"})", "router_noisy_policy");
  ExpectError("{" + base + R"(, "head_dim": 7})", "head_dim");
  ExpectError(R"({"vocab_size": 100, "hidden_size": -1})", "hidden_size");
  ExpectError(R"({"vocab_size": "big"})", "vocab_size");
  ExpectError(R"({"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_experts": 4, "moe_layer_interval": 3})",
              "moe_layer_interval");
  EXPECT_FALSE(ParseConfig("{not json", "cfg.json").ok());
  EXPECT_EQ(LoadConfig("/nonexistent/config.json").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace openmoe

namespace openmoe {
namespace {
TEST(Config, ConfigToJsonRoundTrips) {
  auto preset = PresetConfig("8b");
  ASSERT_TRUE(preset.ok());
  preset->label_smoothing = 0.0f, preset->z_loss_factor = 0.0001f;
  auto parsed = ParseConfig(ConfigToJson(*preset), "roundtrip");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->hidden_size, 2048);
  EXPECT_EQ(parsed->num_attention_heads * parsed->head_dim, preset->num_attention_heads * preset->head_dim);
  EXPECT_EQ(parsed->moe_layer_interval, preset->moe_layer_interval);
  EXPECT_EQ(parsed->label_smoothing, 0.0f);
  EXPECT_FLOAT_EQ(parsed->z_loss_factor, 0.0001f);
  EXPECT_EQ(CountParameters(*parsed), CountParameters(*preset));
}
}  // namespace
}  // namespace openmoe
