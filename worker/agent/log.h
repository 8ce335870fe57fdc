// A minimal logger for the agent (Debian's Abseil has no absl/log): one line per call on
// stderr, "YYYY-MM-DDTHH:MM:SS.mmmZ LEVEL gptq-worker: message". Thread-safe.
#ifndef GPTQ_WORKER_AGENT_LOG_H_
#define GPTQ_WORKER_AGENT_LOG_H_

#include <string>

#include "absl/strings/str_cat.h"

namespace gptq::agent {

enum class LogLevel { kInfo, kWarning, kError };
void Log(LogLevel level, const std::string& message);

#define GPTQ_AGENT_LOG(level, ...) \
  ::gptq::agent::Log(::gptq::agent::LogLevel::level, ::absl::StrCat(__VA_ARGS__))

}  // namespace gptq::agent

#endif  // GPTQ_WORKER_AGENT_LOG_H_
