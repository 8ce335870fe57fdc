#include "model/config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace gptq::runtime {

std::string SupportedArchitectures() {
  return "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";
}

namespace {

using nlohmann::json;

// Reads an integer field; absent → `fallback` if given, else an error.
absl::Status GetInt(const json& j, const std::string& key, const std::string& source, int64_t* out,
                    bool required) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(source, ": missing field \"", key, "\""));
    return absl::OkStatus();
  }
  if (!j[key].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", key, "\" must be an integer"));
  }
  *out = j[key].get<int64_t>();
  return absl::OkStatus();
}

absl::Status GetDouble(const json& j, const std::string& key, const std::string& source, double* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", key, "\" must be a number"));
  }
  *out = j[key].get<double>();
  return absl::OkStatus();
}

bool GetBool(const json& j, const std::string& key, bool fallback) {
  if (!j.contains(key) || !j[key].is_boolean()) return fallback;
  return j[key].get<bool>();
}

#define CFG_RETURN_IF_ERROR(expr)        \
  do {                                   \
    absl::Status s_ = (expr);            \
    if (!s_.ok()) return s_;             \
  } while (false)

absl::Status ParseRope(const json& j, const std::string& source, RopeConfig* rope) {
  // transformers 4.x: "rope_theta" + "rope_scaling"; 5.x: "rope_parameters" holding both.
  CFG_RETURN_IF_ERROR(GetDouble(j, "rope_theta", source, &rope->theta));
  const json* scaling = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    scaling = &j["rope_parameters"];
    CFG_RETURN_IF_ERROR(GetDouble(*scaling, "rope_theta", source + " rope_parameters", &rope->theta));
  } else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    scaling = &j["rope_scaling"];
  }
  if (scaling == nullptr) return absl::OkStatus();
  std::string type = "default";
  if (scaling->contains("rope_type") && (*scaling)["rope_type"].is_string()) {
    type = (*scaling)["rope_type"].get<std::string>();
  } else if (scaling->contains("type") && (*scaling)["type"].is_string()) {
    type = (*scaling)["type"].get<std::string>();
  }
  const std::string where = source + " rope scaling";
  if (type == "default") {
    rope->type = "default";
  } else if (type == "linear") {
    rope->type = "linear";
    CFG_RETURN_IF_ERROR(GetDouble(*scaling, "factor", where, &rope->factor));
  } else if (type == "llama3") {
    rope->type = "llama3";
    CFG_RETURN_IF_ERROR(GetDouble(*scaling, "factor", where, &rope->factor));
    CFG_RETURN_IF_ERROR(GetDouble(*scaling, "low_freq_factor", where, &rope->low_freq_factor));
    CFG_RETURN_IF_ERROR(GetDouble(*scaling, "high_freq_factor", where, &rope->high_freq_factor));
    CFG_RETURN_IF_ERROR(GetInt(*scaling, "original_max_position_embeddings", where,
                               &rope->original_max_position_embeddings, /*required=*/true));
    if (!(rope->high_freq_factor > rope->low_freq_factor)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": high_freq_factor must exceed low_freq_factor"));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": unsupported rope scaling type \"", type, "\" (supported: default, linear, llama3)"));
  }
  if (!(rope->factor > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": factor must be positive"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  ModelConfig c;
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": missing \"architectures\" (one of: ", SupportedArchitectures(), ")"));
  }
  c.architecture_name = j["architectures"][0].get<std::string>();
  if (c.architecture_name == "LlamaForCausalLM") {
    c.architecture = Architecture::kLlama;
  } else if (c.architecture_name == "MistralForCausalLM") {
    c.architecture = Architecture::kMistral;
  } else if (c.architecture_name == "Qwen2ForCausalLM") {
    c.architecture = Architecture::kQwen2;
  } else {
    return absl::UnimplementedError(absl::StrCat(source, ": unsupported architecture \"", c.architecture_name,
                                                 "\"; supported: ", SupportedArchitectures()));
  }
  CFG_RETURN_IF_ERROR(GetInt(j, "vocab_size", source, &c.vocab_size, true));
  CFG_RETURN_IF_ERROR(GetInt(j, "hidden_size", source, &c.hidden_size, true));
  CFG_RETURN_IF_ERROR(GetInt(j, "intermediate_size", source, &c.intermediate_size, true));
  CFG_RETURN_IF_ERROR(GetInt(j, "num_hidden_layers", source, &c.num_layers, true));
  CFG_RETURN_IF_ERROR(GetInt(j, "num_attention_heads", source, &c.num_heads, true));
  c.num_kv_heads = c.num_heads;
  CFG_RETURN_IF_ERROR(GetInt(j, "num_key_value_heads", source, &c.num_kv_heads, false));
  CFG_RETURN_IF_ERROR(GetInt(j, "max_position_embeddings", source, &c.max_position_embeddings, false));
  CFG_RETURN_IF_ERROR(GetDouble(j, "rms_norm_eps", source, &c.rms_norm_eps));
  CFG_RETURN_IF_ERROR(GetInt(j, "bos_token_id", source, &c.bos_token_id, false));
  for (const auto& [name, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                                {"hidden_size", c.hidden_size},
                                {"intermediate_size", c.intermediate_size},
                                {"num_hidden_layers", c.num_layers},
                                {"num_attention_heads", c.num_heads},
                                {"num_key_value_heads", c.num_kv_heads}}) {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", name, "\" must be positive"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_attention_heads (", c.num_heads,
                                                   ") must be a multiple of num_key_value_heads (",
                                                   c.num_kv_heads, ")"));
  }
  c.head_dim = 0;
  CFG_RETURN_IF_ERROR(GetInt(j, "head_dim", source, &c.head_dim, false));
  if (c.head_dim <= 0) {
    if (c.hidden_size % c.num_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_size (", c.hidden_size,
                                                     ") is not a multiple of num_attention_heads (",
                                                     c.num_heads, ") and no head_dim is given"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": head_dim (", c.head_dim, ") must be even for rotary embeddings"));
  }
  if (j.contains("hidden_act") && j["hidden_act"].is_string()) {
    const std::string act = j["hidden_act"].get<std::string>();
    if (act != "silu" && act != "swish") {
      return absl::UnimplementedError(absl::StrCat(source, ": unsupported hidden_act \"", act, "\" (supported: silu)"));
    }
  }
  CFG_RETURN_IF_ERROR(ParseRope(j, source, &c.rope));
  c.tie_word_embeddings = GetBool(j, "tie_word_embeddings", false);  // false in all three configs
  switch (c.architecture) {
    case Architecture::kLlama:
      c.qkv_bias = c.o_bias = GetBool(j, "attention_bias", false);
      c.mlp_bias = GetBool(j, "mlp_bias", false);
      break;
    case Architecture::kMistral:
      break;
    case Architecture::kQwen2:
      c.qkv_bias = true;
      break;
  }
  // Sliding windows: Mistral applies config.sliding_window to every layer; Qwen2 only with
  // use_sliding_window, to layers >= max_window_layers (transformers' layer_types rule).
  c.sliding_window.assign(c.num_layers, 0);
  int64_t window = 0;
  if (c.architecture == Architecture::kMistral) {
    CFG_RETURN_IF_ERROR(GetInt(j, "sliding_window", source, &window, false));
    for (auto& w : c.sliding_window) w = window;
  } else if (c.architecture == Architecture::kQwen2 && GetBool(j, "use_sliding_window", false)) {
    CFG_RETURN_IF_ERROR(GetInt(j, "sliding_window", source, &window, false));
    int64_t max_window_layers = c.num_layers;
    CFG_RETURN_IF_ERROR(GetInt(j, "max_window_layers", source, &max_window_layers, false));
    for (int64_t i = 0; i < c.num_layers; ++i) c.sliding_window[i] = i >= max_window_layers ? window : 0;
  }
  if (j.contains("layer_types") && j["layer_types"].is_array() &&
      static_cast<int64_t>(j["layer_types"].size()) == c.num_layers &&
      (c.architecture != Architecture::kQwen2 || GetBool(j, "use_sliding_window", false))) {
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const auto& t = j["layer_types"][i];
      if (t.is_string() && t.get<std::string>() == "full_attention") c.sliding_window[i] = 0;
      if (t.is_string() && t.get<std::string>() == "sliding_attention") c.sliding_window[i] = window;
    }
  }
  if (window < 0) return absl::InvalidArgumentError(absl::StrCat(source, ": sliding_window must be >= 0"));
  std::string dtype_key = j.contains("dtype") ? "dtype" : "torch_dtype";
  if (j.contains(dtype_key) && j[dtype_key].is_string()) c.torch_dtype = j[dtype_key].get<std::string>();
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), path);
}

}  // namespace gptq::runtime
