#include "openmoe/train/train_data.h"

#include <algorithm>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "openmoe/core/status_macros.h"

namespace openmoe {
namespace {

absl::StatusOr<InstructionRecord> ToRecord(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
  InstructionRecord r;
  for (const char* field : {"prompt", "completion"}) {
    if (!j.contains(field)) return absl::InvalidArgumentError(absl::StrCat(where, ": missing field \"", field, "\""));
    if (!j[field].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": field \"", field, "\" must be a string"));
    }
  }
  r.prompt = j["prompt"].get<std::string>(), r.completion = j["completion"].get<std::string>();
  return r;
}

}  // namespace

absl::StatusOr<std::vector<InstructionRecord>> ReadInstructionRecords(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--dataset: cannot open '", path, "'"));
  std::vector<InstructionRecord> records;
  const bool json_array = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  if (json_array) {
    std::stringstream text;
    text << in.rdbuf();
    const nlohmann::json root = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
    if (!root.is_array()) return absl::InvalidArgumentError(absl::StrCat(path, ": expected an array of records"));
    for (size_t i = 0; i < root.size(); ++i) {
      OPENMOE_ASSIGN_OR_RETURN(InstructionRecord r, ToRecord(root[i], absl::StrCat(path, " record ", i)));
      records.push_back(std::move(r));
    }
  } else {
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const std::string where = absl::StrCat(path, ":", number);
      if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(where, ": malformed JSON line"));
      OPENMOE_ASSIGN_OR_RETURN(InstructionRecord r, ToRecord(j, where));
      records.push_back(std::move(r));
    }
  }
  if (records.empty()) return absl::InvalidArgumentError(absl::StrCat("--dataset '", path, "' holds no records"));
  return records;
}

absl::StatusOr<io::TokenBatch> TokenizeRecords(const std::vector<InstructionRecord>& records, const Tokenizer& tokenizer,
                                               int64_t max_length) {
  if (max_length < 2) return absl::InvalidArgumentError(absl::StrCat("--max_length must be >= 2, got ", max_length));
  io::TokenBatch batch;
  batch.batch = int64_t(records.size()), batch.seq_len = max_length;
  batch.ids.assign(batch.batch * max_length, tokenizer.pad_id());
  batch.mask.assign(batch.batch * max_length, 0);
  for (int64_t n = 0; n < batch.batch; ++n) {
    OPENMOE_ASSIGN_OR_RETURN(std::vector<int64_t> ids,
                             tokenizer.Encode(records[n].prompt + records[n].completion, /*add_bos=*/true));
    const int64_t len = std::min<int64_t>(max_length, ids.size());
    for (int64_t s = 0; s < len; ++s) batch.ids[n * max_length + s] = ids[s], batch.mask[n * max_length + s] = 1;
  }
  return batch;
}

std::vector<int64_t> EpochOrder(int64_t count, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {
    std::mt19937_64 rng(seed * 1000003ULL + uint64_t(epoch));
    for (int64_t i = count - 1; i > 0; --i) {  // Fisher-Yates with our own draws: same order everywhere
      const int64_t j = int64_t(rng() % uint64_t(i + 1));
      std::swap(order[i], order[j]);
    }
  }
  return order;
}

}  // namespace openmoe
