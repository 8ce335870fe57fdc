#include "job_manager.h"

#include <filesystem>
#include <optional>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "test_util.h"

namespace gptq::server {
namespace {

namespace wv1 = gptq::worker::v1;
using gptq::v1::JobState;
using testing::TempDir;
using testing::WaitFor;

constexpr absl::Duration kPeriod = absl::Milliseconds(100);

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.File("model"));
    Open();
  }
  void Open(int max_attempts = 3) {
    manager_.reset();
    store_.reset();
    auto store = JobStore::Open(dir_.File("jobs.db"));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    ManagerOptions options;
    options.heartbeat_period = kPeriod;
    options.max_attempts = max_attempts;
    auto m = JobManager::Create(store_.get(), options, &metrics_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
  }
  gptq::v1::Job Create(int priority = 0, const std::string& request_id = "",
                       gptq::v1::DevicePreference device = gptq::v1::DEVICE_PREFERENCE_UNSPECIFIED,
                       std::map<std::string, std::string> labels = {}) {
    gptq::v1::CreateJobRequest r;
    r.mutable_spec()->set_model_uri(dir_.File("model"));
    r.mutable_spec()->set_output_uri(dir_.File("out-" + std::to_string(++outputs_)));
    r.mutable_spec()->set_device(device);
    r.set_priority(priority);
    r.set_request_id(request_id);
    for (auto& [k, v] : labels) (*r.mutable_labels())[k] = v;
    auto job = manager_->CreateJob(r);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : gptq::v1::Job();
  }
  std::string Register(const std::string& device = "cpu") {
    wv1::RegisterRequest r;
    r.set_name("test-" + device);
    r.mutable_capabilities()->set_device(device);
    auto resp = manager_->Register(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp->worker_id();
  }
  // LeaseJob with wait 0.
  std::optional<wv1::Lease> Lease(const std::string& worker) {
    wv1::LeaseJobRequest r;
    r.set_worker_id(worker);
    std::optional<wv1::Lease> out;
    absl::Status status;
    manager_->LeaseJob(r, [&](absl::Status s, wv1::LeaseJobResponse resp) {
      status = s;
      if (resp.has_lease()) out = resp.lease();
    });
    EXPECT_TRUE(status.ok()) << status;
    return out;
  }
  JobState State(const std::string& id) { return manager_->GetJob(id)->state(); }
  absl::Status Finish(const std::string& worker, const wv1::Lease& lease, int error_code = -1) {
    wv1::FinishJobRequest f;
    f.set_worker_id(worker);
    f.set_job_id(lease.job_id());
    f.set_lease_epoch(lease.lease_epoch());
    if (error_code < 0) {
      f.mutable_results()->set_output_location(lease.output_dir());
    } else {
      f.mutable_error()->set_code(error_code);
      f.mutable_error()->set_message("boom");
    }
    return manager_->FinishJob(f);
  }
  // Ticks until the job reaches `state`.
  bool AwaitState(const std::string& id, JobState state, absl::Duration timeout = absl::Seconds(5)) {
    return WaitFor(
        [&] {
          manager_->Tick();
          return State(id) == state;
        },
        timeout, absl::Milliseconds(2));
  }

  TempDir dir_;
  Metrics metrics_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<JobManager> manager_;
  int outputs_ = 0;
};

TEST_F(JobManagerTest, CreateIsIdempotentOnRequestId) {
  auto a = Create(0, "req-1");
  auto b = Create(5, "req-1");
  EXPECT_EQ(a.id(), b.id());
  EXPECT_EQ(b.priority(), 0);
  EXPECT_EQ(a.state(), gptq::v1::JOB_STATE_QUEUED);
  EXPECT_NE(Create(0, "req-2").id(), a.id());
}

TEST_F(JobManagerTest, TwoLiveJobsCannotShareAnOutputDirectory) {
  auto first = Create();
  gptq::v1::CreateJobRequest r;
  r.mutable_spec()->set_model_uri(dir_.File("model"));
  r.mutable_spec()->set_output_uri("file://" + dir_.File("out-1/"));
  auto dup = manager_->CreateJob(r);
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dup.status().message(),
            absl::StrCat("spec.output_uri: ", dir_.File("out-1"), " is already the output of job ",
                         first.id(), " (queued)"));
  ASSERT_TRUE(manager_->CancelJob(first.id()).ok());
  EXPECT_TRUE(manager_->CreateJob(r).ok());  // The first one is terminal now.
}

TEST_F(JobManagerTest, InvalidRequestIsNotStored) {
  gptq::v1::CreateJobRequest r;
  r.mutable_spec()->set_model_uri(dir_.File("model"));
  r.mutable_spec()->set_output_uri(dir_.File("o"));
  r.mutable_spec()->set_bits(7);
  auto job = manager_->CreateJob(r);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(job.status().message(), "spec.bits: must be 2, 3, 4 or 8 (got 7)");
  EXPECT_EQ(manager_->ListJobs({})->jobs_size(), 0);
}

TEST_F(JobManagerTest, FifoWithinPriority) {
  auto a = Create(0);
  auto b = Create(5);
  auto c = Create(0);
  auto d = Create(5);
  const std::string w = Register();
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) {
    auto lease = Lease(w);
    ASSERT_TRUE(lease.has_value());
    order.push_back(lease->job_id());
    ASSERT_TRUE(Finish(w, *lease).ok());
  }
  EXPECT_EQ(order, (std::vector<std::string>{b.id(), d.id(), a.id(), c.id()}));
  EXPECT_FALSE(Lease(w).has_value());
}

TEST_F(JobManagerTest, DevicePreference) {
  auto cuda_job = Create(0, "", gptq::v1::DEVICE_PREFERENCE_CUDA);
  auto any_job = Create(0, "", gptq::v1::DEVICE_PREFERENCE_UNSPECIFIED);
  const std::string cpu = Register("cpu");
  // Only a CPU worker is connected: it may take the "any" job but not the CUDA one.
  auto l1 = Lease(cpu);
  ASSERT_TRUE(l1.has_value());
  EXPECT_EQ(l1->job_id(), any_job.id());
  // Asking again hands l1 back; the only job it may run is that one again.
  auto l1b = Lease(cpu);
  ASSERT_TRUE(l1b.has_value());
  EXPECT_EQ(l1b->job_id(), any_job.id());
  EXPECT_EQ(l1b->attempt(), 2);
  const std::string gpu = Register("cuda");
  auto l2 = Lease(gpu);
  ASSERT_TRUE(l2.has_value());
  EXPECT_EQ(l2->job_id(), cuda_job.id());
  // With a CUDA worker present, a CPU worker no longer takes "any" jobs.
  EXPECT_FALSE(Lease(cpu).has_value());  // Hands l1b back.
  const std::string gpu2 = Register("cuda");
  auto l3 = Lease(gpu2);
  ASSERT_TRUE(l3.has_value());
  EXPECT_EQ(l3->job_id(), any_job.id());
  EXPECT_EQ(l3->attempt(), 3);
  // A CPU-only job never goes to a CUDA worker.
  auto cpu_job = Create(0, "", gptq::v1::DEVICE_PREFERENCE_CPU);
  const std::string gpu3 = Register("cuda");
  EXPECT_FALSE(Lease(gpu3).has_value());
  auto l4 = Lease(cpu);
  ASSERT_TRUE(l4.has_value());
  EXPECT_EQ(l4->job_id(), cpu_job.id());
}

TEST_F(JobManagerTest, LeaseResolvesLocalPaths) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->model_dir(), dir_.File("model"));
  EXPECT_EQ(lease->output_dir(), dir_.File("out-1"));
  EXPECT_EQ(lease->lease_epoch(), 1);
  EXPECT_EQ(lease->attempt(), 1);
  EXPECT_EQ(lease->spec().model_uri(), dir_.File("model"));

  gptq::v1::CreateJobRequest r;
  r.mutable_spec()->set_model_uri("hf://org/model@v1");
  r.mutable_spec()->set_output_uri(dir_.File("hf-out"));
  ASSERT_TRUE(manager_->CreateJob(r).ok());
  const std::string w2 = Register();
  auto hf = Lease(w2);
  ASSERT_TRUE(hf.has_value());
  EXPECT_EQ(hf->model_dir(), "");
  EXPECT_EQ(hf->spec().model_uri(), "hf://org/model@v1");
  EXPECT_EQ(hf->output_dir(), dir_.File("hf-out"));
}

TEST_F(JobManagerTest, SilentWorkerLosesLeaseAndStaleEpochIsFenced) {
  auto job = Create();
  const std::string w1 = Register();
  auto l1 = Lease(w1);
  ASSERT_TRUE(l1.has_value());
  ASSERT_TRUE(AwaitState(job.id(), gptq::v1::JOB_STATE_QUEUED));
  auto after_loss = manager_->GetJob(job.id());
  EXPECT_EQ(after_loss->attempt(), 1);
  const std::string w2 = Register();
  auto l2 = Lease(w2);
  ASSERT_TRUE(l2.has_value());
  EXPECT_EQ(l2->lease_epoch(), l1->lease_epoch() + 1);
  EXPECT_EQ(l2->attempt(), 2);

  wv1::ReportEventsRequest report;
  report.set_worker_id(w1);
  report.set_job_id(job.id());
  report.set_lease_epoch(l1->lease_epoch());
  report.add_events()->mutable_log()->set_message("late");
  auto stale = manager_->ReportEvents(report);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(stale.status().message().find("stale lease"), std::string::npos);
  EXPECT_EQ(Finish(w1, *l1).code(), absl::StatusCode::kFailedPrecondition);

  // The stale worker's heartbeat tells it so.
  wv1::HeartbeatRequest hb;
  hb.set_worker_id(w1);
  hb.set_job_id(job.id());
  hb.set_lease_epoch(l1->lease_epoch());
  wv1::HeartbeatResponse got;
  manager_->Heartbeat(hb, [&](absl::Status s, wv1::HeartbeatResponse r) { got = r; });
  EXPECT_TRUE(got.lease_lost());
  EXPECT_TRUE(got.reregister());  // w1 was forgotten.

  ASSERT_TRUE(Finish(w2, *l2).ok());
  EXPECT_EQ(State(job.id()), gptq::v1::JOB_STATE_SUCCEEDED);
}

TEST_F(JobManagerTest, MaxAttemptsThenFailedWithLastError) {
  Open(/*max_attempts=*/2);
  auto job = Create();
  for (int attempt = 1; attempt <= 2; ++attempt) {
    const std::string w = Register();
    auto lease = Lease(w);
    ASSERT_TRUE(lease.has_value());
    EXPECT_EQ(lease->attempt(), attempt);
    ASSERT_TRUE(AwaitState(job.id(), attempt < 2 ? gptq::v1::JOB_STATE_QUEUED
                                                 : gptq::v1::JOB_STATE_FAILED));
  }
  auto failed = manager_->GetJob(job.id());
  EXPECT_EQ(failed->error().code(), 14);
  EXPECT_NE(failed->error().message().find("lost: no heartbeat"), std::string::npos)
      << failed->error().message();
  EXPECT_NE(failed->error().message().find("attempt 2 of 2"), std::string::npos);
  EXPECT_TRUE(failed->has_end_time());
}

TEST_F(JobManagerTest, HeartbeatsKeepTheLease) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  ASSERT_TRUE(lease.has_value());
  // Heartbeat back to back for 10 periods; the held call returns after one period each.
  const absl::Time end = absl::Now() + 10 * kPeriod;
  int beats = 0;
  while (absl::Now() < end) {
    wv1::HeartbeatRequest hb;
    hb.set_worker_id(w);
    hb.set_job_id(job.id());
    hb.set_lease_epoch(lease->lease_epoch());
    absl::Notification done;
    wv1::HeartbeatResponse got;
    manager_->Heartbeat(hb, [&](absl::Status, wv1::HeartbeatResponse r) {
      got = r;
      done.Notify();
    });
    while (!done.WaitForNotificationWithTimeout(absl::Milliseconds(2))) manager_->Tick();
    EXPECT_FALSE(got.lease_lost());
    EXPECT_FALSE(got.cancel());
    ++beats;
  }
  EXPECT_GE(beats, 2);
  EXPECT_LE(beats, 12);  // Held ~one period each, not answered at once.
  EXPECT_EQ(State(job.id()), gptq::v1::JOB_STATE_RUNNING);
}

TEST_F(JobManagerTest, CancelQueuedAndRunning) {
  auto queued = Create();
  auto canceled = manager_->CancelJob(queued.id());
  ASSERT_TRUE(canceled.ok());
  EXPECT_EQ(canceled->state(), gptq::v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(canceled->has_end_time());
  // No-op on a terminal job.
  EXPECT_EQ(manager_->CancelJob(queued.id())->state(), gptq::v1::JOB_STATE_CANCELLED);

  auto running = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->job_id(), running.id());
  wv1::HeartbeatRequest hb;
  hb.set_worker_id(w);
  hb.set_job_id(running.id());
  hb.set_lease_epoch(lease->lease_epoch());
  absl::Notification answered;
  wv1::HeartbeatResponse got;
  manager_->Heartbeat(hb, [&](absl::Status, wv1::HeartbeatResponse r) {
    got = r;
    answered.Notify();
  });
  EXPECT_FALSE(answered.HasBeenNotified());  // Held.
  auto after = manager_->CancelJob(running.id());
  EXPECT_TRUE(after->cancel_requested());
  EXPECT_EQ(after->state(), gptq::v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(answered.HasBeenNotified());  // Answered inside CancelJob.
  EXPECT_TRUE(got.cancel());
  ASSERT_TRUE(Finish(w, *lease, /*error_code=*/1).ok());
  auto done = manager_->GetJob(running.id());
  EXPECT_EQ(done->state(), gptq::v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(done->cancel_requested());
}

TEST_F(JobManagerTest, CancelledJobOfALostWorkerEndsCancelled) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  ASSERT_TRUE(lease.has_value());
  ASSERT_TRUE(manager_->CancelJob(job.id())->cancel_requested());
  ASSERT_TRUE(AwaitState(job.id(), gptq::v1::JOB_STATE_CANCELLED));  // Not requeued.
  EXPECT_EQ(manager_->GetJob(job.id())->attempt(), 1);
}

TEST_F(JobManagerTest, ResultsGetTheOutputLocation) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  wv1::FinishJobRequest f;
  f.set_worker_id(w);
  f.set_job_id(job.id());
  f.set_lease_epoch(lease->lease_epoch());
  f.mutable_results()->set_seconds(2);
  ASSERT_TRUE(manager_->FinishJob(f).ok());
  auto done = manager_->GetJob(job.id());
  EXPECT_EQ(done->results().output_location(), dir_.File("out-1"));
  EXPECT_DOUBLE_EQ(done->progress().fraction(), 1.0);
  EXPECT_TRUE(done->has_end_time());
}

TEST_F(JobManagerTest, WorkerErrorFailsTheJob) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  ASSERT_TRUE(Finish(w, *lease, /*error_code=*/9).ok());
  auto failed = manager_->GetJob(job.id());
  EXPECT_EQ(failed->state(), gptq::v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->error().code(), 9);
  EXPECT_EQ(failed->error().message(), "boom");
}

TEST_F(JobManagerTest, DeleteOnlyTerminal) {
  auto job = Create();
  auto st = manager_->DeleteJob(job.id());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("is queued; only terminal jobs"), std::string::npos) << st;
  ASSERT_TRUE(manager_->CancelJob(job.id()).ok());
  ASSERT_TRUE(manager_->DeleteJob(job.id()).ok());
  EXPECT_EQ(manager_->GetJob(job.id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->DeleteJob(job.id()).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetJob("nope").status().message(), "job nope not found");
}

TEST_F(JobManagerTest, ListPagesAndFilters) {
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    ids.push_back(Create(0, "", gptq::v1::DEVICE_PREFERENCE_UNSPECIFIED,
                         {{"team", i % 2 ? "odd" : "even"}})
                      .id());
  }
  ASSERT_TRUE(manager_->CancelJob(ids[6]).ok());
  gptq::v1::ListJobsRequest r;
  r.set_page_size(3);
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    auto resp = manager_->ListJobs(r);
    ASSERT_TRUE(resp.ok()) << resp.status();
    for (const auto& j : resp->jobs()) seen.push_back(j.id());
    if (resp->next_page_token().empty()) break;
    r.set_page_token(resp->next_page_token());
  }
  EXPECT_EQ(seen, std::vector<std::string>(ids.rbegin(), ids.rend()));  // Newest first.

  gptq::v1::ListJobsRequest f;
  (*f.mutable_label_selector())["team"] = "even";
  f.set_state(gptq::v1::JOB_STATE_QUEUED);
  auto even = manager_->ListJobs(f);
  ASSERT_EQ(even->jobs_size(), 3);  // 0, 2, 4 (6 is cancelled).
  EXPECT_EQ(even->jobs(0).id(), ids[4]);
  EXPECT_TRUE(even->next_page_token().empty());

  gptq::v1::ListJobsRequest bad;
  bad.set_page_token("garbage");
  EXPECT_EQ(manager_->ListJobs(bad).status().message(),
            "page_token: malformed (use next_page_token as given)");
  bad.set_page_token("");
  bad.set_page_size(1001);
  EXPECT_EQ(manager_->ListJobs(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(JobManagerTest, EventsAreSequencedAndWorkerCannotWriteStateChanges) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  wv1::ReportEventsRequest r;
  r.set_worker_id(w);
  r.set_job_id(job.id());
  r.set_lease_epoch(lease->lease_epoch());
  r.add_events()->mutable_module_progress()->set_module("self_attn.q_proj");
  r.add_events()->mutable_log()->set_message("hello");
  r.mutable_progress()->set_fraction(0.5);
  ASSERT_TRUE(manager_->ReportEvents(r).ok());
  EXPECT_DOUBLE_EQ(manager_->GetJob(job.id())->progress().fraction(), 0.5);
  auto batch = manager_->ReadEvents(job.id(), 0, 100, {});
  ASSERT_TRUE(batch.ok());
  ASSERT_EQ(batch->events.size(), 4u);  // created, leased, 2 reported.
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(batch->events[i]->sequence(), static_cast<int64_t>(i) + 1);
    EXPECT_EQ(batch->events[i]->job_id(), job.id());
    EXPECT_GT(batch->events[i]->time().seconds(), 0);
  }
  EXPECT_EQ(batch->events[1]->state_change().to(), gptq::v1::JOB_STATE_RUNNING);

  wv1::ReportEventsRequest bad = r;
  bad.clear_events();
  bad.add_events()->mutable_state_change()->set_to(gptq::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(manager_->ReportEvents(bad).status().message(),
            "events[0]: state_change events are written by the server only");
  bad.clear_events();
  bad.add_events();
  EXPECT_EQ(manager_->ReportEvents(bad).status().message(), "events[0]: no kind is set");
}

class CountingSink : public EventSink {
 public:
  void OnEventsAvailable() override { ++calls; }
  int calls = 0;
};

TEST_F(JobManagerTest, SinkIsNotifiedAndLogEndsAfterTerminalEvent) {
  auto job = Create();
  auto sink = std::make_shared<CountingSink>();
  auto batch = manager_->ReadEvents(job.id(), 2, 10, sink);
  ASSERT_TRUE(batch.ok());
  EXPECT_TRUE(batch->events.empty());
  EXPECT_FALSE(batch->end_of_log);
  const std::string w = Register();
  auto lease = Lease(w);
  EXPECT_EQ(sink->calls, 1);
  ASSERT_TRUE(Finish(w, *lease).ok());
  EXPECT_EQ(sink->calls, 1);  // One-shot until re-registered.
  batch = manager_->ReadEvents(job.id(), 2, 10, sink);
  ASSERT_EQ(batch->events.size(), 2u);
  EXPECT_EQ(batch->events[1]->state_change().to(), gptq::v1::JOB_STATE_SUCCEEDED);
  batch = manager_->ReadEvents(job.id(), 4, 10, sink);
  EXPECT_TRUE(batch->end_of_log);
}

TEST_F(JobManagerTest, RestartKeepsJobsAndReadoptsOrRequeuesRunning) {
  auto a = Create();
  auto b = Create();
  auto queued = Create();
  const std::string w1 = Register();
  const std::string w2 = Register();
  auto la = Lease(w1);
  auto lb = Lease(w2);
  ASSERT_TRUE(la && lb);
  Open();  // "Restart": a new manager on the same file; workers are unknown now.
  EXPECT_EQ(State(a.id()), gptq::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(State(queued.id()), gptq::v1::JOB_STATE_QUEUED);
  // w1 reports at once with its old id: told to re-register, but its lease stays valid.
  wv1::HeartbeatRequest hb;
  hb.set_worker_id(w1);
  hb.set_job_id(a.id());
  hb.set_lease_epoch(la->lease_epoch());
  wv1::HeartbeatResponse got;
  manager_->Heartbeat(hb, [&](absl::Status, wv1::HeartbeatResponse r) { got = r; });
  EXPECT_TRUE(got.reregister());
  EXPECT_FALSE(got.lease_lost());
  const std::string w1b = Register();
  wv1::ReportEventsRequest rep;
  rep.set_worker_id(w1b);
  rep.set_job_id(a.id());
  rep.set_lease_epoch(la->lease_epoch());
  rep.add_events()->mutable_log()->set_message("still here");
  ASSERT_TRUE(manager_->ReportEvents(rep).ok());
  EXPECT_EQ(manager_->GetJob(a.id())->worker_id(), w1b);
  // b's worker never comes back: requeued after 3 periods, while w1b keeps beating.
  wv1::HeartbeatRequest beat;
  beat.set_worker_id(w1b);
  beat.set_job_id(a.id());
  beat.set_lease_epoch(la->lease_epoch());
  bool beat_done = true;
  ASSERT_TRUE(WaitFor([&] {
    if (beat_done) {
      beat_done = false;
      manager_->Heartbeat(beat, [&](absl::Status, wv1::HeartbeatResponse r) {
        EXPECT_FALSE(r.lease_lost());
        beat_done = true;
      });
    }
    manager_->Tick();
    return State(b.id()) == gptq::v1::JOB_STATE_QUEUED;
  }, absl::Seconds(5), absl::Milliseconds(2)));
  EXPECT_EQ(State(a.id()), gptq::v1::JOB_STATE_RUNNING);
  // w1b keeps a alive by reporting; finish it with the same epoch.
  wv1::Lease la2 = *la;
  ASSERT_TRUE(Finish(w1b, la2).ok());
  EXPECT_EQ(State(a.id()), gptq::v1::JOB_STATE_SUCCEEDED);
  // Sequence numbers continued across the restart without gaps.
  auto events = manager_->ReadEvents(a.id(), 1, 100, {});
  for (size_t i = 0; i < events->events.size(); ++i) {
    EXPECT_EQ(events->events[i]->sequence(), static_cast<int64_t>(i) + 1);
  }
}

TEST_F(JobManagerTest, EvictedTerminalLogsAreReadBackFromTheStore) {
  std::vector<std::string> ids;
  for (int i = 0; i < 80; ++i) {  // More than the in-memory cache of terminal logs.
    ids.push_back(Create().id());
    ASSERT_TRUE(manager_->CancelJob(ids.back()).ok());
  }
  for (const std::string& id : {ids.front(), ids.back(), ids.front()}) {
    auto batch = manager_->ReadEvents(id, 1, 10, {});
    ASSERT_TRUE(batch.ok()) << batch.status();
    ASSERT_EQ(batch->events.size(), 2u);
    EXPECT_EQ(batch->events[0]->sequence(), 1);
    EXPECT_EQ(batch->events[1]->state_change().to(), gptq::v1::JOB_STATE_CANCELLED);
    EXPECT_TRUE(manager_->ReadEvents(id, 3, 10, {})->end_of_log);
  }
}

TEST_F(JobManagerTest, ShutdownHandsLeasesBack) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  wv1::HeartbeatRequest hb;
  hb.set_worker_id(w);
  hb.set_job_id(job.id());
  hb.set_lease_epoch(lease->lease_epoch());
  std::optional<wv1::HeartbeatResponse> got;
  manager_->Heartbeat(hb, [&](absl::Status, wv1::HeartbeatResponse r) { got = r; });
  EXPECT_FALSE(got.has_value());
  manager_->Shutdown();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->lease_lost());
  auto j = manager_->GetJob(job.id());
  EXPECT_EQ(j->state(), gptq::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(j->attempt(), 0);  // A handed-back attempt does not count.
  EXPECT_FALSE(Lease(w).has_value());
  Open();
  EXPECT_EQ(State(job.id()), gptq::v1::JOB_STATE_QUEUED);
  const std::string w2 = Register();
  auto again = Lease(w2);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->lease_epoch(), 2);
  EXPECT_EQ(again->attempt(), 1);
}

TEST_F(JobManagerTest, ReturnedLeaseIsRequeuedWithoutCountingTheAttempt) {
  auto job = Create();
  const std::string w = Register();
  auto lease = Lease(w);
  ASSERT_TRUE(lease.has_value());
  manager_->ReturnLease(job.id(), lease->lease_epoch() + 1, "wrong epoch");  // No-op.
  EXPECT_EQ(State(job.id()), gptq::v1::JOB_STATE_RUNNING);
  manager_->ReturnLease(job.id(), lease->lease_epoch(), "call cancelled");
  auto j = manager_->GetJob(job.id());
  EXPECT_EQ(j->state(), gptq::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(j->attempt(), 0);
  auto again = Lease(Register());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->attempt(), 1);
  EXPECT_EQ(again->lease_epoch(), lease->lease_epoch() + 1);
}

TEST_F(JobManagerTest, HeldLeaseIsAnsweredWhenAJobArrives) {
  const std::string w = Register();
  wv1::LeaseJobRequest r;
  r.set_worker_id(w);
  r.set_wait_seconds(10);
  std::optional<wv1::LeaseJobResponse> got;
  manager_->LeaseJob(r, [&](absl::Status, wv1::LeaseJobResponse resp) { got = resp; });
  EXPECT_FALSE(got.has_value());
  auto job = Create();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->lease().job_id(), job.id());
  wv1::FinishJobRequest f;
  f.set_worker_id(w);
  f.set_job_id(job.id());
  f.set_lease_epoch(got->lease().lease_epoch());
  f.mutable_results();
  ASSERT_TRUE(manager_->FinishJob(f).ok());
  // A short wait ends empty.
  r.set_wait_seconds(0.05);
  got.reset();
  manager_->LeaseJob(r, [&](absl::Status, wv1::LeaseJobResponse resp) { got = resp; });
  ASSERT_TRUE(WaitFor([&] {
    manager_->Tick();
    return got.has_value();
  }, absl::Seconds(5)));
  EXPECT_FALSE(got->has_lease());
  // A held call the worker abandoned is withdrawn; cancelling again is a no-op.
  r.set_wait_seconds(10);
  absl::Status cancelled;
  int calls = 0;
  const uint64_t wait_id = manager_->LeaseJob(r, [&](absl::Status s, wv1::LeaseJobResponse) {
    cancelled = s;
    ++calls;
  });
  ASSERT_NE(wait_id, 0u);
  EXPECT_EQ(manager_->Snapshot().held_calls, 1);
  manager_->CancelLeaseWait(wait_id);
  manager_->CancelLeaseWait(wait_id);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(cancelled.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(manager_->Snapshot().held_calls, 0);
  wv1::LeaseJobRequest unknown;
  unknown.set_worker_id("w-nope");
  absl::Status status;
  manager_->LeaseJob(unknown, [&](absl::Status s, wv1::LeaseJobResponse) { status = s; });
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gptq::server
