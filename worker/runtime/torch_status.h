// The one seam that turns exceptions thrown by LibTorch (c10::Error and its subclasses,
// std::bad_alloc) into absl::Status inside the runtime. Torch-free header: every runtime
// entry point that calls into Torch wraps its body in CallTorch so no exception escapes.
#ifndef GPTQ_WORKER_RUNTIME_TORCH_STATUS_H_
#define GPTQ_WORKER_RUNTIME_TORCH_STATUS_H_

#include <exception>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gptq::runtime {

// Maps an exception to a Status: c10::OutOfMemoryError and std::bad_alloc → ResourceExhausted,
// c10::IndexError/ValueError/TypeError → InvalidArgument, c10::NotImplementedError →
// Unimplemented, any other c10::Error → Internal (message without the C++ backtrace), any
// other std::exception → Internal. `context` (e.g. "layer 3 forward") prefixes the message.
absl::Status StatusFromException(const std::exception& e, std::string_view context = {});

// The same for an exception that is not a std::exception.
absl::Status StatusFromUnknownException(std::string_view context = {});

// Runs `fn` (returning absl::Status or absl::StatusOr<T>) and converts any exception.
template <typename Fn>
auto CallTorch(std::string_view context, Fn&& fn) -> decltype(fn()) {
  try {
    return std::forward<Fn>(fn)();
  } catch (const std::exception& e) {
    return StatusFromException(e, context);
  } catch (...) {
    return StatusFromUnknownException(context);
  }
}

}  // namespace gptq::runtime

#endif  // GPTQ_WORKER_RUNTIME_TORCH_STATUS_H_
