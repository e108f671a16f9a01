// generate: text (or token ids) from an OpenMoE checkpoint with a KV cache, on the default
// Kokkos backend of the build (OpenMP on host, CUDA with --config=cuda).
//
//   bazel run //tools:generate                                  # embedded tiny default model
//   bazel run //tools:generate -- --model DIR --chat --prompt "How do I kill a process?"
//   bazel run //tools:generate -- --model DIR --batch_file prompts.txt --max_new_tokens 64
//   bazel run //tools:generate -- --model DIR --input_ids_file in.safetensors --output_ids_file out.safetensors
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "tools/cli_flags.h"
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
      "      [--input_ids_file IN --output_ids_file OUT]");
  openmoe::tools::RecordArgs(argc, argv);
  absl::ParseCommandLine(argc, argv);
  openmoe::tools::GenerateRequest r;
  r.model_dir = FlagGiven("model") ? ResolvePath(absl::GetFlag(FLAGS_model)) : DefaultModel();
  if (!FlagGiven("model")) std::fprintf(stderr, "model: %s\n", r.model_dir.c_str());

  // Prompt sources: exactly one of --prompt, --prompt_file, --batch_file, --input_ids_file.
  int sources = FlagGiven("prompt") + FlagGiven("prompt_file") + FlagGiven("batch_file") + FlagGiven("input_ids_file");
  if (sources > 1) return Fail("give only one of --prompt, --prompt_file, --batch_file, --input_ids_file");
  r.input_ids_file  = ResolvePath(absl::GetFlag(FLAGS_input_ids_file));
  r.output_ids_file = ResolvePath(absl::GetFlag(FLAGS_output_ids_file));
  if (FlagGiven("input_ids_file") && FlagGiven("chat")) return Fail("--chat needs text prompts, not --input_ids_file");
  if (FlagGiven("prompt")) {
    r.prompts = {absl::GetFlag(FLAGS_prompt)};
  } else if (FlagGiven("prompt_file")) {
    std::string text;
    if (!ReadAll(ResolvePath(absl::GetFlag(FLAGS_prompt_file)), text)) return Fail("cannot read --prompt_file " + absl::GetFlag(FLAGS_prompt_file));
    while (!text.empty() && text.back() == '\n') text.pop_back();
    r.prompts = {text};
  } else if (FlagGiven("batch_file")) {
    std::string text;
    if (!ReadAll(ResolvePath(absl::GetFlag(FLAGS_batch_file)), text)) return Fail("cannot read --batch_file " + absl::GetFlag(FLAGS_batch_file));
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) r.prompts.emplace_back(line);
    if (r.prompts.empty()) return Fail("--batch_file has no prompts");
  } else if (!FlagGiven("input_ids_file")) {
    r.prompts = {kDefaultPrompt};
    std::fprintf(stderr, "no prompt given; using \"%s\"\n", kDefaultPrompt);
  }

  // Decoding flags: sampling flags switch greedy off; an explicit --greedy contradicts them.
  const bool sampling_flag = FlagGiven("temperature") || FlagGiven("top_k") || FlagGiven("top_p");
  if (sampling_flag && FlagGiven("greedy") && absl::GetFlag(FLAGS_greedy)) {
    return Fail("--greedy contradicts --temperature/--top_k/--top_p (sampling); give one or the other");
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
  const absl::Status status = openmoe::tools::RunGenerate(r);
  if (!status.ok()) return Fail(std::string(status.message()));
  return 0;
}
