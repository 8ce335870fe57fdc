// Read-only access to Hugging Face checkpoints stored as safetensors: one `model.safetensors`
// or shards listed by `model.safetensors.index.json`. Files are memory-mapped (private,
// copy-on-write) and tensors are zero-copy CPU views that keep their mapping alive.
//
// Every malformed input gives an error naming the file (and tensor): a header length past the
// end of the file, a header that is not JSON, an unknown dtype, offsets outside the data area or
// not matching shape × dtype size, overlapping tensors, an index naming missing shards.
#ifndef GPTQ_WORKER_RUNTIME_MODEL_SAFETENSORS_H_
#define GPTQ_WORKER_RUNTIME_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "absl/status/statusor.h"

namespace gptq::runtime {

// One tensor's entry in a safetensors header.
struct TensorInfo {
  std::string name;
  std::string dtype;            // safetensors spelling: "F32", "F16", "BF16", "I32", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data area
  int file_index = 0;           // which file of the checkpoint holds it
};

// A memory-mapped file; unmapped when the last reference goes.
class MappedFile;

// One safetensors file, parsed and mapped.
class MappedSafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedSafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A zero-copy CPU view of the tensor in its stored dtype (copied only when the stored bytes
  // are not aligned for the dtype). NotFound naming the file if absent.
  absl::StatusOr<torch::Tensor> Get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  uint64_t data_offset_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model directory (single file or sharded with an index).
class CheckpointReader {
 public:
  // Opens `<dir>/model.safetensors.index.json` if present (every shard it names must exist
  // and hold exactly the tensors the index maps to it), else `<dir>/model.safetensors`.
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& model_dir);

  bool Has(const std::string& name) const { return where_.count(name) > 0; }
  std::vector<std::string> Names() const;
  // The file holding `name` (for error messages).
  std::string FileOf(const std::string& name) const;
  const TensorInfo* Info(const std::string& name) const;

  // Zero-copy CPU view in the stored dtype. NotFound naming the checkpoint if absent.
  absl::StatusOr<torch::Tensor> Get(const std::string& name) const;

  // The tensor as `dtype`, checked against `shape`: FailedPrecondition naming the file and
  // tensor on a shape mismatch, InvalidArgument for a non-float stored dtype.
  absl::StatusOr<torch::Tensor> GetFloat(const std::string& name,
                                         const std::vector<int64_t>& shape,
                                         torch::ScalarType dtype) const;

  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<MappedSafetensorsFile>> files_;
  std::map<std::string, int> where_;
};

// The safetensors dtype spelling ↔ Torch scalar types (F64, F32, F16, BF16, I64, I32, I16, I8,
// U8, BOOL). InvalidArgument for others.
absl::StatusOr<torch::ScalarType> ScalarTypeFromSafetensors(const std::string& dtype);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_MODEL_SAFETENSORS_H_
