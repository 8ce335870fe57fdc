// The one place where exceptions thrown by LibTorch become absl::Status (internal to
// worker/gptq; not installed for other libraries). Every public entry point of gptq_core and
// gptq_reference runs its Torch work through RunGuarded so that no exception escapes.
#ifndef GPTQ_WORKER_GPTQ_TORCH_STATUS_H_
#define GPTQ_WORKER_GPTQ_TORCH_STATUS_H_

#include <exception>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace gptq {
namespace internal {

// Converts the exception currently being handled (call only inside a catch block):
// c10::OutOfMemoryError and std::bad_alloc → ResourceExhausted, any other c10::Error or
// std::exception → Internal. `context` names the operation ("QuantizeGptq", ...).
absl::Status StatusFromCurrentException(absl::string_view context);

// Runs `fn` (returning absl::Status) and converts any exception it throws.
template <typename Fn>
absl::Status RunGuarded(absl::string_view context, Fn&& fn) {
  try {
    return std::forward<Fn>(fn)();
  } catch (...) {
    return StatusFromCurrentException(context);
  }
}

}  // namespace internal
}  // namespace gptq

#endif  // GPTQ_WORKER_GPTQ_TORCH_STATUS_H_
