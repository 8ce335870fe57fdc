#include "service.h"

#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"

namespace gptq::server {
namespace {

using gptq::v1::JobEvent;
namespace wv1 = gptq::worker::v1;

constexpr char kQuantizationService[] = "gptq.v1.QuantizationService";
constexpr char kWorkerService[] = "gptq.worker.v1.WorkerService";
constexpr size_t kWatchBatch = 64;

// Compares without an early exit, so the token's prefix does not leak through timing.
bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// Streams one job's events to one client at the client's pace: it reads the next events
// from the manager only when the previous write completed, so a slow client never makes the
// job's writer wait, and never buffers more than kWatchBatch events.
class WatchReactor : public grpc::ServerWriteReactor<JobEvent> {
 public:
  WatchReactor(JobManager* manager, Metrics* metrics, std::string job_id, int64_t from)
      : pump_(std::make_shared<Pump>(this, manager, std::move(job_id), from)), metrics_(metrics) {
    metrics_->WatcherStarted();
    pump_->Continue();
  }

  void OnWriteDone(bool ok) override { pump_->WriteDone(ok); }
  void OnCancel() override { pump_->Cancelled(); }
  void OnDone() override {
    pump_->Detach();
    metrics_->WatcherEnded();
    metrics_->RecordRpc(kQuantizationService, "WatchJob", final_code_);
    delete this;
  }

  void set_final_code(int code) { final_code_ = code; }

 private:
  class Pump : public EventSink, public std::enable_shared_from_this<Pump> {
   public:
    Pump(WatchReactor* reactor, JobManager* manager, std::string job_id, int64_t from)
        : reactor_(reactor), manager_(manager), job_id_(std::move(job_id)), next_(from) {}

    void OnEventsAvailable() override { Continue(); }

    // Writes the next event if no write is in flight; finishes the stream at the end.
    void Continue() {
      std::unique_lock<std::mutex> lock(mu_);
      if (reactor_ == nullptr || finished_ || writing_) return;
      if (cancelled_) {
        FinishLocked(lock, grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
        return;
      }
      if (buffer_.empty()) {
        auto batch = manager_->ReadEvents(job_id_, next_, kWatchBatch, weak_from_this());
        if (!batch.ok()) {
          FinishLocked(lock, ToGrpcStatus(batch.status()));
          return;
        }
        if (batch->events.empty()) {
          if (batch->end_of_log) {
            FinishLocked(lock, grpc::Status::OK);
          } else if (batch->shutting_down) {
            FinishLocked(lock, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                            "server shutting down; watch again later with "
                                            "from_sequence = last sequence + 1"));
          }
          return;  // Else the manager notifies us when the log grows.
        }
        for (auto& e : batch->events) buffer_.push_back(std::move(e));
      }
      current_ = std::move(buffer_.front());
      buffer_.pop_front();
      next_ = current_->sequence() + 1;
      writing_ = true;
      WatchReactor* reactor = reactor_;
      lock.unlock();
      reactor->StartWrite(current_.get());
    }

    void WriteDone(bool ok) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        writing_ = false;
        if (!ok || cancelled_) {
          FinishLocked(lock, grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
          return;
        }
      }
      Continue();
    }

    // Finish is never called while a write is in flight; WriteDone finishes instead.
    void Cancelled() {
      std::unique_lock<std::mutex> lock(mu_);
      cancelled_ = true;
      if (!writing_) {
        FinishLocked(lock, grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
      }
    }

    void Detach() {
      std::lock_guard<std::mutex> lock(mu_);
      reactor_ = nullptr;
    }

   private:
    void FinishLocked(std::unique_lock<std::mutex>& lock, grpc::Status status) {
      if (finished_ || reactor_ == nullptr) return;
      finished_ = true;
      WatchReactor* reactor = reactor_;
      reactor->set_final_code(status.error_code());
      lock.unlock();
      reactor->Finish(std::move(status));
    }

    std::mutex mu_;
    WatchReactor* reactor_;
    JobManager* const manager_;
    const std::string job_id_;
    int64_t next_;
    bool writing_ = false;
    bool finished_ = false;
    bool cancelled_ = false;
    std::deque<std::shared_ptr<const JobEvent>> buffer_;
    std::shared_ptr<const JobEvent> current_;
  };

  std::shared_ptr<Pump> pump_;
  Metrics* const metrics_;
  int final_code_ = 0;
};

// A stream that fails before it starts.
class FailedWriteReactor : public grpc::ServerWriteReactor<JobEvent> {
 public:
  explicit FailedWriteReactor(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

// A held LeaseJob call. If the worker abandons the call (deadline, disconnect) while it is
// held, OnCancel withdraws it, so no lease is handed to a call nobody reads and a dead worker is
// not kept alive by its call.
class LeaseReactor : public grpc::ServerUnaryReactor {
 public:
  LeaseReactor(JobManager* manager, Metrics* metrics, grpc::CallbackServerContext* context,
               const wv1::LeaseJobRequest& request, wv1::LeaseJobResponse* response)
      : manager_(manager), metrics_(metrics) {
    const uint64_t id = manager_->LeaseJob(
        request, [this, manager, context, response](absl::Status status,
                                                    wv1::LeaseJobResponse r) {
          if (status.ok() && r.has_lease() && context->IsCancelled()) {
            // Granted at the moment the call went away: the lease would never arrive.
            manager->ReturnLease(r.lease().job_id(), r.lease().lease_epoch(),
                                 "the worker's LeaseJob call was cancelled before the lease "
                                 "reached it");
            r.clear_lease();
          }
          if (status.ok()) *response = std::move(r);
          metrics_->RecordRpc(kWorkerService, "LeaseJob", static_cast<int>(status.code()));
          Finish(ToGrpcStatus(status));
        });
    // gRPC runs no reaction (OnCancel/OnDone) before this handler has returned the reactor.
    if (id != 0) {
      std::lock_guard<std::mutex> lock(mu_);
      wait_id_ = id;
    }
  }
  void OnCancel() override {
    uint64_t id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id = wait_id_;
    }
    if (id != 0) manager_->CancelLeaseWait(id);  // No-op if already answered.
  }
  void OnDone() override { delete this; }

 private:
  JobManager* const manager_;
  Metrics* const metrics_;
  std::mutex mu_;
  uint64_t wait_id_ = 0;
};

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status Authorize(const grpc::CallbackServerContext* context, const std::string& token) {
  if (token.empty()) return absl::OkStatus();
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  const std::string value(it->second.data(), it->second.size());
  if (!ConstantTimeEquals(value, absl::StrCat("Bearer ", token))) {
    return absl::UnauthenticatedError("invalid bearer token");
  }
  return absl::OkStatus();
}

// ---- QuantizationService -----------------------------------------------------------------

grpc::ServerUnaryReactor* QuantizationServiceImpl::Done(grpc::CallbackServerContext* context,
                                                        const char* method,
                                                        const absl::Status& status) {
  metrics_->RecordRpc(kQuantizationService, method, static_cast<int>(status.code()));
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

#define GPTQ_AUTHORIZE_OR_FINISH(method)                                  \
  metrics_->RpcStarted();                                                 \
  if (absl::Status auth = Authorize(context, auth_token_); !auth.ok()) { \
    return Done(context, method, auth);                                   \
  }

grpc::ServerUnaryReactor* QuantizationServiceImpl::CreateJob(
    grpc::CallbackServerContext* context, const gptq::v1::CreateJobRequest* request,
    gptq::v1::Job* response) {
  GPTQ_AUTHORIZE_OR_FINISH("CreateJob");
  auto job = manager_->CreateJob(*request);
  if (job.ok()) *response = *std::move(job);
  return Done(context, "CreateJob", job.status());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetJob(
    grpc::CallbackServerContext* context, const gptq::v1::GetJobRequest* request,
    gptq::v1::Job* response) {
  GPTQ_AUTHORIZE_OR_FINISH("GetJob");
  auto job = manager_->GetJob(request->id());
  if (job.ok()) *response = *std::move(job);
  return Done(context, "GetJob", job.status());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::ListJobs(
    grpc::CallbackServerContext* context, const gptq::v1::ListJobsRequest* request,
    gptq::v1::ListJobsResponse* response) {
  GPTQ_AUTHORIZE_OR_FINISH("ListJobs");
  auto list = manager_->ListJobs(*request);
  if (list.ok()) *response = *std::move(list);
  return Done(context, "ListJobs", list.status());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::CancelJob(
    grpc::CallbackServerContext* context, const gptq::v1::CancelJobRequest* request,
    gptq::v1::Job* response) {
  GPTQ_AUTHORIZE_OR_FINISH("CancelJob");
  auto job = manager_->CancelJob(request->id());
  if (job.ok()) *response = *std::move(job);
  return Done(context, "CancelJob", job.status());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::DeleteJob(
    grpc::CallbackServerContext* context, const gptq::v1::DeleteJobRequest* request,
    gptq::v1::DeleteJobResponse* /*response*/) {
  GPTQ_AUTHORIZE_OR_FINISH("DeleteJob");
  return Done(context, "DeleteJob", manager_->DeleteJob(request->id()));
}

grpc::ServerWriteReactor<JobEvent>* QuantizationServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const gptq::v1::WatchJobRequest* request) {
  metrics_->RpcStarted();
  absl::Status status = Authorize(context, auth_token_);
  if (status.ok() && request->from_sequence() < 0) {
    status = absl::InvalidArgumentError(
        absl::StrCat("from_sequence: must be >= 0 (got ", request->from_sequence(), ")"));
  }
  if (status.ok()) status = manager_->GetJob(request->id()).status();
  if (!status.ok()) {
    metrics_->RecordRpc(kQuantizationService, "WatchJob", static_cast<int>(status.code()));
    return new FailedWriteReactor(ToGrpcStatus(status));
  }
  return new WatchReactor(manager_, metrics_, request->id(), request->from_sequence());
}

// ---- WorkerService -------------------------------------------------------------------------

grpc::ServerUnaryReactor* WorkerServiceImpl::Done(grpc::CallbackServerContext* context,
                                                  const char* method,
                                                  const absl::Status& status) {
  metrics_->RecordRpc(kWorkerService, method, static_cast<int>(status.code()));
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Register(grpc::CallbackServerContext* context,
                                                      const wv1::RegisterRequest* request,
                                                      wv1::RegisterResponse* response) {
  GPTQ_AUTHORIZE_OR_FINISH("Register");
  auto r = manager_->Register(*request);
  if (r.ok()) *response = *std::move(r);
  return Done(context, "Register", r.status());
}

grpc::ServerUnaryReactor* WorkerServiceImpl::LeaseJob(grpc::CallbackServerContext* context,
                                                      const wv1::LeaseJobRequest* request,
                                                      wv1::LeaseJobResponse* response) {
  GPTQ_AUTHORIZE_OR_FINISH("LeaseJob");
  return new LeaseReactor(manager_, metrics_, context, *request, response);
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(grpc::CallbackServerContext* context,
                                                       const wv1::HeartbeatRequest* request,
                                                       wv1::HeartbeatResponse* response) {
  GPTQ_AUTHORIZE_OR_FINISH("Heartbeat");
  auto* reactor = context->DefaultReactor();
  Metrics* metrics = metrics_;
  manager_->Heartbeat(*request, [reactor, response, metrics](absl::Status status,
                                                             wv1::HeartbeatResponse r) {
    if (status.ok()) *response = std::move(r);
    metrics->RecordRpc(kWorkerService, "Heartbeat", static_cast<int>(status.code()));
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::ReportEvents(
    grpc::CallbackServerContext* context, const wv1::ReportEventsRequest* request,
    wv1::ReportEventsResponse* response) {
  GPTQ_AUTHORIZE_OR_FINISH("ReportEvents");
  auto r = manager_->ReportEvents(*request);
  if (r.ok()) *response = *std::move(r);
  return Done(context, "ReportEvents", r.status());
}

grpc::ServerUnaryReactor* WorkerServiceImpl::FinishJob(grpc::CallbackServerContext* context,
                                                       const wv1::FinishJobRequest* request,
                                                       wv1::FinishJobResponse* /*response*/) {
  GPTQ_AUTHORIZE_OR_FINISH("FinishJob");
  return Done(context, "FinishJob", manager_->FinishJob(*request));
}

}  // namespace gptq::server
