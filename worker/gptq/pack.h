// Packing of quantized weights into the GPTQ checkpoint layout (qweight / qzeros / scales /
// g_idx) read by transformers, optimum, GPTQModel and vLLM; see shared anchors gptq-format.md.
#ifndef GPTQ_WORKER_GPTQ_PACK_H_
#define GPTQ_WORKER_GPTQ_PACK_H_

#include <cstdint>

#include <torch/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gptq.h"

namespace gptq {

enum class CheckpointFormat { kGptqV1, kGptqV2 };

// The packed tensors of one Linear, all on CPU.
struct PackedWeight {
  torch::Tensor qweight;  // [K*bits/32, N] int32
  torch::Tensor qzeros;   // [G, N*bits/32] int32 (v1: zero - 1, v2: zero)
  torch::Tensor scales;   // [G, N] float16
  torch::Tensor g_idx;    // [K] int32
  int bits = 4;
  CheckpointFormat format = CheckpointFormat::kGptqV1;
};

// OK if an [N, K] weight can be packed at `bits`: K (rows of qweight) and N (qzeros) must be
// multiples of 32 for 3-bit and of 32/bits otherwise. Else FailedPrecondition explaining why.
absl::Status CheckPackable(int64_t out_features, int64_t in_features, int bits);

// Packs a quantization result. v1 needs sym-representable zeros (zero >= 1).
absl::StatusOr<PackedWeight> Pack(const QuantizedWeight& q, CheckpointFormat format);

// Unpacks back to codes [N, K] int32 and zeros [G, N] int32 (true zeros).
struct UnpackedWeight {
  torch::Tensor codes;
  torch::Tensor zeros;
};
absl::StatusOr<UnpackedWeight> Unpack(const PackedWeight& p, int64_t out_features,
                                      int64_t in_features);

// Dequantizes packed tensors to a float16 [N, K] weight on the device of `p.qweight`.
absl::StatusOr<torch::Tensor> Dequantize(const PackedWeight& p, int64_t out_features,
                                         int64_t in_features);

// What Dequantize(Pack(q)) returns, computed from the codes where they are (the GPU in the
// runtime) without packing: float16 [N, K] = fp16-rounded scales[g_idx] · (codes − zeros), on
// q.codes' device. Bit-equal to the packed path (tested); the runtime feeds it to the rest of
// the layer.
absl::StatusOr<torch::Tensor> DequantizeCodes(const QuantizedWeight& q);

// Converts qzeros between v1 and v2 (returns a new PackedWeight with the other format).
absl::StatusOr<PackedWeight> ConvertFormat(const PackedWeight& p, CheckpointFormat to,
                                           int64_t out_features);

namespace internal {
// Packing along dim 0 of values [rows, cols] int32 in [0, 2^bits) into [rows·bits/32, cols]
// int32 words (exposed for the tests): the scalar loop (CPU; used for CPU tensors) and its
// tensor-arithmetic twin (any device; used for CUDA tensors). Bit-identical.
torch::Tensor PackRowsLoop(const torch::Tensor& values, int bits);
torch::Tensor PackRowsTensor(const torch::Tensor& values, int bits);
}  // namespace internal

}  // namespace gptq

#endif  // GPTQ_WORKER_GPTQ_PACK_H_
