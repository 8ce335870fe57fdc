// Streaming writer of Hugging Face checkpoints in the safetensors format (GPTQ-quantized or
// plain). Plain C++: no Torch, no protobuf, so the quantization pipeline and the llama2.c
// import can both use it and it compiles fast.
//
// Usage:
//   CheckpointWriterOptions options;
//   options.output_dir = "/models/llama-gptq";     // must not exist, or be an empty directory
//   options.max_shard_bytes = int64_t{4} << 30;    // 0 or negative: one shard
//   options.tokenizer_source_dir = model_dir;      // tokenizer files copied from here
//   options.quantization = QuantizationConfig{...};  // absent: plain (unquantized) checkpoint
//   GPTQ_ASSIGN_OR_RETURN(auto writer, CheckpointWriter::Create(options));
//   for (...) GPTQ_RETURN_IF_ERROR(writer->AddTensor(view));   // any order; data is copied
//   GPTQ_ASSIGN_OR_RETURN(std::vector<WrittenFile> files, writer->Finish(source_config_json));
//
// Everything is written into a temporary directory `<output_dir>.tmp-XXXXXX` next to the target
// and renamed into place by Finish(): a failed, aborted or destroyed-before-Finish writer leaves
// nothing at `output_dir` and removes its temporary directory.
//
// Files produced:
//   model.safetensors                       (one shard), or
//   model-0000X-of-0000Y.safetensors + model.safetensors.index.json
//                                           ({"metadata":{"total_size":N},"weight_map":{...}})
//   config.json             source config + "torch_dtype" (+ "quantization_config" if quantized)
//   quantize_config.json    only if quantized: the same keys as quantization_config
//   tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
//   added_tokens.json, vocab.json, merges.txt, chat_template.jinja,
//   generation_config.json  copied from tokenizer_source_dir when present there
//   + any file given to AddFile().
//
// Safetensors layout: 8-byte little-endian header length, JSON header (`__metadata__`
// {"format":"pt"} first, then tensors in the order they were added, each with dtype, shape and
// data_offsets) padded with spaces to a multiple of 8, then the tensors' bytes contiguously in
// header order. A shard is closed when adding the next tensor would make its data exceed
// max_shard_bytes (a tensor larger than the limit gets a shard of its own). Tensor bytes go
// straight to a spool file on disk; a closed shard is written out (header + spooled bytes) at
// once, so memory use stays O(one header), whatever the model size.
//
// Thread-safety: none; use one writer from one thread.
#ifndef GPTQ_WORKER_RUNTIME_WRITER_CHECKPOINT_WRITER_H_
#define GPTQ_WORKER_RUNTIME_WRITER_CHECKPOINT_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gptq::runtime {

// A non-owning view of one tensor's bytes, row-major (C-contiguous), little-endian.
struct TensorView {
  std::string name;              // e.g. "model.layers.0.self_attn.q_proj.qweight"
  std::string dtype;             // "F16", "F32", "BF16", "I32" (safetensors spelling)
  std::vector<int64_t> shape;    // [] for a scalar
  const void* data = nullptr;    // num_bytes bytes; may be null only when num_bytes == 0
  size_t num_bytes = 0;          // must equal prod(shape) * element size of dtype
};

// An owning tensor (for callers that build data on the fly).
struct OwnedTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  TensorView View() const { return {name, dtype, shape, bytes.data(), bytes.size()}; }
};

// Bytes per element of a safetensors dtype; 0 for an unknown dtype.
size_t DtypeElementSize(const std::string& dtype);

// The GPTQ settings written to config.json["quantization_config"] and quantize_config.json
// (see /work/shared/anchors/gptq-format.md). Validated by Create(): bits in {2,3,4,8},
// group_size > 0 or -1, 0 < damp_percent < 1, checkpoint_format "gptq" or "gptq_v2", and
// sym=false requires "gptq_v2" (v1 cannot store an asymmetric zero of 0).
struct QuantizationConfig {
  int bits = 4;
  int group_size = 128;
  bool desc_act = false;
  bool sym = true;
  double damp_percent = 0.1;
  bool true_sequential = true;
  bool static_groups = false;
  std::string checkpoint_format = "gptq";  // also written as "format"
  double damp_auto_increment = 0.01;       // meta
  bool act_group_aware = true;             // meta
};

struct CheckpointWriterOptions {
  std::string output_dir;                  // must not exist, or be an empty directory
  int64_t max_shard_bytes = 0;             // tensor bytes per shard; <= 0: a single shard
  std::string tokenizer_source_dir;        // optional; tokenizer files copied from here
  std::optional<QuantizationConfig> quantization;  // absent: plain checkpoint
  std::string torch_dtype = "float16";     // written to config.json["torch_dtype"]
  std::string quantizer_name = "gptq-service:0.1.0";  // meta.quantizer[0]
};

// One file of the finished checkpoint (name relative to output_dir).
struct WrittenFile {
  std::string name;
  uint64_t size_bytes = 0;
  std::string sha256_hex;                  // lowercase hex of the file's SHA-256
};

class CheckpointWriter {
 public:
  // Validates the options and creates the temporary directory. Errors: InvalidArgument (bad
  // options), FailedPrecondition (output_dir exists and is not an empty directory, or its
  // parent does not exist), Internal (I/O).
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(
      CheckpointWriterOptions options);

  // Aborts (removes the temporary directory) unless Finish() succeeded.
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Copies the tensor's bytes into the current shard (closing it first if full). Errors:
  // InvalidArgument (empty/duplicate/reserved name, unknown dtype, negative dimension, byte
  // count not matching shape; in a quantized checkpoint also: *.qweight/*.qzeros/*.g_idx not
  // I32, *.scales not F16, a g_idx value outside [0, G) or, without act-order or with
  // static_groups, not k / group_size), FailedPrecondition (after Finish/Abort/an earlier I/O
  // error), Internal (I/O).
  absl::Status AddTensor(const TensorView& tensor);

  // Adds a non-tensor file (e.g. tokenizer.model built from llama2.c's tokenizer.bin). Takes
  // precedence over a file of the same name in tokenizer_source_dir. `name` is a plain file
  // name (no '/'), not one the writer produces itself (model*.safetensors, config.json, ...).
  absl::Status AddFile(const std::string& name, const std::string& contents);

  // Writes the last shard, the index (if sharded), config.json (= `source_config_json`, a JSON
  // object, plus torch_dtype and quantization_config), quantize_config.json, the tokenizer
  // files, then renames the temporary directory to output_dir. Returns every file of the
  // checkpoint with its size and SHA-256, sorted by name. On error the temporary directory is
  // removed and nothing appears at output_dir. A quantized checkpoint is validated first: every
  // module `<prefix>` with one of .qweight/.qzeros/.scales/.g_idx must have all four, with
  // qweight [K*b/32, N], qzeros [G, N*b/32], scales [G, N], g_idx [K], bias [N] if present
  // (G = ceil(K / group_size), 1 for group_size -1), and there must be at least one such
  // module (InvalidArgument / FailedPrecondition naming the module). If the source config has
  // a "dtype" key (transformers >= 4.56), it is set to torch_dtype as well.
  absl::StatusOr<std::vector<WrittenFile>> Finish(const std::string& source_config_json);

  // Removes the temporary directory; later calls fail with FailedPrecondition. Idempotent.
  void Abort();

  // The temporary directory (for tests and logs).
  const std::string& temp_dir() const;

 private:
  struct Impl;
  explicit CheckpointWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_WRITER_CHECKPOINT_WRITER_H_
