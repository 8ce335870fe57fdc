// gptq-quantize: the standalone `quantize` command (the same as `gptq-worker quantize`).
#include <string>
#include <vector>

#include "commands.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return gptq::runtime::QuantizeCommand(args);
}
