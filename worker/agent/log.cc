#include "log.h"

#include <cstdio>
#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace gptq::agent {

void Log(LogLevel level, const std::string& message) {
  static std::mutex mu;
  const char* tag = level == LogLevel::kError     ? "ERROR"
                    : level == LogLevel::kWarning ? "WARN"
                                                  : "INFO";
  const std::string time =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "%s %s gptq-worker: %s\n", time.c_str(), tag, message.c_str());
  std::fflush(stderr);
}

}  // namespace gptq::agent
