// Tests of the GPTQ checkpoint packing (pack.h).
#include "pack.h"

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "gptq.h"

namespace gptq {
namespace {

int32_t Word(uint32_t bits) { return static_cast<int32_t>(bits); }

// A QuantizedWeight with random codes and zeros in [1, 2^b - 1] (storable by v1 and v2).
QuantizedWeight RandomQuantized(int64_t n, int64_t k, int bits, int group_size, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t g = (k + group_size - 1) / group_size;
  QuantizedWeight q;
  q.bits = bits;
  q.group_size = group_size;
  q.codes = at::randint(0, 1 << bits, {n, k}, gen, at::kInt);
  q.zeros = at::randint(1, 1 << bits, {g, n}, gen, at::kInt);
  q.scales = at::rand({g, n}, gen, at::kFloat) * 0.01 + 0.001;
  q.g_idx = at::div(at::arange(k), group_size, "floor").to(at::kInt);
  const at::Tensor gi = q.g_idx.to(at::kLong);
  q.dequantized =
      q.scales.index_select(0, gi).t() * (q.codes - q.zeros.index_select(0, gi).t()).to(at::kFloat);
  return q;
}

// act-order g_idx (a permutation of the groups' members) and a partial last group: the codes
// shortcut still equals dequantizing the packed tensors, bit for bit.
TEST(DequantizeCodesTest, MatchesThePackedPathWithActOrderGroups) {
  const int64_t n = 64, k = 160;
  QuantizedWeight q = RandomQuantized(n, k, 4, 48, 7);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  q.g_idx = q.g_idx.index_select(0, at::randperm(k, gen, at::kLong)).contiguous();
  for (CheckpointFormat f : {CheckpointFormat::kGptqV1, CheckpointFormat::kGptqV2}) {
    absl::StatusOr<PackedWeight> p = Pack(q, f);
    ASSERT_TRUE(p.ok()) << p.status();
    absl::StatusOr<at::Tensor> deq = Dequantize(*p, n, k);
    absl::StatusOr<at::Tensor> from_codes = DequantizeCodes(q);
    ASSERT_TRUE(deq.ok() && from_codes.ok());
    EXPECT_TRUE(at::equal(*from_codes, *deq));
  }
  QuantizedWeight bad = q;
  bad.g_idx = q.g_idx.narrow(0, 0, k - 1);
  const absl::Status s = DequantizeCodes(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("g_idx"), std::string::npos) << s;
}

// The GPU packer (tensor arithmetic) against the scalar loop, on the CPU: every bit width,
// extreme values (all ones sets the sign bit of every word), random values.
TEST(PackRowsTest, TensorArithmeticMatchesTheLoop) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (int bits : {2, 3, 4, 8}) {
    const int64_t rows = 32 * 5, cols = 7;
    for (const at::Tensor& v : {at::full({rows, cols}, (1 << bits) - 1, at::kInt),
                                at::zeros({rows, cols}, at::kInt),
                                at::randint(0, 1 << bits, {rows, cols}, gen, at::kInt)}) {
      const at::Tensor loop = internal::PackRowsLoop(v, bits);
      const at::Tensor tensor = internal::PackRowsTensor(v, bits);
      ASSERT_EQ(tensor.scalar_type(), at::kInt);
      ASSERT_EQ(tensor.sizes(), loop.sizes()) << bits;
      EXPECT_TRUE(at::equal(tensor, loop)) << bits << " bits";
    }
  }
  // Known word: eight 4-bit sevens.
  EXPECT_EQ(internal::PackRowsTensor(at::full({8, 1}, 7, at::kInt), 4).item<int32_t>(), Word(0x77777777u));
}

class PackRoundTripTest : public ::testing::TestWithParam<std::tuple<int, CheckpointFormat>> {};

TEST_P(PackRoundTripTest, UnpackAndDequantizeAreExact) {
  const auto [bits, format] = GetParam();
  const int64_t n = 96, k = 256;
  QuantizedWeight q = RandomQuantized(n, k, bits, 64, 100 + bits);
  absl::StatusOr<PackedWeight> p = Pack(q, format);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->qweight.sizes(), at::IntArrayRef({k * bits / 32, n}));
  EXPECT_EQ(p->qzeros.sizes(), at::IntArrayRef({4, n * bits / 32}));
  EXPECT_EQ(p->qweight.scalar_type(), at::kInt);
  EXPECT_EQ(p->qzeros.scalar_type(), at::kInt);
  EXPECT_EQ(p->scales.scalar_type(), at::kHalf);
  EXPECT_EQ(p->g_idx.scalar_type(), at::kInt);
  EXPECT_EQ(p->format, format);
  absl::StatusOr<UnpackedWeight> u = Unpack(*p, n, k);
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_TRUE(at::equal(u->codes, q.codes));
  EXPECT_TRUE(at::equal(u->zeros, q.zeros));
  absl::StatusOr<at::Tensor> deq = Dequantize(*p, n, k);
  ASSERT_TRUE(deq.ok()) << deq.status();
  EXPECT_EQ(deq->scalar_type(), at::kHalf);
  const at::Tensor gi = q.g_idx.to(at::kLong);
  const at::Tensor expected = (q.scales.to(at::kHalf).to(at::kFloat).index_select(0, gi).t() *
                               (q.codes - q.zeros.index_select(0, gi).t()).to(at::kFloat))
                                  .to(at::kHalf);
  EXPECT_TRUE(at::equal(*deq, expected));
  // The runtime's shortcut from the codes gives the very same weight.
  absl::StatusOr<at::Tensor> from_codes = DequantizeCodes(q);
  ASSERT_TRUE(from_codes.ok()) << from_codes.status();
  EXPECT_TRUE(at::equal(*from_codes, *deq));

  // The other format and back.
  const CheckpointFormat other =
      format == CheckpointFormat::kGptqV1 ? CheckpointFormat::kGptqV2 : CheckpointFormat::kGptqV1;
  absl::StatusOr<PackedWeight> converted = ConvertFormat(*p, other, n);
  ASSERT_TRUE(converted.ok()) << converted.status();
  EXPECT_EQ(converted->format, other);
  EXPECT_TRUE(at::equal(converted->qweight, p->qweight));
  absl::StatusOr<UnpackedWeight> u2 = Unpack(*converted, n, k);
  ASSERT_TRUE(u2.ok());
  EXPECT_TRUE(at::equal(u2->zeros, q.zeros));
  absl::StatusOr<PackedWeight> back = ConvertFormat(*converted, format, n);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(at::equal(back->qzeros, p->qzeros));
  // Packing straight into the other format gives the converted words.
  absl::StatusOr<PackedWeight> direct = Pack(q, other);
  ASSERT_TRUE(direct.ok());
  EXPECT_TRUE(at::equal(direct->qzeros, converted->qzeros));
}

INSTANTIATE_TEST_SUITE_P(AllBits, PackRoundTripTest,
                         ::testing::Combine(::testing::Values(2, 3, 4, 8),
                                            ::testing::Values(CheckpointFormat::kGptqV1,
                                                              CheckpointFormat::kGptqV2)),
                         [](const auto& info) {
                           return "b" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) == CheckpointFormat::kGptqV1 ? "_v1"
                                                                                        : "_v2");
                         });

TEST(PackTest, SymmetricFourBitZerosHaveTheKnownWords) {
  QuantizedWeight q = RandomQuantized(64, 128, 4, 128, 1);
  q.zeros.fill_(8);
  absl::StatusOr<PackedWeight> v1 = Pack(q, CheckpointFormat::kGptqV1);
  absl::StatusOr<PackedWeight> v2 = Pack(q, CheckpointFormat::kGptqV2);
  ASSERT_TRUE(v1.ok() && v2.ok());
  EXPECT_TRUE(at::equal(v1->qzeros, at::full({1, 8}, Word(0x77777777u), at::kInt)));
  EXPECT_TRUE(at::equal(v2->qzeros, at::full({1, 8}, Word(0x88888888u), at::kInt)));
}

TEST(PackTest, FourBitWordHoldsRowsLowestBitsFirst) {
  QuantizedWeight q = RandomQuantized(8, 8, 4, 8, 2);
  q.codes.zero_();
  for (int j = 0; j < 8; ++j) q.codes[0][j] = j + 1;  // column n = 0, rows 0..7
  q.zeros.fill_(8);
  absl::StatusOr<PackedWeight> p = Pack(q, CheckpointFormat::kGptqV2);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->qweight[0][0].item<int32_t>(), Word(0x87654321u));
  EXPECT_EQ(p->qweight[0][1].item<int32_t>(), 0);
}

TEST(PackTest, VersionTwoAddsTheKnownConstantToEachWord) {
  // v1 → v2 adds 0x01010101 (8-bit) and 0x55555555 (2-bit) to each qzeros word.
  for (int bits : {2, 4, 8}) {
    QuantizedWeight q = RandomQuantized(64, 64, bits, 32, 3);
    q.zeros = at::randint(1, 1 << bits, q.zeros.sizes(), at::kInt);  // no carry out of a field
    absl::StatusOr<PackedWeight> v1 = Pack(q, CheckpointFormat::kGptqV1);
    absl::StatusOr<PackedWeight> v2 = Pack(q, CheckpointFormat::kGptqV2);
    ASSERT_TRUE(v1.ok() && v2.ok());
    const int64_t add = bits == 2   ? int64_t{0x55555555}
                        : bits == 4 ? int64_t{0x11111111}
                                    : int64_t{0x01010101};
    const int64_t mask = int64_t{0xFFFFFFFF};
    const at::Tensor sum = v1->qzeros.to(at::kLong).bitwise_and(mask) + add;
    const at::Tensor v2_words = v2->qzeros.to(at::kLong).bitwise_and(mask);
    EXPECT_TRUE(at::equal(sum, v2_words)) << bits << " bits";
  }
}

// 3-bit, worked by hand. Values of one column (rows 0..31): v0=7, v9=1, v10=5 (0b101),
// v11=1, v20=2, v21=7 (0b111), v22=3, v31=4, others 0.
//   word0: v0 at bits 0-2 → 0x7; v9 at bit 27 → 0x08000000; low 2 bits of v10 (0b01) at 30-31
//          → 0x40000000.                                        word0 = 0x48000007
//   word1: bit 2 of v10 (1) at bit 0 → 0x1; v11 at bit 3·0+1 = 1 → 0x2; v20 at 3·9+1 = 28
//          → 0x20000000; low bit of v21 (1) at bit 31 → 0x80000000. word1 = 0xA0000003
//   word2: bits 1-2 of v21 (0b11) at bits 0-1 → 0x3; v22 at bit 2 → 0xC; v31 at 3·9+2 = 29
//          → 0x80000000.                                        word2 = 0x8000000F
TEST(PackTest, ThreeBitHandWorkedExampleWithStraddlingValues) {
  const std::vector<std::pair<int, int>> values = {{0, 7},  {9, 1},  {10, 5}, {11, 1},
                                                   {20, 2}, {21, 7}, {22, 3}, {31, 4}};
  QuantizedWeight q = RandomQuantized(32, 32, 3, 32, 4);
  q.codes.zero_();
  q.zeros.fill_(1);
  for (const auto& [row, value] : values) {
    q.codes[0][row] = value;      // qweight: column n = 0, rows along K
    q.zeros[0][row] = value + 1;  // qzeros (v1 stores zero − 1 = value): along N
  }
  const std::vector<int32_t> expected = {Word(0x48000007u), Word(0xA0000003u), Word(0x8000000Fu)};
  absl::StatusOr<PackedWeight> p = Pack(q, CheckpointFormat::kGptqV1);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->qweight.sizes(), at::IntArrayRef({3, 32}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(p->qweight[i][0].item<int32_t>(), expected[i]) << "qweight word " << i;
    EXPECT_EQ(p->qweight[i][1].item<int32_t>(), 0);
    EXPECT_EQ(p->qzeros[0][i].item<int32_t>(), expected[i]) << "qzeros word " << i;
  }
  absl::StatusOr<UnpackedWeight> u = Unpack(*p, 32, 32);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->codes[0][10].item<int>(), 5);
  EXPECT_EQ(u->codes[0][21].item<int>(), 7);
  EXPECT_TRUE(at::equal(u->zeros, q.zeros));
}

TEST(PackTest, CheckPackableExplainsUnpackableShapes) {
  EXPECT_TRUE(CheckPackable(288, 768, 4).ok());
  EXPECT_TRUE(CheckPackable(32, 32, 3).ok());
  absl::Status s = CheckPackable(64, 172, 4);  // stories260K's ffn: 172 is not a multiple of 8
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("in_features=172"), std::string::npos) << s;
  EXPECT_NE(s.message().find("multiple of 8"), std::string::npos) << s;
  EXPECT_NE(s.message().find("never padded"), std::string::npos) << s;
  s = CheckPackable(48, 64, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("out_features=48"), std::string::npos) << s;
  EXPECT_NE(s.message().find("multiple of 32"), std::string::npos) << s;
  EXPECT_EQ(CheckPackable(64, 24, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(CheckPackable(64, 4, 8).ok());
  EXPECT_EQ(CheckPackable(64, 64, 5).code(), absl::StatusCode::kInvalidArgument);
  // Pack refuses too (no silent padding).
  QuantizedWeight q = RandomQuantized(64, 172, 4, 86, 5);
  EXPECT_EQ(Pack(q, CheckpointFormat::kGptqV2).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(PackTest, VersionOneNeedsZerosOfAtLeastOne) {
  QuantizedWeight q = RandomQuantized(32, 32, 4, 32, 6);
  q.zeros[0][5] = 0;  // an asymmetric zero of 0
  absl::Status s = Pack(q, CheckpointFormat::kGptqV1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("zero - 1"), std::string::npos) << s;
  absl::StatusOr<PackedWeight> v2 = Pack(q, CheckpointFormat::kGptqV2);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(ConvertFormat(*v2, CheckpointFormat::kGptqV1, 32).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(PackTest, RejectsMalformedInputs) {
  QuantizedWeight q = RandomQuantized(32, 64, 4, 32, 7);
  QuantizedWeight bad = q;
  bad.codes = q.codes.to(at::kLong);
  EXPECT_EQ(Pack(bad, CheckpointFormat::kGptqV1).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = q;
  bad.codes = q.codes.clone();
  bad.codes[0][0] = 16;
  absl::Status s = Pack(bad, CheckpointFormat::kGptqV1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("codes must lie in [0, 15]"), std::string::npos) << s;
  bad = q;
  bad.g_idx = q.g_idx.clone();
  bad.g_idx[3] = 2;
  EXPECT_FALSE(Pack(bad, CheckpointFormat::kGptqV1).ok());
  bad = q;
  bad.zeros = q.zeros.narrow(0, 0, 1);
  s = Pack(bad, CheckpointFormat::kGptqV1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("zeros: expected shape [2, 32]"), std::string::npos) << s;
  absl::StatusOr<PackedWeight> p = Pack(q, CheckpointFormat::kGptqV1);
  ASSERT_TRUE(p.ok());
  s = Unpack(*p, 32, 128).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("qweight: expected shape [16, 32]"), std::string::npos) << s;
}

}  // namespace
}  // namespace gptq
