// PyTorch .bin reader: the fixture's pytorch_model.bin holds the same tensors as its
// model.safetensors (written independently by torch.save and safetensors); hostile pickles are
// rejected by name.
#include "openmoe/io/torch_pickle.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/io/safetensors.h"

namespace openmoe::io {
namespace {

constexpr char kDir[] = "tests/data/openmoe/tiny8b/";

TEST(TorchPickle, MatchesTheSafetensorsCopyTensorForTensor) {
  absl::StatusOr<TorchCheckpoint> bin = TorchCheckpoint::Open(std::string(kDir) + "pytorch_model.bin");
  ASSERT_TRUE(bin.ok()) << bin.status();
  absl::StatusOr<SafetensorsFile> st = SafetensorsFile::Open(std::string(kDir) + "model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(bin->tensors().size(), st->tensors().size());
  for (const auto& [name, info] : st->tensors()) {
    auto it = bin->tensors().find(name);
    ASSERT_NE(it, bin->tensors().end()) << name;
    EXPECT_EQ(it->second.shape, info.shape) << name;
    std::vector<float> a(info.num_elements()), b(info.num_elements());
    ASSERT_TRUE(st->ReadAsFloat(name, a.data(), a.size()).ok());
    ASSERT_TRUE(bin->ReadAsFloat(name, b.data(), b.size()).ok());
    EXPECT_EQ(a, b) << name;
  }
}

void ExpectRejected(const std::string& pickle, const std::string& part) {
  absl::StatusOr<std::map<std::string, TorchTensorInfo>> r = ParseStateDictPickle(pickle, "evil.bin");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find(part), std::string::npos) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("evil.bin"), std::string::npos) << r.status();
  std::printf("error shown to the user: %s\n", std::string(r.status().message()).c_str());
}

TEST(TorchPickle, RejectsCodeExecutionAndGarbage) {
  // The classic exploit: os.system("echo pwned") via GLOBAL + REDUCE.
  using namespace std::string_literals;
  ExpectRejected("\x80\x02" "cos\nsystem\n" "X\x0a\x00\x00\x00" "echo pwned" "\x85R."s,
                 "global 'os.system'");
  ExpectRejected("\x80\x02}(X\x01\x00\x00\x00" "a"s, "truncated");  // no STOP
  ExpectRejected("\x80\x02\xff."s, "opcode 0xff");
  ExpectRejected("\x80\x02K\x05."s, "does not hold a dict");
}

TEST(TorchPickle, ReportsTruncatedArchives) {
  std::ifstream in(std::string(kDir) + "pytorch_model.bin", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const char* tmp = std::getenv("TEST_TMPDIR");  // set by bazel test; /tmp when run by hand
  const std::string path = std::string(tmp ? tmp : "/tmp") + "/openmoe_cut.bin";
  std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  absl::StatusOr<TorchCheckpoint> r = TorchCheckpoint::Open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find(path), std::string::npos) << r.status();
  std::printf("error shown to the user: %s\n", std::string(r.status().message()).c_str());
}

}  // namespace
}  // namespace openmoe::io
