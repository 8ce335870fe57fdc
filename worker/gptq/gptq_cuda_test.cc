// gptq::core on CUDA vs the CPU (label gpu; every test skips without CUDA).
//
// Thresholds: in float64 both devices compute the same GPTQ to ~1e-15; rows are compared one
// by one (GPTQ treats rows independently): NMSE < 1e-10 on every row, except that symmetric
// dynamic-group grids put the most negative weight of a group exactly on a rounding tie
// (w/scale = -maxq/2), which last-bit differences can tip, and GPTQ then carries the change
// through the rest of that row (at most 2% of rows allowed). In float32 the devices round
// differently (cuSOLVER vs LAPACK Cholesky, cuBLAS vs OpenBLAS), which tips near-ties more
// often (finer grids, more often): NMSE < 1e-6 on at least 90% of the rows, plus quality
// (layer-output error within 5% of the CPU's, below RTN). A real bug moves nearly every row.
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "gptq.h"
#include "pack.h"
#include "reference.h"

namespace gptq {
namespace {

#define SKIP_WITHOUT_CUDA()                                                   \
  if (!torch::cuda::is_available()) {                                         \
    GTEST_SKIP() << "CUDA is not available (CPU-only LibTorch or no device)"; \
  }

double Nmse(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  return (x - y).pow(2).sum().item<double>() / std::max(y.pow(2).sum().item<double>(), 1e-300);
}

at::Tensor CorrelatedActivations(int64_t tokens, int64_t k, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor z = at::randn({tokens, k}, gen, opts);
  const at::Tensor a = at::eye(k, opts) + 0.6 * at::randn({k, k}, gen, opts) / std::sqrt(k);
  const at::Tensor s = at::exp(0.7 * at::randn({k}, gen, opts));
  return z.matmul(a) * s;
}

// Rows of a [N, K] pair whose NMSE is at most `tol`; prints how many are not.
at::Tensor AgreeingRows(const at::Tensor& a, const at::Tensor& b, double tol, int64_t* diverged) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  const at::Tensor row = (x - y).pow(2).sum(1) / y.pow(2).sum(1).clamp_min(1e-300);
  const at::Tensor agree = row <= tol;
  *diverged = x.size(0) - agree.sum().item<int64_t>();
  return agree.nonzero().squeeze(1);
}

double OutputError(const at::Tensor& w, const at::Tensor& wq, const at::Tensor& x) {
  const at::Tensor d = (w.to(at::kCPU, at::kDouble) - wq.to(at::kCPU, at::kDouble))
                           .matmul(x.to(at::kCPU, at::kDouble).t());
  return d.pow(2).sum().item<double>();
}

struct Problem {
  at::Tensor w, x, h;  // CPU float64
};

const Problem& SharedProblem() {
  static const Problem* const p = [] {
    auto* p = new Problem;
    const int64_t n = 128, k = 512, tokens = 2048;
    p->x = CorrelatedActivations(tokens, k, 1);
    p->x.select(1, 7).zero_();  // a dead input
    auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
    p->w = 0.05 * at::randn({n, k}, gen, at::TensorOptions().dtype(at::kDouble));
    p->h = 2.0 / tokens * p->x.t().matmul(p->x);
    return p;
  }();
  return *p;
}

// bits, group_size, sym, desc_act, static_groups, act_group_aware
using Param = std::tuple<int, int, bool, bool, bool, bool>;
class GptqCudaTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override { at::globalContext().setFloat32MatmulPrecision("highest"); }
  QuantConfig Config() const {
    QuantConfig c;
    std::tie(c.bits, c.group_size, c.sym, c.desc_act, c.static_groups, c.act_group_aware) =
        GetParam();
    c.damp_percent = 0.01;
    return c;
  }
};

TEST_P(GptqCudaTest, Float64CudaMatchesCpuAndTwin) {
  SKIP_WITHOUT_CUDA();
  const Problem& p = SharedProblem();
  const QuantConfig c = Config();
  absl::StatusOr<QuantizedWeight> cpu = QuantizeGptq(p.w, p.h, c);
  absl::StatusOr<QuantizedWeight> gpu = QuantizeGptq(p.w.cuda(), p.h.cuda(), c);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_TRUE(gpu->dequantized.is_cuda());
  EXPECT_TRUE(gpu->codes.is_cuda());
  const int64_t n = p.w.size(0);
  int64_t diverged = 0;
  at::Tensor rows = AgreeingRows(gpu->dequantized, cpu->dequantized, 1e-10, &diverged);
  EXPECT_LE(diverged, n / 50) << "rows that differ between CUDA and CPU";
  EXPECT_LT(
      Nmse(gpu->dequantized.cpu().index_select(0, rows), cpu->dequantized.index_select(0, rows)),
      1e-10);
  EXPECT_LT(Nmse(gpu->scales.cpu().index_select(1, rows), cpu->scales.index_select(1, rows)),
            1e-10);
  EXPECT_TRUE(at::equal(gpu->g_idx.cpu(), cpu->g_idx));
  EXPECT_NEAR(gpu->loss, cpu->loss, (diverged == 0 ? 1e-6 : 0.02) * cpu->loss);
  absl::StatusOr<QuantizedWeight> twin = reference::ReferenceGptq(p.w, p.h, c);
  ASSERT_TRUE(twin.ok());
  rows = AgreeingRows(gpu->dequantized, twin->dequantized, 1e-10, &diverged);
  EXPECT_LE(diverged, n / 50) << "rows that differ between CUDA and the twin";
  std::printf("[fp64] rows differing from CPU/twin: %ld\n", static_cast<long>(diverged));
}

TEST_P(GptqCudaTest, Float32CudaAgreesWithCpuInQuality) {
  SKIP_WITHOUT_CUDA();
  const Problem& p = SharedProblem();
  const QuantConfig c = Config();
  const at::Tensor w = p.w.to(at::kFloat), h = p.h.to(at::kFloat);
  absl::StatusOr<QuantizedWeight> cpu = QuantizeGptq(w, h, c);
  absl::StatusOr<QuantizedWeight> gpu = QuantizeGptq(w.cuda(), h.cuda(), c);
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  absl::StatusOr<QuantizedWeight> rtn = QuantizeRtn(w.cuda(), c);
  ASSERT_TRUE(rtn.ok());
  const double e_cpu = OutputError(w, cpu->dequantized, p.x);
  const double e_gpu = OutputError(w, gpu->dequantized, p.x);
  const double e_rtn = OutputError(w, rtn->dequantized, p.x);
  EXPECT_LT(e_gpu, e_rtn);
  EXPECT_NEAR(e_gpu, e_cpu, 0.05 * e_cpu);
  EXPECT_NEAR(gpu->loss, cpu->loss, 0.05 * cpu->loss);
  const int64_t n = w.size(0);
  int64_t diverged = 0;
  const at::Tensor rows = AgreeingRows(gpu->dequantized, cpu->dequantized, 1e-6, &diverged);
  EXPECT_LE(diverged, n / 10) << "fp32 rows that differ between CUDA and CPU";
  EXPECT_LT(
      Nmse(gpu->dequantized.cpu().index_select(0, rows), cpu->dequantized.index_select(0, rows)),
      1e-6);
  const double differing = (gpu->codes.cpu() != cpu->codes).to(at::kDouble).mean().item<double>();
  EXPECT_TRUE(at::equal(gpu->g_idx.cpu(), cpu->g_idx));
  std::printf(
      "[fp32] NMSE(gpu, cpu) = %.3g, rows differing %ld, codes differing %.4f, "
      "out-err gpu/cpu %.4f\n",
      Nmse(gpu->dequantized, cpu->dequantized), static_cast<long>(diverged), differing,
      e_gpu / e_cpu);
}

INSTANTIATE_TEST_SUITE_P(Grid, GptqCudaTest,
                         ::testing::Values(Param{4, 128, true, false, false, false},
                                           Param{4, 128, true, true, false, false},
                                           Param{4, 128, false, true, true, false},
                                           Param{4, 128, true, false, false, true},
                                           Param{3, 48, false, true, false, false},
                                           Param{2, 32, true, false, true, false},
                                           Param{8, -1, false, true, false, false},
                                           Param{3, 128, true, false, true, true}));

TEST(GptqCudaMiscTest, HessianAccumulatesOnCuda) {
  SKIP_WITHOUT_CUDA();
  const at::Tensor x = CorrelatedActivations(512, 256, 3).to(at::kFloat);
  HessianAccumulator gpu(256, at::Device(at::kCUDA, 0));
  HessianAccumulator cpu(256, at::kCPU);
  ASSERT_TRUE(gpu.AddBatch(x.view({4, 128, 256})).ok());  // CPU input, moved to the device
  ASSERT_TRUE(gpu.AddBatch(x.cuda()).ok());
  ASSERT_TRUE(cpu.AddBatch(x.view({4, 128, 256})).ok());
  ASSERT_TRUE(cpu.AddBatch(x).ok());
  EXPECT_TRUE(gpu.hessian().is_cuda());
  EXPECT_EQ(gpu.num_samples(), 5);
  EXPECT_LT(Nmse(gpu.hessian(), cpu.hessian()), 1e-10);
}

TEST(GptqCudaMiscTest, FallbackAndPackingFromCuda) {
  SKIP_WITHOUT_CUDA();
  const int64_t k = 64;
  const at::Tensor w = at::randn({64, k}).cuda();
  QuantConfig c;
  c.group_size = 32;
  absl::StatusOr<QuantizedWeight> q =
      QuantizeGptq(w, at::full({k, k}, std::nan(""), at::kFloat).cuda(), c);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->rtn_fallback);
  absl::StatusOr<PackedWeight> p = Pack(*q, CheckpointFormat::kGptqV1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->qweight.is_cuda());
  // Packed on the GPU (tensor arithmetic) = packed on the CPU (the loop), word for word.
  QuantizedWeight q_cpu = *q;
  q_cpu.codes = q->codes.cpu();
  q_cpu.scales = q->scales.cpu();
  q_cpu.zeros = q->zeros.cpu();
  q_cpu.g_idx = q->g_idx.cpu();
  absl::StatusOr<PackedWeight> p_cpu = Pack(q_cpu, CheckpointFormat::kGptqV1);
  ASSERT_TRUE(p_cpu.ok()) << p_cpu.status();
  EXPECT_TRUE(at::equal(p->qweight, p_cpu->qweight));
  EXPECT_TRUE(at::equal(p->qzeros, p_cpu->qzeros));
  for (int bits : {2, 3, 4, 8}) {
    const at::Tensor v = at::randint(0, 1 << bits, {32 * 9, 40}, at::kInt);
    EXPECT_TRUE(at::equal(internal::PackRowsTensor(v.cuda(), bits).cpu(), internal::PackRowsLoop(v, bits)))
        << bits << " bits";
  }
  absl::StatusOr<at::Tensor> deq = Dequantize(*p, 64, k);
  ASSERT_TRUE(deq.ok());
  EXPECT_LT(Nmse(*deq, q->dequantized), 1e-5);
  EXPECT_FALSE(deq->is_cuda());
  // Packed tensors on the device dequantize to a weight on the device (the runtime feeds it
  // straight to the layer's matmuls), bit-equal to the CPU result.
  PackedWeight on_gpu = *p;
  on_gpu.qweight = p->qweight.cuda();
  on_gpu.qzeros = p->qzeros.cuda();
  on_gpu.scales = p->scales.cuda();
  on_gpu.g_idx = p->g_idx.cuda();
  absl::StatusOr<at::Tensor> deq_gpu = Dequantize(on_gpu, 64, k);
  ASSERT_TRUE(deq_gpu.ok()) << deq_gpu.status();
  EXPECT_TRUE(deq_gpu->is_cuda());
  EXPECT_TRUE(at::equal(deq_gpu->cpu(), *deq));
  // The runtime's shortcut from the CUDA codes: on the device, bit-equal too.
  absl::StatusOr<at::Tensor> from_codes = DequantizeCodes(*q);
  ASSERT_TRUE(from_codes.ok()) << from_codes.status();
  EXPECT_TRUE(from_codes->is_cuda());
  EXPECT_TRUE(at::equal(from_codes->cpu(), *deq));
  // A CPU Hessian with a CUDA weight is refused, not silently copied.
  absl::Status s = QuantizeGptq(w, at::eye(k), c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gptq
