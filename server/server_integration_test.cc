// In-process gptq-server on 127.0.0.1:0 with real gRPC clients: the tests act as clients and
// as workers (calling WorkerService directly).
#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gptq/v1/quantization.grpc.pb.h"
#include "gptq/worker/v1/worker.grpc.pb.h"
#include "job_manager.h"
#include "job_store.h"
#include "local_workers.h"
#include "metrics.h"
#include "server.h"
#include "test_util.h"

namespace gptq::server {
namespace {

namespace v1 = gptq::v1;
namespace wv1 = gptq::worker::v1;
using testing::TempDir;
using testing::WaitFor;

std::unique_ptr<grpc::ClientContext> Ctx(absl::Duration timeout = absl::Seconds(10),
                                         const std::string& token = "") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  return ctx;
}

// A worker speaking the worker protocol over gRPC.
class FakeWorker {
 public:
  FakeWorker(std::shared_ptr<grpc::Channel> channel, const std::string& device = "cpu",
             std::string token = "")
      : stub_(wv1::WorkerService::NewStub(channel)), token_(std::move(token)) {
    wv1::RegisterRequest r;
    r.set_name("fake-" + device);
    r.mutable_capabilities()->set_device(device);
    wv1::RegisterResponse resp;
    status_ = stub_->Register(Ctx(absl::Seconds(10), token_).get(), r, &resp);
    id_ = resp.worker_id();
    heartbeat_seconds_ = resp.heartbeat_seconds();
  }
  const grpc::Status& register_status() const { return status_; }
  const std::string& id() const { return id_; }
  double heartbeat_seconds() const { return heartbeat_seconds_; }

  std::optional<wv1::Lease> Lease(double wait_seconds) {
    wv1::LeaseJobRequest r;
    r.set_worker_id(id_);
    r.set_wait_seconds(wait_seconds);
    wv1::LeaseJobResponse resp;
    grpc::Status s = stub_->LeaseJob(Ctx(absl::Seconds(wait_seconds + 10), token_).get(), r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!resp.has_lease()) return std::nullopt;
    return resp.lease();
  }
  grpc::Status Heartbeat(const wv1::Lease* lease, wv1::HeartbeatResponse* resp) {
    wv1::HeartbeatRequest r;
    r.set_worker_id(id_);
    if (lease != nullptr) {
      r.set_job_id(lease->job_id());
      r.set_lease_epoch(lease->lease_epoch());
    }
    return stub_->Heartbeat(Ctx(absl::Seconds(30), token_).get(), r, resp);
  }
  grpc::Status Report(const wv1::Lease& lease, const std::vector<v1::JobEvent>& events,
                      wv1::ReportEventsResponse* resp = nullptr) {
    wv1::ReportEventsRequest r;
    r.set_worker_id(id_);
    r.set_job_id(lease.job_id());
    r.set_lease_epoch(lease.lease_epoch());
    for (const auto& e : events) *r.add_events() = e;
    wv1::ReportEventsResponse local;
    return stub_->ReportEvents(Ctx(absl::Seconds(10), token_).get(), r, resp ? resp : &local);
  }
  grpc::Status Finish(const wv1::Lease& lease, int error_code = -1) {
    wv1::FinishJobRequest r;
    r.set_worker_id(id_);
    r.set_job_id(lease.job_id());
    r.set_lease_epoch(lease.lease_epoch());
    if (error_code < 0) {
      r.mutable_results()->set_output_location(lease.output_dir());
      r.mutable_results()->set_seconds(1.5);
    } else {
      r.mutable_error()->set_code(error_code);
      r.mutable_error()->set_message("stopped");
    }
    wv1::FinishJobResponse resp;
    return stub_->FinishJob(Ctx(absl::Seconds(10), token_).get(), r, &resp);
  }

 private:
  std::unique_ptr<wv1::WorkerService::Stub> stub_;
  std::string token_;
  grpc::Status status_;
  std::string id_;
  double heartbeat_seconds_ = 0;
};

v1::JobEvent LogEvent(const std::string& text) {
  v1::JobEvent e;
  e.mutable_log()->set_level(v1::LogLine::LEVEL_INFO);
  e.mutable_log()->set_message(text);
  return e;
}

// Reads a whole WatchJob stream.
struct WatchResult {
  std::vector<int64_t> sequences;
  std::vector<std::string> serialized;
  grpc::Status status;
  v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
};

class ServerTest : public ::testing::Test {
 protected:
  void StartServer(double heartbeat_seconds, ServerOptions options = {}) {
    std::filesystem::create_directories(dir_.File("model"));
    auto store = JobStore::Open(dir_.File("jobs.db"));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    ManagerOptions mo;
    mo.heartbeat_period = absl::Seconds(heartbeat_seconds);
    mo.max_attempts = 3;
    auto m = JobManager::Create(store_.get(), mo, &metrics_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
    options.listen = "127.0.0.1:0";
    auto s = GptqServer::Start(options, manager_.get(), &metrics_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    if (options.tls_cert_pem.empty()) {
      channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
      jobs_ = v1::QuantizationService::NewStub(channel_);
    }
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(1));
    server_.reset();
    manager_.reset();
  }
  v1::CreateJobRequest Request() {
    v1::CreateJobRequest r;
    r.mutable_spec()->set_model_uri(dir_.File("model"));
    r.mutable_spec()->set_output_uri(dir_.File(absl::StrCat("out-", ++outputs_)));
    return r;
  }
  v1::Job CreateJob() {
    v1::Job job;
    grpc::Status s = jobs_->CreateJob(Ctx().get(), Request(), &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }
  v1::Job Get(const std::string& id) {
    v1::GetJobRequest r;
    r.set_id(id);
    v1::Job job;
    EXPECT_TRUE(jobs_->GetJob(Ctx().get(), r, &job).ok());
    return job;
  }
  WatchResult Watch(const std::string& id, int64_t from = 0,
                    std::function<void(int)> after_read = nullptr) {
    v1::WatchJobRequest r;
    r.set_id(id);
    r.set_from_sequence(from);
    auto ctx = Ctx(absl::Seconds(60));
    auto reader = jobs_->WatchJob(ctx.get(), r);
    WatchResult out;
    v1::JobEvent e;
    while (reader->Read(&e)) {
      out.sequences.push_back(e.sequence());
      out.serialized.push_back(e.SerializeAsString());
      if (e.has_state_change()) out.last_state = e.state_change().to();
      if (after_read) after_read(static_cast<int>(out.sequences.size()));
    }
    out.status = reader->Finish();
    return out;
  }

  TempDir dir_;
  Metrics metrics_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<JobManager> manager_;
  std::unique_ptr<GptqServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::QuantizationService::Stub> jobs_;
  int outputs_ = 0;
};

TEST_F(ServerTest, ValidationErrorsNameFieldAndRule) {
  StartServer(0.2);
  auto r = Request();
  r.mutable_spec()->set_group_size(0);
  v1::Job job;
  grpc::Status s = jobs_->CreateJob(Ctx().get(), r, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "spec.group_size: must be > 0 or -1 (got 0)");
  v1::GetJobRequest g;
  g.set_id("job-missing");
  s = jobs_->GetJob(Ctx().get(), g, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "job job-missing not found");
}

TEST_F(ServerTest, FullLifecycleWithFakeWorkerAndWatch) {
  StartServer(0.2);
  FakeWorker worker(channel_);
  ASSERT_TRUE(worker.register_status().ok());
  EXPECT_DOUBLE_EQ(worker.heartbeat_seconds(), 0.2);
  std::optional<wv1::Lease> lease;
  std::thread leaser([&] { lease = worker.Lease(5); });  // Held until the job exists.
  ASSERT_TRUE(WaitFor([&] { return manager_->Snapshot().workers_connected == 1; },
                      absl::Seconds(5)));
  v1::Job job = CreateJob();
  leaser.join();
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->job_id(), job.id());
  EXPECT_EQ(lease->model_dir(), dir_.File("model"));
  WatchResult watched;
  std::thread watcher([&] { watched = Watch(job.id()); });
  ASSERT_TRUE(worker.Report(*lease, {LogEvent("a"), LogEvent("b"), LogEvent("c")}).ok());
  ASSERT_TRUE(worker.Finish(*lease).ok());
  watcher.join();
  EXPECT_TRUE(watched.status.ok()) << watched.status.error_message();
  EXPECT_EQ(watched.sequences, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(watched.last_state, v1::JOB_STATE_SUCCEEDED);
  v1::Job done = Get(job.id());
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.results().output_location(), dir_.File("out-1"));
  // Replay from a sequence.
  WatchResult tail = Watch(job.id(), 5);
  EXPECT_EQ(tail.sequences, (std::vector<int64_t>{5, 6}));
  // Delete, then NOT_FOUND.
  v1::DeleteJobRequest d;
  d.set_id(job.id());
  v1::DeleteJobResponse dr;
  ASSERT_TRUE(jobs_->DeleteJob(Ctx().get(), d, &dr).ok());
  EXPECT_EQ(Watch(job.id()).status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, CancelReachesRunningWorkerWithinTwoSeconds) {
  StartServer(2.0);  // The default period: cancellation must not wait for the next beat.
  FakeWorker worker(channel_);
  v1::Job job = CreateJob();
  auto lease = worker.Lease(0);
  ASSERT_TRUE(lease.has_value());
  std::atomic<bool> cancelled{false};
  std::thread beat([&] {
    // A worker loop: heartbeat back to back; on cancel, stop and finish CANCELLED.
    for (int i = 0; i < 10 && !cancelled; ++i) {
      wv1::HeartbeatResponse resp;
      ASSERT_TRUE(worker.Heartbeat(&*lease, &resp).ok());
      if (resp.cancel()) {
        cancelled = true;
        ASSERT_TRUE(worker.Finish(*lease, /*error_code=*/1).ok());
      }
    }
  });
  // Let the heartbeat be in flight (held) before cancelling.
  ASSERT_TRUE(WaitFor([&] { return manager_->Snapshot().held_calls == 1; }, absl::Seconds(5)));
  const absl::Time t0 = absl::Now();
  v1::CancelJobRequest c;
  c.set_id(job.id());
  v1::Job after;
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &after).ok());
  EXPECT_TRUE(after.cancel_requested());
  WatchResult w = Watch(job.id());  // Ends after the terminal event.
  const absl::Duration took = absl::Now() - t0;
  beat.join();
  EXPECT_EQ(w.last_state, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(took, absl::Seconds(2));
  std::printf("cancel -> CANCELLED took %.1f ms (heartbeat period 2 s)\n",
              absl::ToDoubleMilliseconds(took));
  // A queued job is cancelled at once.
  v1::Job queued = CreateJob();
  c.set_id(queued.id());
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &after).ok());
  EXPECT_EQ(after.state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(ServerTest, SilentWorkerIsReplacedAndFenced) {
  StartServer(0.1);
  FakeWorker w1(channel_);
  FakeWorker w2(channel_);
  v1::Job job = CreateJob();
  auto l1 = w1.Lease(0);
  ASSERT_TRUE(l1.has_value());
  // w2 waits in LeaseJob; it gets the job when w1 has been silent for 3 periods.
  const absl::Time t0 = absl::Now();
  auto l2 = w2.Lease(10);
  ASSERT_TRUE(l2.has_value());
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(250));
  EXPECT_EQ(l2->job_id(), job.id());
  EXPECT_EQ(l2->lease_epoch(), l1->lease_epoch() + 1);
  EXPECT_EQ(l2->attempt(), 2);
  grpc::Status stale = w1.Finish(*l1);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(stale.error_message().find("stale lease: job " + job.id() + " is running at lease epoch 2"),
            std::string::npos) << stale.error_message();
  EXPECT_EQ(w1.Report(*l1, {LogEvent("late")}).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  wv1::HeartbeatResponse hb;
  ASSERT_TRUE(w1.Heartbeat(&*l1, &hb).ok());
  EXPECT_TRUE(hb.lease_lost());
  EXPECT_TRUE(hb.reregister());
  ASSERT_TRUE(w2.Finish(*l2).ok());
  v1::Job done = Get(job.id());
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.worker_id(), w2.id());
  // The log tells the story: created, leased w1, requeued, leased w2, succeeded.
  WatchResult w = Watch(job.id());
  EXPECT_EQ(w.sequences.size(), 5u);
}

TEST_F(ServerTest, LeaseForAnAbandonedLeaseCallIsTakenBack) {
  StartServer(0.5);
  FakeWorker gone(channel_);
  {
    wv1::LeaseJobRequest r;
    r.set_worker_id(gone.id());
    r.set_wait_seconds(10);
    wv1::LeaseJobResponse resp;
    auto stub = wv1::WorkerService::NewStub(channel_);
    // The worker stops waiting after 300 ms; the server still holds its call.
    grpc::Status s = stub->LeaseJob(Ctx(absl::Milliseconds(300)).get(), r, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // The server withdraws the held call when it notices the cancellation.
  ASSERT_TRUE(WaitFor([&] { return manager_->Snapshot().held_calls == 0; }, absl::Seconds(5)));
  v1::Job job = CreateJob();
  v1::Job j = Get(job.id());
  EXPECT_EQ(j.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(j.attempt(), 0);
  FakeWorker live(channel_);
  auto lease = live.Lease(0);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->job_id(), job.id());
  EXPECT_EQ(lease->attempt(), 1);
}

TEST_F(ServerTest, HundredWatchersSeeIdenticalSequences) {
  StartServer(0.5);
  FakeWorker worker(channel_);
  v1::Job job = CreateJob();
  auto lease = worker.Lease(0);
  ASSERT_TRUE(lease.has_value());
  constexpr int kWatchers = 100;
  std::vector<WatchResult> results(kWatchers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] { results[i] = Watch(job.id()); });
  }
  ASSERT_TRUE(WaitFor([&] { return metrics_.watchers() == kWatchers; }, absl::Seconds(20)));
  for (int batch = 0; batch < 10; ++batch) {
    std::vector<v1::JobEvent> events;
    for (int i = 0; i < 20; ++i) events.push_back(LogEvent(absl::StrCat("e", batch, "-", i)));
    ASSERT_TRUE(worker.Report(*lease, events).ok());
  }
  ASSERT_TRUE(worker.Finish(*lease).ok());
  for (auto& t : threads) t.join();
  ASSERT_EQ(results[0].sequences.size(), 2u + 200u + 1u);
  for (int i = 0; i < kWatchers; ++i) {
    EXPECT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].serialized, results[0].serialized) << "watcher " << i;
    EXPECT_EQ(results[i].last_state, v1::JOB_STATE_SUCCEEDED);
  }
  EXPECT_TRUE(WaitFor([&] { return metrics_.watchers() == 0; }, absl::Seconds(5)));
}

TEST_F(ServerTest, SlowWatcherDoesNotSlowTheJobOrOthers) {
  StartServer(0.5);
  FakeWorker worker(channel_);
  v1::Job job = CreateJob();
  auto lease = worker.Lease(0);
  ASSERT_TRUE(lease.has_value());
  absl::Notification release_slow, slow_started;
  std::atomic<int> slow_read{0};
  WatchResult slow, fast;
  std::thread slow_thread([&] {
    slow = Watch(job.id(), 0, [&](int n) {
      slow_read = n;
      if (n == 1) {
        slow_started.Notify();
        release_slow.WaitForNotification();  // Stalls with ~all events still unread.
      }
    });
  });
  slow_started.WaitForNotification();
  std::thread fast_thread([&] { fast = Watch(job.id()); });
  // ~4 MB of events: far more than the transport buffers of the stalled stream.
  const std::string payload(2000, 'x');
  const absl::Time t0 = absl::Now();
  for (int batch = 0; batch < 20; ++batch) {
    std::vector<v1::JobEvent> events;
    for (int i = 0; i < 100; ++i) events.push_back(LogEvent(payload));
    ASSERT_TRUE(worker.Report(*lease, events).ok());
  }
  ASSERT_TRUE(worker.Finish(*lease).ok());
  const absl::Duration writer_time = absl::Now() - t0;
  fast_thread.join();
  EXPECT_TRUE(fast.status.ok());
  EXPECT_EQ(fast.sequences.size(), 2u + 2000u + 1u);
  EXPECT_EQ(slow_read.load(), 1);  // The fast watcher and the job finished meanwhile.
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_LT(writer_time, absl::Seconds(10));
  release_slow.Notify();
  slow_thread.join();
  EXPECT_TRUE(slow.status.ok());
  EXPECT_EQ(slow.serialized, fast.serialized);
}

TEST_F(ServerTest, BearerTokenIsRequired) {
  ServerOptions options;
  options.auth_token = "s3cret";
  StartServer(0.5, options);
  v1::GetJobRequest g;
  g.set_id("x");
  v1::Job job;
  grpc::Status s = jobs_->GetJob(Ctx().get(), g, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s.error_message(), "missing 'authorization: Bearer <token>' metadata");
  s = jobs_->GetJob(Ctx(absl::Seconds(5), "wrong").get(), g, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s.error_message(), "invalid bearer token");
  s = jobs_->GetJob(Ctx(absl::Seconds(5), "s3cret").get(), g, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);  // Past authentication.
  FakeWorker anonymous(channel_);
  EXPECT_EQ(anonymous.register_status().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  FakeWorker good(channel_, "cpu", "s3cret");
  EXPECT_TRUE(good.register_status().ok());
  // WatchJob too.
  v1::WatchJobRequest w;
  w.set_id("x");
  auto ctx = Ctx();
  auto reader = jobs_->WatchJob(ctx.get(), w);
  v1::JobEvent e;
  EXPECT_FALSE(reader->Read(&e));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// grpc.health.v1.Health/Check through a generic stub (no health stubs are packaged).
std::string HealthCheck(std::shared_ptr<grpc::Channel> channel, const std::string& service,
                        grpc::Status* status) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::string req;
  if (!service.empty()) {
    req.push_back(0x0a);
    req.push_back(static_cast<char>(service.size()));
    req += service;
  }
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1), response;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  call->Finish(&response, status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  std::vector<grpc::Slice> slices;
  std::string out;
  if (status->ok() && response.Dump(&slices).ok()) {
    for (auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return out;
}

TEST_F(ServerTest, HealthReportsServingPerService) {
  StartServer(0.5);
  grpc::Status status;
  EXPECT_EQ(HealthCheck(channel_, "", &status), std::string("\x08\x01", 2));  // SERVING
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(HealthCheck(channel_, "gptq.v1.QuantizationService", &status),
            std::string("\x08\x01", 2));
  HealthCheck(channel_, "no.such.Service", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, TlsServesAndPlaintextRemoteIsRefused) {
  std::string out;
  if (testing::RunShell("command -v openssl", &out) != 0) GTEST_SKIP() << "openssl CLI absent";
  const std::string cert = dir_.File("cert.pem"), key = dir_.File("key.pem");
  ASSERT_EQ(testing::RunShell(absl::StrCat(
                "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                "-addext subjectAltName=DNS:localhost -keyout ", key, " -out ", cert),
                &out), 0) << out;
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  ServerOptions options;
  options.tls_cert_pem = read(cert);
  options.tls_key_pem = read(key);
  StartServer(0.5, options);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options.tls_cert_pem;
  auto tls_channel = grpc::CreateChannel(absl::StrCat("localhost:", server_->port()),
                                         grpc::SslCredentials(ssl));
  auto stub = v1::QuantizationService::NewStub(tls_channel);
  v1::GetJobRequest g;
  g.set_id("x");
  v1::Job job;
  EXPECT_EQ(stub->GetJob(Ctx().get(), g, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  auto plain = v1::QuantizationService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(plain->GetJob(Ctx(absl::Seconds(2)).get(), g, &job).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  ServerOptions remote;
  remote.listen = "0.0.0.0:0";
  auto refused = GptqServer::Start(remote, manager_.get(), &metrics_);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("refusing plaintext gRPC on non-loopback address "
                                            "0.0.0.0:0"),
            std::string::npos);
}

TEST(LocalWorkerDevicesTest, AutoAndCounts) {
  EXPECT_EQ(*LocalWorkerDevices("auto", 0), std::vector<std::string>{"cpu"});
  EXPECT_EQ(*LocalWorkerDevices("auto", 2), (std::vector<std::string>{"cuda:0", "cuda:1"}));
  EXPECT_EQ(*LocalWorkerDevices("3", 2),
            (std::vector<std::string>{"cuda:0", "cuda:1", "cuda:0"}));
  EXPECT_EQ(*LocalWorkerDevices("2", 0), (std::vector<std::string>{"cpu", "cpu"}));
  EXPECT_TRUE(LocalWorkerDevices("0", 4)->empty());
  EXPECT_EQ(LocalWorkerDevices("many", 0).status().message(),
            "--local-workers: must be auto or a number in [0, 64] (got 'many')");
}

}  // namespace
}  // namespace gptq::server
