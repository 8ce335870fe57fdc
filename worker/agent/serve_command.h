// `gptq-worker serve`: flag parsing and process wiring for the worker agent. No Torch headers;
// the Torch-backed pieces (the job runner, device queries) are handed in by main.cc.
#ifndef GPTQ_WORKER_AGENT_SERVE_COMMAND_H_
#define GPTQ_WORKER_AGENT_SERVE_COMMAND_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent.h"
#include "device_info.h"

namespace gptq::agent {

struct ServeFlags {
  std::string server;  // HOST:PORT (required)
  std::string device = "auto";
  std::string data_dir;
  std::string cache_dir;
  std::string hf_endpoint;
  std::string name;
  std::string auth_token;  // --auth-token, else $GPTQ_AUTH_TOKEN
  std::string tls_ca;      // PEM file: use TLS with these roots
  int max_jobs = 0;
  double lease_wait_seconds = 10;
};

// Parses `serve`'s arguments ("--flag value" or "--flag=value"). InvalidArgument names the
// flag; "--help" gives NotFound with the usage text as message.
absl::StatusOr<ServeFlags> ParseServeFlags(const std::vector<std::string>& args);

std::string ServeUsage();

struct ServeDeps {
  JobRunner run_job;
  std::function<absl::StatusOr<DeviceInfo>(const std::string&)> query_device;
  std::function<int64_t(const std::string&)> memory_used_bytes;
  std::function<void()> release_device_memory;
};

// Runs the agent until SIGINT/SIGTERM (or --max-jobs). Returns the process exit code (0 ok,
// 2 usage error, 1 failure).
int ServeCommand(const std::vector<std::string>& args, const ServeDeps& deps);

}  // namespace gptq::agent

#endif  // GPTQ_WORKER_AGENT_SERVE_COMMAND_H_
