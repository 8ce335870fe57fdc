// GPTQ checkpoint packing. Every bit width uses one rule: along the packed dimension, the
// b-bit values form a little-endian bit stream cut into 32-bit words (value j occupies stream
// bits [b·j, b·j + b)). For b ∈ {2, 4, 8} that is "32/b values per word, lowest bits first";
// for b = 3 it is exactly the 10-1-10-1-10 layout over 3 words per 32 values (value 10
// straddles words 0/1, value 21 words 1/2) described in the shared anchor gptq-format.md.
#include "pack.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gptq/status_macros.h"
#include "gptq/torch_status.h"

namespace gptq {
namespace {

absl::Status ValidateBits(int bits) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be 2, 3, 4 or 8, got ", bits));
  }
  return absl::OkStatus();
}

// Values that must be grouped along a packed dimension: 32 for 3-bit, 32/b otherwise.
int64_t PackMultiple(int bits) { return bits == 3 ? 32 : 32 / bits; }

std::string ShapeString(const at::Tensor& t) {
  return t.defined() ? absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]") : "undefined";
}

absl::Status ExpectTensor(const at::Tensor& t, const char* name, std::vector<int64_t> shape,
                          at::ScalarType dtype) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(name, ": tensor is undefined"));
  if (t.sizes() != at::IntArrayRef(shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": expected shape [", absl::StrJoin(shape, ", "), "], got ", ShapeString(t)));
  }
  if (t.scalar_type() != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": expected dtype ",
                                                   std::string(c10::toString(dtype)), ", got ",
                                                   std::string(c10::toString(t.scalar_type()))));
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

// Packs values [rows, cols] (int32, each in [0, 2^bits)) along dim 0 into
// [rows·bits/32, cols] int32 words: the scalar loop, on the CPU (the twin of PackRowsTensor,
// and the faster of the two on a CPU).
at::Tensor PackRowsLoop(const at::Tensor& values, int bits) {
  const at::Tensor v = values.to(at::kCPU, at::kInt).contiguous();
  const int64_t rows = v.size(0), cols = v.size(1);
  std::vector<uint32_t> words(static_cast<size_t>(rows * bits / 32 * cols), 0u);
  const int32_t* src = v.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bit = r * bits;
    const int64_t word = bit / 32;
    const int shift = static_cast<int>(bit % 32);
    const bool straddles = shift + bits > 32;
    uint32_t* dst = words.data() + word * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t value = static_cast<uint32_t>(src[r * cols + c]);
      dst[c] |= value << shift;
      if (straddles) dst[cols + c] |= value >> (32 - shift);
    }
  }
  at::Tensor out = at::empty({rows * bits / 32, cols}, at::kInt);
  std::memcpy(out.data_ptr<int32_t>(), words.data(), words.size() * sizeof(uint32_t));
  return out;
}

// The same words from whole-tensor integer arithmetic on the values' device (the GPU path):
// for each of the L values of a group (L = 32 for 3-bit, 32/b otherwise; L·b/32 words),
// value j adds (v·2^shift mod 2^32) to word ⌊b·j/32⌋ and, when it straddles, ⌊v / 2^(32−shift)⌋
// to the next word. Bits never overlap, so sums are ORs. Rows must be a multiple of L.
at::Tensor PackRowsTensor(const at::Tensor& values, int bits) {
  const int64_t rows = values.size(0), cols = values.size(1);
  const int64_t group = bits == 3 ? 32 : 32 / bits;
  const int64_t words_per_group = group * bits / 32;
  const at::Tensor v = values.to(at::kLong).contiguous().view({rows / group, group, cols});
  constexpr int64_t kTwo32 = int64_t{1} << 32;
  std::vector<at::Tensor> words;
  for (int64_t w = 0; w < words_per_group; ++w) words.push_back(at::zeros({rows / group, cols}, v.options()));
  for (int64_t j = 0; j < group; ++j) {
    const int64_t bit = j * bits, word = bit / 32, shift = bit % 32;
    const at::Tensor vj = v.select(1, j);
    words[word].add_(at::remainder(vj * (int64_t{1} << shift), kTwo32));
    if (shift + bits > 32) words[word + 1].add_(at::div(vj, int64_t{1} << (32 - shift), "floor"));
  }
  at::Tensor out = at::stack(words, 1).view({rows / group * words_per_group, cols});
  // [0, 2^32) → the int32 with the same bits.
  out = at::where(out >= (int64_t{1} << 31), out - kTwo32, out);
  return out.to(at::kInt);
}

}  // namespace internal

namespace {

at::Tensor PackRows(const at::Tensor& values, int bits) {
  return values.is_cuda() ? internal::PackRowsTensor(values, bits) : internal::PackRowsLoop(values, bits);
}

// Inverse of PackRows: words [rows·bits/32, cols] → values [rows, cols] int32.
at::Tensor UnpackRows(const at::Tensor& packed, int64_t rows, int bits) {
  const at::Tensor p = packed.to(at::kCPU, at::kInt).contiguous();
  const int64_t cols = p.size(1);
  const uint32_t* src = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  const uint32_t mask = (1u << bits) - 1u;
  at::Tensor out = at::empty({rows, cols}, at::kInt);
  int32_t* dst = out.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bit = r * bits;
    const int64_t word = bit / 32;
    const int shift = static_cast<int>(bit % 32);
    const bool straddles = shift + bits > 32;
    const uint32_t* w = src + word * cols;
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t value = w[c] >> shift;
      if (straddles) value |= w[cols + c] << (32 - shift);
      dst[r * cols + c] = static_cast<int32_t>(value & mask);
    }
  }
  return out;
}

// Range check of integer values before packing.
absl::Status CheckRange(const at::Tensor& v, int64_t low, int64_t high, const char* what) {
  if (v.numel() == 0) return absl::OkStatus();
  const int64_t mn = v.min().item<int64_t>();
  const int64_t mx = v.max().item<int64_t>();
  if (mn < low || mx > high) {
    return absl::FailedPreconditionError(absl::StrCat(what, " must lie in [", low, ", ", high,
                                                      "], found values in [", mn, ", ", mx, "]"));
  }
  return absl::OkStatus();
}

// Stored qzeros value of a true zero: v1 keeps zero - 1.
int ZeroOffset(CheckpointFormat format) { return format == CheckpointFormat::kGptqV1 ? 1 : 0; }

absl::StatusOr<at::Tensor> PackZeros(const at::Tensor& zeros, int bits, CheckpointFormat format) {
  const at::Tensor stored = zeros.to(at::kCPU, at::kInt) - ZeroOffset(format);
  const int64_t maxq = (1 << bits) - 1;
  if (format == CheckpointFormat::kGptqV1) {
    GPTQ_RETURN_IF_ERROR(CheckRange(
        stored, 0, maxq,
        "GPTQ v1 stores zero - 1, so zero points (v1 needs sym-representable zeros >= 1)"));
  } else {
    GPTQ_RETURN_IF_ERROR(CheckRange(stored, 0, maxq, "zero points"));
  }
  return PackRows(stored.t().contiguous(), bits).t().contiguous();  // packed along N
}

at::Tensor UnpackZeros(const at::Tensor& qzeros, int64_t out_features, int bits,
                       CheckpointFormat format) {
  return UnpackRows(qzeros.t().contiguous(), out_features, bits).t().contiguous() +
         ZeroOffset(format);
}

absl::Status ValidatePacked(const PackedWeight& p, int64_t n, int64_t k) {
  GPTQ_RETURN_IF_ERROR(ValidateBits(p.bits));
  GPTQ_RETURN_IF_ERROR(CheckPackable(n, k, p.bits));
  GPTQ_RETURN_IF_ERROR(ExpectTensor(p.qweight, "qweight", {k * p.bits / 32, n}, at::kInt));
  if (!p.scales.defined() || p.scales.dim() != 2 || p.scales.size(1) != n || p.scales.size(0) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scales: expected [G, ", n, "], got ", ShapeString(p.scales)));
  }
  const int64_t g = p.scales.size(0);
  GPTQ_RETURN_IF_ERROR(ExpectTensor(p.qzeros, "qzeros", {g, n * p.bits / 32}, at::kInt));
  GPTQ_RETURN_IF_ERROR(ExpectTensor(p.g_idx, "g_idx", {k}, at::kInt));
  const at::Tensor gi = p.g_idx.to(at::kCPU);
  if (gi.min().item<int64_t>() < 0 || gi.max().item<int64_t>() >= g) {
    return absl::InvalidArgumentError(absl::StrCat("g_idx: values must lie in [0, ", g,
                                                   "), found [", gi.min().item<int64_t>(), ", ",
                                                   gi.max().item<int64_t>(), "]"));
  }
  return absl::OkStatus();
}

// fp16 [N, K] = fp16(scales)[g_idx] · (codes − zeros[g_idx]), in fp32 on codes' device: the
// one formula of Dequantize (packed) and DequantizeCodes, so the two are bit-equal.
at::Tensor ScaleCodes(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                      const at::Tensor& g_idx) {
  const at::Device device = codes.device();
  const at::Tensor gi = g_idx.to(device, at::kLong);
  const at::Tensor scale = scales.to(device).to(at::kHalf).to(at::kFloat).index_select(0, gi);  // [K, N]
  const at::Tensor zero = zeros.to(device).to(at::kFloat).index_select(0, gi);
  return (scale * (codes.t().to(at::kFloat) - zero)).t().to(at::kHalf).contiguous();
}

}  // namespace

absl::Status CheckPackable(int64_t out_features, int64_t in_features, int bits) {
  GPTQ_RETURN_IF_ERROR(ValidateBits(bits));
  if (out_features <= 0 || in_features <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot pack an empty weight [", out_features, ", ", in_features, "]"));
  }
  const int64_t multiple = PackMultiple(bits);
  const std::string unit =
      bits == 3 ? "3-bit packs 32 values into 3 int32 words"
                : absl::StrCat(bits, "-bit packs ", multiple, " values per int32 word");
  if (in_features % multiple != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot pack in_features=", in_features, " at ", bits, " bits: ", unit,
                     " along the input dimension (qweight), so in_features must be a multiple of ",
                     multiple, "; leave this module unquantized (it is never padded silently)"));
  }
  if (out_features % multiple != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot pack out_features=", out_features, " at ", bits, " bits: ", unit,
                     " along the output dimension (qzeros), so out_features must be a multiple of ",
                     multiple, "; leave this module unquantized (it is never padded silently)"));
  }
  return absl::OkStatus();
}

namespace {

// Shapes and dtypes of a QuantizedWeight's codes [N, K] int32, scales [G, N], zeros [G, N]
// int32 and g_idx [K] int32 (and, with `packable`, CheckPackable on N, K).
absl::Status ValidateQuantized(const QuantizedWeight& q, bool packable) {
  GPTQ_RETURN_IF_ERROR(ValidateBits(q.bits));
  if (!q.codes.defined() || q.codes.dim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("codes: expected [N, K] int32, got ", ShapeString(q.codes)));
  }
  const int64_t n = q.codes.size(0), k = q.codes.size(1);
  if (packable) GPTQ_RETURN_IF_ERROR(CheckPackable(n, k, q.bits));
  GPTQ_RETURN_IF_ERROR(ExpectTensor(q.codes, "codes", {n, k}, at::kInt));
  if (!q.scales.defined() || q.scales.dim() != 2 || q.scales.size(1) != n || q.scales.size(0) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scales: expected [G, ", n, "], got ", ShapeString(q.scales)));
  }
  GPTQ_RETURN_IF_ERROR(ExpectTensor(q.zeros, "zeros", {q.scales.size(0), n}, at::kInt));
  GPTQ_RETURN_IF_ERROR(ExpectTensor(q.g_idx, "g_idx", {k}, at::kInt));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PackedWeight> Pack(const QuantizedWeight& q, CheckpointFormat format) {
  GPTQ_RETURN_IF_ERROR(ValidateQuantized(q, /*packable=*/true));
  const int64_t g = q.scales.size(0);
  PackedWeight out;
  GPTQ_RETURN_IF_ERROR(CallTorch("Pack", [&]() -> absl::Status {
    // The codes are packed where they are (on a GPU: integer arithmetic there, then only the
    // packed words travel); everything returned is on the CPU.
    const at::Tensor& codes = q.codes;
    GPTQ_RETURN_IF_ERROR(CheckRange(codes, 0, (1 << q.bits) - 1, "codes"));
    const at::Tensor g_idx = q.g_idx.to(at::kCPU).contiguous();
    GPTQ_RETURN_IF_ERROR(CheckRange(g_idx, 0, g - 1, "g_idx"));
    GPTQ_ASSIGN_OR_RETURN(out.qzeros, PackZeros(q.zeros, q.bits, format));
    out.qweight = PackRows(codes.t().contiguous(), q.bits).to(at::kCPU);  // packed along K
    out.scales = q.scales.to(at::kCPU, at::kHalf).contiguous();
    out.g_idx = g_idx;
    out.bits = q.bits;
    out.format = format;
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<UnpackedWeight> Unpack(const PackedWeight& p, int64_t out_features,
                                      int64_t in_features) {
  GPTQ_RETURN_IF_ERROR(ValidatePacked(p, out_features, in_features));
  UnpackedWeight out;
  GPTQ_RETURN_IF_ERROR(CallTorch("Unpack", [&] {
    out.codes = UnpackRows(p.qweight, in_features, p.bits).t().contiguous();
    out.zeros = UnpackZeros(p.qzeros, out_features, p.bits, p.format);
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<torch::Tensor> Dequantize(const PackedWeight& p, int64_t out_features,
                                         int64_t in_features) {
  GPTQ_ASSIGN_OR_RETURN(UnpackedWeight u, Unpack(p, out_features, in_features));
  at::Tensor out;
  GPTQ_RETURN_IF_ERROR(CallTorch("Dequantize", [&] {
    // Unpacking runs on the CPU; the weight goes back where the packed tensors live.
    out = ScaleCodes(u.codes, p.scales, u.zeros, p.g_idx).to(p.qweight.device());
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<torch::Tensor> DequantizeCodes(const QuantizedWeight& q) {
  GPTQ_RETURN_IF_ERROR(ValidateQuantized(q, /*packable=*/false));
  at::Tensor out;
  GPTQ_RETURN_IF_ERROR(CallTorch("DequantizeCodes", [&] {
    out = ScaleCodes(q.codes, q.scales, q.zeros, q.g_idx);
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<PackedWeight> ConvertFormat(const PackedWeight& p, CheckpointFormat to,
                                           int64_t out_features) {
  GPTQ_RETURN_IF_ERROR(ValidateBits(p.bits));
  if (out_features <= 0 || out_features % PackMultiple(p.bits) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("ConvertFormat: out_features=", out_features, " is not packable at ", p.bits,
                     " bits (must be a positive multiple of ", PackMultiple(p.bits), ")"));
  }
  if (!p.qzeros.defined() || p.qzeros.dim() != 2 ||
      p.qzeros.size(1) != out_features * p.bits / 32 || p.qzeros.scalar_type() != at::kInt) {
    return absl::InvalidArgumentError(absl::StrCat("qzeros: expected [G, ",
                                                   out_features * p.bits / 32, "] int32, got ",
                                                   ShapeString(p.qzeros)));
  }
  PackedWeight out = p;
  if (p.format == to) return out;
  GPTQ_RETURN_IF_ERROR(CallTorch("ConvertFormat", [&]() -> absl::Status {
    const at::Tensor zeros = UnpackZeros(p.qzeros, out_features, p.bits, p.format);
    GPTQ_ASSIGN_OR_RETURN(out.qzeros, PackZeros(zeros, p.bits, to));
    out.format = to;
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace gptq
