// libFuzzer target: arbitrary bytes as a safetensors file. Open() must either reject them with a
// Status or accept a header whose every tensor can then be read without crashing.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "openmoe/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/openmoe_fuzz_" + std::to_string(getpid()) + ".safetensors";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  absl::StatusOr<openmoe::io::SafetensorsFile> file = openmoe::io::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  for (const auto& [name, info] : file->tensors()) {
    const int64_t n = info.num_elements();
    if (n > (int64_t(1) << 20)) continue;  // header-valid but large: skip the allocation
    std::vector<float> f(n);
    std::vector<int64_t> i(n);
    (void)file->ReadAsFloat(name, f.data(), n);
    (void)file->ReadAsInt64(name, i.data(), n);
  }
  return 0;
}
