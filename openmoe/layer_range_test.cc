// Pipeline stages of the inference model: the layer split (contiguous, covering every layer once,
// sizes differing by at most one), the tensors each stage holds (the whole table split without
// overlap), the offsets resolved for a stage's own layout, and the refusal of more stages than
// layers.
#include "openmoe/layer_range.h"

#include <set>

#include "gtest/gtest.h"
#include "openmoe/config.h"
#include "openmoe/parameter_layout.h"

namespace openmoe {
namespace {

OpenMoeConfig Tiny8b() {
  absl::StatusOr<OpenMoeConfig> config = LoadConfig("tests/data/openmoe/tiny8b/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

TEST(LayerRange, StagesSplitTheLayersContiguouslyAndEvenly) {
  OpenMoeConfig config = Tiny8b();
  for (int64_t layers : {4, 5, 7, 32}) {
    config.num_hidden_layers = layers;
    for (int64_t stages = 1; stages <= layers; ++stages) {
      int64_t next = 0;
      for (int64_t s = 0; s < stages; ++s) {
        absl::StatusOr<LayerRange> r = PipelineStageLayers(config, s, stages);
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(r->first, next) << layers << " layers, stage " << s << " of " << stages;
        EXPECT_GE(r->layers(), layers / stages);
        EXPECT_LE(r->layers(), layers / stages + 1);
        EXPECT_EQ(r->embedding, s == 0);
        EXPECT_EQ(r->head, s == stages - 1);
        next = r->end;
      }
      EXPECT_EQ(next, layers);
    }
  }
  config.num_hidden_layers = 4;  // 3 stages: [0, 1), [1, 2), [2, 4)
  EXPECT_EQ(PipelineStageLayers(config, 2, 3)->first, 2);
  EXPECT_EQ(PipelineStageLayers(config, 2, 3)->end, 4);
}

TEST(LayerRange, MoreStagesThanLayersIsRefused) {
  const OpenMoeConfig config = Tiny8b();  // 4 layers
  absl::StatusOr<LayerRange> r = PipelineStageLayers(config, 0, 5);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("num_hidden_layers"), std::string::npos) << r.status();
  EXPECT_FALSE(PipelineStageLayers(config, 3, 3).ok());
}

TEST(LayerRange, StageTablesPartitionTheCheckpointTable) {
  const OpenMoeConfig config = Tiny8b();
  const std::vector<TensorSpec> whole = CheckpointTable(config);
  std::multiset<std::string> held;
  for (int64_t s = 0; s < 3; ++s) {
    const LayerRange range = *PipelineStageLayers(config, s, 3);
    const std::vector<TensorSpec> part = StageCheckpointTable(config, range);
    for (const TensorSpec& spec : part) held.insert(spec.name);
    const bool has_embed = held.count("model.embed_tokens.weight") > 0;
    EXPECT_EQ(has_embed, true) << "stage 0 holds the embedding";
    // Offsets of the stage's own layout point at the stage's tensors.
    const ParameterLayout layout(part);
    const ModelOffsets offsets = ResolveModelOffsets(layout, config, range);
    ASSERT_EQ(int64_t(offsets.layers.size()), config.num_hidden_layers);
    EXPECT_EQ(offsets.embed_tokens, range.embedding ? layout.slot("model.embed_tokens.weight").offset : -1);
    EXPECT_EQ(offsets.lm_head, range.head ? layout.slot("lm_head.weight").offset : -1);
    for (int64_t i = range.first; i < range.end; ++i) {
      EXPECT_EQ(offsets.layers[i].o, layout.slot("model.layers." + std::to_string(i) + ".self_attn.o_proj.weight").offset);
    }
  }
  std::multiset<std::string> all;
  for (const TensorSpec& spec : whole) all.insert(spec.name);
  EXPECT_EQ(held, all) << "every tensor on exactly one stage";
  EXPECT_EQ(StageCheckpointTable(config, WholeModel(config)).size(), whole.size());
}

}  // namespace
}  // namespace openmoe
