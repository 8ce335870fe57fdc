#include "render.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli.h"

namespace gptq::client {
namespace {

std::string FormatTimestamp(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixSeconds(t.seconds()),
                          absl::UTCTimeZone());
}

std::string FormatOptionalDouble(bool has, double v) {
  return has ? absl::StrFormat("%.4f", v) : std::string("-");
}

}  // namespace

std::string ProgressBar(double fraction, int width) {
  if (!(fraction >= 0.0)) fraction = 0.0;  // also catches NaN
  fraction = std::min(fraction, 1.0);
  const int filled = static_cast<int>(std::floor(fraction * width + 1e-9));
  return absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '-'), "]");
}

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0.0)) seconds = 0.0;
  if (seconds < 10.0) return absl::StrFormat("%.1fs", seconds);
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrFormat("%d B", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes) / 1024.0;
  int u = 0;
  while (v >= 1024.0 && u < 3) {
    v /= 1024.0;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, units[u]);
}

std::optional<std::string> LayerProgress::OnModule(const gptq::v1::ModuleProgress& m) {
  std::optional<std::string> done;
  if (has_layer_ && m.layer() != layer_) done = LayerLine();
  if (!has_layer_ || m.layer() != layer_) {
    has_layer_ = true;
    layer_ = m.layer();
    modules_in_layer_ = 0;
    loss_in_layer_ = 0.0;
    seconds_in_layer_ = 0.0;
    rtn_in_layer_ = 0;
  }
  num_layers_ = m.num_layers();
  ++modules_in_layer_;
  loss_in_layer_ += m.loss();
  seconds_in_layer_ += m.seconds();
  if (m.rtn_fallback()) ++rtn_in_layer_;
  last_module_ = m.module();
  fraction_ = m.fraction();
  if (m.has_eta_seconds()) {
    eta_seconds_ = m.eta_seconds();
  } else {
    eta_seconds_.reset();
  }
  stage_ = "quantize";
  return done;
}

std::optional<std::string> LayerProgress::Finish() {
  if (!has_layer_) return std::nullopt;
  has_layer_ = false;
  return LayerLine();
}

std::string LayerProgress::LayerLine() const {
  std::string line = absl::StrFormat("layer %*d/%d %s %3.0f%%  %d modules  loss %.4g  %s",
                                     num_layers_ >= 10 ? 2 : 1, layer_ + 1, num_layers_,
                                     ProgressBar(fraction_, bar_width_), fraction_ * 100.0,
                                     modules_in_layer_, loss_in_layer_,
                                     FormatDuration(seconds_in_layer_));
  if (rtn_in_layer_ > 0) absl::StrAppend(&line, "  rtn-fallback ", rtn_in_layer_);
  if (eta_seconds_.has_value()) absl::StrAppend(&line, "  eta ", FormatDuration(*eta_seconds_));
  return line;
}

std::string LayerProgress::StatusLine() const {
  std::string line;
  if (layer_ >= 0) {
    line = absl::StrFormat("layer %d/%d %s %3.0f%%", layer_ + 1, num_layers_,
                           ProgressBar(fraction_, bar_width_), fraction_ * 100.0);
  } else {
    line = absl::StrFormat("%s %3.0f%%", ProgressBar(fraction_, bar_width_), fraction_ * 100.0);
  }
  if (!stage_.empty()) absl::StrAppend(&line, " ", stage_);
  if (!last_module_.empty() && stage_ == "quantize") absl::StrAppend(&line, " ", last_module_);
  if (eta_seconds_.has_value()) absl::StrAppend(&line, " eta ", FormatDuration(*eta_seconds_));
  return line;
}

std::string FormatEvent(const gptq::v1::JobEvent& e) {
  std::string head = absl::StrCat("#", e.sequence(), " ");
  switch (e.kind_case()) {
    case gptq::v1::JobEvent::kStateChange: {
      const auto& s = e.state_change();
      std::string line = absl::StrCat(head, "state ", JobStateName(s.from()), " -> ",
                                      JobStateName(s.to()));
      if (!s.reason().empty()) absl::StrAppend(&line, " (", s.reason(), ")");
      if (s.attempt() > 0) absl::StrAppend(&line, " attempt ", s.attempt());
      return line;
    }
    case gptq::v1::JobEvent::kModuleProgress: {
      const auto& m = e.module_progress();
      std::string line = absl::StrFormat(
          "%smodule layer %d/%d %s [%dx%d] loss %.6g damp %.3g samples %d %s %.0f%%", head,
          m.layer() + 1, m.num_layers(), m.module().empty() ? "(layer)" : m.module(), m.rows(),
          m.columns(), m.loss(), m.damp(), m.samples(), FormatDuration(m.seconds()),
          m.fraction() * 100.0);
      if (m.rtn_fallback()) absl::StrAppend(&line, " rtn-fallback");
      if (m.unquantized()) absl::StrAppend(&line, " unquantized");
      if (m.has_eta_seconds()) absl::StrAppend(&line, " eta ", FormatDuration(m.eta_seconds()));
      return line;
    }
    case gptq::v1::JobEvent::kPerplexity: {
      const auto& p = e.perplexity();
      return absl::StrFormat("%sperplexity %s %s = %.4f (seqlen %d, %d tokens)", head,
                             p.dataset(), p.phase(), p.value(), p.seqlen(), p.num_tokens());
    }
    case gptq::v1::JobEvent::kLog: {
      const auto& l = e.log();
      const char* level = "info";
      if (l.level() == gptq::v1::LogLine::LEVEL_WARNING) level = "warning";
      if (l.level() == gptq::v1::LogLine::LEVEL_ERROR) level = "error";
      return absl::StrCat(head, "log ", level, ": ", l.message());
    }
    case gptq::v1::JobEvent::kArtifact: {
      const auto& f = e.artifact().file();
      return absl::StrCat(head, "wrote ", f.path(), " (", FormatBytes(f.size_bytes()), ")");
    }
    default:
      return absl::StrCat(head, "(empty event)");
  }
}

std::string FormatJob(const gptq::v1::Job& job) {
  std::string out;
  const auto& spec = job.spec();
  absl::StrAppend(&out, "id:         ", job.id(), "\n");
  absl::StrAppend(&out, "state:      ", JobStateName(job.state()),
                  job.cancel_requested() ? " (cancel requested)" : "", "\n");
  absl::StrAppend(&out, "model:      ", spec.model_uri(), "\n");
  absl::StrAppend(&out, "output:     ", spec.output_uri(), "\n");
  std::string quant =
      spec.has_bits() ? absl::StrCat(spec.bits(), "-bit") : std::string("4-bit (default)");
  if (spec.has_group_size()) absl::StrAppend(&quant, " group ", spec.group_size());
  absl::StrAppend(&out, "quant:      ", quant, "\n");
  if (!job.labels().empty()) {
    std::vector<std::string> kv;
    for (const auto& [k, v] : job.labels()) kv.push_back(absl::StrCat(k, "=", v));
    std::sort(kv.begin(), kv.end());
    absl::StrAppend(&out, "labels:     ", absl::StrJoin(kv, ","), "\n");
  }
  if (job.priority() != 0) absl::StrAppend(&out, "priority:   ", job.priority(), "\n");
  if (!job.request_id().empty()) absl::StrAppend(&out, "request_id: ", job.request_id(), "\n");
  absl::StrAppend(&out, "created:    ", FormatTimestamp(job.create_time()), "\n");
  if (job.has_start_time()) {
    absl::StrAppend(&out, "started:    ", FormatTimestamp(job.start_time()), "\n");
  }
  if (job.has_end_time()) {
    absl::StrAppend(&out, "ended:      ", FormatTimestamp(job.end_time()), "\n");
  }
  if (job.attempt() > 0) absl::StrAppend(&out, "attempt:    ", job.attempt(), "\n");
  if (!job.worker_id().empty()) absl::StrAppend(&out, "worker:     ", job.worker_id(), "\n");
  if (job.state() == gptq::v1::JOB_STATE_RUNNING && job.has_progress()) {
    const auto& p = job.progress();
    absl::StrAppend(&out, "progress:   ",
                    absl::StrFormat("layer %d/%d %s %.0f%% %s", p.layer() + 1, p.num_layers(),
                                    ProgressBar(p.fraction(), 20), p.fraction() * 100.0,
                                    p.stage()));
    if (p.has_eta_seconds()) absl::StrAppend(&out, " eta ", FormatDuration(p.eta_seconds()));
    absl::StrAppend(&out, "\n");
  }
  if (job.state() == gptq::v1::JOB_STATE_FAILED && job.has_error()) {
    absl::StrAppend(&out, "error:      ", CodeName(job.error().code()), ": ",
                    job.error().message(), "\n");
  }
  if (job.state() == gptq::v1::JOB_STATE_SUCCEEDED && job.has_results()) {
    absl::StrAppend(&out, FormatResults(job));
  }
  return out;
}

std::string FormatJobTable(const std::vector<gptq::v1::Job>& jobs) {
  std::string out = absl::StrFormat("%-24s %-10s %-6s %-19s %s\n", "ID", "STATE", "DONE",
                                    "CREATED", "MODEL");
  for (const auto& job : jobs) {
    std::string done = "-";
    if (job.state() == gptq::v1::JOB_STATE_SUCCEEDED) {
      done = "100%";
    } else if (job.state() == gptq::v1::JOB_STATE_RUNNING) {
      done = absl::StrFormat("%.0f%%", job.progress().fraction() * 100.0);
    }
    absl::StrAppend(&out, absl::StrFormat("%-24s %-10s %-6s %-19s %s\n", job.id(),
                                          JobStateName(job.state()), done,
                                          FormatTimestamp(job.create_time()),
                                          job.spec().model_uri()));
  }
  return out;
}

std::string FormatResults(const gptq::v1::Job& job) {
  const auto& r = job.results();
  std::string out;
  if (r.perplexity_size() > 0) {
    absl::StrAppend(&out, absl::StrFormat("%-14s %7s %10s %10s %10s %8s\n", "dataset", "seqlen",
                                          "tokens", "before", "after", "change"));
    for (const auto& p : r.perplexity()) {
      std::string change = "-";
      if (p.has_before() && p.has_after() && p.before() > 0) {
        change = absl::StrFormat("%+.2f%%", (p.after() / p.before() - 1.0) * 100.0);
      }
      absl::StrAppend(&out, absl::StrFormat("%-14s %7d %10d %10s %10s %8s\n", p.dataset(),
                                            p.seqlen(), p.num_tokens(),
                                            FormatOptionalDouble(p.has_before(), p.before()),
                                            FormatOptionalDouble(p.has_after(), p.after()),
                                            change));
    }
  } else {
    absl::StrAppend(&out, "perplexity: not evaluated (no --eval datasets)\n");
  }
  if (r.has_losses() && r.losses().num_modules() > 0) {
    const auto& l = r.losses();
    absl::StrAppend(&out, absl::StrFormat("losses: %d modules, total %.6g, max %.6g (%s)",
                                          l.num_modules(), l.total_loss(), l.max_loss(),
                                          l.max_loss_module()));
    if (l.rtn_fallback_modules_size() > 0) {
      absl::StrAppend(&out, ", rtn fallback: ", absl::StrJoin(l.rtn_fallback_modules(), ","));
    }
    if (l.unquantized_modules_size() > 0) {
      absl::StrAppend(&out, ", unquantized: ", absl::StrJoin(l.unquantized_modules(), ","));
    }
    absl::StrAppend(&out, "\n");
  }
  int64_t total = 0;
  for (const auto& f : r.files()) total += f.size_bytes();
  absl::StrAppend(&out, "output: ", r.output_location().empty() ? job.spec().output_uri()
                                                                 : r.output_location());
  absl::StrAppend(&out, " (", r.files_size(), r.files_size() == 1 ? " file, " : " files, ",
                  FormatBytes(total), ")");
  if (r.seconds() > 0) absl::StrAppend(&out, " in ", FormatDuration(r.seconds()));
  absl::StrAppend(&out, "\n");
  return out;
}

std::string FormatTerminalProblem(const gptq::v1::Job& job) {
  if (job.state() == gptq::v1::JOB_STATE_CANCELLED) {
    return absl::StrCat("job ", job.id(), " was cancelled");
  }
  if (job.state() == gptq::v1::JOB_STATE_FAILED) {
    return absl::StrCat("job ", job.id(), " failed: ", CodeName(job.error().code()), " (",
                        job.error().code(), "): ", job.error().message());
  }
  return absl::StrCat("job ", job.id(), " is ", JobStateName(job.state()));
}

std::string CodeName(int code) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS",    "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",       "DATA_LOSS",
      "UNAUTHENTICATED"};
  if (code >= 0 && code <= 16) return kNames[code];
  return absl::StrCat("CODE_", code);
}

}  // namespace gptq::client
