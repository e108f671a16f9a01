// Reproducibility suite, forward pass: our float32 logits against the shared fixtures' float64
// reference (an independent implementation, cross-checked with an HF-style PyTorch port), on
// every enabled backend, in eval (capacity factor 2.0) and train (1.25) routing, loading both
// model.safetensors and pytorch_model.bin. Tolerance 1e-4 absolute and identical argmax: the
// fixtures' README measures 3.4e-5 for a correct float32 implementation and keeps every routing
// decision >= 2e-3 away from a tie, so a correct float32 port makes the same discrete choices.
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "openmoe/core/test_util.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/model.h"

namespace openmoe {
namespace {

constexpr double kLogitTolerance = 1e-4;

struct Fixture {
  std::vector<int64_t> ids, mask;
  int64_t batch = 0, seq = 0;
  std::vector<float> logits_eval, logits_train;
  nlohmann::json expected;
};

Fixture LoadFixture(const std::string& dir) {
  Fixture f;
  absl::StatusOr<io::SafetensorsFile> file = io::SafetensorsFile::Open(dir + "/expected.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  const io::TensorInfo* ids = file->Find("input_ids");
  f.batch = ids->shape[0], f.seq = ids->shape[1];
  f.ids.resize(f.batch * f.seq), f.mask.resize(f.batch * f.seq);
  EXPECT_TRUE(file->ReadAsInt64("input_ids", f.ids.data(), f.ids.size()).ok());
  EXPECT_TRUE(file->ReadAsInt64("attention_mask", f.mask.data(), f.mask.size()).ok());
  for (auto [name, out] : {std::make_pair("logits_eval", &f.logits_eval),
                           std::make_pair("logits_train", &f.logits_train)}) {
    out->resize(file->Find(name)->num_elements());
    EXPECT_TRUE(file->ReadAsFloat(name, out->data(), out->size()).ok());
  }
  std::ifstream json_in(dir + "/expected.json");
  std::stringstream text;
  text << json_in.rdbuf();
  f.expected = nlohmann::json::parse(text.str());
  return f;
}

void ExpectLogitsMatch(const std::vector<float>& actual, const std::vector<float>& expected,
                       int64_t vocab, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double max_error = 0;
  int64_t argmax_mismatches = 0;
  for (size_t row = 0; row < actual.size() / vocab; ++row) {
    int64_t a_best = 0, e_best = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const size_t i = row * vocab + v;
      max_error = std::max(max_error, std::fabs(double(actual[i]) - double(expected[i])));
      if (actual[i] > actual[row * vocab + a_best]) a_best = v;
      if (expected[i] > expected[row * vocab + e_best]) e_best = v;
    }
    argmax_mismatches += a_best != e_best;
  }
  std::printf("%s: max |logits - reference| = %.3g, argmax mismatches %lld\n", what.c_str(),
              max_error, static_cast<long long>(argmax_mismatches));
  EXPECT_LE(max_error, kLogitTolerance) << what;
  EXPECT_EQ(argmax_mismatches, 0) << what;
}

template <class Space>
class ParityTest : public ::testing::Test {
 protected:
  void Check(const std::string& case_name, const std::string& weights_file) {
    const std::string dir = "tests/data/openmoe/" + case_name;
    const Fixture f = LoadFixture(dir);
    absl::StatusOr<OpenMoeConfig> config = LoadConfig(dir + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(dir);
    ASSERT_TRUE(reader.ok()) << reader.status();
    ASSERT_NE(reader->description().find(weights_file), std::string::npos) << reader->description();
    absl::StatusOr<OpenMoeModel<Space>> model = OpenMoeModel<Space>::FromCheckpoint(*config, *reader);
    ASSERT_TRUE(model.ok()) << model.status();
    for (auto [mode, expected, key] :
         {std::make_tuple(RoutingMode::kEval, &f.logits_eval, "eval_routing"),
          std::make_tuple(RoutingMode::kTrain, &f.logits_train, "train_routing")}) {
      std::vector<MoeLayerStats> stats;
      absl::StatusOr<std::vector<float>> logits =
          model->Logits(f.ids, f.mask, f.batch, f.seq, mode, &stats);
      ASSERT_TRUE(logits.ok()) << logits.status();
      ExpectLogitsMatch(*logits, *expected, config->vocab_size,
                        absl::StrCat(case_name, "/", weights_file, "/", key, "/", Space::name()));
      // Routing statistics of the reference: capacity and kept assignments per MoE layer.
      const nlohmann::json& routing = f.expected[key];
      ASSERT_EQ(stats.size(), routing["capacity"].size());
      for (size_t l = 0; l < stats.size(); ++l) {
        EXPECT_EQ(stats[l].capacity, routing["capacity"][l].get<int64_t>()) << key << " layer " << l;
        EXPECT_EQ(stats[l].kept, routing["kept"][l].get<int64_t>()) << key << " layer " << l;
        EXPECT_EQ(stats[l].assigned, routing["assigned"][l].get<int64_t>()) << key << " layer " << l;
      }
    }
  }
};

TYPED_TEST_SUITE(ParityTest, testing::Backends);

TYPED_TEST(ParityTest, Tiny8bFromSafetensors) { this->Check("tiny8b", "model.safetensors"); }
TYPED_TEST(ParityTest, TinybaseFromSafetensors) { this->Check("tinybase", "model.safetensors"); }

TYPED_TEST(ParityTest, Tiny8bFromPytorchBin) {
  // Same weights through the torch.save reader: hide model.safetensors by copying the folder.
  const char* tmp = std::getenv("TEST_TMPDIR");  // set by bazel test; /tmp when run by hand
  const std::string dir = std::string(tmp ? tmp : "/tmp") + "/openmoe_tiny8b_bin";
  std::filesystem::create_directories(dir);
  for (const char* f : {"config.json", "pytorch_model.bin"}) {
    std::filesystem::copy_file(std::string("tests/data/openmoe/tiny8b/") + f, dir + "/" + f,
                               std::filesystem::copy_options::overwrite_existing);
  }
  const Fixture f = LoadFixture("tests/data/openmoe/tiny8b");
  absl::StatusOr<OpenMoeModel<TypeParam>> model = OpenMoeModel<TypeParam>::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::vector<float>> logits = model->Logits(f.ids, f.mask, f.batch, f.seq, RoutingMode::kEval);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ExpectLogitsMatch(*logits, f.logits_eval, model->config().vocab_size,
                    absl::StrCat("tiny8b/pytorch_model.bin/eval/", TypeParam::name()));
}

}  // namespace
}  // namespace openmoe
