// Durable job store: one SQLite file in WAL mode holding jobs and their event logs.
// Every write is one transaction, so a job and the events that changed it are stored
// together or not at all; a kill -9 loses nothing that a call returned OK for.
// Thread-safe (one connection behind a mutex). No gRPC headers.
#ifndef GPTQ_SERVER_JOB_STORE_H_
#define GPTQ_SERVER_JOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "gptq/v1/quantization.pb.h"

struct sqlite3;

namespace gptq::server {

// A job row as stored.
struct StoredJob {
  gptq::v1::Job job;
  // Fencing epoch of the job's latest lease (0 = never leased).
  int64_t lease_epoch = 0;
  // Insertion order (monotonic, never reused); orders listings and the FIFO queue.
  int64_t order = 0;
  // Sequence number of the job's last event (0 = none).
  int64_t last_sequence = 0;
};

class JobStore {
 public:
  // Opens (creating if needed) the database at `path`.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts a new job with its first events; returns its insertion order.
  // ALREADY_EXISTS if the id or the non-empty request_id is taken.
  absl::StatusOr<int64_t> InsertJob(const gptq::v1::Job& job, int64_t lease_epoch,
                                    const std::vector<gptq::v1::JobEvent>& events);
  // Replaces a job's row and appends `events` (sequence numbers already assigned).
  // NOT_FOUND if the job is not stored.
  absl::Status UpdateJob(const gptq::v1::Job& job, int64_t lease_epoch,
                         const std::vector<gptq::v1::JobEvent>& events);
  // Deletes a job and its events. NOT_FOUND if absent.
  absl::Status DeleteJob(const std::string& id);
  // All jobs, in insertion order.
  absl::StatusOr<std::vector<StoredJob>> LoadJobs();
  // The job's events with sequence >= from_sequence, in order.
  absl::StatusOr<std::vector<gptq::v1::JobEvent>> LoadEvents(const std::string& job_id,
                                                             int64_t from_sequence);

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AppendEventsLocked(const std::vector<gptq::v1::JobEvent>& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gptq::server

#endif  // GPTQ_SERVER_JOB_STORE_H_
