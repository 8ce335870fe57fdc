#include "datasets.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sys/stat.h>
#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/tokenizer.h"

namespace gptq::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string MakeTempDir() {
  std::string tmpl = absl::StrCat(::testing::TempDir(), "/gptq_data_XXXXXX");
  char* dir = ::mkdtemp(tmpl.data());
  return dir != nullptr ? std::string(dir) : std::string();
}

void WriteFile(const std::string& path, const std::string& content) {
  ::mkdir(path.substr(0, path.rfind('/')).c_str(), 0755);
  std::ofstream(path, std::ios::binary) << content;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string SharedTextDir() {
  const char* env = std::getenv("GPTQ_TEST_DATA_ROOT");
  return absl::StrCat(env != nullptr && *env ? env : GPTQ_TEST_DATA_ROOT, "/text");
}

// A tiny BPE tokenizer: <unk> <s> </s> ▁ a b ▁a ab (no byte fallback).
std::unique_ptr<tokenizer::Tokenizer> TinyTokenizer() {
  using tokenizer::PieceType;
  tokenizer::ModelProto m;
  m.pieces = {{"<unk>", 0, PieceType::kUnknown},   {"<s>", 0, PieceType::kControl},
              {"</s>", 0, PieceType::kControl},    {"\xe2\x96\x81", -5, PieceType::kNormal},
              {"a", -6, PieceType::kNormal},       {"b", -7, PieceType::kNormal},
              {"\xe2\x96\x81" "a", -1, PieceType::kNormal}, {"ab", -2, PieceType::kNormal}};
  tokenizer::WireMessage ts;
  ts.SetInt(tokenizer::trainer_field::kModelType, tokenizer::trainer_field::kModelTypeBpe);
  m.trainer_spec = ts;
  tokenizer::WireMessage ns;
  ns.SetBool(tokenizer::normalizer_field::kRemoveExtraWhitespaces, false);
  m.normalizer_spec = ns;
  auto t = tokenizer::Tokenizer::FromModel(std::move(m), "tiny");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

TEST(DatasetsTest, KnownNames) {
  EXPECT_THAT(KnownDatasetNames(), ElementsAre("brown", "c4", "tinystories", "wikitext2"));
}

TEST(DatasetsTest, UnknownNameListsTheKnownOnes) {
  auto p = DatasetPath("ptb", Split::kEvaluation, "/data");
  ASSERT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.status().message(),
            "unknown dataset \"ptb\"; known: brown, c4, tinystories, wikitext2");
  auto t = LoadDatasetText("ptb", Split::kCalibration, "/data");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DatasetsTest, EmptyDataDirMeansGptqDataDir) {
  const char* saved = std::getenv("GPTQ_DATA_DIR");
  const std::string saved_value = saved != nullptr ? saved : "";
  ::setenv("GPTQ_DATA_DIR", "/env/data", 1);
  EXPECT_EQ(*DatasetPath("c4", Split::kCalibration, ""), "/env/data/c4/c4.utf8");
  EXPECT_EQ(*DatasetPath("c4", Split::kCalibration, "/given"), "/given/c4/c4.utf8");
  ::unsetenv("GPTQ_DATA_DIR");
  auto p = LoadDatasetText("c4", Split::kCalibration, "");
  if (saved != nullptr) ::setenv("GPTQ_DATA_DIR", saved_value.c_str(), 1);
  ASSERT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("set GPTQ_DATA_DIR or data_dir"));
}

TEST(DatasetsTest, PathsAndSplits) {
  EXPECT_EQ(*DatasetPath("c4", Split::kCalibration, "/d"), "/d/c4/c4.utf8");
  EXPECT_EQ(*DatasetPath("wikitext2", Split::kCalibration, "/d/"), "/d/wikitext2/wiki.valid.raw");
  EXPECT_EQ(*DatasetPath("wikitext2", Split::kEvaluation, "/d"), "/d/wikitext2/wiki.test.raw");
  EXPECT_EQ(*DatasetPath("tinystories", Split::kEvaluation, "/d"), "/d/tinystories/tiny.utf8");
  EXPECT_EQ(*DatasetPath("brown", Split::kEvaluation, "/d"), "/d/brown");
}

TEST(DatasetsTest, LoadsTheRightFileAndNamesMissingOnes) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/wikitext2/wiki.valid.raw", "valid text");
  WriteFile(dir + "/wikitext2/wiki.test.raw", "test text");
  WriteFile(dir + "/c4/c4.utf8", "");
  EXPECT_EQ(*LoadDatasetText("wikitext2", Split::kCalibration, dir), "valid text");
  EXPECT_EQ(*LoadDatasetText("wikitext2", Split::kEvaluation, dir), "test text");
  auto missing = LoadDatasetText("tinystories", Split::kCalibration, dir);
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), absl::StrCat("dataset \"tinystories\": file not found: ",
                                                     dir, "/tinystories/tiny.utf8"));
  auto empty = LoadDatasetText("c4", Split::kCalibration, dir);
  ASSERT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr(dir + "/c4/c4.utf8 is empty"));
}

TEST(DatasetsTest, SharedDataFilesLoadWhole) {
  const std::string dir = SharedTextDir();
  if (!FileExists(dir + "/wikitext2/wiki.test.raw")) {
    GTEST_SKIP() << "test data absent: " << dir << " (set GPTQ_TEST_DATA_ROOT)";
  }
  EXPECT_EQ(LoadDatasetText("wikitext2", Split::kEvaluation, dir)->size(), 1290590u);
  EXPECT_EQ(LoadDatasetText("wikitext2", Split::kCalibration, dir)->size(), 1146846u);
  EXPECT_EQ(LoadDatasetText("c4", Split::kCalibration, dir)->size(), 332173u);
  EXPECT_EQ(LoadDatasetText("tinystories", Split::kEvaluation, dir)->size(), 261693u);
}

TEST(BrownTest, StripsTagsKeepsWordsWithSlashes) {
  EXPECT_EQ(StripBrownTags("\n\n\tThe/at Fulton/np-tl County/nn-tl said/vbd ``/`` no/at ''/'' "
                           "./.\n\n\n\tAtlanta's/np$ 1/2/cd share/nn\r\n"),
            "The Fulton County said `` no '' .\nAtlanta's 1/2 share\n");
  EXPECT_EQ(StripBrownTags(""), "");
  EXPECT_EQ(StripBrownTags("untagged word/x"), "untagged word\n");
}

TEST(BrownTest, ConcatenatesCorpusFilesInNameOrder) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/brown/cb02", "\tSecond/ap file/nn ./.\n");
  WriteFile(dir + "/brown/ca01", "\tFirst/od file/nn ./.\n\n\n\tTwo/cd lines/nns ./.\n");
  WriteFile(dir + "/brown/README", "not/corpus");
  WriteFile(dir + "/brown/cats.txt", "ca01 news");
  auto text = LoadDatasetText("brown", Split::kCalibration, dir);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "First file .\nTwo lines .\n\nSecond file .\n");
  // No held-out file yet: evaluation says so.
  auto no_eval = LoadDatasetText("brown", Split::kEvaluation, dir);
  ASSERT_EQ(no_eval.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_eval.status().message(), HasSubstr("evaluation part"));
  // Every tenth file of a category is evaluation only.
  WriteFile(dir + "/brown/cb20", "\tHeld/vbn out/rp ./.\n");
  WriteFile(dir + "/brown/ca10", "\tTenth/od ./.\n");
  EXPECT_EQ(*LoadDatasetText("brown", Split::kCalibration, dir), *text);
  EXPECT_EQ(*LoadDatasetText("brown", Split::kEvaluation, dir), "Tenth .\n\nHeld out .\n");
  auto missing = LoadDatasetText("brown", Split::kCalibration, dir + "/nothing");
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir + "/nothing/brown"));
  EXPECT_THAT(missing.status().message(), HasSubstr("deploy/fetch-brown.sh"));
}

TEST(BrownTest, RealCorpusWhenFetched) {
  const std::string dir = DefaultDataDir();
  if (dir.empty() || !FileExists(dir + "/brown/ca01")) {
    GTEST_SKIP() << "Brown corpus absent: run deploy/fetch-brown.sh DIR and set GPTQ_DATA_DIR=DIR";
  }
  auto text = LoadDatasetText("brown", Split::kCalibration, dir);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->rfind("The Fulton County Grand Jury said Friday", 0), 0u);
  size_t words = 0;
  for (size_t i = 0; i < text->size(); ++i) {
    if ((*text)[i] != ' ' && (*text)[i] != '\n' && (i == 0 || (*text)[i - 1] == ' ' ||
                                                    (*text)[i - 1] == '\n')) {
      ++words;
    }
  }
  EXPECT_GT(words, 1000000u);  // ~1.16M tokens including punctuation, 92 % of them here
  EXPECT_EQ(text->find("/at "), std::string::npos);
  EXPECT_EQ(text->find("/nn"), std::string::npos);
  auto held_out = LoadDatasetText("brown", Split::kEvaluation, dir);
  ASSERT_TRUE(held_out.ok()) << held_out.status();
  EXPECT_GT(held_out->size(), text->size() / 20);  // 41 of 500 files
  EXPECT_LT(held_out->size(), text->size() / 8);
  EXPECT_EQ(text->find(held_out->substr(0, 200)), std::string::npos) << "evaluation text is held out";
  std::printf("[ figures ] brown: calibration %zu bytes, %zu words; evaluation %zu bytes\n", text->size(),
              words, held_out->size());
}

TEST(ReadTextFileTest, PathsAndFileUris) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/a.txt", "hello");
  EXPECT_EQ(*ReadTextFile(dir + "/a.txt"), "hello");
  EXPECT_EQ(*ReadTextFile("file://" + dir + "/a.txt"), "hello");
  EXPECT_EQ(*ReadTextFile("file://localhost" + dir + "/a.txt"), "hello");
  auto missing = ReadTextFile(dir + "/b.txt");
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), absl::StrCat("file not found: ", dir, "/b.txt"));
  auto relative = ReadTextFile("file://relative/a.txt");
  ASSERT_EQ(relative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(relative.status().message(), HasSubstr("must be absolute"));
  auto directory = ReadTextFile(dir);
  ASSERT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(directory.status().message(), HasSubstr("is a directory"));
}

TEST(InlineTextsTest, TokenizedWithoutBosAndConcatenated) {
  auto tok = TinyTokenizer();
  ASSERT_NE(tok, nullptr);
  // "ab" → ▁a b (▁a scores -1, beats ab at -2); "b" → ▁ b.
  auto ids = TokenizeTexts(*tok, {"ab", "b"});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(6, 5, 3, 5));
  EXPECT_EQ(TokenizeTexts(*tok, {}).status().message(), "inline texts: no texts given");
  auto empty = TokenizeTexts(*tok, {"a", ""});
  ASSERT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.status().message(), "inline texts: text 1 is empty");
}

TEST(TokenIdsTest, Validation) {
  EXPECT_TRUE(ValidateTokenIds({0, 5, 31999}, 32000).ok());
  EXPECT_EQ(ValidateTokenIds({}, 10).message(), "token ids: none given");
  auto bad = ValidateTokenIds({1, 2, 10}, 10);
  ASSERT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "token ids: ids[2] = 10 is outside [0, 10)");
  EXPECT_EQ(ValidateTokenIds({-1}, 10).message(), "token ids: ids[0] = -1 is outside [0, 10)");
}

std::vector<int32_t> Iota(int n) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = 1000 + i;
  return v;
}

TEST(SampleWindowsTest, Errors) {
  auto short_text = SampleWindows(Iota(10), 4, 10, 0);
  ASSERT_EQ(short_text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(short_text.status().message(), "text has 10 tokens; need at least seqlen+1 = 11");
  EXPECT_EQ(SampleWindows(Iota(10), 0, 4, 0).status().message(), "nsamples must be >= 1, got 0");
  EXPECT_EQ(SampleWindows(Iota(10), 1, 0, 0).status().message(), "seqlen must be >= 1, got 0");
}

TEST(SampleWindowsTest, DocumentedDrawAndContiguousWindows) {
  const std::vector<int32_t> tokens = Iota(1000);
  auto w = SampleWindows(tokens, 16, 64, 1234);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->size(), 16u);
  std::mt19937_64 rng(1234);  // the documented recipe
  for (const auto& window : *w) {
    const int64_t start = static_cast<int64_t>(rng() % (1000 - 64));
    ASSERT_EQ(window.size(), 64u);
    for (int j = 0; j < 64; ++j) ASSERT_EQ(window[j], tokens[start + j]);
  }
  EXPECT_EQ(*SampleWindows(tokens, 16, 64, 1234), *w);  // reproducible
  EXPECT_NE(*SampleWindows(tokens, 16, 64, 1235), *w);  // seed matters
}

TEST(SampleWindowsTest, StartsCoverExactlyZeroToNMinusSeqlenMinusOne) {
  // n = 12, seqlen = 8: starts 0..3, never 4 (the window must leave one token after it, as in
  // GPTQ's random.randint(0, n - seqlen - 1)).
  auto w = SampleWindows(Iota(12), 400, 8, 7);
  ASSERT_TRUE(w.ok());
  std::set<int32_t> starts;
  for (const auto& window : *w) starts.insert(window[0] - 1000);
  EXPECT_EQ(starts, (std::set<int32_t>{0, 1, 2, 3}));
  auto tight = SampleWindows(Iota(9), 3, 8, 99);  // n = seqlen + 1: only start 0
  ASSERT_TRUE(tight.ok());
  for (const auto& window : *tight) EXPECT_EQ(window[0], 1000);
}

TEST(DatasetTokensTest, EvaluationAndCalibrationTokens) {
  auto tok = TinyTokenizer();
  ASSERT_NE(tok, nullptr);
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/wikitext2/wiki.valid.raw", "ab");
  WriteFile(dir + "/wikitext2/wiki.test.raw", "b a");
  EXPECT_THAT(*LoadCalibrationTokens("wikitext2", *tok, dir), ElementsAre(6, 5));
  EXPECT_THAT(*LoadEvaluationTokens("wikitext2", *tok, dir), ElementsAre(3, 5, 6));
  EXPECT_EQ(LoadEvaluationTokens("c4", *tok, dir).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gptq::data
