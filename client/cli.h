// gptqctl's command line: parses argv into a Command (global options + one subcommand with its
// request). Pure functions, no I/O except reading a --calib-tokens file; errors are
// InvalidArgument with a message naming the flag (the CLI maps them to exit code 64).
#ifndef GPTQ_CLIENT_CLI_H_
#define GPTQ_CLIENT_CLI_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gptq/v1/quantization.pb.h"

namespace gptq::client {

// Options that apply to every subcommand.
struct GlobalOptions {
  std::string server;    // HOST:PORT; default $GPTQ_SERVER or 127.0.0.1:50051
  bool json = false;     // print protobuf messages as JSON
  std::string token;     // bearer token; default $GPTQ_AUTH_TOKEN
  std::string tls_ca;    // PEM file of root certificates; empty: plaintext
  // Seconds a --wait/watch keeps reconnecting while the server is unreachable.
  int reconnect_seconds = 120;
};

enum class Subcommand { kHelp, kSubmit, kGet, kList, kWatch, kCancel, kDelete };

struct Command {
  GlobalOptions global;
  Subcommand subcommand = Subcommand::kHelp;
  // submit
  gptq::v1::CreateJobRequest create;
  bool wait = false;
  // get, watch, cancel, delete
  std::string job_id;
  // watch
  int64_t from_sequence = 0;
  // list
  gptq::v1::ListJobsRequest list;
  bool list_all = false;
};

// Environment values the parser may use (kept out of the parser so tests control them).
struct Environment {
  std::string server;      // $GPTQ_SERVER
  std::string auth_token;  // $GPTQ_AUTH_TOKEN
  std::string cwd;         // current directory, to make relative local paths absolute
};

// Parses argv (without the program name). Global flags may come before or after the
// subcommand. Flags take values as `--flag value` or `--flag=value`.
absl::StatusOr<Command> ParseCommandLine(const std::vector<std::string>& args,
                                         const Environment& env);

// The usage text printed by `gptqctl help` and after a usage error.
std::string UsageText();

// Parses a byte size: an integer with an optional suffix K, M, G, T (powers of 1024; "KiB",
// "MB" etc. accepted as the same). `flag` names the flag in errors.
absl::StatusOr<int64_t> ParseByteSize(const std::string& text, const std::string& flag);

// Parses token ids separated by commas and/or whitespace.
absl::StatusOr<std::vector<int32_t>> ParseTokenIds(const std::string& text,
                                                   const std::string& flag);

// Job state names as the CLI spells them: queued, running, succeeded, failed, cancelled.
absl::StatusOr<gptq::v1::JobState> ParseJobState(const std::string& text);
std::string JobStateName(gptq::v1::JobState state);

// A local path made absolute against `cwd`; URIs (scheme://) and absolute paths unchanged.
std::string AbsolutizeLocalPath(const std::string& path, const std::string& cwd);

}  // namespace gptq::client

#endif  // GPTQ_CLIENT_CLI_H_
