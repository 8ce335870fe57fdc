// SHA-256 of byte strings and files (OpenSSL's libcrypto underneath; on the 2-core dev machine
// `openssl dgst` hashed 256 MB in 0.29 s, the writer's former portable C ran at 172 MB/s). Plain C++: no Torch, no protobuf. The
// checkpoint writer reports the files it writes with it; the hf:// downloader checks downloads.
#ifndef GPTQ_COMMON_SHA256_H_
#define GPTQ_COMMON_SHA256_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gptq {

// Incremental hasher. Not thread-safe.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(absl::string_view bytes) { Update(bytes.data(), bytes.size()); }
  // Lower-case hex digest (64 characters); the hasher must not be used afterwards.
  std::string HexDigest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Lower-case hex SHA-256 of `bytes`.
std::string Sha256Hex(absl::string_view bytes);

// Lower-case hex SHA-256 of the file's content. NotFound / Internal name the file.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace gptq

#endif  // GPTQ_COMMON_SHA256_H_
