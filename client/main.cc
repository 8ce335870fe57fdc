// gptqctl: command-line client of gptq.v1.QuantizationService. See `gptqctl help`.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "gptqctl.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  gptq::client::Environment env;
  if (const char* v = std::getenv("GPTQ_SERVER")) env.server = v;
  if (const char* v = std::getenv("GPTQ_AUTH_TOKEN")) env.auth_token = v;
  char cwd[4096];
  if (getcwd(cwd, sizeof(cwd)) != nullptr) env.cwd = cwd;
  gptq::client::Console console{std::cout, std::cerr, isatty(STDOUT_FILENO) == 1};
  return gptq::client::RunGptqctl(args, env, console);
}
