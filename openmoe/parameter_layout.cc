#include "openmoe/parameter_layout.h"

#include "absl/strings/str_cat.h"

namespace openmoe {

ParameterLayout::ParameterLayout(const std::vector<TensorSpec>& table) {
  for (const TensorSpec& spec : table) {
    index_[spec.name] = slots_.size();
    slots_.push_back({spec.name, total_, spec.numel()});
    total_ += (spec.numel() + kAlignment - 1) / kAlignment * kAlignment;
  }
}

absl::StatusOr<ParameterSlot> ParameterLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return absl::NotFoundError(absl::StrCat("no parameter named '", name, "'"));
  return slots_[it->second];
}

}  // namespace openmoe
