#include "model/decoder.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/test_util.h"

namespace gptq::runtime {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::string DataRoot() {
  const char* env = std::getenv("GPTQ_TEST_DATA_ROOT");
  return env != nullptr ? env : GPTQ_TEST_DATA_ROOT;
}

// The slow, obviously-correct twin: one sequence, explicit loops over heads and positions,
// everything in fp64, no broadcasting tricks.
torch::Tensor ReferenceForward(const DecoderModel& model, const std::vector<int64_t>& ids) {
  const ModelConfig& c = model.config();
  auto get = [&](const std::string& n) { return model.reader().Get(n).value().to(at::kDouble); };
  auto has = [&](const std::string& n) { return model.reader().Has(n); };
  auto rms = [&](const torch::Tensor& v, const torch::Tensor& w) {
    return w * (v / std::sqrt(v.pow(2).mean().item<double>() + c.rms_norm_eps));
  };
  auto lin = [&](const std::string& p, const torch::Tensor& v) {
    torch::Tensor y = at::mv(get(p + ".weight"), v);
    if (has(p + ".bias")) y = y + get(p + ".bias");
    return y;
  };
  const int64_t t_len = ids.size(), hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const torch::Tensor embed = get("model.embed_tokens.weight");
  std::vector<torch::Tensor> x;
  for (int64_t id : ids) x.push_back(embed[id].clone());
  auto rope = [&](torch::Tensor v, int64_t pos) {  // v: [hd], rotate-half convention
    torch::Tensor out = v.clone();
    const torch::Tensor inv = RopeInverseFrequencies(c).to(at::kDouble);
    for (int64_t i = 0; i < hd / 2; ++i) {
      // transformers computes the angle in fp32 (outer product of fp32 positions and inv_freq).
      const float angle = static_cast<float>(pos) * inv[i].item<float>();
      const double cs = std::cos(angle), sn = std::sin(angle);
      const double a = v[i].item<double>(), b = v[i + hd / 2].item<double>();
      out[i] = a * cs - b * sn;
      out[i + hd / 2] = b * cs + a * sn;
    }
    return out;
  };
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<torch::Tensor> q(t_len), k(t_len), v(t_len);
    for (int64_t t = 0; t < t_len; ++t) {
      const torch::Tensor h = rms(x[t], get(p + "input_layernorm.weight"));
      q[t] = lin(p + "self_attn.q_proj", h);
      k[t] = lin(p + "self_attn.k_proj", h);
      v[t] = lin(p + "self_attn.v_proj", h);
    }
    const int64_t window = c.sliding_window[l];
    for (int64_t t = 0; t < t_len; ++t) {
      torch::Tensor attn = at::zeros({nh * hd}, at::kDouble);
      for (int64_t head = 0; head < nh; ++head) {
        const int64_t kvh = head / (nh / nkv);
        const torch::Tensor qh = rope(q[t].narrow(0, head * hd, hd), t);
        std::vector<double> scores;
        std::vector<int64_t> keys;
        for (int64_t s = 0; s <= t; ++s) {
          if (window > 0 && t - s >= window) continue;
          const torch::Tensor kh = rope(k[s].narrow(0, kvh * hd, hd), s);
          scores.push_back(at::dot(qh, kh).item<double>() / std::sqrt(static_cast<double>(hd)));
          keys.push_back(s);
        }
        double mx = -1e300, sum = 0;
        for (double s : scores) mx = std::max(mx, s);
        for (double& s : scores) sum += (s = std::exp(s - mx));
        for (size_t i = 0; i < keys.size(); ++i) {
          attn.narrow(0, head * hd, hd).add_(v[keys[i]].narrow(0, kvh * hd, hd) * (scores[i] / sum));
        }
      }
      x[t] = x[t] + lin(p + "self_attn.o_proj", attn);
      const torch::Tensor h2 = rms(x[t], get(p + "post_attention_layernorm.weight"));
      const torch::Tensor g = lin(p + "mlp.gate_proj", h2);
      const torch::Tensor u = lin(p + "mlp.up_proj", h2);
      x[t] = x[t] + lin(p + "mlp.down_proj", g * at::sigmoid(g) * u);
    }
  }
  const torch::Tensor lm = c.tie_word_embeddings ? embed : get("lm_head.weight");
  std::vector<torch::Tensor> logits;
  for (int64_t t = 0; t < t_len; ++t) logits.push_back(at::mv(lm, rms(x[t], get("model.norm.weight"))));
  return at::stack(logits);
}

void ExpectMatchesReference(const testing::TinyModelSpec& spec, const std::string& extra_config = "") {
  const std::string dir = testing::MakeTempDir("fwd");
  testing::WriteTinyModel(dir, spec);
  if (!extra_config.empty()) {
    nlohmann::json j = nlohmann::json::parse(testing::ReadFile(dir + "/config.json"));
    j.update(nlohmann::json::parse(extra_config));
    testing::WriteFile(dir + "/config.json", j.dump());
  }
  auto model = DecoderModel::Open(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int64_t> ids = {1, 5, 17, 33, 2, 90, 44, 44, 7, 61, 12};
  auto logits = ForwardLogits(**model, at::tensor(ids, at::kLong).view({1, -1}), at::kFloat, torch::kCPU);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const torch::Tensor ref = ReferenceForward(**model, ids);
  const double err = ((*logits)[0].to(at::kDouble) - ref).abs().max().item<double>();
  const double scale = ref.abs().max().item<double>();
  EXPECT_LT(err, 1e-4 * scale) << spec.architecture << " max |diff| " << err << " scale " << scale;
}

TEST(DecoderForwardTest, LlamaGqaMatchesReference) {
  ExpectMatchesReference({});
}

TEST(DecoderForwardTest, LlamaTiedMhaMatchesReference) {
  testing::TinyModelSpec s;
  s.kv_heads = 4;
  s.tie = true;
  ExpectMatchesReference(s);
}

TEST(DecoderForwardTest, Llama3RopeScalingMatchesReference) {
  testing::TinyModelSpec s;
  s.rope_scaling_json =
      R"({"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64})";
  ExpectMatchesReference(s, R"({"rope_theta":5000.0})");
}

TEST(DecoderForwardTest, Qwen2BiasMatchesReference) {
  testing::TinyModelSpec s;
  s.architecture = "Qwen2ForCausalLM";
  ExpectMatchesReference(s);
}

TEST(DecoderForwardTest, MistralSlidingWindowMatchesReference) {
  testing::TinyModelSpec s;
  s.architecture = "MistralForCausalLM";
  ExpectMatchesReference(s, R"({"sliding_window":4})");
}

TEST(DecoderForwardTest, BatchRowsAreIndependent) {
  const std::string dir = testing::MakeTempDir("batch");
  testing::WriteTinyModel(dir, {});
  auto model = DecoderModel::Open(dir);
  ASSERT_TRUE(model.ok());
  const torch::Tensor ids = at::randint(0, 96, {3, 9}, at::kLong);
  auto all = ForwardLogits(**model, ids, at::kFloat, torch::kCPU);
  ASSERT_TRUE(all.ok());
  for (int b = 0; b < 3; ++b) {
    auto one = ForwardLogits(**model, ids.narrow(0, b, 1), at::kFloat, torch::kCPU);
    ASSERT_TRUE(one.ok());
    EXPECT_TRUE(at::allclose((*all)[b], (*one)[0], 1e-5, 1e-5));
  }
}

// stories15M's real behaviour (data PROVENANCE): greedy decoding from BOS.
TEST(DecoderForwardTest, Stories15MGreedyFromBos) {
  const std::string dir = DataRoot() + "/models/stories15M-hf";
  if (!Exists(dir + "/model.safetensors")) GTEST_SKIP() << "no test data at " << dir;
  auto model = DecoderModel::Open(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto ids = GreedyGenerate(**model, {1}, 12);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, std::vector<int64_t>({9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365}));
}

// Tiny random Mistral/Qwen2/Llama fixtures with logits from transformers (made by
// testdata/make_fixtures.py on a machine with PyTorch + transformers).
class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, LogitsMatchTransformers) {
  const std::string dir = std::string(GPTQ_SOURCE_DIR) + "/worker/runtime/testdata/" + GetParam();
  if (!Exists(dir + "/model.safetensors") || !Exists(dir + "/input_ids.json")) {
    GTEST_SKIP() << "fixture " << dir
                 << " absent: run `python3 worker/runtime/testdata/make_fixtures.py` (torch + transformers 5.x)";
  }
  auto model = DecoderModel::Open(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const nlohmann::json ids_json = nlohmann::json::parse(testing::ReadFile(dir + "/input_ids.json"));
  std::vector<int64_t> ids = ids_json.is_object() ? ids_json["input_ids"].get<std::vector<int64_t>>()
                                                  : ids_json.get<std::vector<int64_t>>();
  torch::Tensor expected;
  if (Exists(dir + "/logits.safetensors")) {
    auto f = MappedSafetensorsFile::Open(dir + "/logits.safetensors");
    ASSERT_TRUE(f.ok()) << f.status();
    auto t = (*f)->Get("logits");
    ASSERT_TRUE(t.ok()) << t.status();
    expected = t->to(at::kFloat).reshape({static_cast<int64_t>(ids.size()), -1});
  } else {
    ASSERT_TRUE(Exists(dir + "/logits.json")) << "neither logits.safetensors nor logits.json in " << dir;
    const auto rows = nlohmann::json::parse(testing::ReadFile(dir + "/logits.json")).get<std::vector<std::vector<float>>>();
    std::vector<torch::Tensor> r;
    for (const auto& row : rows) r.push_back(at::tensor(row, at::kFloat));
    expected = at::stack(r);
  }
  auto logits = ForwardLogits(**model, at::tensor(ids, at::kLong).view({1, -1}), at::kFloat, torch::kCPU);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ((*logits)[0].sizes(), expected.sizes());
  const double err = ((*logits)[0] - expected).abs().max().item<double>();
  EXPECT_LT(err, 1e-4 * std::max(1.0, expected.abs().max().item<double>())) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Families, FixtureTest, ::testing::Values("llama", "llama3rope", "mistral", "qwen2"));

}  // namespace
}  // namespace gptq::runtime
