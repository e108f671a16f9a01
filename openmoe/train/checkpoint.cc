#include "openmoe/train/checkpoint.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "openmoe/config.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/parameter_store.h"
#include "openmoe/train/text_files.h"

namespace openmoe::train {

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

namespace {

std::string Absolute(const std::string& path) {
  if (path.empty()) return path;
  std::error_code error;
  const fs::path absolute = fs::absolute(path, error);
  return error ? path : absolute.lexically_normal().string();
}

// The loss factors of TrainOptions under their run_config.json keys.
template <class Options>
auto LossFactors(Options& o) {
  using Field = decltype(&o.label_smoothing);
  return std::array<std::pair<const char*, Field>, 4>{{{"label_smoothing", &o.label_smoothing},
                                                       {"z_loss_factor", &o.z_loss_factor},
                                                       {"router_aux_loss_factor", &o.router_aux_loss_factor},
                                                       {"router_z_loss_factor", &o.router_z_loss_factor}}};
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
  for (const auto& [key, value] : LossFactors(o)) j[key] = value->has_value() ? nlohmann::ordered_json(**value) : nullptr;
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

// The weights: one model.safetensors, or shards of at most max_shard_bytes (a tensor larger than
// that gets a shard of its own) with the Hugging Face index.
absl::Status WriteWeights(const fs::path& dir, const std::vector<io::TensorToWrite>& weights, int64_t max_shard_bytes) {
  std::vector<std::vector<io::TensorToWrite>> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const io::TensorToWrite& t : weights) {
    int64_t bytes = 4;
    for (int64_t d : t.shape) bytes *= d;
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) shards.emplace_back(), shard_bytes = 0;
    shards.back().push_back(t);
    shard_bytes += bytes, total_bytes += bytes;
  }
  if (shards.size() == 1) return io::WriteSafetensors((dir / "model.safetensors").string(), weights, {{"format", "pt"}});
  nlohmann::ordered_json index;
  index["metadata"]["total_size"] = total_bytes;
  for (size_t k = 0; k < shards.size(); ++k) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors((dir / name).string(), shards[k], {{"format", "pt"}}));
    for (const io::TensorToWrite& t : shards[k]) index["weight_map"][t.name] = name;
  }
  return WriteTextAtomically((dir / "model.safetensors.index.json").string(), index.dump(2) + "\n");
}

std::string ShardFileName(int rank, int ranks) {
  char name[64];
  std::snprintf(name, sizeof(name), "rank-%05d-of-%05d.safetensors", rank, ranks);
  return name;
}

// "m.<tensor>@<first>" -> (m, tensor, first); false for other names.
bool ParsePieceName(const std::string& key, char& which, std::string& tensor, int64_t& first) {
  const size_t at = key.rfind('@');
  if (key.size() < 4 || (key[0] != 'm' && key[0] != 'v') || key[1] != '.' || at == std::string::npos || at < 3) return false;
  const std::string digits = key.substr(at + 1);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  which = key[0], tensor = key.substr(2, at - 2), first = std::atoll(digits.c_str());
  return true;
}

}  // namespace

std::string CheckpointStagingDir(const std::string& output_path, int64_t step) {
  return (fs::path(output_path) / absl::StrCat(".step-", step, ".tmp-shards")).string();
}

absl::Status WriteOptimizerShard(const std::string& staging_dir, int rank, int ranks,
                                 const std::vector<OptimizerShardPiece>& pieces) {
  std::error_code error;
  const fs::path dir = fs::path(staging_dir) / "optimizer";
  fs::create_directories(dir, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot create '", dir.string(), "': ", error.message()));
  std::vector<io::TensorToWrite> tensors;
  for (const OptimizerShardPiece& piece : pieces) {
    const int64_t count = int64_t(piece.m.size());
    if (int64_t(piece.v.size()) != count) return absl::InternalError("WriteOptimizerShard: m and v pieces differ in size");
    tensors.push_back({absl::StrCat("m.", piece.tensor, "@", piece.first), io::DType::kF32, {count}, piece.m.data()});
    tensors.push_back({absl::StrCat("v.", piece.tensor, "@", piece.first), io::DType::kF32, {count}, piece.v.data()});
  }
  return io::WriteSafetensors((dir / ShardFileName(rank, ranks)).string(), tensors,
                              {{"format", "openmoe.optimizer_shard.v1"}});
}

absl::Status SaveCheckpoint(const CheckpointContents& c) {
  const TrainOptions& options = *c.options;
  const fs::path root(options.output_path);
  const std::string name = absl::StrCat("step-", c.position.step);
  const bool sharded = c.optimizer_shards > 0;  // the ranks' moment shards are already in the staging folder
  const fs::path tmp = sharded ? fs::path(CheckpointStagingDir(options.output_path, c.position.step))
                               : root / absl::StrCat(".", name, ".tmp-", getpid());
  const fs::path final_dir = root / name;
  std::error_code error;
  if (!sharded) fs::remove_all(tmp, error);
  fs::create_directories(tmp, error);
  if (error) return absl::UnavailableError(absl::StrCat("--output_path: cannot create '", tmp.string(), "': ", error.message()));
  OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "config.json").string(), ConfigToJson(c.config)));
  const size_t n = c.table.size();
  if (c.params.size() != n || (!sharded && (c.m.size() != n || c.v.size() != n))) {
    return absl::InternalError("SaveCheckpoint: weights and moments must cover the table");
  }
  std::vector<io::TensorToWrite> weights, state;
  for (size_t k = 0; k < n; ++k) {
    const TensorSpec& spec = c.table[k];
    std::vector<const std::vector<float>*> values = {&c.params[k]};
    if (!sharded) values.push_back(&c.m[k]), values.push_back(&c.v[k]);
    for (const std::vector<float>* v : values) {
      if (int64_t(v->size()) != spec.numel()) {
        return absl::InternalError(absl::StrCat("SaveCheckpoint: ", spec.name, " has ", v->size(), " values, not ",
                                                spec.numel()));
      }
    }
    weights.push_back({spec.name, io::DType::kF32, spec.shape, c.params[k].data()});
    if (sharded) continue;
    state.push_back({"m." + spec.name, io::DType::kF32, spec.shape, c.m[k].data()});
    state.push_back({"v." + spec.name, io::DType::kF32, spec.shape, c.v[k].data()});
  }
  OPENMOE_RETURN_IF_ERROR(WriteWeights(tmp, weights, options.max_shard_bytes));
  if (sharded) {  // the ranks' files are there: check them, then the index
    nlohmann::ordered_json index;
    index["format"] = "openmoe.optimizer_shards.v1", index["ranks"] = c.optimizer_shards;
    for (int r = 0; r < c.optimizer_shards; ++r) {
      const std::string file = ShardFileName(r, c.optimizer_shards);
      if (!fs::exists(tmp / "optimizer" / file)) {
        return absl::InternalError(absl::StrCat("checkpoint step ", c.position.step, ": rank ", r, "'s optimizer shard ",
                                                (tmp / "optimizer" / file).string(), " is missing"));
      }
      index["files"].push_back(file);
    }
    OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "optimizer" / "index.json").string(), index.dump(2) + "\n"));
  } else {
    OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors((tmp / "trainer_state.safetensors").string(), state));
  }
  if (!c.tokenizer_file.empty()) {
    fs::copy_file(c.tokenizer_file, tmp / "tokenizer.model", fs::copy_options::overwrite_existing, error);
    if (error) return absl::UnavailableError(absl::StrCat("cannot copy the tokenizer: ", error.message()));
  }
  nlohmann::ordered_json j;
  j["step"] = c.position.step, j["epoch"] = c.position.epoch, j["next_batch"] = c.position.batch;
  j["seed"] = options.seed, j["shuffle"] = options.shuffle, j["batch_size"] = options.batch_size;
  j["examples"] = c.data_order.examples, j["seq_len"] = c.data_order.seq_len;
  if (c.data_order.data_parallel_size != 1) j["data_parallel_size"] = c.data_order.data_parallel_size;
  j["next_example"] = c.position.batch * options.batch_size * c.data_order.data_parallel_size;
  j["dataset"] = options.dataset, j["task_name"] = options.task_name;
  j["rng"] = "data order = EpochOrder(seed, epoch); no other random state";
  j["optimizer_steps"] = c.optimizer->steps(), j["precision"] = options.precision;
  const LossScalerState& scaler = c.optimizer->scaler().state();
  j["loss_scaler"] = {{"scale", scaler.scale}, {"growth_steps", scaler.growth_steps}, {"overflow_steps", scaler.overflow_steps}};
  OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "trainer_state.json").string(), j.dump(2) + "\n"));
  OPENMOE_RETURN_IF_ERROR(WriteTextAtomically((tmp / "run_config.json").string(), RunConfigJson(options)));
  // Test hook (train_cli_test): die like a killed run with the temporary folder complete but not
  // yet renamed.
  if (const char* die = std::getenv("OPENMOE_TRAIN_TEST_KILL_BEFORE_RENAME_AT_STEP");
      die != nullptr && std::atoll(die) == c.position.step) {
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
  // Shard staging folders of steps this run did not complete (a run killed while saving).
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string n = entry.path().filename().string();
    if (n.rfind(".step-", 0) == 0 && n.size() > 11 && n.compare(n.size() - 11, 11, ".tmp-shards") == 0) {
      fs::remove_all(entry.path(), error);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResumeFolder(const std::string& resume) {
  if (fs::exists(fs::path(resume) / "trainer_state.json")) return resume;
  if (fs::exists(fs::path(resume) / "latest")) {
    OPENMOE_ASSIGN_OR_RETURN(std::string name, ReadText((fs::path(resume) / "latest").string()));
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    return (fs::path(resume) / name).string();
  }
  return absl::NotFoundError(absl::StrCat("--resume '", resume, "': no trainer_state.json and no `latest` file there"));
}

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& folder, double initial_loss_scale) {
  OPENMOE_ASSIGN_OR_RETURN(const std::string text, ReadText(folder + "/trainer_state.json"));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(folder, "/trainer_state.json is not valid JSON"));
  const auto integer = [&](const char* key, int64_t missing) {
    if (!j.contains(key)) return missing;
    const nlohmann::json& value = j[key];
    return value.is_boolean() ? int64_t(value.get<bool>()) : value.is_number() ? value.get<int64_t>() : missing;
  };
  TrainerState state;
  state.position = {integer("step", 0), integer("epoch", 0), integer("next_batch", 0)};
  state.optimizer_steps = integer("optimizer_steps", state.position.step);
  if (j.contains("loss_scaler") && j["loss_scaler"].is_object()) {
    const nlohmann::json& ls = j["loss_scaler"];
    state.loss_scaler = LossScalerState{ls.value("scale", initial_loss_scale), ls.value("growth_steps", int64_t(0)),
                                        ls.value("overflow_steps", int64_t(0))};
  }
  DataOrder& d = state.data_order;
  d.batch_size = integer("batch_size", -1), d.examples = integer("examples", -1), d.seq_len = integer("seq_len", -1);
  d.seed = integer("seed", -1), d.shuffle = integer("shuffle", -1), d.data_parallel_size = integer("data_parallel_size", 1);
  state.next_example = integer("next_example", -1);
  return state;
}

absl::Status CheckSameDataOrder(const DataOrder& saved, const DataOrder& now) {
  const std::pair<const char*, std::pair<int64_t, int64_t>> keys[] = {
      {"examples", {saved.examples, now.examples}}, {"seq_len", {saved.seq_len, now.seq_len}},
      {"seed", {saved.seed, now.seed}}, {"shuffle", {saved.shuffle, now.shuffle}}};
  for (const auto& [key, values] : keys) {
    if (values.first != -1 && values.first != values.second) {
      return absl::InvalidArgumentError(absl::StrCat("--resume: the checkpoint was trained with ", key, " = ", values.first,
                                                     ", this run has ", values.second, " (the data order would differ)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainingPosition> ResumePosition(const TrainerState& saved, const DataOrder& now, std::string* note) {
  OPENMOE_RETURN_IF_ERROR(CheckSameDataOrder(saved.data_order, now));
  const int64_t G = now.global_batch();
  if (G <= 0 || now.examples < 0) return absl::InvalidArgumentError("ResumePosition: this run's data order is incomplete");
  // An older checkpoint without batch_size: its global batch is taken as this run's.
  const int64_t saved_G = saved.data_order.global_batch() > 0 ? saved.data_order.global_batch() : G;
  const int64_t example = saved.next_example >= 0 ? saved.next_example : saved.position.batch * saved_G;
  const auto split = [](const DataOrder& d) {
    return absl::StrCat(d.batch_size * d.data_parallel_size, " = --batch_size ", d.batch_size, " x ", d.data_parallel_size,
                        " data-parallel rank", d.data_parallel_size == 1 ? "" : "s");
  };
  if (example % G != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--resume: the checkpoint stopped after ", example, " examples of epoch ", saved.position.epoch,
        " (global batch ", saved.data_order.batch_size > 0 ? split(saved.data_order) : absl::StrCat(saved_G), "); this run's global batch ",
        split(now), " does not divide that, so it has no step boundary there; resume with a global batch dividing ", example));
  }
  TrainingPosition p{saved.position.step, saved.position.epoch, example / G};
  if (p.batch >= now.examples / G) p = {p.step, p.epoch + 1, 0};  // this run's epoch ends there (drop_last)
  if (note != nullptr) {
    note->clear();
    if (saved_G != G) {
      *note = absl::StrCat("--resume: the global batch changes from ", split(saved.data_order), " to ", split(now),
                           "; continuing at example ", example, " of epoch ", saved.position.epoch,
                           " (not the continuation of either uninterrupted run)");
    }
  }
  return p;
}

namespace {

// Where this model's stored part of each tensor lies: whole-tensor elements [whole, whole + count)
// at layout offset `layout`. A dense tensor is one region; a stacked expert tensor one per stored
// expert (the shard's experts, in the identity placement a resume starts from).
struct StoredRegion {
  int64_t whole = 0, layout = 0, count = 0;
};
std::map<std::string, std::vector<StoredRegion>> StoredRegions(const TrainModel& model) {
  std::map<std::string, std::vector<StoredRegion>> regions;
  const ExpertShard& shard = model.expert_shard();
  for (const TensorSpec& spec : model.table()) {
    const ParameterSlot& slot = model.layout().slot(spec.name);
    if (WholeSpec(spec, shard).numel() == spec.numel()) {
      regions[spec.name].push_back({0, slot.offset, slot.numel});
      continue;
    }
    const int64_t per_expert = spec.numel() / shard.count;
    for (int64_t j = 0; j < shard.count; ++j) {
      regions[spec.name].push_back({(shard.first + j) * per_expert, slot.offset + j * per_expert, per_expert});
    }
  }
  return regions;
}

// Host values of the stored elements at layout offsets [layout, layout + n) into the part of
// `moments` (the optimizer's flat_m or flat_v) that this rank keeps: under ZeRO only its pieces,
// so a resume never holds more than its own share on the device.
void CopyIntoOwned(const AdamWOptimizer& optimizer, Vector<float, Space> moments, int64_t layout, const float* values,
                   int64_t n) {
  for (const AdamWOptimizer::MomentPiece& piece : optimizer.OwnedMoments(layout, layout + n)) {
    Kokkos::deep_copy(Vector<float, Space>(moments.data() + piece.moment, piece.count),
                      Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                          values + (piece.layout - layout), piece.count));
  }
}

// The moments of the optimizer/ shard files: every piece overlapping what this model stores. Each
// stored element must be covered exactly once (checked on the intervals read, per region).
absl::Status ReadOptimizerShards(const std::string& folder, const TrainModel& model, AdamWOptimizer& optimizer) {
  const fs::path dir = fs::path(folder) / "optimizer";
  const std::string index_path = (dir / "index.json").string();
  OPENMOE_ASSIGN_OR_RETURN(const std::string text, ReadText(index_path));
  const nlohmann::json index = nlohmann::json::parse(text, nullptr, false);
  if (index.is_discarded() || !index.is_object() || !index.contains("files") || !index["files"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, " is not an optimizer shard index (no \"files\" list)"));
  }
  const std::map<std::string, std::vector<StoredRegion>> regions = StoredRegions(model);
  std::map<std::string, int64_t> whole_numel;  // every tensor of the model, stored here or not
  for (const TensorSpec& spec : CheckpointTable(model.config())) whole_numel[spec.name] = spec.numel();
  // Intervals [begin, end) of whole-tensor elements read, per "m." / "v." tensor.
  std::map<std::string, std::vector<std::pair<int64_t, int64_t>>> covered;
  std::vector<float> host;
  for (const nlohmann::json& entry : index["files"]) {
    if (!entry.is_string()) return absl::InvalidArgumentError(absl::StrCat(index_path, ": a file name is not a string"));
    const std::string path = (dir / entry.get<std::string>()).string();
    OPENMOE_ASSIGN_OR_RETURN(const io::SafetensorsFile file, io::SafetensorsFile::Open(path));
    for (const auto& [key, info] : file.tensors()) {
      char which = 0;
      std::string tensor;
      int64_t first = 0;
      if (!ParsePieceName(key, which, tensor, first)) continue;
      const auto numel = whole_numel.find(tensor);
      const int64_t count = info.num_elements();
      if (numel == whole_numel.end() || first + count > numel->second) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": piece ", key, " (", count, " values) is not part of a ",
                                                       "tensor of this model"));
      }
      const auto it = regions.find(tensor);
      if (it == regions.end()) continue;  // a tensor another pipeline stage stores
      bool loaded = false;
      for (const StoredRegion& r : it->second) {
        const int64_t b = std::max(first, r.whole), e = std::min(first + count, r.whole + r.count);
        if (b >= e) continue;
        if (!loaded) {
          host.resize(count);
          OPENMOE_RETURN_IF_ERROR(file.ReadAsFloat(key, host.data(), count));
          loaded = true;
        }
        CopyIntoOwned(optimizer, which == 'm' ? optimizer.flat_m() : optimizer.flat_v(), r.layout + (b - r.whole),
                      host.data() + (b - first), e - b);
        covered[std::string(1, which) + "." + tensor].push_back({b, e});
      }
    }
  }
  for (const auto& [tensor, list] : regions) {
    for (const char* prefix : {"m.", "v."}) {
      std::vector<std::pair<int64_t, int64_t>> need;
      for (const StoredRegion& r : list) need.push_back({r.whole, r.whole + r.count});
      std::vector<std::pair<int64_t, int64_t>>& got = covered[prefix + tensor];
      std::sort(need.begin(), need.end());
      std::sort(got.begin(), got.end());
      // The pieces read must tile the stored regions exactly: no gap, no overlap.
      size_t k = 0;
      bool ok = true;
      for (const auto& [begin, end] : need) {
        for (int64_t at = begin; at < end && ok; ++k) {
          ok = k < got.size() && got[k].first == at && got[k].second <= end;
          if (ok) at = got[k].second;
        }
      }
      if (!ok || k != got.size()) {
        return absl::InvalidArgumentError(absl::StrCat(dir.string(), ": the optimizer shards do not hold ", prefix, tensor,
                                                       " exactly once where this rank stores it (missing or "
                                                       "duplicated pieces)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadOptimizerMoments(const std::string& folder, const TrainModel& model, AdamWOptimizer& optimizer) {
  // Straight into the part of the moments this rank keeps (its ZeRO share of what its model
  // stores: a stage's tensors, a shard's experts); nothing whole on the device.
  if (fs::exists(fs::path(folder) / "optimizer" / "index.json")) return ReadOptimizerShards(folder, model, optimizer);
  OPENMOE_ASSIGN_OR_RETURN(const io::SafetensorsFile file, io::SafetensorsFile::Open(folder + "/trainer_state.safetensors"));
  const std::map<std::string, std::vector<StoredRegion>> regions = StoredRegions(model);
  std::vector<float> host;
  for (const TensorSpec& spec : model.table()) {
    const int64_t whole = WholeSpec(spec, model.expert_shard()).numel();
    host.resize(whole);
    for (const char which : {'m', 'v'}) {
      OPENMOE_RETURN_IF_ERROR(file.ReadAsFloat(std::string(1, which) + "." + spec.name, host.data(), whole));
      for (const StoredRegion& r : regions.at(spec.name)) {
        CopyIntoOwned(optimizer, which == 'm' ? optimizer.flat_m() : optimizer.flat_v(), r.layout, host.data() + r.whole,
                      r.count);
      }
    }
  }
  return absl::OkStatus();
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
    for (const auto& [key, value] : LossFactors(o)) {
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

}  // namespace openmoe::train
