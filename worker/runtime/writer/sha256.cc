#include "worker/runtime/writer/sha256.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gptq::runtime {
namespace {

constexpr uint32_t kRoundConstants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

inline uint32_t RotateRight(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

// Message schedule word r (0..63) over a 16-word ring: W[r] for r >= 16 replaces W[r - 16].
inline uint32_t Schedule(uint32_t* w, int r) {
  if (r < 16) return w[r];
  const uint32_t w2 = w[(r - 2) & 15], w15 = w[(r - 15) & 15];
  w[r & 15] += (RotateRight(w2, 17) ^ RotateRight(w2, 19) ^ (w2 >> 10)) + w[(r - 7) & 15] +
               (RotateRight(w15, 7) ^ RotateRight(w15, 18) ^ (w15 >> 3));
  return w[r & 15];
}

}  // namespace

Sha256::Sha256()
    : state_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
             0x5be0cd19} {}

void Sha256::Compress(const uint8_t* block) {
  // FIPS 180-4 section 6.2.2. The message schedule is kept as a 16-word ring and the eight
  // working variables rotate by renaming (the ROUND macro's argument order) instead of by
  // copying, which roughly doubles the speed of the textbook loop.
  uint32_t w[16];
  for (int i = 0; i < 16; ++i) {
    w[i] = (uint32_t{block[4 * i]} << 24) | (uint32_t{block[4 * i + 1]} << 16) |
           (uint32_t{block[4 * i + 2]} << 8) | uint32_t{block[4 * i + 3]};
  }
  uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
  uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
#define GPTQ_SHA256_ROUND(a, b, c, d, e, f, g, h, i)                                       \
  do {                                                                                     \
    const int r = (i);                                                                     \
    const uint32_t t1 = h + (RotateRight(e, 6) ^ RotateRight(e, 11) ^ RotateRight(e, 25)) + \
                        ((e & f) ^ (~e & g)) + kRoundConstants[r] + Schedule(w, r);          \
    const uint32_t t2 = (RotateRight(a, 2) ^ RotateRight(a, 13) ^ RotateRight(a, 22)) +    \
                        ((a & b) ^ (a & c) ^ (b & c));                                     \
    d += t1;                                                                               \
    h = t1 + t2;                                                                           \
  } while (false)
  for (int i = 0; i < 64; i += 8) {
    GPTQ_SHA256_ROUND(a, b, c, d, e, f, g, h, i + 0);
    GPTQ_SHA256_ROUND(h, a, b, c, d, e, f, g, i + 1);
    GPTQ_SHA256_ROUND(g, h, a, b, c, d, e, f, i + 2);
    GPTQ_SHA256_ROUND(f, g, h, a, b, c, d, e, i + 3);
    GPTQ_SHA256_ROUND(e, f, g, h, a, b, c, d, i + 4);
    GPTQ_SHA256_ROUND(d, e, f, g, h, a, b, c, i + 5);
    GPTQ_SHA256_ROUND(c, d, e, f, g, h, a, b, i + 6);
    GPTQ_SHA256_ROUND(b, c, d, e, f, g, h, a, i + 7);
  }
#undef GPTQ_SHA256_ROUND
  state_[0] += a;
  state_[1] += b;
  state_[2] += c;
  state_[3] += d;
  state_[4] += e;
  state_[5] += f;
  state_[6] += g;
  state_[7] += h;
}

void Sha256::Update(const void* data, size_t size) {
  const uint8_t* bytes = static_cast<const uint8_t*>(data);
  total_bytes_ += size;
  if (buffer_size_ > 0) {
    const size_t take = std::min(size, buffer_.size() - buffer_size_);
    std::memcpy(buffer_.data() + buffer_size_, bytes, take);
    buffer_size_ += take;
    bytes += take;
    size -= take;
    if (buffer_size_ < buffer_.size()) return;
    Compress(buffer_.data());
    buffer_size_ = 0;
  }
  while (size >= 64) {
    Compress(bytes);
    bytes += 64;
    size -= 64;
  }
  std::memcpy(buffer_.data(), bytes, size);
  buffer_size_ = size;
}

std::array<uint8_t, 32> Sha256::Digest() {
  // Padding: 0x80, zeros up to 56 mod 64, then the message length in bits, big-endian.
  const uint64_t total_bits = total_bytes_ * 8;
  const uint8_t pad_start = 0x80;
  Update(&pad_start, 1);
  const uint8_t zero = 0;
  while (buffer_size_ != 56) Update(&zero, 1);
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(total_bits >> (56 - 8 * i));
  Update(length, 8);
  std::array<uint8_t, 32> digest;
  for (int i = 0; i < 8; ++i) {
    digest[4 * i] = static_cast<uint8_t>(state_[i] >> 24);
    digest[4 * i + 1] = static_cast<uint8_t>(state_[i] >> 16);
    digest[4 * i + 2] = static_cast<uint8_t>(state_[i] >> 8);
    digest[4 * i + 3] = static_cast<uint8_t>(state_[i]);
  }
  return digest;
}

std::string Sha256::HexDigest() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(64);
  for (uint8_t byte : Digest()) {
    hex.push_back(kHex[byte >> 4]);
    hex.push_back(kHex[byte & 15]);
  }
  return hex;
}

std::string Sha256Hex(absl::string_view data) {
  Sha256 sha;
  sha.Update(data);
  return sha.HexDigest();
}

absl::StatusOr<std::string> Sha256FileHex(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    const int err = errno;
    const std::string message = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
  }
  Sha256 sha;
  std::vector<char> buffer(1 << 20);
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), file)) > 0) sha.Update(buffer.data(), n);
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) return absl::InternalError(absl::StrCat("read error in ", path));
  return sha.HexDigest();
}

}  // namespace gptq::runtime
