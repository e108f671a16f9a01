// The flat layout: table order, aligned starts (up_proj right after gate_proj), no overlap, every element of every tensor inside
// the total, lookups by name with an error naming an unknown one.
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
    const bool up = s.name.size() > 15 && s.name.compare(s.name.size() - 15, 15, ".up_proj.weight") == 0;
    if (up) {  // the fused [gate_proj; up_proj] product: no gap
      EXPECT_EQ(s.offset, end) << s.name << " does not follow its gate_proj";
      EXPECT_EQ(layout.slots()[i - 1].name.substr(0, s.name.size() - 15), s.name.substr(0, s.name.size() - 15));
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

}  // namespace
}  // namespace openmoe
