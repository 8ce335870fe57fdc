#include "torch_status.h"

#include <new>
#include <string>

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace gptq {
namespace internal {

absl::Status StatusFromCurrentException(absl::string_view context) {
  try {
    throw;
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(context, ": out of memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    std::string message = e.what_without_backtrace();
    // CPU allocations that fail surface as a plain c10::Error with this wording.
    if (message.find("DefaultCPUAllocator: not enough memory") != std::string::npos ||
        message.find("out of memory") != std::string::npos) {
      return absl::ResourceExhaustedError(absl::StrCat(context, ": ", message));
    }
    return absl::InternalError(absl::StrCat(context, ": LibTorch error: ", message));
  } catch (const std::bad_alloc& e) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(context, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(context, ": unknown exception"));
  }
}

}  // namespace internal
}  // namespace gptq
