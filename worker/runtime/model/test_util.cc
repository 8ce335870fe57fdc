#include "model/test_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace gptq::runtime::testing {
namespace {
// Test-setup invariant (no absl/log in Abseil 20220623).
#define TEST_UTIL_CHECK(cond, what)                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "test_util: check failed: %s (%s)\n", #cond, what); \
      std::abort();                                                            \
    }                                                                          \
  } while (false)
}  // namespace

std::string MakeTempDir(const std::string& tag) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/gptq_rt_", tag, "_XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  TEST_UTIL_CHECK(mkdtemp(buf.data()) != nullptr, tmpl.c_str());
  return std::string(buf.data());
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  TEST_UTIL_CHECK(out.good(), path.c_str());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {
const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kInt: return "I32";
    case at::kLong: return "I64";
    default: TEST_UTIL_CHECK(false, "unsupported dtype in test writer"); return "";
  }
}
}  // namespace

std::string SafetensorsBytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, t0] : tensors) {
    const torch::Tensor t = t0.contiguous().cpu();
    const size_t nbytes = t.numel() * t.element_size();
    header[name] = {{"dtype", DtypeName(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {data.size(), data.size() + nbytes}}};
    data.append(static_cast<const char*>(t.data_ptr()), nbytes);
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  const uint64_t len = h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  return out + h + data;
}

void WriteSafetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  WriteFile(path, SafetensorsBytes(tensors));
}

std::string TinyConfigJson(const TinyModelSpec& s) {
  nlohmann::json j = {
      {"architectures", {s.architecture}},
      {"vocab_size", s.vocab},
      {"hidden_size", s.hidden},
      {"intermediate_size", s.ffn},
      {"num_hidden_layers", s.layers},
      {"num_attention_heads", s.heads},
      {"num_key_value_heads", s.kv_heads},
      {"max_position_embeddings", 512},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", s.tie},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"torch_dtype", "float32"},
  };
  if (!s.rope_scaling_json.empty()) j["rope_scaling"] = nlohmann::json::parse(s.rope_scaling_json);
  return j.dump(2);
}

std::vector<std::pair<std::string, torch::Tensor>> TinyModelTensors(const TinyModelSpec& s) {
  at::manual_seed(s.seed);
  const int64_t hd = s.hidden / s.heads;
  std::vector<std::pair<std::string, torch::Tensor>> t;
  auto randn = [](std::vector<int64_t> shape, double scale) { return at::randn(shape) * scale; };
  t.emplace_back("model.embed_tokens.weight", randn({s.vocab, s.hidden}, 0.5));
  t.emplace_back("model.norm.weight", 1 + randn({s.hidden}, 0.1));
  if (!s.tie) t.emplace_back("lm_head.weight", randn({s.vocab, s.hidden}, 0.2));
  const double ws = 1.0 / std::sqrt(static_cast<double>(s.hidden));
  for (int i = 0; i < s.layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    t.emplace_back(p + "input_layernorm.weight", 1 + randn({s.hidden}, 0.1));
    t.emplace_back(p + "post_attention_layernorm.weight", 1 + randn({s.hidden}, 0.1));
    t.emplace_back(p + "self_attn.q_proj.weight", randn({s.heads * hd, s.hidden}, ws));
    t.emplace_back(p + "self_attn.k_proj.weight", randn({s.kv_heads * hd, s.hidden}, ws));
    t.emplace_back(p + "self_attn.v_proj.weight", randn({s.kv_heads * hd, s.hidden}, ws));
    if (s.architecture == "Qwen2ForCausalLM") {
      t.emplace_back(p + "self_attn.q_proj.bias", randn({s.heads * hd}, 0.1));
      t.emplace_back(p + "self_attn.k_proj.bias", randn({s.kv_heads * hd}, 0.1));
      t.emplace_back(p + "self_attn.v_proj.bias", randn({s.kv_heads * hd}, 0.1));
    }
    t.emplace_back(p + "self_attn.o_proj.weight", randn({s.hidden, s.heads * hd}, ws));
    t.emplace_back(p + "mlp.gate_proj.weight", randn({s.ffn, s.hidden}, ws));
    t.emplace_back(p + "mlp.up_proj.weight", randn({s.ffn, s.hidden}, ws));
    t.emplace_back(p + "mlp.down_proj.weight",
                   randn({s.hidden, s.ffn}, 1.0 / std::sqrt(static_cast<double>(s.ffn))));
  }
  return t;
}

std::string WriteTinyModel(const std::string& dir, const TinyModelSpec& spec) {
  mkdir(dir.c_str(), 0755);
  WriteFile(dir + "/config.json", TinyConfigJson(spec));
  WriteSafetensors(dir + "/model.safetensors", TinyModelTensors(spec));
  return dir;
}

}  // namespace gptq::runtime::testing
