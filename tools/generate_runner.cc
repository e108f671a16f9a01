#include "tools/generate_runner.h"

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>

#include <memory>
#include <type_traits>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "openmoe/config.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/layer_range.h"
#include "openmoe/runtime/generation.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/io/token_batch.h"
#include "openmoe/text/tokenizer.h"
#include "parallel/inference_expert_dispatcher.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_runtime.h"

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

// The ranks of an expert-parallel or pipeline run (world_size > 1): the MPI world, which the
// dispatcher or the pipeline stages and the broadcasts below use.
// (Only MakeRanks names MpiCommunicator<Space>, which exists for host spaces only.)
template <class Space>
struct Ranks {
  std::shared_ptr<comm::Communicator<Space>> comm;  // null on one rank
  MPI_Comm mpi = MPI_COMM_NULL;                     // comm's MPI communicator
  bool leader() const { return comm == nullptr || comm->rank() == 0; }
};

template <class Space>
absl::StatusOr<Ranks<Space>> MakeRanks(const GenerateRequest& request) {
  Ranks<Space> ranks;
  if (request.world_size <= 1) return ranks;
  if constexpr (std::is_same_v<typename Space::memory_space, Kokkos::HostSpace>) {
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<parallel::MpiCommunicator<Space>> world,
                             parallel::MpiCommunicator<Space>::World());
    ranks.mpi  = world->mpi_comm();
    ranks.comm = std::move(world);
    return ranks;
  } else {
    return absl::UnimplementedError(absl::StrCat("--parallel ", request.parallel, " on ", Space::name(),
                                                 " ranks needs NCCL, which is not supported yet; host ranks only"));
  }
}

// Rank 0's ids / mask [batch, len] to every rank (the others' vectors are replaced).
template <class Space>
absl::Status BroadcastPrompts(const Ranks<Space>& ranks, std::vector<int64_t>& ids, std::vector<int64_t>& mask,
                              int64_t& batch, int64_t& len) {
  if (ranks.comm == nullptr) return absl::OkStatus();
  int64_t shape[2] = {batch, len};
  MPI_Comm comm = ranks.mpi;
  OPENMOE_RETURN_IF_ERROR(parallel::MpiResult(MPI_Bcast(shape, 2, MPI_INT64_T, 0, comm), "MPI_Bcast (prompt shape)"));
  batch = shape[0], len = shape[1];
  ids.resize(batch * len), mask.resize(batch * len);
  OPENMOE_RETURN_IF_ERROR(parallel::MpiResult(MPI_Bcast(ids.data(), int(ids.size()), MPI_INT64_T, 0, comm), "MPI_Bcast (input_ids)"));
  return parallel::MpiResult(MPI_Bcast(mask.data(), int(mask.size()), MPI_INT64_T, 0, comm), "MPI_Bcast (attention_mask)");
}

// Ends every rank unless all ranks produced the same `step` ids (they run the same computation on
// the same batch; a difference would make them stop at different steps and hang).
template <class Space>
void CheckSameIds(const Ranks<Space>& ranks, const std::vector<int64_t>& step, int64_t step_index) {
  const int64_t B = int64_t(step.size());
  std::vector<int64_t> bounds(2 * B);  // [max ids | max of -ids]
  for (int64_t b = 0; b < B; ++b) bounds[b] = step[b], bounds[B + b] = -step[b];
  absl::Status status = parallel::MpiResult(
      MPI_Allreduce(MPI_IN_PLACE, bounds.data(), int(2 * B), MPI_INT64_T, MPI_MAX, ranks.mpi),
      "MPI_Allreduce (step ids)");
  for (int64_t b = 0; status.ok() && b < B; ++b) {
    if (bounds[b] != -bounds[B + b]) {
      status = absl::InternalError(absl::StrCat("--parallel: the ranks produced different ids at step ", step_index,
                                                ", row ", b, " (from ", -bounds[B + b], " to ", bounds[b], ")"));
    }
  }
  if (!status.ok()) parallel::AbortAll(status);
}

// Pipeline: the last stage's prompt logits [B, P, V] (`count` floats) to rank 0, which writes them;
// the other stages hold none. Nothing to do on one rank or without a pipeline.
template <class Space>
absl::Status LogitsToLeader(const Ranks<Space>& ranks, bool pipeline, int64_t count, std::vector<float>& logits) {
  if (ranks.comm == nullptr || !pipeline) return absl::OkStatus();
  const int last = ranks.comm->size() - 1, rank = ranks.comm->rank();
  if (count > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("--output_logits_file: ", count, " logits are too many for one MPI message"));
  }
  constexpr int kTag = 17;
  if (rank == last) {
    return parallel::MpiResult(MPI_Send(logits.data(), int(count), MPI_FLOAT, 0, kTag, ranks.mpi), "MPI_Send (prompt logits)");
  }
  if (rank != 0) return absl::OkStatus();
  logits.resize(count);
  return parallel::MpiResult(MPI_Recv(logits.data(), int(count), MPI_FLOAT, last, kTag, ranks.mpi, MPI_STATUS_IGNORE),
                             "MPI_Recv (prompt logits)");
}

// The model of this rank: the whole one, or under --parallel pipeline its stage (rank r of N holds
// layers [r L / N, (r + 1) L / N), the embedding on rank 0, the final norm and LM head on rank N - 1,
// and only their weights and KV cache).
template <class Space, class T>
absl::StatusOr<OpenMoeModel<Space, T>> LoadModel(const GenerateRequest& request, const Ranks<Space>& ranks) {
  if (request.parallel != "pipeline" || ranks.comm == nullptr) return OpenMoeModel<Space, T>::Load(request.model_dir);
  absl::StatusOr<OpenMoeModel<Space, T>> stage = OpenMoeModel<Space, T>::LoadStage(request.model_dir, ranks.comm);
  if (!stage.ok()) return absl::Status(stage.status().code(), absl::StrCat("--parallel pipeline: ", stage.status().message()));
  const LayerRange& r = stage->layers();
  std::fprintf(stderr, "pipeline stage %d of %d: %s, %.3f MiB of weights\n", ranks.comm->rank(),
               ranks.comm->size(), r.ToString().c_str(), double(stage->WeightBytes()) / (1 << 20));
  return stage;
}

template <class T>
absl::Status Run(const GenerateRequest& request) {
  using Space = Kokkos::DefaultExecutionSpace;
  OPENMOE_ASSIGN_OR_RETURN(const Ranks<Space> ranks, MakeRanks<Space>(request));
  const bool leader = ranks.leader();
  // Prompts: token ids from a file, or text through the model folder's tokenizer (read by rank 0,
  // broadcast; every rank loads the tokenizer, which the stop rules use).
  std::optional<Tokenizer> tokenizer;
  std::vector<int64_t> ids, mask;
  int64_t batch = 0, len = 0;
  if (!request.input_ids_file.empty()) {
    if (leader) {
      OPENMOE_ASSIGN_OR_RETURN(io::TokenBatch inputs, io::ReadTokenBatch(request.input_ids_file, "--input_ids_file"));
      ids = std::move(inputs.ids), mask = std::move(inputs.mask), batch = inputs.batch, len = inputs.seq_len;
    }
  } else if (!leader) {
    OPENMOE_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::Load(request.model_dir));
    tokenizer = std::move(t);
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
  OPENMOE_RETURN_IF_ERROR(BroadcastPrompts(ranks, ids, mask, batch, len));

  // --parallel expert: every rank loads the whole model (the experts of other ranks stay unused:
  // loading only the own experts is a follow-up). --parallel pipeline: each rank its stage only.
  const bool pipeline = request.parallel == "pipeline";
  OPENMOE_ASSIGN_OR_RETURN(auto model, (LoadModel<Space, T>(request, ranks)));
  if (leader) {
    std::fprintf(stderr, "model %s (%s, %s), %lld prompt(s) of %lld tokens, seed %llu\n",
                 request.model_dir.c_str(), request.dtype.c_str(), Space::name(), static_cast<long long>(batch),
                 static_cast<long long>(len), static_cast<unsigned long long>(request.sampling.seed));
  }
  if (ranks.comm != nullptr && !pipeline) {
    {
      const int64_t E = model.config().num_experts, P = ranks.comm->size();
      absl::StatusOr<std::shared_ptr<parallel::InferenceExpertDispatcher<Space>>> dispatcher =
          parallel::InferenceExpertDispatcher<Space>::Create(ranks.comm, E);
      if (!dispatcher.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("--parallel expert: ", dispatcher.status().message(), " (num_experts)"));
      }
      model.set_token_dispatcher(*std::move(dispatcher));
      if (leader) {
        std::fprintf(stderr, "expert parallel: %lld experts over %lld ranks (%lld each), dense layers on every rank\n",
                     (long long)E, (long long)P, (long long)(E / P));
      }
    }
  }

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
    if (request.stream && batch == 1 && leader) {
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
  if (ranks.comm != nullptr) {  // every rank the same ids each step (before any printing)
    auto print = std::move(options.on_step);
    options.on_step = [&ranks, print, step_index = int64_t(0)](const std::vector<int64_t>& step) mutable {
      CheckSameIds(ranks, step, step_index++);
      if (print) print(step);
    };
  }
  OPENMOE_ASSIGN_OR_RETURN(GenerationResult result, Generate(model, ids, mask, batch, len, options));
  // The prompt's logits from a fresh forward pass (its own KV cache; the prompt is one routing
  // group, as in prefill): collective on several ranks, so every rank runs it.
  std::vector<float> prompt_logits;  // [B, P, V]
  if (!request.output_logits_file.empty()) {
    OPENMOE_ASSIGN_OR_RETURN(prompt_logits, model.Logits(ids, mask, batch, len, RoutingMode::kEval));
    OPENMOE_RETURN_IF_ERROR(LogitsToLeader(ranks, pipeline, batch * len * model.config().vocab_size, prompt_logits));
  }
  if (!leader) return absl::OkStatus();  // rank 0 prints and writes

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
  if (!request.output_logits_file.empty()) {
    std::vector<io::TensorToWrite> tensors(1);
    tensors[0].name  = "prompt_logits";
    tensors[0].dtype = io::DType::kF32;
    tensors[0].shape = {batch, len, model.config().vocab_size};
    tensors[0].data  = prompt_logits.data();
    OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors(request.output_logits_file, tensors));
    std::fprintf(stderr, "wrote prompt_logits [%lld, %lld, %lld] to %s\n", static_cast<long long>(batch),
                 static_cast<long long>(len), static_cast<long long>(model.config().vocab_size),
                 request.output_logits_file.c_str());
  }
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
  if (request.world_size > 1) {  // before any work, the same answer on every rank
    if (request.parallel != "expert" && request.parallel != "pipeline") {
      return absl::InvalidArgumentError(absl::StrCat("--parallel must be 'expert' or 'pipeline' on ", request.world_size,
                                                     " ranks, got '", request.parallel, "'"));
    }
    absl::StatusOr<OpenMoeConfig> config = LoadConfig(request.model_dir + "/config.json");
    if (config.ok() && request.parallel == "pipeline" && config->num_hidden_layers < request.world_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--parallel pipeline puts at least one layer on each rank, but the model has ", config->num_hidden_layers,
          " layers (num_hidden_layers) for ", request.world_size, " ranks; use at most ", config->num_hidden_layers,
          " ranks"));
    }
    if (config.ok() && request.parallel == "expert" && config->num_experts % request.world_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--parallel expert splits the experts over the ranks, but the model's ", config->num_experts,
          " experts (num_experts) cannot be split evenly over ", request.world_size,
          " ranks; use a world size dividing ", config->num_experts));
    }
  }
  setenv("OMP_PROC_BIND", "false", /*overwrite=*/0);  // silences Kokkos' binding advice
  Kokkos::ScopeGuard kokkos;
  const absl::Status status = request.dtype == "bf16" ? Run<bf16>(request) : Run<float>(request);
  // Under mpirun the other ranks may wait in a collective for this one: end them all.
  if (!status.ok() && request.world_size > 1) parallel::AbortAll(status);
  return status;
}

}  // namespace openmoe::tools
