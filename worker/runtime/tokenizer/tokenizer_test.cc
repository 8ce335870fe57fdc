#include "tokenizer.h"

#include <cstdio>
#include <ctime>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "test_util.h"

namespace gptq::tokenizer {
namespace {

using ::testing::HasSubstr;
using namespace ::gptq::tokenizer::testing;  // NOLINT

std::string Stories15MModel() {
  return DataRoot() + "/models/stories15M-hf/tokenizer.model";
}

#define SKIP_WITHOUT_MODEL()                                                          \
  if (!FileExists(Stories15MModel())) {                                               \
    GTEST_SKIP() << "test data absent: " << Stories15MModel()                         \
                 << " (set GPTQ_TEST_DATA_ROOT to the shared data folder)";           \
  }
#define SKIP_WITHOUT_REFERENCE()                                                      \
  if (!ReferenceAvailable()) {                                                        \
    GTEST_SKIP() << "the real SentencePiece library is absent: " GPTQ_SYSTEM_PYTHON3  \
                    " cannot import sentencepiece (apt-get install python3-sentencepiece)"; \
  }

const Tokenizer& Llama2Tokenizer() {
  static const Tokenizer* t = [] {
    auto loaded = Tokenizer::Load(Stories15MModel());
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? loaded->release() : nullptr;
  }();
  return *t;
}

TEST(TokenizerLoadTest, MissingDirectoryIsNotFound) {
  const std::string dir = MakeTempDir();
  auto t = Tokenizer::Load(dir);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr(dir + "/tokenizer.model"));
  EXPECT_THAT(t.status().message(), HasSubstr("has no tokenizer.model"));
  auto f = Tokenizer::Load(dir + "/nope.model");
  ASSERT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr(dir + "/nope.model"));
}

TEST(TokenizerLoadTest, CorruptFileIsInvalidArgumentNamingTheFile) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/tokenizer.model";
  WriteAll(path, "this is not a protobuf\xff\xff\xff");
  auto t = Tokenizer::Load(dir);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr(path));
  EXPECT_THAT(t.status().message(), HasSubstr("not a SentencePiece model"));
}

TEST(TokenizerLoadTest, TruncatedRealModelIsInvalidArgument) {
  SKIP_WITHOUT_MODEL();
  const std::string bytes = ReadAll(Stories15MModel());
  auto t = Tokenizer::FromSerializedModel(std::string_view(bytes).substr(0, bytes.size() - 7),
                                          "cut.model");
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("cut.model"));
  EXPECT_THAT(t.status().message(), HasSubstr("runs past the end"));
}

// A small model for validation and behaviour tests. Pieces: <unk>, <s>, </s>, then `normal`
// with descending scores.
ModelProto SmallModel(const std::vector<std::string>& normal, bool byte_fallback) {
  ModelProto m;
  m.pieces.push_back({"<unk>", 0, PieceType::kUnknown});
  m.pieces.push_back({"<s>", 0, PieceType::kControl});
  m.pieces.push_back({"</s>", 0, PieceType::kControl});
  if (byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
      m.pieces.push_back({buf, 0, PieceType::kByte});
    }
  }
  float score = -1;
  for (const std::string& p : normal) {
    m.pieces.push_back({p, score, PieceType::kNormal});
    m.pieces.back().has_type = false;
    score -= 1;
  }
  WireMessage ts;
  ts.SetInt(trainer_field::kModelType, trainer_field::kModelTypeBpe);
  ts.SetInt(trainer_field::kVocabSize, static_cast<int64_t>(m.pieces.size()));
  ts.SetBool(trainer_field::kByteFallback, byte_fallback);
  m.trainer_spec = ts;
  WireMessage ns;
  ns.SetString(normalizer_field::kName, "identity");
  ns.SetBool(normalizer_field::kAddDummyPrefix, true);
  ns.SetBool(normalizer_field::kRemoveExtraWhitespaces, false);
  m.normalizer_spec = ns;
  return m;
}

TEST(TokenizerLoadTest, ValidatesLikeSentencePiece) {
  {
    ModelProto m = SmallModel({"a", "b", "a"}, false);
    auto t = Tokenizer::FromModel(m, "dup.model");
    ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("dup.model: pieces[5] \"a\" is already defined"));
  }
  {
    ModelProto m = SmallModel({"a"}, false);
    m.trainer_spec->SetInt(trainer_field::kModelType, trainer_field::kModelTypeUnigram);
    auto t = Tokenizer::FromModel(m, "uni.model");
    ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("model_type is 1; only BPE (2) is supported"));
  }
  {
    ModelProto m = SmallModel({"a"}, true);
    m.pieces.erase(m.pieces.begin() + 3 + 0x41);
    auto t = Tokenizer::FromModel(m, "bytes.model");
    ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("<0x41> is missing"));
  }
  {
    ModelProto m = SmallModel({"a"}, false);
    m.pieces[0].type = PieceType::kNormal;
    auto t = Tokenizer::FromModel(m, "nounk.model");
    ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("unk is not defined"));
  }
  {
    ModelProto m = SmallModel({"a"}, false);
    m.normalizer_spec->SetString(normalizer_field::kPrecompiledCharsmap, "xyz");
    m.normalizer_spec->SetString(normalizer_field::kName, "nmt_nfkc");
    auto t = Tokenizer::FromModel(m, "nfkc.model");
    ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("precompiled_charsmap is not empty "
                                                "(normalization rule 'nmt_nfkc')"));
  }
}

TEST(TokenizerTest, MergesByScoreNotLongestMatch) {
  // "▁abc": greedy longest match would take "▁ab" | "c"; BPE merges the best-scoring pair
  // first: "bc" (-1), then "▁a" (-2); "▁abc" is not a piece, so the result is ▁a | bc.
  auto t = Tokenizer::FromModel(
      SmallModel({"bc", "\xe2\x96\x81" "a", "\xe2\x96\x81" "ab", "\xe2\x96\x81", "a", "b", "c"},
                 false),
      "small");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT((*t)->EncodeAsPieces("abc"),
              ::testing::ElementsAre("\xe2\x96\x81" "a", "bc"));
  // Unknown characters without byte fallback become <unk>; with add_bos the BOS comes first.
  EXPECT_THAT((*t)->Encode("ax", /*add_bos=*/true), ::testing::ElementsAre(1, 4, 0));
  EXPECT_EQ((*t)->Decode((*t)->Encode("ax", false)), "a \xe2\x81\x87 ");
}

TEST(TokenizerTest, RealModelBasics) {
  SKIP_WITHOUT_MODEL();
  const Tokenizer& t = Llama2Tokenizer();
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.pad_id(), -1);
  // Values from SentencePiece 0.1.97 (sp.encode).
  EXPECT_THAT(t.Encode("Hello world  \n\nfoo", /*add_bos=*/true),
              ::testing::ElementsAre(1, 15043, 3186, 259, 13, 13, 5431));
  EXPECT_TRUE(t.Encode("", false).empty());
  EXPECT_THAT(t.Encode("", true), ::testing::ElementsAre(1));
  EXPECT_EQ(t.PieceToId("\xe2\x96\x81Hello"), 15043);
  EXPECT_EQ(t.IdToPiece(15043), "\xe2\x96\x81Hello");
  EXPECT_EQ(t.PieceToId("no such piece"), -1);
  EXPECT_EQ(t.IdToPiece(32000), "");
  // The model directory works as well as the file.
  auto from_dir = Tokenizer::Load(DataRoot() + "/models/stories15M-hf");
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  EXPECT_EQ((*from_dir)->Encode("Once upon a time", false), t.Encode("Once upon a time", false));
}

// Odd inputs, one per line ("\n" inside a line is written as "\\n"), against the library.
TEST(TokenizerTest, EdgeCasesMatchSentencePiece) {
  SKIP_WITHOUT_MODEL();
  SKIP_WITHOUT_REFERENCE();
  const std::vector<std::string> cases = {
      "",
      " ",
      "   ",
      "a",
      " leading space",
      "trailing space ",
      "two  spaces   three",
      "\t tab\tand\\nnewline\\n\\n",
      "\\n\\n\\n",
      "caf\xc3\xa9 na\xc3\xafve \xc3\x85ngstr\xc3\xb6m",
      "\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
      "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
      "<s> </s> <unk> <0x41> <pad>",
      "1234567890 3.14159 -42 1,000,000",
      "invalid \xff\xfe bytes \xc0\xaf overlong \xed\xa0\x80 surrogate",
      "truncated \xe4\xb8",
      "replacement \xef\xbf\xbd char",
      "\xe2\x96\x81 literal lower one eighth block \xe2\x96\x81\xe2\x96\x81",
      "combining e\xcc\x81 and \xef\xac\x81 ligature",
      "NUL\x01\x02\x7f control",
      "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
      " = Valkyria Chronicles III = \\n",
      "@-@ @,@ @.@ unk <unk> \"quoted\" 'single' (paren) [bracket] {brace}",
  };
  const std::string dir = MakeTempDir();
  const std::string input = dir + "/cases.txt";
  std::string content;
  for (const std::string& c : cases) absl::StrAppend(&content, c, "\n");
  WriteAll(input, content);
  const auto ref = RunReference(Stories15MModel(), input, "--lines");
  ASSERT_EQ(ref.size(), cases.size());
  const Tokenizer& t = Llama2Tokenizer();
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string text = cases[i];
    // Undo the line escaping (only "\\n" is used above).
    for (size_t p; (p = text.find("\\n")) != std::string::npos;) text.replace(p, 2, "\n");
    EXPECT_EQ(t.Encode(text, false), ref[i]) << "case " << i << ": \"" << cases[i] << "\"";
    EXPECT_EQ(t.EncodeReference(text, false), ref[i]) << "reference, case " << i;
  }
}

// Small models exercising what Llama-2's does not: user-defined symbols, UNUSED pieces, no byte
// fallback, remove_extra_whitespaces, no dummy prefix — each against the real library.
TEST(TokenizerTest, SyntheticModelsMatchSentencePiece) {
  SKIP_WITHOUT_REFERENCE();
  const std::vector<std::string> cases = {
      "abcd", "  ab  cd  ", "a<sep>b<sep><sep>c", "abcde xyz", "", "   ", "bcd bcd bcdbcd",
      "\xc3\xa9t\xc3\xa9 <se <sep", "a\\nb", "cdcdcd abab", "\xc3\xa9\\n\xc3\xa9 x\\n\\ny\\n",
  };
  const std::string dir = MakeTempDir();
  std::string content;
  for (const std::string& c : cases) absl::StrAppend(&content, c, "\n");
  WriteAll(dir + "/cases.txt", content);
  const std::string sp = "\xe2\x96\x81";
  struct Variant {
    bool byte_fallback;
    bool remove_extra;
    bool dummy_prefix;
    bool unused;  // without UNUSED pieces Encode splits the text at separators ('\n')
  };
  for (const Variant v :
       {Variant{false, true, true, true}, Variant{true, false, false, true},
        Variant{false, false, true, true}, Variant{true, true, false, true},
        Variant{false, false, true, false}, Variant{true, false, true, false}}) {
    ModelProto m = SmallModel({sp, "a", "b", "c", "d", "e", sp + "a", "ab", "bc", sp + "ab", "cd",
                               "abc", "de", "bcd", sp + "b", "t"},
                              v.byte_fallback);
    const size_t base = v.byte_fallback ? 3 + 256 : 3;
    if (v.unused) {
      m.pieces[base + 13].type = PieceType::kUnused;  // "bcd"
      m.pieces[base + 13].has_type = true;
    }
    m.pieces.push_back({"<sep>", 0, PieceType::kUserDefined});
    m.trainer_spec->SetInt(trainer_field::kVocabSize, static_cast<int64_t>(m.pieces.size()));
    m.normalizer_spec->SetBool(normalizer_field::kRemoveExtraWhitespaces, v.remove_extra);
    m.normalizer_spec->SetBool(normalizer_field::kAddDummyPrefix, v.dummy_prefix);
    const std::string model_path = dir + "/small.model";
    WriteAll(model_path, m.Serialize());
    auto t = Tokenizer::FromModel(m, "small");
    ASSERT_TRUE(t.ok()) << t.status();
    const auto ref = RunReference(model_path, dir + "/cases.txt", "--lines");
    ASSERT_EQ(ref.size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      std::string text = cases[i];
      for (size_t p; (p = text.find("\\n")) != std::string::npos;) text.replace(p, 2, "\n");
      EXPECT_EQ((*t)->Encode(text, false), ref[i])
          << "variant byte_fallback=" << v.byte_fallback << " remove_extra=" << v.remove_extra
          << " dummy_prefix=" << v.dummy_prefix << " unused=" << v.unused << ", case " << i
          << ": \"" << cases[i] << "\"";
      // The O(n^2) twin does not model UNUSED resegmentation; elsewhere it must agree too.
      if (!v.unused) {
        EXPECT_EQ((*t)->EncodeReference(text, false), ref[i]) << "reference, case " << i;
      }
    }
  }
}

// The whole file as one string, as perplexity evaluation tokenizes it; every token must match.
void ExpectFileMatchesSentencePiece(const std::string& model, const std::string& text_path,
                                    const Tokenizer& t, size_t min_tokens) {
  const std::string text = ReadAll(text_path);
  ASSERT_FALSE(text.empty()) << text_path;
  // CPU time, not wall time: CI runs tests in parallel on 2 shared cores.
  const std::clock_t start = std::clock();
  const std::vector<int32_t> ids = t.Encode(text, /*add_bos=*/false);
  const double seconds = static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC;
  const auto ref = RunReference(model, text_path, "");
  ASSERT_EQ(ref.size(), 1u);
  const int64_t diff = FirstDifference(ids, ref[0]);
  EXPECT_EQ(diff, -1) << text_path << ": first difference at token " << diff << " (ours "
                      << ids.size() << " tokens, SentencePiece " << ref[0].size() << ")";
  EXPECT_GE(ids.size(), min_tokens);
  EXPECT_LT(seconds, 5.0) << "encoding is too slow (CPU seconds)";
  std::printf("[ figures ] %s: %zu bytes -> %zu tokens, all equal to SentencePiece: %s; "
              "encode %.3f CPU s\n",
              text_path.c_str(), text.size(), ids.size(), diff == -1 ? "yes" : "NO", seconds);
}

TEST(TokenizerTest, WikiText2TestMatchesSentencePieceTokenForToken) {
  SKIP_WITHOUT_MODEL();
  SKIP_WITHOUT_REFERENCE();
  const std::string path = DataRoot() + "/text/wikitext2/wiki.test.raw";
  if (!FileExists(path)) GTEST_SKIP() << "test data absent: " << path;
  ExpectFileMatchesSentencePiece(Stories15MModel(), path, Llama2Tokenizer(), 300000);
}

TEST(TokenizerTest, TinyStoriesMatchesSentencePieceTokenForToken) {
  SKIP_WITHOUT_MODEL();
  SKIP_WITHOUT_REFERENCE();
  const std::string path = DataRoot() + "/text/tinystories/tiny.utf8";
  if (!FileExists(path)) GTEST_SKIP() << "test data absent: " << path;
  ExpectFileMatchesSentencePiece(Stories15MModel(), path, Llama2Tokenizer(), 50000);
}

TEST(TokenizerTest, C4MatchesSentencePieceTokenForToken) {
  SKIP_WITHOUT_MODEL();
  SKIP_WITHOUT_REFERENCE();
  const std::string path = DataRoot() + "/text/c4/c4.utf8";
  if (!FileExists(path)) GTEST_SKIP() << "test data absent: " << path;
  ExpectFileMatchesSentencePiece(Stories15MModel(), path, Llama2Tokenizer(), 50000);
}

// The fast priority-queue encoder against its O(n^2) twin, line by line over WikiText-2.
TEST(TokenizerTest, FastEncoderEqualsReferenceOnWikiTextLines) {
  SKIP_WITHOUT_MODEL();
  const std::string path = DataRoot() + "/text/wikitext2/wiki.valid.raw";
  if (!FileExists(path)) GTEST_SKIP() << "test data absent: " << path;
  const std::string text = ReadAll(path).substr(0, 120000);
  const Tokenizer& t = Llama2Tokenizer();
  size_t num_lines = 0, num_tokens = 0;
  for (absl::string_view l : absl::StrSplit(text, '\n')) {
    const std::string_view line(l.data(), l.size());
    const std::vector<int32_t> fast = t.Encode(line, false);
    ASSERT_EQ(fast, t.EncodeReference(line, false)) << "line " << num_lines << ": " << line;
    ++num_lines;
    num_tokens += fast.size();
  }
  EXPECT_GT(num_tokens, 25000u);
}

TEST(TokenizerTest, DecodeInvertsEncodeOnWikiText) {
  SKIP_WITHOUT_MODEL();
  const std::string path = DataRoot() + "/text/wikitext2/wiki.test.raw";
  if (!FileExists(path)) GTEST_SKIP() << "test data absent: " << path;
  const std::string text = ReadAll(path);
  const Tokenizer& t = Llama2Tokenizer();
  EXPECT_TRUE(t.Decode(t.Encode(text, /*add_bos=*/true)) == text);
}

TEST(TokenizerTest, DecodeMatchesSentencePiece) {
  SKIP_WITHOUT_MODEL();
  SKIP_WITHOUT_REFERENCE();
  const std::vector<std::vector<int32_t>> cases = {
      {1, 15043, 3186, 2},
      {259, 13, 13, 5431},
      {3 + 0xE4, 3 + 0xB8, 3 + 0xAD, 29871, 3 + 0xFF, 3 + 0x41},  // 中, ▁, bad byte, 'A'
      {3 + 0xE4, 3 + 0xB8},                                        // truncated
      {0, 15043, 0},                                               // unk
      {29871, 29871, 3186},                                        // ▁ ▁ world
  };
  const std::string dir = MakeTempDir();
  std::string content;
  for (const auto& c : cases) absl::StrAppend(&content, absl::StrJoin(c, " "), "\n");
  WriteAll(dir + "/ids.txt", content);
  const std::string cmd = absl::StrCat(GPTQ_SYSTEM_PYTHON3, " ", GPTQ_SP_REFERENCE_SCRIPT, " '",
                                       Stories15MModel(), "' ", dir, "/ids.txt ", dir,
                                       "/text.txt --decode");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::vector<std::string> lines = absl::StrSplit(ReadAll(dir + "/text.txt"), '\n');
  ASSERT_GE(lines.size(), cases.size());
  const Tokenizer& t = Llama2Tokenizer();
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string expected;
    for (size_t p = 0; p < lines[i].size(); ++p) {
      if (lines[i][p] == '\\' && p + 1 < lines[i].size()) {
        expected.push_back(lines[i][p + 1] == 'n' ? '\n' : lines[i][p + 1]);
        ++p;
      } else {
        expected.push_back(lines[i][p]);
      }
    }
    EXPECT_EQ(t.Decode(cases[i]), expected) << "case " << i;
  }
}

}  // namespace
}  // namespace gptq::tokenizer
