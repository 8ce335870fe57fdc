// Helpers for the server tests: temp dirs, subprocesses, polling, a raw HTTP GET.
#ifndef GPTQ_SERVER_TEST_UTIL_H_
#define GPTQ_SERVER_TEST_UTIL_H_

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace gptq::server::testing {

// A fresh directory under $TMPDIR (or /tmp), removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Calls `poll` until it returns true or `timeout` passes; returns its last result.
bool WaitFor(const std::function<bool()>& poll, absl::Duration timeout,
             absl::Duration interval = absl::Milliseconds(5));

// A child process with its stdout on a pipe (stderr goes to `stderr_file` if given).
class Subprocess {
 public:
  Subprocess(std::vector<std::string> argv, const std::string& stderr_file = "");
  ~Subprocess();
  pid_t pid() const { return pid_; }
  // Reads stdout lines until one starts with `prefix`; returns the rest of that line.
  // Empty on EOF or timeout.
  std::string ReadLineWithPrefix(const std::string& prefix, absl::Duration timeout);
  void Signal(int sig);
  // Waits for exit; returns the raw wait status, or -1 on timeout.
  int Wait(absl::Duration timeout);
  bool running();

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
  bool reaped_ = false;
};

// GET http://address/path; returns the body ("" on failure), sets *status_code.
std::string HttpGet(const std::string& address, const std::string& path, int* status_code);

// Runs a shell command; returns its exit status and captures stdout+stderr.
int RunShell(const std::string& command, std::string* output);

}  // namespace gptq::server::testing

#endif  // GPTQ_SERVER_TEST_UTIL_H_
