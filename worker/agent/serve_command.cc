#include "serve_command.h"

#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "log.h"

namespace gptq::agent {

std::string ServeUsage() {
  return R"(usage: gptq-worker serve --server HOST:PORT [options]
  --server HOST:PORT     gptq-server's worker endpoint (required)
  --device D             auto (default), cpu, cuda or cuda:N
  --data-dir DIR         dataset root for calibration/evaluation (default $GPTQ_DATA_DIR)
  --cache-dir DIR        hf:// download cache (default ~/.cache/gptq-service/hub)
  --hf-endpoint URL      HF-hub-compatible endpoint (default $HF_ENDPOINT or https://huggingface.co)
  --name NAME            worker name shown by the server (default HOST:PID)
  --auth-token T         bearer token for the server (default $GPTQ_AUTH_TOKEN)
  --tls-ca FILE          connect with TLS, trusting the PEM roots in FILE
  --max-jobs N           exit after N jobs (default 0: run until SIGINT/SIGTERM)
  --lease-wait SECONDS   LeaseJob long-poll, 0-30 (default 10)
)";
}

absl::StatusOr<ServeFlags> ParseServeFlags(const std::vector<std::string>& args) {
  ServeFlags f;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    if (flag == "--help" || flag == "-h") return absl::NotFoundError(ServeUsage());
    if (!absl::StartsWith(flag, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", flag, "'"));
    }
    std::string value;
    const size_t eq = flag.find('=');
    if (eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
      }
      value = args[++i];
    }
    if (flag == "--server") {
      f.server = value;
    } else if (flag == "--device") {
      f.device = value;
    } else if (flag == "--data-dir") {
      f.data_dir = value;
    } else if (flag == "--cache-dir") {
      f.cache_dir = value;
    } else if (flag == "--hf-endpoint") {
      f.hf_endpoint = value;
    } else if (flag == "--name") {
      f.name = value;
    } else if (flag == "--auth-token") {
      f.auth_token = value;
    } else if (flag == "--tls-ca") {
      f.tls_ca = value;
    } else if (flag == "--max-jobs") {
      if (!absl::SimpleAtoi(value, &f.max_jobs) || f.max_jobs < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--max-jobs must be a non-negative integer (got '", value, "')"));
      }
    } else if (flag == "--lease-wait") {
      if (!absl::SimpleAtod(value, &f.lease_wait_seconds) || f.lease_wait_seconds < 0 ||
          f.lease_wait_seconds > 30) {
        return absl::InvalidArgumentError(
            absl::StrCat("--lease-wait must be in [0, 30] seconds (got '", value, "')"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag));
    }
  }
  if (f.server.empty()) return absl::InvalidArgumentError("--server HOST:PORT is required");
  if (f.auth_token.empty()) {
    if (const char* t = std::getenv("GPTQ_AUTH_TOKEN")) f.auth_token = t;
  }
  if (f.name.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    f.name = absl::StrCat(host, ":", getpid());
  }
  return f;
}

int ServeCommand(const std::vector<std::string>& args, const ServeDeps& deps) {
  absl::StatusOr<ServeFlags> flags = ParseServeFlags(args);
  if (!flags.ok()) {
    if (absl::IsNotFound(flags.status())) {
      std::cout << flags.status().message();
      return 0;
    }
    std::cerr << "gptq-worker serve: " << flags.status().message() << "\n" << ServeUsage();
    return 2;
  }
  absl::StatusOr<DeviceInfo> device = deps.query_device(flags->device);
  if (!device.ok()) {
    std::cerr << "gptq-worker serve: " << device.status().message() << "\n";
    return 2;
  }

  // Signals go to one waiting thread (blocked here, before gRPC starts its threads).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!flags->tls_ca.empty()) {
    std::ifstream in(flags->tls_ca);
    if (!in) {
      std::cerr << "gptq-worker serve: cannot read --tls-ca file '" << flags->tls_ca << "'\n";
      return 2;
    }
    std::stringstream pem;
    pem << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem.str();
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(64 << 20);
  channel_args.SetMaxSendMessageSize(64 << 20);
  // Reconnect promptly after a server restart.
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
  channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  auto channel = grpc::CreateCustomChannel(flags->server, creds, channel_args);

  AgentOptions options;
  options.name = flags->name;
  options.data_dir = flags->data_dir;
  options.hub.endpoint = flags->hf_endpoint;
  options.hub.cache_dir = flags->cache_dir;
  options.auth_token = flags->auth_token;
  options.lease_wait_seconds = flags->lease_wait_seconds;
  options.max_jobs = flags->max_jobs;
  options.version = GPTQ_WORKER_VERSION;
  AgentDeps agent_deps;
  agent_deps.run_job = deps.run_job;
  agent_deps.device = *device;
  const std::string device_string = device->device_string;
  if (deps.memory_used_bytes) {
    agent_deps.memory_used_bytes = [f = deps.memory_used_bytes, device_string] {
      return f(device_string);
    };
  }
  agent_deps.release_device_memory = deps.release_device_memory;
  WorkerAgent agent(gptq::worker::v1::WorkerService::NewStub(channel), options,
                    std::move(agent_deps));

  std::atomic<bool> done{false};
  std::atomic<bool> signal_thread_exited{false};
  std::thread signal_thread([&] {
    while (true) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (done.load()) return;
      if (sig == SIGINT || sig == SIGTERM) {
        GPTQ_AGENT_LOG(kInfo, "signal ", sig, ": stopping");
        agent.Stop();
        signal_thread_exited.store(true);
        return;
      }
    }
  });
  GPTQ_AGENT_LOG(kInfo, "serving ", flags->server, " as '", flags->name, "' on ",
                 device->device_string, " (", device->device_name, ", LibTorch ",
                 device->torch_version, ")");
  const absl::Status status = agent.Run();
  done.store(true);
  if (!signal_thread_exited.load()) pthread_kill(signal_thread.native_handle(), SIGUSR1);
  signal_thread.join();
  if (!status.ok()) {
    std::cerr << "gptq-worker serve: " << status << "\n";
    return 1;
  }
  return 0;
}

}  // namespace gptq::agent
