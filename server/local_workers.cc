#include "local_workers.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace gptq::server {

absl::StatusOr<std::vector<std::string>> LocalWorkerDevices(const std::string& flag,
                                                            int gpu_count) {
  std::vector<std::string> devices;
  if (flag == "auto") {
    if (gpu_count == 0) return std::vector<std::string>{"cpu"};
    for (int i = 0; i < gpu_count; ++i) devices.push_back(absl::StrCat("cuda:", i));
    return devices;
  }
  int n = 0;
  if (!absl::SimpleAtoi(flag, &n) || n < 0 || n > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("--local-workers: must be auto or a number in [0, 64] (got '", flag, "')"));
  }
  for (int i = 0; i < n; ++i) {
    devices.push_back(gpu_count > 0 ? absl::StrCat("cuda:", i % gpu_count) : "cpu");
  }
  return devices;
}

int CountVisibleGpus() {
  int count = 0;
  std::error_code ec;
  if (std::filesystem::is_directory("/proc/driver/nvidia/gpus", ec)) {
    for (const auto& e : std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec)) {
      (void)e;
      ++count;
    }
  }
  if (count == 0) {
    if (FILE* p = popen("nvidia-smi -L 2>/dev/null", "r")) {
      char line[512];
      while (fgets(line, sizeof(line), p) != nullptr) {
        if (std::strncmp(line, "GPU ", 4) == 0) ++count;
      }
      pclose(p);
    }
  }
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible != nullptr) {
    std::vector<std::string> ids = absl::StrSplit(visible, ',', absl::SkipEmpty());
    count = std::min<int>(count, static_cast<int>(ids.size()));
  }
  return count;
}

LocalWorkers::LocalWorkers(Options options) : options_(std::move(options)) {
  for (const auto& d : options_.devices) {
    Slot s;
    s.device = d;
    s.next_start = absl::InfinitePast();
    slots_.push_back(s);
  }
}

LocalWorkers::~LocalWorkers() { Stop(); }

absl::Status LocalWorkers::Start() {
  if (access(options_.binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--worker-binary: ", options_.binary, " is not an executable file (", strerror(errno),
        ")"));
  }
  thread_ = std::thread([this] { Supervise(); });
  return absl::OkStatus();
}

void LocalWorkers::Spawn(Slot& slot) {
  std::vector<std::string> args = {options_.binary, "serve", "--server", options_.server_address,
                                   "--device", slot.device};
  for (const auto& a : options_.extra_args) args.push_back(a);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  for (const auto& e : options_.env) env_strings.push_back(e);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  slot.started = absl::Now();
  ++slot.starts;
  if (pid < 0) {
    std::fprintf(stderr, "gptq-server: cannot fork a worker: %s\n", strerror(errno));
    slot.next_start = absl::Now() + slot.backoff;
    return;
  }
  slot.pid = pid;
  std::fprintf(stderr, "gptq-server: started local worker pid %d (--device %s)\n", pid,
               slot.device.c_str());
}

void LocalWorkers::Supervise() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      for (Slot& slot : slots_) {
        if (slot.pid > 0) {
          int status = 0;
          const pid_t r = waitpid(slot.pid, &status, WNOHANG);
          if (r == slot.pid) {
            const absl::Duration up = now - slot.started;
            if (up > absl::Minutes(1)) slot.backoff = absl::Seconds(1);
            std::fprintf(stderr,
                         "gptq-server: local worker pid %d (%s) exited (%s %d) after %.1fs; "
                         "restarting in %.0fs\n",
                         slot.pid, slot.device.c_str(),
                         WIFSIGNALED(status) ? "signal" : "status",
                         WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                         absl::ToDoubleSeconds(up), absl::ToDoubleSeconds(slot.backoff));
            slot.pid = -1;
            slot.next_start = now + slot.backoff;
            slot.backoff = std::min(slot.backoff * 2, absl::Seconds(30));
          }
        }
        if (slot.pid <= 0 && now >= slot.next_start) Spawn(slot);
      }
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(100));
    }
  }
}

void LocalWorkers::Stop(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  for (Slot& slot : slots_) {
    if (slot.pid > 0) kill(slot.pid, SIGTERM);
  }
  const absl::Time deadline = absl::Now() + grace;
  for (Slot& slot : slots_) {
    while (slot.pid > 0) {
      const pid_t r = waitpid(slot.pid, nullptr, WNOHANG);
      if (r == slot.pid || r < 0) {
        slot.pid = -1;
        break;
      }
      if (absl::Now() > deadline) {
        kill(slot.pid, SIGKILL);
        waitpid(slot.pid, nullptr, 0);
        slot.pid = -1;
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
}

std::vector<int> LocalWorkers::starts() const {
  absl::MutexLock lock(&mu_);
  std::vector<int> out;
  for (const auto& s : slots_) out.push_back(s.starts);
  return out;
}

}  // namespace gptq::server
