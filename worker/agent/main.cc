// gptq-worker: the worker binary.
//   gptq-worker serve ...           lease and run jobs from gptq-server (worker/agent)
//   gptq-worker quantize ...        quantize one model locally (worker/runtime)
//   gptq-worker import-llama2c ...  convert a llama2.c checkpoint to HF layout (worker/runtime)
// No Torch headers here: the runtime is reached through its plain C++ headers.
#include <iostream>
#include <string>
#include <vector>

#include "device_info.h"
#include "serve_command.h"
#include "worker/runtime/commands.h"
#include "worker/runtime/quantize_job.h"

namespace {

constexpr char kUsage[] = R"(usage: gptq-worker <command> [args]
commands:
  serve            register with gptq-server and run the jobs it leases (see serve --help)
  quantize         quantize a local model directory (see quantize --help)
  import-llama2c   convert a llama2.c checkpoint into a Hugging Face model directory
  version          print the version
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "serve") {
#ifdef GPTQ_WORKER_HAVE_RUNTIME
    gptq::agent::ServeDeps deps;
    deps.run_job = &gptq::runtime::RunQuantizeJob;
    deps.query_device = &gptq::agent::QueryDeviceInfo;
    deps.memory_used_bytes = &gptq::agent::DeviceMemoryUsedBytes;
    deps.release_device_memory = &gptq::agent::ReleaseCachedDeviceMemory;
    return gptq::agent::ServeCommand(args, deps);
#else
    std::cerr << "gptq-worker serve: not built (this binary was built without gptq::runtime)\n";
    return 1;
#endif
  }
  if (command == "quantize") {
#ifdef GPTQ_WORKER_HAVE_RUNTIME
    return gptq::runtime::QuantizeCommand(args);
#else
    std::cerr << "gptq-worker quantize: not built (this binary was built without gptq::runtime)\n";
    return 1;
#endif
  }
  if (command == "import-llama2c") {
#ifdef GPTQ_WORKER_HAVE_IMPORT
    return gptq::runtime::ImportLlama2cCommand(args);
#else
    std::cerr << "gptq-worker import-llama2c: not built (built without gptq::import)\n";
    return 1;
#endif
  }
  if (command == "version" || command == "--version") {
    auto info = gptq::agent::QueryDeviceInfo("cpu");
    std::cout << "gptq-worker " << GPTQ_WORKER_VERSION << " (LibTorch "
              << (info.ok() ? info->torch_version : "?") << ")\n";
    return 0;
  }
  if (command == "help" || command == "--help" || command == "-h") {
    std::cout << kUsage;
    return 0;
  }
  std::cerr << "gptq-worker: unknown command '" << command << "'\n" << kUsage;
  return 2;
}
