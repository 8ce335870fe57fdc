#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"

#ifndef GPTQ_BINARY_DIR
#define GPTQ_BINARY_DIR ""
#endif
#ifndef GPTQ_TEST_DATA_ROOT
#define GPTQ_TEST_DATA_ROOT ""
#endif
#ifndef GPTQ_WITH_WORKER_BUILD
#define GPTQ_WITH_WORKER_BUILD 0
#endif

namespace gptq::testing {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& path, size_t max_bytes = 4000) {
  std::string s = ReadFileOrEmpty(path);
  if (s.size() > max_bytes) s = "..." + s.substr(s.size() - max_bytes);
  return s;
}

}  // namespace

TempDir::TempDir() {
  std::string base = Env("TMPDIR");
  if (base.empty()) base = "/tmp";
  std::string templ = base + "/gptq-it-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  char* p = mkdtemp(buf.data());
  path_ = p == nullptr ? templ : std::string(p);
}

TempDir::~TempDir() {
  if (Env("GPTQ_TEST_KEEP_TMP").empty()) {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
}

// ---- Process --------------------------------------------------------------------------------

Process::~Process() { Stop(); }

absl::Status Process::Start(const std::vector<std::string>& argv, const std::string& log_path,
                            const std::map<std::string, std::string>& extra_env) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path));
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    // Own process group, so a stop reaches what the child starts only through the child; and
    // killed with the test process (e.g. on a CTest timeout) instead of being orphaned.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    for (const auto& [k, v] : extra_env) {
      if (v.empty()) {
        unsetenv(k.c_str());
      } else {
        setenv(k.c_str(), v.c_str(), 1);
      }
    }
    execv(args[0], args.data());
    dprintf(2, "exec %s failed: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  close(log_fd);
  pid_ = pid;
  exit_status_.reset();
  return absl::OkStatus();
}

bool Process::running() {
  if (pid_ <= 0 || exit_status_.has_value()) return false;
  return !Wait(std::chrono::milliseconds(0)).has_value();
}

void Process::Signal(int sig) {
  if (pid_ > 0 && !exit_status_.has_value()) kill(pid_, sig);
}

std::optional<int> Process::Wait(std::chrono::milliseconds timeout) {
  if (exit_status_.has_value()) return exit_status_;
  if (pid_ <= 0) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_status_;
    }
    if (r < 0) {
      exit_status_ = -1;
      return exit_status_;
    }
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void Process::Stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0 || exit_status_.has_value()) return;
  Signal(SIGTERM);
  if (!Wait(grace).has_value()) {
    Signal(SIGKILL);
    Wait(std::chrono::seconds(10));
  }
}

CommandResult RunCommand(const std::vector<std::string>& argv, std::chrono::seconds timeout,
                         const std::optional<std::string>& stdin_text) {
  CommandResult result;
  TempDir tmp;
  const std::string out_path = tmp.Sub("out"), err_path = tmp.Sub("err"), in_path = tmp.Sub("in");
  if (stdin_text) std::ofstream(in_path) << *stdin_text;
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int in = open(stdin_text ? in_path.c_str() : "/dev/null", O_RDONLY);
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    execvp(args[0], args.data());
    dprintf(2, "exec %s failed: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (Clock::now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      result.exit_code = -2;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  result.out = ReadFileOrEmpty(out_path);
  result.err = ReadFileOrEmpty(err_path);
  return result;
}

// ---- Paths ----------------------------------------------------------------------------------

std::string BinDir() {
  std::string d = Env("GPTQ_TEST_BIN_DIR");
  return d.empty() ? std::string(GPTQ_BINARY_DIR) + "/bin" : d;
}
std::string ServerBinary() { return BinDir() + "/gptq-server"; }
std::string WorkerBinary() {
  std::string w = Env("GPTQ_TEST_WORKER_BINARY");
  return w.empty() ? BinDir() + "/gptq-worker" : w;
}
std::string GptqctlBinary() { return BinDir() + "/gptqctl"; }
bool WorkerExpected() { return GPTQ_WITH_WORKER_BUILD != 0; }

std::string DataRoot() {
  std::string root = Env("GPTQ_TEST_DATA_ROOT");
  if (root.empty()) root = GPTQ_TEST_DATA_ROOT;
  std::error_code ec;
  if (root.empty() || !fs::is_directory(root + "/models", ec)) return "";
  return root;
}
std::string Stories260K() { return DataRoot() + "/models/stories260K-hf"; }
std::string Stories15M() { return DataRoot() + "/models/stories15M-hf"; }
std::string TextDataDir() { return DataRoot() + "/text"; }

// ---- Server / Worker ------------------------------------------------------------------------

Server::Server(std::string dir, ServerOptions options)
    : dir_(std::move(dir)), options_(std::move(options)), db_path_(dir_ + "/jobs.db") {}

Server::~Server() { Stop(); }

absl::Status Server::Start() {
  const std::string port_file = absl::StrCat(dir_, "/port.", starts_);
  const std::string metrics_file = absl::StrCat(dir_, "/metrics-port.", starts_);
  ++starts_;
  std::vector<std::string> argv = {
      ServerBinary(),
      "--listen", absl::StrCat("127.0.0.1:", options_.port),
      "--port-file", port_file,
      "--metrics-listen", "127.0.0.1:0",
      "--metrics-port-file", metrics_file,
      "--db", db_path_,
      "--local-workers", std::to_string(options_.local_workers),
      "--heartbeat-seconds", absl::StrCat(options_.heartbeat_seconds),
      "--worker-binary", WorkerBinary(),
      "--shutdown-grace-seconds", "1",
  };
  if (!DataRoot().empty()) {
    argv.push_back("--worker-args");
    argv.push_back(absl::StrCat("--data-dir ", TextDataDir()));
  }
  if (!options_.allowed_model_roots.empty()) {
    argv.push_back("--allowed-model-roots");
    argv.push_back(absl::StrJoin(options_.allowed_model_roots, ","));
  }
  if (!options_.allowed_output_roots.empty()) {
    argv.push_back("--allowed-output-roots");
    argv.push_back(absl::StrJoin(options_.allowed_output_roots, ","));
  }
  for (const auto& a : options_.extra_args) argv.push_back(a);
  process_ = std::make_unique<Process>();
  if (auto s = process_->Start(argv, log_path(), {{"GPTQ_AUTH_TOKEN", ""}}); !s.ok()) return s;

  const auto deadline = Clock::now() + std::chrono::seconds(30);
  std::string addr, maddr;
  while (Clock::now() < deadline) {
    addr = std::string(absl::StripAsciiWhitespace(ReadFileOrEmpty(port_file)));
    maddr = std::string(absl::StripAsciiWhitespace(ReadFileOrEmpty(metrics_file)));
    if (!addr.empty() && !maddr.empty()) break;
    if (!process_->running()) {
      return absl::InternalError(absl::StrCat("gptq-server exited at start-up; log:\n", LogTail()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (addr.empty()) {
    return absl::DeadlineExceededError(
        absl::StrCat("gptq-server wrote no port file in 30 s; log:\n", LogTail()));
  }
  address_ = addr;
  metrics_address_ = maddr;
  std::pair<std::string, std::string> hp = absl::StrSplit(addr, absl::MaxSplits(':', 1));
  if (!absl::SimpleAtoi(hp.second, &port_)) {
    return absl::InternalError(absl::StrCat("bad port file content: ", addr));
  }
  options_.port = port_;  // a restart keeps the address, so clients and workers reconnect
  stub_ = gptq::v1::QuantizationService::NewStub(
      grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  return absl::OkStatus();
}

void Server::Kill9() {
  if (process_) {
    process_->Signal(SIGKILL);
    process_->Wait(std::chrono::seconds(10));
  }
}

void Server::Stop() {
  if (process_) process_->Stop(std::chrono::seconds(15));
}

std::string Server::LogTail() const { return Tail(log_path()); }

absl::Status Worker::Start(const std::string& server_address) {
  std::vector<std::string> argv = {WorkerBinary(), "serve", "--server", server_address,
                                   "--device", "cpu"};
  if (!DataRoot().empty()) {
    argv.push_back("--data-dir");
    argv.push_back(TextDataDir());
  }
  return process_.Start(argv, log_path_, {{"GPTQ_AUTH_TOKEN", ""}});
}

std::string Worker::LogTail() const { return Tail(log_path_); }

// ---- RPC helpers ----------------------------------------------------------------------------

bool IsTerminal(gptq::v1::JobState s) {
  return s == gptq::v1::JOB_STATE_SUCCEEDED || s == gptq::v1::JOB_STATE_FAILED ||
         s == gptq::v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<gptq::v1::Job> WaitForJob(gptq::v1::QuantizationService::Stub& stub,
                                         const std::string& id,
                                         const std::function<bool(const gptq::v1::Job&)>& done,
                                         std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  gptq::v1::Job job;
  grpc::Status last;
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    gptq::v1::GetJobRequest req;
    req.set_id(id);
    gptq::v1::Job j;
    last = stub.GetJob(&ctx, req, &j);
    if (last.ok()) {
      job = j;
      if (done(job)) return job;
    } else if (last.error_code() != grpc::StatusCode::UNAVAILABLE &&
               last.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::Status(static_cast<absl::StatusCode>(last.error_code()), last.error_message());
    }
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "job ", id, " did not reach the awaited condition; last state ",
          gptq::v1::JobState_Name(job.state()), " progress ", job.progress().fraction(),
          last.ok() ? "" : absl::StrCat(" last error ", last.error_message())));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
}

absl::StatusOr<std::vector<gptq::v1::JobEvent>> WatchAll(
    gptq::v1::QuantizationService::Stub& stub, const std::string& id,
    std::chrono::seconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  gptq::v1::WatchJobRequest req;
  req.set_id(id);
  req.set_from_sequence(1);
  auto reader = stub.WatchJob(&ctx, req);
  std::vector<gptq::v1::JobEvent> events;
  gptq::v1::JobEvent e;
  while (reader->Read(&e)) events.push_back(e);
  grpc::Status s = reader->Finish();
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("WatchJob: ", s.error_message(), " after ", events.size(),
                                     " events"));
  }
  return events;
}

bool WaitForModuleProgress(gptq::v1::QuantizationService::Stub& stub, const std::string& id,
                           std::chrono::seconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  gptq::v1::WatchJobRequest req;
  req.set_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  gptq::v1::JobEvent e;
  bool found = false;
  while (reader->Read(&e)) {
    if (e.has_module_progress()) {
      found = true;
      break;
    }
  }
  ctx.TryCancel();
  reader->Finish();
  return found;
}

std::vector<int32_t> PseudoRandomTokens(int n, int lo, int hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = lo + static_cast<int32_t>(rng() % static_cast<uint64_t>(hi - lo));
  return ids;
}

gptq::v1::CreateJobRequest Stories260KRequest(const std::string& output_dir, int nsamples,
                                              int seqlen, int num_tokens) {
  gptq::v1::CreateJobRequest req;
  auto* spec = req.mutable_spec();
  spec->set_model_uri(Stories260K());
  spec->set_output_uri(output_dir);
  spec->set_bits(4);
  spec->set_group_size(32);  // dim 64: two groups per row
  spec->set_device(gptq::v1::DEVICE_PREFERENCE_CPU);
  auto* cal = spec->mutable_calibration();
  for (int32_t id : PseudoRandomTokens(num_tokens, 3, 512, 42)) {
    cal->mutable_token_ids()->add_ids(id);
  }
  cal->set_nsamples(nsamples);
  cal->set_seqlen(seqlen);
  return req;
}

absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path) {
  std::pair<std::string, std::string> hp = absl::StrSplit(address, absl::MaxSplits(':', 1));
  int port = 0;
  if (!absl::SimpleAtoi(hp.second, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("bad address ", address));
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, hp.first == "localhost" ? "127.0.0.1" : hp.first.c_str(), &sa.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", address, ": ", strerror(errno)));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address,
                                           "\r\nConnection: close\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("write");
  }
  std::string response;
  char buf[65536];
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) continue;
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) {
    return absl::InternalError(absl::StrCat("malformed HTTP response: ", response.substr(0, 200)));
  }
  const std::string status_line = response.substr(0, response.find("\r\n"));
  if (status_line.find(" 200") == std::string::npos) {
    return absl::InternalError(absl::StrCat("HTTP ", status_line));
  }
  return response.substr(body + 4);
}

std::vector<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return files;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) files.push_back(fs::relative(it->path(), dir, ec).string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string DescribeGrpc(int code, const std::string& message) {
  return absl::StrCat("code ", code, ": ", message);
}

}  // namespace gptq::testing
