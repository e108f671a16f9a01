#include "openmoe/config.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "openmoe/core/status_macros.h"

namespace openmoe {
namespace {

using nlohmann::json;

absl::Status KeyError(const std::string& source, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": key '", key, "' ", what));
}

// Reads `key` (or its first present alias) into `out` if present. Integers must be integral.
template <class T>
absl::Status Read(const json& root, const std::string& source, std::initializer_list<const char*> keys,
                  T& out) {
  for (const char* key : keys) {
    if (!root.contains(key)) continue;
    const json& v = root[key];
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) return KeyError(source, key, "must be true or false");
      out = v.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      if (!v.is_number_integer()) return KeyError(source, key, absl::StrCat("must be an integer, got ", v.dump()));
      out = v.get<T>();
    } else {
      if (!v.is_number()) return KeyError(source, key, absl::StrCat("must be a number, got ", v.dump()));
      out = v.get<T>();
    }
    return absl::OkStatus();
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateConfig(const OpenMoeConfig& c, const std::string& source) {
  auto positive = [&](const char* key, int64_t v) -> absl::Status {
    if (v <= 0) return KeyError(source, key, absl::StrCat("must be positive, got ", v));
    return absl::OkStatus();
  };
  OPENMOE_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
  OPENMOE_RETURN_IF_ERROR(positive("hidden_size", c.hidden_size));
  OPENMOE_RETURN_IF_ERROR(positive("intermediate_size", c.intermediate_size));
  OPENMOE_RETURN_IF_ERROR(positive("num_hidden_layers", c.num_hidden_layers));
  OPENMOE_RETURN_IF_ERROR(positive("num_attention_heads", c.num_attention_heads));
  OPENMOE_RETURN_IF_ERROR(positive("num_key_value_heads", c.num_key_value_heads));
  OPENMOE_RETURN_IF_ERROR(positive("head_dim", c.head_dim));
  OPENMOE_RETURN_IF_ERROR(positive("max_position_embeddings", c.max_position_embeddings));
  OPENMOE_RETURN_IF_ERROR(positive("num_experts", c.num_experts));
  OPENMOE_RETURN_IF_ERROR(positive("moe_layer_interval", c.moe_layer_interval));
  OPENMOE_RETURN_IF_ERROR(positive("router_min_capacity", c.router_min_capacity));
  if (c.head_dim % 2 != 0) return KeyError(source, "head_dim", "must be even (rotate-half RoPE)");
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return KeyError(source, "num_key_value_heads",
                    absl::StrCat("(", c.num_key_value_heads, ") must divide num_attention_heads (",
                                 c.num_attention_heads, ")"));
  }
  if (c.router_topk != 2) {
    return KeyError(source, "router_topk", absl::StrCat("must be 2 (OpenMoE's Top2Router), got ", c.router_topk));
  }
  if (c.num_experts < 2) return KeyError(source, "num_experts", "must be at least 2 for top-2 routing");
  if (c.moe_layer_interval > c.num_hidden_layers) {
    return KeyError(source, "moe_layer_interval",
                    absl::StrCat("(", c.moe_layer_interval, ") exceeds num_hidden_layers (",
                                 c.num_hidden_layers, "): the model would have no MoE layer"));
  }
  if (!(c.rms_norm_eps > 0)) return KeyError(source, "rms_norm_eps", "must be > 0");
  if (!(c.router_capacity_factor_train > 0)) return KeyError(source, "router_capacity_factor_train", "must be > 0");
  if (!(c.router_capacity_factor_eval > 0)) return KeyError(source, "router_capacity_factor_eval", "must be > 0");
  if (c.pad_token_id < 0 || c.pad_token_id >= c.vocab_size) {
    return KeyError(source, "pad_token_id", absl::StrCat("(", c.pad_token_id, ") is outside the vocabulary"));
  }
  if (!(c.label_smoothing >= 0 && c.label_smoothing < 1)) return KeyError(source, "label_smoothing", "must be in [0, 1)");
  return absl::OkStatus();
}

absl::StatusOr<OpenMoeConfig> ParseConfig(const std::string& json_text, const std::string& source) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a valid JSON object"));
  }
  OpenMoeConfig c;
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"vocab_size"}, c.vocab_size));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"hidden_size"}, c.hidden_size));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"intermediate_size"}, c.intermediate_size));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"num_hidden_layers"}, c.num_hidden_layers));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"num_attention_heads"}, c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"num_key_value_heads"}, c.num_key_value_heads));
  c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"head_dim"}, c.head_dim));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"max_position_embeddings"}, c.max_position_embeddings));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"rms_norm_eps"}, c.rms_norm_eps));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"pad_token_id"}, c.pad_token_id));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"bos_token_id"}, c.bos_token_id));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"eos_token_id"}, c.eos_token_id));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"num_experts"}, c.num_experts));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"moe_layer_interval"}, c.moe_layer_interval));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"router_topk", "topk"}, c.router_topk));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"router_capacity_factor_train", "capacity_factor_train"},
                               c.router_capacity_factor_train));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"router_capacity_factor_eval", "capacity_factor_eval"},
                               c.router_capacity_factor_eval));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"router_min_capacity", "min_capacity"}, c.router_min_capacity));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"label_smoothing"}, c.label_smoothing));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"z_loss_factor"}, c.z_loss_factor));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"router_aux_loss_factor"}, c.router_aux_loss_factor));
  OPENMOE_RETURN_IF_ERROR(Read(root, source, {"router_z_loss_factor"}, c.router_z_loss_factor));

  // Features this implementation (like the released checkpoints) does not have.
  for (const char* key : {"hidden_act", "activation"}) {
    if (root.contains(key) && root[key] != "swiglu") {
      return KeyError(source, key, absl::StrCat("must be \"swiglu\" (OpenMoE's 2I-wide gated MLP), got ", root[key].dump()));
    }
  }
  for (const char* key : {"mlp_gated", "gated"}) {
    if (root.contains(key) && root[key] != true) return KeyError(source, key, "must be true (only gated MLPs exist in OpenMoE)");
  }
  for (const char* key : {"router_drop_tks", "drop_tks"}) {
    if (root.contains(key) && root[key] != true) return KeyError(source, key, "must be true (dropless routing is not supported)");
  }
  for (const char* key : {"router_noisy_policy", "noisy_policy"}) {
    if (root.contains(key) && !root[key].is_null()) return KeyError(source, key, "must be null (router noise is not supported)");
  }
  if (root.contains("tie_word_embeddings") && root["tie_word_embeddings"] == true) {
    return KeyError(source, "tie_word_embeddings", "must be false (OpenMoE has a separate lm_head)");
  }
  if (root.contains("pretraining_tp") && root["pretraining_tp"] != 1) {
    return KeyError(source, "pretraining_tp", "must be 1");
  }
  OPENMOE_RETURN_IF_ERROR(ValidateConfig(c, source));
  return c;
}

absl::StatusOr<OpenMoeConfig> LoadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config '", path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseConfig(text.str(), path);
}

absl::StatusOr<OpenMoeConfig> PresetConfig(const std::string& name) {
  OpenMoeConfig c;  // defaults are the base preset
  if (name == "base") return c;
  if (name == "8b") {
    c.hidden_size = 2048, c.intermediate_size = 8192, c.num_hidden_layers = 24;
    c.num_attention_heads = c.num_key_value_heads = 24, c.head_dim = 128;
    c.num_experts = 32, c.moe_layer_interval = 6;
    return c;
  }
  if (name == "34b") {
    c.hidden_size = 3072, c.intermediate_size = 12288, c.num_hidden_layers = 32;
    c.num_attention_heads = c.num_key_value_heads = 24, c.head_dim = 128;
    c.num_experts = 32, c.moe_layer_interval = 4;
    return c;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model preset '", name, "'; expected one of: base, 8b, 34b"));
}

std::string ConfigToJson(const OpenMoeConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {"OpenMoeForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = c.vocab_size, j["hidden_size"] = c.hidden_size, j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers, j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads, j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings, j["rms_norm_eps"] = double(c.rms_norm_eps);
  j["hidden_act"] = "swiglu", j["tie_word_embeddings"] = false, j["pretraining_tp"] = 1;
  j["pad_token_id"] = c.pad_token_id, j["bos_token_id"] = c.bos_token_id, j["eos_token_id"] = c.eos_token_id;
  j["torch_dtype"] = "float32";
  j["num_experts"] = c.num_experts, j["moe_layer_interval"] = c.moe_layer_interval, j["router_topk"] = c.router_topk;
  j["router_capacity_factor_train"] = double(c.router_capacity_factor_train);
  j["router_capacity_factor_eval"] = double(c.router_capacity_factor_eval);
  j["router_min_capacity"] = c.router_min_capacity, j["router_noisy_policy"] = nullptr, j["router_drop_tks"] = true;
  j["mlp_gated"] = true;
  j["label_smoothing"] = double(c.label_smoothing), j["z_loss_factor"] = double(c.z_loss_factor);
  j["router_aux_loss_factor"] = double(c.router_aux_loss_factor);
  j["router_z_loss_factor"] = double(c.router_z_loss_factor);
  return j.dump(2) + "\n";
}

}  // namespace openmoe
