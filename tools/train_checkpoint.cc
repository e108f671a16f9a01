#include "tools/train_checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "openmoe/core/status_macros.h"
#include "openmoe/io/safetensors.h"

namespace openmoe::tools {

namespace fs = std::filesystem;
using Space = TrainSpace;

std::vector<float> ToHost(Vector<float, Space> v) {
  std::vector<float> out(v.extent(0));
  Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(out.data(), out.size()), v);
  return out;
}

void FromHost(const std::vector<float>& host, Vector<float, Space> v) {
  Kokkos::deep_copy(v, Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(host.data(), host.size()));
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status WriteTextAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = absl::StrCat(path, ".tmp-", getpid());
  {
    std::ofstream out(tmp);
    out << text;
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write '", tmp, "'"));
  }
  std::error_code error;
  fs::rename(tmp, path, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot rename '", tmp, "' to '", path, "': ", error.message()));
  return absl::OkStatus();
}

// Where training continues: the step reached and the next batch of the data order.

absl::Status SaveCheckpoint(const Run& run) {
  const fs::path root(run.options.output_path);
  const std::string name = absl::StrCat("step-", run.position.step);
  const fs::path tmp = root / absl::StrCat(".", name, ".tmp-", getpid()), final_dir = root / name;
  std::error_code error;
  fs::remove_all(tmp, error);
  fs::create_directories(tmp, error);
  if (error) return absl::UnavailableError(absl::StrCat("--output_path: cannot create '", tmp.string(), "': ", error.message()));
  OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "config.json").string(), ConfigToJson(run.model.config())));
  std::vector<std::vector<float>> hold;  // host copies alive until written
  std::vector<io::TensorToWrite> weights, state;
  hold.reserve(3 * run.model.table().size());
  for (const TensorSpec& spec : run.model.table()) {
    hold.push_back(ToHost(run.model.param(spec.name)));
    weights.push_back({spec.name, io::DType::kF32, spec.shape, hold.back().data()});
    hold.push_back(ToHost(run.optimizer.m.at(spec.name)));
    state.push_back({"m." + spec.name, io::DType::kF32, spec.shape, hold.back().data()});
    hold.push_back(ToHost(run.optimizer.v.at(spec.name)));
    state.push_back({"v." + spec.name, io::DType::kF32, spec.shape, hold.back().data()});
  }
  // Weights: one file, or shards of at most max_shard_bytes (a tensor larger than that gets a
  // shard of its own) with the Hugging Face index.
  std::vector<std::vector<io::TensorToWrite>> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const io::TensorToWrite& t : weights) {
    int64_t bytes = 4;
    for (int64_t d : t.shape) bytes *= d;
    if (!shards.back().empty() && shard_bytes + bytes > run.options.max_shard_bytes) shards.emplace_back(), shard_bytes = 0;
    shards.back().push_back(t);
    shard_bytes += bytes, total_bytes += bytes;
  }
  if (shards.size() == 1) {
    OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors((tmp / "model.safetensors").string(), weights, {{"format", "pt"}}));
  } else {
    nlohmann::ordered_json index;
    index["metadata"]["total_size"] = total_bytes;
    for (size_t k = 0; k < shards.size(); ++k) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
      OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors((tmp / name).string(), shards[k], {{"format", "pt"}}));
      for (const io::TensorToWrite& t : shards[k]) index["weight_map"][t.name] = name;
    }
    OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "model.safetensors.index.json").string(), index.dump(2) + "\n"));
  }
  OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors((tmp / "trainer_state.safetensors").string(), state));
  if (!run.tokenizer_file.empty()) {
    fs::copy_file(run.tokenizer_file, tmp / "tokenizer.model", fs::copy_options::overwrite_existing, error);
    if (error) return absl::UnavailableError(absl::StrCat("cannot copy the tokenizer: ", error.message()));
  }
  nlohmann::ordered_json j;
  j["step"] = run.position.step, j["epoch"] = run.position.epoch, j["next_batch"] = run.position.batch;
  j["seed"] = run.options.seed, j["shuffle"] = run.options.shuffle, j["batch_size"] = run.options.batch_size;
  j["examples"] = run.data.batch, j["seq_len"] = run.data.seq_len, j["dataset"] = run.options.dataset;
  j["task_name"] = run.options.task_name;
  j["rng"] = "data order = EpochOrder(seed, epoch); no other random state";
  j["optimizer_steps"] = run.optimizer.steps, j["precision"] = run.options.precision;
  const LossScalerState& scaler = run.optimizer.scaler.state();
  j["loss_scaler"] = {{"scale", scaler.scale}, {"growth_steps", scaler.growth_steps}, {"overflow_steps", scaler.overflow_steps}};
  OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "trainer_state.json").string(), j.dump(2) + "\n"));
  fs::remove_all(final_dir, error);
  fs::rename(tmp, final_dir, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot rename '", tmp.string(), "': ", error.message()));
  OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((root / "latest").string(), name + "\n"));
  // Keep the two newest checkpoints.
  std::vector<std::pair<int64_t, fs::path>> folders;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string n = entry.path().filename().string();
    if (entry.is_directory() && n.rfind("step-", 0) == 0) folders.push_back({std::atoll(n.c_str() + 5), entry.path()});
  }
  std::sort(folders.begin(), folders.end());
  for (size_t i = 0; i + 2 < folders.size(); ++i) fs::remove_all(folders[i].second, error);
  return absl::OkStatus();
}

// The folder a --resume argument names: a step-<N> folder, or an output path with `latest`.

absl::StatusOr<std::string> ResumeFolder(const std::string& resume) {
  if (fs::exists(fs::path(resume) / "trainer_state.json")) return resume;
  if (fs::exists(fs::path(resume) / "latest")) {
    OPENMOE_ASSIGN_OR_RETURN(std::string name, ReadText((fs::path(resume) / "latest").string()));
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    return (fs::path(resume) / name).string();
  }
  return absl::NotFoundError(absl::StrCat("--resume '", resume, "': no trainer_state.json and no `latest` file there"));
}

}  // namespace openmoe::tools
