// gRPC glue: callback-API handlers of gptq.v1.QuantizationService and
// gptq.worker.v1.WorkerService. Each handler authorizes, calls the JobManager and maps the
// absl::Status to a grpc::Status (the one place that does so). WatchJob is one small reactor.
#ifndef GPTQ_SERVER_SERVICE_H_
#define GPTQ_SERVER_SERVICE_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "gptq/v1/quantization.grpc.pb.h"
#include "gptq/worker/v1/worker.grpc.pb.h"
#include "job_manager.h"
#include "metrics.h"

namespace gptq::server {

// The one mapping from absl::Status to grpc::Status (codes share numbering).
grpc::Status ToGrpcStatus(const absl::Status& status);

// Checks `authorization: Bearer <token>` when `token` is non-empty.
absl::Status Authorize(const grpc::CallbackServerContext* context, const std::string& token);

class QuantizationServiceImpl final : public gptq::v1::QuantizationService::CallbackService {
 public:
  // `manager` and `metrics` are not owned and must outlive the service.
  QuantizationServiceImpl(JobManager* manager, Metrics* metrics, std::string auth_token)
      : manager_(manager), metrics_(metrics), auth_token_(std::move(auth_token)) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context,
                                      const gptq::v1::CreateJobRequest* request,
                                      gptq::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const gptq::v1::GetJobRequest* request,
                                   gptq::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const gptq::v1::ListJobsRequest* request,
                                     gptq::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const gptq::v1::CancelJobRequest* request,
                                      gptq::v1::Job* response) override;
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* context,
                                      const gptq::v1::DeleteJobRequest* request,
                                      gptq::v1::DeleteJobResponse* response) override;
  grpc::ServerWriteReactor<gptq::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context, const gptq::v1::WatchJobRequest* request) override;

 private:
  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const char* method,
                                 const absl::Status& status);

  JobManager* const manager_;
  Metrics* const metrics_;
  const std::string auth_token_;
};

class WorkerServiceImpl final : public gptq::worker::v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(JobManager* manager, Metrics* metrics, std::string auth_token)
      : manager_(manager), metrics_(metrics), auth_token_(std::move(auth_token)) {}

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const gptq::worker::v1::RegisterRequest* request,
                                     gptq::worker::v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* LeaseJob(grpc::CallbackServerContext* context,
                                     const gptq::worker::v1::LeaseJobRequest* request,
                                     gptq::worker::v1::LeaseJobResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const gptq::worker::v1::HeartbeatRequest* request,
                                      gptq::worker::v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* ReportEvents(
      grpc::CallbackServerContext* context, const gptq::worker::v1::ReportEventsRequest* request,
      gptq::worker::v1::ReportEventsResponse* response) override;
  grpc::ServerUnaryReactor* FinishJob(grpc::CallbackServerContext* context,
                                      const gptq::worker::v1::FinishJobRequest* request,
                                      gptq::worker::v1::FinishJobResponse* response) override;

 private:
  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const char* method,
                                 const absl::Status& status);

  JobManager* const manager_;
  Metrics* const metrics_;
  const std::string auth_token_;
};

}  // namespace gptq::server

#endif  // GPTQ_SERVER_SERVICE_H_
