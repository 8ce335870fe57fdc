// A decoder-only model's `config.json`, as the runtime needs it. Torch-free.
#ifndef GPTQ_WORKER_RUNTIME_MODEL_CONFIG_H_
#define GPTQ_WORKER_RUNTIME_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gptq::runtime {

enum class Architecture { kLlama, kMistral, kQwen2 };

// "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM": for error messages.
std::string SupportedArchitectures();

struct RopeConfig {
  std::string type = "default";  // "default", "linear", "llama3"
  double theta = 10000.0;
  double factor = 1.0;                   // linear, llama3
  double low_freq_factor = 1.0;          // llama3
  double high_freq_factor = 4.0;         // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string architecture_name;  // as in config.json, e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama with attention_bias
  bool o_bias = false;    // Llama with attention_bias
  bool mlp_bias = false;  // Llama with mlp_bias
  // Per layer: attention window (0 = full causal attention).
  std::vector<int64_t> sliding_window;
  std::string torch_dtype = "float32";  // "float32", "float16", "bfloat16"
  int64_t bos_token_id = 1;
};

// Parses and validates `<dir>/config.json`. Errors name the file and the field; an
// unsupported architecture lists the supported ones.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);
// The same from JSON text; `source` names it in errors.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_MODEL_CONFIG_H_
