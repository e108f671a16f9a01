#include "openmoe/io/token_batch.h"

#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/io/safetensors.h"

namespace openmoe::io {

absl::StatusOr<TokenBatch> ReadTokenBatch(const std::string& path, const std::string& flag) {
  OPENMOE_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  const TensorInfo* ids = file.Find("input_ids");
  if (ids == nullptr || ids->shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "' must hold int64 'input_ids' [B, S]"));
  }
  TokenBatch batch;
  batch.batch = ids->shape[0], batch.seq_len = ids->shape[1];
  batch.ids.resize(batch.batch * batch.seq_len);
  batch.mask.assign(batch.batch * batch.seq_len, 1);
  OPENMOE_RETURN_IF_ERROR(file.ReadAsInt64("input_ids", batch.ids.data(), batch.ids.size()));
  if (const TensorInfo* mask = file.Find("attention_mask"); mask != nullptr) {
    if (mask->shape != ids->shape) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': attention_mask has shape ",
                                                     mask->ShapeString(), ", input_ids ", ids->ShapeString()));
    }
    OPENMOE_RETURN_IF_ERROR(file.ReadAsInt64("attention_mask", batch.mask.data(), batch.mask.size()));
  }
  return batch;
}

}  // namespace openmoe::io
