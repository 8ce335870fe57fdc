#include "server.h"

#include <algorithm>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace gptq::server {

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" ||
         absl::StartsWith(host, "127.");
}

absl::Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", address, "' must be HOST:PORT"));
  }
  *host = address.substr(0, colon);
  if (!absl::SimpleAtoi(address.substr(colon + 1), port) || *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", address, "': port must be a number in [0, 65535]"));
  }
  return absl::OkStatus();
}

GptqServer::GptqServer(JobManager* manager, Metrics* metrics, const ServerOptions& options)
    : manager_(manager),
      metrics_(metrics),
      quantization_service_(manager, metrics, options.auth_token),
      worker_service_(manager, metrics, options.auth_token) {}

absl::StatusOr<std::unique_ptr<GptqServer>> GptqServer::Start(const ServerOptions& options,
                                                              JobManager* manager,
                                                              Metrics* metrics) {
  std::string host;
  int requested_port = 0;
  if (absl::Status s = SplitHostPort(options.listen, &host, &requested_port); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--listen: ", s.message()));
  }
  const bool tls = !options.tls_cert_pem.empty() || !options.tls_key_pem.empty();
  if (tls && (options.tls_cert_pem.empty() || options.tls_key_pem.empty())) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key");
  }
  if (!tls && !IsLoopbackHost(host) && !options.allow_insecure_remote) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing plaintext gRPC on non-loopback address ", options.listen,
        "; give --tls-cert/--tls-key or --allow-insecure-remote"));
  }
  std::unique_ptr<GptqServer> server(new GptqServer(manager, metrics, options));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (tls) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({options.tls_key_pem, options.tls_cert_pem});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  int bound_port = 0;
  builder.AddListeningPort(options.listen, creds, &bound_port);
  int local_port = 0;
  if (tls && options.local_plaintext_listener) {
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &local_port);
  }
  builder.RegisterService(&server->quantization_service_);
  builder.RegisterService(&server->worker_service_);
  // Held LeaseJob calls last up to 30 s; keep connections to idle workers alive.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || bound_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen, " (address in use or invalid?)"));
  }
  server->port_ = bound_port;
  server->address_ = absl::StrCat(host, ":", bound_port);
  server->local_worker_address_ =
      absl::StrCat("127.0.0.1:", local_port != 0 ? local_port : bound_port);
  if (auto* health = server->server_->GetHealthCheckService()) {
    health->SetServingStatus(true);
    health->SetServingStatus("gptq.v1.QuantizationService", true);
    health->SetServingStatus("gptq.worker.v1.WorkerService", true);
  }
  const absl::Duration tick =
      std::clamp(manager->options().heartbeat_period / 10, absl::Milliseconds(10),
                 absl::Milliseconds(250));
  GptqServer* self = server.get();
  server->ticker_ = std::thread([self, tick] {
    while (!self->stop_ticker_.WaitForNotificationWithTimeout(tick)) self->manager_->Tick();
  });
  return server;
}

void GptqServer::Shutdown(absl::Duration grace) {
  if (shut_down_.exchange(true)) {
    shutdown_done_.WaitForNotification();
    return;
  }
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
    health->SetServingStatus("gptq.v1.QuantizationService", false);
    health->SetServingStatus("gptq.worker.v1.WorkerService", false);
  }
  // Completes held LeaseJob/Heartbeat calls and ends watchers; then in-flight RPCs get up to
  // `grace` to finish. grpc::Server::Shutdown itself would also wait (until its deadline) for
  // idle client connections to close, so it only gets a short deadline once our RPCs are done.
  const absl::Time deadline = absl::Now() + grace;
  manager_->Shutdown();
  while (metrics_->rpcs_in_flight() > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const absl::Time stop_by = std::min(deadline, absl::Now() + absl::Milliseconds(200));
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::microseconds(
                        std::max<int64_t>(0, absl::ToInt64Microseconds(stop_by - absl::Now()))));
  stop_ticker_.Notify();
  if (ticker_.joinable()) ticker_.join();
  shutdown_done_.Notify();
}

void GptqServer::Wait() { shutdown_done_.WaitForNotification(); }

GptqServer::~GptqServer() {
  Shutdown(absl::Seconds(1));
  server_->Wait();
}

}  // namespace gptq::server
