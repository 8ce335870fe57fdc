// The server core: jobs, their event logs, the scheduler (priority FIFO queue, leases with
// fencing epochs, heartbeat expiry, retries) and watchers. Works on the generated protobuf
// messages; knows nothing of gRPC transport. Every state change is written to the JobStore
// before it becomes visible in memory.
//
// Threading: all public methods are thread-safe. Completion callbacks (LeaseJob, Heartbeat)
// and EventSink notifications run on the calling thread after the internal lock is released
// (possibly the thread of another RPC or of Tick()).
//
// Restart rule: a job stored RUNNING when the server starts keeps its lease epoch for 3
// heartbeat periods. Any report carrying that job id and epoch (from the old worker, which
// re-registers) re-adopts the lease; otherwise the job is requeued as a lost attempt.
#ifndef GPTQ_SERVER_JOB_MANAGER_H_
#define GPTQ_SERVER_JOB_MANAGER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gptq/v1/quantization.pb.h"
#include "gptq/worker/v1/worker.pb.h"
#include "job_store.h"
#include "metrics.h"
#include "validation.h"

namespace gptq::server {

struct ManagerOptions {
  // Worker heartbeat period; a worker silent for 3 periods loses its lease.
  absl::Duration heartbeat_period = absl::Seconds(2);
  // Attempts per job before a lost worker fails it.
  int max_attempts = 3;
  ValidationOptions validation;
  // Receives one line per job state change and worker arrival/loss; null: silent.
  std::function<void(const std::string&)> log;
};

// Told (once per registration) that a job's log grew or the job/manager changed state.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void OnEventsAvailable() = 0;
};

// A slice of a job's event log.
struct EventBatch {
  std::vector<std::shared_ptr<const gptq::v1::JobEvent>> events;
  // The job is terminal and every event was read: the watcher is done.
  bool end_of_log = false;
  // The manager is shutting down: the watcher should end.
  bool shutting_down = false;
};

class JobManager {
 public:
  // Loads every stored job from `store` (not owned; must outlive the manager).
  // `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(JobStore* store,
                                                            ManagerOptions options,
                                                            Metrics* metrics);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // ---- QuantizationService -------------------------------------------------------------
  absl::StatusOr<gptq::v1::Job> CreateJob(const gptq::v1::CreateJobRequest& request);
  absl::StatusOr<gptq::v1::Job> GetJob(const std::string& id);
  absl::StatusOr<gptq::v1::ListJobsResponse> ListJobs(const gptq::v1::ListJobsRequest& request);
  absl::StatusOr<gptq::v1::Job> CancelJob(const std::string& id);
  absl::Status DeleteJob(const std::string& id);
  // Up to `max_events` events of job `id` from `next_sequence` (>= 1). When none is available
  // and the log is not finished, `sink` is registered and notified once when that changes.
  absl::StatusOr<EventBatch> ReadEvents(const std::string& id, int64_t next_sequence,
                                        size_t max_events, std::weak_ptr<EventSink> sink);

  // ---- WorkerService -------------------------------------------------------------------
  absl::StatusOr<gptq::worker::v1::RegisterResponse> Register(
      const gptq::worker::v1::RegisterRequest& request);
  using LeaseCallback =
      std::function<void(absl::Status, gptq::worker::v1::LeaseJobResponse)>;
  // Completes `done` at once, or later (within wait_seconds) when a job fits the worker.
  // Returns a wait id while the call is held (0 if `done` already ran), for CancelLeaseWait.
  uint64_t LeaseJob(const gptq::worker::v1::LeaseJobRequest& request, LeaseCallback done);
  // The worker abandoned a held LeaseJob call: completes it (CANCELLED) unless it already was.
  void CancelLeaseWait(uint64_t wait_id);
  using HeartbeatCallback =
      std::function<void(absl::Status, gptq::worker::v1::HeartbeatResponse)>;
  // For a worker running a job, holds the call up to one heartbeat period; completes early on
  // cancellation or lease loss.
  void Heartbeat(const gptq::worker::v1::HeartbeatRequest& request, HeartbeatCallback done);
  // Takes back a lease that never reached its worker (its LeaseJob call was cancelled): the
  // job is requeued and the attempt does not count. No-op if (job_id, epoch) is not current.
  void ReturnLease(const std::string& job_id, int64_t epoch, const std::string& reason);
  absl::StatusOr<gptq::worker::v1::ReportEventsResponse> ReportEvents(
      const gptq::worker::v1::ReportEventsRequest& request);
  absl::Status FinishJob(const gptq::worker::v1::FinishJobRequest& request);

  // Expires silent workers and orphaned leases, completes held calls that reached their
  // deadline. Call periodically (e.g. every heartbeat_period / 10).
  void Tick();
  // Hands every lease back (jobs requeued), completes held calls, ends watchers. Idempotent.
  void Shutdown();
  bool shutting_down() const;

  MetricsSnapshot Snapshot() const;
  const ManagerOptions& options() const { return options_; }

 private:
  struct JobEntry {
    gptq::v1::Job job;
    int64_t epoch = 0;
    int64_t order = 0;
    int64_t last_sequence = 0;
    bool events_loaded = false;
    // When loaded: events[i]->sequence() == i + 1.
    std::vector<std::shared_ptr<const gptq::v1::JobEvent>> events;
    std::vector<std::weak_ptr<EventSink>> sinks;
    // For a RUNNING job whose worker is not registered (after a restart).
    absl::Time orphan_deadline = absl::InfiniteFuture();
  };
  struct WorkerEntry {
    std::string id;
    std::string name;
    gptq::worker::v1::Capabilities capabilities;
    absl::Time last_seen;
    int held_calls = 0;
    std::string job_id;
    int64_t epoch = 0;
  };
  struct PendingLease {
    uint64_t wait_id;
    std::string worker_id;
    absl::Time deadline;
    LeaseCallback done;
  };
  struct PendingHeartbeat {
    std::string worker_id;
    int64_t epoch;
    absl::Time deadline;
    HeartbeatCallback done;
  };
  using QueueKey = std::tuple<int, int64_t, std::string>;  // (-priority, order, id)
  // Work to run after mu_ is released (callbacks, sink notifications). Declared before the
  // MutexLock of a method, so it also runs on early returns, after the unlock.
  class Deferred {
   public:
    Deferred() = default;
    Deferred(const Deferred&) = delete;
    Deferred& operator=(const Deferred&) = delete;
    ~Deferred() { Run(); }
    void push_back(std::function<void()> f) { fns_.push_back(std::move(f)); }
    void Run() {
      std::vector<std::function<void()>> fns;
      fns.swap(fns_);
      for (auto& f : fns) f();
    }

   private:
    std::vector<std::function<void()>> fns_;
  };

  JobManager(JobStore* store, ManagerOptions options, Metrics* metrics);

  absl::Status Commit(JobEntry& entry, gptq::v1::Job updated, int64_t epoch,
                      std::vector<gptq::v1::JobEvent> events, Deferred* after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status EnsureEventsLoaded(JobEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records that a terminal job's log is cached; evicts the oldest beyond the bound.
  void NoteTerminalLogCached(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Dispatch(Deferred* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  JobEntry* FindJobToLease(const WorkerEntry& worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<gptq::worker::v1::Lease> LeaseTo(WorkerEntry& worker, JobEntry& entry,
                                                  Deferred* after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the current lease of a RUNNING job: requeued, or FAILED after max attempts (if
  // `count_attempt`), or CANCELLED if cancellation was requested.
  void LoseLease(JobEntry& entry, const std::string& reason, const std::string& metric_reason,
                 bool count_attempt, Deferred* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Completes the held heartbeats of `job_id`.
  void CompleteHeartbeats(const std::string& job_id, bool cancel, bool lease_lost,
                          Deferred* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks that (job_id, epoch) is the current lease; adopts it for `worker_id` if known.
  absl::StatusOr<JobEntry*> CheckLease(const std::string& worker_id, const std::string& job_id,
                                       int64_t epoch, Deferred* after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AnyCudaWorker() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string NewId(const char* prefix) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseWorkerCall(const std::string& worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Log(const std::string& line) const;
  static void RunDeferred(Deferred& after);

  JobStore* const store_;
  const ManagerOptions options_;
  Metrics* const metrics_;

  mutable absl::Mutex mu_;
  std::map<std::string, JobEntry> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, std::string> by_order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> by_request_id_ ABSL_GUARDED_BY(mu_);
  std::set<QueueKey> queue_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> orphans_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerEntry> workers_ ABSL_GUARDED_BY(mu_);
  std::deque<PendingLease> pending_leases_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string, PendingHeartbeat> pending_heartbeats_ ABSL_GUARDED_BY(mu_);
  uint64_t id_counter_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t wait_counter_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t id_salt_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  // Terminal jobs whose event log is cached in memory, oldest first (bounded; the store keeps
  // every log, so an evicted one is simply read again when watched).
  std::deque<std::string> cached_terminal_logs_ ABSL_GUARDED_BY(mu_);
};

// Lower-case state name for labels and messages ("queued", ...).
std::string StateName(gptq::v1::JobState state);
bool IsTerminal(gptq::v1::JobState state);

}  // namespace gptq::server

#endif  // GPTQ_SERVER_JOB_MANAGER_H_
