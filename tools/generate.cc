// generate: text (or token ids) from an OpenMoE checkpoint with a KV cache, on the default
// Kokkos backend of the build (OpenMP on host, CUDA with --config=cuda).
//
//   bazel run //tools:generate                                  # embedded tiny default model
//   bazel run //tools:generate -- --model DIR --chat --prompt "How do I kill a process?"
//   bazel run //tools:generate -- --model DIR --batch_file prompts.txt --max_new_tokens 64
//   bazel run //tools:generate -- --model DIR --input_ids_file in.safetensors --output_ids_file out.safetensors
//   mpirun -np 2 bazel-bin/tools/generate --parallel expert --model DIR ...   # experts over 2 host ranks
//   mpirun -np 2 bazel-bin/tools/generate --parallel pipeline --model DIR ... # layers over 2 host ranks
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "tools/cli_flags.h"
#include "parallel/mpi_runtime.h"
#include "tools/generate_runner.h"

ABSL_FLAG(std::string, model, "", "Model folder (config.json, weights, tokenizer.model or spiece.model). "
          "Default: the checkpoint of `bazel run //tools:train`'s default run (outputs/default_finetune) if it "
          "exists, else the embedded tiny random model (tools/default_model).");
ABSL_FLAG(std::string, prompt, "", "Prompt text. Default when no prompt source is given: a short sample prompt.");
ABSL_FLAG(std::string, prompt_file, "", "Read the prompt from this file; '-' reads standard input.");
ABSL_FLAG(std::string, batch_file, "", "One prompt per line, generated together as one left-padded batch.");
ABSL_FLAG(bool, chat, false, "Wrap each prompt in the OpenMoE-8B-Chat template "
          "(<<SYS>>\\n{system}\\n<</SYS>>\\n\\n<s>[INST] {prompt} [/INST]).");
ABSL_FLAG(std::string, system, "You are a helpful, respectful and honest assistant.", "System prompt for --chat.");
ABSL_FLAG(int64_t, max_new_tokens, 32, "Tokens to generate per prompt (at most).");
ABSL_FLAG(bool, greedy, true, "Pick the most likely token. Giving --temperature, --top_k or --top_p "
          "switches to sampling; combining them with an explicit --greedy is an error.");
ABSL_FLAG(float, temperature, 1.0f, "Sampling temperature (> 0).");
ABSL_FLAG(int64_t, top_k, 50, "Sample among the k most likely tokens (0 = all), as HF's default 50.");
ABSL_FLAG(float, top_p, 1.0f, "Nucleus sampling: the smallest set with this much probability (1 = off).");
ABSL_FLAG(float, repetition_penalty, 1.0f, "HF repetition penalty on tokens already in the row (1 = off).");
ABSL_FLAG(uint64_t, seed, 0, "Random seed for sampling (printed).");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Comma-separated strings that end a row's text when produced.");
ABSL_FLAG(std::string, dtype, "fp32", "Run dtype: fp32 or bf16.");
ABSL_FLAG(bool, stream, true, "Print text as it is produced (single prompt).");
ABSL_FLAG(std::string, input_ids_file, "", "Safetensors with int64 input_ids [B, P] (+ attention_mask): no "
          "tokenizer needed, every vocabulary id may be produced.");
ABSL_FLAG(std::string, output_ids_file, "", "Write the generated ids as int64 output_ids [B, new_tokens].");
ABSL_FLAG(std::string, output_logits_file, "", "Also write the float32 logits of the prompt as prompt_logits [B, P, V] "
          "(one extra forward pass over the prompt after generating; compares runs, e.g. --parallel expert with one device).");
ABSL_FLAG(std::string, parallel, "", "Under mpirun -np N (host ranks): 'expert' splits the experts over the N ranks "
          "(num_experts % N == 0; dense layers and the whole batch on every rank). 'pipeline' makes rank r the "
          "stage with layers [r L / N, (r + 1) L / N) of the L layers (2 <= N <= L; each rank holds only its "
          "layers' weights and KV cache, the embedding on rank 0, the final norm and LM head on rank N - 1, "
          "which picks every token and broadcasts it). Both give the same ids as one device. Rank 0 reads the "
          "prompts and prints / writes the output. Without mpirun (one rank) 'expert' has no effect (the "
          "single-device run) and 'pipeline' is an error.");

namespace {

using openmoe::tools::FlagGiven;
using openmoe::tools::ResolvePath;

constexpr char kDefaultModel[] = "tools/default_model/openmoe-tiny-random";  // runfiles path
constexpr char kDefaultPrompt[] = "The capital of France is";

// The default model: the checkpoint of `bazel run //tools:train`'s default run when it exists
// (outputs/default_finetune/latest in the workspace), else the embedded random tiny model.
std::string DefaultModel() {
  const std::string root = openmoe::tools::DefaultFinetuneDir();
  std::ifstream latest(root + "/latest");
  std::string name;
  if (latest >> name) {
    const std::string dir = root + "/" + name;
    if (std::ifstream(dir + "/config.json")) return dir;
  }
  return kDefaultModel;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "generate: error: %s\n", message.c_str());
  return 1;
}

bool ReadAll(const std::string& path, std::string& out) {
  std::stringstream text;
  if (path == "-") {
    text << std::cin.rdbuf();
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    text << in.rdbuf();
  }
  out = text.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Generates text with an OpenMoE checkpoint (KV cache; greedy or sampled).\n"
      "  bazel run //tools:generate -- [--model DIR] [--prompt TEXT | --prompt_file F | --batch_file F]\n"
      "      [--chat [--system TEXT]] [--max_new_tokens N] [--greedy | --temperature T --top_k K --top_p P]\n"
      "      [--repetition_penalty R] [--seed S] [--stop a,b] [--dtype fp32|bf16]\n"
      "      [--input_ids_file IN --output_ids_file OUT]\n"
      "  mpirun -np N bazel-bin/tools/generate --parallel expert [flags above]     # experts over N host ranks\n"
      "  mpirun -np N bazel-bin/tools/generate --parallel pipeline [flags above]   # layer stages over N host ranks");
  // MPI first (it may edit argv), only when mpirun started this process (it sets
  // OMPI_COMM_WORLD_SIZE): a plain run is a world of one without MPI, as //tools:train.
  std::unique_ptr<openmoe::parallel::MpiSession> session;
  int world_rank = 0, world_size = 1;
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {
    absl::StatusOr<std::unique_ptr<openmoe::parallel::MpiSession>> created =
        openmoe::parallel::MpiSession::Create(&argc, &argv);
    if (!created.ok()) openmoe::parallel::AbortAll(created.status());
    session = std::move(*created);
    world_rank = session->world_rank(), world_size = session->world_size();
  }
  openmoe::tools::RecordArgs(argc, argv);
  absl::ParseCommandLine(argc, argv);
  // Every rank checks the same flags and stops alike; only rank 0 says why.
  const auto fail = [&](const std::string& message) { return world_rank == 0 ? Fail(message) : 1; };
  const std::string parallel = absl::GetFlag(FLAGS_parallel);
  if (FlagGiven("parallel") && parallel != "expert" && parallel != "pipeline") {
    return fail("--parallel must be 'expert' or 'pipeline', got '" + parallel + "'");
  }
  if (parallel == "pipeline" && world_size < 2) {
    return fail("--parallel pipeline splits the layers over the ranks of mpirun -np N (N >= 2), but this run has "
                "one rank: start it with mpirun -np N, or leave out --parallel for one device");
  }
  if (world_size > 1 && parallel.empty()) {
    return fail("this run has " + std::to_string(world_size) + " ranks (mpirun): give --parallel expert or "
                "--parallel pipeline, or run without mpirun on one device");
  }
  if (world_size == 1 && FlagGiven("parallel")) {
    std::fprintf(stderr, "--parallel %s: one rank (not started by mpirun -np N > 1), no effect: a single-device run\n",
                 parallel.c_str());
  }
  openmoe::tools::GenerateRequest r;
  r.parallel = parallel, r.world_rank = world_rank, r.world_size = world_size;
  r.model_dir = FlagGiven("model") ? ResolvePath(absl::GetFlag(FLAGS_model)) : DefaultModel();
  if (!FlagGiven("model") && world_rank == 0) std::fprintf(stderr, "model: %s\n", r.model_dir.c_str());

  // Prompt sources: exactly one of --prompt, --prompt_file, --batch_file, --input_ids_file.
  int sources = FlagGiven("prompt") + FlagGiven("prompt_file") + FlagGiven("batch_file") + FlagGiven("input_ids_file");
  if (sources > 1) return fail("give only one of --prompt, --prompt_file, --batch_file, --input_ids_file");
  r.input_ids_file  = ResolvePath(absl::GetFlag(FLAGS_input_ids_file));
  r.output_ids_file = ResolvePath(absl::GetFlag(FLAGS_output_ids_file));
  r.output_logits_file = ResolvePath(absl::GetFlag(FLAGS_output_logits_file));
  if (FlagGiven("input_ids_file") && FlagGiven("chat")) return fail("--chat needs text prompts, not --input_ids_file");
  if (FlagGiven("prompt")) {
    r.prompts = {absl::GetFlag(FLAGS_prompt)};
  } else if (FlagGiven("prompt_file")) {
    std::string text;
    if (!ReadAll(ResolvePath(absl::GetFlag(FLAGS_prompt_file)), text)) return fail("cannot read --prompt_file " + absl::GetFlag(FLAGS_prompt_file));
    while (!text.empty() && text.back() == '\n') text.pop_back();
    r.prompts = {text};
  } else if (FlagGiven("batch_file")) {
    std::string text;
    if (!ReadAll(ResolvePath(absl::GetFlag(FLAGS_batch_file)), text)) return fail("cannot read --batch_file " + absl::GetFlag(FLAGS_batch_file));
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) r.prompts.emplace_back(line);
    if (r.prompts.empty()) return fail("--batch_file has no prompts");
  } else if (!FlagGiven("input_ids_file")) {
    r.prompts = {kDefaultPrompt};
    if (world_rank == 0) std::fprintf(stderr, "no prompt given; using \"%s\"\n", kDefaultPrompt);
  }

  // Decoding flags: sampling flags switch greedy off; an explicit --greedy contradicts them.
  const bool sampling_flag = FlagGiven("temperature") || FlagGiven("top_k") || FlagGiven("top_p");
  if (sampling_flag && FlagGiven("greedy") && absl::GetFlag(FLAGS_greedy)) {
    return fail("--greedy contradicts --temperature/--top_k/--top_p (sampling); give one or the other");
  }
  r.sampling.greedy             = FlagGiven("greedy") ? absl::GetFlag(FLAGS_greedy) : !sampling_flag;
  r.sampling.temperature        = absl::GetFlag(FLAGS_temperature);
  r.sampling.top_k              = absl::GetFlag(FLAGS_top_k);
  r.sampling.top_p              = absl::GetFlag(FLAGS_top_p);
  r.sampling.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  r.sampling.seed               = absl::GetFlag(FLAGS_seed);
  r.chat           = absl::GetFlag(FLAGS_chat);
  r.system         = absl::GetFlag(FLAGS_system);
  r.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  r.stop           = absl::GetFlag(FLAGS_stop);
  r.dtype          = absl::GetFlag(FLAGS_dtype);
  r.stream         = absl::GetFlag(FLAGS_stream);
  const absl::Status status = openmoe::tools::RunGenerate(r);  // on several ranks a failed run ends them all
  if (!status.ok()) return fail(std::string(status.message()));
  return 0;
}
