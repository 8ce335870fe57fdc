// Layer-streaming helpers and perplexity evaluation.
#include <cmath>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gptq/status_macros.h"
#include "pipeline/layer_runner.h"
#include "gptq/torch_status.h"

namespace gptq::runtime {

absl::StatusOr<ComputeSpec> ResolveCompute(const std::string& device, const ModelConfig& config,
                                           int batch_size) {
  return CallTorch("device", [&]() -> absl::StatusOr<ComputeSpec> {
    ComputeSpec spec;
    const bool has_cuda = torch::cuda::is_available();
    if (device == "auto" || device.empty()) {
      spec.device = has_cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    } else if (device == "cpu") {
      spec.device = torch::kCPU;
    } else if (device == "cuda" || absl::StartsWith(device, "cuda:")) {
      int index = 0;
      if (device.size() > 5 && !absl::SimpleAtoi(device.substr(5), &index)) {
        return absl::InvalidArgumentError(absl::StrCat("bad device \"", device, "\": expected cpu, cuda or cuda:N"));
      }
      if (!has_cuda) {
        return absl::FailedPreconditionError(absl::StrCat(
            "device \"", device, "\" requested but CUDA is not available (this LibTorch build or machine has no GPU)"));
      }
      if (index < 0 || index >= static_cast<int>(torch::cuda::device_count())) {
        return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": only ",
                                                       torch::cuda::device_count(), " CUDA device(s)"));
      }
      spec.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("bad device \"", device, "\": expected auto, cpu, cuda or cuda:N"));
    }
    if (spec.device.is_cuda()) {
      spec.dtype = config.torch_dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat16;
    } else {
      spec.dtype = torch::kFloat32;
    }
    spec.batch_windows = batch_size > 1 ? batch_size : 0;
    return spec;
  });
}

int64_t ChooseBatchWindows(const ModelConfig& c, int64_t seqlen, const ComputeSpec& spec) {
  if (spec.batch_windows > 0) return spec.batch_windows;
  // Largest per-window intermediate: fp32 attention scores (+ probabilities) or MLP activations.
  const int64_t scores = 2 * c.num_heads * seqlen * seqlen * 4;
  const int64_t mlp = 3 * seqlen * c.intermediate_size * 4;
  const int64_t per_window = std::max<int64_t>(1, std::max(scores, mlp));
  // CPU: keep temporaries small — glibc returns big freed blocks to the OS, and re-faulting
  // them in cost more system time than the matmuls themselves (measured on stories260K);
  // a few windows per chunk still make matrices of a thousand rows and more.
  const int64_t budget = spec.device.is_cuda() ? (int64_t{1} << 30) : (int64_t{16} << 20);
  return std::max<int64_t>(1, std::min<int64_t>(64, budget / per_window));
}

absl::Status ForEachChunk(int64_t total, int64_t chunk, const CancelToken& cancel,
                          const std::function<absl::Status(int64_t, int64_t)>& fn) {
  for (int64_t begin = 0; begin < total; begin += chunk) {
    if (cancel.cancelled()) return absl::CancelledError("cancelled");
    GPTQ_RETURN_IF_ERROR(fn(begin, std::min(chunk, total - begin)));
  }
  return absl::OkStatus();
}

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const DecoderModel& model, const HeadWeights& head,
                                                    const LayerProvider& layers,
                                                    const std::vector<int32_t>& tokens, int seqlen,
                                                    const ComputeSpec& spec, const CancelToken& cancel,
                                                    const std::function<void(int)>& on_layer) {
  const ModelConfig& c = model.config();
  if (seqlen < 2) return absl::InvalidArgumentError(absl::StrCat("evaluation seqlen ", seqlen, " < 2"));
  const int64_t num_windows = static_cast<int64_t>(tokens.size()) / seqlen;
  if (num_windows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation text has ", tokens.size(),
                                                   " tokens; need at least one window of ", seqlen));
  }
  return CallTorch("evaluation", [&]() -> absl::StatusOr<PerplexityResult> {
    torch::NoGradGuard no_grad;
    const torch::Tensor ids =
        torch::from_blob(const_cast<int32_t*>(tokens.data()), {num_windows, seqlen}, torch::kInt32)
            .to(torch::kInt64)
            .to(spec.device);
    const int64_t chunk = ChooseBatchWindows(c, seqlen, spec);
    const AttentionContext ctx = MakeAttentionContext(c, seqlen, spec.dtype, spec.device);
    torch::Tensor hidden = Embed(head, ids);
    for (int layer = 0; layer < c.num_layers; ++layer) {
      GPTQ_ASSIGN_OR_RETURN(LayerWeights w, layers(layer));
      GPTQ_RETURN_IF_ERROR(ForEachChunk(num_windows, chunk, cancel, [&](int64_t b, int64_t n) {
        torch::Tensor x = hidden.narrow(0, b, n);
        x.copy_(DecoderLayerForward(c, layer, w, x, ctx, nullptr));
        return absl::OkStatus();
      }));
      if (on_layer) on_layer(layer);
    }
    double total = 0.0;
    GPTQ_RETURN_IF_ERROR(ForEachChunk(num_windows, chunk, cancel, [&](int64_t b, int64_t n) {
      total += SumNll(c, head, hidden.narrow(0, b, n), ids.narrow(0, b, n));
      return absl::OkStatus();
    }));
    PerplexityResult r;
    r.num_windows = num_windows;
    r.num_tokens = num_windows * seqlen;
    r.mean_nll = total / static_cast<double>(num_windows * (seqlen - 1));
    r.perplexity = std::exp(r.mean_nll);
    return r;
  });
}

}  // namespace gptq::runtime
