// logits: runs the OpenMoE forward pass on a Hugging Face model folder and writes float32
// logits; the numerical-regression tool of the reproducibility suite.
//
//   bazel run //tools:logits -- --model DIR --inputs in.safetensors --output out.safetensors \
//       [--mode eval|train] [--dtype fp32|bf16]
// Relative paths resolve against the directory bazel was run from.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "tools/logits_runner.h"

ABSL_FLAG(std::string, model, "", "Model folder: config.json + model.safetensors | "
          "model.safetensors.index.json | pytorch_model.bin | pytorch_model.bin.index.json.");
ABSL_FLAG(std::string, inputs, "", "Safetensors file with int64 input_ids [B, S] and "
          "attention_mask [B, S] (1 = token, 0 = padding; optional, default all 1).");
ABSL_FLAG(std::string, output, "", "Safetensors file to write: float32 logits [B, S, V] (atomic).");
ABSL_FLAG(std::string, mode, "eval", "Routing mode: eval (capacity factor "
          "router_capacity_factor_eval, 2.0) or train (router_capacity_factor_train, 1.25).");
ABSL_FLAG(std::string, dtype, "fp32", "Run dtype of weights and activations: fp32 or bf16 "
          "(bf16 storage, float32 accumulation, softmax and router probabilities).");

namespace {

std::string Resolve(const std::string& path) {
  const char* cwd = std::getenv("BUILD_WORKING_DIRECTORY");  // set by `bazel run`
  if (path.empty() || path[0] == '/' || cwd == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes the float32 logits of an OpenMoE checkpoint for given token ids.\n"
      "  bazel run //tools:logits -- --model DIR --inputs IN.safetensors --output OUT.safetensors "
      "[--mode eval|train]");
  absl::ParseCommandLine(argc, argv);
  openmoe::tools::LogitsOptions options;
  options.model_dir   = Resolve(absl::GetFlag(FLAGS_model));
  options.inputs_path = Resolve(absl::GetFlag(FLAGS_inputs));
  options.output_path = Resolve(absl::GetFlag(FLAGS_output));
  options.mode        = absl::GetFlag(FLAGS_mode);
  options.dtype       = absl::GetFlag(FLAGS_dtype);
  for (auto [flag, value] : {std::make_pair("--model", options.model_dir),
                             std::make_pair("--inputs", options.inputs_path),
                             std::make_pair("--output", options.output_path)}) {
    if (value.empty()) {
      std::fprintf(stderr, "logits: %s is required (see --help)\n", flag);
      return 2;
    }
  }
  const absl::Status status = openmoe::tools::RunLogits(options);
  if (!status.ok()) {
    std::fprintf(stderr, "logits: error: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
