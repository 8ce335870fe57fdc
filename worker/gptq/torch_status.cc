#include "gptq/torch_status.h"

#include <new>
#include <string>

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace gptq {
namespace {

std::string WithContext(std::string_view context, std::string_view message) {
  if (context.empty()) return std::string(message);
  return absl::StrCat(std::string(context), ": ", std::string(message));
}

// c10's what() carries a C++ backtrace on some builds; keep the first lines only.
std::string FirstLines(const char* what) {
  std::string s(what);
  const size_t pos = s.find("\nException raised from");
  if (pos != std::string::npos) s.resize(pos);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

absl::Status StatusFromException(const std::exception& e, std::string_view context) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr ||
      dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
    return absl::ResourceExhaustedError(
        WithContext(context, absl::StrCat("out of memory: ", FirstLines(e.what()))));
  }
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) {
    const std::string msg = FirstLines(c10e->what_without_backtrace());
    // Allocators of some builds raise a plain c10::Error whose text says so.
    if (msg.find("out of memory") != std::string::npos ||
        msg.find("DefaultCPUAllocator: can't allocate memory") != std::string::npos ||
        msg.find("DefaultCPUAllocator: not enough memory") != std::string::npos) {
      return absl::ResourceExhaustedError(WithContext(context, msg));
    }
    if (dynamic_cast<const c10::IndexError*>(&e) != nullptr ||
        dynamic_cast<const c10::ValueError*>(&e) != nullptr ||
        dynamic_cast<const c10::TypeError*>(&e) != nullptr) {
      return absl::InvalidArgumentError(WithContext(context, msg));
    }
    if (dynamic_cast<const c10::NotImplementedError*>(&e) != nullptr) {
      return absl::UnimplementedError(WithContext(context, msg));
    }
    return absl::InternalError(WithContext(context, msg));
  }
  return absl::InternalError(WithContext(context, FirstLines(e.what())));
}

absl::Status StatusFromUnknownException(std::string_view context) {
  return absl::InternalError(WithContext(context, "unknown exception"));
}

}  // namespace gptq
