// Standalone `gptq-import-llama2c` (same flags as `gptq-worker import-llama2c`), for tests and
// for use before/without the worker binary.
#include <string>
#include <vector>

#include "worker/runtime/commands.h"

int main(int argc, char** argv) {
  return gptq::runtime::ImportLlama2cCommand(std::vector<std::string>(argv + 1, argv + argc));
}
