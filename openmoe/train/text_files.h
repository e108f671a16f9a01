// File: openmoe/train/text_files.h
// Small text files of a training run (trainer_state.json, run_config.json, `latest`,
// metrics.jsonl): read whole, and written under a temporary name then renamed over the target, so
// that a reader (or a run killed mid-write) never sees half a file.
#ifndef OPENMOE_TRAIN_TEXT_FILES_H_
#define OPENMOE_TRAIN_TEXT_FILES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace openmoe::train {

absl::StatusOr<std::string> ReadText(const std::string& path);
// Writes `text` to `path`.tmp-<pid>, then renames it over `path`.
absl::Status WriteTextAtomically(const std::string& path, const std::string& text);

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_TEXT_FILES_H_
