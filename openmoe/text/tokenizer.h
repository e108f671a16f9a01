// File: openmoe/text/tokenizer.h
// The OpenMoE tokenizer (umT5 SentencePiece, 256000 pieces) as the Hub's OpenMoeTokenizer
// uses it: <pad> (id 0) is the BOS and is prepended, </s> (id 1) is the EOS and is not appended,
// batches are left-padded. The model's logits cover more ids (256384) than the tokenizer has;
// vocab_size() is the limit generation must respect.
#ifndef OPENMOE_TEXT_TOKENIZER_H_
#define OPENMOE_TEXT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "openmoe/text/sentencepiece_adapter.h"

namespace openmoe {

class Tokenizer {
 public:
  // Loads `model_dir`/tokenizer.model or `model_dir`/spiece.model.
  static absl::StatusOr<Tokenizer> Load(const std::string& model_dir);
  static absl::StatusOr<Tokenizer> LoadFile(const std::string& path);

  // Text -> ids, with <pad> prepended when add_bos. Rejects text that is not valid UTF-8.
  absl::StatusOr<std::vector<int64_t>> Encode(const std::string& text, bool add_bos = true) const;
  // Ids -> text; special pieces (<pad>, </s>) decode to nothing, ids beyond the pieces are skipped.
  std::string Decode(const std::vector<int64_t>& ids) const;
  int64_t vocab_size() const;
  int64_t pad_id() const { return 0; }
  int64_t eos_id() const { return 1; }
  const std::string& path() const { return path_; }

 private:
  std::shared_ptr<internal::SentencePieceAdapter> processor_;
  std::string path_;
};

// True if `text` is well-formed UTF-8.
bool IsValidUtf8(const std::string& text);

// Left-pads rows of ids to a common length with `pad_id`; mask 0 on padding. Returns [B, P].
void LeftPad(const std::vector<std::vector<int64_t>>& rows, int64_t pad_id, std::vector<int64_t>& ids,
             std::vector<int64_t>& mask, int64_t& length);

// OpenMoE-8B-Chat prompt (spec 5.2): "<<SYS>>\n{system}\n<</SYS>>\n\n<s>[INST] {user} [/INST]".
// The `<s>` is literal text (umT5 has no <s> special token), as in the model's README prompt.
std::string FormatChatPrompt(const std::string& system, const std::string& user);
inline constexpr char kDefaultSystemPrompt[] = "You are a helpful, respectful and honest assistant.";

}  // namespace openmoe

#endif  // OPENMOE_TEXT_TOKENIZER_H_
