// The agent's one Torch translation unit: no protobuf or gRPC header may be included here.
#include "device_info.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifdef GPTQ_AGENT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace gptq::agent {
namespace {

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
  }
  return "cpu";
}

int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page_size > 0 ? static_cast<int64_t>(pages) * page_size : 0;
}

int64_t ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(in >> size >> resident)) return 0;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE));
}

}  // namespace

absl::StatusOr<DeviceInfo> QueryDeviceInfo(const std::string& device) {
  DeviceInfo info;
  info.torch_version = TORCH_VERSION;
  info.num_threads = at::get_num_threads();
  int index = -1;  // -1: cpu
  if (device == "cpu") {
    index = -1;
  } else if (device == "auto" || device.empty()) {
    index = torch::cuda::is_available() ? 0 : -1;
  } else if (device == "cuda" || absl::StartsWith(device, "cuda:")) {
    index = 0;
    if (device != "cuda" && !absl::SimpleAtoi(device.substr(5), &index)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device '", device, "': expected auto, cpu, cuda or cuda:N"));
    }
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--device ", device, ": this worker has no usable CUDA device (LibTorch ",
                       TORCH_VERSION, ")"));
    }
    const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
    if (index < 0 || index >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("--device ", device, ": only ", count, " CUDA device(s) present"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--device '", device, "': expected auto, cpu, cuda or cuda:N"));
  }
  if (index < 0) {
    info.device = "cpu";
    info.device_string = "cpu";
    info.device_name = CpuModelName();
    info.memory_bytes = PhysicalMemoryBytes();
    return info;
  }
  info.device = "cuda";
  info.device_string = absl::StrCat("cuda:", index);
#ifdef GPTQ_AGENT_WITH_CUDA
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(index);
  info.device_name = prop->name;
  info.memory_bytes = static_cast<int64_t>(prop->totalGlobalMem);
#else
  // LibTorch reports CUDA but this build has no CUDA headers: name what we can.
  info.device_name = absl::StrCat("CUDA device ", index);
#endif
  return info;
}

int64_t DeviceMemoryUsedBytes(const std::string& device_string) {
#ifdef GPTQ_AGENT_WITH_CUDA
  if (absl::StartsWith(device_string, "cuda")) {
    int index = 0;
    if (device_string.size() > 5) absl::SimpleAtoi(device_string.substr(5), &index);
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) return 0;
    size_t free_bytes = 0, total_bytes = 0;
    cudaSetDevice(index);
    const cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
    cudaSetDevice(previous);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear it
      return 0;
    }
    return static_cast<int64_t>(total_bytes - free_bytes);
  }
#endif
  (void)device_string;
  return ResidentBytes();
}

void ReleaseCachedDeviceMemory() {
#ifdef GPTQ_AGENT_WITH_CUDA
  if (torch::cuda::is_available()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

}  // namespace gptq::agent
