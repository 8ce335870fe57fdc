// Conversions between the worker protocol (gptq.v1 / gptq.worker.v1 messages) and the runtime's
// plain C++ types (worker/runtime/quantize_job.h). No Torch.
#ifndef GPTQ_WORKER_AGENT_CONVERSIONS_H_
#define GPTQ_WORKER_AGENT_CONVERSIONS_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gptq/v1/quantization.pb.h"
#include "worker/runtime/quantize_job.h"

namespace gptq::agent {

// Where the job runs: settings of this worker, not of the job.
struct JobPlacement {
  std::string model_dir;   // local model directory (already resolved)
  std::string output_dir;  // local output directory
  std::string data_dir;    // dataset root ("" = runtime default)
  std::string device;      // "auto", "cpu", "cuda:N"
};

// Fills QuantizeOptions from a spec, taking optimum's GPTQConfig defaults for unset fields:
// bits 4, group_size 128, damp 0.1, damp_auto_increment 0.01, sym true, desc_act false,
// act_group_aware = !desc_act (forced false with desc_act), static_groups false,
// true_sequential true, format gptq (gptq_v2 when !sym), calibration dataset "c4",
// nsamples 128, seqlen 0 (model default), seed 0, batch_size 1, max shard 4 GiB, no eval.
// Checks each field's documented range; InvalidArgument names the field and the rule.
absl::StatusOr<runtime::QuantizeOptions> SpecToOptions(const gptq::v1::QuantizationSpec& spec,
                                                       const JobPlacement& placement);

// A local path from a spec URI: "file:///x" → "/x", a plain path unchanged; other schemes
// (hf:// is resolved elsewhere) are InvalidArgument.
absl::StatusOr<std::string> LocalPathFromUri(const std::string& uri, const std::string& field);

// One progress event as a job event; nullopt for kinds the event log does not carry.
// Stage changes become info log lines ("stage quantize: layer 3/32").
std::optional<gptq::v1::JobEvent> ToJobEvent(const runtime::ProgressEvent& event);

// Folds an event into the progress snapshot (stage, layer, fraction, eta).
void UpdateProgress(const runtime::ProgressEvent& event, gptq::v1::JobProgress* progress);

// The results message of a finished job: perplexities, loss summary (GPTQ modules only in the
// totals; RTN fallbacks and unquantized modules listed by name), location, files, seconds.
gptq::v1::JobResults ReportToResults(const runtime::QuantizeReport& report, double wall_seconds);

// The JobError for a failed run. The code follows the status, except that NotFound (a model
// or data file missing) becomes FAILED_PRECONDITION (the job cannot run as specified), as does
// InvalidArgument whose message names a file under `model_dir` (the loader rejecting the
// model's config.json or tensors: a bad model, not a bad request), and OK (never expected)
// becomes INTERNAL.
gptq::v1::JobError StatusToJobError(const absl::Status& status, const std::string& model_dir = "");

}  // namespace gptq::agent

#endif  // GPTQ_WORKER_AGENT_CONVERSIONS_H_
