// `gptq-worker import-llama2c --model model.bin [--tokenizer tokenizer.bin] --output DIR
//  [--max-shard-bytes N]`: llama2.c checkpoint -> HF Llama checkpoint directory.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "worker/runtime/commands.h"
#include "worker/runtime/import/llama2c_import.h"

namespace gptq::runtime {
namespace {

constexpr char kUsage[] =
    "usage: gptq-worker import-llama2c --model MODEL.bin --output DIR [--tokenizer "
    "TOKENIZER.bin] [--max-shard-bytes N]\n"
    "  Converts a llama2.c model.bin (float32: legacy version 0 or version 1) into a Hugging\n"
    "  Face Llama checkpoint"
    "  (config.json, model.safetensors in float32, and with --tokenizer: tokenizer.model,\n"
    "  tokenizer_config.json, special_tokens_map.json). DIR must not exist or be empty.\n";

}  // namespace

int ImportLlama2cCommand(const std::vector<std::string>& args) {
  std::map<std::string, std::string> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (arg.rfind("--", 0) != 0) {
      std::cerr << "import-llama2c: unexpected argument \"" << arg << "\"\n" << kUsage;
      return 2;
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      std::cerr << "import-llama2c: flag --" << name << " needs a value\n" << kUsage;
      return 2;
    }
    if (name != "model" && name != "tokenizer" && name != "output" && name != "max-shard-bytes") {
      std::cerr << "import-llama2c: unknown flag --" << name << "\n" << kUsage;
      return 2;
    }
    if (flags.count(name) != 0) {
      std::cerr << "import-llama2c: flag --" << name << " given twice\n";
      return 2;
    }
    flags[name] = value;
  }
  ImportLlama2cOptions options;
  options.model_path = flags["model"];
  options.tokenizer_path = flags["tokenizer"];
  options.output_dir = flags["output"];
  if (options.model_path.empty() || options.output_dir.empty()) {
    std::cerr << "import-llama2c: --model and --output are required\n" << kUsage;
    return 2;
  }
  if (flags.count("max-shard-bytes") != 0 &&
      !absl::SimpleAtoi(flags["max-shard-bytes"], &options.max_shard_bytes)) {
    std::cerr << "import-llama2c: --max-shard-bytes \"" << flags["max-shard-bytes"]
              << "\" is not an integer\n";
    return 2;
  }
  if (options.tokenizer_path.empty()) {
    std::cerr << "import-llama2c: no --tokenizer given; the checkpoint will have no tokenizer\n";
  }
  absl::StatusOr<std::vector<WrittenFile>> files = ImportLlama2c(options);
  if (!files.ok()) {
    std::cerr << "import-llama2c: " << files.status() << "\n";
    return 1;
  }
  for (const WrittenFile& f : *files) {
    std::cout << f.sha256_hex << "  " << f.size_bytes << "  " << options.output_dir << "/"
              << f.name << "\n";
  }
  return 0;
}

}  // namespace gptq::runtime
