// Assembles the running gRPC server: services, health (grpc.health.v1), reflection, TLS or
// plaintext credentials, and the housekeeping ticker of the JobManager. Used by main.cc and by
// in-process tests.
#ifndef GPTQ_SERVER_SERVER_H_
#define GPTQ_SERVER_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "job_manager.h"
#include "metrics.h"
#include "service.h"

namespace gptq::server {

struct ServerOptions {
  // HOST:PORT; port 0 picks a free one.
  std::string listen = "127.0.0.1:50051";
  // PEM contents (not paths). Both set: TLS; both empty: plaintext.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  // Bearer token required on the job and worker services; empty: none.
  std::string auth_token;
  // Without TLS, a non-loopback listen address is refused unless this is set.
  bool allow_insecure_remote = false;
  // With TLS: also listen in plaintext on 127.0.0.1:0, for local workers.
  bool local_plaintext_listener = false;
};

// True for 127.0.0.0/8, ::1 and "localhost".
bool IsLoopbackHost(const std::string& host);
// Splits "HOST:PORT" / "[V6]:PORT". INVALID_ARGUMENT when malformed.
absl::Status SplitHostPort(const std::string& address, std::string* host, int* port);

class GptqServer {
 public:
  // Starts serving. `manager` and `metrics` are not owned and must outlive the server.
  static absl::StatusOr<std::unique_ptr<GptqServer>> Start(const ServerOptions& options,
                                                           JobManager* manager,
                                                           Metrics* metrics);
  ~GptqServer();

  // "HOST:PORT" with the bound port.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // "127.0.0.1:PORT" for local workers (the main port unless TLS is on).
  const std::string& local_worker_address() const { return local_worker_address_; }

  // Graceful stop: NOT_SERVING, leases handed back and held calls completed, then in-flight
  // RPCs get `grace` before they are cancelled. Idempotent.
  void Shutdown(absl::Duration grace);
  // Blocks until Shutdown() finished.
  void Wait();

 private:
  GptqServer(JobManager* manager, Metrics* metrics, const ServerOptions& options);

  JobManager* const manager_;
  Metrics* const metrics_;
  QuantizationServiceImpl quantization_service_;
  WorkerServiceImpl worker_service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::string local_worker_address_;
  int port_ = 0;
  std::thread ticker_;
  absl::Notification stop_ticker_;
  std::atomic<bool> shut_down_{false};
  absl::Notification shutdown_done_;
};

}  // namespace gptq::server

#endif  // GPTQ_SERVER_SERVER_H_
