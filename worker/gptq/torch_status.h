// The one seam where exceptions thrown by LibTorch (c10::Error and its subclasses,
// std::bad_alloc) become absl::Status, shared by the GPTQ core and the runtime. Torch-free
// header: every entry point that calls into Torch wraps its body in CallTorch, so no exception
// escapes to callers.
#ifndef GPTQ_WORKER_GPTQ_TORCH_STATUS_H_
#define GPTQ_WORKER_GPTQ_TORCH_STATUS_H_

#include <exception>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gptq {

// Maps an exception to a Status: c10::OutOfMemoryError, std::bad_alloc and allocator errors →
// ResourceExhausted; c10::IndexError/ValueError/TypeError → InvalidArgument;
// c10::NotImplementedError → Unimplemented; any other c10::Error → Internal (message without
// the C++ backtrace); any other std::exception → Internal. `context` (e.g. "layer 3 forward")
// prefixes the message.
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

}  // namespace gptq

#endif  // GPTQ_WORKER_GPTQ_TORCH_STATUS_H_
