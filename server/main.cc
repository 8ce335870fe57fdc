// gptq-server: flags, concrete objects, signals. Flags are documented in server/README.md.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "job_manager.h"
#include "job_store.h"
#include "local_workers.h"
#include "metrics.h"
#include "metrics_http.h"
#include "server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC HOST:PORT (port 0 = any free port)");
ABSL_FLAG(std::string, port_file, "", "write the bound gRPC HOST:PORT to this file");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9090",
          "Prometheus /metrics HOST:PORT (port 0 = any; empty = off)");
ABSL_FLAG(std::string, metrics_port_file, "", "write the bound metrics HOST:PORT to this file");
ABSL_FLAG(std::string, db, "./gptq-jobs.db", "SQLite job store file");
ABSL_FLAG(std::string, local_workers, "0", "local workers: auto, N or 0");
ABSL_FLAG(std::string, worker_binary, "", "worker executable (default: gptq-worker beside us)");
ABSL_FLAG(std::string, worker_args, "", "extra arguments for local workers");
ABSL_FLAG(std::vector<std::string>, allowed_model_roots, {},
          "comma-separated directories model paths must lie in (empty = any)");
ABSL_FLAG(std::vector<std::string>, allowed_output_roots, {},
          "comma-separated directories output paths must lie in (empty = any)");
ABSL_FLAG(double, heartbeat_seconds, 2.0, "worker heartbeat period in seconds");
ABSL_FLAG(int, max_attempts, 3, "attempts per job before it fails");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain file (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key file");
ABSL_FLAG(std::string, auth_token, "", "required bearer token (default: env GPTQ_AUTH_TOKEN)");
ABSL_FLAG(bool, allow_insecure_remote, false, "allow plaintext on non-loopback addresses");
ABSL_FLAG(double, shutdown_grace_seconds, 5.0, "grace for in-flight RPCs on SIGTERM");

namespace {

namespace gs = gptq::server;

int Fail(const std::string& message) {
  std::fprintf(stderr, "gptq-server: %s\n", message.c_str());
  return 1;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

bool WriteFileAtomically(const std::string& path, const std::string& content) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return false;
    out << content;
    if (!out.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

std::string DefaultWorkerBinary(const char* argv0) {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) self = std::filesystem::absolute(argv0, ec);
  return (self.parent_path() / "gptq-worker").string();
}

// Abseil flags are spelled with underscores; we document dashes (--metrics-listen). Rewrites
// flag names (not values: `--worker-args "--data-dir x"` keeps its value).
std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> out = {argv[0]};
  bool value_next = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (value_next) {
      value_next = false;
    } else if (arg.rfind("--", 0) == 0 && arg.size() > 2) {
      const size_t eq = arg.find('=');
      std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      for (char& c : name) {
        if (c == '-') c = '_';
      }
      const bool is_bool = name == "allow_insecure_remote" || name == "noallow_insecure_remote" ||
                           name == "help" || name == "helpfull" || name == "version";
      if (eq == std::string::npos && !is_bool) value_next = true;
      arg = "--" + name + (eq == std::string::npos ? "" : arg.substr(eq));
    }
    out.push_back(arg);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("gptq-server: GPTQ quantization job service (see server/README.md)");
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> arg_ptrs;
  for (auto& a : args) arg_ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(arg_ptrs.size()), arg_ptrs.data());

  // Signals are taken by one thread with sigwait; block them everywhere else (threads
  // created below inherit the mask).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::string auth_token = absl::GetFlag(FLAGS_auth_token);
  if (auth_token.empty()) {
    if (const char* env = std::getenv("GPTQ_AUTH_TOKEN")) auth_token = env;
  }
  gs::ServerOptions server_options;
  server_options.listen = absl::GetFlag(FLAGS_listen);
  server_options.auth_token = auth_token;
  server_options.allow_insecure_remote = absl::GetFlag(FLAGS_allow_insecure_remote);
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() != key.empty()) return Fail("--tls-cert and --tls-key go together");
  if (!cert.empty()) {
    if (!ReadFile(cert, &server_options.tls_cert_pem)) {
      return Fail(absl::StrCat("--tls-cert: cannot read ", cert));
    }
    if (!ReadFile(key, &server_options.tls_key_pem)) {
      return Fail(absl::StrCat("--tls-key: cannot read ", key));
    }
  }
  const double heartbeat = absl::GetFlag(FLAGS_heartbeat_seconds);
  if (!(heartbeat > 0 && heartbeat <= 600)) return Fail("--heartbeat-seconds: must be in (0, 600]");

  std::vector<std::string> devices;
  const std::string local_flag = absl::GetFlag(FLAGS_local_workers);
  {
    const int gpus = (local_flag == "0") ? 0 : gs::CountVisibleGpus();
    auto d = gs::LocalWorkerDevices(local_flag, gpus);
    if (!d.ok()) return Fail(std::string(d.status().message()));
    devices = *d;
  }
  server_options.local_plaintext_listener = !devices.empty();

  auto store = gs::JobStore::Open(absl::GetFlag(FLAGS_db));
  if (!store.ok()) return Fail(std::string(store.status().message()));
  gs::ManagerOptions manager_options;
  manager_options.heartbeat_period = absl::Seconds(heartbeat);
  manager_options.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  manager_options.validation.allowed_model_roots = absl::GetFlag(FLAGS_allowed_model_roots);
  manager_options.validation.allowed_output_roots = absl::GetFlag(FLAGS_allowed_output_roots);
  manager_options.log = [](const std::string& line) {
    std::fprintf(stderr, "%s gptq-server: %s\n",
                 absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()).c_str(),
                 line.c_str());
  };
  gs::Metrics metrics;
  auto manager = gs::JobManager::Create(store->get(), manager_options, &metrics);
  if (!manager.ok()) return Fail(manager.status().ToString());

  auto server = gs::GptqServer::Start(server_options, manager->get(), &metrics);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::cout << "listening on " << (*server)->address() << std::endl;
  if (const std::string f = absl::GetFlag(FLAGS_port_file); !f.empty()) {
    if (!WriteFileAtomically(f, (*server)->address() + "\n")) {
      return Fail(absl::StrCat("--port-file: cannot write ", f));
    }
  }

  std::unique_ptr<gs::MetricsHttpServer> metrics_http;
  if (const std::string m = absl::GetFlag(FLAGS_metrics_listen); !m.empty()) {
    gs::JobManager* mgr = manager->get();
    auto http = gs::MetricsHttpServer::Start(
        m, [mgr, &metrics] { return metrics.Render(mgr->Snapshot()); });
    if (!http.ok()) return Fail(std::string(http.status().message()));
    metrics_http = *std::move(http);
    std::cout << "metrics on " << metrics_http->address() << std::endl;
    if (const std::string f = absl::GetFlag(FLAGS_metrics_port_file); !f.empty()) {
      if (!WriteFileAtomically(f, metrics_http->address() + "\n")) {
        return Fail(absl::StrCat("--metrics-port-file: cannot write ", f));
      }
    }
  }

  std::unique_ptr<gs::LocalWorkers> workers;
  if (!devices.empty()) {
    gs::LocalWorkers::Options w;
    w.binary = absl::GetFlag(FLAGS_worker_binary);
    if (w.binary.empty()) w.binary = DefaultWorkerBinary(argv[0]);
    w.server_address = (*server)->local_worker_address();
    w.devices = devices;
    w.extra_args = absl::StrSplit(absl::GetFlag(FLAGS_worker_args), absl::ByAnyChar(" \t"),
                                  absl::SkipEmpty());
    if (!auth_token.empty()) w.env.push_back(absl::StrCat("GPTQ_AUTH_TOKEN=", auth_token));
    workers = std::make_unique<gs::LocalWorkers>(std::move(w));
    if (absl::Status s = workers->Start(); !s.ok()) return Fail(std::string(s.message()));
  }

  int sig = 0;
  sigwait(&signals, &sig);
  const absl::Time t0 = absl::Now();
  std::fprintf(stderr, "gptq-server: signal %d, shutting down\n", sig);
  (*server)->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  const absl::Time t1 = absl::Now();
  if (workers != nullptr) workers->Stop();
  if (metrics_http != nullptr) metrics_http->Stop();
  std::fprintf(stderr, "gptq-server: stopped (gRPC %.0f ms, workers and metrics %.0f ms)\n",
               absl::ToDoubleMilliseconds(t1 - t0), absl::ToDoubleMilliseconds(absl::Now() - t1));
  return 0;
}
