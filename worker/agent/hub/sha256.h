// SHA-256 of files and byte strings (OpenSSL's libcrypto underneath). Plain C++, no Torch, no
// protobuf.
#ifndef GPTQ_WORKER_AGENT_HUB_SHA256_H_
#define GPTQ_WORKER_AGENT_HUB_SHA256_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gptq::hub {

// Incremental hasher. Not thread-safe.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view bytes);
  // Lower-case hex digest; the hasher must not be used afterwards.
  std::string HexDigest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Lower-case hex SHA-256 of `bytes`.
std::string Sha256Hex(absl::string_view bytes);

// Lower-case hex SHA-256 of the file's content. NotFound / Internal name the file.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace gptq::hub

#endif  // GPTQ_WORKER_AGENT_HUB_SHA256_H_
