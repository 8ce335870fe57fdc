// Every Prometheus metric of gptq-server is defined here and rendered in the text
// exposition format (version 0.0.4) by our own code. Base units; low-cardinality labels only
// (never a job id). Thread-safe. No gRPC headers.
#ifndef GPTQ_SERVER_METRICS_H_
#define GPTQ_SERVER_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace gptq::server {

// Gauges read from the job manager at scrape time.
struct MetricsSnapshot {
  // Job counts keyed by lower-case state name ("queued", "running", ...); all states present.
  std::map<std::string, int64_t> jobs_by_state;
  int64_t queue_depth = 0;
  int64_t workers_connected = 0;
  int64_t workers_busy = 0;
  // LeaseJob / Heartbeat calls the server is holding open.
  int64_t held_calls = 0;
};

class Metrics {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // One finished RPC: `method` is the bare method name ("CreateJob"), `code` the gRPC code.
  void RecordRpc(absl::string_view service, absl::string_view method, int code);
  // An RPC handler was entered; RecordRpc ends it. Their difference is rpcs_in_flight().
  void RpcStarted();
  int64_t rpcs_in_flight() const;
  // A job reached a terminal state after running for `seconds` (its last attempt).
  void ObserveJobDuration(absl::string_view outcome, double seconds);
  void RecordJobCreated();
  // A job's lease was lost (worker gone / restart / shutdown) and the job requeued.
  void RecordRequeue(absl::string_view reason);
  void WatcherStarted();
  void WatcherEnded();
  int64_t watchers() const;

  // Text exposition of every metric.
  std::string Render(const MetricsSnapshot& snapshot) const;

  // Histogram bucket upper bounds of gptq_job_duration_seconds.
  static const std::vector<double>& DurationBuckets();

 private:
  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket (non-cumulative), +Inf last
    double sum = 0;
    uint64_t count = 0;
  };
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, std::map<int, uint64_t>> rpcs_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, Histogram> durations_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> requeues_ ABSL_GUARDED_BY(mu_);
  uint64_t jobs_created_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t watchers_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t rpcs_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

// The canonical upper-case name of a gRPC status code ("OK", "NOT_FOUND", ...).
const char* GrpcCodeName(int code);

}  // namespace gptq::server

#endif  // GPTQ_SERVER_METRICS_H_
