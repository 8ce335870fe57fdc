// Status helpers missing from Debian's Abseil 20220623 (no ABSL_RETURN_IF_ERROR /
// ABSL_ASSIGN_OR_RETURN there). Header-only; Abseil only; safe in Torch and RPC code alike.
#ifndef GPTQ_COMMON_STATUS_MACROS_H_
#define GPTQ_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define GPTQ_RETURN_IF_ERROR(expr)                          \
  do {                                                      \
    ::absl::Status gptq_status_ = (expr);                   \
    if (!gptq_status_.ok()) return gptq_status_;            \
  } while (false)

#define GPTQ_STATUS_CONCAT_INNER_(a, b) a##b
#define GPTQ_STATUS_CONCAT_(a, b) GPTQ_STATUS_CONCAT_INNER_(a, b)

// `GPTQ_ASSIGN_OR_RETURN(auto x, MakeX());` evaluates an absl::StatusOr<T>; on error returns
// its status, else moves the value into the declaration or lvalue on the left.
#define GPTQ_ASSIGN_OR_RETURN(lhs, expr) \
  GPTQ_ASSIGN_OR_RETURN_IMPL_(GPTQ_STATUS_CONCAT_(gptq_statusor_, __LINE__), lhs, expr)
#define GPTQ_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                                \
  if (!var.ok()) return std::move(var).status();    \
  lhs = std::move(var).value()

#endif  // GPTQ_COMMON_STATUS_MACROS_H_
