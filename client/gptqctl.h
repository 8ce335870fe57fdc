// gptqctl's logic: runs one parsed Command against a QuantizationService stub and returns the
// process exit code. The binary's main only gathers argv/env and calls RunGptqctl.
#ifndef GPTQ_CLIENT_GPTQCTL_H_
#define GPTQ_CLIENT_GPTQCTL_H_

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cli.h"
#include "gptq/v1/quantization.grpc.pb.h"
#include "grpcpp/channel.h"

namespace gptq::client {

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitJobFailed = 1;  // job FAILED or CANCELLED (submit --wait)
inline constexpr int kExitRpcError = 2;
inline constexpr int kExitUsage = 64;

// Where output goes. `tty` says whether `out` is a terminal (live one-line progress bar).
struct Console {
  std::ostream& out;
  std::ostream& err;
  bool tty = false;
};

// A channel to `options.server`: TLS with the roots in options.tls_ca when given, else
// plaintext. InvalidArgument if the CA file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const GlobalOptions& options);

// Runs a parsed command on `stub` (any implementation: a real channel's stub or a fake).
int RunCommand(const Command& command, gptq::v1::QuantizationService::StubInterface& stub,
               Console& console);

// The whole CLI: parses `args` (without the program name), connects and runs.
int RunGptqctl(const std::vector<std::string>& args, const Environment& env, Console& console);

}  // namespace gptq::client

#endif  // GPTQ_CLIENT_GPTQCTL_H_
