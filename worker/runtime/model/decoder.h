// Decoder-only transformer families (Llama, Mistral, Qwen2): checkpoint validation, per-layer
// weight loading, and forward passes that follow transformers' eager implementation
// (RMSNorm in fp32, rotary embeddings with cos/sin computed in fp32, softmax in fp32).
// Compute dtype is the dtype of the weights handed in: fp32 on CPU, fp16/bf16 on GPU.
//
// Tensor conventions: token ids [B, T] int64; hidden states [B, T, hidden] compute dtype;
// Linear weights [out, in].
#ifndef GPTQ_WORKER_RUNTIME_MODEL_DECODER_H_
#define GPTQ_WORKER_RUNTIME_MODEL_DECODER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace gptq::runtime {

// The points in a decoder layer where Linear inputs are observed.
enum class CapturePoint {
  kAttentionInput = 0,  // input of q_proj, k_proj, v_proj (after input_layernorm)
  kAttentionOutput = 1, // input of o_proj
  kMlpInput = 2,        // input of gate_proj, up_proj (after post_attention_layernorm)
  kMlpHidden = 3,       // input of down_proj
};

// Module names inside a layer, relative to `model.layers.<i>.`.
inline constexpr const char* kQProj = "self_attn.q_proj";
inline constexpr const char* kKProj = "self_attn.k_proj";
inline constexpr const char* kVProj = "self_attn.v_proj";
inline constexpr const char* kOProj = "self_attn.o_proj";
inline constexpr const char* kGateProj = "mlp.gate_proj";
inline constexpr const char* kUpProj = "mlp.up_proj";
inline constexpr const char* kDownProj = "mlp.down_proj";

// The capture point whose tensor is the input of `module` (one of the names above).
CapturePoint InputPointOf(const std::string& module);

// The true-sequential groups of a family, in order: [q,k,v] → [o] → [gate,up] → [down]
// (identical for the three families supported).
std::vector<std::vector<std::string>> SequentialGroups(Architecture arch);

struct LinearWeights {
  torch::Tensor weight;  // [out, in]
  torch::Tensor bias;    // [out] or undefined
};

struct LayerWeights {
  torch::Tensor input_norm;  // [hidden]
  torch::Tensor post_norm;   // [hidden]
  std::map<std::string, LinearWeights> linears;  // keyed by kQProj, ...
};

struct HeadWeights {
  torch::Tensor embed;       // [vocab, hidden]
  torch::Tensor final_norm;  // [hidden]
  torch::Tensor lm_head;     // [vocab, hidden] (the embedding when tied)
};

// Rotary tables and the additive attention mask for one sequence length, on one device.
struct AttentionContext {
  torch::Tensor cos, sin;  // [T, head_dim] compute dtype
  // One additive mask per distinct window: [T, T] compute dtype (0 or -inf).
  std::map<int64_t, torch::Tensor> masks;
};

// Called with the input of a group of Linears; return non-OK to abort the forward.
using CaptureFn = std::function<absl::Status(CapturePoint, const torch::Tensor&)>;

class DecoderModel {
 public:
  // Reads config.json and the safetensors, and checks that the checkpoint holds exactly the
  // tensors the architecture needs with the shapes config.json implies: errors name the file
  // and the tensor (missing, unexpected, wrong shape, non-float dtype).
  static absl::StatusOr<std::unique_ptr<DecoderModel>> Open(const std::string& model_dir);

  const ModelConfig& config() const { return config_; }
  const CheckpointReader& reader() const { return *reader_; }
  const std::string& dir() const { return dir_; }

  // Full tensor name of a layer module's weight prefix: "model.layers.<i>.<module>".
  static std::string ModulePrefix(int layer, const std::string& module);
  // Modules of one layer, in execution order (q, k, v, o, gate, up, down).
  static std::vector<std::string> LayerModules();

  // Layer `layer`'s weights as `dtype` on `device`.
  absl::StatusOr<LayerWeights> LoadLayer(int layer, torch::ScalarType dtype, torch::Device device) const;
  absl::StatusOr<HeadWeights> LoadHead(torch::ScalarType dtype, torch::Device device) const;

 private:
  std::string dir_;
  ModelConfig config_;
  std::unique_ptr<CheckpointReader> reader_;
};

// The functions below throw c10::Error on Torch failures; callers wrap them in CallTorch.

AttentionContext MakeAttentionContext(const ModelConfig& config, int64_t seqlen,
                                      torch::ScalarType dtype, torch::Device device);

// Inverse rotary frequencies [head_dim/2] fp32 on CPU (default, linear or llama3 scaling).
torch::Tensor RopeInverseFrequencies(const ModelConfig& config);

// x: [B, T, hidden]. `capture` (may be null) sees each Linear group's input; when
// `stop_after` >= 0 the forward returns an undefined tensor right after calling `capture`
// for that point (the rest of the layer is not needed).
torch::Tensor DecoderLayerForward(const ModelConfig& config, int layer, const LayerWeights& w,
                                  const torch::Tensor& x, const AttentionContext& ctx,
                                  const CaptureFn* capture, int stop_after = -1,
                                  absl::Status* capture_status = nullptr);

// ids: [B, T] int64 on the head's device → [B, T, hidden].
torch::Tensor Embed(const HeadWeights& head, const torch::Tensor& ids);
// Final norm + lm_head: [B, T, hidden] → logits [B, T, vocab] fp32.
torch::Tensor LmHead(const ModelConfig& config, const HeadWeights& head, const torch::Tensor& hidden);
// Sum of next-token NLL over all positions but the last of each row, fp64 scalar on CPU:
// hidden [B, T, hidden], ids [B, T]. Computed in row chunks to bound the logits' memory.
double SumNll(const ModelConfig& config, const HeadWeights& head, const torch::Tensor& hidden,
              const torch::Tensor& ids);

// Whole-model forward with every layer resident (tests, small models): ids [B, T] → logits
// [B, T, vocab] fp32.
absl::StatusOr<torch::Tensor> ForwardLogits(const DecoderModel& model, const torch::Tensor& ids,
                                            torch::ScalarType dtype, torch::Device device);

// Greedy decoding (no KV cache; for tests): returns the `num_new` generated ids.
absl::StatusOr<std::vector<int64_t>> GreedyGenerate(const DecoderModel& model,
                                                    const std::vector<int64_t>& prompt, int num_new);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_MODEL_DECODER_H_
