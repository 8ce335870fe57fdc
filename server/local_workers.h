// Starts and supervises local gptq-worker processes: restarts a crashed one with exponential
// backoff (1 s doubling to 30 s, reset after a minute of uptime) and stops all of them
// (SIGTERM, then SIGKILL after a grace) on Stop(). Children get PR_SET_PDEATHSIG so they also
// die if the server is killed.
#ifndef GPTQ_SERVER_LOCAL_WORKERS_H_
#define GPTQ_SERVER_LOCAL_WORKERS_H_

#include <sys/types.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace gptq::server {

// Parses --local-workers ("auto", or a count >= 0) into the list of --device values:
// auto -> "cuda:0".."cuda:N-1" for N visible GPUs (`gpu_count`), else {"cpu"}; a number N ->
// N entries ("cuda:i" round-robin over GPUs if any, else "cpu").
absl::StatusOr<std::vector<std::string>> LocalWorkerDevices(const std::string& flag,
                                                            int gpu_count);
// Counts NVIDIA GPUs: /proc/driver/nvidia/gpus entries, else `nvidia-smi -L` lines.
// CUDA_VISIBLE_DEVICES, when set, limits the count.
int CountVisibleGpus();

class LocalWorkers {
 public:
  struct Options {
    std::string binary;
    std::string server_address;  // 127.0.0.1:PORT
    std::vector<std::string> devices;
    std::vector<std::string> extra_args;
    // Extra environment entries ("K=V") for the children.
    std::vector<std::string> env;
  };
  explicit LocalWorkers(Options options);
  ~LocalWorkers();
  LocalWorkers(const LocalWorkers&) = delete;
  LocalWorkers& operator=(const LocalWorkers&) = delete;

  // Checks the binary and starts the supervisor thread.
  absl::Status Start();
  // Stops the children (SIGTERM, SIGKILL after `grace`) and the supervisor. Idempotent.
  void Stop(absl::Duration grace = absl::Seconds(5));
  // Number of (re)starts so far, per slot.
  std::vector<int> starts() const;

 private:
  struct Slot {
    std::string device;
    pid_t pid = -1;
    int starts = 0;
    absl::Time started;
    absl::Time next_start;
    absl::Duration backoff = absl::Seconds(1);
  };
  void Supervise();
  void Spawn(Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace gptq::server

#endif  // GPTQ_SERVER_LOCAL_WORKERS_H_
