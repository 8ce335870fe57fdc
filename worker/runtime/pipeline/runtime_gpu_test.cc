// CUDA paths of the runtime (label gpu): skipped without a CUDA device.
#include <sys/stat.h>

#include <cstdlib>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/test_util.h"
#include "quantize_job.h"

namespace gptq::runtime {
namespace {

bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

class Sink : public ProgressSink {
 public:
  void OnEvent(const ProgressEvent&) override {}
};

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

TEST(RuntimeGpuTest, HalfForwardsMatchCpuFp32) {
  SKIP_WITHOUT_CUDA();
  for (const char* arch : {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}) {
    const std::string dir = testing::MakeTempDir("gpu");
    testing::TinyModelSpec spec;
    spec.architecture = arch;
    testing::WriteTinyModel(dir, spec);
    auto model = DecoderModel::Open(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    const torch::Tensor ids = at::randint(0, 96, {2, 40}, at::kLong);
    auto ref = ForwardLogits(**model, ids, at::kFloat, torch::kCPU);
    ASSERT_TRUE(ref.ok());
    const double scale = ref->abs().max().item<double>();
    for (auto [dtype, tol] : {std::pair{at::kHalf, 1e-2}, std::pair{at::kBFloat16, 5e-2}}) {
      auto got = ForwardLogits(**model, ids, dtype, torch::Device(torch::kCUDA, 0));
      ASSERT_TRUE(got.ok()) << got.status();
      const double err = (got->cpu() - *ref).abs().max().item<double>();
      EXPECT_LT(err, tol * scale) << arch << " " << dtype;
    }
  }
}

TEST(RuntimeGpuTest, TinyJobOnCuda) {
  SKIP_WITHOUT_CUDA();
  const std::string dir = testing::MakeTempDir("gpujob");
  testing::WriteTinyModel(dir + "/model", {});
  QuantizeOptions o;
  o.model_dir = dir + "/model";
  o.output_dir = dir + "/out";
  o.group_size = 32;
  o.device = "cuda";
  at::manual_seed(1);
  const torch::Tensor ids = at::randint(0, 96, {3000}, at::kInt);
  o.calibration.token_ids.assign(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + 3000);
  o.calibration.nsamples = 16;
  o.calibration.seqlen = 64;
  Sink sink;
  CancelToken cancel;
  auto report = RunQuantizeJob(o, sink, cancel);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->device.rfind("cuda", 0), 0u) << report->device;
  EXPECT_EQ(report->modules.size(), 14u);
  EXPECT_GT(report->peak_gpu_bytes, 0);
  auto out = CheckpointReader::Open(dir + "/out");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE((*out)->Has("model.layers.1.mlp.down_proj.qweight"));
}

// The acceptance run on the GPU (fp16 compute, like the reference's own measurement). The
// checkpoint may be the fp32 original or its fp16 copy (testdata/to_fp16.py) carried there.
TEST(RuntimeGpuTest, Stories15MOnCuda) {
  SKIP_WITHOUT_CUDA();
  const char* env = std::getenv("GPTQ_TEST_DATA_ROOT");
  const std::string root = env != nullptr ? env : GPTQ_TEST_DATA_ROOT;
  const std::string model = root + "/models/stories15M-hf";
  if (!Exists(model + "/model.safetensors")) GTEST_SKIP() << "no test data under " << root;
  const std::string dir = testing::MakeTempDir("gpu15");
  QuantizeOptions o;
  o.model_dir = model;
  o.output_dir = dir + "/out";
  o.damp_percent = 0.01;
  o.calibration.dataset = "c4";
  o.calibration.nsamples = 128;
  o.calibration.seqlen = 256;
  o.eval_datasets = {"tinystories"};
  if (Exists(root + "/text/wikitext2/wiki.test.raw")) o.eval_datasets.push_back("wikitext2");
  o.data_dir = root + "/text";
  o.device = "cuda";
  Sink sink;
  CancelToken cancel;
  auto report = RunQuantizeJob(o, sink, cancel);
  ASSERT_TRUE(report.ok()) << report.status();
  for (const auto& p : report->perplexity) {
    std::printf("cuda %s: before %.4f after %.4f (%lld tokens)\n", p.dataset.c_str(), *p.before, *p.after,
                static_cast<long long>(p.num_tokens));
    if (p.dataset == "tinystories") {
      EXPECT_NEAR(*p.before, 8.569, 0.005 * 8.569);
      EXPECT_LE(*p.after, 9.95);
    }
  }
  for (const auto& [k, v] : report->seconds) std::printf("seconds.%s = %.3f\n", k.c_str(), v);
  std::printf("peak_gpu_bytes = %lld\n", static_cast<long long>(report->peak_gpu_bytes));
}

}  // namespace
}  // namespace gptq::runtime
