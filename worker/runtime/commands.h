// Command-line entry points the runtime provides to the `gptq-worker` binary, as plain C++
// (no Torch, no protobuf), so the binary's main can dispatch to them:
//   gptq-worker quantize ...        → QuantizeCommand
//   gptq-worker import-llama2c ...  → ImportLlama2cCommand
// `args` excludes the program name and the subcommand. Each returns a process exit code
// (0 ok, 2 usage error, 1 failure) and prints its own errors to stderr.
#ifndef GPTQ_WORKER_RUNTIME_COMMANDS_H_
#define GPTQ_WORKER_RUNTIME_COMMANDS_H_

#include <string>
#include <vector>

namespace gptq::runtime {

int QuantizeCommand(const std::vector<std::string>& args);
int ImportLlama2cCommand(const std::vector<std::string>& args);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_COMMANDS_H_
