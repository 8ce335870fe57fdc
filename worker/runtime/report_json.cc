// ReportToJson: the --report file of `gptq-worker quantize`.
#include <nlohmann/json.hpp>

#include "quantize_job.h"

namespace gptq::runtime {

std::string ReportToJson(const QuantizeReport& report) {
  nlohmann::json j;
  j["output_dir"] = report.output_dir;
  j["device"] = report.device;
  nlohmann::json before = nlohmann::json::object(), after = nlohmann::json::object();
  nlohmann::json datasets = nlohmann::json::array();
  for (const PerplexityReport& p : report.perplexity) {
    if (p.before) before[p.dataset] = *p.before;
    if (p.after) after[p.dataset] = *p.after;
    nlohmann::json d = {{"dataset", p.dataset}, {"seqlen", p.seqlen}, {"num_tokens", p.num_tokens}};
    d["before"] = p.before ? nlohmann::json(*p.before) : nlohmann::json(nullptr);
    d["after"] = p.after ? nlohmann::json(*p.after) : nlohmann::json(nullptr);
    datasets.push_back(d);
  }
  j["perplexity"] = {{"before", before}, {"after", after}, {"datasets", datasets}};
  nlohmann::json modules = nlohmann::json::array();
  for (const ModuleReport& m : report.modules) {
    modules.push_back({{"layer", m.layer},
                       {"name", m.name},
                       {"rows", m.rows},
                       {"columns", m.columns},
                       {"loss", m.loss},
                       {"damp", m.damp},
                       {"fallback", m.rtn_fallback},
                       {"unquantized", m.unquantized},
                       {"seconds", m.seconds}});
  }
  j["modules"] = modules;
  nlohmann::json seconds = nlohmann::json::object();
  for (const char* key : {"load", "calibrate", "quantize", "pack", "write", "evaluate", "total"}) {
    auto it = report.seconds.find(key);
    seconds[key] = it == report.seconds.end() ? 0.0 : it->second;
  }
  for (const auto& [key, value] : report.seconds) seconds[key] = value;
  j["seconds"] = seconds;
  j["peak_gpu_bytes"] = report.peak_gpu_bytes;
  nlohmann::json files = nlohmann::json::array();
  for (const OutputFileReport& f : report.files) {
    files.push_back({{"path", f.path}, {"size_bytes", f.size_bytes}, {"sha256", f.sha256}});
  }
  j["files"] = files;
  return j.dump(2);
}

}  // namespace gptq::runtime
