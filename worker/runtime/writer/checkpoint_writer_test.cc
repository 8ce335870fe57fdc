#include "worker/runtime/writer/checkpoint_writer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/runtime/writer/safetensors_reader.h"
#include "gptq/sha256.h"

namespace gptq::runtime {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A fresh, empty directory per test (tests run as separate processes under CTest).
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
  const std::string dir = ::testing::TempDir() + "/writer_test_" + info->test_suite_name() +
                          "_" + info->name() + "_" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  TempDirCleanup::Dirs().push_back(dir);
  return dir;
}

OwnedTensor RandomTensor(const std::string& name, const std::string& dtype,
                         std::vector<int64_t> shape, uint32_t seed) {
  OwnedTensor t{name, dtype, std::move(shape), {}};
  size_t n = DtypeElementSize(dtype);
  for (int64_t d : t.shape) n *= static_cast<size_t>(d);
  std::mt19937 rng(seed);
  t.bytes.resize(n);
  for (uint8_t& b : t.bytes) b = static_cast<uint8_t>(rng());
  return t;
}

// A consistent GPTQ module: qweight [K*b/32, N], qzeros [G, N*b/32], scales [G, N] (random
// bytes; the writer does not interpret them) and g_idx[k] = k / group_size.
std::vector<OwnedTensor> GptqModule(const std::string& prefix, int64_t k, int64_t n, int bits,
                                    int group_size, uint32_t seed) {
  const int64_t g = group_size > 0 ? (k + group_size - 1) / group_size : 1;
  std::vector<OwnedTensor> module = {
      RandomTensor(prefix + ".qweight", "I32", {k * bits / 32, n}, seed),
      RandomTensor(prefix + ".qzeros", "I32", {g, n * bits / 32}, seed + 1),
      RandomTensor(prefix + ".scales", "F16", {g, n}, seed + 2),
      OwnedTensor{prefix + ".g_idx", "I32", {k}, std::vector<uint8_t>(4 * k)}};
  for (int64_t i = 0; i < k; ++i) {
    const int32_t v = static_cast<int32_t>(group_size > 0 ? i / group_size : 0);
    std::memcpy(module[3].bytes.data() + 4 * i, &v, 4);
  }
  return module;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

const char kSourceConfig[] = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 64, "torch_dtype": "float32", "quantization_config": {"stale": true}})";

std::vector<WrittenFile> WriteOrDie(CheckpointWriterOptions options,
                                    const std::vector<OwnedTensor>& tensors,
                                    const std::string& config = kSourceConfig) {
  auto writer = CheckpointWriter::Create(std::move(options));
  EXPECT_TRUE(writer.ok()) << writer.status();
  if (!writer.ok()) return {};
  for (const OwnedTensor& t : tensors) {
    absl::Status s = (*writer)->AddTensor(t.View());
    EXPECT_TRUE(s.ok()) << s;
  }
  auto files = (*writer)->Finish(config);
  EXPECT_TRUE(files.ok()) << files.status();
  return files.ok() ? *files : std::vector<WrittenFile>{};
}

TEST(CheckpointWriterTest, SingleShardRoundTrip) {
  const std::string root = FreshDir();
  const std::string out = root + "/ckpt";
  std::vector<OwnedTensor> tensors = {
      RandomTensor("b.weight", "F32", {3, 5}, 1),
      RandomTensor("a.qweight", "I32", {4, 7}, 2),
      RandomTensor("c.scales", "F16", {1, 7}, 3),
      RandomTensor("d.bf", "BF16", {3}, 4),
      RandomTensor("e.scalar", "F32", {}, 5),
      RandomTensor("f.empty", "F16", {0, 4}, 6),
  };
  CheckpointWriterOptions options;
  options.output_dir = out;
  const std::vector<WrittenFile> files = WriteOrDie(options, tensors);

  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].name, "config.json");
  EXPECT_EQ(files[1].name, "model.safetensors");
  EXPECT_THAT(ListDir(out), ElementsAre("config.json", "model.safetensors"));
  for (const WrittenFile& f : files) {
    EXPECT_EQ(f.size_bytes, fs::file_size(out + "/" + f.name)) << f.name;
    EXPECT_EQ(f.sha256_hex, *Sha256File(out + "/" + f.name)) << f.name;
  }
  EXPECT_THAT(ListDir(root), ElementsAre("ckpt"));  // no temporary directory left
  // The directory's mode follows the umask like any mkdir (not mkdtemp's 0700).
  const mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(static_cast<mode_t>(fs::status(out).permissions()) & 0777, 0777 & ~mask);

  absl::StatusOr<SafetensorsFile> st = ReadSafetensorsFile(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->header_size % 8, 0u);
  EXPECT_EQ(st->header_json.rfind("{\"__metadata__\":{\"format\":\"pt\"}", 0), 0u)
      << st->header_json;
  EXPECT_EQ(st->metadata.at("format"), "pt");
  // Header order = insertion order, and the data is laid out in that order.
  std::vector<std::string> expected_order;
  uint64_t offset = 0;
  for (const OwnedTensor& t : tensors) {
    expected_order.push_back(t.name);
    const SafetensorsEntry& e = st->tensors.at(t.name);
    EXPECT_EQ(e.dtype, t.dtype);
    EXPECT_EQ(e.shape, t.shape);
    EXPECT_EQ(e.begin, offset) << t.name;
    offset = e.end;
    EXPECT_EQ(std::string(st->Data(t.name)),
              std::string(t.bytes.begin(), t.bytes.end())) << t.name;
  }
  EXPECT_EQ(st->names_in_header_order, expected_order);

  const nlohmann::json config = nlohmann::json::parse(ReadFile(out + "/config.json"));
  EXPECT_EQ(config["torch_dtype"], "float16");
  EXPECT_EQ(config["hidden_size"], 64);
  EXPECT_FALSE(config.contains("quantization_config"));  // stale one dropped: not quantized
}

TEST(CheckpointWriterTest, HeaderPaddingIsSpacesToMultipleOf8) {
  // Names of different lengths move the JSON length through all residues mod 8.
  for (int extra = 0; extra < 8; ++extra) {
    const std::string root = FreshDir();
    CheckpointWriterOptions options;
    options.output_dir = root + "/out" + std::to_string(extra);
    WriteOrDie(options, {RandomTensor("t" + std::string(extra, 'x'), "F32", {2}, 9)});
    const std::string bytes = ReadFile(options.output_dir + "/model.safetensors");
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
    ASSERT_EQ(n % 8, 0u);
    const std::string header = bytes.substr(8, n);
    const size_t last = header.find_last_not_of(' ');
    ASSERT_NE(last, std::string::npos);
    EXPECT_EQ(header[last], '}');
    EXPECT_LT(header.size() - last - 1, 8u);
    EXPECT_EQ(bytes.size(), 8 + n + 8);  // 2 floats
    fs::remove_all(root);
  }
}

TEST(CheckpointWriterTest, ShardingBoundariesAndIndex) {
  const std::string root = FreshDir();
  const std::string out = root + "/sharded";
  // With a 100-byte limit: [40 + 60 = 100 exactly] [4] [200 > limit: alone] [8 + 92 = 100].
  std::vector<OwnedTensor> tensors = {
      RandomTensor("l0.a", "F32", {10}, 1),      // 40
      RandomTensor("l0.b", "F16", {30}, 2),      // 60 -> shard 1 holds exactly 100
      RandomTensor("l1.a", "I32", {1}, 3),       // 4  -> shard 2
      RandomTensor("l1.big", "F32", {50}, 4),    // 200 -> shard 3 alone
      RandomTensor("l2.a", "F32", {2}, 5),       // 8  -> shard 4
      RandomTensor("l2.b", "BF16", {46}, 6),     // 92 -> shard 4 (100)
  };
  CheckpointWriterOptions options;
  options.output_dir = out;
  options.max_shard_bytes = 100;
  const std::vector<WrittenFile> files = WriteOrDie(options, tensors);
  EXPECT_THAT(ListDir(out),
              ElementsAre("config.json", "model-00001-of-00004.safetensors",
                          "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
                          "model-00004-of-00004.safetensors", "model.safetensors.index.json"));
  ASSERT_EQ(files.size(), 6u);
  for (const WrittenFile& f : files) {
    EXPECT_EQ(f.sha256_hex, *Sha256File(out + "/" + f.name)) << f.name;
  }

  const std::vector<std::vector<std::string>> expected_shards = {
      {"l0.a", "l0.b"}, {"l1.a"}, {"l1.big"}, {"l2.a", "l2.b"}};
  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(out + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 40 + 60 + 4 + 200 + 8 + 92);
  EXPECT_EQ(index["weight_map"].size(), tensors.size());
  size_t k = 0;
  for (size_t s = 0; s < expected_shards.size(); ++s) {
    const std::string name = "model-0000" + std::to_string(s + 1) + "-of-00004.safetensors";
    absl::StatusOr<SafetensorsFile> st = ReadSafetensorsFile(out + "/" + name);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->names_in_header_order, expected_shards[s]) << name;
    for (const std::string& t : expected_shards[s]) {
      EXPECT_EQ(index["weight_map"][t], name) << t;
      const OwnedTensor& src = tensors[k++];
      ASSERT_EQ(src.name, t);
      EXPECT_EQ(std::string(st->Data(t)), std::string(src.bytes.begin(), src.bytes.end()));
    }
  }
}

TEST(CheckpointWriterTest, QuantizedConfigAndTokenizerFiles) {
  const std::string root = FreshDir();
  const std::string src = root + "/src";
  fs::create_directories(src);
  std::ofstream(src + "/tokenizer.model") << "SPMODEL";
  std::ofstream(src + "/tokenizer_config.json") << R"({"tokenizer_class": "LlamaTokenizer"})";
  std::ofstream(src + "/generation_config.json") << R"({"bos_token_id": 1})";
  std::ofstream(src + "/special_tokens_map.json") << "{}";
  std::ofstream(src + "/model.safetensors") << "not copied";
  std::ofstream(src + "/README.md") << "not copied";

  CheckpointWriterOptions options;
  options.output_dir = root + "/q";
  options.tokenizer_source_dir = src;
  QuantizationConfig q;
  q.bits = 3;
  q.group_size = 32;
  q.desc_act = true;
  q.sym = false;
  q.damp_percent = 0.05;
  q.checkpoint_format = "gptq_v2";
  q.act_group_aware = false;
  options.quantization = q;
  auto writer = CheckpointWriter::Create(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (const OwnedTensor& t : GptqModule("x", 64, 32, 3, 32, 1)) {
    ASSERT_TRUE((*writer)->AddTensor(t.View()).ok()) << t.name;
  }
  ASSERT_TRUE((*writer)->AddFile("special_tokens_map.json", R"({"bos_token": "<s>"})").ok());
  auto files = (*writer)->Finish(kSourceConfig);
  ASSERT_TRUE(files.ok()) << files.status();

  const std::string out = options.output_dir;
  EXPECT_THAT(ListDir(out), ElementsAre("config.json", "generation_config.json",
                                        "model.safetensors", "quantize_config.json",
                                        "special_tokens_map.json", "tokenizer.model",
                                        "tokenizer_config.json"));
  EXPECT_EQ(ReadFile(out + "/tokenizer.model"), "SPMODEL");
  EXPECT_EQ(ReadFile(out + "/special_tokens_map.json"), R"({"bos_token": "<s>"})");  // AddFile wins

  const nlohmann::json config = nlohmann::json::parse(ReadFile(out + "/config.json"));
  const nlohmann::json qc = nlohmann::json::parse(ReadFile(out + "/quantize_config.json"));
  EXPECT_EQ(config["torch_dtype"], "float16");
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["quantization_config"], qc);
  const nlohmann::json expected = {
      {"quant_method", "gptq"}, {"bits", 3}, {"group_size", 32}, {"desc_act", true},
      {"sym", false}, {"damp_percent", 0.05}, {"true_sequential", true},
      {"static_groups", false}, {"checkpoint_format", "gptq_v2"}, {"format", "gptq_v2"},
      {"lm_head", false},
      {"meta", {{"quantizer", {"gptq-service:0.1.0"}}, {"damp_auto_increment", 0.01},
                {"act_group_aware", false}}}};
  EXPECT_EQ(qc, expected) << qc.dump(2);
}

TEST(CheckpointWriterTest, PythonIndependentCheck) {
  if (std::system("command -v python3 > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  const std::string root = FreshDir();
  for (int64_t limit : {int64_t{0}, int64_t{300}}) {
    const std::string out = root + "/py" + std::to_string(limit);
    std::vector<OwnedTensor> tensors;
    for (int i = 0; i < 6; ++i) {
      tensors.push_back(RandomTensor("m.layers." + std::to_string(i) + ".w",
                                     i % 2 ? "F16" : "I32", {5, 3 + i}, 100 + i));
    }
    for (OwnedTensor& t : GptqModule("m.q", 16, 8, 4, 8, 7)) tensors.push_back(std::move(t));
    CheckpointWriterOptions options;
    options.output_dir = out;
    options.max_shard_bytes = limit;
    options.quantization = QuantizationConfig{};
    options.quantization->group_size = 8;
    WriteOrDie(options, tensors);
    const std::string cmd = "python3 " GPTQ_SOURCE_DIR
                            "/worker/runtime/writer/testdata/check_checkpoint.py '" + out +
                            "' > '" + root + "/py.json'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const nlohmann::json report = nlohmann::json::parse(ReadFile(root + "/py.json"));
    // Bytes 60 40 100 60 | 140 80 64 8 | 32 64 (qweight 64, qzeros 8, scales 32, g_idx 64).
    EXPECT_EQ(report["num_shards"], limit == 0 ? 1 : 3);
    ASSERT_EQ(report["tensors"].size(), tensors.size());
    for (const OwnedTensor& t : tensors) {
      const nlohmann::json& r = report["tensors"][t.name];
      EXPECT_EQ(r["dtype"], t.dtype);
      EXPECT_EQ(r["shape"].get<std::vector<int64_t>>(), t.shape);
      EXPECT_EQ(r["sha256"], Sha256Hex(std::string(t.bytes.begin(), t.bytes.end()))) << t.name;
    }
  }
}

TEST(CheckpointWriterTest, AbortLeavesNothing) {
  const std::string root = FreshDir();
  CheckpointWriterOptions options;
  options.output_dir = root + "/aborted";
  options.max_shard_bytes = 16;
  auto writer = CheckpointWriter::Create(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::string temp = (*writer)->temp_dir();
  EXPECT_EQ(temp.rfind(root + "/aborted.tmp-", 0), 0u) << temp;
  for (int i = 0; i < 4; ++i) {  // closes shards on the way
    ASSERT_TRUE((*writer)->AddTensor(RandomTensor("t" + std::to_string(i), "F32", {4}, i).View())
                    .ok());
  }
  EXPECT_TRUE(fs::exists(temp + "/shard-00001.safetensors"));
  (*writer)->Abort();
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_TRUE(ListDir(root).empty());
  absl::Status after = (*writer)->AddTensor(RandomTensor("u", "F32", {1}, 0).View());
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(after.message(), HasSubstr("aborted"));
  EXPECT_EQ((*writer)->Finish("{}").status().code(), absl::StatusCode::kFailedPrecondition);
  (*writer)->Abort();  // idempotent
}

TEST(CheckpointWriterTest, DestroyedBeforeFinishLeavesNothing) {
  const std::string root = FreshDir();
  CheckpointWriterOptions options;
  options.output_dir = root + "/dropped";
  {
    auto writer = CheckpointWriter::Create(options);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->AddTensor(RandomTensor("t", "F32", {4}, 1).View()).ok());
  }
  EXPECT_TRUE(ListDir(root).empty());
}

TEST(CheckpointWriterTest, FailedFinishLeavesNothing) {
  const std::string root = FreshDir();
  CheckpointWriterOptions options;
  options.output_dir = root + "/bad_config";
  auto writer = CheckpointWriter::Create(options);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->AddTensor(RandomTensor("t", "F32", {4}, 1).View()).ok());
  auto files = (*writer)->Finish("[1, 2]");
  EXPECT_EQ(files.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(files.status().message(), HasSubstr("not a JSON object"));
  EXPECT_TRUE(ListDir(root).empty());

  // No tensors at all is a caller bug, reported as such.
  auto empty = CheckpointWriter::Create(options);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ((*empty)->Finish("{}").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(ListDir(root).empty());
}

TEST(CheckpointWriterTest, OutputDirMustBeAbsentOrEmpty) {
  const std::string root = FreshDir();
  CheckpointWriterOptions options;
  options.output_dir = root + "/full";
  fs::create_directories(options.output_dir);
  std::ofstream(options.output_dir + "/keep.txt") << "precious";
  auto writer = CheckpointWriter::Create(options);
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(writer.status().message(), HasSubstr("exists and is not empty"));

  options.output_dir = root + "/full/keep.txt";
  writer = CheckpointWriter::Create(options);
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(writer.status().message(), HasSubstr("is not a directory"));

  options.output_dir = root + "/missing_parent/out";
  writer = CheckpointWriter::Create(options);
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(writer.status().message(), HasSubstr("does not exist"));

  // An existing empty directory is replaced atomically (trailing slash tolerated).
  options.output_dir = root + "/empty/";
  fs::create_directories(options.output_dir);
  WriteOrDie(options, {RandomTensor("t", "F32", {4}, 1)});
  EXPECT_THAT(ListDir(root + "/empty"), ElementsAre("config.json", "model.safetensors"));

  // Something appearing at the target while writing fails Finish without touching it.
  options.output_dir = root + "/raced";
  writer = CheckpointWriter::Create(options);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->AddTensor(RandomTensor("t", "F32", {4}, 1).View()).ok());
  fs::create_directories(options.output_dir);
  std::ofstream(options.output_dir + "/other.txt") << "x";
  auto files = (*writer)->Finish("{}");
  EXPECT_EQ(files.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ListDir(options.output_dir), ElementsAre("other.txt"));
  EXPECT_THAT(ListDir(root), ElementsAre("empty", "full", "raced"));
}

TEST(CheckpointWriterTest, InvalidOptionsAreRejected) {
  const std::string root = FreshDir();
  CheckpointWriterOptions options;
  options.output_dir = root + "/o";
  QuantizationConfig q;
  q.sym = false;  // with the default v1 format
  options.quantization = q;
  auto writer = CheckpointWriter::Create(options);
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(writer.status().message(), HasSubstr("sym=false requires checkpoint_format"));

  q = QuantizationConfig{};
  q.bits = 5;
  options.quantization = q;
  EXPECT_THAT(CheckpointWriter::Create(options).status().message(),
              HasSubstr("bits must be 2, 3, 4 or 8, got 5"));
  q = QuantizationConfig{};
  q.group_size = 0;
  options.quantization = q;
  EXPECT_THAT(CheckpointWriter::Create(options).status().message(), HasSubstr("group_size"));
  q = QuantizationConfig{};
  q.damp_percent = 1.0;
  options.quantization = q;
  EXPECT_THAT(CheckpointWriter::Create(options).status().message(), HasSubstr("damp_percent"));
  q = QuantizationConfig{};
  q.checkpoint_format = "awq";
  options.quantization = q;
  EXPECT_THAT(CheckpointWriter::Create(options).status().message(),
              HasSubstr("checkpoint_format"));
  options.quantization.reset();
  options.output_dir = "";
  EXPECT_EQ(CheckpointWriter::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ListDir(root).empty());
}

TEST(CheckpointWriterTest, InvalidTensorsAreRejected) {
  const std::string root = FreshDir();
  CheckpointWriterOptions options;
  options.output_dir = root + "/o";
  auto writer = CheckpointWriter::Create(options);
  ASSERT_TRUE(writer.ok());
  CheckpointWriter& w = **writer;
  OwnedTensor t = RandomTensor("w", "F32", {2, 3}, 1);
  ASSERT_TRUE(w.AddTensor(t.View()).ok());

  absl::Status s = w.AddTensor(t.View());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("duplicate tensor name \"w\""));

  TensorView v = t.View();
  v.name = "w2";
  v.num_bytes = 20;
  s = w.AddTensor(v);
  EXPECT_THAT(s.message(), HasSubstr("needs 24 bytes, got 20"));

  v = t.View();
  v.name = "w3";
  v.dtype = "F64";
  s = w.AddTensor(v);
  EXPECT_THAT(s.message(), HasSubstr("unsupported dtype \"F64\""));

  v = t.View();
  v.name = "__metadata__";
  EXPECT_THAT(w.AddTensor(v).message(), HasSubstr("reserved"));
  v.name = "";
  EXPECT_THAT(w.AddTensor(v).message(), HasSubstr("name is empty"));
  v.name = std::string("w\xff", 2);
  EXPECT_THAT(w.AddTensor(v).message(), HasSubstr("outside printable ASCII"));
  v = t.View();
  v.name = "w4";
  v.shape = {-2, -3};
  EXPECT_THAT(w.AddTensor(v).message(), HasSubstr("negative dimension"));

  EXPECT_THAT(w.AddFile("config.json", "{}").message(), HasSubstr("reserved"));
  EXPECT_THAT(w.AddFile("model-00001-of-00002.safetensors", "").message(), HasSubstr("reserved"));
  EXPECT_THAT(w.AddFile("../x", "").message(), HasSubstr("not a plain file name"));

  // Rejected tensors did not disturb the writer.
  auto files = w.Finish("{}");
  ASSERT_TRUE(files.ok()) << files.status();
  absl::StatusOr<SafetensorsFile> st = ReadSafetensorsFile(options.output_dir + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_THAT(st->names_in_header_order, ElementsAre("w"));
  EXPECT_EQ(w.AddTensor(RandomTensor("late", "F32", {1}, 1).View()).code(),
            absl::StatusCode::kFailedPrecondition);
}

// Runs a quantized writer over `tensors` and returns Finish's status (or the first AddTensor
// error), checking that a failure leaves nothing behind.
absl::Status WriteQuantized(const std::string& root, const QuantizationConfig& q,
                            const std::vector<OwnedTensor>& tensors) {
  CheckpointWriterOptions options;
  options.output_dir = root + "/q";
  options.quantization = q;
  auto writer = CheckpointWriter::Create(options);
  if (!writer.ok()) return writer.status();
  absl::Status status;
  for (const OwnedTensor& t : tensors) {
    status = (*writer)->AddTensor(t.View());
    if (!status.ok()) break;
  }
  if (status.ok()) status = (*writer)->Finish(R"({"dtype": "float32"})").status();
  if (!status.ok()) {
    writer->reset();
    EXPECT_TRUE(ListDir(root).empty()) << status;
  }
  return status;
}

TEST(CheckpointWriterTest, ValidatesGptqModules) {
  const std::string root = FreshDir();
  QuantizationConfig q;
  q.bits = 4;
  q.group_size = 16;

  std::vector<OwnedTensor> good = GptqModule("l.q_proj", 64, 16, 4, 16, 1);
  good.push_back(RandomTensor("l.q_proj.bias", "F16", {16}, 9));
  ASSERT_TRUE(WriteQuantized(root, q, good).ok());
  const nlohmann::json config = nlohmann::json::parse(ReadFile(root + "/q/config.json"));
  EXPECT_EQ(config["dtype"], "float16");  // transformers >= 4.56 spelling kept consistent
  EXPECT_EQ(config["torch_dtype"], "float16");
  fs::remove_all(root + "/q");

  std::vector<OwnedTensor> m = GptqModule("l.k_proj", 64, 16, 4, 16, 1);
  m[2] = RandomTensor("l.k_proj.scales", "F32", {4, 16}, 3);
  absl::Status s = WriteQuantized(root, q, m);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("\"l.k_proj.scales\" must be F16, got F32"));

  m = GptqModule("l.k_proj", 64, 16, 4, 16, 1);
  m.erase(m.begin() + 1);  // no qzeros
  EXPECT_THAT(WriteQuantized(root, q, m).message(), HasSubstr("l.k_proj lacks l.k_proj.qzeros"));

  m = GptqModule("l.k_proj", 64, 16, 4, 16, 1);
  m[0] = RandomTensor("l.k_proj.qweight", "I32", {16, 16}, 3);  // should be 64*4/32 = 8 rows
  EXPECT_THAT(WriteQuantized(root, q, m).message(), HasSubstr("qweight has 16 rows"));

  m = GptqModule("l.k_proj", 64, 16, 4, 32, 1);  // packed for group_size 32: G = 2, not 4
  s = WriteQuantized(root, q, m);
  EXPECT_THAT(s.message(), HasSubstr("g_idx[16] = 0 but without act-order"));

  m = GptqModule("l.k_proj", 64, 16, 4, 16, 1);
  const int32_t too_big = 4;
  std::memcpy(m[3].bytes.data() + 4 * 63, &too_big, 4);
  EXPECT_THAT(WriteQuantized(root, q, m).message(), HasSubstr("g_idx[63] = 4 is outside [0, 4)"));

  m = GptqModule("l.k_proj", 64, 16, 4, 16, 1);
  m[1] = RandomTensor("l.k_proj.qzeros", "I32", {4, 1}, 3);
  EXPECT_THAT(WriteQuantized(root, q, m).message(), HasSubstr("qzeros is [4, 1], expected [4, 2]"));

  EXPECT_EQ(WriteQuantized(root, q, {RandomTensor("w", "F16", {4}, 1)}).code(),
            absl::StatusCode::kFailedPrecondition);

  // Act-order with dynamic groups: a permuted g_idx is legal.
  q.desc_act = true;
  m = GptqModule("l.k_proj", 64, 16, 4, 16, 1);
  for (int i = 0; i < 32; ++i) {  // swap the first two groups' halves
    const int32_t v = (i % 2 == 0) ? 0 : 1;
    std::memcpy(m[3].bytes.data() + 4 * i, &v, 4);
  }
  EXPECT_TRUE(WriteQuantized(root, q, m).ok());
}

TEST(SafetensorsReaderTest, RejectsMalformedFiles) {
  auto make = [](const std::string& header, const std::string& data) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
    return bytes + header + data;
  };
  EXPECT_TRUE(ParseSafetensors(make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                    "abcd"), "ok").ok());
  EXPECT_THAT(ParseSafetensors("abc", "f").status().message(), HasSubstr("shorter"));
  EXPECT_THAT(ParseSafetensors(make("{", ""), "f").status().message(),
              HasSubstr("not a JSON object"));
  EXPECT_THAT(ParseSafetensors(make(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
                                    "abcd"), "f").status().message(),
              HasSubstr("need"));
  EXPECT_THAT(ParseSafetensors(make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                    "abcdabcd"), "f").status().message(),
              HasSubstr("not contiguous"));
  EXPECT_THAT(ParseSafetensors(make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                    "abcdabcd"), "f").status().message(),
              HasSubstr("cover 4 bytes of a 8-byte"));
  std::string bad_len = make("{}", "");
  bad_len[0] = 100;
  EXPECT_THAT(ParseSafetensors(bad_len, "f").status().message(), HasSubstr("exceeds"));
}

}  // namespace
}  // namespace gptq::runtime
