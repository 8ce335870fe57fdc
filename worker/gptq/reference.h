// gptq::reference — the slow, obviously correct twin of gptq::core, for tests only.
//
// A direct port of IST-DASLab gptq.py (GPTQ.add_batch, GPTQ.fasterquant, Quantizer.find_params,
// quantize) and of GPTQModel's group-aware reordering (gar_ref.py), column by column with no
// lazy batching: after quantizing column i, every later column j receives its update
// W[:, j] -= err_i · Hinv[i, j] immediately. Everything runs in float64 on the CPU. Grids of
// dynamic groups are computed from the fully updated columns when the group starts (in the
// original gptq.py, whose lazy batching leaves the columns of the current block stale, this
// only differs for groups that start inside a block).
#ifndef GPTQ_WORKER_GPTQ_REFERENCE_H_
#define GPTQ_WORKER_GPTQ_REFERENCE_H_

#include <cstdint>

#include <torch/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gptq.h"

namespace gptq {
namespace reference {

// GPTQ.add_batch, literally: H *= n/(n+tmp); n += tmp; inp = sqrt(2/n)·inp; H += inp·inpᵀ.
// `dtype` is the accumulation dtype (the reference uses float32).
class ReferenceHessian {
 public:
  ReferenceHessian(int64_t columns, at::ScalarType dtype);
  // x: [T, K] (one sample) or [B, T, K] (B samples), CPU or any device (copied to CPU).
  absl::Status AddBatch(const torch::Tensor& x);
  const torch::Tensor& hessian() const { return h_; }
  int64_t num_samples() const { return num_samples_; }

 private:
  int64_t columns_;
  int64_t num_samples_ = 0;
  torch::Tensor h_;
};

// fasterquant, column by column, fp64 on the CPU. Same contract and outputs as
// gptq::QuantizeGptq (tensors on the CPU), including damping, dead inputs, desc_act,
// static_groups, act_group_aware and the RTN fallback.
absl::StatusOr<QuantizedWeight> ReferenceGptq(const torch::Tensor& weight,
                                              const torch::Tensor& hessian,
                                              const QuantConfig& config);

// find_params + quantize per channel / per group of original columns, fp64 on the CPU.
absl::StatusOr<QuantizedWeight> ReferenceRtn(const torch::Tensor& weight,
                                             const QuantConfig& config);

}  // namespace reference
}  // namespace gptq

#endif  // GPTQ_WORKER_GPTQ_REFERENCE_H_
