// File: openmoe/core/status_macros.h
// Status propagation macros. Abseil 20220623 has absl::Status/StatusOr but no
// ABSL_RETURN_IF_ERROR / ABSL_ASSIGN_OR_RETURN, so the project defines its own.
//
//   OPENMOE_RETURN_IF_ERROR(LoadHeader(path));
//   OPENMOE_ASSIGN_OR_RETURN(Header header, ParseHeader(bytes));
#ifndef OPENMOE_CORE_STATUS_MACROS_H_
#define OPENMOE_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define OPENMOE_RETURN_IF_ERROR(expr)                \
  do {                                               \
    const ::absl::Status openmoe_status_ = (expr);   \
    if (!openmoe_status_.ok()) return openmoe_status_; \
  } while (false)

#define OPENMOE_STATUS_CONCAT_INNER_(a, b) a##b
#define OPENMOE_STATUS_CONCAT_(a, b) OPENMOE_STATUS_CONCAT_INNER_(a, b)

#define OPENMOE_ASSIGN_OR_RETURN(lhs, expr) \
  OPENMOE_ASSIGN_OR_RETURN_IMPL_(OPENMOE_STATUS_CONCAT_(openmoe_statusor_, __LINE__), lhs, expr)

#define OPENMOE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // OPENMOE_CORE_STATUS_MACROS_H_
