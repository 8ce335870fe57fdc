#include "metrics.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gptq::server {
namespace {

std::string FormatDouble(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  return absl::StrFormat("%.17g", v);
}

// Escapes a label value per the exposition format.
std::string Escape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Header(std::string* out, absl::string_view name, absl::string_view type,
            absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

const char* GrpcCodeName(int code) {
  static const char* kNames[] = {
      "OK",        "CANCELLED",          "UNKNOWN",          "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",   "ALREADY_EXISTS",   "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",      "DATA_LOSS",
      "UNAUTHENTICATED"};
  if (code < 0 || code > 16) return "UNKNOWN";
  return kNames[code];
}

const std::vector<double>& Metrics::DurationBuckets() {
  static const auto* kBuckets = new std::vector<double>{
      1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800};
  return *kBuckets;
}

Metrics::Metrics() = default;

void Metrics::RecordRpc(absl::string_view service, absl::string_view method, int code) {
  absl::MutexLock lock(&mu_);
  ++rpcs_[{std::string(service), std::string(method)}][code];
  --rpcs_in_flight_;
}

void Metrics::RpcStarted() {
  absl::MutexLock lock(&mu_);
  ++rpcs_in_flight_;
}

int64_t Metrics::rpcs_in_flight() const {
  absl::MutexLock lock(&mu_);
  return rpcs_in_flight_;
}

void Metrics::ObserveJobDuration(absl::string_view outcome, double seconds) {
  absl::MutexLock lock(&mu_);
  Histogram& h = durations_[std::string(outcome)];
  const auto& b = DurationBuckets();
  if (h.counts.empty()) h.counts.assign(b.size() + 1, 0);
  size_t i = 0;
  while (i < b.size() && seconds > b[i]) ++i;
  ++h.counts[i];
  h.sum += seconds;
  ++h.count;
}

void Metrics::RecordJobCreated() {
  absl::MutexLock lock(&mu_);
  ++jobs_created_;
}

void Metrics::RecordRequeue(absl::string_view reason) {
  absl::MutexLock lock(&mu_);
  ++requeues_[std::string(reason)];
}

void Metrics::WatcherStarted() {
  absl::MutexLock lock(&mu_);
  ++watchers_;
}

void Metrics::WatcherEnded() {
  absl::MutexLock lock(&mu_);
  --watchers_;
}

int64_t Metrics::watchers() const {
  absl::MutexLock lock(&mu_);
  return watchers_;
}

std::string Metrics::Render(const MetricsSnapshot& snap) const {
  absl::MutexLock lock(&mu_);
  std::string out;
  Header(&out, "gptq_jobs", "gauge", "Jobs in the store by state.");
  for (const auto& [state, n] : snap.jobs_by_state) {
    absl::StrAppend(&out, "gptq_jobs{state=\"", Escape(state), "\"} ", n, "\n");
  }
  Header(&out, "gptq_queue_depth", "gauge", "Jobs waiting for a worker.");
  absl::StrAppend(&out, "gptq_queue_depth ", snap.queue_depth, "\n");
  Header(&out, "gptq_workers_connected", "gauge", "Registered workers that are alive.");
  absl::StrAppend(&out, "gptq_workers_connected ", snap.workers_connected, "\n");
  Header(&out, "gptq_workers_busy", "gauge", "Alive workers holding a job lease.");
  absl::StrAppend(&out, "gptq_workers_busy ", snap.workers_busy, "\n");
  Header(&out, "gptq_worker_held_calls", "gauge",
         "LeaseJob and Heartbeat calls held open by the server (long polls).");
  absl::StrAppend(&out, "gptq_worker_held_calls ", snap.held_calls, "\n");
  Header(&out, "gptq_rpcs_in_flight", "gauge", "RPCs being handled (including held calls).");
  absl::StrAppend(&out, "gptq_rpcs_in_flight ", rpcs_in_flight_, "\n");
  Header(&out, "gptq_watchers", "gauge", "Open WatchJob streams.");
  absl::StrAppend(&out, "gptq_watchers ", watchers_, "\n");
  Header(&out, "gptq_jobs_created_total", "counter", "Jobs created since the server started.");
  absl::StrAppend(&out, "gptq_jobs_created_total ", jobs_created_, "\n");
  Header(&out, "gptq_job_requeues_total", "counter",
         "Job leases lost and the job requeued, by reason.");
  for (const char* reason : {"worker_lost", "restart", "shutdown", "worker_released"}) {
    auto it = requeues_.find(reason);
    absl::StrAppend(&out, "gptq_job_requeues_total{reason=\"", reason, "\"} ",
                    it == requeues_.end() ? 0 : it->second, "\n");
  }
  Header(&out, "gptq_rpcs_total", "counter", "Finished RPCs by service, method and status code.");
  for (const auto& [key, by_code] : rpcs_) {
    for (const auto& [code, n] : by_code) {
      absl::StrAppend(&out, "gptq_rpcs_total{service=\"", Escape(key.first), "\",method=\"",
                      Escape(key.second), "\",code=\"", GrpcCodeName(code), "\"} ", n, "\n");
    }
  }
  Header(&out, "gptq_job_duration_seconds", "histogram",
         "Wall time of a job's last attempt, from lease to terminal state, by outcome.");
  const auto& buckets = DurationBuckets();
  for (const auto& [outcome, h] : durations_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= buckets.size(); ++i) {
      cumulative += h.counts[i];
      const std::string le = i < buckets.size() ? FormatDouble(buckets[i]) : "+Inf";
      absl::StrAppend(&out, "gptq_job_duration_seconds_bucket{outcome=\"", Escape(outcome),
                      "\",le=\"", le, "\"} ", cumulative, "\n");
    }
    absl::StrAppend(&out, "gptq_job_duration_seconds_sum{outcome=\"", Escape(outcome), "\"} ",
                    FormatDouble(h.sum), "\n");
    absl::StrAppend(&out, "gptq_job_duration_seconds_count{outcome=\"", Escape(outcome), "\"} ",
                    h.count, "\n");
  }
  return out;
}

}  // namespace gptq::server
