// File: openmoe/io/safetensors.h
// Reader and atomic writer of the safetensors format:
//   [u64 little-endian header size N][N bytes of JSON header][data]
//   header: {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//            "__metadata__": {"k": "v"}}  (offsets relative to the data section)
//
// Open() validates the whole header against the file: header size within the file, JSON
// well-formed, no duplicate names, known dtypes, non-negative shapes, offsets inside the data
// section and consistent with shape x dtype size. Errors name the file and the tensor.
//
//   OPENMOE_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(path));
//   std::vector<float> w(f.Find("lm_head.weight")->num_elements());
//   OPENMOE_RETURN_IF_ERROR(f.ReadAsFloat("lm_head.weight", w.data(), w.size()));
#ifndef OPENMOE_IO_SAFETENSORS_H_
#define OPENMOE_IO_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/io/dtype.h"

namespace openmoe::io {

struct TensorInfo {
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets in the data section
  uint64_t end   = 0;

  int64_t num_elements() const;
  std::string ShapeString() const;  // "[2, 3]"
};

class SafetensorsFile {
 public:
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr if absent.
  const TensorInfo* Find(const std::string& name) const;

  // Reads tensor `name` converted to float32 (from F32, BF16, F16 or F64) into out[0, count);
  // count must equal its number of elements. Streams in chunks: no copy of the whole tensor.
  absl::Status ReadAsFloat(const std::string& name, float* out, int64_t count) const;
  // Reads an integer tensor (I64 or I32) as int64.
  absl::Status ReadAsInt64(const std::string& name, int64_t* out, int64_t count) const;

 private:
  // The tensor `name`, checked to hold `count` elements.
  absl::StatusOr<const TensorInfo*> FindWithCount(const std::string& name, int64_t count) const;

  std::string path_;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: raw little-endian bytes of `dtype` with `shape`.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel * DTypeSize(dtype) bytes
};

// Writes `tensors` to `path` atomically (a temporary file in the same folder, then rename), so
// a crash leaves either the old file or the complete new one.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace openmoe::io

#endif  // OPENMOE_IO_SAFETENSORS_H_
