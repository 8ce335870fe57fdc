#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <random>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "gptq/gptq.h"
#include "gptq/pack.h"
#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/test_util.h"
#include "quantize_job.h"
#include "gptq/torch_status.h"

namespace gptq::runtime {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

class RecordingSink : public ProgressSink {
 public:
  void OnEvent(const ProgressEvent& e) override {
    events.push_back(e);
    if (cancel_after_modules > 0 && e.kind == ProgressEvent::Kind::kModule &&
        ++modules_seen >= cancel_after_modules) {
      token->Cancel();
    }
  }
  std::vector<ProgressEvent> events;
  int cancel_after_modules = 0;
  int modules_seen = 0;
  CancelToken* token = nullptr;
};

std::vector<int32_t> RandomIds(int n, int vocab, uint64_t seed) {
  at::manual_seed(seed);
  const torch::Tensor t = at::randint(0, vocab, {n}, at::kInt);
  return std::vector<int32_t>(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + n);
}

QuantizeOptions TinyOptions(const std::string& model, const std::string& out) {
  QuantizeOptions o;
  o.model_dir = model;
  o.output_dir = out;
  o.bits = 4;
  o.group_size = 32;
  o.damp_percent = 0.1;
  o.device = "cpu";
  o.calibration.token_ids = RandomIds(3000, 96, 7);
  o.calibration.nsamples = 32;
  o.calibration.seqlen = 32;
  o.calibration.seed = 3;
  return o;
}

// The slow twin of the layer loop: whole-batch forwards, one Hessian per module from the
// whole batch (through the same accumulator: GPTQ's error feedback makes codes chaotic in the
// Hessian's last bits, so a differently rounded Hessian would not test the orchestration),
// modules quantized by gptq::QuantizeGptq and replaced by their packed-then-dequantized
// weights, group by group. Returns the dequantized weight of every module.
std::map<std::string, torch::Tensor> ReferencePipeline(const DecoderModel& model, const QuantizeOptions& o,
                                                       const std::vector<std::vector<int32_t>>& windows) {
  const ModelConfig& c = model.config();
  gptq::QuantConfig qc;
  qc.bits = o.bits;
  qc.group_size = o.group_size;
  qc.damp_percent = o.damp_percent;
  qc.sym = o.sym;
  qc.desc_act = o.desc_act;
  qc.act_group_aware = !o.desc_act;
  const gptq::CheckpointFormat format = o.sym ? gptq::CheckpointFormat::kGptqV1 : gptq::CheckpointFormat::kGptqV2;
  const HeadWeights head = model.LoadHead(at::kFloat, torch::kCPU).value();
  std::vector<int64_t> flat;
  for (const auto& w : windows) flat.insert(flat.end(), w.begin(), w.end());
  const int64_t n = windows.size(), t = windows[0].size();
  torch::Tensor x = Embed(head, at::tensor(flat, at::kLong).view({n, t}));
  const AttentionContext ctx = MakeAttentionContext(c, t, at::kFloat, torch::kCPU);
  std::map<std::string, torch::Tensor> result;
  std::vector<std::vector<std::string>> groups = SequentialGroups(c.architecture);
  if (!o.true_sequential) {
    std::vector<std::string> all;
    for (const auto& g : groups) all.insert(all.end(), g.begin(), g.end());
    groups = {all};
  }
  for (int layer = 0; layer < c.num_layers; ++layer) {
    LayerWeights w = model.LoadLayer(layer, at::kFloat, torch::kCPU).value();
    for (auto& [name, lin] : w.linears) lin.weight = lin.weight.clone();
    for (const auto& group : groups) {
      std::map<CapturePoint, torch::Tensor> inputs;
      CaptureFn cap = [&](CapturePoint p, const torch::Tensor& v) {
        inputs[p] = v.clone();
        return absl::OkStatus();
      };
      DecoderLayerForward(c, layer, w, x, ctx, &cap);
      for (const std::string& m : group) {
        const torch::Tensor& xin = inputs.at(InputPointOf(m));
        gptq::HessianAccumulator acc(xin.size(-1), torch::kCPU);
        EXPECT_TRUE(acc.AddBatch(xin).ok());
        const torch::Tensor h = acc.hessian();
        LinearWeights& lin = w.linears.at(m);
        auto q = gptq::QuantizeGptq(lin.weight, h, qc);
        EXPECT_TRUE(q.ok()) << q.status();
        auto packed = gptq::Pack(*q, format);
        EXPECT_TRUE(packed.ok());
        const torch::Tensor deq = gptq::Dequantize(*packed, lin.weight.size(0), lin.weight.size(1)).value();
        lin.weight = deq.to(at::kFloat);
        result[DecoderModel::ModulePrefix(layer, m)] = lin.weight;
      }
    }
    x = DecoderLayerForward(c, layer, w, x, ctx, nullptr);
  }
  return result;
}

// Windows exactly as the job samples them (the data library's documented sampler).
std::vector<std::vector<int32_t>> Windows(const QuantizeOptions& o) {
  const auto& ids = o.calibration.token_ids;
  std::mt19937_64 rng(o.calibration.seed);
  std::vector<std::vector<int32_t>> w;
  const uint64_t range = ids.size() - o.calibration.seqlen;
  for (int i = 0; i < o.calibration.nsamples; ++i) {
    const uint64_t start = rng() % range;
    w.emplace_back(ids.begin() + start, ids.begin() + start + o.calibration.seqlen);
  }
  return w;
}

void CheckAgainstReference(bool true_sequential, bool desc_act = false, bool sym = true) {
  const std::string dir = testing::MakeTempDir("pipe");
  testing::WriteTinyModel(dir + "/model", {});
  QuantizeOptions o = TinyOptions(dir + "/model", dir + "/out");
  o.true_sequential = true_sequential;
  o.desc_act = desc_act;
  o.sym = sym;
  RecordingSink sink;
  CancelToken cancel;
  auto report = RunQuantizeJob(o, sink, cancel);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->modules.size(), 14u);

  auto model = DecoderModel::Open(dir + "/model");
  ASSERT_TRUE(model.ok());
  const auto reference = ReferencePipeline(**model, o, Windows(o));
  auto out = CheckpointReader::Open(dir + "/out");
  ASSERT_TRUE(out.ok()) << out.status();
  for (const auto& [prefix, ref] : reference) {
    gptq::PackedWeight p;
    p.qweight = (*out)->Get(prefix + ".qweight").value();
    p.qzeros = (*out)->Get(prefix + ".qzeros").value();
    p.scales = (*out)->Get(prefix + ".scales").value();
    p.g_idx = (*out)->Get(prefix + ".g_idx").value();
    p.bits = 4;
    p.format = sym ? gptq::CheckpointFormat::kGptqV1 : gptq::CheckpointFormat::kGptqV2;
    const torch::Tensor got = gptq::Dequantize(p, ref.size(0), ref.size(1)).value().to(at::kFloat);
    // The job runs all windows in one chunk here, so the computation is the same: equal.
    EXPECT_TRUE(at::equal(got, ref)) << prefix << " differs in "
                                     << (got != ref).to(at::kFloat).mean().item<double>() * 100 << "% of weights";
  }
}

TEST(QuantizePipelineTest, TrueSequentialMatchesReferenceLoop) { CheckAgainstReference(true); }
TEST(QuantizePipelineTest, OnePassMatchesReferenceLoop) { CheckAgainstReference(false); }
TEST(QuantizePipelineTest, ActOrderAsymV2MatchesReferenceLoop) {
  CheckAgainstReference(true, /*desc_act=*/true, /*sym=*/false);
}

TEST(QuantizePipelineTest, WritesCheckpointAndReportsProgress) {
  const std::string dir = testing::MakeTempDir("pipe");
  testing::TinyModelSpec spec;
  spec.architecture = "Qwen2ForCausalLM";
  testing::WriteTinyModel(dir + "/model", spec);
  QuantizeOptions o = TinyOptions(dir + "/model", dir + "/out");
  RecordingSink sink;
  CancelToken cancel;
  auto report = RunQuantizeJob(o, sink, cancel);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->device, "cpu");
  for (const char* key : {"load", "calibrate", "quantize", "pack", "write", "total"}) {
    EXPECT_TRUE(report->seconds.count(key)) << key;
  }
  std::vector<std::string> files;
  for (const auto& f : report->files) files.push_back(f.path);
  EXPECT_THAT(files, ::testing::IsSupersetOf({"config.json", "model.safetensors", "quantize_config.json"}));
  auto out = CheckpointReader::Open(dir + "/out");
  ASSERT_TRUE(out.ok()) << out.status();
  const TensorInfo* qw = (*out)->Info("model.layers.1.mlp.down_proj.qweight");
  ASSERT_NE(qw, nullptr);
  EXPECT_EQ(qw->dtype, "I32");
  EXPECT_EQ(qw->shape, std::vector<int64_t>({128 * 4 / 32, 64}));
  EXPECT_EQ((*out)->Info("model.layers.1.mlp.down_proj.scales")->shape, std::vector<int64_t>({4, 64}));
  EXPECT_EQ((*out)->Info("model.layers.0.self_attn.q_proj.bias")->dtype, "F16");
  EXPECT_EQ((*out)->Info("model.embed_tokens.weight")->dtype, "F16");
  EXPECT_FALSE((*out)->Has("model.layers.0.self_attn.q_proj.weight"));
  const nlohmann::json cfg = nlohmann::json::parse(testing::ReadFile(dir + "/out/config.json"));
  EXPECT_EQ(cfg["quantization_config"]["bits"], 4);
  EXPECT_EQ(cfg["quantization_config"]["group_size"], 32);

  // Progress: stages in order, one module event per module, fraction never decreasing.
  std::vector<std::string> stages;
  int modules = 0;
  double last = 0.0;
  for (const auto& e : sink.events) {
    if (e.kind == ProgressEvent::Kind::kStage && (stages.empty() || stages.back() != e.stage)) stages.push_back(e.stage);
    if (e.kind == ProgressEvent::Kind::kModule) {
      ++modules;
      EXPECT_FALSE(e.module.empty());
      EXPECT_GT(e.rows, 0);
      EXPECT_GE(e.loss, 0.0);
      EXPECT_EQ(e.samples, 32);
    }
    EXPECT_GE(e.fraction + 1e-12, last);
    last = e.fraction;
  }
  EXPECT_EQ(stages, std::vector<std::string>({"load", "calibrate", "quantize", "write"}));
  EXPECT_EQ(modules, 14);
  const std::string json = ReportToJson(*report);
  const nlohmann::json j = nlohmann::json::parse(json);
  EXPECT_EQ(j["modules"].size(), 14u);
  EXPECT_EQ(j["modules"][0]["name"], "model.layers.0.self_attn.q_proj");
  EXPECT_TRUE(j["seconds"].contains("evaluate"));
  EXPECT_TRUE(j.contains("peak_gpu_bytes"));
}

TEST(QuantizePipelineTest, UnpackableModulesStayFp16AndAreReported) {
  const std::string dir = testing::MakeTempDir("pipe");
  testing::TinyModelSpec spec;
  spec.ffn = 100;  // not a multiple of 8: gate/up (out) and down (in) cannot be packed at 4 bits
  testing::WriteTinyModel(dir + "/model", spec);
  QuantizeOptions o = TinyOptions(dir + "/model", dir + "/out");
  o.group_size = -1;
  RecordingSink sink;
  CancelToken cancel;
  auto report = RunQuantizeJob(o, sink, cancel);
  ASSERT_TRUE(report.ok()) << report.status();
  std::vector<std::string> unquantized;
  for (const auto& m : report->modules) {
    if (m.unquantized) unquantized.push_back(m.name);
  }
  EXPECT_EQ(unquantized, std::vector<std::string>({"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                                                   "model.layers.0.mlp.down_proj", "model.layers.1.mlp.gate_proj",
                                                   "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"}));
  int flagged = 0;
  for (const auto& e : sink.events) flagged += e.kind == ProgressEvent::Kind::kModule && e.unquantized;
  EXPECT_EQ(flagged, 6);
  auto out = CheckpointReader::Open(dir + "/out");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)->Info("model.layers.1.mlp.down_proj.weight")->dtype, "F16");
  EXPECT_TRUE((*out)->Has("model.layers.1.self_attn.o_proj.qweight"));
  EXPECT_FALSE((*out)->Has("model.layers.1.mlp.down_proj.qweight"));
}

TEST(QuantizePipelineTest, CancelLeavesNothing) {
  const std::string dir = testing::MakeTempDir("pipe");
  testing::WriteTinyModel(dir + "/model", {});
  QuantizeOptions o = TinyOptions(dir + "/model", dir + "/out");
  CancelToken cancel;
  RecordingSink sink;
  sink.cancel_after_modules = 3;
  sink.token = &cancel;
  auto report = RunQuantizeJob(o, sink, cancel);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(sink.modules_seen, 3);
  EXPECT_FALSE(Exists(dir + "/out"));
}

TEST(QuantizePipelineTest, BadInputsGiveClearErrors) {
  const std::string dir = testing::MakeTempDir("pipe");
  testing::WriteTinyModel(dir + "/model", {});
  CancelToken cancel;
  RecordingSink sink;
  QuantizeOptions o = TinyOptions(dir + "/model", dir + "/out");
  o.bits = 5;
  auto bits = RunQuantizeJob(o, sink, cancel);
  EXPECT_EQ(bits.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bits.status().message()), HasSubstr("bits"));

  o = TinyOptions(dir + "/model", dir + "/out");
  o.format = "awq";
  EXPECT_THAT(std::string(RunQuantizeJob(o, sink, cancel).status().message()), HasSubstr("format \"awq\""));

  o = TinyOptions(dir + "/nope", dir + "/out");
  auto missing = RunQuantizeJob(o, sink, cancel);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(dir + "/nope/config.json"));

  o = TinyOptions(dir + "/model", dir + "/out");
  o.calibration.token_ids.clear();  // no tokenizer in the tiny model dir
  auto no_tok = RunQuantizeJob(o, sink, cancel);
  EXPECT_EQ(no_tok.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(no_tok.status().message()), AllOf(HasSubstr("no tokenizer"), HasSubstr(dir + "/model")));

  o = TinyOptions(dir + "/model", dir + "/out");
  o.calibration.token_ids = {1, 2, 500};
  auto bad_ids = RunQuantizeJob(o, sink, cancel);
  EXPECT_EQ(bad_ids.status().code(), absl::StatusCode::kInvalidArgument);

  o = TinyOptions(dir + "/model", dir + "/model");  // output dir exists and is not empty
  auto not_empty = RunQuantizeJob(o, sink, cancel);
  EXPECT_EQ(not_empty.status().code(), absl::StatusCode::kFailedPrecondition);

  o = TinyOptions(dir + "/model", dir + "/out");
  o.device = "tpu";
  EXPECT_THAT(std::string(RunQuantizeJob(o, sink, cancel).status().message()), HasSubstr("bad device \"tpu\""));
  EXPECT_FALSE(Exists(dir + "/out"));
}

TEST(QuantizeCommandTest, UsageErrorsExitTwo) {
  EXPECT_EQ(QuantizeCommand({"--model", "/x"}), 2);               // no --output
  EXPECT_EQ(QuantizeCommand({"--model", "/x", "--output", "/y", "--bogus"}), 2);
  EXPECT_EQ(QuantizeCommand({"--model", "/x", "--output", "/y", "--bits", "four"}), 2);
  EXPECT_EQ(QuantizeCommand({"--model", "/x", "--output", "/y", "--bits"}), 2);
  EXPECT_EQ(QuantizeCommand({"--model=/nonexistent", "--output=/tmp/never", "--device", "cpu"}), 1);
}

TEST(TorchStatusTest, MapsExceptionKinds) {
  auto oom = CallTorch("ctx", []() -> absl::Status {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory. Tried to allocate 2.00 GiB");
    return absl::OkStatus();
  });
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(oom.message()), AllOf(HasSubstr("ctx: "), HasSubstr("Tried to allocate")));
  auto idx = CallTorch("", []() -> absl::StatusOr<int> {
    at::ones({2})[5].item<float>();
    return 1;
  });
  EXPECT_EQ(idx.status().code(), absl::StatusCode::kInvalidArgument);
  auto shape = CallTorch("mm", []() -> absl::Status {
    at::matmul(at::ones({2, 3}), at::ones({2, 3}));
    return absl::OkStatus();
  });
  EXPECT_EQ(shape.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(shape.message()), HasSubstr("mm: "));
  EXPECT_THAT(std::string(shape.message()), ::testing::Not(HasSubstr("Exception raised from")));
  auto other = CallTorch("x", []() -> absl::Status { throw 42; });
  EXPECT_EQ(other.code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace gptq::runtime
