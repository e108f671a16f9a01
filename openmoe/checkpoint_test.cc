// CheckpointReader: single and sharded layouts (safetensors index, torch .bin index) give the
// same tensors; broken layouts are reported by file and tensor name.
#include "openmoe/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/io/safetensors.h"

namespace openmoe {
namespace {

namespace fs = std::filesystem;
const std::string kFixture = "tests/data/openmoe/tiny8b";

std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(tmp ? tmp : "/tmp") + "/openmoe_ckpt_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Splits the fixture's tensors alternately into two safetensors shards with an HF index.
// `mutate` may change the tensor list of shard 1 before writing.
void WriteShards(const std::string& dir, const std::string& extra_in_shard2 = "") {
  absl::StatusOr<io::SafetensorsFile> src = io::SafetensorsFile::Open(kFixture + "/model.safetensors");
  ASSERT_TRUE(src.ok());
  std::vector<std::vector<float>> storage;
  std::vector<io::TensorToWrite> shards[2];
  std::string weight_map;
  int i = 0;
  for (const auto& [name, info] : src->tensors()) {
    storage.emplace_back(info.num_elements());
    ASSERT_TRUE(src->ReadAsFloat(name, storage.back().data(), info.num_elements()).ok());
    const int shard = i++ % 2;
    shards[shard].push_back({name, io::DType::kF32, info.shape, storage.back().data()});
    weight_map += (weight_map.empty() ? "" : ",") + ("\"" + name + "\": \"model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors\"");
  }
  if (!extra_in_shard2.empty()) {
    const io::TensorToWrite* copy = &shards[0][0];
    shards[1].push_back({extra_in_shard2, copy->dtype, copy->shape, copy->data});
  }
  for (int s = 0; s < 2; ++s)
    ASSERT_TRUE(io::WriteSafetensors(dir + "/model-0000" + std::to_string(s + 1) + "-of-00002.safetensors", shards[s]).ok());
  std::ofstream(dir + "/model.safetensors.index.json") << "{\"metadata\": {}, \"weight_map\": {" << weight_map << "}}";
}

std::vector<float> Read(const CheckpointReader& reader, const std::string& name, int64_t n) {
  std::vector<float> v(n);
  EXPECT_TRUE(reader.ReadAsFloat(name, v.data(), n).ok());
  return v;
}

TEST(Checkpoint, ShardedSafetensorsEqualsTheSingleFile) {
  const std::string dir = TempDir("sharded");
  WriteShards(dir);
  absl::StatusOr<CheckpointReader> sharded = CheckpointReader::Open(dir);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_EQ(sharded->description(), "model.safetensors.index.json (2 shards)");
  absl::StatusOr<CheckpointReader> single = CheckpointReader::Open(kFixture);
  ASSERT_TRUE(single.ok());
  absl::StatusOr<OpenMoeConfig> config = LoadConfig(kFixture + "/config.json");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(sharded->Validate(CheckpointTable(*config)).ok());
  for (const TensorSpec& spec : CheckpointTable(*config)) {
    EXPECT_EQ(Read(*sharded, spec.name, spec.numel()), Read(*single, spec.name, spec.numel())) << spec.name;
  }
}

TEST(Checkpoint, TorchBinIndexIsRead) {
  const std::string dir = TempDir("bin_index");
  fs::copy_file(kFixture + "/pytorch_model.bin", dir + "/pytorch_model-00001.bin");
  std::ofstream(dir + "/pytorch_model.bin.index.json")
      << R"({"weight_map": {"lm_head.weight": "pytorch_model-00001.bin"}})";
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(dir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->description(), "pytorch_model.bin.index.json (1 shards)");
  EXPECT_EQ(Read(*reader, "lm_head.weight", 320 * 64), Read(*CheckpointReader::Open(kFixture), "lm_head.weight", 320 * 64));
}

void ExpectError(const absl::Status& status, const std::vector<std::string>& parts) {
  ASSERT_FALSE(status.ok());
  for (const std::string& part : parts)
    EXPECT_NE(std::string(status.message()).find(part), std::string::npos) << status;
  std::printf("error shown to the user: %s\n", std::string(status.message()).c_str());
}

TEST(Checkpoint, ReportsBrokenLayoutsByName) {
  {  // A tensor in two shards.
    const std::string dir = TempDir("duplicate");
    WriteShards(dir, "model.norm.weight");
    ExpectError(CheckpointReader::Open(dir).status(), {"'model.norm.weight' appears in both"});
  }
  {  // An extra tensor nobody expects.
    const std::string dir = TempDir("unexpected");
    WriteShards(dir, "model.layers.9.mystery");
    absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(dir);
    ASSERT_TRUE(reader.ok());
    ExpectError(reader->Validate(CheckpointTable(*LoadConfig(kFixture + "/config.json"))),
                {"unexpected tensor 'model.layers.9.mystery'", "model-00002-of-00002.safetensors"});
  }
  {  // An index naming a shard that is not there.
    const std::string dir = TempDir("missing_shard");
    std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map": {"a": "gone.safetensors"}})";
    ExpectError(CheckpointReader::Open(dir).status(), {"gone.safetensors"});
  }
  {  // An index escaping the folder, and a malformed index.
    const std::string dir = TempDir("escape");
    std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map": {"a": "../x.safetensors"}})";
    ExpectError(CheckpointReader::Open(dir).status(), {"not a plain file name"});
    std::ofstream(dir + "/model.safetensors.index.json", std::ios::trunc) << "{oops";
    ExpectError(CheckpointReader::Open(dir).status(), {"no 'weight_map'", "model.safetensors.index.json"});
  }
}

}  // namespace
}  // namespace openmoe
