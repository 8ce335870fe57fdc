// gptqctl's text rendering: progress bars, per-layer progress lines, event lines and tables.
// Pure functions of the protobuf messages (no I/O), so tests check the exact text.
#ifndef GPTQ_CLIENT_RENDER_H_
#define GPTQ_CLIENT_RENDER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gptq/v1/quantization.pb.h"

namespace gptq::client {

// "[#####-----]" with `width` cells between the brackets; fraction is clamped to [0, 1].
std::string ProgressBar(double fraction, int width);

// "1h02m", "3m05s", "42s", "0.8s".
std::string FormatDuration(double seconds);

// "1.5 GiB", "12.0 MiB", "640 B".
std::string FormatBytes(int64_t bytes);

// Follows ModuleProgress events and renders progress by decoder layer.
//   - OnModule(): feed each module event; returns the line for a layer that just finished
//     (detected when an event for a later layer arrives), for non-TTY output (one line per
//     layer).
//   - Finish(): the line for the last layer seen, if not yet returned (call when a non-module
//     event such as an "after" perplexity or a terminal state arrives).
//   - StatusLine(): the one-line live view for a TTY (redrawn with '\r').
// Not thread-safe.
class LayerProgress {
 public:
  explicit LayerProgress(int bar_width = 30) : bar_width_(bar_width) {}

  std::optional<std::string> OnModule(const gptq::v1::ModuleProgress& m);
  std::optional<std::string> Finish();
  std::string StatusLine() const;

  // The stage shown in StatusLine() (e.g. "evaluate"), set from log or state events.
  void set_stage(std::string stage) { stage_ = std::move(stage); }
  double fraction() const { return fraction_; }

 private:
  std::string LayerLine() const;

  int bar_width_;
  bool has_layer_ = false;  // a layer is open (its line not yet returned)
  int layer_ = -1;
  int num_layers_ = 0;
  int modules_in_layer_ = 0;
  double loss_in_layer_ = 0.0;
  double seconds_in_layer_ = 0.0;
  int rtn_in_layer_ = 0;
  std::string last_module_;
  double fraction_ = 0.0;
  std::optional<double> eta_seconds_;
  std::string stage_;
};

// One human-readable line for an event, e.g.
// "#3 state QUEUED -> RUNNING (leased by worker w-1) attempt 1".
std::string FormatEvent(const gptq::v1::JobEvent& event);

// Multi-line description of a job (gptqctl get).
std::string FormatJob(const gptq::v1::Job& job);

// A table of jobs, one per line, with a header (gptqctl list).
std::string FormatJobTable(const std::vector<gptq::v1::Job>& jobs);

// The perplexity before/after table and the output location of a finished job, e.g.
//   dataset       seqlen    tokens    before     after   change
//   tinystories      256     65536    5.1234    5.4567   +6.51%
//   output: /out/x (5 files, 12.0 MiB)
std::string FormatResults(const gptq::v1::Job& job);

// "job ID failed: FAILED_PRECONDITION (9): message" / "job ID was cancelled".
std::string FormatTerminalProblem(const gptq::v1::Job& job);

// Canonical gRPC code name of a google.rpc.Code number ("NOT_FOUND"), or "CODE_n".
std::string CodeName(int code);

}  // namespace gptq::client

#endif  // GPTQ_CLIENT_RENDER_H_
