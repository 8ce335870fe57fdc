// A tiny HTTP server for Prometheus: GET /metrics returns render(); everything else 404.
#ifndef GPTQ_SERVER_METRICS_HTTP_H_
#define GPTQ_SERVER_METRICS_HTTP_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace gptq::server {

class MetricsHttpServer {
 public:
  // Binds HOST:PORT (port 0 allowed) and serves on a background thread.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::function<std::string()> render);
  ~MetricsHttpServer();
  // "HOST:PORT" with the bound port.
  const std::string& address() const { return address_; }
  void Stop();

 private:
  MetricsHttpServer();
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::string address_;
};

}  // namespace gptq::server

#endif  // GPTQ_SERVER_METRICS_HTTP_H_
