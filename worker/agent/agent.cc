#include "agent.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <random>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "conversions.h"
#include "gptq/posix_fs.h"
#include "log.h"

namespace gptq::agent {
namespace {

// An attempt killed mid-write (kill -9, lost lease) leaves the checkpoint writer's temporary
// directory "<output>.tmp-XXXXXX" behind. Only one attempt of a job runs at a time (the lease
// epoch fences the others) and the server never gives two unfinished jobs the same output, so
// a new attempt may remove what earlier attempts left.
void RemoveStaleTempDirs(const std::string& output_dir) {
  std::string parent = fsutil::ParentPath(output_dir);
  if (parent.empty()) parent = ".";
  const std::string prefix = fsutil::BaseName(output_dir) + ".tmp-";
  if (prefix.size() <= 5 || !fsutil::IsDirectory(parent)) return;
  absl::StatusOr<std::vector<std::string>> names = fsutil::ListDirectory(parent);
  if (!names.ok()) return;
  for (const std::string& name : *names) {
    const std::string path = absl::StrCat(parent, "/", name);
    if (name.rfind(prefix, 0) == 0 && !fsutil::IsSymlink(path) && fsutil::IsDirectory(path)) {
      (void)fsutil::RemoveAll(path);
    }
  }
}

namespace wv1 = ::gptq::worker::v1;

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

bool Transient(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::RESOURCE_EXHAUSTED || code == grpc::StatusCode::ABORTED ||
         code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::UNKNOWN;
}

runtime::ProgressEvent LogEvent(std::string message, std::string level = "info") {
  runtime::ProgressEvent e;
  e.kind = runtime::ProgressEvent::Kind::kLog;
  e.message = std::move(message);
  e.level = std::move(level);
  return e;
}

}  // namespace

// One leased job, shared by the job loop, the reporter and the heartbeat thread.
struct WorkerAgent::ActiveJob {
  std::string job_id;
  int64_t epoch = 0;
  runtime::CancelToken token;
  std::atomic<bool> lease_lost{false};
  std::atomic<bool> cancel_requested{false};

  std::mutex mu;
  std::condition_variable cv;
  EventBatcher batcher ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;  // no more events: drain and exit

  explicit ActiveJob(BatcherOptions options) : batcher(options) {}
};

// Feeds the runtime's progress into the job's batcher; wakes the reporter.
class WorkerAgent::Sink : public runtime::ProgressSink {
 public:
  explicit Sink(ActiveJob& job) : job_(job) {}
  void OnEvent(const runtime::ProgressEvent& event) override {
    std::lock_guard<std::mutex> lock(job_.mu);
    job_.batcher.Add(event, absl::Now());
    job_.cv.notify_all();
  }

 private:
  ActiveJob& job_;
};

WorkerAgent::WorkerAgent(std::unique_ptr<wv1::WorkerService::StubInterface> stub,
                         AgentOptions options, AgentDeps deps)
    : stub_(std::move(stub)),
      options_(std::move(options)),
      deps_(std::move(deps)),
      hub_(options_.hub) {}

WorkerAgent::~WorkerAgent() {
  Stop();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

std::string WorkerAgent::worker_id() const {
  std::lock_guard<std::mutex> lock(mu_);
  return worker_id_;
}

void WorkerAgent::Stop() {
  stopping_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  if (lease_ctx_ != nullptr) lease_ctx_->TryCancel();
  if (heartbeat_ctx_ != nullptr) heartbeat_ctx_->TryCancel();
  if (job_ != nullptr) job_->token.Cancel();
  cv_.notify_all();
}

void WorkerAgent::PrepareContext(grpc::ClientContext* ctx, absl::Duration timeout) const {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!options_.auth_token.empty()) {
    ctx->AddMetadata("authorization", absl::StrCat("Bearer ", options_.auth_token));
  }
}

void WorkerAgent::Backoff(absl::Duration* backoff) {
  static thread_local std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  const absl::Duration wait = *backoff * jitter(rng);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoMilliseconds(wait), [this] { return stopping(); });
  *backoff = std::min(*backoff * 2, options_.max_backoff);
}

absl::Status WorkerAgent::Register() {
  std::lock_guard<std::mutex> reg_lock(register_mu_);
  wv1::RegisterRequest req;
  req.set_name(options_.name);
  wv1::Capabilities* caps = req.mutable_capabilities();
  caps->set_device(deps_.device.device);
  caps->set_device_name(deps_.device.device_name);
  caps->set_memory_bytes(deps_.device.memory_bytes);
  caps->set_torch_version(deps_.device.torch_version);
  caps->set_num_threads(deps_.device.num_threads);
  caps->set_version(options_.version);
  wv1::RegisterResponse resp;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, options_.rpc_timeout);
  const grpc::Status s = stub_->Register(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s);
  if (resp.worker_id().empty()) {
    return absl::InternalError("Register answered an empty worker_id");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    worker_id_ = resp.worker_id();
    heartbeat_period_ =
        resp.heartbeat_seconds() > 0 ? absl::Seconds(resp.heartbeat_seconds()) : absl::Seconds(10);
  }
  num_registrations_.fetch_add(1);
  GPTQ_AGENT_LOG(kInfo, "registered as ", resp.worker_id(), " (", deps_.device.device, ", ",
                 deps_.device.device_name, "); heartbeat every ", resp.heartbeat_seconds(), " s");
  cv_.notify_all();  // the heartbeat thread picks up the new period
  return absl::OkStatus();
}

absl::Status WorkerAgent::Run() {
  if (!deps_.run_job) return absl::InvalidArgumentError("WorkerAgent needs a job runner");
  absl::Duration backoff = options_.min_backoff;
  int num_jobs = 0;
  while (!stopping()) {
    if (worker_id().empty()) {
      const absl::Status s = Register();
      if (!s.ok()) {
        GPTQ_AGENT_LOG(kWarning, "Register failed: ", s.ToString(), "; retrying");
        Backoff(&backoff);
        continue;
      }
      backoff = options_.min_backoff;
      if (!heartbeat_thread_.joinable()) {
        heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
      }
    }
    wv1::LeaseJobRequest req;
    req.set_worker_id(worker_id());
    req.set_wait_seconds(options_.lease_wait_seconds);
    wv1::LeaseJobResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, absl::Seconds(options_.lease_wait_seconds) + options_.rpc_timeout);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping()) break;
      lease_ctx_ = &ctx;
    }
    const grpc::Status s = stub_->LeaseJob(&ctx, req, &resp);
    {
      std::lock_guard<std::mutex> lock(mu_);
      lease_ctx_ = nullptr;
    }
    if (stopping()) break;
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        // The server does not know this worker id (it restarted): register again.
        GPTQ_AGENT_LOG(kInfo, "LeaseJob: ", s.error_message(), "; registering again");
        std::lock_guard<std::mutex> lock(mu_);
        if (worker_id_ == req.worker_id()) worker_id_.clear();
        continue;
      }
      GPTQ_AGENT_LOG(kWarning, "LeaseJob failed: ", FromGrpc(s).ToString(), "; retrying");
      Backoff(&backoff);
      continue;
    }
    backoff = options_.min_backoff;
    if (!resp.has_lease() || resp.lease().job_id().empty()) continue;
    HandleLease(resp.lease());
    ++num_jobs;
    if (options_.max_jobs > 0 && num_jobs >= options_.max_jobs) break;
  }
  Stop();  // also ends a held Heartbeat call
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  return absl::OkStatus();
}

void WorkerAgent::HeartbeatLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  absl::Time last_start = absl::Now();
  while (!stopping()) {
    const absl::Duration period = heartbeat_period_;
    // One heartbeat per period, counted from the start of the previous one: the server may
    // hold a heartbeat for up to a period while a job runs (answering at once on cancel or a
    // lost lease), so during a job the calls follow each other back to back.
    const absl::Duration wait = std::max(absl::ZeroDuration(), last_start + period - absl::Now());
    if (cv_.wait_for(lock, absl::ToChronoMilliseconds(wait),
                     [&] { return stopping() || heartbeat_period_ != period; })) {
      continue;  // stopping, or a new period: re-evaluate
    }
    last_start = absl::Now();
    lock.unlock();
    HeartbeatOnce();
    lock.lock();
  }
}

void WorkerAgent::HeartbeatOnce() {
  std::shared_ptr<ActiveJob> job;
  wv1::HeartbeatRequest req;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job = job_;
    req.set_worker_id(worker_id_);
  }
  if (req.worker_id().empty()) return;  // the job loop is registering
  if (job != nullptr) {
    req.set_job_id(job->job_id);
    req.set_lease_epoch(job->epoch);
  }
  if (deps_.memory_used_bytes) req.set_memory_used_bytes(deps_.memory_used_bytes());
  absl::Duration period;
  {
    std::lock_guard<std::mutex> lock(mu_);
    period = heartbeat_period_;
  }
  wv1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  // The server may hold the call for a period; leave room for that.
  PrepareContext(&ctx, std::max(options_.rpc_timeout, 2 * period + absl::Seconds(5)));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping()) return;
    heartbeat_ctx_ = &ctx;
  }
  const grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
  {
    std::lock_guard<std::mutex> lock(mu_);
    heartbeat_ctx_ = nullptr;
  }
  if (stopping()) return;
  if (!s.ok()) {
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      resp.set_reregister(true);
    } else {
      GPTQ_AGENT_LOG(kWarning, "Heartbeat failed: ", FromGrpc(s).ToString());
      return;
    }
  }
  if (job != nullptr && resp.lease_lost()) {
    MarkLeaseLost(*job, "heartbeat answered lease_lost");
  } else if (job != nullptr && resp.cancel() && !job->cancel_requested.exchange(true)) {
    GPTQ_AGENT_LOG(kInfo, "job ", job->job_id, ": cancellation requested; stopping");
    job->token.Cancel();
  }
  if (resp.reregister()) {
    GPTQ_AGENT_LOG(kInfo, "server asked to register again");
    const absl::Status r = Register();
    if (!r.ok()) GPTQ_AGENT_LOG(kWarning, "Register failed: ", r.ToString());
  }
}

void WorkerAgent::MarkLeaseLost(ActiveJob& job, const std::string& why) {
  if (job.lease_lost.exchange(true)) return;
  GPTQ_AGENT_LOG(kWarning, "job ", job.job_id, " epoch ", job.epoch, ": lease lost (", why,
                 "); abandoning it");
  job.token.Cancel();
  std::lock_guard<std::mutex> lock(job.mu);
  job.cv.notify_all();
}

void WorkerAgent::ReporterLoop(ActiveJob& job) {
  std::unique_lock<std::mutex> lock(job.mu);
  while (!job.lease_lost.load()) {
    const absl::Time now = absl::Now();
    if (job.batcher.Due(now) || (job.done && !job.batcher.empty())) {
      EventBatcher::Batch batch = job.batcher.Take();
      lock.unlock();
      SendBatch(job, std::move(batch));
      lock.lock();
      continue;
    }
    if (job.done) break;
    const absl::Time deadline = job.batcher.Deadline();
    if (deadline == absl::InfiniteFuture()) {
      job.cv.wait(lock);
    } else {
      job.cv.wait_until(lock, absl::ToChronoTime(deadline));
    }
  }
}

bool WorkerAgent::SendBatch(ActiveJob& job, EventBatcher::Batch batch) {
  wv1::ReportEventsRequest req;
  req.set_job_id(job.job_id);
  req.set_lease_epoch(job.epoch);
  for (gptq::v1::JobEvent& e : batch.events) {
    e.set_job_id(job.job_id);
    *req.add_events() = std::move(e);
  }
  *req.mutable_progress() = std::move(batch.progress);
  absl::Duration backoff = options_.min_backoff;
  bool reregistered = false;
  for (int attempt = 0; attempt < 6; ++attempt) {
    req.set_worker_id(worker_id());
    wv1::ReportEventsResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, options_.rpc_timeout);
    const grpc::Status s = stub_->ReportEvents(&ctx, req, &resp);
    if (s.ok()) {
      if (resp.cancel() && !job.cancel_requested.exchange(true)) {
        GPTQ_AGENT_LOG(kInfo, "job ", job.job_id, ": cancellation requested; stopping");
        job.token.Cancel();
      }
      return true;
    }
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      MarkLeaseLost(job, absl::StrCat("ReportEvents refused: ", s.error_message()));
      return false;
    }
    if (job.lease_lost.load()) return false;
    GPTQ_AGENT_LOG(kWarning, "job ", job.job_id, ": ReportEvents failed: ", FromGrpc(s).ToString());
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      // Unknown worker (server restarted): register and retry once; unknown job: lost.
      if (reregistered) {
        MarkLeaseLost(job, absl::StrCat("ReportEvents: ", s.error_message()));
        return false;
      }
      reregistered = true;
      const absl::Status r = Register();
      if (!r.ok()) GPTQ_AGENT_LOG(kWarning, "Register failed: ", r.ToString());
      continue;
    }
    if (stopping()) return false;
    Backoff(&backoff);
  }
  GPTQ_AGENT_LOG(kError, "job ", job.job_id, ": dropped ", req.events_size(),
                 " events after repeated ReportEvents failures");
  return false;
}

absl::StatusOr<std::string> WorkerAgent::ResolveModel(const wv1::Lease& lease, ActiveJob& job) {
  const std::string& uri = lease.spec().model_uri();
  std::string dir;
  if (!lease.model_dir().empty()) {
    dir = lease.model_dir();
  } else if (absl::StartsWith(uri, "hf://")) {
    absl::StatusOr<hub::HfModelRef> ref = hub::ParseHfUri(uri);
    if (!ref.ok()) return ref.status();
    Sink sink(job);
    sink.OnEvent(LogEvent(absl::StrCat("fetching ", ref->ToString(), " from ", hub_.endpoint())));
    const absl::Time start = absl::Now();
    absl::StatusOr<hub::Snapshot> snap =
        hub_.FetchModel(*ref, [&job] { return job.token.cancelled(); });
    if (!snap.ok()) return snap.status();
    int64_t bytes = 0;
    for (const hub::FetchedFile& f : snap->files) bytes += f.size_bytes;
    sink.OnEvent(
        LogEvent(absl::StrCat(ref->ToString(), ": ", snap->files.size(), " files, ", bytes,
                              " bytes ", snap->from_cache ? "found in the cache" : "downloaded",
                              " in ", absl::ToDoubleSeconds(absl::Now() - start), " s")));
    dir = snap->dir;
  } else {
    absl::StatusOr<std::string> path = LocalPathFromUri(uri, "spec.model_uri");
    if (!path.ok()) return path.status();
    dir = *path;
  }
  if (!fsutil::IsDirectory(dir)) {
    return absl::FailedPreconditionError(
        absl::StrCat("model directory '", dir, "' (from model_uri '", uri, "') does not exist"));
  }
  return dir;
}

void WorkerAgent::HandleLease(const wv1::Lease& lease) {
  auto job = std::make_shared<ActiveJob>(options_.batcher);
  job->job_id = lease.job_id();
  job->epoch = lease.lease_epoch();
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = job;
    if (stopping()) job->token.Cancel();
  }
  GPTQ_AGENT_LOG(kInfo, "job ", job->job_id, " epoch ", job->epoch, " attempt ", lease.attempt(),
                 ": leased (model ", lease.spec().model_uri(), ")");
  std::thread reporter([this, job] { ReporterLoop(*job); });
  Sink sink(*job);
  sink.OnEvent(
      LogEvent(absl::StrCat("worker ", worker_id(), " (", deps_.device.device_string, ", ",
                            deps_.device.device_name, ") starts attempt ", lease.attempt())));
  const absl::Time start = absl::Now();
  std::string output_dir;
  std::string model_dir_used;
  bool output_existed = true;
  absl::StatusOr<runtime::QuantizeReport> result =
      [&]() -> absl::StatusOr<runtime::QuantizeReport> {
    absl::StatusOr<std::string> model_dir = ResolveModel(lease, *job);
    if (!model_dir.ok()) return model_dir.status();
    model_dir_used = *model_dir;
    if (!lease.output_dir().empty()) {
      output_dir = lease.output_dir();
    } else {
      absl::StatusOr<std::string> out =
          LocalPathFromUri(lease.spec().output_uri(), "spec.output_uri");
      if (!out.ok()) return out.status();
      output_dir = *out;
    }
    RemoveStaleTempDirs(output_dir);
    output_existed = fsutil::Exists(output_dir);
    JobPlacement placement{*model_dir, output_dir, options_.data_dir, deps_.device.device_string};
    absl::StatusOr<runtime::QuantizeOptions> opts = SpecToOptions(lease.spec(), placement);
    if (!opts.ok()) return opts.status();
    {
      std::lock_guard<std::mutex> lock(job->mu);
      job->batcher.set_perplexity_seqlen(opts->eval_seqlen > 0 ? opts->eval_seqlen
                                                               : opts->calibration.seqlen);
    }
    if (job->token.cancelled()) return absl::CancelledError("cancelled before the run started");
    try {
      return deps_.run_job(*opts, sink, job->token);
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("the runtime threw: ", e.what()));
    } catch (...) {
      return absl::InternalError("the runtime threw a non-standard exception");
    }
  }();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (!result.ok() && !job->lease_lost.load()) {
    sink.OnEvent(LogEvent(absl::StrCat("run ended: ", result.status().ToString()),
                          job->cancel_requested.load() ? "info" : "error"));
  }
  {
    std::lock_guard<std::mutex> lock(job->mu);
    job->done = true;
    job->cv.notify_all();
  }
  reporter.join();
  if (deps_.release_device_memory) deps_.release_device_memory();

  auto clear_job = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = nullptr;
  };
  if (job->lease_lost.load()) {
    // A newer attempt may own the output directory now: touch nothing.
    clear_job();
    return;
  }
  if (!result.ok() && !output_existed && !output_dir.empty()) {
    (void)fsutil::RemoveAll(output_dir);  // best effort: the job's real error is reported below
  }
  if (stopping() && !result.ok()) {
    GPTQ_AGENT_LOG(kInfo, "job ", job->job_id, ": abandoned at shutdown (the server requeues it)");
    clear_job();
    return;
  }
  wv1::FinishJobRequest req;
  req.set_job_id(job->job_id);
  req.set_lease_epoch(job->epoch);
  if (result.ok()) {
    *req.mutable_results() = ReportToResults(*result, seconds);
    GPTQ_AGENT_LOG(kInfo, "job ", job->job_id, ": succeeded in ", seconds, " s -> ",
                   result->output_dir);
  } else {
    absl::Status status = result.status();
    if (job->cancel_requested.load()) {
      status = absl::CancelledError(absl::StrCat("cancelled on request after ", seconds, " s"));
    }
    *req.mutable_error() = StatusToJobError(status, model_dir_used);
    GPTQ_AGENT_LOG(kInfo, "job ", job->job_id, ": ended with ", status.ToString());
  }
  Finish(*job, req);
  clear_job();
}

void WorkerAgent::Finish(ActiveJob& job, const wv1::FinishJobRequest& request) {
  wv1::FinishJobRequest req = request;
  absl::Duration backoff = options_.min_backoff;
  const absl::Time give_up = absl::Now() + absl::Minutes(10);
  bool reregistered = false;
  while (true) {
    req.set_worker_id(worker_id());
    wv1::FinishJobResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, options_.rpc_timeout);
    const grpc::Status s = stub_->FinishJob(&ctx, req, &resp);
    if (s.ok()) return;
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      MarkLeaseLost(job, absl::StrCat("FinishJob refused: ", s.error_message()));
      return;
    }
    GPTQ_AGENT_LOG(kWarning, "job ", job.job_id, ": FinishJob failed: ", FromGrpc(s).ToString());
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      // Unknown worker (server restarted): register and retry once; unknown job: lost.
      if (reregistered) {
        MarkLeaseLost(job, absl::StrCat("FinishJob: ", s.error_message()));
        return;
      }
      reregistered = true;
      const absl::Status r = Register();
      if (!r.ok()) GPTQ_AGENT_LOG(kWarning, "Register failed: ", r.ToString());
      continue;
    } else if (!Transient(s.error_code())) {
      return;
    }
    if (stopping() || absl::Now() > give_up) {
      GPTQ_AGENT_LOG(kError, "job ", job.job_id, ": giving up on FinishJob");
      return;
    }
    Backoff(&backoff);
  }
}

}  // namespace gptq::agent
