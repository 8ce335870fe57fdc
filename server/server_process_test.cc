// gptq-server as a subprocess: kill -9 durability, SIGTERM, metrics scraped and checked by
// promtool, reflection from a second gRPC implementation (python3-grpcio), local workers.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <atomic>
#include <optional>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gptq/v1/quantization.grpc.pb.h"
#include "gptq/worker/v1/worker.grpc.pb.h"
#include "test_util.h"

namespace gptq::server {
namespace {

namespace v1 = gptq::v1;
namespace wv1 = gptq::worker::v1;
using testing::Subprocess;
using testing::TempDir;
using testing::WaitFor;

const std::string kServer = std::string(GPTQ_BINARY_DIR) + "/bin/gptq-server";

std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 10) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return ctx;
}

struct RunningServer {
  std::unique_ptr<Subprocess> process;
  std::string address;
  std::string metrics_address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::QuantizationService::Stub> jobs;
  std::unique_ptr<wv1::WorkerService::Stub> workers;
};

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override { std::filesystem::create_directories(dir_.File("model")); }

  RunningServer Start(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {kServer, "--listen", "127.0.0.1:0", "--metrics-listen",
                                     "127.0.0.1:0", "--db", dir_.File("jobs.db"),
                                     "--heartbeat-seconds", "0.2"};
    for (auto& e : extra) argv.push_back(e);
    RunningServer s;
    s.process = std::make_unique<Subprocess>(argv, dir_.File("server.log"));
    s.address = s.process->ReadLineWithPrefix("listening on ", absl::Seconds(20));
    s.metrics_address = s.process->ReadLineWithPrefix("metrics on ", absl::Seconds(5));
    EXPECT_FALSE(s.address.empty()) << Log();
    s.channel = grpc::CreateChannel(s.address, grpc::InsecureChannelCredentials());
    s.jobs = v1::QuantizationService::NewStub(s.channel);
    s.workers = wv1::WorkerService::NewStub(s.channel);
    return s;
  }
  std::string Log() {
    std::ifstream in(dir_.File("server.log"));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  v1::Job Create(RunningServer& s, const std::string& request_id = "") {
    v1::CreateJobRequest r;
    r.mutable_spec()->set_model_uri(dir_.File("model"));
    r.mutable_spec()->set_output_uri(dir_.File(absl::StrCat("out-", ++outputs_)));
    r.set_request_id(request_id);
    v1::Job job;
    grpc::Status st = s.jobs->CreateJob(Ctx().get(), r, &job);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return job;
  }
  v1::Job Get(RunningServer& s, const std::string& id) {
    v1::GetJobRequest r;
    r.set_id(id);
    v1::Job job;
    grpc::Status st = s.jobs->GetJob(Ctx().get(), r, &job);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return job;
  }
  std::string Register(RunningServer& s) {
    wv1::RegisterRequest r;
    r.set_name("proc-test");
    r.mutable_capabilities()->set_device("cpu");
    wv1::RegisterResponse resp;
    EXPECT_TRUE(s.workers->Register(Ctx().get(), r, &resp).ok());
    return resp.worker_id();
  }
  std::optional<wv1::Lease> Lease(RunningServer& s, const std::string& worker) {
    wv1::LeaseJobRequest r;
    r.set_worker_id(worker);
    wv1::LeaseJobResponse resp;
    EXPECT_TRUE(s.workers->LeaseJob(Ctx().get(), r, &resp).ok());
    if (!resp.has_lease()) return std::nullopt;
    return resp.lease();
  }
  grpc::Status Report(RunningServer& s, const std::string& worker, const wv1::Lease& lease,
                      int n) {
    wv1::ReportEventsRequest r;
    r.set_worker_id(worker);
    r.set_job_id(lease.job_id());
    r.set_lease_epoch(lease.lease_epoch());
    for (int i = 0; i < n; ++i) r.add_events()->mutable_log()->set_message(absl::StrCat("m", i));
    wv1::ReportEventsResponse resp;
    return s.workers->ReportEvents(Ctx().get(), r, &resp);
  }
  grpc::Status Finish(RunningServer& s, const std::string& worker, const wv1::Lease& lease) {
    wv1::FinishJobRequest r;
    r.set_worker_id(worker);
    r.set_job_id(lease.job_id());
    r.set_lease_epoch(lease.lease_epoch());
    r.mutable_results()->set_output_location(lease.output_dir());
    wv1::FinishJobResponse resp;
    return s.workers->FinishJob(Ctx().get(), r, &resp);
  }
  std::vector<v1::JobEvent> WatchAll(RunningServer& s, const std::string& id) {
    v1::WatchJobRequest r;
    r.set_id(id);
    auto ctx = Ctx(30);
    auto reader = s.jobs->WatchJob(ctx.get(), r);
    std::vector<v1::JobEvent> out;
    v1::JobEvent e;
    while (reader->Read(&e)) out.push_back(e);
    EXPECT_TRUE(reader->Finish().ok());
    return out;
  }

  TempDir dir_;
  int outputs_ = 0;
};

TEST_F(ProcessTest, KillNineThenRestartLosesAndDuplicatesNothing) {
  std::string worker, orphan_worker;
  v1::Job running, orphaned, queued, cancelled;
  wv1::Lease lease, orphan_lease;
  {
    RunningServer s = Start();
    running = Create(s, "req-running");
    orphaned = Create(s);
    queued = Create(s, "req-queued");
    cancelled = Create(s);
    worker = Register(s);
    orphan_worker = Register(s);
    lease = *Lease(s, worker);
    orphan_lease = *Lease(s, orphan_worker);
    ASSERT_EQ(lease.job_id(), running.id());
    ASSERT_TRUE(Report(s, worker, lease, 5).ok());
    v1::CancelJobRequest c;
    c.set_id(cancelled.id());
    v1::Job j;
    ASSERT_TRUE(s.jobs->CancelJob(Ctx().get(), c, &j).ok());
    s.process->Signal(SIGKILL);
    const int status = s.process->Wait(absl::Seconds(10));
    ASSERT_TRUE(WIFSIGNALED(status));
  }
  RunningServer s = Start();
  v1::ListJobsRequest lr;
  v1::ListJobsResponse list;
  ASSERT_TRUE(s.jobs->ListJobs(Ctx().get(), lr, &list).ok());
  ASSERT_EQ(list.jobs_size(), 4);
  EXPECT_EQ(Get(s, running.id()).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Get(s, queued.id()).state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Get(s, cancelled.id()).state(), v1::JOB_STATE_CANCELLED);
  // Idempotency survives the restart.
  EXPECT_EQ(Create(s, "req-queued").id(), queued.id());
  // The old worker comes back: told to re-register; its lease (epoch) is still good.
  wv1::HeartbeatRequest hb;
  hb.set_worker_id(worker);
  hb.set_job_id(running.id());
  hb.set_lease_epoch(lease.lease_epoch());
  wv1::HeartbeatResponse hr;
  ASSERT_TRUE(s.workers->Heartbeat(Ctx().get(), hb, &hr).ok());
  EXPECT_TRUE(hr.reregister());
  EXPECT_FALSE(hr.lease_lost());
  const std::string again = Register(s);
  ASSERT_TRUE(Report(s, again, lease, 2).ok());
  // The re-registered worker keeps beating (held calls, one period each).
  std::atomic<bool> stop{false};
  std::thread beat([&] {
    wv1::HeartbeatRequest b;
    b.set_worker_id(again);
    b.set_job_id(running.id());
    b.set_lease_epoch(lease.lease_epoch());
    while (!stop) {
      wv1::HeartbeatResponse r;
      ASSERT_TRUE(s.workers->Heartbeat(Ctx().get(), b, &r).ok());
      if (r.lease_lost()) ADD_FAILURE() << "re-adopted lease lost";
      if (r.lease_lost()) break;
    }
  });
  // The other worker never returns: its job goes back to the queue after 3 periods.
  ASSERT_TRUE(WaitFor([&] { return Get(s, orphaned.id()).state() == v1::JOB_STATE_QUEUED; },
                      absl::Seconds(5)));
  EXPECT_EQ(Get(s, orphaned.id()).attempt(), 1);
  stop = true;  // The beat in flight is answered by FinishJob.
  ASSERT_TRUE(Finish(s, again, lease).ok());
  beat.join();
  auto events = WatchAll(s, running.id());
  // created, leased, 5 logs, re-adopted log, 2 logs, succeeded.
  ASSERT_EQ(events.size(), 11u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), int64_t(i) + 1);
  EXPECT_EQ(events[2].log().message(), "m0");
  EXPECT_EQ(events.back().state_change().to(), v1::JOB_STATE_SUCCEEDED);
  // The orphaned job can run again, with a new epoch; the old one is fenced.
  const std::string w3 = Register(s);
  auto l3 = Lease(s, w3);
  ASSERT_TRUE(l3.has_value());
  EXPECT_EQ(l3->job_id(), orphaned.id());
  EXPECT_EQ(l3->lease_epoch(), orphan_lease.lease_epoch() + 1);
  EXPECT_EQ(Finish(s, orphan_worker, orphan_lease).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ProcessTest, SigtermHandsLeasesBackAndExitsCleanly) {
  v1::Job job;
  {
    RunningServer s = Start();
    job = Create(s);
    const std::string w = Register(s);
    auto lease = Lease(s, w);
    ASSERT_TRUE(lease.has_value());
    wv1::HeartbeatResponse hr;
    grpc::Status hs;
    std::thread beat([&] {
      wv1::HeartbeatRequest hb;
      hb.set_worker_id(w);
      hb.set_job_id(lease->job_id());
      hb.set_lease_epoch(lease->lease_epoch());
      // Back-to-back beats until the server says the lease is gone.
      for (int i = 0; i < 100; ++i) {
        hs = s.workers->Heartbeat(Ctx().get(), hb, &hr);
        if (!hs.ok() || hr.lease_lost()) break;
      }
    });
    absl::SleepFor(absl::Milliseconds(100));  // Let a held heartbeat be in flight.
    const absl::Time t0 = absl::Now();
    s.process->Signal(SIGTERM);
    beat.join();
    EXPECT_TRUE(hs.ok()) << hs.error_message();
    EXPECT_TRUE(hr.lease_lost());
    const int status = s.process->Wait(absl::Seconds(10));
    ASSERT_NE(status, -1) << "server did not exit after SIGTERM";
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << Log();
    std::printf("SIGTERM -> exit took %.0f ms\n%s", absl::ToDoubleMilliseconds(absl::Now() - t0),
                Log().c_str());
  }
  RunningServer s = Start();
  v1::Job j = Get(s, job.id());
  EXPECT_EQ(j.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(j.attempt(), 0);
}

TEST_F(ProcessTest, MetricsScrapePassesPromtool) {
  RunningServer s = Start();
  ASSERT_FALSE(s.metrics_address.empty());
  v1::Job job = Create(s);
  const std::string w = Register(s);
  auto lease = Lease(s, w);
  ASSERT_TRUE(lease.has_value());
  ASSERT_TRUE(Finish(s, w, *lease).ok());
  Create(s);
  v1::GetJobRequest bad;
  v1::Job j;
  bad.set_id("missing");
  EXPECT_EQ(s.jobs->GetJob(Ctx().get(), bad, &j).error_code(), grpc::StatusCode::NOT_FOUND);
  int code = 0;
  const std::string body = testing::HttpGet(s.metrics_address, "/metrics", &code);
  EXPECT_EQ(code, 200);
  EXPECT_NE(body.find("gptq_jobs{state=\"succeeded\"} 1\n"), std::string::npos) << body;
  EXPECT_NE(body.find("gptq_queue_depth 1\n"), std::string::npos);
  EXPECT_NE(body.find("gptq_workers_connected 1\n"), std::string::npos);
  EXPECT_NE(body.find("gptq_job_duration_seconds_count{outcome=\"succeeded\"} 1\n"),
            std::string::npos);
  EXPECT_NE(body.find("method=\"GetJob\",code=\"NOT_FOUND\"} 1\n"), std::string::npos);
  EXPECT_EQ(body.find(job.id()), std::string::npos) << "job ids must not be labels";
  testing::HttpGet(s.metrics_address, "/other", &code);
  EXPECT_EQ(code, 404);
  std::string out;
  if (testing::RunShell("command -v promtool", &out) != 0) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  }
  std::ofstream(dir_.File("scrape.txt")) << body;
  EXPECT_EQ(testing::RunShell("promtool check metrics < " + dir_.File("scrape.txt"), &out), 0)
      << out;
  EXPECT_EQ(out, "");
}

TEST_F(ProcessTest, PlaintextOnNonLoopbackIsRefused) {
  Subprocess p({kServer, "--listen", "0.0.0.0:0", "--metrics-listen", "", "--db",
                dir_.File("jobs.db")},
               dir_.File("server.log"));
  const int status = p.Wait(absl::Seconds(10));
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(Log().find("refusing plaintext gRPC on non-loopback address 0.0.0.0:0; give "
                       "--tls-cert/--tls-key or --allow-insecure-remote"),
            std::string::npos) << Log();
}

TEST_F(ProcessTest, ReflectionAndHealthFromPython) {
  std::string out;
  // Debian's python3-grpcio lives in the system interpreter (not a pyenv/venv one).
  const std::string python =
      std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  if (testing::RunShell(python + " -c 'import grpc'", &out) != 0) {
    GTEST_SKIP() << "python3-grpcio not installed";
  }
  RunningServer s = Start();
  // Raw protobuf bytes: ServerReflectionRequest{list_services: ""} = field 7, and
  // {file_containing_symbol: "gptq.v1.QuantizationService"} = field 4.
  std::ofstream(dir_.File("reflect.py")) << R"PY(
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(ch).result(timeout=10)
call = ch.stream_stream('/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo')
sym = b'gptq.v1.QuantizationService'
reqs = [b'\x3a\x00', b'\x22' + bytes([len(sym)]) + sym]
for resp in call(iter(reqs), timeout=10):
    sys.stdout.write(resp.decode('latin-1').replace('\n', ' ') + '\n')
check = ch.unary_unary('/grpc.health.v1.Health/Check')
print('HEALTH', check(b'', timeout=5).hex())
)PY";
  ASSERT_EQ(testing::RunShell(absl::StrCat(python, " ", dir_.File("reflect.py"), " ", s.address),
                              &out), 0) << out;
  EXPECT_NE(out.find("gptq.v1.QuantizationService"), std::string::npos) << out;
  EXPECT_NE(out.find("gptq.worker.v1.WorkerService"), std::string::npos);
  EXPECT_NE(out.find("grpc.health.v1.Health"), std::string::npos);
  EXPECT_NE(out.find("gptq/v1/quantization.proto"), std::string::npos);  // Descriptor served.
  EXPECT_NE(out.find("CreateJob"), std::string::npos);
  EXPECT_NE(out.find("HEALTH 0801"), std::string::npos) << out;  // SERVING
}

TEST_F(ProcessTest, LocalWorkersAreStartedRestartedAndStopped) {
  const std::string script = dir_.File("fake-worker.sh");
  const std::string log = dir_.File("workers.log");
  std::ofstream(script) << "#!/bin/sh\necho \"$$ $*\" >> " << log << "\nexec sleep 300\n";
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  RunningServer s = Start({"--local-workers", "2", "--worker-binary", script, "--worker-args",
                           "--data-dir /data/x"});
  auto lines = [&] {
    std::ifstream in(log);
    std::vector<std::string> out;
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  };
  ASSERT_TRUE(WaitFor([&] { return lines().size() == 2; }, absl::Seconds(10)));
  std::vector<int> pids;
  for (const auto& l : lines()) {
    std::vector<std::string> parts = absl::StrSplit(l, ' ');
    int pid = 0;
    ASSERT_TRUE(absl::SimpleAtoi(parts[0], &pid));
    pids.push_back(pid);
    EXPECT_NE(l.find(" serve --server 127.0.0.1:"), std::string::npos) << l;
    EXPECT_NE(l.find(" --device cpu --data-dir /data/x"), std::string::npos) << l;
  }
  // A crashed worker is restarted (after the 1 s backoff).
  kill(pids[0], SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return lines().size() == 3; }, absl::Seconds(10))) << Log();
  std::vector<std::string> parts = absl::StrSplit(lines()[2], ' ');
  int restarted = 0;
  ASSERT_TRUE(absl::SimpleAtoi(parts[0], &restarted));
  s.process->Signal(SIGTERM);
  const int status = s.process->Wait(absl::Seconds(15));
  ASSERT_TRUE(WIFEXITED(status)) << Log();
  for (int pid : {pids[1], restarted}) {
    EXPECT_NE(kill(pid, 0), 0) << "worker " << pid << " still alive after server shutdown";
  }
}

}  // namespace
}  // namespace gptq::server
