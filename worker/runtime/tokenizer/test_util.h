// Helpers shared by the tokenizer tests: test-data paths, temp files, and the real SentencePiece
// library run in its own process through sp_reference.py.
#ifndef GPTQ_WORKER_RUNTIME_TOKENIZER_TEST_UTIL_H_
#define GPTQ_WORKER_RUNTIME_TOKENIZER_TEST_UTIL_H_

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gptq::tokenizer::testing {

inline std::string DataRoot() {
  const char* env = std::getenv("GPTQ_TEST_DATA_ROOT");
  return env != nullptr && *env != '\0' ? env : GPTQ_TEST_DATA_ROOT;
}

inline bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

// A fresh directory under the test temp dir.
inline std::string MakeTempDir() {
  std::string tmpl = absl::StrCat(::testing::TempDir(), "/gptq_tok_XXXXXX");
  char* dir = ::mkdtemp(tmpl.data());
  return dir != nullptr ? std::string(dir) : std::string();
}

// Whether the real library can run (Debian's python3 with the sentencepiece module).
inline bool ReferenceAvailable() {
  const std::string cmd = absl::StrCat(GPTQ_SYSTEM_PYTHON3,
                                       " -c 'import sentencepiece' >/dev/null 2>&1");
  return std::system(cmd.c_str()) == 0;
}

// Runs sp_reference.py; returns one id list per output line, or an empty vector after an
// ADD_FAILURE on error.
inline std::vector<std::vector<int32_t>> RunReference(const std::string& model,
                                                      const std::string& input,
                                                      const std::string& flags) {
  const std::string out = input + ".ref";
  const std::string cmd = absl::StrCat(GPTQ_SYSTEM_PYTHON3, " ", GPTQ_SP_REFERENCE_SCRIPT, " '",
                                       model, "' '", input, "' '", out, "' ", flags);
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    ADD_FAILURE() << "reference failed (" << rc << "): " << cmd;
    return {};
  }
  std::vector<std::vector<int32_t>> result;
  std::string content = ReadAll(out);
  if (!content.empty() && content.back() == '\n') content.pop_back();
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    std::vector<int32_t> ids;
    for (absl::string_view tok : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
      int32_t v = 0;
      if (!absl::SimpleAtoi(tok, &v)) ADD_FAILURE() << "bad id '" << tok << "' in " << out;
      ids.push_back(v);
    }
    result.push_back(std::move(ids));
  }
  return result;
}

// Index of the first difference of two id sequences, or -1 if equal.
inline int64_t FirstDifference(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<int64_t>(n);
}

}  // namespace gptq::tokenizer::testing

#endif  // GPTQ_WORKER_RUNTIME_TOKENIZER_TEST_UTIL_H_
