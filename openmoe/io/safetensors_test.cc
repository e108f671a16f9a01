// Safetensors reader/writer: round trip, dtype conversion, the shared fixture, and every kind of
// corrupt file with the error message it must give.
#include "openmoe/io/safetensors.h"

#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace openmoe::io {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

void WriteRaw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
  out << header << data;
}

void ExpectErrorContains(const absl::Status& status, const std::vector<std::string>& parts) {
  ASSERT_FALSE(status.ok());
  for (const std::string& part : parts) {
    EXPECT_NE(std::string(status.message()).find(part), std::string::npos)
        << "message '" << status.message() << "' lacks '" << part << "'";
  }
  std::printf("error shown to the user: %s\n", std::string(status.message()).c_str());
}

TEST(Safetensors, RoundTripsAndConverts) {
  const std::string path = TempPath("round_trip.safetensors");
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
  const std::vector<uint16_t> bf16 = {FloatToBf16Bits(1.0f), FloatToBf16Bits(-0.5f),
                                      FloatToBf16Bits(3.0f)};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x0001};  // 1, -2, smallest subnormal
  const std::vector<int64_t> ids  = {0, 1, 256383};
  ASSERT_TRUE(WriteSafetensors(path, {{"a.f32", DType::kF32, {2, 3}, f32.data()},
                                      {"b.bf16", DType::kBF16, {3}, bf16.data()},
                                      {"c.f16", DType::kF16, {3}, f16.data()},
                                      {"ids", DType::kI64, {1, 3}, ids.data()}},
                               {{"format", "pt"}})
                  .ok());
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->Find("a.f32")->ShapeString(), "[2, 3]");
  std::vector<float> out(6);
  ASSERT_TRUE(file->ReadAsFloat("a.f32", out.data(), 6).ok());
  EXPECT_EQ(out, f32);
  ASSERT_TRUE(file->ReadAsFloat("b.bf16", out.data(), 3).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -0.5f);
  EXPECT_EQ(out[2], 3.0f);
  ASSERT_TRUE(file->ReadAsFloat("c.f16", out.data(), 3).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 5.9604644775390625e-08f);  // 2^-24
  std::vector<int64_t> ids_out(3);
  ASSERT_TRUE(file->ReadAsInt64("ids", ids_out.data(), 3).ok());
  EXPECT_EQ(ids_out, ids);
  ExpectErrorContains(file->ReadAsFloat("ids", out.data(), 3), {"ids", "I64"});
  ExpectErrorContains(file->ReadAsFloat("a.f32", out.data(), 5), {"a.f32", "[2, 3]"});
  ExpectErrorContains(file->ReadAsFloat("missing", out.data(), 1), {"missing"});
}

TEST(Safetensors, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16Bits(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16Bits(1.00390625f), 0x3f80);  // halfway 1 + 2^-8: ties to even (down)
  EXPECT_EQ(FloatToBf16Bits(1.01171875f), 0x3f82);  // halfway 1 + 3*2^-8: ties to even (up)
  EXPECT_EQ(FloatToBf16Bits(std::nextafter(1.00390625f, 2.0f)), 0x3f81);  // above halfway: up
}

TEST(Safetensors, ReadsTheSharedFixtureCheckpoint) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open("tests/data/openmoe/tiny8b/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  // 2 dense layers x 9 + 2 MoE layers x 14 + embed, final norm, lm_head (spec section 4.2).
  EXPECT_EQ(file->tensors().size(), 2u * 9 + 2 * 14 + 3);
  const TensorInfo* wi_gate = file->Find("model.layers.1.mlp.experts.wi_gate");
  ASSERT_NE(wi_gate, nullptr);
  EXPECT_EQ(wi_gate->ShapeString(), "[8, 64, 192]");  // [E, H, 2I]
}

struct CorruptCase {
  const char* name;
  std::string header;
  std::string data;
  std::vector<std::string> expected_parts;
};

TEST(Safetensors, RejectsCorruptFilesNamingFileAndTensor) {
  const std::string eight(8, '\0');
  const std::vector<CorruptCase> cases = {
      {"not_json", "{\"a\": {\"dtype\": \"F32\",", eight, {"not a valid JSON"}},
      {"offsets_outside", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight,
       {"'w'", "outside the data section"}},
      {"size_mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight,
       {"'w'", "[3]", "needs 12"}},
      {"bad_dtype", R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", eight,
       {"'w'", "unsupported dtype 'Q4'"}},
      {"negative_shape", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight,
       {"'w'", "non-negative"}},
      {"duplicate", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       eight, {"duplicate tensor name 'w'"}},
      {"missing_offsets", R"({"w":{"dtype":"F32","shape":[2]}})", eight, {"'w'", "data_offsets"}},
  };
  for (const CorruptCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = TempPath(std::string(c.name) + ".safetensors");
    WriteRaw(path, c.header, c.data);
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    std::vector<std::string> parts = c.expected_parts;
    parts.push_back(path);
    ExpectErrorContains(file.status(), parts);
  }
}

TEST(Safetensors, RejectsTruncatedFiles) {
  const std::string path = TempPath("truncated.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  ExpectErrorContains(SafetensorsFile::Open(path).status(), {path, "truncated"});
  // A header size larger than the file: a file cut inside its header.
  WriteRaw(path, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "");
  {
    std::string bytes;
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
    std::ofstream(path, std::ios::binary) << bytes.substr(0, 20);
  }
  ExpectErrorContains(SafetensorsFile::Open(path).status(), {path, "exceeds the file"});
  ExpectErrorContains(SafetensorsFile::Open(TempPath("does_not_exist")).status(),
                      {"cannot open", "does_not_exist"});
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> ListFolder(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Safetensors, WriteIsAtomicAndReportsUnwritablePaths) {
  const float x = 1.0f;
  ExpectErrorContains(WriteSafetensors("/nonexistent_dir/out.safetensors",
                                       {{"x", DType::kF32, {1}, &x}}),
                      {"/nonexistent_dir/out.safetensors"});

  // A write that fails part-way through the data (the process may not grow any file past 4 KiB,
  // which binds root too; the header fits, the 64 KiB tensor does not): the file already at the
  // destination stays byte-for-byte, and no temporary file is left in the folder.
  const std::string dir = TempPath("atomic_write");
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/weights.safetensors";
  const std::vector<float> old_values = {1.0f, 2.0f, 3.0f};
  ASSERT_TRUE(WriteSafetensors(path, {{"w", DType::kF32, {3}, old_values.data()}}).ok());
  const std::string before = ReadBytes(path);
  ASSERT_GT(before.size(), 8u);
  const std::vector<float> big(16384, 0.5f);  // 64 KiB of data
  {
    struct rlimit saved;
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
    struct rlimit small = saved;
    small.rlim_cur = 4096;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    const absl::Status status = WriteSafetensors(path, {{"w", DType::kF32, {16384}, big.data()}});
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, old_handler);
    ExpectErrorContains(status, {path});
  }
  EXPECT_EQ(ReadBytes(path), before) << "a failed write changed the existing file";
  EXPECT_EQ(ListFolder(dir), std::vector<std::string>{"weights.safetensors"}) << "a temporary file was left behind";
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> read(3);
  ASSERT_TRUE(file->ReadAsFloat("w", read.data(), 3).ok());
  EXPECT_EQ(read, old_values);

  // The same write without the limit replaces the file completely.
  ASSERT_TRUE(WriteSafetensors(path, {{"w", DType::kF32, {16384}, big.data()}}).ok());
  EXPECT_EQ(ListFolder(dir), std::vector<std::string>{"weights.safetensors"});
  file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> read_big(16384);
  ASSERT_TRUE(file->ReadAsFloat("w", read_big.data(), 16384).ok());
  EXPECT_EQ(read_big, big);
}

}  // namespace
}  // namespace openmoe::io
