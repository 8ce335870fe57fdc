#include "model/config.h"

#include <cmath>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/decoder.h"

namespace gptq::runtime {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kBase[] = R"({"architectures":["%s"],"vocab_size":100,"hidden_size":64,
  "intermediate_size":128,"num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2 %s})";

std::string Make(const std::string& arch, const std::string& extra = "") {
  char buf[1024];
  std::snprintf(buf, sizeof(buf), kBase, arch.c_str(), extra.c_str());
  return buf;
}

TEST(ModelConfigTest, LlamaDefaults) {
  auto c = ParseModelConfig(Make("LlamaForCausalLM"), "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->rope.type, "default");
  EXPECT_EQ(c->sliding_window, std::vector<int64_t>({0, 0, 0}));
}

TEST(ModelConfigTest, Qwen2HasQkvBiasAndWindowRule) {
  auto c = ParseModelConfig(Make("Qwen2ForCausalLM"), "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  auto w = ParseModelConfig(
      Make("Qwen2ForCausalLM", R"(,"use_sliding_window":true,"sliding_window":8,"max_window_layers":1)"), "cfg");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->sliding_window, std::vector<int64_t>({0, 8, 8}));
  auto off = ParseModelConfig(Make("Qwen2ForCausalLM", R"(,"use_sliding_window":false,"sliding_window":8)"), "cfg");
  EXPECT_EQ(off->sliding_window, std::vector<int64_t>({0, 0, 0}));
}

TEST(ModelConfigTest, MistralWindowAndHeadDim) {
  auto c = ParseModelConfig(Make("MistralForCausalLM", R"(,"sliding_window":4,"head_dim":32)"), "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, std::vector<int64_t>({4, 4, 4}));
  EXPECT_EQ(c->head_dim, 32);
  auto none = ParseModelConfig(Make("MistralForCausalLM", R"(,"sliding_window":null)"), "cfg");
  EXPECT_EQ(none->sliding_window, std::vector<int64_t>({0, 0, 0}));
}

TEST(ModelConfigTest, RopeParametersOfTransformers5) {
  auto c = ParseModelConfig(
      Make("LlamaForCausalLM", R"(,"rope_parameters":{"rope_type":"default","rope_theta":500000.0})"), "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope.theta, 500000.0);
}

TEST(ModelConfigTest, Llama3RopeScalingMatchesFormula) {
  auto c = ParseModelConfig(
      Make("LlamaForCausalLM",
           R"(,"rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
              "high_freq_factor":4.0,"original_max_position_embeddings":8192})"),
      "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, "llama3");
  const torch::Tensor f = RopeInverseFrequencies(*c);
  ASSERT_EQ(f.size(0), 8);
  // Scalar twin of transformers' _compute_llama3_parameters.
  for (int i = 0; i < 8; ++i) {
    const double base = 1.0 / std::pow(500000.0, 2.0 * i / 16.0);
    const double wavelen = 2 * M_PI / base;
    double expect;
    if (wavelen < 8192.0 / 4.0) {
      expect = base;
    } else if (wavelen > 8192.0 / 1.0) {
      expect = base / 8.0;
    } else {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      expect = (1 - smooth) * base / 8.0 + smooth * base;
    }
    EXPECT_NEAR(f[i].item<float>(), expect, 1e-6 * expect + 1e-12) << i;
  }
}

TEST(ModelConfigTest, ErrorsNameSourceAndField) {
  auto arch = ParseModelConfig(Make("FalconForCausalLM"), "/m/config.json");
  EXPECT_EQ(arch.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(arch.status().message()),
              AllOf(HasSubstr("/m/config.json"), HasSubstr("FalconForCausalLM"), HasSubstr(SupportedArchitectures())));
  auto missing = ParseModelConfig(R"({"architectures":["LlamaForCausalLM"],"vocab_size":5})", "/m/config.json");
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("missing field \"hidden_size\""));
  auto heads = ParseModelConfig(Make("LlamaForCausalLM", R"(,"num_key_value_heads":3)"), "c");
  EXPECT_THAT(std::string(heads.status().message()), HasSubstr("multiple of num_key_value_heads"));
  auto rope = ParseModelConfig(Make("LlamaForCausalLM", R"(,"rope_scaling":{"rope_type":"yarn","factor":2.0})"), "c");
  EXPECT_THAT(std::string(rope.status().message()), HasSubstr("unsupported rope scaling type \"yarn\""));
  auto notjson = ParseModelConfig("{", "c");
  EXPECT_THAT(std::string(notjson.status().message()), HasSubstr("not a JSON object"));
}

}  // namespace
}  // namespace gptq::runtime
