// SHA-256 (FIPS 180-4), incremental. Plain C++, no dependencies; used to report checksums of
// the files the checkpoint writer produces.
#ifndef GPTQ_WORKER_RUNTIME_WRITER_SHA256_H_
#define GPTQ_WORKER_RUNTIME_WRITER_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gptq::runtime {

class Sha256 {
 public:
  Sha256();
  // Feeds `size` bytes; may be called any number of times before Digest().
  void Update(const void* data, size_t size);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }
  // Finishes and returns the 32-byte digest. The object must not be updated afterwards.
  std::array<uint8_t, 32> Digest();
  // Finishes and returns the digest as 64 lowercase hex characters.
  std::string HexDigest();

 private:
  void Compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffer_size_ = 0;
  uint64_t total_bytes_ = 0;
};

// SHA-256 of a byte string, as lowercase hex.
std::string Sha256Hex(absl::string_view data);

// SHA-256 of a file's contents, as lowercase hex. NotFound / Internal on I/O errors.
absl::StatusOr<std::string> Sha256FileHex(const std::string& path);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_WRITER_SHA256_H_
