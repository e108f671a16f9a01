// File: openmoe/io/torch_pickle.h
// Reader of PyTorch checkpoints written by torch.save (the `pytorch_model*.bin` of Hugging Face):
// a zip archive (stored, zip64 when large) holding `<name>/data.pkl`, a pickle of a state dict,
// and `<name>/data/<key>`, the raw storages.
//
// The unpickler is restricted to what state dicts use: dicts / OrderedDict, tuples, lists,
// strings, ints, floats, bools, None, torch._utils._rebuild_tensor_v2 and the typed storage
// classes (Float/BFloat16/Half/Double/Long/Int). Any other global or opcode is rejected with its
// name, so no code from the file ever runs (unlike Python's pickle).
#ifndef OPENMOE_IO_TORCH_PICKLE_H_
#define OPENMOE_IO_TORCH_PICKLE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/io/dtype.h"

namespace openmoe::io {

struct TorchTensorInfo {
  DType dtype;
  std::vector<int64_t> shape;
  std::string storage_key;      // data/<key> inside the archive
  int64_t storage_offset = 0;   // in elements
  uint64_t data_offset = 0;     // byte offset of the storage in the file
  uint64_t storage_bytes = 0;
};

class TorchCheckpoint {
 public:
  static absl::StatusOr<TorchCheckpoint> Open(const std::string& path);
  const std::string& path() const { return path_; }
  const std::map<std::string, TorchTensorInfo>& tensors() const { return tensors_; }
  absl::Status ReadAsFloat(const std::string& name, float* out, int64_t count) const;

 private:
  std::string path_;
  std::map<std::string, TorchTensorInfo> tensors_;
};

// Exposed for tests: parses a pickle of a state dict. `storage_bytes` maps a storage key to its
// byte size (or is empty to skip that check).
absl::StatusOr<std::map<std::string, TorchTensorInfo>> ParseStateDictPickle(
    const std::string& pickle, const std::string& source);

}  // namespace openmoe::io

#endif  // OPENMOE_IO_TORCH_PICKLE_H_
