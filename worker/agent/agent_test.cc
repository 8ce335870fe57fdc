// The agent against an in-process fake WorkerService, with a fake job runner (no Torch).
#include "agent.h"

#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/fake_worker_service.h"

namespace gptq::agent {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::gptq::v1;
using runtime::ProgressEvent;
using testing::FakeServer;
using testing::FakeWorkerService;
using ::testing::HasSubstr;

constexpr auto kWait = std::chrono::seconds(30);

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = fs::temp_directory_path() /
           absl::StrCat("agent_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(tmp_);
    fs::create_directories(tmp_ / "model");
    std::ofstream(tmp_ / "model/config.json") << "{}";
    server_ = std::make_unique<FakeServer>(&service_);
    ASSERT_TRUE(server_->ok());
  }
  void TearDown() override {
    if (agent_) agent_->Stop();
    if (agent_thread_.joinable()) agent_thread_.join();
    agent_.reset();
    server_.reset();
    fs::remove_all(tmp_);
  }

  AgentOptions Options() {
    AgentOptions o;
    o.name = "test-worker";
    o.data_dir = "/data/root";
    o.lease_wait_seconds = 0.5;
    o.min_backoff = absl::Milliseconds(20);
    o.max_backoff = absl::Milliseconds(200);
    o.rpc_timeout = absl::Seconds(5);
    o.hub.cache_dir = (tmp_ / "hub").string();
    return o;
  }

  void StartAgent(JobRunner runner, AgentOptions options, const std::string& address = "") {
    AgentDeps deps;
    deps.run_job = std::move(runner);
    deps.device.device = "cpu";
    deps.device.device_string = "cpu";
    deps.device.device_name = "Test CPU";
    deps.device.memory_bytes = 1 << 30;
    deps.device.torch_version = "9.9.9";
    deps.device.num_threads = 3;
    deps.memory_used_bytes = [] { return int64_t{12345}; };
    deps.release_device_memory = [this] { ++releases_; };
    auto channel = grpc::CreateChannel(address.empty() ? server_->address() : address,
                                       grpc::InsecureChannelCredentials());
    agent_ = std::make_unique<WorkerAgent>(gptq::worker::v1::WorkerService::NewStub(channel),
                                           std::move(options), std::move(deps));
    agent_thread_ = std::thread([this] { run_status_ = agent_->Run(); });
  }

  void JoinAgent() {
    if (agent_thread_.joinable()) agent_thread_.join();
  }

  gptq::worker::v1::Lease MakeLease(const std::string& job_id) {
    gptq::worker::v1::Lease lease;
    lease.set_job_id(job_id);
    lease.set_attempt(1);
    lease.mutable_spec()->set_model_uri((tmp_ / "model").string());
    lease.mutable_spec()->set_output_uri("file://" + (tmp_ / ("out-" + job_id)).string());
    lease.mutable_spec()->set_bits(3);
    return lease;
  }

  fs::path tmp_;
  FakeWorkerService service_;
  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<WorkerAgent> agent_;
  std::thread agent_thread_;
  absl::Status run_status_;
  std::atomic<int> releases_{0};
};

ProgressEvent Module(int layer, const std::string& name, double loss) {
  ProgressEvent e;
  e.kind = ProgressEvent::Kind::kModule;
  e.layer = layer;
  e.num_layers = 2;
  e.module = name;
  e.loss = loss;
  e.fraction = 0.5;
  return e;
}

// Waits for the token, at most 30 s; returns whether it fired.
bool WaitForCancel(const runtime::CancelToken& token) {
  for (int i = 0; i < 3000 && !token.cancelled(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return token.cancelled();
}

TEST_F(AgentTest, RunsLeaseReportsEventsAndFinishesWithResults) {
  runtime::QuantizeOptions seen;
  auto runner = [&](const runtime::QuantizeOptions& o, runtime::ProgressSink& sink,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    seen = o;
    ProgressEvent stage;
    stage.kind = ProgressEvent::Kind::kStage;
    stage.stage = "quantize";
    stage.layer = 0;
    stage.num_layers = 2;
    stage.fraction = 0.1;
    sink.OnEvent(stage);
    sink.OnEvent(Module(0, "self_attn.q_proj", 1.0));
    sink.OnEvent(Module(1, "self_attn.q_proj", 3.0));
    fs::create_directories(o.output_dir);
    std::ofstream(o.output_dir + "/model.safetensors") << "abc";
    ProgressEvent artifact;
    artifact.kind = ProgressEvent::Kind::kArtifact;
    artifact.message = "model.safetensors";
    artifact.size_bytes = 3;
    artifact.sha256 = "ba7816bf";
    sink.OnEvent(artifact);
    runtime::QuantizeReport r;
    r.modules = {{0, "model.layers.0.self_attn.q_proj", 8, 8, 1.0, 0.1, false, false, 0.1},
                 {1, "model.layers.1.self_attn.q_proj", 8, 8, 3.0, 0.1, false, false, 0.1},
                 {1, "model.layers.1.mlp.down_proj", 8, 9, 0.0, 0.0, false, true, 0.0}};
    r.files = {{"model.safetensors", 3, "ba7816bf"}};
    r.output_dir = o.output_dir;
    r.seconds = {{"total", 1.25}};
    return r;
  };
  service_.QueueLease(MakeLease("job-1"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options);
  JoinAgent();
  ASSERT_TRUE(run_status_.ok()) << run_status_;

  auto regs = service_.registrations();
  ASSERT_EQ(regs.size(), 1u);
  EXPECT_EQ(regs[0].name(), "test-worker");
  EXPECT_EQ(regs[0].capabilities().device(), "cpu");
  EXPECT_EQ(regs[0].capabilities().device_name(), "Test CPU");
  EXPECT_EQ(regs[0].capabilities().memory_bytes(), 1 << 30);
  EXPECT_EQ(regs[0].capabilities().torch_version(), "9.9.9");
  EXPECT_EQ(regs[0].capabilities().num_threads(), 3);

  EXPECT_EQ(seen.model_dir, (tmp_ / "model").string());
  EXPECT_EQ(seen.output_dir, (tmp_ / "out-job-1").string());
  EXPECT_EQ(seen.data_dir, "/data/root");
  EXPECT_EQ(seen.device, "cpu");
  EXPECT_EQ(seen.bits, 3);
  EXPECT_EQ(seen.group_size, 128);

  auto events = service_.events("job-1");
  std::vector<std::string> modules;
  bool saw_artifact = false, saw_stage = false;
  for (const auto& e : events) {
    EXPECT_EQ(e.job_id(), "job-1");
    if (e.has_module_progress()) modules.push_back(e.module_progress().module());
    if (e.has_artifact()) saw_artifact = e.artifact().file().path() == "model.safetensors";
    if (e.has_log() && e.log().message() == "stage quantize: layer 1/2") saw_stage = true;
  }
  EXPECT_THAT(modules, ::testing::ElementsAre("self_attn.q_proj", "self_attn.q_proj"));
  EXPECT_TRUE(saw_artifact);
  EXPECT_TRUE(saw_stage);
  auto reports = service_.reports();
  ASSERT_FALSE(reports.empty());
  EXPECT_EQ(reports.back().progress().stage(), "quantize");
  EXPECT_EQ(reports.back().worker_id(), "w-1");
  EXPECT_EQ(reports.back().lease_epoch(), 1);

  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), 1u);
  const auto& f = finishes[0];
  EXPECT_EQ(f.job_id(), "job-1");
  EXPECT_EQ(f.lease_epoch(), 1);
  ASSERT_TRUE(f.has_results()) << f.DebugString();
  EXPECT_EQ(f.results().losses().num_modules(), 2);
  EXPECT_DOUBLE_EQ(f.results().losses().total_loss(), 4.0);
  EXPECT_EQ(f.results().losses().max_loss_module(), "model.layers.1.self_attn.q_proj");
  EXPECT_THAT(f.results().losses().unquantized_modules(),
              ::testing::ElementsAre("model.layers.1.mlp.down_proj"));
  EXPECT_EQ(f.results().output_location(), (tmp_ / "out-job-1").string());
  ASSERT_EQ(f.results().files_size(), 1);
  EXPECT_EQ(f.results().files(0).size_bytes(), 3);
  EXPECT_DOUBLE_EQ(f.results().seconds(), 1.25);
  EXPECT_EQ(releases_.load(), 1) << "device memory released after the job";
  EXPECT_TRUE(fs::exists(tmp_ / "out-job-1/model.safetensors"));
}

TEST_F(AgentTest, BatchesManyEventsInOrder) {
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink& sink,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    for (int i = 0; i < 100; ++i) sink.OnEvent(Module(0, absl::StrCat("m", i), i));
    return runtime::QuantizeReport{};
  };
  service_.QueueLease(MakeLease("job-b"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  options.batcher.max_delay = absl::Seconds(5);  // only the count (or the end) flushes
  StartAgent(runner, options);
  JoinAgent();
  auto reports = service_.reports();
  std::vector<std::string> modules;
  for (const auto& r : reports) {
    EXPECT_LE(r.events_size(), 32);
    for (const auto& e : r.events()) {
      if (e.has_module_progress()) modules.push_back(e.module_progress().module());
    }
  }
  ASSERT_EQ(modules.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(modules[i], absl::StrCat("m", i));
  // 100 module events + the agent's log line: at least 4 calls, and no 1-event dribble.
  EXPECT_GE(reports.size(), 4u);
  EXPECT_LE(reports.size(), 8u);
  ASSERT_EQ(service_.finishes().size(), 1u);
}

TEST_F(AgentTest, EventsFlushWithinTheDelayWhileTheJobRuns) {
  std::atomic<bool> release{false};
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink& sink,
                    const runtime::CancelToken& cancel) -> absl::StatusOr<runtime::QuantizeReport> {
    sink.OnEvent(Module(0, "only", 1.0));
    for (int i = 0; i < 3000 && !release.load() && !cancel.cancelled(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return runtime::QuantizeReport{};
  };
  service_.QueueLease(MakeLease("job-f"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options);
  // The single event arrives while the runner still blocks (250 ms delay, not the job's end).
  const bool flushed = service_.WaitFor(
      [](FakeWorkerService& s) {
        for (const auto& r : s.reports_locked()) {
          for (const auto& e : r.events()) {
            if (e.has_module_progress() && e.module_progress().module() == "only") return true;
          }
        }
        return false;
      },
      kWait);
  EXPECT_TRUE(flushed);
  EXPECT_TRUE(service_.finishes().empty());
  // Heartbeats carry the job while it runs.
  EXPECT_TRUE(service_.WaitFor(
      [](FakeWorkerService& s) {
        for (const auto& h : s.heartbeats_locked()) {
          if (h.job_id() == "job-f" && h.memory_used_bytes() == 12345) return true;
        }
        return false;
      },
      kWait));
  release = true;
  JoinAgent();
  EXPECT_EQ(service_.finishes().size(), 1u);
}

TEST_F(AgentTest, CancelFromHeartbeatFinishesCancelledAndRemovesOutput) {
  std::atomic<bool> runner_started{false};
  auto runner = [&](const runtime::QuantizeOptions& o, runtime::ProgressSink&,
                    const runtime::CancelToken& cancel) -> absl::StatusOr<runtime::QuantizeReport> {
    fs::create_directories(o.output_dir + "/.partial");
    runner_started = true;
    if (!WaitForCancel(cancel)) return absl::InternalError("never cancelled");
    return absl::CancelledError("stopped between modules");
  };
  service_.QueueLease(MakeLease("job-c"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options);
  ASSERT_TRUE(service_.WaitFor([&](FakeWorkerService&) { return runner_started.load(); }, kWait));
  const auto t0 = std::chrono::steady_clock::now();
  service_.RequestCancel("job-c");
  JoinAgent();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 5.0);
  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), 1u);
  ASSERT_TRUE(finishes[0].has_error());
  EXPECT_EQ(finishes[0].error().code(), 1);  // CANCELLED
  EXPECT_THAT(finishes[0].error().message(), HasSubstr("cancelled"));
  EXPECT_FALSE(fs::exists(tmp_ / "out-job-c"));
  EXPECT_EQ(releases_.load(), 1);
}

TEST_F(AgentTest, CancelReachesThroughAHeldHeartbeatAtOnce) {
  // The server holds heartbeats of a running job for a whole period (here 3 s) and answers at
  // once on cancel; the runner reports nothing, so only the heartbeat can carry the cancel.
  FakeWorkerService held(/*heartbeat_seconds=*/3.0);
  held.set_hold_heartbeats(true);
  FakeServer held_server(&held);
  ASSERT_TRUE(held_server.ok());
  std::atomic<bool> runner_started{false};
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink&,
                    const runtime::CancelToken& cancel) -> absl::StatusOr<runtime::QuantizeReport> {
    runner_started = true;
    if (!WaitForCancel(cancel)) return absl::InternalError("never cancelled");
    return absl::CancelledError("stopped");
  };
  held.QueueLease(MakeLease("job-h"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options, held_server.address());
  ASSERT_TRUE(held.WaitFor([&](FakeWorkerService&) { return runner_started.load(); }, kWait));
  // Wait until a heartbeat carrying the job is being held, then cancel.
  ASSERT_TRUE(held.WaitFor(
      [](FakeWorkerService& s) {
        for (const auto& h : s.heartbeats_locked()) {
          if (h.job_id() == "job-h") return true;
        }
        return false;
      },
      kWait));
  const auto t0 = std::chrono::steady_clock::now();
  held.RequestCancel("job-h");
  ASSERT_TRUE(
      held.WaitFor([](FakeWorkerService& s) { return !s.finishes_locked().empty(); }, kWait));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 1.5) << "the cancel waited for the next heartbeat period";
  EXPECT_EQ(held.finishes()[0].error().code(), 1);
  JoinAgent();
}

TEST_F(AgentTest, LeaseLostCancelsAndDoesNotFinish) {
  std::atomic<bool> runner_started{false};
  std::atomic<bool> was_cancelled{false};
  auto runner = [&](const runtime::QuantizeOptions& o, runtime::ProgressSink&,
                    const runtime::CancelToken& cancel) -> absl::StatusOr<runtime::QuantizeReport> {
    fs::create_directories(o.output_dir);
    runner_started = true;
    was_cancelled = WaitForCancel(cancel);
    return absl::CancelledError("stopped");
  };
  service_.QueueLease(MakeLease("job-l"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options);
  ASSERT_TRUE(service_.WaitFor([&](FakeWorkerService&) { return runner_started.load(); }, kWait));
  service_.LoseLease("job-l");
  JoinAgent();
  EXPECT_TRUE(was_cancelled.load());
  EXPECT_TRUE(service_.finishes().empty());
  // A newer attempt may own the output now: the agent leaves it alone.
  EXPECT_TRUE(fs::exists(tmp_ / "out-job-l"));
}

TEST_F(AgentTest, StaleEpochOnReportAbandonsTheJob) {
  std::atomic<bool> was_cancelled{false};
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink& sink,
                    const runtime::CancelToken& cancel) -> absl::StatusOr<runtime::QuantizeReport> {
    // Keep reporting until the token fires.
    for (int i = 0; i < 3000 && !cancel.cancelled(); ++i) {
      sink.OnEvent(Module(0, "m", i));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    was_cancelled = cancel.cancelled();
    return absl::CancelledError("stopped");
  };
  service_.QueueLease(MakeLease("job-s"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options);
  ASSERT_TRUE(
      service_.WaitFor([](FakeWorkerService& s) { return !s.reports_locked().empty(); }, kWait));
  service_.BumpEpochSilently("job-s");
  JoinAgent();
  EXPECT_TRUE(was_cancelled.load());
  EXPECT_TRUE(service_.finishes().empty());
}

TEST_F(AgentTest, FailuresCarryPreciseCodes) {
  struct Case {
    absl::Status status;
    int code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {absl::NotFoundError("model.safetensors: no tensor 'lm_head.weight'"), 9,
       "no tensor 'lm_head.weight'"},
      {absl::FailedPreconditionError("config.json: unsupported model_type 'gpt2'"), 9,
       "unsupported model_type"},
      {absl::ResourceExhaustedError("CUDA out of memory. Tried to allocate 2.00 GiB"), 8,
       "out of memory"},
      {absl::InvalidArgumentError("group_size 7 does not divide 64"), 3, "group_size 7"},
  };
  int i = 0;
  std::vector<std::string> job_ids;
  for (const Case& c : cases) {
    job_ids.push_back(absl::StrCat("job-e", i++));
    service_.QueueLease(MakeLease(job_ids.back()));
  }
  std::atomic<int> call{0};
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink&,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    return cases[call++].status;
  };
  AgentOptions options = Options();
  options.max_jobs = static_cast<int>(cases.size());
  StartAgent(runner, options);
  JoinAgent();
  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), cases.size());
  for (size_t k = 0; k < cases.size(); ++k) {
    EXPECT_EQ(finishes[k].job_id(), job_ids[k]);
    ASSERT_TRUE(finishes[k].has_error());
    EXPECT_EQ(finishes[k].error().code(), cases[k].code) << finishes[k].error().message();
    EXPECT_THAT(finishes[k].error().message(), HasSubstr(cases[k].message));
  }
}

TEST_F(AgentTest, MissingModelDirectoryFailsWithoutRunning) {
  std::atomic<int> calls{0};
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink&,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    ++calls;
    return runtime::QuantizeReport{};
  };
  auto lease = MakeLease("job-m");
  lease.mutable_spec()->set_model_uri("/nonexistent/model/dir");
  service_.QueueLease(lease);
  auto bad_spec = MakeLease("job-bad");
  bad_spec.mutable_spec()->set_bits(7);
  service_.QueueLease(bad_spec);
  AgentOptions options = Options();
  options.max_jobs = 2;
  StartAgent(runner, options);
  JoinAgent();
  EXPECT_EQ(calls.load(), 0);
  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), 2u);
  EXPECT_EQ(finishes[0].error().code(), 9);
  EXPECT_THAT(finishes[0].error().message(), HasSubstr("model directory '/nonexistent/model/dir'"));
  EXPECT_EQ(finishes[1].error().code(), 3);
  EXPECT_THAT(finishes[1].error().message(), HasSubstr("spec.bits must be 2, 3, 4 or 8"));
}

TEST_F(AgentTest, RegistersAgainWhenTheServerForgetsIt) {
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink&,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    return runtime::QuantizeReport{};
  };
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options);
  ASSERT_TRUE(service_.WaitFor(
      [](FakeWorkerService& s) { return s.registrations_locked().size() == 1; }, kWait));
  service_.ForgetWorkers();  // "restart"
  ASSERT_TRUE(service_.WaitFor(
      [](FakeWorkerService& s) { return s.registrations_locked().size() >= 2; }, kWait));
  service_.QueueLease(MakeLease("job-r"));
  JoinAgent();
  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), 1u);
  EXPECT_NE(finishes[0].worker_id(), "w-1") << "reports use the new worker id";
  EXPECT_TRUE(finishes[0].has_results());
}

TEST_F(AgentTest, ReconnectsWhenTheServerComesUpLate) {
  const int port = server_->port();
  server_->Shutdown();
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink&,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    return runtime::QuantizeReport{};
  };
  AgentOptions options = Options();
  options.max_jobs = 1;
  StartAgent(runner, options, absl::StrCat("127.0.0.1:", port));
  // Let the agent fail a few times against the closed port, then bring the server up there.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server_ = std::make_unique<FakeServer>(&service_, port);
  ASSERT_TRUE(server_->ok()) << "could not rebind port " << port;
  service_.QueueLease(MakeLease("job-late"));
  JoinAgent();
  EXPECT_EQ(service_.finishes().size(), 1u);
}

TEST_F(AgentTest, SendsTheBearerToken) {
  service_.set_required_token("s3cret");
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink&,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    return runtime::QuantizeReport{};
  };
  service_.QueueLease(MakeLease("job-t"));
  AgentOptions options = Options();
  options.max_jobs = 1;
  options.auth_token = "s3cret";
  StartAgent(runner, options);
  JoinAgent();
  EXPECT_EQ(service_.finishes().size(), 1u);
}

TEST_F(AgentTest, StopAbandonsARunningJob) {
  std::atomic<bool> runner_started{false};
  auto runner = [&](const runtime::QuantizeOptions&, runtime::ProgressSink&,
                    const runtime::CancelToken& cancel) -> absl::StatusOr<runtime::QuantizeReport> {
    runner_started = true;
    WaitForCancel(cancel);
    return absl::CancelledError("stopped");
  };
  service_.QueueLease(MakeLease("job-stop"));
  StartAgent(runner, Options());
  ASSERT_TRUE(service_.WaitFor([&](FakeWorkerService&) { return runner_started.load(); }, kWait));
  agent_->Stop();
  JoinAgent();
  EXPECT_TRUE(service_.finishes().empty()) << "the server requeues it when the lease expires";
}

// hf:// model URIs are fetched into the cache before the run.
TEST_F(AgentTest, ResolvesHfModelUriThroughTheHub) {
#ifdef GPTQ_AGENT_TEST_NO_CURL
  GTEST_SKIP() << "built without libcurl: hf:// downloads are unavailable";
#endif
  const std::string models = std::string(GPTQ_TEST_DATA_ROOT) + "/models";
  if (!fs::exists(models + "/stories260K-hf/config.json")) {
    GTEST_SKIP() << "test data absent: " << models << "/stories260K-hf";
  }
  httplib::Server hub;
  hub.Get(R"(/([^/]+)/([^/]+)/resolve/([^/]+)/(.+))",
          [&](const httplib::Request& req, httplib::Response& res) {
            const std::string path =
                models + "/" + std::string(req.matches[2]) + "/" + std::string(req.matches[4]);
            std::ifstream in(path, std::ios::binary);
            if (!in) {
              res.status = 404;
              return;
            }
            std::stringstream ss;
            ss << in.rdbuf();
            res.set_content(ss.str(), "application/octet-stream");
          });
  const int hub_port = hub.bind_to_any_port("127.0.0.1");
  std::thread hub_thread([&] { hub.listen_after_bind(); });
  while (!hub.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  std::string model_dir;
  auto runner = [&](const runtime::QuantizeOptions& o, runtime::ProgressSink&,
                    const runtime::CancelToken&) -> absl::StatusOr<runtime::QuantizeReport> {
    model_dir = o.model_dir;
    return runtime::QuantizeReport{};
  };
  auto lease = MakeLease("job-hf");
  lease.mutable_spec()->set_model_uri("hf://local/stories260K-hf");
  service_.QueueLease(lease);
  AgentOptions options = Options();
  options.max_jobs = 1;
  options.hub.endpoint = absl::StrCat("http://127.0.0.1:", hub_port);
  StartAgent(runner, options);
  JoinAgent();
  hub.stop();
  hub_thread.join();
  EXPECT_EQ(model_dir, (tmp_ / "hub/local/stories260K-hf/main").string());
  EXPECT_TRUE(fs::exists(model_dir + "/model.safetensors"));
  ASSERT_EQ(service_.finishes().size(), 1u);
  EXPECT_TRUE(service_.finishes()[0].has_results());
  bool logged = false;
  for (const auto& e : service_.events("job-hf")) {
    if (e.has_log() && e.log().message().find("downloaded") != std::string::npos) logged = true;
  }
  EXPECT_TRUE(logged);
}

}  // namespace
}  // namespace gptq::agent
