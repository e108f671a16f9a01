#include "openmoe/text/sentencepiece_adapter.h"

#include <sentencepiece_processor.h>

namespace openmoe::internal {

struct SentencePieceAdapter::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SentencePieceAdapter::SentencePieceAdapter() : impl_(new Impl) {}
SentencePieceAdapter::~SentencePieceAdapter() = default;

std::string SentencePieceAdapter::Load(const std::string& path) {
  const auto status = impl_->processor.Load(path);
  return status.ok() ? "" : status.ToString();
}

std::string SentencePieceAdapter::Encode(const std::string& text, std::vector<int>* ids) const {
  const auto status = impl_->processor.Encode(text, ids);
  return status.ok() ? "" : status.ToString();
}

std::string SentencePieceAdapter::Decode(const std::vector<int>& ids) const {
  std::string text;
  impl_->processor.Decode(ids, &text).IgnoreError();
  return text;
}

int SentencePieceAdapter::PieceSize() const { return impl_->processor.GetPieceSize(); }

}  // namespace openmoe::internal
