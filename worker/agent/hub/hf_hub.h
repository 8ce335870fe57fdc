// Downloads Hugging Face model repositories (hf://ORG/NAME[@REVISION]) from an HF-hub-compatible
// HTTP endpoint into a local cache. Plain C++ (libcurl); no gRPC, no Torch.
//
// Files are fetched from `$ENDPOINT/ORG/NAME/resolve/REVISION/FILE` (redirects followed):
// config.json (required), then model.safetensors, or model.safetensors.index.json and every
// shard it names, then the tokenizer / generation files that exist (404 is fine for those).
// Downloads go to `FILE.part` first and resume with an HTTP Range request when a `.part` is
// left over; a file is renamed into place only once complete and, when the server sends a
// SHA-256 (`X-Linked-ETag`, else `ETag`, when it is 64 hex digits), verified. Every complete
// snapshot gets a manifest `.gptq-hub-manifest.json` (path, size, sha256 of each file), written
// last: a directory with a manifest is a cache hit and is not fetched again.
//
// Cache layout: CACHE_DIR/ORG/NAME/REVISION/ (a revision containing '/' is stored with '--').
// A branch revision such as "main" is cached like a commit: delete the directory to refresh it.
#ifndef GPTQ_WORKER_AGENT_HUB_HF_HUB_H_
#define GPTQ_WORKER_AGENT_HUB_HF_HUB_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gptq::hub {

// A parsed hf:// URI.
struct HfModelRef {
  std::string org;
  std::string name;
  std::string revision = "main";
  std::string ToString() const;  // "hf://org/name@revision"
};

// Parses `hf://ORG/NAME[@REVISION]`. InvalidArgument names the rule broken.
absl::StatusOr<HfModelRef> ParseHfUri(absl::string_view uri);

struct HubOptions {
  // Base URL, e.g. "https://huggingface.co". Empty: $HF_ENDPOINT, else https://huggingface.co.
  std::string endpoint;
  // Cache root. Empty: $HOME/.cache/gptq-service/hub.
  std::string cache_dir;
  // Bearer token. Empty: $HF_TOKEN (none if unset).
  std::string token;
  // Attempts per file for transient failures (network errors, 5xx); each attempt resumes.
  int max_attempts = 3;
  long connect_timeout_seconds = 30;
  // A transfer slower than 1 byte/s for this long is aborted (and retried).
  long stall_timeout_seconds = 60;
};

struct FetchedFile {
  std::string path;  // relative to the snapshot directory
  int64_t size_bytes = 0;
  std::string sha256;
};

struct Snapshot {
  std::string dir;  // absolute local directory holding the files
  std::vector<FetchedFile> files;
  bool from_cache = false;
};

// Returns true when the caller wants the download to stop (it then fails with Cancelled).
using CancelFn = std::function<bool()>;

class HfHub {
 public:
  explicit HfHub(HubOptions options);

  const std::string& endpoint() const { return endpoint_; }
  const std::string& cache_dir() const { return cache_dir_; }

  // Fetches the model's files (or finds a complete snapshot in the cache). Errors: NotFound
  // when a required file is absent (404; the message names the file and URL), DataLoss on a
  // checksum mismatch (names the file), PermissionDenied for 401/403, Unavailable for network
  // failures, Cancelled when `cancelled` fired.
  absl::StatusOr<Snapshot> FetchModel(const HfModelRef& ref, const CancelFn& cancelled = {});

  // Fetches one file into `dir/file` (resuming `dir/file.part`). NotFound on 404.
  absl::StatusOr<FetchedFile> FetchFile(const HfModelRef& ref, const std::string& file,
                                        const std::string& dir, const CancelFn& cancelled = {});

  // The snapshot directory for `ref` under the cache.
  std::string SnapshotDir(const HfModelRef& ref) const;

  // The URL of `file` in `ref`.
  std::string FileUrl(const HfModelRef& ref, const std::string& file) const;

 private:
  HubOptions options_;
  std::string endpoint_;
  std::string cache_dir_;
  std::string token_;
};

}  // namespace gptq::hub

#endif  // GPTQ_WORKER_AGENT_HUB_HF_HUB_H_
