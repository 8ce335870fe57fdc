// The worker agent: registers with gptq-server's WorkerService, leases jobs, runs each through
// a JobRunner (the runtime's RunQuantizeJob in production, a fake in tests), forwards progress
// as batched JobEvents, heartbeats on its own thread, and finishes the job with results or a
// precise error. No Torch headers.
//
// Threads: Run() is the job loop (register, lease, run the job on this thread); a heartbeat
// thread runs while registered; a reporter thread sends event batches while a job runs.
//
// Cancellation and fencing: a heartbeat or ReportEvents answer with `cancel` fires the job's
// CancelToken; the job then finishes with CANCELLED and its output directory is removed (when
// the job created it). `lease_lost` (or a report refused with FAILED_PRECONDITION, i.e. a stale
// epoch) also fires the token, but the job is then abandoned without FinishJob. `reregister`
// (the server forgot this worker, e.g. after a restart) makes the agent register again and
// carry on. Unreachable server: retried with exponential backoff.
#ifndef GPTQ_WORKER_AGENT_AGENT_H_
#define GPTQ_WORKER_AGENT_AGENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "device_info.h"
#include "event_batcher.h"
#include "gptq/worker/v1/worker.grpc.pb.h"
#include "hub/hf_hub.h"
#include "worker/runtime/quantize_job.h"

namespace gptq::agent {

// Runs one quantization (RunQuantizeJob's signature).
using JobRunner = std::function<absl::StatusOr<runtime::QuantizeReport>(
    const runtime::QuantizeOptions&, runtime::ProgressSink&, const runtime::CancelToken&)>;

struct AgentOptions {
  std::string name;                // informational, sent with Register
  std::string data_dir;            // dataset root for the runtime ("" = its default)
  hub::HubOptions hub;             // hf:// downloads
  std::string auth_token;          // sent as "authorization: Bearer <token>" when set
  double lease_wait_seconds = 10;  // LeaseJob long-poll
  absl::Duration rpc_timeout = absl::Seconds(30);
  absl::Duration min_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(30);
  BatcherOptions batcher;
  int max_jobs = 0;  // stop after this many leases (0: never)
  std::string version = "0.1.0";
};

struct AgentDeps {
  JobRunner run_job;
  DeviceInfo device;                            // resolved; device_string goes to the runtime
  std::function<int64_t()> memory_used_bytes;   // optional, for heartbeats
  std::function<void()> release_device_memory;  // optional, after each job
};

class WorkerAgent {
 public:
  WorkerAgent(std::unique_ptr<gptq::worker::v1::WorkerService::StubInterface> stub,
              AgentOptions options, AgentDeps deps);
  ~WorkerAgent();
  WorkerAgent(const WorkerAgent&) = delete;
  WorkerAgent& operator=(const WorkerAgent&) = delete;

  // The job loop; returns after Stop() or once max_jobs leases were handled. OK unless the
  // configuration is unusable.
  absl::Status Run();
  // Asks Run() to return: a running job is cancelled and abandoned (no FinishJob; the server
  // requeues it once the lease expires). Thread-safe; not async-signal-safe.
  void Stop();

  std::string worker_id() const;
  int num_registrations() const { return num_registrations_.load(); }

 private:
  struct ActiveJob;
  class Sink;

  absl::Status Register();
  void HeartbeatLoop();
  void HeartbeatOnce();
  void HandleLease(const gptq::worker::v1::Lease& lease);
  absl::StatusOr<std::string> ResolveModel(const gptq::worker::v1::Lease& lease, ActiveJob& job);
  void ReporterLoop(ActiveJob& job);
  bool SendBatch(ActiveJob& job, EventBatcher::Batch batch);
  void Finish(ActiveJob& job, const gptq::worker::v1::FinishJobRequest& request);
  void MarkLeaseLost(ActiveJob& job, const std::string& why);
  void PrepareContext(grpc::ClientContext* ctx, absl::Duration timeout) const;
  // Sleeps the current backoff (interrupted by Stop()) and doubles it.
  void Backoff(absl::Duration* backoff);
  bool stopping() const { return stopping_.load(); }

  // Constant after construction.
  const std::unique_ptr<gptq::worker::v1::WorkerService::StubInterface> stub_;
  const AgentOptions options_;
  const AgentDeps deps_;
  hub::HfHub hub_;

  std::atomic<bool> stopping_{false};
  std::atomic<int> num_registrations_{0};
  std::mutex register_mu_;  // serializes Register calls (job loop vs heartbeat thread)

  mutable std::mutex mu_;
  std::condition_variable cv_;  // stop / wake-ups of the heartbeat thread and backoff sleeps
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  absl::Duration heartbeat_period_ ABSL_GUARDED_BY(mu_) = absl::Seconds(10);
  std::shared_ptr<ActiveJob> job_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* lease_ctx_ ABSL_GUARDED_BY(mu_) = nullptr;      // in-flight LeaseJob
  grpc::ClientContext* heartbeat_ctx_ ABSL_GUARDED_BY(mu_) = nullptr;  // in-flight Heartbeat
  std::thread heartbeat_thread_;
};

}  // namespace gptq::agent

#endif  // GPTQ_WORKER_AGENT_AGENT_H_
