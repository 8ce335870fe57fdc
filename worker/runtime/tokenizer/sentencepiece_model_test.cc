#include "sentencepiece_model.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace gptq::tokenizer {
namespace {

using ::testing::HasSubstr;
using namespace ::gptq::tokenizer::testing;  // NOLINT

TEST(WireFormatTest, VarintEncoding) {
  std::string out;
  AppendVarint(0, &out);
  AppendVarint(1, &out);
  AppendVarint(300, &out);
  EXPECT_EQ(out, std::string("\x00\x01\xac\x02", 4));
  out.clear();
  AppendVarint(static_cast<uint64_t>(int64_t{-1}), &out);  // int32 -1: ten bytes
  EXPECT_EQ(out, std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10));
}

TEST(WireFormatTest, MessageSetGetAndFieldOrder) {
  WireMessage m;
  m.SetInt(43, -1);
  m.SetString(1, "name");
  m.SetFloat(10, 0.75f);
  m.SetBool(35, true);
  m.SetInt(4, 32000);
  m.SetInt(4, 512);  // replaces
  std::vector<uint32_t> numbers;
  for (const WireField& f : m.fields()) numbers.push_back(f.number);
  EXPECT_THAT(numbers, ::testing::ElementsAre(1, 4, 10, 35, 43));
  auto parsed = WireMessage::Parse(m.Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(*parsed == m);
  EXPECT_EQ(parsed->GetInt(43, 0), -1);
  EXPECT_EQ(parsed->GetInt(4, 0), 512);
  EXPECT_EQ(parsed->GetString(1, ""), "name");
  EXPECT_FLOAT_EQ(parsed->GetFloat(10, 0), 0.75f);
  EXPECT_TRUE(parsed->GetBool(35, false));
  EXPECT_EQ(parsed->GetInt(99, 7), 7);  // absent: default
  EXPECT_FALSE(parsed->Has(99));
}

TEST(WireFormatTest, MalformedInputErrorsNameTheProblem) {
  auto a = WireMessage::Parse(std::string("\x08\x80", 2));
  ASSERT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("truncated varint at offset 2"));
  auto b = WireMessage::Parse(std::string("\x0a\x05" "ab", 4));
  ASSERT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("length 5 at offset 1 runs past the end"));
  auto c = WireMessage::Parse(std::string("\x0b", 1));  // wire type 3 (group)
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("unsupported wire type 3"));
  auto d = ModelProto::Parse(std::string("\x0a\x03\x15\x00\x00", 5), "m.model");
  ASSERT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("m.model: not a SentencePiece model: pieces[0]"));
  auto e = ModelProto::Parse(std::string("\x10\x01", 2), "m.model");  // trainer_spec as varint
  ASSERT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("trainer_spec (field 2) has wire type varint"));
}

TEST(SentencePieceModelTest, RealModelRoundTripsByteForByte) {
  const std::string path = DataRoot() + "/models/stories15M-hf/tokenizer.model";
  if (!FileExists(path)) GTEST_SKIP() << "test data absent: " << path;
  const std::string bytes = ReadAll(path);
  auto m = ModelProto::Parse(bytes, path);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->pieces.size(), 32000u);
  EXPECT_EQ(m->pieces[0].piece, "<unk>");
  EXPECT_EQ(m->pieces[0].type, PieceType::kUnknown);
  EXPECT_EQ(m->pieces[1].type, PieceType::kControl);
  EXPECT_EQ(m->pieces[3].piece, "<0x00>");
  EXPECT_EQ(m->pieces[3].type, PieceType::kByte);
  EXPECT_EQ(m->pieces[260].piece, "\xe2\x96\x81t");
  EXPECT_FLOAT_EQ(m->pieces[260].score, -1.0f);
  EXPECT_FALSE(m->pieces[260].has_type);
  ASSERT_TRUE(m->trainer_spec.has_value());
  ASSERT_TRUE(m->normalizer_spec.has_value());
  EXPECT_FALSE(m->denormalizer_spec.has_value());
  const WireMessage& ts = *m->trainer_spec;
  EXPECT_EQ(ts.GetInt(trainer_field::kModelType, 0), trainer_field::kModelTypeBpe);
  EXPECT_EQ(ts.GetInt(trainer_field::kVocabSize, 0), 32000);
  EXPECT_TRUE(ts.GetBool(trainer_field::kByteFallback, false));
  EXPECT_EQ(ts.GetInt(trainer_field::kPadId, 0), -1);
  EXPECT_EQ(m->normalizer_spec->GetString(normalizer_field::kName, ""), "identity");
  EXPECT_TRUE(m->normalizer_spec->GetBool(normalizer_field::kAddDummyPrefix, false));
  EXPECT_FALSE(m->normalizer_spec->GetBool(normalizer_field::kRemoveExtraWhitespaces, true));
  EXPECT_TRUE(m->Serialize() == bytes) << "serialization does not round-trip";
}

}  // namespace
}  // namespace gptq::tokenizer
