#include "gptq/sha256.h"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "gtest/gtest.h"

namespace gptq {
namespace {

// FIPS 180-4 / NIST CAVS example vectors.
TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmno"
                      "pqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Lengths around the 55/56/64-byte padding boundaries, fed in every split, match one-shot.
TEST(Sha256Test, ChunkedUpdatesMatchOneShot) {
  std::mt19937 rng(7);
  for (size_t length : {0u, 1u, 55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u, 128u, 1000u}) {
    std::string data(length, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    const std::string expected = Sha256Hex(data);
    for (size_t split = 0; split <= length; split += std::max<size_t>(1, length / 7)) {
      Sha256 sha;
      sha.Update(data.substr(0, split));
      sha.Update(data.substr(split));
      EXPECT_EQ(sha.HexDigest(), expected) << "length " << length << " split " << split;
    }
  }
  // The 1,000,000 'a' vector in odd-sized chunks.
  Sha256 sha;
  const std::string chunk(997, 'a');
  size_t fed = 0;
  while (fed + chunk.size() <= 1000000) {
    sha.Update(chunk);
    fed += chunk.size();
  }
  sha.Update(std::string(1000000 - fed, 'a'));
  EXPECT_EQ(sha.HexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Against coreutils' sha256sum on a random 3 MB file (several read buffers).
TEST(Sha256Test, FileMatchesSha256sum) {
  if (std::system("command -v sha256sum > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "sha256sum not installed";
  }
  const std::string path = ::testing::TempDir() + "/sha256_test_random.bin";
  std::mt19937 rng(11);
  std::string data(3 * 1024 * 1024 + 17, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fwrite(data.data(), 1, data.size(), f), data.size());
  std::fclose(f);

  std::FILE* pipe = ::popen(("sha256sum '" + path + "'").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char out[65] = {};
  ASSERT_EQ(std::fread(out, 1, 64, pipe), 64u);
  ::pclose(pipe);
  absl::StatusOr<std::string> ours = Sha256File(path);
  ASSERT_TRUE(ours.ok()) << ours.status();
  EXPECT_EQ(*ours, std::string(out));
  EXPECT_EQ(*ours, Sha256Hex(data));
  std::remove(path.c_str());

  EXPECT_EQ(Sha256File(path).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gptq
