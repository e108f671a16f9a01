#include "tools/logits_runner.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/io/token_batch.h"
#include "openmoe/model.h"

namespace openmoe::tools {
namespace {

template <class T>
absl::Status Run(const LogitsOptions& options, RoutingMode mode, const std::vector<int64_t>& ids,
                 const std::vector<int64_t>& mask, int64_t batch, int64_t seq_len);

}  // namespace

absl::Status RunLogits(const LogitsOptions& options) {
  RoutingMode mode;
  if (options.mode == "eval") {
    mode = RoutingMode::kEval;
  } else if (options.mode == "train") {
    mode = RoutingMode::kTrain;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--mode must be 'eval' or 'train', got '", options.mode, "'"));
  }
  if (options.dtype != "fp32" && options.dtype != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat("--dtype must be 'fp32' or 'bf16', got '", options.dtype, "'"));
  }
  OPENMOE_ASSIGN_OR_RETURN(io::TokenBatch inputs, io::ReadTokenBatch(options.inputs_path, "--inputs"));
  const std::vector<int64_t>& ids = inputs.ids;
  const std::vector<int64_t>& mask = inputs.mask;
  const int64_t batch = inputs.batch, seq_len = inputs.seq_len;

  setenv("OMP_PROC_BIND", "false", /*overwrite=*/0);  // silences Kokkos' binding advice
  Kokkos::ScopeGuard kokkos;
  return options.dtype == "bf16" ? Run<bf16>(options, mode, ids, mask, batch, seq_len)
                                 : Run<float>(options, mode, ids, mask, batch, seq_len);
}

namespace {

template <class T>
absl::Status Run(const LogitsOptions& options, RoutingMode mode, const std::vector<int64_t>& ids,
                 const std::vector<int64_t>& mask, int64_t batch, int64_t seq_len) {
  using Space = Kokkos::DefaultExecutionSpace;
  const auto start = std::chrono::steady_clock::now();
  OPENMOE_ASSIGN_OR_RETURN(auto model, (OpenMoeModel<Space, T>::Load(options.model_dir)));
  const auto loaded = std::chrono::steady_clock::now();
  std::fprintf(stderr, "loaded %s (%s) on %s in %.2f s\n", options.model_dir.c_str(), options.dtype.c_str(), Space::name(),
               std::chrono::duration<double>(loaded - start).count());
  OPENMOE_ASSIGN_OR_RETURN(std::vector<float> logits, model.Logits(ids, mask, batch, seq_len, mode));
  std::fprintf(stderr, "forward [%lld, %lld] (%s routing) in %.3f s\n", static_cast<long long>(batch),
               static_cast<long long>(seq_len), options.mode.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - loaded).count());
  std::vector<io::TensorToWrite> tensors(1);  // [B, S, V]
  tensors[0].name  = "logits";
  tensors[0].dtype = io::DType::kF32;
  tensors[0].shape = {batch, seq_len, model.config().vocab_size};
  tensors[0].data  = logits.data();
  const std::map<std::string, std::string> metadata = {
      {"model", options.model_dir}, {"mode", options.mode}, {"dtype", options.dtype}};
  OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors(options.output_path, tensors, metadata));
  std::fprintf(stderr, "wrote logits [%lld, %lld, %lld] to %s\n", static_cast<long long>(batch),
               static_cast<long long>(seq_len), static_cast<long long>(model.config().vocab_size),
               options.output_path.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace openmoe::tools
