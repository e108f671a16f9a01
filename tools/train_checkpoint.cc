#include "tools/train_checkpoint.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
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

namespace {

std::string Absolute(const std::string& path) {
  if (path.empty()) return path;
  std::error_code error;
  const fs::path absolute = fs::absolute(path, error);
  return error ? path : absolute.lexically_normal().string();
}

// run_config.json: every option of the run that a resume restores (not resume, dump_step_state,
// progress; output_path is the folder the checkpoint lies in).
std::string RunConfigJson(const TrainOptions& o) {
  nlohmann::ordered_json j;
  const bool initial = !o.initial_model_dir.empty() || !o.initial_model_name.empty();
  j["model"] = Absolute(initial ? o.initial_model_dir : o.model_dir);
  j["model_name"] = initial ? o.initial_model_name : o.model_name;
  j["dataset"] = Absolute(o.dataset), j["task_name"] = o.task_name;
  j["precision"] = o.precision, j["lr_schedule"] = o.lr_schedule;
  j["num_epochs"] = o.num_epochs, j["max_steps"] = o.max_steps, j["batch_size"] = o.batch_size;
  j["save_interval"] = o.save_interval, j["max_length"] = o.max_length, j["warmup_steps"] = o.warmup_steps;
  j["seed"] = o.seed, j["lr"] = o.lr, j["weight_decay"] = o.weight_decay, j["max_grad_norm"] = o.max_grad_norm;
  j["initial_loss_scale"] = o.initial_loss_scale, j["shuffle"] = o.shuffle, j["grad_checkpoint"] = o.grad_checkpoint;
  j["max_shard_bytes"] = o.max_shard_bytes;
  const std::pair<const char*, const std::optional<double>*> factors[] = {
      {"label_smoothing", &o.label_smoothing}, {"z_loss_factor", &o.z_loss_factor},
      {"router_aux_loss_factor", &o.router_aux_loss_factor}, {"router_z_loss_factor", &o.router_z_loss_factor}};
  for (const auto& [key, value] : factors) j[key] = value->has_value() ? nlohmann::ordered_json(**value) : nullptr;
  return j.dump(2) + "\n";
}

// Temporary files of the checkpoint writer (.step-<N>.tmp-<pid>, latest.tmp-<pid>) whose process
// is gone: a run killed while saving leaves them behind.
void RemoveStaleTemporaries(const fs::path& root) {
  std::error_code error;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string n = entry.path().filename().string();
    const size_t tmp = n.rfind(".tmp-");
    if (tmp == std::string::npos || !(n.rfind(".step-", 0) == 0 || n.rfind("latest.tmp-", 0) == 0)) continue;
    const std::string digits = n.substr(tmp + 5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = pid_t(std::atoll(digits.c_str()));
    if (pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(entry.path());
  }
  for (const fs::path& path : stale) fs::remove_all(path, error);
}

}  // namespace

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
  OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "run_config.json").string(), RunConfigJson(run.options)));
  // Test hook (train_cli_test): die like a killed run with the temporary folder complete but not
  // yet renamed.
  if (const char* die = std::getenv("OPENMOE_TRAIN_TEST_KILL_BEFORE_RENAME_AT_STEP");
      die != nullptr && std::atoll(die) == run.position.step) {
    std::fflush(nullptr);
    kill(getpid(), SIGKILL);
  }
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
  RemoveStaleTemporaries(root);
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

absl::StatusOr<bool> LoadRunConfig(const std::string& resume, TrainOptions& options) {
  OPENMOE_ASSIGN_OR_RETURN(const std::string folder, ResumeFolder(resume));
  const std::string file = (fs::path(folder) / "run_config.json").string();
  if (!fs::exists(file)) return false;
  OPENMOE_ASSIGN_OR_RETURN(const std::string text, ReadText(file));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(file, " is not a JSON object"));
  TrainOptions o = options;
  try {
    o.initial_model_dir = j.at("model").get<std::string>(), o.initial_model_name = j.at("model_name").get<std::string>();
    o.dataset = j.at("dataset").get<std::string>(), o.task_name = j.at("task_name").get<std::string>();
    o.precision = j.at("precision").get<std::string>(), o.lr_schedule = j.at("lr_schedule").get<std::string>();
    o.num_epochs = j.at("num_epochs").get<int64_t>(), o.max_steps = j.at("max_steps").get<int64_t>();
    o.batch_size = j.at("batch_size").get<int64_t>(), o.save_interval = j.at("save_interval").get<int64_t>();
    o.max_length = j.at("max_length").get<int64_t>(), o.warmup_steps = j.at("warmup_steps").get<int64_t>();
    o.seed = j.at("seed").get<uint64_t>(), o.lr = j.at("lr").get<double>();
    o.weight_decay = j.at("weight_decay").get<double>(), o.max_grad_norm = j.at("max_grad_norm").get<double>();
    o.initial_loss_scale = j.at("initial_loss_scale").get<double>(), o.shuffle = j.at("shuffle").get<bool>();
    o.grad_checkpoint = j.at("grad_checkpoint").get<bool>(), o.max_shard_bytes = j.at("max_shard_bytes").get<int64_t>();
    const std::pair<const char*, std::optional<double>*> factors[] = {
        {"label_smoothing", &o.label_smoothing}, {"z_loss_factor", &o.z_loss_factor},
        {"router_aux_loss_factor", &o.router_aux_loss_factor}, {"router_z_loss_factor", &o.router_z_loss_factor}};
    for (const auto& [key, value] : factors) {
      if (j.at(key).is_null()) value->reset();
      else *value = j.at(key).get<double>();
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", e.what()));
  }
  fs::path dir = fs::path(folder).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();  // a trailing '/'
  o.output_path = dir.has_parent_path() ? dir.parent_path().string() : ".";
  options = std::move(o);
  return true;
}

}  // namespace openmoe::tools
