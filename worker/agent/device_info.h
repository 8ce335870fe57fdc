// What the worker runs on, for Register's capabilities and Heartbeat's memory figure. Plain
// C++ declarations; implemented in device_info.cc (target gptq_agent_torch_bits), the only
// agent translation unit that includes Torch headers (and no protobuf/gRPC ones).
#ifndef GPTQ_WORKER_AGENT_DEVICE_INFO_H_
#define GPTQ_WORKER_AGENT_DEVICE_INFO_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace gptq::agent {

struct DeviceInfo {
  std::string device;         // "cuda" or "cpu"
  std::string device_string;  // resolved device for the runtime: "cpu" or "cuda:N"
  std::string device_name;    // e.g. "NVIDIA H100 80GB HBM3", or the CPU model
  int64_t memory_bytes = 0;   // GPU memory (cuda) or physical RAM (cpu)
  std::string torch_version;  // LibTorch version built against, e.g. "2.11.0"
  int num_threads = 0;        // intra-op CPU threads
};

// Resolves `device` ("auto", "cpu", "cuda", "cuda:N") and describes it. InvalidArgument for a
// malformed string; FailedPrecondition when CUDA is asked for and absent or N is out of range.
absl::StatusOr<DeviceInfo> QueryDeviceInfo(const std::string& device);

// Memory in use on `device_string` (from QueryDeviceInfo), in bytes: the GPU's used memory
// (cudaMemGetInfo, all processes) for cuda, this process's resident set size for cpu.
int64_t DeviceMemoryUsedBytes(const std::string& device_string);

// Returns cached, unused device memory to the driver (after a job). No-op on CPU.
void ReleaseCachedDeviceMemory();

}  // namespace gptq::agent

#endif  // GPTQ_WORKER_AGENT_DEVICE_INFO_H_
