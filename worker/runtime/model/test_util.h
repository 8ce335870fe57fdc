// Test helpers: write small safetensors files and tiny random checkpoints into temp dirs.
#ifndef GPTQ_WORKER_RUNTIME_MODEL_TEST_UTIL_H_
#define GPTQ_WORKER_RUNTIME_MODEL_TEST_UTIL_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace gptq::runtime::testing {

// A fresh empty directory under $TEST_TMPDIR or /tmp.
std::string MakeTempDir(const std::string& tag);

void WriteFile(const std::string& path, const std::string& bytes);
std::string ReadFile(const std::string& path);

// Serializes tensors (contiguous copies on CPU) in safetensors layout.
std::string SafetensorsBytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors);
void WriteSafetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

struct TinyModelSpec {
  std::string architecture = "LlamaForCausalLM";
  int64_t vocab = 96, hidden = 64, ffn = 128, layers = 2, heads = 4, kv_heads = 2;
  bool tie = false;
  uint64_t seed = 1;
  std::string rope_scaling_json;  // e.g. {"rope_type":"llama3",...}; empty: none
};

// The config.json text of a spec.
std::string TinyConfigJson(const TinyModelSpec& spec);
// The tensors of a random model of a spec (fp32; Qwen2 gets q/k/v biases).
std::vector<std::pair<std::string, torch::Tensor>> TinyModelTensors(const TinyModelSpec& spec);
// Writes config.json + model.safetensors; returns the directory.
std::string WriteTinyModel(const std::string& dir, const TinyModelSpec& spec);

}  // namespace gptq::runtime::testing

#endif  // GPTQ_WORKER_RUNTIME_MODEL_TEST_UTIL_H_
