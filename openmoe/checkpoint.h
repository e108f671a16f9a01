// File: openmoe/checkpoint.h
// Reads the weights of a Hugging Face model folder, whatever its file layout:
//   model.safetensors | model.safetensors.index.json (+ shards)
//   pytorch_model.bin | pytorch_model.bin.index.json (+ shards)   [torch.save zip + pickle]
// and checks them against the checkpoint table: every missing, unexpected or mis-shaped tensor
// is reported by name in one error. Tensors are converted to float32 while streaming.
#ifndef OPENMOE_CHECKPOINT_H_
#define OPENMOE_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/checkpoint_table.h"

namespace openmoe {

// One weight file: names, shapes and float32 reads.
class TensorFile {
 public:
  virtual ~TensorFile() = default;
  virtual const std::string& path() const = 0;
  // name -> shape of every tensor in the file.
  virtual std::map<std::string, std::vector<int64_t>> Shapes() const = 0;
  virtual absl::Status ReadAsFloat(const std::string& name, float* out, int64_t count) const = 0;
};

class CheckpointReader {
 public:
  // Finds and opens the weight files of `model_dir`.
  static absl::StatusOr<CheckpointReader> Open(const std::string& model_dir);

  // Checks the files against `table`; errors list every problem by tensor name.
  absl::Status Validate(const std::vector<TensorSpec>& table) const;
  absl::Status ReadAsFloat(const std::string& name, float* out, int64_t count) const;
  const std::string& description() const { return description_; }  // e.g. "model.safetensors"

 private:
  std::vector<std::shared_ptr<TensorFile>> files_;
  std::map<std::string, std::pair<TensorFile*, std::vector<int64_t>>> tensors_;  // name -> file, shape
  std::string description_;
};

}  // namespace openmoe

#endif  // OPENMOE_CHECKPOINT_H_
