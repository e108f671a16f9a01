#include "tools/train_runner.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "nlohmann/json.hpp"
#include "openmoe/core/status_macros.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/train_data.h"
#include "openmoe/trainable_model.h"
#include "tools/loss_plot.h"
#include "tools/train_checkpoint.h"

namespace openmoe::tools {
namespace {

namespace fs = std::filesystem;
using Space = TrainSpace;
using Model = TrainableModel<Space>;

// A .safetensors dataset holds token ids; anything else is text records.
bool IsPretokenized(const std::string& dataset) {
  const std::string suffix = ".safetensors";
  return dataset.size() > suffix.size() && dataset.compare(dataset.size() - suffix.size(), suffix.size(), suffix) == 0;
}

absl::Status CheckSameShapes(const OpenMoeConfig& a, const OpenMoeConfig& b, const std::string& what) {
  const std::vector<std::pair<const char*, std::pair<int64_t, int64_t>>> keys = {
      {"vocab_size", {a.vocab_size, b.vocab_size}}, {"hidden_size", {a.hidden_size, b.hidden_size}},
      {"intermediate_size", {a.intermediate_size, b.intermediate_size}},
      {"num_hidden_layers", {a.num_hidden_layers, b.num_hidden_layers}},
      {"num_attention_heads", {a.num_attention_heads, b.num_attention_heads}},
      {"num_experts", {a.num_experts, b.num_experts}}, {"moe_layer_interval", {a.moe_layer_interval, b.moe_layer_interval}}};
  for (const auto& [key, values] : keys) {
    if (values.first != values.second) {
      return absl::InvalidArgumentError(absl::StrCat("--resume: the checkpoint's ", key, " is ", values.second, ", ", what,
                                                     " has ", values.first));
    }
  }
  return absl::OkStatus();
}

double LearningRate(const TrainOptions& o, int64_t step, int64_t total_steps) {  // step counts from 1
  if (o.warmup_steps > 0 && step <= o.warmup_steps) return o.lr * double(step) / double(o.warmup_steps);
  if (o.lr_schedule == "cosine" && total_steps > o.warmup_steps) {
    const double t = double(step - o.warmup_steps) / double(total_steps - o.warmup_steps);
    return o.lr * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, t)));
  }
  return o.lr;
}

std::string Duration(double seconds) {
  const int64_t s = int64_t(seconds + 0.5);
  return s >= 3600 ? absl::StrCat(s / 3600, "h", (s / 60) % 60, "m") : absl::StrCat(s / 60, ":", (s % 60) < 10 ? "0" : "", s % 60);
}

absl::Status Validate(const TrainOptions& o) {
  if (o.precision != "fp32" && o.precision != "bf16" && o.precision != "fp16") {
    return absl::InvalidArgumentError(absl::StrCat("--precision must be fp32, bf16 or fp16, got ", o.precision));
  }
  if (o.batch_size <= 0) return absl::InvalidArgumentError(absl::StrCat("--batch_size must be positive, got ", o.batch_size));
  if (o.num_epochs <= 0) return absl::InvalidArgumentError(absl::StrCat("--num_epochs must be positive, got ", o.num_epochs));
  if (o.save_interval <= 0) return absl::InvalidArgumentError(absl::StrCat("--save_interval must be positive, got ", o.save_interval));
  if (o.max_steps < 0 || o.warmup_steps < 0) return absl::InvalidArgumentError("--max_steps and --warmup_steps must be >= 0");
  if (!(o.lr > 0)) return absl::InvalidArgumentError(absl::StrCat("--lr must be positive, got ", o.lr));
  if (!(o.initial_loss_scale >= 1) || !std::isfinite(o.initial_loss_scale)) {
    return absl::InvalidArgumentError(absl::StrCat("--initial_loss_scale must be a finite number >= 1, got ", o.initial_loss_scale));
  }
  if (o.weight_decay < 0 || o.max_grad_norm < 0) return absl::InvalidArgumentError("--weight_decay and --max_grad_norm must be >= 0");
  if (o.lr_schedule != "constant" && o.lr_schedule != "cosine") {
    return absl::InvalidArgumentError(absl::StrCat("--lr_schedule must be constant or cosine, got ", o.lr_schedule));
  }
  if (o.dataset.empty()) return absl::InvalidArgumentError("--dataset is required (a .jsonl/.json file or a .safetensors batch)");
  if (o.model_dir.empty() == o.model_name.empty() && o.resume.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model DIR and --model_name base|8b|34b (or --resume)");
  }
  if (!o.model_name.empty() && o.resume.empty() && !IsPretokenized(o.dataset)) {  // checked before a long random init
    return absl::FailedPreconditionError(absl::StrCat("--dataset '", o.dataset, "' is text, but --model_name ", o.model_name,
                                                      " has no tokenizer.model; give --model DIR with one, or "
                                                      "pre-tokenized .safetensors data"));
  }
  return absl::OkStatus();
}

// AdamW over the flat buffers; bf16 / fp16 runs write the rounded weights into the model's
// working copy in the same pass (AdamWStepAndCast) and tell the model so.
absl::Status OptimizerStep(Run& run, Vector<float, Space> grads, const kernels::AdamWOptions& adamw,
                           const std::string& precision) {
  Optimizer& opt = run.optimizer;
  if (precision == "fp32") {
    return kernels::AdamWStep<Space>(Space(), run.model.flat_params(), grads, opt.flat_m, opt.flat_v, opt.steps, adamw);
  }
  Vector<uint16_t, Space> bits = run.model.flat_working();
  absl::Status status;
  if (precision == "bf16") {
    status = kernels::AdamWStepAndCast<bf16, Space>(Space(), run.model.flat_params(), grads, opt.flat_m, opt.flat_v, opt.steps,
                                                    adamw, Vector<bf16, Space>(reinterpret_cast<bf16*>(bits.data()), bits.extent(0)));
  } else {
    status = kernels::AdamWStepAndCast<f16, Space>(Space(), run.model.flat_params(), grads, opt.flat_m, opt.flat_v, opt.steps,
                                                   adamw, Vector<f16, Space>(reinterpret_cast<f16*>(bits.data()), bits.extent(0)));
  }
  if (status.ok()) run.model.MarkWorkingCopyCurrent();
  return status;
}

}  // namespace

absl::Status RunTraining(const TrainOptions& o) {
  OPENMOE_RETURN_IF_ERROR(Validate(o));
  // Output path first: an unwritable one fails before any work.
  std::error_code error;
  fs::create_directories(o.output_path, error);
  const std::string probe = (fs::path(o.output_path) / absl::StrCat(".probe-", getpid())).string();
  if (error || !std::ofstream(probe)) {
    return absl::PermissionDeniedError(absl::StrCat("--output_path '", o.output_path, "' is not writable",
                                                    error ? ": " + error.message() : ""));
  }
  fs::remove(probe, error);

  // Model (and where to continue from).
  std::string model_source = o.model_dir;
  Position start;
  nlohmann::json resume_state;
  if (!o.resume.empty()) {
    OPENMOE_ASSIGN_OR_RETURN(model_source, ResumeFolder(o.resume));
    OPENMOE_ASSIGN_OR_RETURN(std::string text, ReadText(model_source + "/trainer_state.json"));
    resume_state = nlohmann::json::parse(text, nullptr, false);
    if (resume_state.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(model_source, "/trainer_state.json is not valid JSON"));
    start.step = resume_state.value("step", int64_t(0)), start.epoch = resume_state.value("epoch", int64_t(0));
    start.batch = resume_state.value("next_batch", int64_t(0));
    std::fprintf(stderr, "resuming from step %lld of %s\n", (long long)start.step, model_source.c_str());
  }
  absl::StatusOr<Model> model = absl::UnknownError("no model");
  if (!model_source.empty()) {
    model = Model::Load(model_source);
  } else {
    OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig preset, PresetConfig(o.model_name));
    std::fprintf(stderr, "random init of the %s preset (seed %llu)\n", o.model_name.c_str(), (unsigned long long)o.seed);
    model = Model::RandomInit(preset, o.seed);
  }
  if (!model.ok()) return model.status();
  if (!o.resume.empty() && (!o.model_dir.empty() || !o.model_name.empty())) {  // the run's own model must match
    OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig given, !o.model_dir.empty() ? LoadConfig(o.model_dir + "/config.json")
                                                                        : PresetConfig(o.model_name));
    OPENMOE_RETURN_IF_ERROR(CheckSameShapes(given, model->config(), !o.model_dir.empty() ? "--model" : "--model_name"));
  }
  const OpenMoeConfig& c = model->config();
  model->set_recompute_activations(o.grad_checkpoint);
  using Dtype = TrainableModel<Space>::ComputeDtype;
  model->set_compute_dtype(o.precision == "bf16" ? Dtype::kBf16 : o.precision == "fp16" ? Dtype::kFp16 : Dtype::kFp32);
  model->SetLossFactors(o.label_smoothing.value_or(c.label_smoothing), o.z_loss_factor.value_or(c.z_loss_factor),
                        o.router_aux_loss_factor.value_or(c.router_aux_loss_factor),
                        o.router_z_loss_factor.value_or(c.router_z_loss_factor));

  // Data.
  Run run{o, std::move(*model), {}, {}, "", start};
  for (const std::string& dir : {model_source, o.model_dir}) {
    for (const char* name : {"tokenizer.model", "spiece.model"})
      if (run.tokenizer_file.empty() && !dir.empty() && fs::exists(fs::path(dir) / name)) run.tokenizer_file = (fs::path(dir) / name).string();
  }
  if (IsPretokenized(o.dataset)) {
    OPENMOE_ASSIGN_OR_RETURN(run.data, io::ReadTokenBatch(o.dataset, "--dataset"));
  } else {
    if (run.tokenizer_file.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("--dataset '", o.dataset, "' is text, but the model has no tokenizer.model "
                                                        "or spiece.model; give --model DIR with one, or pre-tokenized "
                                                        ".safetensors data"));
    }
    OPENMOE_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::LoadFile(run.tokenizer_file));
    OPENMOE_ASSIGN_OR_RETURN(std::vector<InstructionRecord> records, ReadInstructionRecords(o.dataset));
    OPENMOE_ASSIGN_OR_RETURN(run.data, TokenizeRecords(records, tokenizer, std::min(o.max_length, c.max_position_embeddings)));
  }
  const int64_t N = run.data.batch, S = run.data.seq_len, B = o.batch_size;
  if (N < B) {
    return absl::InvalidArgumentError(absl::StrCat("--dataset has ", N, " examples, fewer than one batch of --batch_size ", B));
  }
  if (!o.resume.empty()) {
    for (const auto& [key, now] : std::vector<std::pair<const char*, int64_t>>{
             {"batch_size", B}, {"examples", N}, {"seq_len", S}, {"seed", int64_t(o.seed)}, {"shuffle", int64_t(o.shuffle)}}) {
      const int64_t then = resume_state[key].is_boolean() ? int64_t(resume_state[key].get<bool>()) : resume_state.value(key, int64_t(-1));
      if (then != now) {
        return absl::InvalidArgumentError(absl::StrCat("--resume: the checkpoint was trained with ", key, " = ", then,
                                                       ", this run has ", now, " (the data order would differ)"));
      }
    }
  }
  const int64_t batches_per_epoch = N / B;  // drop_last
  int64_t total_steps = batches_per_epoch * o.num_epochs;
  if (o.max_steps > 0) total_steps = std::min(total_steps, o.max_steps);

  // Optimizer state: zeros, or the checkpoint's moments.
  std::unique_ptr<io::SafetensorsFile> state_file;
  if (!o.resume.empty()) {
    OPENMOE_ASSIGN_OR_RETURN(io::SafetensorsFile f, io::SafetensorsFile::Open(model_source + "/trainer_state.safetensors"));
    state_file = std::make_unique<io::SafetensorsFile>(std::move(f));
  }
  const ParameterLayout& layout = run.model.layout();
  run.optimizer.flat_m = Vector<float, Space>("adamw.m", layout.total());
  run.optimizer.flat_v = Vector<float, Space>("adamw.v", layout.total());
  for (const TensorSpec& spec : run.model.table()) {
    const int64_t n = spec.numel(), offset = layout.slot(spec.name).offset;
    Vector<float, Space> m(run.optimizer.flat_m.data() + offset, n), v(run.optimizer.flat_v.data() + offset, n);
    if (state_file) {
      std::vector<float> host(n);
      OPENMOE_RETURN_IF_ERROR(state_file->ReadAsFloat("m." + spec.name, host.data(), n));
      FromHost(host, m);
      OPENMOE_RETURN_IF_ERROR(state_file->ReadAsFloat("v." + spec.name, host.data(), n));
      FromHost(host, v);
    }
    run.optimizer.m.emplace(spec.name, m), run.optimizer.v.emplace(spec.name, v);
  }
  const bool fp16 = o.precision == "fp16";
  LossScalerOptions scaler_options;
  scaler_options.initial_scale = o.initial_loss_scale;
  run.optimizer.scaler = LossScaler(scaler_options);
  run.optimizer.steps  = start.step;
  if (!o.resume.empty()) {
    run.optimizer.steps = resume_state.value("optimizer_steps", start.step);
    if (fp16 && resume_state.contains("loss_scaler")) {
      const nlohmann::json& ls = resume_state["loss_scaler"];
      run.optimizer.scaler.Restore({ls.value("scale", o.initial_loss_scale), ls.value("growth_steps", int64_t(0)),
                                    ls.value("overflow_steps", int64_t(0))});
    }
  }

  std::fprintf(stderr, "training %lld examples of %lld tokens, batch %lld, %lld steps (from step %lld), lr %g (%s), "
               "%s, seed %llu, on %s; checkpoints in %s\n", (long long)N, (long long)S, (long long)B, (long long)total_steps,
               (long long)start.step, o.lr, o.lr_schedule.c_str(), o.precision.c_str(), (unsigned long long)o.seed,
               Space::name(), o.output_path.c_str());
  const std::string metrics_file = (fs::path(o.output_path) / "metrics.jsonl").string();
  std::vector<double> losses;
  if (start.step > 0) {
    // The lines of the steps up to the checkpoint's: a run killed after it logged later steps
    // would otherwise leave them twice. They also give the curve before the resume.
    std::string kept;
    std::ifstream old(metrics_file);
    for (std::string line; std::getline(old, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
          j["step"].get<int64_t>() > start.step) {
        continue;
      }
      kept += line + "\n";
      if (j.contains("loss") && j["loss"].is_number() && std::isfinite(j["loss"].get<double>())) losses.push_back(j["loss"].get<double>());
    }
    old.close();
    OPENMOE_RETURN_IF_ERROR(WriteTextAtomically(metrics_file, kept));
  }
  std::ofstream metrics(metrics_file, start.step > 0 ? std::ios::app : std::ios::trunc);
  kernels::AdamWOptions adamw;
  adamw.weight_decay = o.weight_decay;
  const auto t0 = std::chrono::steady_clock::now();
  const bool terminal = isatty(2);
  int64_t steps_this_run = 0;
  bool saved_last = false;
  for (int64_t epoch = start.epoch; epoch < o.num_epochs && run.position.step < total_steps; ++epoch) {
    const std::vector<int64_t> order = EpochOrder(N, o.seed, epoch, o.shuffle);
    for (int64_t batch = epoch == start.epoch ? start.batch : 0; batch < batches_per_epoch && run.position.step < total_steps;
         ++batch) {
      std::vector<int64_t> ids(B * S), mask(B * S);
      for (int64_t r = 0; r < B; ++r) {
        const int64_t n = order[batch * B + r];
        std::copy(run.data.ids.begin() + n * S, run.data.ids.begin() + (n + 1) * S, ids.begin() + r * S);
        std::copy(run.data.mask.begin() + n * S, run.data.mask.begin() + (n + 1) * S, mask.begin() + r * S);
      }
      const double loss_scale = fp16 ? run.optimizer.scaler.scale() : 1.0;
      run.model.set_loss_scale(float(loss_scale));
      OPENMOE_ASSIGN_OR_RETURN(LossParts loss, run.model.ForwardBackward(ids, mask, B, S));
      const int64_t step = run.position.step + 1;
      if (!fp16 && !std::isfinite(loss.total)) {
        return absl::InternalError(absl::StrCat("the loss is ", loss.total, " at step ", step,
                                                "; stopping without saving (the last checkpoint in '", o.output_path,
                                                "' is kept)"));
      }
      // Global gradient norm: one reduction over the flat gradient buffer (its gaps are 0).
      double sum_sq = 0;
      const Vector<float, Space> flat_grads = run.model.flat_grads();
      Kokkos::parallel_reduce(
          "openmoe::train::GradNorm", Kokkos::RangePolicy<Space>(0, flat_grads.extent(0)),
          KOKKOS_LAMBDA(const int64_t i, double& s) { s += double(flat_grads(i)) * double(flat_grads(i)); }, sum_sq);
      const double grad_norm = std::sqrt(sum_sq);
      // fp16: an overflow (inf / NaN loss or gradients at this scale) skips the update; one at the
      // minimum scale cannot be backed off from.
      const bool at_minimum = run.optimizer.scaler.AtMinimum();
      const bool apply = !fp16 || run.optimizer.scaler.Update(std::isfinite(loss.total) && std::isfinite(grad_norm));
      if (!apply && at_minimum) {
        return absl::InternalError(absl::StrCat("fp16 overflow at step ", step, " even at loss scale ", loss_scale, " (loss ", loss.total,
                                                "): the values exceed fp16's range (e.g. a zero <pad> embedding row: "
                                                "position 0 then enters RMSNorm as a zero vector, whose gradient is "
                                                "1/sqrt(eps) times larger); use --precision bf16 (the last checkpoint in '",
                                                o.output_path, "' is kept)"));
      }
      std::map<std::string, std::vector<float>> dump_grads;
      if (!o.dump_step_state.empty() && steps_this_run == 0) {
        for (const TensorSpec& spec : run.model.table()) dump_grads[spec.name] = ToHost(run.model.grad(spec.name));
      }
      const float clip = o.max_grad_norm > 0 && grad_norm > o.max_grad_norm ? float(o.max_grad_norm / grad_norm) : 1.0f;
      adamw.lr = LearningRate(o, step, total_steps);
      if (apply) {
        ++run.optimizer.steps;
        // Clipping and AdamW over the flat buffers: one kernel each for every parameter; mixed
        // precision also refreshes the 16-bit working copy in AdamW's pass.
        if (clip != 1.0f) OPENMOE_RETURN_IF_ERROR(kernels::Scale<Space>(Space(), flat_grads, clip));
        OPENMOE_RETURN_IF_ERROR(OptimizerStep(run, flat_grads, adamw, o.precision));
      }
      Kokkos::fence();
      run.position = {step, epoch, batch + 1};
      if (run.position.batch == batches_per_epoch) run.position = {step, epoch + 1, 0};
      ++steps_this_run;
      if (std::isfinite(loss.total)) losses.push_back(loss.total);  // fp16 overflow steps are not plotted
      if (!dump_grads.empty()) {
        std::vector<std::vector<float>> hold;
        std::vector<io::TensorToWrite> tensors;
        const float parts[4] = {float(loss.total), float(loss.lm), float(loss.router_aux), float(loss.router_z)};
        const char* names[4] = {"loss.total", "loss.lm", "loss.router_aux", "loss.router_z"};
        for (int i = 0; i < 4; ++i) tensors.push_back({names[i], io::DType::kF32, {1}, &parts[i]});
        hold.reserve(run.model.table().size());
        for (const TensorSpec& spec : run.model.table()) {
          tensors.push_back({"grad." + spec.name, io::DType::kF32, spec.shape, dump_grads[spec.name].data()});
          hold.push_back(ToHost(run.model.param(spec.name)));
          tensors.push_back({"param." + spec.name, io::DType::kF32, spec.shape, hold.back().data()});
        }
        OPENMOE_RETURN_IF_ERROR(io::WriteSafetensors(o.dump_step_state, tensors));
      }
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tokens_per_s = double(steps_this_run * B * S) / elapsed;
      nlohmann::ordered_json line;
      line["step"] = step, line["epoch"] = epoch, line["loss"] = loss.total, line["lm"] = loss.lm;
      line["router_aux"] = loss.router_aux, line["router_z"] = loss.router_z, line["lr"] = adamw.lr;
      line["grad_norm"] = grad_norm, line["tokens_per_s"] = tokens_per_s;
      if (fp16) line["loss_scale"] = loss_scale, line["skipped"] = !apply;
      metrics << line.dump() << "\n" << std::flush;
      const double eta = elapsed / double(steps_this_run) * double(total_steps - step);
      if (o.progress && terminal) {  // one bar, redrawn in place
        const int width = 30, filled = int(width * double(step) / double(total_steps));
        std::fprintf(stderr, "\rstep %lld/%lld [%s%s] loss %.4f | %.0f tok/s | ETA %s   ", (long long)step,
                     (long long)total_steps, std::string(filled, '#').c_str(), std::string(width - filled, '-').c_str(),
                     loss.total, tokens_per_s, Duration(eta).c_str());
      } else if (o.progress) {  // a log file or pipe: one plain line per step
        std::fprintf(stderr, "step %lld/%lld loss %.4f lr %.3g | %.0f tok/s | ETA %s\n", (long long)step,
                     (long long)total_steps, loss.total, adamw.lr, tokens_per_s, Duration(eta).c_str());
      }
      saved_last = false;
      if (step % o.save_interval == 0) {
        OPENMOE_RETURN_IF_ERROR(SaveCheckpoint(run));
        saved_last = true;
      }
    }
  }
  if (o.progress && terminal) std::fprintf(stderr, "\n");
  if (!saved_last && steps_this_run > 0) OPENMOE_RETURN_IF_ERROR(SaveCheckpoint(run));
  const std::string png = (fs::path(o.output_path) / "loss_curve.png").string();
  // Every step of metrics.jsonl (those before a resume too) with its lr; the summed loss per label position.
  OPENMOE_ASSIGN_OR_RETURN(LossCurve curve, ReadLossCurve(metrics_file));
  for (double& l : curve.losses) l /= double(B * std::max<int64_t>(1, S - 1));
  OPENMOE_RETURN_IF_ERROR(WriteLossCurvePng(png, curve.steps, curve.losses, curve.learning_rates));
  if (!losses.empty()) {
    std::fprintf(stderr, "done: step %lld, loss %.4f (first %.4f); checkpoint %s/step-%lld, curve %s\n",
                 (long long)run.position.step, losses.back(), losses.front(), o.output_path.c_str(),
                 (long long)run.position.step, png.c_str());
  }
  return absl::OkStatus();
}

}  // namespace openmoe::tools
