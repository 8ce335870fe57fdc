// Request validation and URI resolution for gptq-server. Pure logic over the generated
// messages: no gRPC headers, no I/O except filesystem checks of local paths.
#ifndef GPTQ_SERVER_VALIDATION_H_
#define GPTQ_SERVER_VALIDATION_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gptq/v1/quantization.pb.h"

namespace gptq::server {

// Which local directories URIs may point into. An empty list allows any absolute path.
struct ValidationOptions {
  std::vector<std::string> allowed_model_roots;
  std::vector<std::string> allowed_output_roots;
};

// A parsed model/output URI.
struct ResolvedUri {
  enum class Scheme { kLocal, kHuggingFace };
  Scheme scheme = Scheme::kLocal;
  // kLocal: absolute, normalized local path.
  std::string local_path;
  // kHuggingFace: "ORG/NAME" and the revision ("" = default branch).
  std::string hf_repo;
  std::string hf_revision;
};

// Parses `uri` (a local absolute path, file:///abs/path or, if `allow_hf`, hf://ORG/NAME[@REV]).
// Local paths are normalized (".", ".." and symlinks of existing prefixes resolved) and must
// lie inside one of `roots` (if any). `field` names the field in error messages.
absl::StatusOr<ResolvedUri> ResolveUri(const std::string& field, const std::string& uri,
                                       bool allow_hf, const std::vector<std::string>& roots);

// Checks every rule of CreateJobRequest documented in quantization.proto. Errors are
// INVALID_ARGUMENT with a message "<field path>: <rule>".
absl::Status ValidateCreateJobRequest(const gptq::v1::CreateJobRequest& request,
                                      const ValidationOptions& options);

// Checks a label key: 1-63 chars of [a-z0-9_.-].
bool IsValidLabelKey(const std::string& key);

}  // namespace gptq::server

#endif  // GPTQ_SERVER_VALIDATION_H_
