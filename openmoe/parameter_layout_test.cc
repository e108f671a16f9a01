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

}  // namespace
}  // namespace openmoe
