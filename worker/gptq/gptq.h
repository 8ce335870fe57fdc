// GPTQ numerical core: Hessian accumulation, quantization grids, and the GPTQ algorithm
// (Frantar et al. 2022) for one linear layer. LibTorch + Abseil only; no RPC. Runs on CPU and
// CUDA (tensors stay on the device of the inputs).
//
// Conventions: a Linear weight W is [N, K] (N = out_features, K = in_features); activations X
// are [tokens, K]. Every function validates its arguments and returns InvalidArgument.
#ifndef GPTQ_WORKER_GPTQ_GPTQ_H_
#define GPTQ_WORKER_GPTQ_GPTQ_H_

#include <cstdint>

#include <torch/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gptq {

// Options of one GPTQ run (one module or several sharing a Hessian).
struct QuantConfig {
  int bits = 4;                       // 2, 3, 4 or 8
  int group_size = 128;               // > 0, or -1 for one group per output channel (G = 1)
  bool sym = true;                    // symmetric grid: zero = 2^(bits-1)
  bool desc_act = false;              // act-order permutation by decreasing diag(H)
  bool static_groups = false;         // with desc_act: grids fixed before permuting
  bool act_group_aware = false;       // GPTQModel's group-aware reordering (g_idx stays trivial);
                                      // ignored when desc_act is set (desc_act wins, as in
                                      // GPTQModel and optimum)
  double damp_percent = 0.1;          // in (0, 1): damp = damp_percent * mean(diag(H))
  double damp_auto_increment = 0.01;  // in (0, 1): step while H + damp is not PD, until damp >= 1
  int block_size = 128;               // lazy-batch block width (columns)
};

// Validates a config (bits, group size, damps, block size) → InvalidArgument naming the field.
absl::Status ValidateConfig(const QuantConfig& config);

// Streaming Hessian H = 2/n · Σ XᵀX over all rows seen, kept as the reference's running
// average in fp32 on `device`. Not thread-safe.
class HessianAccumulator {
 public:
  HessianAccumulator(int64_t columns, torch::Device device);
  // x: [..., K] float (fp32/fp16/bf16), any device (moved to this accumulator's device).
  // Every leading dimension is flattened into rows ("tokens"); n counts rows of the *batch*
  // dimension as the reference does: for x of rank 3 [B, T, K] n += B, for rank 2 [T, K]
  // n += 1 (one sample).
  absl::Status AddBatch(const torch::Tensor& x);
  // [K, K] fp32 on the accumulator's device.
  const torch::Tensor& hessian() const { return h_; }
  int64_t num_samples() const { return num_samples_; }
  int64_t columns() const { return columns_; }

 private:
  int64_t columns_;
  int64_t num_samples_ = 0;
  torch::Tensor h_;
  absl::Status init_status_;  // not OK if columns <= 0 or the allocation failed
};

// The result of quantizing one [N, K] weight. Tensors are on the weight's device.
struct QuantizedWeight {
  torch::Tensor codes;     // [N, K] int32, values in [0, 2^bits - 1], in original column order
  torch::Tensor scales;    // [G, N] fp32, G = ceil(K / group_size) (1 when group_size = -1)
  torch::Tensor zeros;     // [G, N] int32, true zero points (v2 semantics)
  torch::Tensor g_idx;     // [K] int32, group of each input column
  torch::Tensor dequantized;  // [N, K] fp32: scales[g_idx[k], n] * (codes - zeros[g_idx[k], n])
  int bits = 4;
  int group_size = 128;       // as configured (-1 allowed)
  double loss = 0.0;          // Σ (w - q)² / d² / 2 over the module (0 for RTN fallback)
  double damp_used = 0.0;     // damp fraction finally used
  bool rtn_fallback = false;  // true if H + damp was never PD below damp 1
  double seconds = 0.0;
};

// GPTQ for one weight. weight: [N, K] float, any device; hessian: [K, K] fp32 (from a
// HessianAccumulator; several modules that share an input may pass the same one; it is not
// modified) on the weight's device (InvalidArgument otherwise). Never throws; a Hessian that
// stays non-PD (or non-finite) gives an RTN result with rtn_fallback = true and damp_used =
// the first damp >= 1 reached. Computes in fp32 (fp16/bf16/fp32 weights) or in fp64 (fp64
// weights, used by the tests to compare with the fp64 reference twin); outputs are always the
// dtypes documented on QuantizedWeight.
//
// Semantics (see gptq.cc): dead inputs (diag H = 0) get H[i,i] = 1 and W[:, i] = 0; grids
// of dynamic groups are computed from the fully updated columns when the group starts;
// desc_act orders columns by a stable argsort of diag(H), descending; static_groups computes
// every group's grid from the original column order first (g_idx = k // group_size);
// act_group_aware sorts columns inside each group and whole groups by their largest diag(H)
// (a partial last group is a group like the others), g_idx = k // group_size.
absl::StatusOr<QuantizedWeight> QuantizeGptq(const torch::Tensor& weight,
                                             const torch::Tensor& hessian,
                                             const QuantConfig& config);

// Round-to-nearest with the same grids (per channel / per group), for baselines and fallback.
absl::StatusOr<QuantizedWeight> QuantizeRtn(const torch::Tensor& weight,
                                            const QuantConfig& config);

}  // namespace gptq

#endif  // GPTQ_WORKER_GPTQ_GPTQ_H_
