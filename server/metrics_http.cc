#include "metrics_http.h"

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "server.h"

namespace gptq::server {

MetricsHttpServer::MetricsHttpServer() : http_(std::make_unique<httplib::Server>()) {}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, std::function<std::string()> render) {
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(listen, &host, &port); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: ", s.message()));
  }
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->http_->Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  std::string bind_host = host;
  if (bind_host.size() > 2 && bind_host.front() == '[') {
    bind_host = bind_host.substr(1, bind_host.size() - 2);
  }
  int bound = port;
  if (port == 0) {
    bound = server->http_->bind_to_any_port(bind_host);
    if (bound < 0) bound = 0;
  } else if (!server->http_->bind_to_port(bind_host, port)) {
    bound = 0;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for metrics on ", listen,
        " (address in use? Prometheus itself defaults to :9090; give --metrics-listen "
        "HOST:PORT, port 0, or \"\" to disable)"));
  }
  server->address_ = absl::StrCat(host, ":", bound);
  httplib::Server* http = server->http_.get();
  server->thread_ = std::thread([http] { http->listen_after_bind(); });
  return server;
}

void MetricsHttpServer::Stop() {
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

}  // namespace gptq::server
