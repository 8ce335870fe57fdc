// The real `gptq-worker serve` binary (with the real runtime) against a fake WorkerService in
// this process: one lease for stories260K (token-id calibration) must produce module events,
// artifacts and a FinishJob with results whose files match the disk; a cancel request must end
// a stories15M job quickly with CANCELLED and no output directory.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "gptq/sha256.h"
#include "testing/fake_worker_service.h"

extern char** environ;

namespace gptq::agent {
namespace {

namespace fs = std::filesystem;
using testing::FakeServer;
using testing::FakeWorkerService;

std::string DataRoot() {
  const char* env = std::getenv("GPTQ_TEST_DATA_ROOT");
  return env != nullptr && *env != '\0' ? env : GPTQ_TEST_DATA_ROOT;
}
// The worker's --device: cpu unless GPTQ_TEST_WORKER_DEVICE says otherwise (e.g. cuda:0 on the
// GPU machine).
std::string WorkerDevice() {
  const char* env = std::getenv("GPTQ_TEST_WORKER_DEVICE");
  return env != nullptr && *env != '\0' ? env : "cpu";
}
std::string WorkerBinary() { return std::string(GPTQ_BINARY_DIR) + "/bin/gptq-worker"; }

// A child process; killed (SIGKILL) if still running at destruction.
class Child {
 public:
  Child(const std::vector<std::string>& args, const std::string& log_path) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~Child() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  bool started() const { return pid_ > 0; }
  // Waits for exit; returns the exit status, or nullopt on timeout.
  std::optional<int> Wait(std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int st = 0;
      const pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class WorkerServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(WorkerBinary())) {
      GTEST_SKIP() << WorkerBinary() << " is not built";
    }
    tmp_ = fs::temp_directory_path() /
           absl::StrCat("worker_serve_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
    server_ = std::make_unique<FakeServer>(&service_);
    ASSERT_TRUE(server_->ok());
  }
  void TearDown() override {
    server_.reset();
    if (!tmp_.empty() && !HasFailure()) fs::remove_all(tmp_);
  }

  std::unique_ptr<Child> StartWorker() {
    return std::make_unique<Child>(
        std::vector<std::string>{WorkerBinary(), "serve", "--server", server_->address(),
                                 "--device", WorkerDevice(), "--max-jobs", "1", "--lease-wait", "1",
                                 "--name", "integration", "--cache-dir", (tmp_ / "hub").string(),
                                 "--data-dir", DataRoot() + "/text"},
        log_path());
  }
  std::string log_path() const { return (tmp_ / "worker.log").string(); }

  static gptq::worker::v1::Lease MakeLease(const std::string& job_id, const std::string& model,
                                           const std::string& output, int vocab, int nsamples,
                                           int seqlen) {
    gptq::worker::v1::Lease lease;
    lease.set_job_id(job_id);
    lease.set_attempt(1);
    auto* spec = lease.mutable_spec();
    spec->set_model_uri(model);
    spec->set_output_uri(output);
    auto* cal = spec->mutable_calibration();
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int> id(0, vocab - 1);
    for (int i = 0; i < 4096; ++i) cal->mutable_token_ids()->add_ids(id(rng));
    cal->set_nsamples(nsamples);
    cal->set_seqlen(seqlen);
    return lease;
  }

  fs::path tmp_;
  FakeWorkerService service_{/*heartbeat_seconds=*/0.2};
  std::unique_ptr<FakeServer> server_;
};

TEST_F(WorkerServeTest, QuantizesStories260KAndFinishesWithResults) {
  const std::string model = DataRoot() + "/models/stories260K-hf";
  if (!fs::exists(model + "/model.safetensors")) {
    GTEST_SKIP() << "test data absent: " << model;
  }
  const std::string out = (tmp_ / "out").string();
  service_.QueueLease(MakeLease("job-260k", model, out, /*vocab=*/512, /*nsamples=*/16,
                                /*seqlen=*/64));
  auto worker = StartWorker();
  ASSERT_TRUE(worker->started());
  const std::optional<int> rc = worker->Wait(std::chrono::seconds(300));
  ASSERT_TRUE(rc.has_value()) << "worker did not exit; log:\n" << ReadFile(log_path());
  EXPECT_EQ(*rc, 0) << ReadFile(log_path());

  auto regs = service_.registrations();
  ASSERT_GE(regs.size(), 1u);
  EXPECT_EQ(regs[0].name(), "integration");
  const bool cuda = WorkerDevice() != "cpu";
  EXPECT_EQ(regs[0].capabilities().device(), cuda ? "cuda" : "cpu");
  EXPECT_FALSE(regs[0].capabilities().torch_version().empty());
  EXPECT_GT(regs[0].capabilities().memory_bytes(), 0);

  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), 1u) << ReadFile(log_path());
  const auto& f = finishes[0];
  ASSERT_TRUE(f.has_results()) << f.error().message() << "\n" << ReadFile(log_path());
  const auto& r = f.results();
  EXPECT_EQ(fs::canonical(r.output_location()), fs::canonical(out));
  EXPECT_GT(r.seconds(), 0.0);
  if (cuda) {
    EXPECT_GT(r.peak_gpu_bytes(), 0);
  } else {
    EXPECT_EQ(r.peak_gpu_bytes(), 0);
  }
  // 5 layers x 7 linear modules; every one quantized or named as left unquantized.
  EXPECT_EQ(r.losses().num_modules() + r.losses().rtn_fallback_modules_size() +
                r.losses().unquantized_modules_size(),
            35);
  EXPECT_GT(r.losses().num_modules(), 0);
  EXPECT_GT(r.losses().total_loss(), 0.0);
  ASSERT_GT(r.files_size(), 0);
  std::set<std::string> paths;
  for (const auto& file : r.files()) {
    paths.insert(file.path());
    const std::string p = out + "/" + file.path();
    ASSERT_TRUE(fs::exists(p)) << p;
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(p)), file.size_bytes()) << p;
    EXPECT_EQ(*gptq::Sha256File(p), file.sha256()) << p;
  }
  EXPECT_TRUE(paths.count("config.json"));

  // Events: module progress of every layer, artifacts, in order of layers.
  std::set<int> layers;
  int last_layer = -1, num_artifacts = 0;
  for (const auto& e : service_.events("job-260k")) {
    if (e.has_module_progress()) {
      EXPECT_GE(e.module_progress().layer(), last_layer);
      last_layer = e.module_progress().layer();
      layers.insert(last_layer);
      EXPECT_EQ(e.module_progress().num_layers(), 5);
    }
    if (e.has_artifact()) ++num_artifacts;
  }
  EXPECT_EQ(layers, (std::set<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(num_artifacts, r.files_size());
  auto reports = service_.reports();
  ASSERT_FALSE(reports.empty());
  for (const auto& rep : reports) EXPECT_LE(rep.events_size(), 32);
}

TEST_F(WorkerServeTest, CancelEndsTheJobQuicklyWithoutOutput) {
  const std::string model = DataRoot() + "/models/stories15M-hf";
  if (!fs::exists(model + "/model.safetensors")) {
    GTEST_SKIP() << "test data absent: " << model;
  }
  const std::string out = (tmp_ / "out-cancel").string();
  // Large enough to take many seconds on CPU, so the cancel lands mid-run.
  service_.QueueLease(MakeLease("job-cancel", model, out, /*vocab=*/32000, /*nsamples=*/128,
                                /*seqlen=*/256));
  auto worker = StartWorker();
  ASSERT_TRUE(worker->started());
  ASSERT_TRUE(service_.WaitFor(
      [](FakeWorkerService& s) {
        for (const auto& r : s.reports_locked()) {
          for (const auto& e : r.events()) {
            if (e.has_module_progress()) return true;
          }
        }
        return !s.finishes_locked().empty();
      },
      std::chrono::seconds(300)))
      << ReadFile(log_path());
  ASSERT_TRUE(service_.finishes().empty()) << "the job ended before it could be cancelled";
  const auto t0 = std::chrono::steady_clock::now();
  service_.RequestCancel("job-cancel");
  ASSERT_TRUE(service_.WaitFor([](FakeWorkerService& s) { return !s.finishes_locked().empty(); },
                               std::chrono::seconds(60)))
      << ReadFile(log_path());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), 1u);
  ASSERT_TRUE(finishes[0].has_error()) << finishes[0].DebugString();
  EXPECT_EQ(finishes[0].error().code(), 1) << finishes[0].error().message();
  EXPECT_LT(seconds, 10.0) << "cancel took too long";
  const std::optional<int> rc = worker->Wait(std::chrono::seconds(30));
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0);
  EXPECT_FALSE(fs::exists(out)) << "a cancelled job leaves no output directory";
}

TEST_F(WorkerServeTest, BadModelFailsWithFailedPrecondition) {
  // A directory with a config.json the loader rejects.
  const fs::path model = tmp_ / "bad-model";
  fs::create_directories(model);
  std::ofstream(model / "config.json") << "{\"model_type\": \"llama\"}";
  service_.QueueLease(
      MakeLease("job-bad", model.string(), (tmp_ / "out-bad").string(), 512, 4, 64));
  auto worker = StartWorker();
  ASSERT_TRUE(worker->started());
  const std::optional<int> rc = worker->Wait(std::chrono::seconds(120));
  ASSERT_TRUE(rc.has_value()) << ReadFile(log_path());
  auto finishes = service_.finishes();
  ASSERT_EQ(finishes.size(), 1u) << ReadFile(log_path());
  ASSERT_TRUE(finishes[0].has_error());
  EXPECT_EQ(finishes[0].error().code(), 9) << finishes[0].error().message();
  EXPECT_FALSE(finishes[0].error().message().empty());
  EXPECT_FALSE(fs::exists(tmp_ / "out-bad"));
}

TEST(WorkerBinaryTest, UsageErrors) {
  if (!fs::exists(WorkerBinary())) GTEST_SKIP() << WorkerBinary() << " is not built";
  const std::string log = (fs::temp_directory_path() / absl::StrCat("wb_", getpid())).string();
  {
    Child c({WorkerBinary(), "serve"}, log);
    EXPECT_EQ(c.Wait(std::chrono::seconds(30)), std::optional<int>(2));
    EXPECT_THAT(ReadFile(log), ::testing::HasSubstr("--server HOST:PORT is required"));
  }
  {
    Child c({WorkerBinary(), "frobnicate"}, log);
    EXPECT_EQ(c.Wait(std::chrono::seconds(30)), std::optional<int>(2));
    EXPECT_THAT(ReadFile(log), ::testing::HasSubstr("unknown command 'frobnicate'"));
  }
  {
    Child c({WorkerBinary(), "serve", "--server", "127.0.0.1:1", "--device", "tpu"}, log);
    EXPECT_EQ(c.Wait(std::chrono::seconds(30)), std::optional<int>(2));
    EXPECT_THAT(ReadFile(log), ::testing::HasSubstr("--device 'tpu'"));
  }
  fs::remove(log);
}

}  // namespace
}  // namespace gptq::agent
