// Tokenizer over a SentencePiece model trained at build time (tests/data/tokenizer): round trips,
// OpenMoE's BOS convention, left padding, the chat template, and bad input.
#include "openmoe/text/tokenizer.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace openmoe {
namespace {

constexpr char kModel[] = "tests/data/tokenizer/test_spm.model";

TEST(Tokenizer, RoundTripsTextIncludingUnseenCharactersViaByteFallback) {
  absl::StatusOr<Tokenizer> t = Tokenizer::LoadFile(kModel);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 600);
  for (const std::string text : {"Hello world!", "The MoE layer routes tokens to experts.",
                                 "Grüße, naïve café", "日本語", "emoji 🙂 and ∑ never seen in training",
                                 "  leading and trailing spaces  "}) {
    absl::StatusOr<std::vector<int64_t>> ids = t->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ASSERT_FALSE(ids->empty());
    EXPECT_EQ(ids->front(), 0) << "<pad> is OpenMoE's BOS and is prepended";
    EXPECT_NE(ids->back(), 1) << "</s> is not appended";
    for (int64_t id : *ids) EXPECT_LT(id, t->vocab_size());
    // SentencePiece normalises runs of whitespace (NFKC + whitespace collapsing).
    std::string expected = text;
    if (text.front() == ' ') expected = "leading and trailing spaces";
    EXPECT_EQ(t->Decode(*ids), expected);
  }
}

TEST(Tokenizer, SpecialAndOutOfRangeIdsDecodeToNothing) {
  absl::StatusOr<Tokenizer> t = Tokenizer::LoadFile(kModel);
  ASSERT_TRUE(t.ok());
  std::vector<int64_t> ids = *t->Encode("Hello", /*add_bos=*/false);
  std::vector<int64_t> noisy = {0};
  noisy.insert(noisy.end(), ids.begin(), ids.end());
  noisy.push_back(1);        // </s>
  noisy.push_back(256383);  // a model-vocabulary id beyond the tokenizer
  EXPECT_EQ(t->Decode(noisy), "Hello");
}

TEST(Tokenizer, RejectsInvalidUtf8AndMissingFiles) {
  absl::StatusOr<Tokenizer> t = Tokenizer::LoadFile(kModel);
  ASSERT_TRUE(t.ok());
  for (const std::string bad : {std::string("abc\xff"), std::string("\xc3"), std::string("\xe6\x97"),
                                std::string("\xc0\xaf"), std::string("\x80")}) {
    absl::StatusOr<std::vector<int64_t>> ids = t->Encode(bad);
    ASSERT_FALSE(ids.ok());
    EXPECT_NE(std::string(ids.status().message()).find("UTF-8"), std::string::npos);
  }
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xf0\x9f\x99\x82"));  // U+1F642
  absl::StatusOr<Tokenizer> missing = Tokenizer::Load("/nonexistent");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("spiece.model"), std::string::npos);
}

TEST(Tokenizer, LeftPadsBatchesAndFormatsTheChatPrompt) {
  std::vector<int64_t> ids, mask;
  int64_t length = 0;
  LeftPad({{0, 5, 6}, {0, 7}}, 0, ids, mask, length);
  EXPECT_EQ(length, 3);
  EXPECT_EQ(ids, (std::vector<int64_t>{0, 5, 6, 0, 0, 7}));
  EXPECT_EQ(mask, (std::vector<int64_t>{1, 1, 1, 0, 1, 1}));
  EXPECT_EQ(FormatChatPrompt("Be brief.", "How do I kill a process?"),
            "<<SYS>>\nBe brief.\n<</SYS>>\n\n<s>[INST] How do I kill a process? [/INST]");
}

}  // namespace
}  // namespace openmoe
