// gptq-quantize: the standalone `quantize` command (the same as `gptq-worker quantize`).
#include <malloc.h>

#include <string>
#include <vector>

#include "commands.h"

int main(int argc, char** argv) {
  // Keep freed tensor buffers in the heap instead of returning them to the OS after every
  // forward chunk: with glibc's defaults, page faults on re-allocation cost more system time
  // than the CPU forward passes themselves.
  mallopt(M_MMAP_THRESHOLD, 512 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  std::vector<std::string> args(argv + 1, argv + argc);
  return gptq::runtime::QuantizeCommand(args);
}
