// The runtime's plain C++ entry point: quantize one model directory into a GPTQ checkpoint,
// reporting progress through an interface. Includes neither Torch nor protobuf/gRPC headers,
// so the worker agent (gRPC glue) and the standalone CLI can both call it.
#ifndef GPTQ_WORKER_RUNTIME_QUANTIZE_JOB_H_
#define GPTQ_WORKER_RUNTIME_QUANTIZE_JOB_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gptq::runtime {

// Calibration data: exactly one source is used, in this order of precedence:
// token_ids, texts, file, dataset (default "c4").
struct CalibrationOptions {
  std::string dataset = "c4";           // "c4", "wikitext2" (valid split), "tinystories", "brown"
  std::vector<std::string> texts;       // inline texts
  std::string file;                     // a UTF-8 text file
  std::vector<int32_t> token_ids;       // raw token ids (for models without a tokenizer)
  int nsamples = 128;
  int seqlen = 0;                       // 0: model context length, capped at 2048
  uint64_t seed = 0;
};

struct QuantizeOptions {
  std::string model_dir;                // HF checkpoint directory
  std::string output_dir;               // must not exist or be empty; written atomically
  int bits = 4;
  int group_size = 128;
  double damp_percent = 0.1;
  double damp_auto_increment = 0.01;
  bool sym = true;
  bool desc_act = false;
  std::optional<bool> act_group_aware;  // default: !desc_act (forced false with desc_act)
  bool static_groups = false;
  bool true_sequential = true;
  std::string format = "gptq";          // "gptq" (v1) or "gptq_v2"; sym=false forces gptq_v2
  CalibrationOptions calibration;
  std::vector<std::string> eval_datasets;  // "wikitext2" = test split
  int eval_seqlen = 0;                  // 0: calibration seqlen
  std::string data_dir;                 // dataset root; empty: $GPTQ_DATA_DIR
  std::string device = "auto";          // "auto", "cpu", "cuda", "cuda:N"
  int batch_size = 1;
  int64_t max_shard_bytes = int64_t{4} << 30;
};

// One progress event. `kind` says which fields are meaningful.
struct ProgressEvent {
  enum class Kind { kStage, kModule, kPerplexity, kLog, kArtifact };
  Kind kind = Kind::kLog;
  std::string stage;          // kStage: "load", "calibrate", "quantize", "pack", "write", "evaluate"
  int layer = -1;             // kModule/kStage: 0-based decoder layer (-1: none)
  int num_layers = 0;
  std::string module;         // kModule: e.g. "self_attn.q_proj"
  int rows = 0, columns = 0;  // kModule: out/in features
  double loss = 0.0;
  double damp = 0.0;
  bool rtn_fallback = false;
  bool unquantized = false;   // kModule: shape cannot be packed, left in fp16
  int samples = 0;
  double seconds = 0.0;
  double fraction = 0.0;      // whole job done, [0, 1]
  double eta_seconds = -1.0;  // < 0: unknown
  std::string dataset;        // kPerplexity
  std::string phase;          // kPerplexity: "before" / "after"
  double value = 0.0;         // kPerplexity
  int64_t num_tokens = 0;     // kPerplexity
  int seqlen = 0;             // kPerplexity: window length used
  std::string message;        // kLog; kArtifact: relative path
  std::string level = "info"; // kLog: "info", "warning", "error"
  int64_t size_bytes = 0;     // kArtifact
  std::string sha256;         // kArtifact
};

// Receives progress. Called from the quantizing thread; implementations must be quick.
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void OnEvent(const ProgressEvent& event) = 0;
};

// Cooperative cancellation, checked between modules and evaluation windows.
class CancelToken {
 public:
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

 private:
  std::atomic<bool> cancelled_{false};
};

struct ModuleReport {
  int layer = 0;
  std::string name;           // full tensor prefix, e.g. "model.layers.0.self_attn.q_proj"
  int rows = 0, columns = 0;
  double loss = 0.0;
  double damp = 0.0;
  bool rtn_fallback = false;
  bool unquantized = false;
  double seconds = 0.0;
};

struct PerplexityReport {
  std::string dataset;
  std::optional<double> before, after;
  int seqlen = 0;
  int64_t num_tokens = 0;
};

struct OutputFileReport {
  std::string path;  // relative to output_dir
  int64_t size_bytes = 0;
  std::string sha256;
};

struct QuantizeReport {
  std::vector<ModuleReport> modules;
  std::vector<PerplexityReport> perplexity;
  std::vector<OutputFileReport> files;
  std::string output_dir;     // absolute
  std::map<std::string, double> seconds;  // load, calibrate, quantize, pack, write, evaluate, total
  int64_t peak_gpu_bytes = 0;
  std::string device;         // device actually used
};

// Runs the whole pipeline. Errors: InvalidArgument (bad options), NotFound / FailedPrecondition
// (model or data unreadable, with the file and tensor named), ResourceExhausted (out of device
// memory), Cancelled (token fired; nothing left in output_dir). Never throws.
absl::StatusOr<QuantizeReport> RunQuantizeJob(const QuantizeOptions& options, ProgressSink& sink,
                                              const CancelToken& cancel);

// The report as JSON (the --report file of `gptq-worker quantize`).
std::string ReportToJson(const QuantizeReport& report);

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_QUANTIZE_JOB_H_
