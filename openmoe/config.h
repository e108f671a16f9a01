// File: openmoe/config.h
// OpenMoE model configuration: parsed from a Hugging Face config.json (Llama fields plus the
// OpenMoE keys, also their old names) or taken from a built-in preset (base, 8b, 34b).
// Validation rejects what this implementation does not support, naming the key.
//
//   OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig config, LoadConfig(model_dir + "/config.json"));
//   OPENMOE_ASSIGN_OR_RETURN(OpenMoeConfig base, PresetConfig("base"));
#ifndef OPENMOE_CONFIG_H_
#define OPENMOE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace openmoe {

struct OpenMoeConfig {
  int64_t vocab_size              = 256384;  // V
  int64_t hidden_size             = 768;     // H
  int64_t intermediate_size       = 2048;    // I (dense MLP and each expert; gate is 2I wide)
  int64_t num_hidden_layers       = 12;      // L
  int64_t num_attention_heads     = 12;      // Nh
  int64_t num_key_value_heads     = 12;      // Nkv (divides Nh)
  int64_t head_dim                = 64;      // Dh (Nh * Dh may differ from H, as in 8B)
  int64_t max_position_embeddings = 2048;
  float rms_norm_eps              = 1e-6f;
  int64_t pad_token_id            = 0;  // also the BOS of the umT5 tokenizer
  int64_t bos_token_id            = 0;
  int64_t eos_token_id            = 1;

  int64_t num_experts                = 16;  // E
  int64_t moe_layer_interval         = 4;   // layer i is MoE iff (i + 1) % interval == 0
  int64_t router_topk                = 2;   // K
  float router_capacity_factor_train = 1.25f;
  float router_capacity_factor_eval  = 2.0f;
  int64_t router_min_capacity        = 4;

  float label_smoothing        = 0.001f;
  float z_loss_factor          = 0.01f;
  float router_aux_loss_factor = 0.01f;
  float router_z_loss_factor   = 0.0001f;

  bool IsMoeLayer(int64_t layer) const { return (layer + 1) % moe_layer_interval == 0; }
  int64_t NumMoeLayers() const { return num_hidden_layers / moe_layer_interval; }
  // MoE layer `layer`'s index among the MoE layers, and back.
  int64_t MoeIndex(int64_t layer) const { return (layer + 1) / moe_layer_interval - 1; }
  int64_t MoeLayer(int64_t moe_index) const { return (moe_index + 1) * moe_layer_interval - 1; }
};

// Parses config.json text; `source` names the file in error messages.
absl::StatusOr<OpenMoeConfig> ParseConfig(const std::string& json_text, const std::string& source);
absl::StatusOr<OpenMoeConfig> LoadConfig(const std::string& path);
// "base", "8b" or "34b" (spec section 1.1).
absl::StatusOr<OpenMoeConfig> PresetConfig(const std::string& name);
// config.json text in the Hugging Face layout (the keys ParseConfig reads, plus model_type and
// architectures), for checkpoints the trainer writes.
std::string ConfigToJson(const OpenMoeConfig& config);
// Checks ranges and supported features; errors name the offending key.
absl::Status ValidateConfig(const OpenMoeConfig& config, const std::string& source);

}  // namespace openmoe

#endif  // OPENMOE_CONFIG_H_
