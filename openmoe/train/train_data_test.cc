// Training data: JSONL / JSON self_instruct records, their errors (with line numbers), the
// "<pad>" + prompt + completion rows with right padding and truncation, and epoch orders.
#include "openmoe/train/train_data.h"

#include <cstdio>
#include <fstream>
#include <set>

#include "gtest/gtest.h"

namespace openmoe {
namespace {

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(TrainData, ReadsJsonlAndJsonRecords) {
  auto jsonl = ReadInstructionRecords(WriteTemp("a.jsonl", "{\"prompt\": \"Hi \", \"completion\": \"there\"}\n\n"
                                                           "{\"prompt\": \"x\", \"completion\": \"y\", \"extra\": 1}\n"));
  ASSERT_TRUE(jsonl.ok()) << jsonl.status();
  ASSERT_EQ(jsonl->size(), 2u);
  EXPECT_EQ((*jsonl)[0].prompt, "Hi ");
  EXPECT_EQ((*jsonl)[1].completion, "y");
  auto json = ReadInstructionRecords(WriteTemp("b.json", "[{\"prompt\": \"p\", \"completion\": \"c\"}]"));
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ((*json)[0].prompt, "p");
}

TEST(TrainData, ErrorsNameTheLineAndTheField) {
  auto bad = ReadInstructionRecords(WriteTemp("bad.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{oops\n"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("bad.jsonl:2: malformed JSON"), std::string::npos) << bad.status();
  auto missing = ReadInstructionRecords(WriteTemp("missing.jsonl", "{\"prompt\": \"a\"}\n"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("missing.jsonl:1: missing field \"completion\""),
            std::string::npos) << missing.status();
  auto number = ReadInstructionRecords(WriteTemp("number.json", "[{\"prompt\": 3, \"completion\": \"b\"}]"));
  ASSERT_FALSE(number.ok());
  EXPECT_NE(std::string(number.status().message()).find("record 0: field \"prompt\" must be a string"),
            std::string::npos) << number.status();
  auto empty = ReadInstructionRecords(WriteTemp("empty.jsonl", "\n"));
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(std::string(empty.status().message()).find("holds no records"), std::string::npos);
  EXPECT_FALSE(ReadInstructionRecords("/nonexistent/file.jsonl").ok());
}

TEST(TrainData, RowsArePadPromptCompletionRightPaddedOrTruncated) {
  auto tokenizer = Tokenizer::LoadFile("tests/data/tokenizer/test_spm.model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::vector<InstructionRecord> records = {{"The capital of France is", " Paris."},
                                                  {std::string(200, 'a'), "b"}};
  auto batch = TokenizeRecords(records, *tokenizer, 32);
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_EQ(batch->batch, 2);
  auto want = tokenizer->Encode("The capital of France is Paris.", /*add_bos=*/true);
  ASSERT_TRUE(want.ok());
  ASSERT_LT(want->size(), 32u);
  EXPECT_EQ((*want)[0], 0);  // <pad> first
  for (size_t s = 0; s < 32; ++s) {
    EXPECT_EQ(batch->ids[s], s < want->size() ? (*want)[s] : 0) << s;
    EXPECT_EQ(batch->mask[s], s < want->size() ? 1 : 0) << s;
  }
  for (size_t s = 0; s < 32; ++s) EXPECT_EQ(batch->mask[32 + s], 1);  // truncated, no padding
}

TEST(TrainData, EpochOrdersArePermutationsThatDependOnSeedAndEpoch) {
  const auto a = EpochOrder(100, 7, 0, true), b = EpochOrder(100, 7, 1, true), c = EpochOrder(100, 8, 0, true);
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), 100u);
  EXPECT_NE(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a, EpochOrder(100, 7, 0, true));
  const auto plain = EpochOrder(5, 7, 3, false);
  EXPECT_EQ(plain, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

}  // namespace
}  // namespace openmoe
