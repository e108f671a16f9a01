#include "openmoe/parameter_layout.h"

#include "absl/strings/str_cat.h"

namespace openmoe {

namespace {

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool ParameterLayout::ContinuesFusedProduct(const std::string& name) { return EndsWith(name, ".up_proj.weight"); }

ParameterLayout::ParameterLayout(const std::vector<TensorSpec>& table) {
  int64_t end = 0;  // one past the last element placed
  for (const TensorSpec& spec : table) {
    const bool continues = !slots_.empty() && ContinuesFusedProduct(spec.name);
    const int64_t offset = continues ? end : (end + kAlignment - 1) / kAlignment * kAlignment;
    index_[spec.name] = slots_.size();
    slots_.push_back({spec.name, offset, spec.numel()});
    end = offset + spec.numel();
  }
  total_ = (end + kAlignment - 1) / kAlignment * kAlignment;
}

absl::StatusOr<ParameterSlot> ParameterLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return absl::NotFoundError(absl::StrCat("no parameter named '", name, "'"));
  return slots_[it->second];
}

}  // namespace openmoe
