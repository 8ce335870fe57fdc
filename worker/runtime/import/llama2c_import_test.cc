#include "worker/runtime/import/llama2c_import.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/runtime/commands.h"
#include "worker/runtime/tokenizer/tokenizer.h"
#include "worker/runtime/writer/safetensors_reader.h"

namespace gptq::runtime {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Removes the tests' directories at the end of a passing run (kept on failure, to look at).
class TempDirCleanup : public ::testing::Environment {
 public:
  static std::vector<std::string>& Dirs() {
    static auto* dirs = new std::vector<std::string>;
    return *dirs;
  }
  void TearDown() override {
    if (::testing::UnitTest::GetInstance()->Failed()) return;
    for (const std::string& dir : Dirs()) {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  }
};
::testing::Environment* const kTempDirCleanup =
    ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

std::string FreshDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir = ::testing::TempDir() + "/llama2c_import_test_" + info->name() + "_" +
                          std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  TempDirCleanup::Dirs().push_back(dir);
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string DataRoot() {
  const char* env = std::getenv("GPTQ_TEST_DATA_ROOT");
  return env != nullptr && *env != '\0' ? env : GPTQ_TEST_DATA_ROOT;
}

// A generic row-major 4-D transpose of axes 1 and 2: in [a, b, c, d] -> out [a, c, b, d].
// This is how export.py spells the permutations (view / transpose(1, 2) / reshape).
std::vector<float> Transpose12(const std::vector<float>& in, int64_t a, int64_t b, int64_t c,
                               int64_t d) {
  std::vector<float> out(in.size());
  for (int64_t i0 = 0; i0 < a; ++i0)
    for (int64_t i1 = 0; i1 < b; ++i1)
      for (int64_t i2 = 0; i2 < c; ++i2)
        for (int64_t i3 = 0; i3 < d; ++i3)
          out[((i0 * c + i2) * b + i1) * d + i3] = in[((i0 * b + i1) * c + i2) * d + i3];
  return out;
}

// export.py hf_export's permute_original: llama2.c -> HF.
//   w.view(dim1, dim2).reshape(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2)
std::vector<float> PermuteOriginal(const std::vector<float>& w, int64_t n_heads, int64_t dim1,
                                   int64_t dim2) {
  return Transpose12(w, n_heads, dim1 / n_heads / 2, 2, dim2);
}
// export.py load_hf_model's permute_reverse: HF -> llama2.c.
//   w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2)
std::vector<float> PermuteReverse(const std::vector<float>& w, int64_t n_heads, int64_t dim1,
                                  int64_t dim2) {
  return Transpose12(w, n_heads, 2, dim1 / n_heads / 2, dim2);
}

std::vector<float> Floats(absl::string_view bytes) {
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

TEST(PermuteQkRowsToHfTest, SmallExample) {
  // One head of 4 rows (pairs (0,1), (2,3) in llama2.c) -> HF rows 0, 2, 1, 3.
  const std::vector<float> w = {0, 0, 1, 1, 2, 2, 3, 3};
  EXPECT_EQ(PermuteQkRowsToHf(w.data(), 4, 2, 1), (std::vector<float>{0, 0, 2, 2, 1, 1, 3, 3}));
}

TEST(PermuteQkRowsToHfTest, MatchesExportPyFormulas) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (auto [heads, head_dim, cols] : {std::tuple<int64_t, int64_t, int64_t>{1, 2, 3},
                                       {6, 48, 288}, {4, 8, 64}, {3, 10, 7}}) {
    std::vector<float> w(static_cast<size_t>(heads * head_dim * cols));
    for (float& x : w) x = normal(rng);
    const std::vector<float> ours = PermuteQkRowsToHf(w.data(), heads * head_dim, cols, heads);
    EXPECT_EQ(ours, PermuteOriginal(w, heads, heads * head_dim, cols)) << heads << "x" << head_dim;
    EXPECT_EQ(PermuteReverse(ours, heads, heads * head_dim, cols), w);
  }
}

TEST(ParseLlama2cHeaderTest, ValidatesFields) {
  auto header = [](std::vector<int32_t> v) {
    std::string s(v.size() * 4, '\0');
    std::memcpy(s.data(), v.data(), s.size());
    return s;
  };
  std::string h = header({288, 768, 6, 6, 6, 32000, 256});
  absl::StatusOr<Llama2cConfig> c = ParseLlama2cHeader(h.data(), h.size(), "m.bin");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->shared_classifier);
  EXPECT_EQ(c->head_dim(), 48);
  EXPECT_EQ(c->ExpectedFileBytes(), 60816028u);  // stories15M.bin

  h = header({64, 172, 5, 8, 4, -512, 512});
  c = ParseLlama2cHeader(h.data(), h.size(), "m.bin");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->shared_classifier);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->kv_dim(), 32);

  h = header({288, 768, 6, 5, 5, 32000, 256});
  EXPECT_THAT(ParseLlama2cHeader(h.data(), h.size(), "m.bin").status().message(),
              HasSubstr("dim 288 is not a multiple of n_heads 5"));
  h = header({288, 768, 6, 6, 4, 32000, 256});
  EXPECT_THAT(ParseLlama2cHeader(h.data(), h.size(), "m.bin").status().message(),
              HasSubstr("n_heads 6 is not a multiple of n_kv_heads 4"));
  h = header({288, 0, 6, 6, 6, 32000, 256});
  EXPECT_THAT(ParseLlama2cHeader(h.data(), h.size(), "m.bin").status().message(),
              HasSubstr("hidden_dim = 0"));
  h = header({0x616b3432, 2, 288, 768, 6, 6, 6, 32000, 256});
  EXPECT_THAT(ParseLlama2cHeader(h.data(), h.size(), "m.bin").status().message(),
              HasSubstr("export version 2 is not supported"));
  h = header({0x616b3432, 1, 288, 768, 6, 6, 6, 32000, 256});
  EXPECT_THAT(ParseLlama2cHeader(h.data(), h.size(), "m.bin").status().message(),
              HasSubstr("shorter than the 256-byte version-1 header"));
  h.resize(256, '\0');
  h[36] = 1;  // shared classifier
  c = ParseLlama2cHeader(h.data(), h.size(), "m.bin");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->version, 1);
  EXPECT_TRUE(c->shared_classifier);
  EXPECT_EQ(c->ExpectedFileBytes(), 60816028u - 28 + 256 - 4 * 2 * 256 * 24);  // no freq_cis
  h[36] = 7;
  EXPECT_THAT(ParseLlama2cHeader(h.data(), h.size(), "m.bin").status().message(),
              HasSubstr("shared_classifier flag is 7"));
  h = header({63, 768, 6, 3, 3, 32000, 256});
  EXPECT_THAT(ParseLlama2cHeader(h.data(), h.size(), "m.bin").status().message(),
              HasSubstr("head size 21 is odd"));
  EXPECT_THAT(ParseLlama2cHeader(h.data(), 10, "m.bin").status().message(),
              HasSubstr("shorter than the 28-byte"));
}

// Tensors of one checkpoint (one or several shards): order, and name -> (dtype, shape, bytes).
struct TensorSet {
  std::vector<std::string> order;
  std::map<std::string, std::tuple<std::string, std::vector<int64_t>, std::string>> tensors;
  void Add(const SafetensorsFile& file) {
    for (const std::string& name : file.names_in_header_order) {
      const SafetensorsEntry& e = file.tensors.at(name);
      order.push_back(name);
      tensors[name] = {e.dtype, e.shape, std::string(file.Data(name))};
    }
  }
};

// Names, order, dtype, shape and bytes of every tensor.
void ExpectSameTensors(const TensorSet& got, const TensorSet& want) {
  EXPECT_EQ(got.order, want.order);
  for (const auto& [name, w] : want.tensors) {
    auto it = got.tensors.find(name);
    ASSERT_NE(it, got.tensors.end()) << "missing " << name;
    EXPECT_EQ(std::get<0>(it->second), std::get<0>(w)) << name;
    EXPECT_EQ(std::get<1>(it->second), std::get<1>(w)) << name;
    EXPECT_TRUE(std::get<2>(it->second) == std::get<2>(w)) << name << " differs";
  }
  EXPECT_EQ(got.tensors.size(), want.tensors.size());
}

// Writes a llama2.c model.bin (`version` 0: export.py legacy_export, 1: version1_export) from
// an HF checkpoint with export.py's inverse mapping (permute_reverse for wq/wk), plus `wcls`
// when given (unshared classifier).
void WriteModelBin(const std::string& path, const SafetensorsFile& hf, const Llama2cConfig& c,
                   const std::vector<float>* wcls, int version) {
  std::ofstream out(path, std::ios::binary);
  auto put_ints = [&out](std::vector<int32_t> v) {
    out.write(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  };
  if (version == 0) {
    put_ints({c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
              wcls != nullptr ? -c.vocab_size : c.vocab_size, c.seq_len});
  } else {
    put_ints({0x616b3432, 1, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
              c.vocab_size, c.seq_len});
    std::string rest(256 - 36, '\0');
    rest[0] = wcls == nullptr ? 1 : 0;
    out.write(rest.data(), rest.size());
  }
  auto put = [&out](const std::vector<float>& v) {
    out.write(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  };
  auto tensor = [&hf](const std::string& name) { return Floats(hf.Data(name)); };
  auto layers = [&](const char* suffix) {
    for (int i = 0; i < c.n_layers; ++i) {
      std::vector<float> w = tensor("model.layers." + std::to_string(i) + "." + suffix);
      if (std::string(suffix) == "self_attn.q_proj.weight") {
        w = PermuteReverse(w, c.n_heads, c.dim, c.dim);
      } else if (std::string(suffix) == "self_attn.k_proj.weight") {
        w = PermuteReverse(w, c.n_kv_heads, c.kv_dim(), c.dim);
      }
      put(w);
    }
  };
  if (version == 0) {
    put(tensor("model.embed_tokens.weight"));
    layers("input_layernorm.weight");
    for (const char* m : {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                          "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                          "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                          "mlp.down_proj.weight", "mlp.up_proj.weight"}) {
      layers(m);
    }
    put(tensor("model.norm.weight"));
    put(std::vector<float>(static_cast<size_t>(2 * c.seq_len * (c.head_dim() / 2)), 0.5f));
  } else {
    layers("input_layernorm.weight");
    layers("post_attention_layernorm.weight");
    put(tensor("model.norm.weight"));
    put(tensor("model.embed_tokens.weight"));
    for (const char* m : {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                          "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                          "mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight"}) {
      layers(m);
    }
  }
  if (wcls != nullptr) put(*wcls);
}

Llama2cConfig ConfigFromHf(const nlohmann::json& hf_config) {
  Llama2cConfig c;
  c.dim = hf_config["hidden_size"];
  c.hidden_dim = hf_config["intermediate_size"];
  c.n_layers = hf_config["num_hidden_layers"];
  c.n_heads = hf_config["num_attention_heads"];
  c.n_kv_heads = hf_config["num_key_value_heads"];
  c.vocab_size = hf_config["vocab_size"];
  c.seq_len = hf_config["max_position_embeddings"];
  return c;
}

// stories260K (GQA: 8 heads, 4 KV heads; ffn 172) round trip through a model.bin built with
// export.py's inverse, with an unshared classifier: exercises the k permutation with
// n_kv_heads != n_heads and lm_head.
TEST(ImportLlama2cTest, Stories260kGqaRoundTripWithUnsharedClassifier) {
  const std::string ref_dir = DataRoot() + "/models/stories260K-hf";
  if (!fs::exists(ref_dir + "/model.safetensors")) {
    GTEST_SKIP() << "test data absent: " << ref_dir << "/model.safetensors";
  }
  absl::StatusOr<SafetensorsFile> ref = ReadSafetensorsFile(ref_dir + "/model.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  const nlohmann::json ref_config = nlohmann::json::parse(ReadFile(ref_dir + "/config.json"));
  const Llama2cConfig c = ConfigFromHf(ref_config);
  ASSERT_NE(c.n_heads, c.n_kv_heads);

  const std::string root = FreshDir();
  std::vector<float> wcls(static_cast<size_t>(c.vocab_size) * c.dim);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (float& x : wcls) x = normal(rng);
  WriteModelBin(root + "/model.bin", *ref, c, &wcls, /*version=*/0);

  ImportLlama2cOptions options;
  options.model_path = root + "/model.bin";
  options.output_dir = root + "/hf";
  options.max_shard_bytes = 300000;  // a few shards, to go through the index too
  absl::StatusOr<std::vector<WrittenFile>> files = ImportLlama2c(options);
  ASSERT_TRUE(files.ok()) << files.status();

  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(options.output_dir + "/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (const auto& [name, file] : index["weight_map"].items()) shards.insert(file);
  ASSERT_GT(shards.size(), 1u);
  TensorSet got;  // all shards, in shard order, lm_head checked and set aside
  for (const std::string& shard : shards) {
    absl::StatusOr<SafetensorsFile> st = ReadSafetensorsFile(options.output_dir + "/" + shard);
    ASSERT_TRUE(st.ok()) << st.status();
    got.Add(*st);
  }
  ASSERT_EQ(got.order.back(), "lm_head.weight");
  EXPECT_TRUE(Floats(std::get<2>(got.tensors["lm_head.weight"])) == wcls);
  EXPECT_EQ(std::get<1>(got.tensors["lm_head.weight"]),
            (std::vector<int64_t>{c.vocab_size, c.dim}));
  got.order.pop_back();
  got.tensors.erase("lm_head.weight");
  TensorSet want;
  want.Add(*ref);
  ExpectSameTensors(got, want);
  EXPECT_EQ(index["weight_map"].count("lm_head.weight"), 1u);

  nlohmann::json config = nlohmann::json::parse(ReadFile(options.output_dir + "/config.json"));
  EXPECT_EQ(config["tie_word_embeddings"], false);
  config["tie_word_embeddings"] = true;
  EXPECT_EQ(config, ref_config);
  EXPECT_FALSE(fs::exists(options.output_dir + "/tokenizer.model"));
}

// The same model in export.py's version-1 layout (256-byte header, norms first, no
// freq_cis), with a shared and with an unshared classifier.
TEST(ImportLlama2cTest, Stories260kVersion1) {
  const std::string ref_dir = DataRoot() + "/models/stories260K-hf";
  if (!fs::exists(ref_dir + "/model.safetensors")) {
    GTEST_SKIP() << "test data absent: " << ref_dir << "/model.safetensors";
  }
  absl::StatusOr<SafetensorsFile> ref = ReadSafetensorsFile(ref_dir + "/model.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  const nlohmann::json ref_config = nlohmann::json::parse(ReadFile(ref_dir + "/config.json"));
  const Llama2cConfig c = ConfigFromHf(ref_config);
  TensorSet want;
  want.Add(*ref);
  const std::string root = FreshDir();
  std::vector<float> wcls(static_cast<size_t>(c.vocab_size) * c.dim, -0.25f);
  for (bool shared : {true, false}) {
    const std::string name = shared ? "shared" : "unshared";
    WriteModelBin(root + "/" + name + ".bin", *ref, c, shared ? nullptr : &wcls, /*version=*/1);
    ImportLlama2cOptions options;
    options.model_path = root + "/" + name + ".bin";
    options.output_dir = root + "/" + name;
    absl::StatusOr<std::vector<WrittenFile>> files = ImportLlama2c(options);
    ASSERT_TRUE(files.ok()) << files.status();
    absl::StatusOr<SafetensorsFile> st = ReadSafetensorsFile(options.output_dir +
                                                             "/model.safetensors");
    ASSERT_TRUE(st.ok()) << st.status();
    TensorSet got;
    got.Add(*st);
    if (!shared) {
      ASSERT_EQ(got.order.back(), "lm_head.weight");
      EXPECT_TRUE(Floats(std::get<2>(got.tensors["lm_head.weight"])) == wcls);
      got.order.pop_back();
      got.tensors.erase("lm_head.weight");
    }
    ExpectSameTensors(got, want);
    const nlohmann::json config =
        nlohmann::json::parse(ReadFile(options.output_dir + "/config.json"));
    EXPECT_EQ(config["tie_word_embeddings"], shared);
  }
}

std::string Llama2cDir() {
  const char* env = std::getenv("GPTQ_LLAMA2C_DIR");
  if (env != nullptr && *env != '\0') return env;
  return std::string(GPTQ_BINARY_DIR) + "/llama2c";
}

// The real stories15M.bin must import to exactly the reference HF conversion's tensors.
TEST(ImportLlama2cTest, RealStories15mMatchesReferenceConversionBitForBit) {
  const std::string dir = Llama2cDir();
  const std::string ref_dir = DataRoot() + "/models/stories15M-hf";
  if (!fs::exists(dir + "/model.bin") || !fs::exists(dir + "/tokenizer.bin")) {
    GTEST_SKIP() << "llama2.c files absent: set GPTQ_LLAMA2C_DIR or run "
                    "deploy/fetch-llama2c.sh " << dir;
  }
  if (!fs::exists(ref_dir + "/model.safetensors")) {
    GTEST_SKIP() << "test data absent: " << ref_dir;
  }
  const std::string root = FreshDir();
  const std::string out = root + "/stories15M";
  const std::vector<std::string> args = {"--model", dir + "/model.bin", "--tokenizer",
                                         dir + "/tokenizer.bin", "--output=" + out};
  ASSERT_EQ(ImportLlama2cCommand(args), 0);

  absl::StatusOr<SafetensorsFile> got = ReadSafetensorsFile(out + "/model.safetensors");
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<SafetensorsFile> want = ReadSafetensorsFile(ref_dir + "/model.safetensors");
  ASSERT_TRUE(want.ok()) << want.status();
  TensorSet got_set, want_set;
  got_set.Add(*got);
  want_set.Add(*want);
  ExpectSameTensors(got_set, want_set);
  // Same order and bytes, so the whole data sections are identical too.
  EXPECT_TRUE(absl::string_view(got->bytes).substr(8 + got->header_size) ==
              absl::string_view(want->bytes).substr(8 + want->header_size));

  for (const char* json_file : {"config.json", "tokenizer_config.json",
                                "special_tokens_map.json", "generation_config.json"}) {
    EXPECT_EQ(nlohmann::json::parse(ReadFile(out + "/" + json_file)),
              nlohmann::json::parse(ReadFile(ref_dir + "/" + json_file)))
        << json_file;
  }
  absl::StatusOr<std::string> spm =
      tokenizer::BuildSentencePieceModelFromLlama2c(dir + "/tokenizer.bin");
  ASSERT_TRUE(spm.ok()) << spm.status();
  EXPECT_EQ(ReadFile(out + "/tokenizer.model"), *spm);
}

TEST(ImportLlama2cTest, BadInputsFailCleanly) {
  const std::string root = FreshDir();
  ImportLlama2cOptions options;
  options.model_path = root + "/absent.bin";
  options.output_dir = root + "/out";
  EXPECT_EQ(ImportLlama2c(options).status().code(), absl::StatusCode::kNotFound);

  // A valid header whose arrays are one float short.
  Llama2cConfig c;
  c.dim = 8; c.hidden_dim = 16; c.n_layers = 1; c.n_heads = 2; c.n_kv_heads = 1;
  c.vocab_size = 10; c.seq_len = 4;
  const int32_t header[7] = {8, 16, 1, 2, 1, 10, 4};
  {
    std::ofstream out(root + "/short.bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    const std::vector<float> zeros((c.ExpectedFileBytes() - 28) / 4 - 1, 0.f);
    out.write(reinterpret_cast<const char*>(zeros.data()), zeros.size() * 4);
  }
  options.model_path = root + "/short.bin";
  absl::Status s = ImportLlama2c(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("implies ", c.ExpectedFileBytes())));

  // Now the right size, but a missing tokenizer: fails before anything is written.
  {
    std::ofstream out(root + "/ok.bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    const std::vector<float> ones((c.ExpectedFileBytes() - 28) / 4, 1.f);
    out.write(reinterpret_cast<const char*>(ones.data()), ones.size() * 4);
  }
  options.model_path = root + "/ok.bin";
  options.tokenizer_path = root + "/absent_tokenizer.bin";
  EXPECT_EQ(ImportLlama2c(options).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(options.output_dir));
  // A tokenizer of another model (512 pieces for a vocab of 10).
  const std::string tok512 = DataRoot() + "/models/stories260K-hf/tok512.bin";
  if (fs::exists(tok512)) {
    options.tokenizer_path = tok512;
    s = ImportLlama2c(options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("has 512 pieces but model"));
    EXPECT_FALSE(fs::exists(options.output_dir));
  }

  // The command: usage errors exit 2, failures 1, success 0 (GQA kv_dim 4 shapes checked).
  EXPECT_EQ(ImportLlama2cCommand({}), 2);
  EXPECT_EQ(ImportLlama2cCommand({"--model", root + "/ok.bin", "--bogus", "x"}), 2);
  EXPECT_EQ(ImportLlama2cCommand({"--model", root + "/ok.bin", "--output"}), 2);
  EXPECT_EQ(ImportLlama2cCommand({"--model", root + "/ok.bin", "--output", root + "/o",
                                  "--max-shard-bytes", "ten"}), 2);
  EXPECT_EQ(ImportLlama2cCommand({"--model", root + "/short.bin", "--output", root + "/o"}), 1);
  EXPECT_EQ(ImportLlama2cCommand({"--model", root + "/ok.bin", "--output", root + "/o"}), 0);
  absl::StatusOr<SafetensorsFile> st = ReadSafetensorsFile(root + "/o/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->tensors.at("model.layers.0.self_attn.k_proj.weight").shape,
            (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(st->tensors.size(), 1u + 9u + 1u);
  // The output now exists and is not empty: a second import is refused.
  EXPECT_EQ(ImportLlama2cCommand({"--model", root + "/ok.bin", "--output", root + "/o"}), 1);
}

}  // namespace
}  // namespace gptq::runtime
