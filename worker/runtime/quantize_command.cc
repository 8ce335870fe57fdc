// QuantizeCommand: `gptq-worker quantize --model DIR --output DIR [flags]`.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "commands.h"
#include "quantize_job.h"

namespace gptq::runtime {
namespace {

constexpr char kUsage[] =
    R"(usage: gptq-worker quantize --model DIR --output DIR [flags]
  --bits N                  2, 3, 4 or 8 (default 4)
  --group-size N            > 0 or -1 (default 128)
  --damp-percent X          in (0, 1) (default 0.1)
  --damp-auto-increment X   in (0, 1) (default 0.01)
  --sym | --no-sym          symmetric grid (default --sym)
  --desc-act                act-order (default off)
  --static-groups           with --desc-act: grids fixed before permuting
  --act-group-aware | --no-act-group-aware   (default: on unless --desc-act)
  --true-sequential | --no-true-sequential   (default on)
  --format gptq|gptq_v2     checkpoint format (default gptq; --no-sym forces gptq_v2)
  --dataset NAME            calibration dataset: c4, wikitext2, tinystories, brown (default c4)
  --calibration-file FILE   calibration text file instead of a dataset
  --nsamples N              calibration windows (default 128)
  --seqlen N                tokens per window (default: model context, capped at 2048)
  --seed N                  calibration sampling seed (default 0)
  --eval NAME[,NAME]        perplexity before and after on these datasets
  --eval-seqlen N           evaluation window (default: --seqlen)
  --data-dir DIR            dataset root (default $GPTQ_DATA_DIR)
  --device auto|cpu|cuda[:N]  (default auto)
  --batch-size N            windows per forward chunk (default: chosen from the model)
  --max-shard-bytes N       (default 4 GiB)
  --report FILE             write the JSON report there
)";

CancelToken* g_cancel = nullptr;
extern "C" void OnSigint(int) {
  if (g_cancel != nullptr) g_cancel->Cancel();
}

class PrintingSink : public ProgressSink {
 public:
  void OnEvent(const ProgressEvent& e) override {
    const std::string pct = absl::StrFormat("[%3d%%]", static_cast<int>(e.fraction * 100 + 0.5));
    const std::string eta = e.eta_seconds >= 0 ? absl::StrFormat(" eta %.0fs", e.eta_seconds) : "";
    switch (e.kind) {
      case ProgressEvent::Kind::kStage:
        if (e.layer >= 0) {
          std::printf("%s %s layer %d/%d%s\n", pct.c_str(), e.stage.c_str(), e.layer + 1, e.num_layers, eta.c_str());
        } else {
          std::printf("%s %s\n", pct.c_str(), e.stage.c_str());
        }
        break;
      case ProgressEvent::Kind::kModule:
        if (e.unquantized) {
          std::printf("%s layer %d/%d %-18s [%dx%d] left unquantized (fp16)\n", pct.c_str(), e.layer + 1,
                      e.num_layers, e.module.c_str(), e.rows, e.columns);
        } else {
          std::printf("%s layer %d/%d %-18s [%dx%d] loss %.4g damp %.4g%s %.2fs%s\n", pct.c_str(), e.layer + 1,
                      e.num_layers, e.module.c_str(), e.rows, e.columns, e.loss, e.damp,
                      e.rtn_fallback ? " RTN-fallback" : "", e.seconds, eta.c_str());
        }
        break;
      case ProgressEvent::Kind::kPerplexity:
        std::printf("%s perplexity %s %s = %.4f (%lld tokens, %.1fs)\n", pct.c_str(), e.phase.c_str(),
                    e.dataset.c_str(), e.value, static_cast<long long>(e.num_tokens), e.seconds);
        break;
      case ProgressEvent::Kind::kLog:
        std::printf("%s %s%s\n", pct.c_str(), e.level == "info" ? "" : (e.level + ": ").c_str(), e.message.c_str());
        break;
      case ProgressEvent::Kind::kArtifact:
        std::printf("%s wrote %s (%lld bytes, sha256 %s)\n", pct.c_str(), e.message.c_str(),
                    static_cast<long long>(e.size_bytes), e.sha256.c_str());
        break;
    }
    std::fflush(stdout);
  }
};

int Usage(const std::string& error) {
  std::fprintf(stderr, "gptq-worker quantize: %s\n%s", error.c_str(), kUsage);
  return 2;
}

}  // namespace

int QuantizeCommand(const std::vector<std::string>& args) {
  QuantizeOptions o;
  std::string report_path;
  std::map<std::string, std::string> seen;
  // Flags taking a value; booleans are handled separately.
  const std::vector<std::string> valued = {
      "--model", "--output", "--bits", "--group-size", "--damp-percent", "--damp-auto-increment", "--format",
      "--dataset", "--calibration-file", "--nsamples", "--seqlen", "--seed", "--eval", "--eval-seqlen",
      "--data-dir", "--device", "--batch-size", "--max-shard-bytes", "--report"};
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i], value;
    bool has_value = false;
    const size_t eq = flag.find('=');
    if (flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    if (flag == "--help" || flag == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    auto boolean = [&](bool* out, bool v) -> bool {
      if (has_value) {
        if (value == "true" || value == "1") {
          *out = v;
        } else if (value == "false" || value == "0") {
          *out = !v;
        } else {
          return false;
        }
      } else {
        *out = v;
      }
      return true;
    };
    bool tmp = false;
    if (flag == "--sym" || flag == "--no-sym") {
      if (!boolean(&o.sym, flag == "--sym")) return Usage("bad value for " + flag);
      continue;
    }
    if (flag == "--desc-act" || flag == "--no-desc-act") {
      if (!boolean(&o.desc_act, flag == "--desc-act")) return Usage("bad value for " + flag);
      continue;
    }
    if (flag == "--static-groups" || flag == "--no-static-groups") {
      if (!boolean(&o.static_groups, flag == "--static-groups")) return Usage("bad value for " + flag);
      continue;
    }
    if (flag == "--true-sequential" || flag == "--no-true-sequential") {
      if (!boolean(&o.true_sequential, flag == "--true-sequential")) return Usage("bad value for " + flag);
      continue;
    }
    if (flag == "--act-group-aware" || flag == "--no-act-group-aware") {
      if (!boolean(&tmp, flag == "--act-group-aware")) return Usage("bad value for " + flag);
      o.act_group_aware = tmp;
      continue;
    }
    if (std::find(valued.begin(), valued.end(), flag) == valued.end()) {
      return Usage("unknown flag \"" + args[i] + "\"");
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return Usage(flag + " needs a value");
      value = args[++i];
    }
    auto as_int = [&](int* out) { return absl::SimpleAtoi(value, out); };
    auto as_double = [&](double* out) { return absl::SimpleAtod(value, out); };
    bool ok = true;
    if (flag == "--model") o.model_dir = value;
    else if (flag == "--output") o.output_dir = value;
    else if (flag == "--bits") ok = as_int(&o.bits);
    else if (flag == "--group-size") ok = as_int(&o.group_size);
    else if (flag == "--damp-percent") ok = as_double(&o.damp_percent);
    else if (flag == "--damp-auto-increment") ok = as_double(&o.damp_auto_increment);
    else if (flag == "--format") o.format = value;
    else if (flag == "--dataset") o.calibration.dataset = value;
    else if (flag == "--calibration-file") o.calibration.file = value;
    else if (flag == "--nsamples") ok = as_int(&o.calibration.nsamples);
    else if (flag == "--seqlen") ok = as_int(&o.calibration.seqlen);
    else if (flag == "--seed") ok = absl::SimpleAtoi(value, &o.calibration.seed);
    else if (flag == "--eval") {
      o.eval_datasets.clear();
      for (absl::string_view s : absl::StrSplit(value, ',', absl::SkipEmpty())) o.eval_datasets.emplace_back(s);
    } else if (flag == "--eval-seqlen") ok = as_int(&o.eval_seqlen);
    else if (flag == "--data-dir") o.data_dir = value;
    else if (flag == "--device") o.device = value;
    else if (flag == "--batch-size") ok = as_int(&o.batch_size);
    else if (flag == "--max-shard-bytes") ok = absl::SimpleAtoi(value, &o.max_shard_bytes);
    else if (flag == "--report") report_path = value;
    if (!ok) return Usage("bad value \"" + value + "\" for " + flag);
  }
  if (o.model_dir.empty()) return Usage("--model is required");
  if (o.output_dir.empty()) return Usage("--output is required");

  CancelToken cancel;
  g_cancel = &cancel;
  auto previous = std::signal(SIGINT, OnSigint);
  PrintingSink sink;
  absl::StatusOr<QuantizeReport> report = RunQuantizeJob(o, sink, cancel);
  std::signal(SIGINT, previous);
  g_cancel = nullptr;
  if (!report.ok()) {
    std::fprintf(stderr, "gptq-worker quantize: %s\n", report.status().ToString().c_str());
    return absl::IsInvalidArgument(report.status()) ? 2 : 1;
  }
  for (const PerplexityReport& p : report->perplexity) {
    std::printf("perplexity %s: before %s after %s\n", p.dataset.c_str(),
                p.before ? absl::StrFormat("%.4f", *p.before).c_str() : "-",
                p.after ? absl::StrFormat("%.4f", *p.after).c_str() : "-");
  }
  std::printf("done in %.1fs: %s\n", report->seconds.count("total") ? report->seconds.at("total") : 0.0,
              report->output_dir.c_str());
  if (!report_path.empty()) {
    std::ofstream out(report_path, std::ios::trunc);
    out << ReportToJson(*report) << "\n";
    if (!out.good()) {
      std::fprintf(stderr, "gptq-worker quantize: cannot write report %s\n", report_path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace gptq::runtime
