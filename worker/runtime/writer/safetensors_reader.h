// A small, strict reader of one safetensors file (whole file in memory). Plain C++. Used to
// verify what the checkpoint writer produced and to compare checkpoints tensor by tensor; it
// validates the format as strictly as the reference implementation: header length within the
// file, JSON object, known dtypes, shapes matching byte counts, and data_offsets that tile the
// data section contiguously from 0 to its end, in some order.
#ifndef GPTQ_WORKER_RUNTIME_WRITER_SAFETENSORS_READER_H_
#define GPTQ_WORKER_RUNTIME_WRITER_SAFETENSORS_READER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gptq::runtime {

struct SafetensorsEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;
};

struct SafetensorsFile {
  std::string bytes;                       // the whole file
  uint64_t header_size = 0;                // the JSON header's length (after the 8-byte prefix)
  std::string header_json;                 // the raw JSON text, padding included
  std::map<std::string, std::string> metadata;          // "__metadata__"
  std::vector<std::string> names_in_header_order;
  std::map<std::string, SafetensorsEntry> tensors;

  // The tensor's raw bytes (a view into `bytes`). The name must exist.
  absl::string_view Data(const std::string& name) const;
};

// Parses `bytes` (a whole safetensors file). `what` names it in error messages.
absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string bytes, const std::string& what);

// Reads and parses a file. NotFound if absent; InvalidArgument naming the file on bad content.
absl::StatusOr<SafetensorsFile> ReadSafetensorsFile(const std::string& path);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_WRITER_SAFETENSORS_READER_H_
