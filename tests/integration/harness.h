// Integration-test harness: runs the REAL gptq-server and gptq-worker binaries as child
// processes (port 0, temp SQLite file, temp output dirs) and talks to them with real clients
// (the generated C++ stub, and the gptqctl binary).
//
// Binaries come from GPTQ_BINARY_DIR/bin (overridable with env GPTQ_TEST_BIN_DIR, and
// GPTQ_TEST_WORKER_BINARY for the worker alone). A missing gptq-server is a failure; a missing
// gptq-worker is a skip only when the build had no worker (no LibTorch).
#ifndef GPTQ_TESTS_INTEGRATION_HARNESS_H_
#define GPTQ_TESTS_INTEGRATION_HARNESS_H_

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gptq/v1/quantization.grpc.pb.h"

namespace gptq::testing {

// A fresh directory under $TMPDIR, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A child process with stdout+stderr appended to `log_path`.
class Process {
 public:
  Process() = default;
  ~Process();  // SIGTERM, then SIGKILL after 10 s
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  absl::Status Start(const std::vector<std::string>& argv, const std::string& log_path,
                     const std::map<std::string, std::string>& extra_env = {});
  pid_t pid() const { return pid_; }
  bool running();
  void Signal(int sig);
  // Waits for exit; returns the exit status (128+signal for a signal), or nullopt on timeout.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL.
  void Stop(std::chrono::milliseconds grace = std::chrono::seconds(10));

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

// Result of running a command to completion.
struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs argv, waiting at most `timeout`; stdin from /dev/null unless `stdin_text` is given.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         std::chrono::seconds timeout = std::chrono::seconds(300),
                         const std::optional<std::string>& stdin_text = std::nullopt);

// Where the binaries are, and whether this build was expected to have a worker.
std::string BinDir();
std::string ServerBinary();
std::string WorkerBinary();
std::string GptqctlBinary();
bool WorkerExpected();  // the build had LibTorch (GPTQ_WITH_WORKER)

// Root of the shared test data (models/, text/), or "" when absent.
std::string DataRoot();
std::string Stories260K();  // DataRoot()/models/stories260K-hf
std::string Stories15M();   // DataRoot()/models/stories15M-hf
std::string TextDataDir();  // DataRoot()/text (the worker's --data-dir)

// Options of a server run.
struct ServerOptions {
  int local_workers = 0;
  double heartbeat_seconds = 1;
  std::vector<std::string> allowed_model_roots;
  std::vector<std::string> allowed_output_roots;
  std::vector<std::string> extra_args;
  int port = 0;  // 0: pick one
};

// One gptq-server process (plus any local workers it supervises) on a temp db.
class Server {
 public:
  // `dir` holds the db, port files and logs.
  Server(std::string dir, ServerOptions options);
  ~Server();

  // Starts the server and waits (up to 30 s) for its port file.
  absl::Status Start();
  // kill -9 (its local workers, if any, are orphaned: use explicit workers for this).
  void Kill9();
  // Graceful stop (SIGTERM).
  void Stop();

  const std::string& address() const { return address_; }  // 127.0.0.1:PORT
  int port() const { return port_; }
  const std::string& metrics_address() const { return metrics_address_; }
  const std::string& db_path() const { return db_path_; }
  std::string log_path() const { return dir_ + "/server.log"; }
  std::string LogTail() const;
  gptq::v1::QuantizationService::Stub& stub() { return *stub_; }
  pid_t pid() const { return process_ ? process_->pid() : -1; }

 private:
  std::string dir_;
  ServerOptions options_;
  std::string db_path_;
  std::unique_ptr<Process> process_;
  std::string address_;
  std::string metrics_address_;
  int port_ = 0;
  int starts_ = 0;
  std::unique_ptr<gptq::v1::QuantizationService::Stub> stub_;
};

// An explicit `gptq-worker serve` process.
class Worker {
 public:
  Worker(std::string log_path) : log_path_(std::move(log_path)) {}
  absl::Status Start(const std::string& server_address);
  void Kill9() { process_.Signal(9); process_.Wait(std::chrono::seconds(10)); }
  pid_t pid() const { return process_.pid(); }
  std::string LogTail() const;

 private:
  std::string log_path_;
  Process process_;
};

// Polls GetJob until `done(job)` or `timeout`; returns the last job seen (or the RPC error).
absl::StatusOr<gptq::v1::Job> WaitForJob(gptq::v1::QuantizationService::Stub& stub,
                                         const std::string& id,
                                         const std::function<bool(const gptq::v1::Job&)>& done,
                                         std::chrono::milliseconds timeout);
bool IsTerminal(gptq::v1::JobState state);

// Reads a whole WatchJob stream (from sequence 1) until it ends; returns the events or the
// stream's error.
absl::StatusOr<std::vector<gptq::v1::JobEvent>> WatchAll(
    gptq::v1::QuantizationService::Stub& stub, const std::string& id,
    std::chrono::seconds timeout);

// Follows WatchJob until the first ModuleProgress event (true) or the end of the stream /
// `timeout` (false): "mid-job" for crash tests.
bool WaitForModuleProgress(gptq::v1::QuantizationService::Stub& stub, const std::string& id,
                           std::chrono::seconds timeout);

// Deterministic pseudo-random token ids in [lo, hi) (calibration for models without a
// tokenizer).
std::vector<int32_t> PseudoRandomTokens(int n, int lo, int hi, uint64_t seed);

// A CreateJobRequest for stories260K calibrated on `num_tokens` token ids.
gptq::v1::CreateJobRequest Stories260KRequest(const std::string& output_dir, int nsamples,
                                              int seqlen, int num_tokens = 4096);

// HTTP GET of http://address/path; the body, or an error.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path);

// Files under `dir`, relative, sorted (recursive).
std::vector<std::string> ListFiles(const std::string& dir);

// grpc::Status → absl::Status (for test messages).
std::string DescribeGrpc(int code, const std::string& message);

}  // namespace gptq::testing

// Test preconditions. A missing server binary fails (it is always built with the tests); a
// missing worker skips only in a build without LibTorch; missing shared data skips.
#define GPTQ_REQUIRE_SERVER()                                                         \
  ASSERT_TRUE(std::filesystem::exists(::gptq::testing::ServerBinary()))              \
      << "gptq-server is not built at " << ::gptq::testing::ServerBinary()
#define GPTQ_REQUIRE_WORKER()                                                          \
  do {                                                                                 \
    if (!std::filesystem::exists(::gptq::testing::WorkerBinary())) {                  \
      if (::gptq::testing::WorkerExpected()) {                                         \
        FAIL() << "gptq-worker missing at " << ::gptq::testing::WorkerBinary();       \
      }                                                                                \
      GTEST_SKIP() << "gptq-worker is not built (this build has no LibTorch: "        \
                      "-DGPTQ_BUILD_WORKER=OFF or LibTorch not found)";                \
    }                                                                                  \
  } while (0)
#define GPTQ_REQUIRE_DATA()                                                            \
  do {                                                                                 \
    if (::gptq::testing::DataRoot().empty()) {                                         \
      GTEST_SKIP() << "shared test data (models/, text/) not found; set "             \
                      "GPTQ_TEST_DATA_ROOT (normally ../shared/data)";                 \
    }                                                                                  \
  } while (0)

namespace gptq::testing {

// Base fixture of the job-running suites: a server on a temp db whose allowed roots are the
// shared models and `outputs_`. SetUp of the subclass checks the GPTQ_REQUIRE_* preconditions
// (they return from the function they are in), then calls StartServer.
class JobServiceTest : public ::testing::Test {
 protected:
  void StartServer(int local_workers) {
    outputs_ = tmp_.Sub("outputs");
    std::filesystem::create_directories(outputs_);
    ServerOptions opts;
    opts.local_workers = local_workers;
    opts.heartbeat_seconds = 1;
    opts.allowed_model_roots = {DataRoot() + "/models"};
    opts.allowed_output_roots = {outputs_};
    server_ = std::make_unique<Server>(tmp_.path(), opts);
    ASSERT_TRUE(server_->Start().ok()) << server_->LogTail();
  }

  gptq::v1::Job Create(const gptq::v1::CreateJobRequest& req) {
    grpc::ClientContext ctx;
    gptq::v1::Job job;
    grpc::Status s = server_->stub().CreateJob(&ctx, req, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }

  TempDir tmp_;
  std::string outputs_;
  std::unique_ptr<Server> server_;
};

}  // namespace gptq::testing

#endif  // GPTQ_TESTS_INTEGRATION_HARNESS_H_
