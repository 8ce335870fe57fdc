#include "model/safetensors.h"

#include <sys/stat.h>

#include <cstring>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/decoder.h"
#include "model/test_util.h"

namespace gptq::runtime {
namespace {

using ::testing::HasSubstr;
using ::testing::AllOf;
using testing::MakeTempDir;
using testing::SafetensorsBytes;
using testing::WriteFile;
using testing::WriteSafetensors;

TEST(SafetensorsTest, RoundTripsDtypesZeroCopy) {
  const std::string dir = MakeTempDir("st");
  const torch::Tensor a = at::arange(12, at::kFloat).reshape({3, 4});
  const torch::Tensor b = at::arange(6, at::kFloat).to(at::kHalf);
  const torch::Tensor c = at::arange(5, at::kFloat).to(at::kBFloat16);
  WriteSafetensors(dir + "/x.safetensors", {{"a", a}, {"b", b}, {"c", c}});
  auto f = MappedSafetensorsFile::Open(dir + "/x.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  auto ta = (*f)->Get("a");
  ASSERT_TRUE(ta.ok());
  EXPECT_TRUE(at::equal(*ta, a));
  auto tb = (*f)->Get("b");
  ASSERT_TRUE(tb.ok());
  EXPECT_EQ(tb->scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(*tb, b));
  auto tc = (*f)->Get("c");
  ASSERT_TRUE(tc.ok());
  EXPECT_TRUE(at::equal(tc->to(at::kFloat), c.to(at::kFloat)));
  // A view outlives the file object (the mapping is kept alive by the tensor).
  torch::Tensor keep = *ta;
  f->reset();
  EXPECT_FLOAT_EQ(keep[2][3].item<float>(), 11.0f);
  // Writing into a view never reaches the file (private mapping).
  keep.fill_(0);
  auto again = MappedSafetensorsFile::Open(dir + "/x.safetensors");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(at::equal(*(*again)->Get("a"), a));
  auto missing = (*again)->Get("zzz");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), AllOf(HasSubstr("x.safetensors"), HasSubstr("zzz")));
}

TEST(SafetensorsTest, TruncatedFileNamesFileAndTensor) {
  const std::string dir = MakeTempDir("st");
  std::string bytes = SafetensorsBytes({{"w", at::ones({16, 16})}});
  WriteFile(dir + "/t.safetensors", bytes.substr(0, bytes.size() - 10));
  auto f = MappedSafetensorsFile::Open(dir + "/t.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(f.status().message()),
              AllOf(HasSubstr(dir + "/t.safetensors"), HasSubstr("\"w\""), HasSubstr("truncated")));
}

TEST(SafetensorsTest, HeaderLengthPastEndIsCorrupt) {
  const std::string dir = MakeTempDir("st");
  std::string bytes = SafetensorsBytes({{"w", at::ones({4})}});
  const uint64_t huge = 1 << 20;
  std::memcpy(bytes.data(), &huge, 8);
  WriteFile(dir + "/h.safetensors", bytes);
  auto f = MappedSafetensorsFile::Open(dir + "/h.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()),
              AllOf(HasSubstr("h.safetensors"), HasSubstr("corrupt or truncated safetensors header")));
  WriteFile(dir + "/short.safetensors", "abc");
  auto g = MappedSafetensorsFile::Open(dir + "/short.safetensors");
  ASSERT_FALSE(g.ok());
  EXPECT_THAT(std::string(g.status().message()), AllOf(HasSubstr("short.safetensors"), HasSubstr("truncated")));
}

TEST(SafetensorsTest, HeaderNotJsonIsCorrupt) {
  const std::string dir = MakeTempDir("st");
  std::string bytes = SafetensorsBytes({{"w", at::ones({4})}});
  bytes[8] = '#';  // breaks the JSON's opening brace
  WriteFile(dir + "/j.safetensors", bytes);
  auto f = MappedSafetensorsFile::Open(dir + "/j.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()),
              AllOf(HasSubstr("j.safetensors"), HasSubstr("not a JSON object")));
}

TEST(SafetensorsTest, SizeMismatchAndUnknownDtypeNameTheTensor) {
  const std::string dir = MakeTempDir("st");
  std::string bytes = SafetensorsBytes({{"w", at::ones({4})}});
  // Same length edits inside the JSON header.
  std::string wrong_shape = bytes;
  wrong_shape.replace(wrong_shape.find("[4]"), 3, "[5]");
  WriteFile(dir + "/s.safetensors", wrong_shape);
  auto f = MappedSafetensorsFile::Open(dir + "/s.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()),
              AllOf(HasSubstr("s.safetensors"), HasSubstr("\"w\""), HasSubstr("needs 20")));
  std::string wrong_dtype = bytes;
  wrong_dtype.replace(wrong_dtype.find("F32"), 3, "Q32");
  WriteFile(dir + "/d.safetensors", wrong_dtype);
  auto g = MappedSafetensorsFile::Open(dir + "/d.safetensors");
  ASSERT_FALSE(g.ok());
  EXPECT_THAT(std::string(g.status().message()), AllOf(HasSubstr("\"w\""), HasSubstr("unsupported dtype \"Q32\"")));
}

TEST(CheckpointReaderTest, ShardedIndexAndErrors) {
  const std::string dir = MakeTempDir("shard");
  WriteSafetensors(dir + "/model-00001-of-00002.safetensors", {{"a", at::ones({2})}});
  WriteSafetensors(dir + "/model-00002-of-00002.safetensors", {{"b", at::zeros({3})}});
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  auto r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)->Has("a"));
  EXPECT_TRUE((*r)->Has("b"));
  EXPECT_THAT((*r)->FileOf("b"), HasSubstr("model-00002-of-00002"));
  auto b = (*r)->GetFloat("b", {3}, at::kFloat);
  ASSERT_TRUE(b.ok());
  auto bad_shape = (*r)->GetFloat("b", {4}, at::kFloat);
  EXPECT_THAT(std::string(bad_shape.status().message()),
              AllOf(HasSubstr("model-00002-of-00002.safetensors"), HasSubstr("\"b\""), HasSubstr("[3]"), HasSubstr("[4]")));

  // A shard named by the index but absent.
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00003-of-00003.safetensors"}})");
  auto missing = CheckpointReader::Open(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), AllOf(HasSubstr("model-00003-of-00003"), HasSubstr("\"c\"")));

  // A shard holding a tensor the index does not map there.
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"weight_map":{"b":"model-00001-of-00002.safetensors"}})");
  auto wrong = CheckpointReader::Open(dir);
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(std::string(wrong.status().message()), AllOf(HasSubstr("model-00001-of-00002"), HasSubstr("\"b\"")));
}

TEST(CheckpointReaderTest, EmptyDirIsNotFound) {
  const std::string dir = MakeTempDir("empty");
  auto r = CheckpointReader::Open(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(dir + "/model.safetensors"));
}

// Model-level validation: missing, extra and mis-shaped tensors; unsupported architectures.
class ModelValidationTest : public ::testing::Test {
 protected:
  std::string dir_ = MakeTempDir("val");
  testing::TinyModelSpec spec_;
  void Write(std::vector<std::pair<std::string, torch::Tensor>> tensors) {
    WriteFile(dir_ + "/config.json", testing::TinyConfigJson(spec_));
    WriteSafetensors(dir_ + "/model.safetensors", tensors);
  }
};

TEST_F(ModelValidationTest, MissingTensor) {
  auto t = testing::TinyModelTensors(spec_);
  t.erase(std::remove_if(t.begin(), t.end(), [](auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; }), t.end());
  Write(t);
  auto m = DecoderModel::Open(dir_);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr(dir_), HasSubstr("missing 1 tensor"), HasSubstr("model.layers.1.mlp.up_proj.weight")));
}

TEST_F(ModelValidationTest, ExtraTensor) {
  auto t = testing::TinyModelTensors(spec_);
  t.emplace_back("model.layers.7.mlp.up_proj.weight", at::ones({2}));
  Write(t);
  auto m = DecoderModel::Open(dir_);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("unexpected tensor \"model.layers.7.mlp.up_proj.weight\"")));
}

TEST_F(ModelValidationTest, WrongShape) {
  auto t = testing::TinyModelTensors(spec_);
  for (auto& [name, tensor] : t) {
    if (name == "model.layers.0.self_attn.k_proj.weight") tensor = at::ones({64, 64});
  }
  Write(t);
  auto m = DecoderModel::Open(dir_);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("model.layers.0.self_attn.k_proj.weight"),
                    HasSubstr("[64, 64]"), HasSubstr("[32, 64]")));
}

TEST_F(ModelValidationTest, UnsupportedArchitectureListsSupported) {
  spec_.architecture = "GPT2LMHeadModel";
  Write(testing::TinyModelTensors(spec_));
  auto m = DecoderModel::Open(dir_);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr("config.json"), HasSubstr("GPT2LMHeadModel"), HasSubstr("LlamaForCausalLM"),
                    HasSubstr("MistralForCausalLM"), HasSubstr("Qwen2ForCausalLM")));
}

TEST_F(ModelValidationTest, TiedEmbeddingsNeedNoLmHead) {
  spec_.tie = true;
  Write(testing::TinyModelTensors(spec_));
  auto m = DecoderModel::Open(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  auto head = (*m)->LoadHead(at::kFloat, torch::kCPU);
  ASSERT_TRUE(head.ok());
  EXPECT_TRUE(head->lm_head.is_same(head->embed));
}

TEST_F(ModelValidationTest, Fp16AndBf16CheckpointsLoadAsFloat) {
  auto t = testing::TinyModelTensors(spec_);
  for (size_t i = 0; i < t.size(); ++i) t[i].second = t[i].second.to(i % 2 ? at::kHalf : at::kBFloat16);
  Write(t);
  auto m = DecoderModel::Open(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  auto layer = (*m)->LoadLayer(1, at::kFloat, torch::kCPU);
  ASSERT_TRUE(layer.ok());
  EXPECT_EQ(layer->linears.at(kDownProj).weight.scalar_type(), at::kFloat);
}

}  // namespace
}  // namespace gptq::runtime
