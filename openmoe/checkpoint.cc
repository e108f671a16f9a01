#include "openmoe/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "openmoe/core/status_macros.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/io/torch_pickle.h"

namespace openmoe {
namespace {

namespace fs = std::filesystem;

// A TensorFile over a reader with path(), tensors() (name -> info with .shape) and ReadAsFloat:
// io::SafetensorsFile or io::TorchCheckpoint.
template <class File>
class TensorFileOf : public TensorFile {
 public:
  explicit TensorFileOf(File file) : file_(std::move(file)) {}
  const std::string& path() const override { return file_.path(); }
  std::map<std::string, std::vector<int64_t>> Shapes() const override {
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& [name, info] : file_.tensors()) shapes[name] = info.shape;
    return shapes;
  }
  absl::Status ReadAsFloat(const std::string& name, float* out, int64_t count) const override {
    return file_.ReadAsFloat(name, out, count);
  }

 private:
  File file_;
};

absl::StatusOr<std::shared_ptr<TensorFile>> OpenTensorFile(const std::string& path) {
  if (path.size() >= 12 && path.substr(path.size() - 12) == ".safetensors") {
    OPENMOE_ASSIGN_OR_RETURN(io::SafetensorsFile file, io::SafetensorsFile::Open(path));
    return std::shared_ptr<TensorFile>(new TensorFileOf<io::SafetensorsFile>(std::move(file)));
  }
  OPENMOE_ASSIGN_OR_RETURN(io::TorchCheckpoint file, io::TorchCheckpoint::Open(path));
  return std::shared_ptr<TensorFile>(new TensorFileOf<io::TorchCheckpoint>(std::move(file)));
}

// Shard file names of an HF index file ({"weight_map": {tensor: file}}).
absl::StatusOr<std::vector<std::string>> ShardsOfIndex(const std::string& index_path) {
  std::ifstream in(index_path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open checkpoint index '", index_path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json index = nlohmann::json::parse(text.str(), nullptr, false);
  if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint index '", index_path, "' has no 'weight_map' object"));
  }
  std::set<std::string> shards;
  for (const auto& item : index["weight_map"].items()) {
    if (!item.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint index '", index_path, "': entry '",
                                                     item.key(), "' is not a file name"));
    }
    const std::string shard = item.value().get<std::string>();
    if (shard.find('/') != std::string::npos || shard == "..") {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint index '", index_path,
                                                     "': shard name '", shard, "' is not a plain file name"));
    }
    shards.insert(shard);
  }
  return std::vector<std::string>(shards.begin(), shards.end());
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

absl::StatusOr<CheckpointReader> CheckpointReader::Open(const std::string& model_dir) {
  std::vector<std::string> paths;
  std::string description;
  const fs::path dir(model_dir);
  for (const char* single : {"model.safetensors", "pytorch_model.bin"}) {
    if (paths.empty() && fs::exists(dir / single)) {
      paths.push_back((dir / single).string());
      description = single;
    }
  }
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    if (paths.empty() && fs::exists(dir / index)) {
      OPENMOE_ASSIGN_OR_RETURN(std::vector<std::string> shards, ShardsOfIndex((dir / index).string()));
      for (const std::string& shard : shards) paths.push_back((dir / shard).string());
      description = absl::StrCat(index, " (", shards.size(), " shards)");
    }
  }
  if (paths.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "model folder '", model_dir, "' has no weights: expected model.safetensors, ",
        "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json"));
  }
  CheckpointReader reader;
  reader.description_ = description;
  for (const std::string& path : paths) {
    OPENMOE_ASSIGN_OR_RETURN(std::shared_ptr<TensorFile> file, OpenTensorFile(path));
    for (auto& [name, shape] : file->Shapes()) {
      if (reader.tensors_.count(name)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in both '",
                                                       reader.tensors_[name].first->path(), "' and '",
                                                       path, "'"));
      }
      reader.tensors_[name] = {file.get(), shape};
    }
    reader.files_.push_back(std::move(file));
  }
  return reader;
}

absl::Status CheckpointReader::Validate(const std::vector<TensorSpec>& table) const {
  std::vector<std::string> problems;
  std::set<std::string> expected;
  for (const TensorSpec& spec : table) {
    expected.insert(spec.name);
    auto it = tensors_.find(spec.name);
    if (it == tensors_.end()) {
      problems.push_back(absl::StrCat("missing tensor '", spec.name, "' ", ShapeString(spec.shape)));
    } else if (it->second.second != spec.shape) {
      problems.push_back(absl::StrCat("tensor '", spec.name, "' has shape ", ShapeString(it->second.second),
                                      ", expected ", ShapeString(spec.shape), " (in '",
                                      it->second.first->path(), "')"));
    }
  }
  for (const auto& [name, entry] : tensors_) {
    if (!expected.count(name)) {
      problems.push_back(absl::StrCat("unexpected tensor '", name, "' in '", entry.first->path(), "'"));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  const size_t shown = std::min<size_t>(problems.size(), 20);
  return absl::InvalidArgumentError(absl::StrCat(
      "checkpoint ", description_, " does not match the config (", problems.size(), " problem",
      problems.size() > 1 ? "s" : "", "): ",
      absl::StrJoin(problems.begin(), problems.begin() + shown, "; "),
      problems.size() > shown ? "; ..." : ""));
}

absl::Status CheckpointReader::ReadAsFloat(const std::string& name, float* out, int64_t count) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", description_, " has no tensor '", name, "'"));
  }
  return it->second.first->ReadAsFloat(name, out, count);
}

}  // namespace openmoe
