// A scriptable in-process WorkerService for the agent's tests: hands out queued leases,
// records every call, and can ask for cancellation, declare a lease lost, refuse stale
// epochs and "restart" (forget its workers). Test-only; header-only.
#ifndef GPTQ_WORKER_AGENT_TESTING_FAKE_WORKER_SERVICE_H_
#define GPTQ_WORKER_AGENT_TESTING_FAKE_WORKER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "gptq/worker/v1/worker.grpc.pb.h"

namespace gptq::agent::testing {

namespace wv1 = ::gptq::worker::v1;

class FakeWorkerService final : public wv1::WorkerService::Service {
 public:
  using Clock = std::chrono::steady_clock;
  explicit FakeWorkerService(double heartbeat_seconds = 0.2)
      : heartbeat_seconds_(heartbeat_seconds) {}

  // ---- scripting ----
  void QueueLease(wv1::Lease lease) {
    std::lock_guard<std::mutex> lock(mu_);
    if (lease.lease_epoch() == 0) lease.set_lease_epoch(++next_epoch_);
    current_epoch_[lease.job_id()] = lease.lease_epoch();
    leases_.push_back(std::move(lease));
    cv_.notify_all();
  }
  void RequestCancel(const std::string& job_id) {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_.insert(job_id);
    cv_.notify_all();
  }
  // Like gptq-server: a heartbeat for a running job is held for up to a period and answered at
  // once when the job is cancelled or its lease lost.
  void set_hold_heartbeats(bool hold) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_heartbeats_ = hold;
  }
  // Heartbeats for the job answer lease_lost; its reports are refused as stale.
  void LoseLease(const std::string& job_id) {
    std::lock_guard<std::mutex> lock(mu_);
    current_epoch_[job_id] = ++next_epoch_;
    lost_.insert(job_id);
    cv_.notify_all();
  }
  // Reports carrying the job's current epoch are refused (FAILED_PRECONDITION), heartbeats
  // do not say anything: the worker learns of it from ReportEvents.
  void BumpEpochSilently(const std::string& job_id) {
    std::lock_guard<std::mutex> lock(mu_);
    current_epoch_[job_id] = ++next_epoch_;
  }
  // Forgets every worker (a server restart).
  void ForgetWorkers() {
    std::lock_guard<std::mutex> lock(mu_);
    workers_.clear();
  }

  // ---- observation ----
  template <typename Pred>
  bool WaitFor(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(*this); });
  }
  // Accessors for WaitFor predicates (called with mu_ held) and after the fact.
  const std::vector<wv1::RegisterRequest>& registrations_locked() const { return registrations_; }
  const std::vector<wv1::ReportEventsRequest>& reports_locked() const { return reports_; }
  const std::vector<wv1::FinishJobRequest>& finishes_locked() const { return finishes_; }
  const std::vector<wv1::HeartbeatRequest>& heartbeats_locked() const { return heartbeats_; }
  int leases_handed_locked() const { return leases_handed_; }

  std::vector<wv1::RegisterRequest> registrations() {
    std::lock_guard<std::mutex> lock(mu_);
    return registrations_;
  }
  std::vector<wv1::ReportEventsRequest> reports() {
    std::lock_guard<std::mutex> lock(mu_);
    return reports_;
  }
  std::vector<wv1::FinishJobRequest> finishes() {
    std::lock_guard<std::mutex> lock(mu_);
    return finishes_;
  }
  std::vector<wv1::HeartbeatRequest> heartbeats() {
    std::lock_guard<std::mutex> lock(mu_);
    return heartbeats_;
  }
  // Every event reported for `job_id`, in order.
  std::vector<gptq::v1::JobEvent> events(const std::string& job_id) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<gptq::v1::JobEvent> out;
    for (const auto& r : reports_) {
      if (r.job_id() != job_id) continue;
      for (const auto& e : r.events()) out.push_back(e);
    }
    return out;
  }

  // ---- the service ----
  grpc::Status Register(grpc::ServerContext* ctx, const wv1::RegisterRequest* req,
                        wv1::RegisterResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!CheckAuth(ctx)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    registrations_.push_back(*req);
    const std::string id = "w-" + std::to_string(registrations_.size());
    workers_.insert(id);
    resp->set_worker_id(id);
    resp->set_heartbeat_seconds(heartbeat_seconds_);
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status LeaseJob(grpc::ServerContext* ctx, const wv1::LeaseJobRequest* req,
                        wv1::LeaseJobResponse* resp) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!CheckAuth(ctx)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    if (!workers_.count(req->worker_id())) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown worker " + req->worker_id());
    }
    const auto deadline =
        Clock::now() + std::chrono::milliseconds(static_cast<int>(req->wait_seconds() * 1000));
    cv_.wait_until(lock, deadline, [&] { return !leases_.empty() || ctx->IsCancelled(); });
    if (!leases_.empty()) {
      *resp->mutable_lease() = leases_.front();
      leases_.pop_front();
      ++leases_handed_;
      cv_.notify_all();
    }
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* ctx, const wv1::HeartbeatRequest* req,
                         wv1::HeartbeatResponse* resp) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!CheckAuth(ctx)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    heartbeats_.push_back(*req);
    cv_.notify_all();
    if (!workers_.count(req->worker_id())) {
      resp->set_reregister(true);
      return grpc::Status::OK;
    }
    if (hold_heartbeats_ && !req->job_id().empty()) {
      const auto deadline =
          Clock::now() + std::chrono::milliseconds(static_cast<int>(heartbeat_seconds_ * 1000));
      // Short slices so that a cancelled call (client gone, server shutting down) ends soon.
      while (Clock::now() < deadline && !ctx->IsCancelled() &&
             !cv_.wait_for(lock, std::chrono::milliseconds(20), [&] {
               return cancel_.count(req->job_id()) > 0 || lost_.count(req->job_id()) > 0;
             })) {
      }
    }
    if (!req->job_id().empty()) {
      resp->set_cancel(cancel_.count(req->job_id()) > 0);
      resp->set_lease_lost(lost_.count(req->job_id()) > 0);
    }
    return grpc::Status::OK;
  }

  grpc::Status ReportEvents(grpc::ServerContext* ctx, const wv1::ReportEventsRequest* req,
                            wv1::ReportEventsResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!CheckAuth(ctx)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    if (Stale(req->job_id(), req->lease_epoch())) {
      ++refused_reports_;
      cv_.notify_all();
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale lease epoch");
    }
    reports_.push_back(*req);
    resp->set_cancel(cancel_.count(req->job_id()) > 0);
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status FinishJob(grpc::ServerContext* ctx, const wv1::FinishJobRequest* req,
                         wv1::FinishJobResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!CheckAuth(ctx)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    if (Stale(req->job_id(), req->lease_epoch())) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale lease epoch");
    }
    finishes_.push_back(*req);
    cv_.notify_all();
    return grpc::Status::OK;
  }

  void set_required_token(std::string token) {
    std::lock_guard<std::mutex> lock(mu_);
    required_token_ = std::move(token);
  }
  int refused_reports_locked() const { return refused_reports_; }

 private:
  bool Stale(const std::string& job_id, int64_t epoch) const {
    auto it = current_epoch_.find(job_id);
    return it == current_epoch_.end() || it->second != epoch;
  }
  bool CheckAuth(grpc::ServerContext* ctx) const {
    if (required_token_.empty()) return true;
    auto it = ctx->client_metadata().find("authorization");
    return it != ctx->client_metadata().end() &&
           std::string(it->second.data(), it->second.size()) == "Bearer " + required_token_;
  }

  const double heartbeat_seconds_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<wv1::Lease> leases_;
  std::map<std::string, int64_t> current_epoch_;
  int64_t next_epoch_ = 0;
  std::set<std::string> cancel_, lost_, workers_;
  std::vector<wv1::RegisterRequest> registrations_;
  std::vector<wv1::ReportEventsRequest> reports_;
  std::vector<wv1::FinishJobRequest> finishes_;
  std::vector<wv1::HeartbeatRequest> heartbeats_;
  int leases_handed_ = 0;
  int refused_reports_ = 0;
  bool hold_heartbeats_ = false;
  std::string required_token_;
};

// Runs a service on 127.0.0.1 (port 0 unless given).
class FakeServer {
 public:
  explicit FakeServer(FakeWorkerService* service, int port = 0) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { Shutdown(); }
  void Shutdown() {
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
      server_->Wait();
      server_.reset();
    }
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool ok() const { return server_ != nullptr && port_ > 0; }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace gptq::agent::testing

#endif  // GPTQ_WORKER_AGENT_TESTING_FAKE_WORKER_SERVICE_H_
