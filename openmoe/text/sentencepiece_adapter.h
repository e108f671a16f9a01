// File: openmoe/text/sentencepiece_adapter.h
// A std-only wall around libsentencepiece: Debian's sentencepiece 0.1.97 headers declare their
// own `absl::string_view`, which clashes with the real Abseil, so no translation unit may
// include both. Only sentencepiece_adapter.cc includes <sentencepiece_processor.h>.
#ifndef OPENMOE_TEXT_SENTENCEPIECE_ADAPTER_H_
#define OPENMOE_TEXT_SENTENCEPIECE_ADAPTER_H_

#include <memory>
#include <string>
#include <vector>

namespace openmoe::internal {

class SentencePieceAdapter {
 public:
  SentencePieceAdapter();
  ~SentencePieceAdapter();
  // Returns an empty string on success, else the library's error.
  std::string Load(const std::string& path);
  std::string Encode(const std::string& text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids) const;
  int PieceSize() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace openmoe::internal

#endif  // OPENMOE_TEXT_SENTENCEPIECE_ADAPTER_H_
