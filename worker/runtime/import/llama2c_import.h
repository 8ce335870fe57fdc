// Import of Karpathy's llama2.c checkpoints (legacy "version 0" model.bin, as written by
// llama2.c's export.py `legacy_export` / the original train.py, and float32 "version 1",
// `version1_export`: a 256-byte header {uint32 magic "ak42", int32 version, the same 7 int32,
// uint8 shared_classifier, zeros} then the norms (rms_att, rms_ffn, rms_final), the embedding
// and the matrices in the order below, no freq_cis, [wcls]) into a Hugging Face Llama
// checkpoint directory: config.json, model.safetensors (float32, same tensor names, order and
// bits as the HF conversion), and — from llama2.c's tokenizer.bin — tokenizer.model plus
// tokenizer_config.json / special_tokens_map.json / generation_config.json.
//
// model.bin layout (all little-endian): 7 int32 {dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size (negative: unshared classifier), seq_len}, then float32 arrays
// token_embedding_table [vocab, dim], rms_att_weight [L, dim], wq [L, dim, dim],
// wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn_weight [L, dim],
// w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final_weight [dim],
// freq_cis_real [seq_len, head/2], freq_cis_imag [seq_len, head/2], [wcls [vocab, dim]]
// (kv_dim = n_kv_heads * dim / n_heads; matrices are [out, in] like torch Linear weights).
//
// Rotary embeddings: llama2.c rotates interleaved pairs (2i, 2i+1) of each head, HF rotates
// (i, i + head/2), so wq's and wk's rows are permuted within each head (PermuteQkRowsToHf).
// Plain C++ (no Torch); tensors are streamed one at a time.
#ifndef GPTQ_WORKER_RUNTIME_IMPORT_LLAMA2C_IMPORT_H_
#define GPTQ_WORKER_RUNTIME_IMPORT_LLAMA2C_IMPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/runtime/writer/checkpoint_writer.h"

namespace gptq::runtime {

// Float offsets of each array in a model file's data section (after the header).
struct Llama2cLayout {
  uint64_t token_embedding = 0, rms_att = 0, wq = 0, wk = 0, wv = 0, wo = 0, rms_ffn = 0;
  uint64_t w1 = 0, w2 = 0, w3 = 0, rms_final = 0, wcls = 0;
  uint64_t total_floats = 0;
};

struct Llama2cConfig {
  int32_t version = 0;             // 0: legacy 28-byte header; 1: "ak42" 256-byte header
  int32_t dim = 0;
  int32_t hidden_dim = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t vocab_size = 0;          // absolute value
  bool shared_classifier = true;   // false when the file's vocab_size is negative
  int32_t seq_len = 0;

  int64_t head_dim() const { return dim / n_heads; }
  int64_t kv_dim() const { return int64_t{n_kv_heads} * head_dim(); }
  uint64_t header_bytes() const;    // 28 (version 0) or 256 (version 1)
  Llama2cLayout Layout() const;
  // The exact model.bin size this config implies (header + all float32 arrays).
  uint64_t ExpectedFileBytes() const;
};

// Parses and validates the header (28 bytes for version 0, 256 for version 1; `what` names the
// file in messages). InvalidArgument for non-positive fields, dim % n_heads != 0,
// n_heads % n_kv_heads != 0, an odd head size, or export version 2 (int8), not read here.
absl::StatusOr<Llama2cConfig> ParseLlama2cHeader(const void* header, size_t size,
                                                 const std::string& what);

// The HF Llama config.json (as text) for a llama2.c model, like the reference conversions:
// max_position_embeddings = seq_len, rms_norm_eps 1e-5, rope_theta 10000, tied embeddings when
// the classifier is shared, torch_dtype float32.
std::string HfLlamaConfigJson(const Llama2cConfig& config);

// Rows of a llama2.c wq/wk matrix [num_heads * head_dim, cols] reordered as HF expects:
// within each head, HF row (j * head_dim/2 + i) = llama2.c row (2 * i + j), j in {0, 1}.
// `w` holds rows * cols floats; rows must be a multiple of num_heads with an even quotient.
std::vector<float> PermuteQkRowsToHf(const float* w, int64_t rows, int64_t cols,
                                     int64_t num_heads);

struct ImportLlama2cOptions {
  std::string model_path;          // llama2.c model.bin
  std::string tokenizer_path;      // llama2.c tokenizer.bin; empty: no tokenizer files
  std::string output_dir;          // must not exist or be empty; written atomically
  int64_t max_shard_bytes = 0;     // <= 0: a single model.safetensors
};

// Converts; returns the files written (see CheckpointWriter::Finish). NotFound for a missing
// input; InvalidArgument naming the file for a malformed one (e.g. size not matching the
// header); FailedPrecondition for an unusable output directory.
absl::StatusOr<std::vector<WrittenFile>> ImportLlama2c(const ImportLlama2cOptions& options);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_IMPORT_LLAMA2C_IMPORT_H_
