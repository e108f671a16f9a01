#include "tools/generate_runner.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/runtime/generation.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/io/token_batch.h"
#include "openmoe/text/tokenizer.h"

namespace openmoe::tools {
namespace {

constexpr char kForcedStopText[] = "</s>";  // OpenMoE often spells its EOS as text (spec 5.2)

// Cuts `text` at the first stop string or at the spelled-out </s>; true if it was cut.
bool CutAtStop(std::string& text, const std::vector<std::string>& stops) {
  size_t cut = text.find(kForcedStopText);
  for (const std::string& s : stops) cut = std::min(cut, s.empty() ? std::string::npos : text.find(s));
  if (cut == std::string::npos) return false;
  text.resize(cut);
  return true;
}

template <class T>
absl::Status Run(const GenerateRequest& request) {
  using Space = Kokkos::DefaultExecutionSpace;
  // Prompts: token ids from a file, or text through the model folder's tokenizer.
  std::optional<Tokenizer> tokenizer;
  std::vector<int64_t> ids, mask;
  int64_t batch = 0, len = 0;
  if (!request.input_ids_file.empty()) {
    OPENMOE_ASSIGN_OR_RETURN(io::TokenBatch inputs, io::ReadTokenBatch(request.input_ids_file, "--input_ids_file"));
    ids = std::move(inputs.ids), mask = std::move(inputs.mask), batch = inputs.batch, len = inputs.seq_len;
  } else {
    OPENMOE_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::Load(request.model_dir));
    tokenizer = std::move(t);
    std::vector<std::vector<int64_t>> rows;
    for (const std::string& prompt : request.prompts) {
      if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty (give --prompt, --prompt_file (- for stdin) or --batch_file)");
      const std::string text = request.chat ? FormatChatPrompt(request.system, prompt) : prompt;
      OPENMOE_ASSIGN_OR_RETURN(std::vector<int64_t> row, tokenizer->Encode(text));
      rows.push_back(std::move(row));
    }
    LeftPad(rows, tokenizer->pad_id(), ids, mask, len);
    batch = int64_t(rows.size());
  }

  OPENMOE_ASSIGN_OR_RETURN(auto model, (OpenMoeModel<Space, T>::Load(request.model_dir)));
  std::fprintf(stderr, "model %s (%s, %s), %lld prompt(s) of %lld tokens, seed %llu\n",
               request.model_dir.c_str(), request.dtype.c_str(), Space::name(), static_cast<long long>(batch),
               static_cast<long long>(len), static_cast<unsigned long long>(request.sampling.seed));

  GenerationOptions options;
  options.max_new_tokens = request.max_new_tokens;
  options.sampling       = request.sampling;
  std::vector<std::string> printed(batch);
  if (tokenizer) {
    options.allowed_vocab = tokenizer->vocab_size();  // never emit ids the tokenizer cannot decode
    options.row_done = [&](int64_t, const std::vector<int64_t>& generated) {
      std::string text = tokenizer->Decode(generated);
      return CutAtStop(text, request.stop);
    };
    if (request.stream && batch == 1) {
      std::vector<int64_t> generated;
      options.on_step = [&, generated](const std::vector<int64_t>& step) mutable {
        generated.push_back(step[0]);
        std::string text = tokenizer->Decode(generated);
        CutAtStop(text, request.stop);
        // Print only whole new text (a multi-byte character may still be incomplete).
        if (text.size() > printed[0].size() && IsValidUtf8(text)) {
          std::fwrite(text.data() + printed[0].size(), 1, text.size() - printed[0].size(), stdout);
          std::fflush(stdout);
          printed[0] = text;
        }
      };
    }
  }
  OPENMOE_ASSIGN_OR_RETURN(GenerationResult result, Generate(model, ids, mask, batch, len, options));

  if (tokenizer) {
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<int64_t> row(result.ids.begin() + b * result.steps, result.ids.begin() + (b + 1) * result.steps);
      std::string text = tokenizer->Decode(row);
      CutAtStop(text, request.stop);
      if (request.stream && batch == 1) {
        if (text.size() > printed[0].size()) std::fwrite(text.data() + printed[0].size(), 1, text.size() - printed[0].size(), stdout);
        std::printf("\n");
        std::fflush(stdout);  // the text's line ends before the statistics on stderr
      } else {
        std::printf("%s[%lld] %s\n", b == 0 ? "" : "", static_cast<long long>(b), text.c_str());
      }
    }
  }
  const double decode_tokens = double(result.steps - 1) * batch;
  std::fprintf(stderr, "prefill %lld tokens in %.3f s (time to first token); decode %lld steps x %lld rows in %.3f s (%.1f tokens/s)\n",
               static_cast<long long>(batch * len), result.prefill_seconds, static_cast<long long>(result.steps),
               static_cast<long long>(batch), result.decode_seconds,
               result.decode_seconds > 0 ? decode_tokens / result.decode_seconds : 0.0);
  if (!request.output_ids_file.empty()) {
    std::vector<io::TensorToWrite> tensors(1);
    tensors[0].name  = "output_ids";
    tensors[0].dtype = io::DType::kI64;
    tensors[0].shape = {batch, result.steps};
    tensors[0].data  = result.ids.data();
    OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors(request.output_ids_file, tensors));
    std::fprintf(stderr, "wrote output_ids [%lld, %lld] to %s\n", static_cast<long long>(batch),
                 static_cast<long long>(result.steps), request.output_ids_file.c_str());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunGenerate(const GenerateRequest& request) {
  if (request.dtype != "fp32" && request.dtype != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat("--dtype must be 'fp32' or 'bf16', got '", request.dtype, "'"));
  }
  OPENMOE_RETURN_IF_ERROR(ValidateSampling(request.sampling));
  setenv("OMP_PROC_BIND", "false", /*overwrite=*/0);  // silences Kokkos' binding advice
  Kokkos::ScopeGuard kokkos;
  return request.dtype == "bf16" ? Run<bf16>(request) : Run<float>(request);
}

}  // namespace openmoe::tools
