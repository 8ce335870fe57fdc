#include "job_manager.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gptq/status_macros.h"

namespace gptq::server {
namespace {

using gptq::v1::Job;
using gptq::v1::JobEvent;
using gptq::v1::JobState;
namespace wv1 = gptq::worker::v1;

constexpr int kMaxEventsPerReport = 10000;
constexpr double kMaxLeaseWaitSeconds = 30;
constexpr char kPageTokenPrefix[] = "o";
constexpr size_t kMaxCachedTerminalLogs = 64;

void SetTime(google::protobuf::Timestamp* ts, absl::Time t) {
  const int64_t ns = absl::ToUnixNanos(t);
  int64_t s = ns / 1000000000;
  int64_t n = ns % 1000000000;
  if (n < 0) {
    n += 1000000000;
    --s;
  }
  ts->set_seconds(s);
  ts->set_nanos(static_cast<int32_t>(n));
}

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

JobEvent StateChangeEvent(JobState from, JobState to, const std::string& reason, int attempt) {
  JobEvent e;
  auto* sc = e.mutable_state_change();
  sc->set_from(from);
  sc->set_to(to);
  sc->set_reason(reason);
  sc->set_attempt(attempt);
  return e;
}

JobEvent LogEvent(gptq::v1::LogLine::Level level, const std::string& message) {
  JobEvent e;
  e.mutable_log()->set_level(level);
  e.mutable_log()->set_message(message);
  return e;
}

std::string FormatSeconds(absl::Duration d) {
  return absl::StrFormat("%.3gs", absl::ToDoubleSeconds(d));
}

}  // namespace

std::string StateName(JobState state) {
  switch (state) {
    case gptq::v1::JOB_STATE_QUEUED: return "queued";
    case gptq::v1::JOB_STATE_RUNNING: return "running";
    case gptq::v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case gptq::v1::JOB_STATE_FAILED: return "failed";
    case gptq::v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "unspecified";
  }
}

bool IsTerminal(JobState state) {
  return state == gptq::v1::JOB_STATE_SUCCEEDED || state == gptq::v1::JOB_STATE_FAILED ||
         state == gptq::v1::JOB_STATE_CANCELLED;
}

JobManager::JobManager(JobStore* store, ManagerOptions options, Metrics* metrics)
    : store_(store), options_(std::move(options)), metrics_(metrics) {}

JobManager::~JobManager() = default;

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(JobStore* store,
                                                              ManagerOptions options,
                                                              Metrics* metrics) {
  if (options.heartbeat_period <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat period must be > 0");
  }
  if (options.max_attempts < 1) return absl::InvalidArgumentError("max_attempts must be >= 1");
  std::unique_ptr<JobManager> m(new JobManager(store, std::move(options), metrics));
  GPTQ_ASSIGN_OR_RETURN(std::vector<StoredJob> stored, store->LoadJobs());
  absl::MutexLock lock(&m->mu_);
  std::random_device rd;
  m->id_salt_ = (uint64_t{rd()} << 32) ^ rd();
  const absl::Time now = absl::Now();
  for (StoredJob& s : stored) {
    JobEntry entry;
    entry.job = std::move(s.job);
    entry.epoch = s.lease_epoch;
    entry.order = s.order;
    entry.last_sequence = s.last_sequence;
    const std::string id = entry.job.id();
    m->by_order_[entry.order] = id;
    if (!entry.job.request_id().empty()) m->by_request_id_[entry.job.request_id()] = id;
    if (entry.job.state() == gptq::v1::JOB_STATE_QUEUED) {
      m->queue_.insert({-entry.job.priority(), entry.order, id});
    } else if (entry.job.state() == gptq::v1::JOB_STATE_RUNNING) {
      entry.orphan_deadline = now + 3 * m->options_.heartbeat_period;
      m->orphans_.insert(id);
    }
    m->jobs_.emplace(id, std::move(entry));
  }
  return m;
}

std::string JobManager::NewId(const char* prefix) {
  ++id_counter_;
  // Salted so ids differ across restarts; the counter keeps them unique within one run.
  const uint64_t mixed = (id_salt_ + id_counter_ * 0x9e3779b97f4a7c15ull) ^ (id_salt_ >> 17);
  return absl::StrFormat("%s-%016x", prefix, mixed);
}

void JobManager::RunDeferred(Deferred& after) { after.Run(); }

void JobManager::Log(const std::string& line) const {
  if (options_.log) options_.log(line);
}

absl::Status JobManager::EnsureEventsLoaded(JobEntry& entry) {
  if (entry.events_loaded) return absl::OkStatus();
  GPTQ_ASSIGN_OR_RETURN(std::vector<JobEvent> events, store_->LoadEvents(entry.job.id(), 1));
  entry.events.clear();
  entry.events.reserve(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i].sequence() != static_cast<int64_t>(i) + 1) {
      return absl::DataLossError(absl::StrCat("event log of job ", entry.job.id(),
                                              " has a gap at sequence ", i + 1));
    }
    entry.events.push_back(std::make_shared<const JobEvent>(std::move(events[i])));
  }
  entry.last_sequence = static_cast<int64_t>(entry.events.size());
  entry.events_loaded = true;
  if (IsTerminal(entry.job.state())) NoteTerminalLogCached(entry.job.id());
  return absl::OkStatus();
}

void JobManager::NoteTerminalLogCached(const std::string& id) {
  cached_terminal_logs_.push_back(id);
  while (cached_terminal_logs_.size() > kMaxCachedTerminalLogs) {
    auto it = jobs_.find(cached_terminal_logs_.front());
    cached_terminal_logs_.pop_front();
    if (it != jobs_.end() && IsTerminal(it->second.job.state())) {
      it->second.events.clear();
      it->second.events.shrink_to_fit();
      it->second.events_loaded = false;
    }
  }
}

absl::Status JobManager::Commit(JobEntry& entry, Job updated, int64_t epoch,
                                std::vector<JobEvent> events, Deferred* after) {
  const absl::Time now = absl::Now();
  int64_t seq = entry.last_sequence;
  for (JobEvent& e : events) {
    e.set_job_id(updated.id());
    e.set_sequence(++seq);
    SetTime(e.mutable_time(), now);
  }
  GPTQ_RETURN_IF_ERROR(store_->UpdateJob(updated, epoch, events));
  const JobState old_state = entry.job.state();
  const JobState new_state = updated.state();
  if (old_state == gptq::v1::JOB_STATE_QUEUED && new_state != gptq::v1::JOB_STATE_QUEUED) {
    queue_.erase({-entry.job.priority(), entry.order, entry.job.id()});
  }
  if (new_state == gptq::v1::JOB_STATE_QUEUED && old_state != gptq::v1::JOB_STATE_QUEUED) {
    queue_.insert({-updated.priority(), entry.order, updated.id()});
  }
  if (new_state != gptq::v1::JOB_STATE_RUNNING) {
    orphans_.erase(updated.id());
    entry.orphan_deadline = absl::InfiniteFuture();
  }
  if (metrics_ != nullptr && IsTerminal(new_state) && !IsTerminal(old_state) &&
      updated.has_start_time()) {
    metrics_->ObserveJobDuration(
        StateName(new_state),
        absl::ToDoubleSeconds(FromProto(updated.end_time()) - FromProto(updated.start_time())));
  }
  entry.job = std::move(updated);
  entry.epoch = epoch;
  entry.last_sequence = seq;
  for (const JobEvent& e : events) {
    if (e.has_state_change()) {
      Log(absl::StrCat("job ", e.job_id(), ": ", StateName(e.state_change().from()), " -> ",
                       StateName(e.state_change().to()), " (attempt ", e.state_change().attempt(),
                       "): ", e.state_change().reason()));
    }
  }
  if (entry.events_loaded) {
    for (JobEvent& e : events) entry.events.push_back(std::make_shared<const JobEvent>(std::move(e)));
    if (IsTerminal(new_state) && !IsTerminal(old_state)) NoteTerminalLogCached(entry.job.id());
  }
  if (!entry.sinks.empty() && (!events.empty() || IsTerminal(new_state))) {
    for (auto& weak : entry.sinks) {
      after->push_back([weak] {
        if (auto sink = weak.lock()) sink->OnEventsAvailable();
      });
    }
    entry.sinks.clear();
  }
  return absl::OkStatus();
}

// ---- QuantizationService -------------------------------------------------------------------

absl::StatusOr<Job> JobManager::CreateJob(const gptq::v1::CreateJobRequest& request) {
  GPTQ_RETURN_IF_ERROR(ValidateCreateJobRequest(request, options_.validation));
  Deferred after;
  absl::StatusOr<Job> result;
  {
    absl::MutexLock lock(&mu_);
    if (!request.request_id().empty()) {
      auto it = by_request_id_.find(request.request_id());
      if (it != by_request_id_.end()) return jobs_.at(it->second).job;
    }
    // Two live jobs must not write into one directory.
    auto output = ResolveUri("spec.output_uri", request.spec().output_uri(), false, {});
    for (const auto& [other_id, other] : jobs_) {
      if (IsTerminal(other.job.state())) continue;
      auto other_output = ResolveUri("", other.job.spec().output_uri(), false, {});
      if (output.ok() && other_output.ok() && output->local_path == other_output->local_path) {
        return absl::InvalidArgumentError(absl::StrCat(
            "spec.output_uri: ", output->local_path, " is already the output of job ", other_id,
            " (", StateName(other.job.state()), ")"));
      }
    }
    Job job;
    job.set_id(NewId("job"));
    *job.mutable_labels() = request.labels();
    *job.mutable_spec() = request.spec();
    job.set_state(gptq::v1::JOB_STATE_QUEUED);
    const absl::Time now = absl::Now();
    SetTime(job.mutable_create_time(), now);
    job.set_request_id(request.request_id());
    job.set_priority(request.priority());
    std::vector<JobEvent> events = {StateChangeEvent(gptq::v1::JOB_STATE_UNSPECIFIED,
                                                     gptq::v1::JOB_STATE_QUEUED, "created", 0)};
    events[0].set_job_id(job.id());
    events[0].set_sequence(1);
    SetTime(events[0].mutable_time(), now);
    GPTQ_ASSIGN_OR_RETURN(int64_t order, store_->InsertJob(job, 0, events));
    JobEntry entry;
    entry.job = job;
    entry.order = order;
    entry.last_sequence = 1;
    entry.events_loaded = true;
    entry.events.push_back(std::make_shared<const JobEvent>(events[0]));
    by_order_[order] = job.id();
    if (!job.request_id().empty()) by_request_id_[job.request_id()] = job.id();
    queue_.insert({-job.priority(), order, job.id()});
    Log(absl::StrCat("job ", job.id(), ": created (", job.spec().model_uri(), " -> ",
                     job.spec().output_uri(), ", priority ", job.priority(), ")"));
    jobs_.emplace(job.id(), std::move(entry));
    if (metrics_ != nullptr) metrics_->RecordJobCreated();
    Dispatch(&after);
    result = std::move(job);
  }
  RunDeferred(after);
  return result;
}

absl::StatusOr<Job> JobManager::GetJob(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return it->second.job;
}

absl::StatusOr<gptq::v1::ListJobsResponse> JobManager::ListJobs(
    const gptq::v1::ListJobsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: must be in [0, 1000] (got ", request.page_size(), ")"));
  }
  if (!gptq::v1::JobState_IsValid(request.state())) {
    return absl::InvalidArgumentError(absl::StrCat("state: unknown state ", request.state()));
  }
  const int page_size = request.page_size() == 0 ? 50 : request.page_size();
  int64_t before = INT64_MAX;
  if (!request.page_token().empty()) {
    if (!absl::StartsWith(request.page_token(), kPageTokenPrefix) ||
        !absl::SimpleAtoi(request.page_token().substr(1), &before) || before <= 0) {
      return absl::InvalidArgumentError("page_token: malformed (use next_page_token as given)");
    }
  }
  gptq::v1::ListJobsResponse response;
  absl::MutexLock lock(&mu_);
  auto matches = [&](const Job& job) {
    if (request.state() != gptq::v1::JOB_STATE_UNSPECIFIED && job.state() != request.state()) {
      return false;
    }
    for (const auto& [k, v] : request.label_selector()) {
      auto it = job.labels().find(k);
      if (it == job.labels().end() || it->second != v) return false;
    }
    return true;
  };
  int64_t last_order = 0;
  for (auto it = std::make_reverse_iterator(by_order_.lower_bound(before));
       it != by_order_.rend(); ++it) {
    const Job& job = jobs_.at(it->second).job;
    if (!matches(job)) continue;
    if (response.jobs_size() == page_size) {
      // One more match exists: hand out a token for the next page.
      response.set_next_page_token(absl::StrCat(kPageTokenPrefix, last_order));
      break;
    }
    *response.add_jobs() = job;
    last_order = it->first;
  }
  return response;
}

absl::StatusOr<Job> JobManager::CancelJob(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  Deferred after;
  absl::StatusOr<Job> result;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    JobEntry& entry = it->second;
    Job updated = entry.job;
    if (updated.state() == gptq::v1::JOB_STATE_QUEUED) {
      updated.set_state(gptq::v1::JOB_STATE_CANCELLED);
      SetTime(updated.mutable_end_time(), absl::Now());
      GPTQ_RETURN_IF_ERROR(Commit(entry, updated, entry.epoch,
                                  {StateChangeEvent(gptq::v1::JOB_STATE_QUEUED,
                                                    gptq::v1::JOB_STATE_CANCELLED,
                                                    "cancelled while queued", updated.attempt())},
                                  &after));
    } else if (updated.state() == gptq::v1::JOB_STATE_RUNNING && !updated.cancel_requested()) {
      updated.set_cancel_requested(true);
      GPTQ_RETURN_IF_ERROR(Commit(
          entry, updated, entry.epoch,
          {LogEvent(gptq::v1::LogLine::LEVEL_INFO,
                    absl::StrCat("cancel requested; telling worker ", updated.worker_id()))},
          &after));
      CompleteHeartbeats(id, /*cancel=*/true, /*lease_lost=*/false, &after);
    }
    result = entry.job;
  }
  RunDeferred(after);
  return result;
}

absl::Status JobManager::DeleteJob(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  Deferred after;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    JobEntry& entry = it->second;
    if (!IsTerminal(entry.job.state())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", StateName(entry.job.state()),
          "; only terminal jobs (succeeded, failed, cancelled) can be deleted"));
    }
    GPTQ_RETURN_IF_ERROR(store_->DeleteJob(id));
    for (auto& weak : entry.sinks) {
      after.push_back([weak] {
        if (auto sink = weak.lock()) sink->OnEventsAvailable();
      });
    }
    by_order_.erase(entry.order);
    if (!entry.job.request_id().empty()) by_request_id_.erase(entry.job.request_id());
    jobs_.erase(it);
  }
  RunDeferred(after);
  return absl::OkStatus();
}

absl::StatusOr<EventBatch> JobManager::ReadEvents(const std::string& id, int64_t next_sequence,
                                                  size_t max_events,
                                                  std::weak_ptr<EventSink> sink) {
  absl::MutexLock lock(&mu_);
  EventBatch batch;
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  JobEntry& entry = it->second;
  GPTQ_RETURN_IF_ERROR(EnsureEventsLoaded(entry));
  const int64_t first = std::max<int64_t>(next_sequence, 1);
  const int64_t available = static_cast<int64_t>(entry.events.size());
  for (int64_t s = first; s <= available && batch.events.size() < max_events; ++s) {
    batch.events.push_back(entry.events[s - 1]);
  }
  if (batch.events.empty()) {
    if (IsTerminal(entry.job.state()) && first > entry.last_sequence) {
      batch.end_of_log = true;
    } else if (shutting_down_) {
      batch.shutting_down = true;
    } else if (!sink.expired()) {
      entry.sinks.push_back(std::move(sink));
    }
  }
  return batch;
}

// ---- Scheduling ----------------------------------------------------------------------------

bool JobManager::AnyCudaWorker() const {
  for (const auto& [id, w] : workers_) {
    if (absl::StartsWith(w.capabilities.device(), "cuda")) return true;
  }
  return false;
}

JobManager::JobEntry* JobManager::FindJobToLease(const WorkerEntry& worker) {
  const bool is_cuda = absl::StartsWith(worker.capabilities.device(), "cuda");
  const bool cuda_present = is_cuda || AnyCudaWorker();
  for (const QueueKey& key : queue_) {
    JobEntry& entry = jobs_.at(std::get<2>(key));
    const auto pref = entry.job.spec().device();
    bool ok;
    if (pref == gptq::v1::DEVICE_PREFERENCE_CUDA) {
      ok = is_cuda;
    } else if (pref == gptq::v1::DEVICE_PREFERENCE_CPU) {
      ok = !is_cuda;
    } else {
      ok = is_cuda || !cuda_present;
    }
    if (ok) return &entry;
  }
  return nullptr;
}

absl::StatusOr<wv1::Lease> JobManager::LeaseTo(WorkerEntry& worker, JobEntry& entry,
                                               Deferred* after) {
  Job updated = entry.job;
  const int64_t epoch = entry.epoch + 1;
  updated.set_state(gptq::v1::JOB_STATE_RUNNING);
  updated.set_attempt(updated.attempt() + 1);
  updated.set_worker_id(worker.id);
  updated.set_cancel_requested(false);
  SetTime(updated.mutable_start_time(), absl::Now());
  updated.clear_progress();
  const std::string reason =
      absl::StrCat("leased by worker ", worker.id, " (", worker.name, ", ",
                   worker.capabilities.device(), "), attempt ", updated.attempt(), "/",
                   options_.max_attempts);
  GPTQ_RETURN_IF_ERROR(Commit(entry, updated, epoch,
                              {StateChangeEvent(gptq::v1::JOB_STATE_QUEUED,
                                                gptq::v1::JOB_STATE_RUNNING, reason,
                                                updated.attempt())},
                              after));
  worker.job_id = entry.job.id();
  worker.epoch = epoch;
  wv1::Lease lease;
  lease.set_job_id(entry.job.id());
  lease.set_lease_epoch(epoch);
  lease.set_attempt(entry.job.attempt());
  *lease.mutable_spec() = entry.job.spec();
  // Resolution cannot fail for a stored spec unless the roots changed since; then the worker
  // gets the raw URI and reports its own error.
  auto model = ResolveUri("spec.model_uri", entry.job.spec().model_uri(), true, {});
  if (model.ok() && model->scheme == ResolvedUri::Scheme::kLocal) {
    lease.set_model_dir(model->local_path);
  }
  auto output = ResolveUri("spec.output_uri", entry.job.spec().output_uri(), false, {});
  if (output.ok()) lease.set_output_dir(output->local_path);
  return lease;
}

void JobManager::Dispatch(Deferred* after) {
  if (shutting_down_) return;
  for (auto it = pending_leases_.begin(); it != pending_leases_.end() && !queue_.empty();) {
    auto wit = workers_.find(it->worker_id);
    if (wit == workers_.end()) {
      ++it;
      continue;
    }
    JobEntry* entry = FindJobToLease(wit->second);
    if (entry == nullptr) {
      ++it;
      continue;
    }
    auto lease = LeaseTo(wit->second, *entry, after);
    LeaseCallback done = std::move(it->done);
    it = pending_leases_.erase(it);
    --wit->second.held_calls;
    wit->second.last_seen = absl::Now();
    if (!lease.ok()) {
      after->push_back([done, s = lease.status()] { done(s, {}); });
      continue;
    }
    wv1::LeaseJobResponse response;
    *response.mutable_lease() = *std::move(lease);
    after->push_back([done, response] { done(absl::OkStatus(), response); });
  }
}

void JobManager::CompleteHeartbeats(const std::string& job_id, bool cancel, bool lease_lost,
                                    Deferred* after) {
  auto range = pending_heartbeats_.equal_range(job_id);
  for (auto it = range.first; it != range.second;) {
    wv1::HeartbeatResponse response;
    response.set_cancel(cancel);
    response.set_lease_lost(lease_lost);
    HeartbeatCallback done = std::move(it->second.done);
    ReleaseWorkerCall(it->second.worker_id);
    it = pending_heartbeats_.erase(it);
    after->push_back([done, response] { done(absl::OkStatus(), response); });
  }
}

void JobManager::ReleaseWorkerCall(const std::string& worker_id) {
  auto wit = workers_.find(worker_id);
  if (wit == workers_.end()) return;
  --wit->second.held_calls;
  wit->second.last_seen = absl::Now();
}

void JobManager::LoseLease(JobEntry& entry, const std::string& reason,
                           const std::string& metric_reason, bool count_attempt,
                           Deferred* after) {
  if (entry.job.state() != gptq::v1::JOB_STATE_RUNNING) return;
  Job updated = entry.job;
  JobState to;
  std::string why;
  if (updated.cancel_requested()) {
    to = gptq::v1::JOB_STATE_CANCELLED;
    why = absl::StrCat("cancelled (", reason, ")");
  } else if (count_attempt && updated.attempt() >= options_.max_attempts) {
    to = gptq::v1::JOB_STATE_FAILED;
    why = absl::StrCat(reason, "; attempt ", updated.attempt(), " of ", options_.max_attempts,
                       ", giving up");
    updated.mutable_error()->set_code(14);  // UNAVAILABLE
    updated.mutable_error()->set_message(why);
  } else {
    to = gptq::v1::JOB_STATE_QUEUED;
    why = absl::StrCat(reason, "; requeued");
    if (metrics_ != nullptr) metrics_->RecordRequeue(metric_reason);
  }
  updated.set_state(to);
  updated.set_cancel_requested(false);
  if (IsTerminal(to)) SetTime(updated.mutable_end_time(), absl::Now());
  if (!count_attempt && to == gptq::v1::JOB_STATE_QUEUED) {
    // The attempt did not fail on its own (server shutdown): it does not count.
    updated.set_attempt(std::max(0, updated.attempt() - 1));
  }
  const std::string worker_id = entry.job.worker_id();
  absl::Status s = Commit(entry, updated, entry.epoch,
                          {StateChangeEvent(gptq::v1::JOB_STATE_RUNNING, to, why,
                                            entry.job.attempt())},
                          after);
  if (!s.ok()) {
    std::fprintf(stderr, "gptq-server: cannot store lost lease of job %s: %s\n",
                 entry.job.id().c_str(), s.ToString().c_str());
    return;
  }
  auto wit = workers_.find(worker_id);
  if (wit != workers_.end() && wit->second.job_id == entry.job.id()) {
    wit->second.job_id.clear();
    wit->second.epoch = 0;
  }
  CompleteHeartbeats(entry.job.id(), /*cancel=*/false, /*lease_lost=*/true, after);
  if (to == gptq::v1::JOB_STATE_QUEUED) Dispatch(after);
}

absl::StatusOr<JobManager::JobEntry*> JobManager::CheckLease(const std::string& worker_id,
                                                             const std::string& job_id,
                                                             int64_t epoch,
                                                             Deferred* after) {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id: is required");
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  }
  JobEntry& entry = it->second;
  if (entry.job.state() != gptq::v1::JOB_STATE_RUNNING || entry.epoch != epoch) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stale lease: job ", job_id, " is ", StateName(entry.job.state()), " at lease epoch ",
        entry.epoch, "; the report carries epoch ", epoch));
  }
  auto wit = workers_.find(worker_id);
  if (wit != workers_.end()) {
    WorkerEntry& w = wit->second;
    w.last_seen = absl::Now();
    if (w.job_id != job_id || w.epoch != epoch || entry.job.worker_id() != worker_id) {
      // Re-adoption (e.g. after a server restart the worker registered again). A worker runs
      // one job: a different lease it still held is over.
      if (!w.job_id.empty() && w.job_id != job_id) {
        auto old = jobs_.find(w.job_id);
        if (old != jobs_.end() && old->second.epoch == w.epoch) {
          LoseLease(old->second,
                    absl::StrCat("worker ", worker_id, " now reports job ", job_id),
                    "worker_released", /*count_attempt=*/true, after);
        }
      }
      w.job_id = job_id;
      w.epoch = epoch;
      if (entry.job.worker_id() != worker_id) {
        Job updated = entry.job;
        updated.set_worker_id(worker_id);
        GPTQ_RETURN_IF_ERROR(Commit(
            entry, updated, entry.epoch,
            {LogEvent(gptq::v1::LogLine::LEVEL_INFO,
                      absl::StrCat("lease epoch ", epoch, " re-adopted by worker ", worker_id))},
            after));
      }
    }
    orphans_.erase(job_id);
    entry.orphan_deadline = absl::InfiniteFuture();
  } else {
    // Unknown worker (server restarted): the epoch is the fence; keep the lease alive.
    entry.orphan_deadline = absl::Now() + 3 * options_.heartbeat_period;
    orphans_.insert(job_id);
  }
  return &entry;
}

// ---- WorkerService -------------------------------------------------------------------------

absl::StatusOr<wv1::RegisterResponse> JobManager::Register(const wv1::RegisterRequest& request) {
  const std::string& device = request.capabilities().device();
  if (device != "cpu" && !absl::StartsWith(device, "cuda")) {
    return absl::InvalidArgumentError(
        absl::StrCat("capabilities.device: must be \"cuda\" or \"cpu\" (got \"", device, "\")"));
  }
  Deferred after;
  wv1::RegisterResponse response;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("server is shutting down");
    WorkerEntry w;
    w.id = NewId("w");
    w.name = request.name();
    w.capabilities = request.capabilities();
    w.last_seen = absl::Now();
    response.set_worker_id(w.id);
    response.set_heartbeat_seconds(absl::ToDoubleSeconds(options_.heartbeat_period));
    Log(absl::StrCat("worker ", w.id, " registered: ", w.name, " (",
                     w.capabilities.device(), ", ", w.capabilities.device_name(), ")"));
    workers_.emplace(w.id, std::move(w));
    Dispatch(&after);
  }
  RunDeferred(after);
  return response;
}

void JobManager::CancelLeaseWait(uint64_t wait_id) {
  Deferred after;
  absl::MutexLock lock(&mu_);
  for (auto it = pending_leases_.begin(); it != pending_leases_.end(); ++it) {
    if (it->wait_id != wait_id) continue;
    LeaseCallback done = std::move(it->done);
    ReleaseWorkerCall(it->worker_id);
    pending_leases_.erase(it);
    after.push_back([done] { done(absl::CancelledError("LeaseJob call cancelled"), {}); });
    return;
  }
}

uint64_t JobManager::LeaseJob(const wv1::LeaseJobRequest& request, LeaseCallback done) {
  Deferred after;
  uint64_t wait_id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto wit = workers_.find(request.worker_id());
    if (wit == workers_.end()) {
      after.push_back([done, id = request.worker_id()] {
        done(absl::NotFoundError(
                 absl::StrCat("unknown worker id '", id, "'; call Register again")),
             {});
      });
    } else if (shutting_down_) {
      after.push_back([done] { done(absl::OkStatus(), {}); });
    } else {
      WorkerEntry& w = wit->second;
      w.last_seen = absl::Now();
      if (!w.job_id.empty()) {
        auto jit = jobs_.find(w.job_id);
        if (jit != jobs_.end() && jit->second.epoch == w.epoch) {
          LoseLease(jit->second,
                    absl::StrCat("worker ", w.id, " asked for a new job while holding this one"),
                    "worker_released", /*count_attempt=*/true, &after);
        }
        w.job_id.clear();
        w.epoch = 0;
      }
      JobEntry* entry = FindJobToLease(w);
      const double wait = std::clamp(request.wait_seconds(), 0.0, kMaxLeaseWaitSeconds);
      if (entry != nullptr) {
        auto lease = LeaseTo(w, *entry, &after);
        if (!lease.ok()) {
          after.push_back([done, s = lease.status()] { done(s, {}); });
        } else {
          wv1::LeaseJobResponse response;
          *response.mutable_lease() = *std::move(lease);
          after.push_back([done, response] { done(absl::OkStatus(), response); });
        }
      } else if (wait <= 0) {
        after.push_back([done] { done(absl::OkStatus(), {}); });
      } else {
        ++w.held_calls;
        wait_id = ++wait_counter_;
        pending_leases_.push_back(
            {wait_id, w.id, absl::Now() + absl::Seconds(wait), std::move(done)});
      }
    }
  }
  RunDeferred(after);
  return wait_id;
}

void JobManager::Heartbeat(const wv1::HeartbeatRequest& request, HeartbeatCallback done) {
  Deferred after;
  {
    absl::MutexLock lock(&mu_);
    wv1::HeartbeatResponse response;
    const bool known = workers_.count(request.worker_id()) > 0;
    if (!known) response.set_reregister(true);
    bool hold = false;
    if (!request.job_id().empty()) {
      auto entry = CheckLease(request.worker_id(), request.job_id(), request.lease_epoch(), &after);
      if (!entry.ok()) {
        response.set_lease_lost(true);
      } else if ((*entry)->job.cancel_requested()) {
        response.set_cancel(true);
      } else if (known && !shutting_down_) {
        hold = true;
      }
    } else if (known) {
      workers_.at(request.worker_id()).last_seen = absl::Now();
    }
    if (hold) {
      ++workers_.at(request.worker_id()).held_calls;
      pending_heartbeats_.emplace(
          request.job_id(), PendingHeartbeat{request.worker_id(), request.lease_epoch(),
                                             absl::Now() + options_.heartbeat_period,
                                             std::move(done)});
    } else {
      after.push_back([done, response] { done(absl::OkStatus(), response); });
    }
  }
  RunDeferred(after);
}

void JobManager::ReturnLease(const std::string& job_id, int64_t epoch,
                             const std::string& reason) {
  Deferred after;
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.epoch != epoch ||
      it->second.job.state() != gptq::v1::JOB_STATE_RUNNING) {
    return;
  }
  LoseLease(it->second, reason, "worker_released", /*count_attempt=*/false, &after);
}

absl::StatusOr<wv1::ReportEventsResponse> JobManager::ReportEvents(
    const wv1::ReportEventsRequest& request) {
  if (request.events_size() > kMaxEventsPerReport) {
    return absl::InvalidArgumentError(absl::StrCat("events: at most ", kMaxEventsPerReport,
                                                   " per call (got ", request.events_size(), ")"));
  }
  std::vector<JobEvent> events;
  events.reserve(request.events_size());
  for (int i = 0; i < request.events_size(); ++i) {
    const JobEvent& e = request.events(i);
    if (e.kind_case() == JobEvent::KIND_NOT_SET) {
      return absl::InvalidArgumentError(absl::StrCat("events[", i, "]: no kind is set"));
    }
    if (e.kind_case() == JobEvent::kStateChange) {
      return absl::InvalidArgumentError(
          absl::StrCat("events[", i, "]: state_change events are written by the server only"));
    }
    events.push_back(e);
    events.back().clear_job_id();
    events.back().clear_sequence();
    events.back().clear_time();
  }
  Deferred after;
  wv1::ReportEventsResponse response;
  {
    absl::MutexLock lock(&mu_);
    GPTQ_ASSIGN_OR_RETURN(JobEntry * entry,
                          CheckLease(request.worker_id(), request.job_id(),
                                     request.lease_epoch(), &after));
    if (!events.empty() || request.has_progress()) {
      Job updated = entry->job;
      if (request.has_progress()) *updated.mutable_progress() = request.progress();
      GPTQ_RETURN_IF_ERROR(Commit(*entry, updated, entry->epoch, std::move(events), &after));
    }
    response.set_cancel(entry->job.cancel_requested());
  }
  RunDeferred(after);
  return response;
}

absl::Status JobManager::FinishJob(const wv1::FinishJobRequest& request) {
  if (request.outcome_case() == wv1::FinishJobRequest::OUTCOME_NOT_SET) {
    return absl::InvalidArgumentError("outcome: results or error is required");
  }
  Deferred after;
  {
    absl::MutexLock lock(&mu_);
    GPTQ_ASSIGN_OR_RETURN(JobEntry * entry,
                          CheckLease(request.worker_id(), request.job_id(),
                                     request.lease_epoch(), &after));
    Job updated = entry->job;
    JobState to;
    std::string reason;
    if (request.has_results()) {
      to = gptq::v1::JOB_STATE_SUCCEEDED;
      *updated.mutable_results() = request.results();
      if (updated.results().output_location().empty()) {
        auto output = ResolveUri("spec.output_uri", updated.spec().output_uri(), false, {});
        if (output.ok()) updated.mutable_results()->set_output_location(output->local_path);
      }
      updated.mutable_progress()->set_fraction(1.0);
      updated.mutable_progress()->clear_eta_seconds();
      reason = "finished";
    } else if (request.error().code() == 1) {
      to = gptq::v1::JOB_STATE_CANCELLED;
      reason = updated.cancel_requested()
                   ? "cancelled"
                   : absl::StrCat("worker stopped the job: ", request.error().message());
    } else {
      to = gptq::v1::JOB_STATE_FAILED;
      *updated.mutable_error() = request.error();
      if (updated.error().code() == 0) updated.mutable_error()->set_code(2);  // UNKNOWN
      reason = request.error().message();
    }
    updated.set_state(to);
    updated.set_cancel_requested(false);
    SetTime(updated.mutable_end_time(), absl::Now());
    GPTQ_RETURN_IF_ERROR(Commit(
        *entry, updated, entry->epoch,
        {StateChangeEvent(gptq::v1::JOB_STATE_RUNNING, to, reason, updated.attempt())}, &after));
    auto wit = workers_.find(request.worker_id());
    if (wit != workers_.end() && wit->second.job_id == request.job_id()) {
      wit->second.job_id.clear();
      wit->second.epoch = 0;
    }
    CompleteHeartbeats(request.job_id(), /*cancel=*/false, /*lease_lost=*/false, &after);
  }
  RunDeferred(after);
  return absl::OkStatus();
}

// ---- Housekeeping ---------------------------------------------------------------------------

void JobManager::Tick() {
  Deferred after;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    const absl::Duration expiry = 3 * options_.heartbeat_period;
    // Held calls that reached their deadline.
    for (auto it = pending_heartbeats_.begin(); it != pending_heartbeats_.end();) {
      if (it->second.deadline > now) {
        ++it;
        continue;
      }
      HeartbeatCallback done = std::move(it->second.done);
      ReleaseWorkerCall(it->second.worker_id);
      it = pending_heartbeats_.erase(it);
      after.push_back([done] { done(absl::OkStatus(), {}); });
    }
    for (auto it = pending_leases_.begin(); it != pending_leases_.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      LeaseCallback done = std::move(it->done);
      ReleaseWorkerCall(it->worker_id);
      it = pending_leases_.erase(it);
      after.push_back([done] { done(absl::OkStatus(), {}); });
    }
    // Silent workers.
    bool workers_changed = false;
    for (auto it = workers_.begin(); it != workers_.end();) {
      WorkerEntry& w = it->second;
      if (w.held_calls > 0 || now - w.last_seen <= expiry) {
        ++it;
        continue;
      }
      const std::string job_id = w.job_id;
      const int64_t epoch = w.epoch;
      const std::string reason = absl::StrCat("worker ", w.id, " (", w.name,
                                              ") lost: no heartbeat for ", FormatSeconds(expiry));
      Log(reason);
      it = workers_.erase(it);
      workers_changed = true;
      auto jit = jobs_.find(job_id);
      if (!job_id.empty() && jit != jobs_.end() && jit->second.epoch == epoch) {
        LoseLease(jit->second, reason, "worker_lost", /*count_attempt=*/true, &after);
      }
    }
    // RUNNING jobs whose worker never came back after a restart.
    std::vector<std::string> expired;
    for (const std::string& id : orphans_) {
      auto jit = jobs_.find(id);
      if (jit == jobs_.end() || jit->second.orphan_deadline <= now) expired.push_back(id);
    }
    for (const std::string& id : expired) {
      orphans_.erase(id);
      auto jit = jobs_.find(id);
      if (jit == jobs_.end()) continue;
      // Only an unknown worker makes a job an orphan; a known one is tracked above.
      auto wit = workers_.find(jit->second.job.worker_id());
      if (wit != workers_.end() && wit->second.job_id == id) continue;
      LoseLease(jit->second,
                absl::StrCat("lease of worker ", jit->second.job.worker_id(),
                             " not renewed within ", FormatSeconds(expiry),
                             " after a server restart"),
                "restart", /*count_attempt=*/true, &after);
    }
    if (workers_changed) Dispatch(&after);
  }
  RunDeferred(after);
}

void JobManager::Shutdown() {
  Deferred after;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
    for (auto& [id, entry] : jobs_) {
      if (entry.job.state() == gptq::v1::JOB_STATE_RUNNING) {
        LoseLease(entry, "server shutting down: lease handed back", "shutdown",
                  /*count_attempt=*/false, &after);
      }
    }
    for (auto& [job_id, hb] : pending_heartbeats_) {
      wv1::HeartbeatResponse response;
      response.set_lease_lost(true);
      after.push_back([done = std::move(hb.done), response] { done(absl::OkStatus(), response); });
    }
    pending_heartbeats_.clear();
    for (auto& pl : pending_leases_) {
      after.push_back([done = std::move(pl.done)] { done(absl::OkStatus(), {}); });
    }
    pending_leases_.clear();
    for (auto& [id, entry] : jobs_) {
      for (auto& weak : entry.sinks) {
        after.push_back([weak] {
          if (auto sink = weak.lock()) sink->OnEventsAvailable();
        });
      }
      entry.sinks.clear();
    }
  }
  RunDeferred(after);
}

bool JobManager::shutting_down() const {
  absl::MutexLock lock(&mu_);
  return shutting_down_;
}

MetricsSnapshot JobManager::Snapshot() const {
  absl::MutexLock lock(&mu_);
  MetricsSnapshot s;
  for (JobState st : {gptq::v1::JOB_STATE_QUEUED, gptq::v1::JOB_STATE_RUNNING,
                      gptq::v1::JOB_STATE_SUCCEEDED, gptq::v1::JOB_STATE_FAILED,
                      gptq::v1::JOB_STATE_CANCELLED}) {
    s.jobs_by_state[StateName(st)] = 0;
  }
  for (const auto& [id, entry] : jobs_) ++s.jobs_by_state[StateName(entry.job.state())];
  s.queue_depth = static_cast<int64_t>(queue_.size());
  s.workers_connected = static_cast<int64_t>(workers_.size());
  s.held_calls = static_cast<int64_t>(pending_heartbeats_.size() + pending_leases_.size());
  for (const auto& [id, w] : workers_) {
    if (!w.job_id.empty()) ++s.workers_busy;
  }
  return s;
}

}  // namespace gptq::server
