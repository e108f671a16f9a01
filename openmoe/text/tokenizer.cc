#include "openmoe/text/tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace openmoe {

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& model_dir) {
  for (const char* name : {"tokenizer.model", "spiece.model"}) {
    const std::string path = model_dir + "/" + name;
    if (std::filesystem::exists(path)) return LoadFile(path);
  }
  return absl::NotFoundError(absl::StrCat("model folder '", model_dir,
                                          "' has no tokenizer (tokenizer.model or spiece.model); pass "
                                          "token ids with --input_ids_file instead"));
}

absl::StatusOr<Tokenizer> Tokenizer::LoadFile(const std::string& path) {
  Tokenizer t;
  t.processor_ = std::make_shared<internal::SentencePieceAdapter>();
  const std::string error = t.processor_->Load(path);
  if (!error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load SentencePiece model '", path, "': ", error));
  }
  t.path_ = path;
  return t;
}

absl::StatusOr<std::vector<int64_t>> Tokenizer::Encode(const std::string& text, bool add_bos) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("the prompt is not valid UTF-8 text");
  std::vector<int> pieces;
  const std::string error = processor_->Encode(text, &pieces);
  if (!error.empty()) return absl::InvalidArgumentError(absl::StrCat("tokenizing failed: ", error));
  std::vector<int64_t> ids;
  if (add_bos) ids.push_back(pad_id());
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int64_t>& ids) const {
  std::vector<int> pieces;
  for (int64_t id : ids)
    if (id >= 0 && id < vocab_size()) pieces.push_back(int(id));
  return processor_->Decode(pieces);
}

int64_t Tokenizer::vocab_size() const { return processor_->PieceSize(); }

bool IsValidUtf8(const std::string& text) {
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = text[i];
    size_t len;
    if (c < 0x80) len = 1;
    else if ((c & 0xe0) == 0xc0) len = 2;
    else if ((c & 0xf0) == 0xe0) len = 3;
    else if ((c & 0xf8) == 0xf0) len = 4;
    else return false;                                      // stray continuation or invalid byte
    if (c == 0xc0 || c == 0xc1 || c > 0xf4) return false;  // overlong, or beyond U+10FFFF
    if (i + len > n) return false;                          // truncated sequence
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(text[i + k]) & 0xc0) != 0x80) return false;
    i += len;
  }
  return true;
}

void LeftPad(const std::vector<std::vector<int64_t>>& rows, int64_t pad_id, std::vector<int64_t>& ids,
             std::vector<int64_t>& mask, int64_t& length) {
  length = 0;
  for (const auto& r : rows) length = std::max<int64_t>(length, r.size());
  ids.assign(rows.size() * length, pad_id);
  mask.assign(rows.size() * length, 0);
  for (size_t b = 0; b < rows.size(); ++b) {
    const int64_t offset = length - int64_t(rows[b].size());
    for (size_t j = 0; j < rows[b].size(); ++j) {
      ids[b * length + offset + j]  = rows[b][j];
      mask[b * length + offset + j] = 1;
    }
  }
}

std::string FormatChatPrompt(const std::string& system, const std::string& user) {
  return absl::StrCat("<<SYS>>\n", system, "\n<</SYS>>\n\n<s>[INST] ", user, " [/INST]");
}

}  // namespace openmoe
