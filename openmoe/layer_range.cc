#include "openmoe/layer_range.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace openmoe {

std::string LayerRange::ToString() const {
  return absl::StrCat(embedding ? "embedding + " : "", "layers [", first, ", ", end, ")",
                      head ? " + final norm + LM head" : "");
}

LayerRange WholeModel(const OpenMoeConfig& config) { return LayerRange{0, config.num_hidden_layers, true, true}; }

absl::StatusOr<LayerRange> PipelineStageLayers(const OpenMoeConfig& config, int64_t stage, int64_t stages) {
  const int64_t L = config.num_hidden_layers;
  if (stages < 1 || stages > L) {
    return absl::InvalidArgumentError(absl::StrCat("a pipeline of ", stages, " stages needs 1 to ", L,
                                                   " stages: the model has ", L,
                                                   " layers (num_hidden_layers) and each stage needs one"));
  }
  if (stage < 0 || stage >= stages) {
    return absl::InvalidArgumentError(absl::StrCat("pipeline stage ", stage, " is outside [0, ", stages, ")"));
  }
  return LayerRange{stage * L / stages, (stage + 1) * L / stages, stage == 0, stage == stages - 1};
}

std::vector<TensorSpec> StageCheckpointTable(const OpenMoeConfig& config, const LayerRange& range) {
  std::vector<TensorSpec> part;
  for (TensorSpec& spec : CheckpointTable(config)) {
    bool held = false;
    absl::string_view rest = spec.name;
    if (absl::ConsumePrefix(&rest, "model.layers.")) {  // "model.layers.<i>.<tensor>"
      int64_t layer = -1;
      held = absl::SimpleAtoi(rest.substr(0, rest.find('.')), &layer) && range.contains(layer);
    } else if (spec.name == "model.embed_tokens.weight") {
      held = range.embedding;
    } else {  // model.norm.weight, lm_head.weight
      held = range.head;
    }
    if (held) part.push_back(std::move(spec));
  }
  return part;
}

}  // namespace openmoe
