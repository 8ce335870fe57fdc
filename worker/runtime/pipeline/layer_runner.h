// Layer-streaming execution shared by calibration and evaluation: hidden states of every window
// stay on the compute device while decoder layers are brought there one at a time (the rest of
// the model stays memory-mapped on CPU). Internal to the runtime (Torch in the interface).
#ifndef GPTQ_WORKER_RUNTIME_PIPELINE_LAYER_RUNNER_H_
#define GPTQ_WORKER_RUNTIME_PIPELINE_LAYER_RUNNER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "absl/status/statusor.h"
#include "model/decoder.h"
#include "quantize_job.h"

namespace gptq::runtime {

// Where and how the model runs.
struct ComputeSpec {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  int64_t batch_windows = 0;  // windows per forward chunk; 0: chosen from the model shape
};

// Parses "auto", "cpu", "cuda", "cuda:N" → a device (FailedPrecondition when CUDA is asked for
// but unavailable) and the compute dtype for `config` (fp32 on CPU; bf16 on GPU for bf16
// checkpoints, else fp16).
absl::StatusOr<ComputeSpec> ResolveCompute(const std::string& device, const ModelConfig& config,
                                           int batch_size);

// Windows per chunk so that attention scores and MLP activations stay near `budget_bytes`.
int64_t ChooseBatchWindows(const ModelConfig& config, int64_t seqlen, const ComputeSpec& spec);

// Runs `fn(begin, count)` over [0, total) in chunks of `chunk` (cancellation checked between).
absl::Status ForEachChunk(int64_t total, int64_t chunk, const CancelToken& cancel,
                          const std::function<absl::Status(int64_t, int64_t)>& fn);

// Gives layer `i`'s weights on the compute device (original, or with quantized replacements).
using LayerProvider = std::function<absl::StatusOr<LayerWeights>(int layer)>;

struct PerplexityResult {
  double perplexity = 0.0;
  double mean_nll = 0.0;
  int64_t num_windows = 0;
  int64_t num_tokens = 0;  // num_windows * seqlen
};

// exp(mean NLL) over the non-overlapping `seqlen` windows of `tokens` (a trailing partial
// window is dropped; no BOS added), next-token NLL over positions 1..seqlen-1 of each window
// (as GPTQ's llama_eval). InvalidArgument when tokens has fewer than seqlen tokens.
// `on_layer(layer)` is called after each layer (progress).
absl::StatusOr<PerplexityResult> EvaluatePerplexity(const DecoderModel& model, const HeadWeights& head,
                                                    const LayerProvider& layers,
                                                    const std::vector<int32_t>& tokens, int seqlen,
                                                    const ComputeSpec& spec, const CancelToken& cancel,
                                                    const std::function<void(int)>& on_layer);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_PIPELINE_LAYER_RUNNER_H_
