#include "validation.h"

#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gptq/status_macros.h"

namespace gptq::server {
namespace {

namespace fs = std::filesystem;
using gptq::v1::CreateJobRequest;
using gptq::v1::QuantizationSpec;

constexpr int kMaxLabels = 32;
constexpr int kMaxLabelValueChars = 256;
constexpr int kMaxRequestIdChars = 128;
constexpr int64_t kMinShardBytes = int64_t{1} << 20;
constexpr int kDefaultNsamples = 128;

const std::set<std::string>& KnownDatasets() {
  static const auto* kNames =
      new std::set<std::string>{"c4", "wikitext2", "tinystories", "brown"};
  return *kNames;
}

absl::Status Invalid(const std::string& field, const std::string& rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

bool IsHfNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '_' || c == '.';
}

bool IsHfNamePart(const std::string& s) {
  if (s.empty() || s.size() > 96 || s == "." || s == "..") return false;
  for (char c : s) {
    if (!IsHfNameChar(c)) return false;
  }
  return true;
}

// Resolves symlinks of the existing prefix and normalizes the rest lexically.
fs::path Normalize(const fs::path& p) {
  std::error_code ec;
  fs::path out = fs::weakly_canonical(p, ec);
  if (ec) out = p.lexically_normal();
  std::string s = out.string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return fs::path(s);
}

bool IsInside(const fs::path& path, const fs::path& root) {
  auto rel = path.lexically_relative(root);
  if (rel.empty()) return false;
  const std::string r = rel.string();
  return r == "." || !(r == ".." || absl::StartsWith(r, "../"));
}

}  // namespace

bool IsValidLabelKey(const std::string& key) {
  if (key.empty() || key.size() > 63) return false;
  for (char c : key) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<ResolvedUri> ResolveUri(const std::string& field, const std::string& uri,
                                       bool allow_hf, const std::vector<std::string>& roots) {
  if (uri.empty()) return Invalid(field, "is required");
  ResolvedUri out;
  std::string path;
  if (absl::StartsWith(uri, "hf://")) {
    if (!allow_hf) return Invalid(field, "hf:// URIs are not supported here (local paths only)");
    std::string rest = uri.substr(5);
    std::string revision;
    if (auto at = rest.find('@'); at != std::string::npos) {
      revision = rest.substr(at + 1);
      rest = rest.substr(0, at);
      if (revision.empty()) return Invalid(field, "hf:// revision after '@' is empty");
      for (char c : revision) {
        if (!IsHfNameChar(c) && c != '/') {
          return Invalid(field, absl::StrCat("hf:// revision has an invalid character '",
                                             std::string(1, c), "'"));
        }
      }
    }
    auto slash = rest.find('/');
    if (slash == std::string::npos || !IsHfNamePart(rest.substr(0, slash)) ||
        !IsHfNamePart(rest.substr(slash + 1))) {
      return Invalid(field, "hf:// URIs must look like hf://ORG/NAME[@REVISION] "
                            "(ORG and NAME of [A-Za-z0-9._-])");
    }
    out.scheme = ResolvedUri::Scheme::kHuggingFace;
    out.hf_repo = rest;
    out.hf_revision = revision;
    return out;
  }
  if (absl::StartsWith(uri, "file://")) {
    path = uri.substr(7);
    if (path.empty() || path[0] != '/') {
      return Invalid(field, "file:// URIs must hold an absolute path (file:///abs/path)");
    }
  } else if (auto pos = uri.find("://"); pos != std::string::npos) {
    return Invalid(field, absl::StrCat("unsupported scheme '", uri.substr(0, pos),
                                       "://' (supported: local path, file://, hf://)"));
  } else {
    path = uri;
    if (path[0] != '/') return Invalid(field, "local paths must be absolute");
  }
  if (path.find('\0') != std::string::npos) return Invalid(field, "path contains a NUL byte");
  fs::path normalized = Normalize(fs::path(path));
  if (!roots.empty()) {
    bool inside = false;
    for (const auto& root : roots) {
      if (IsInside(normalized, Normalize(fs::path(root)))) {
        inside = true;
        break;
      }
    }
    if (!inside) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": path ", normalized.string(),
                       " is outside the allowed roots [", absl::StrJoin(roots, ", "), "]"));
    }
  }
  out.scheme = ResolvedUri::Scheme::kLocal;
  out.local_path = normalized.string();
  return out;
}

absl::Status ValidateCreateJobRequest(const CreateJobRequest& request,
                                      const ValidationOptions& options) {
  if (!request.has_spec()) return Invalid("spec", "is required");
  const QuantizationSpec& spec = request.spec();

  GPTQ_ASSIGN_OR_RETURN(ResolvedUri model,
                        ResolveUri("spec.model_uri", spec.model_uri(), /*allow_hf=*/true,
                                   options.allowed_model_roots));
  if (model.scheme == ResolvedUri::Scheme::kLocal) {
    std::error_code ec;
    if (!fs::exists(model.local_path, ec)) {
      return Invalid("spec.model_uri", absl::StrCat("model directory ", model.local_path,
                                                    " does not exist"));
    }
    if (!fs::is_directory(model.local_path, ec)) {
      return Invalid("spec.model_uri",
                     absl::StrCat(model.local_path, " is not a directory"));
    }
  }
  GPTQ_ASSIGN_OR_RETURN(ResolvedUri output,
                        ResolveUri("spec.output_uri", spec.output_uri(), /*allow_hf=*/false,
                                   options.allowed_output_roots));
  {
    std::error_code ec;
    if (fs::exists(output.local_path, ec)) {
      if (!fs::is_directory(output.local_path, ec)) {
        return Invalid("spec.output_uri",
                       absl::StrCat(output.local_path, " exists and is not a directory"));
      }
      if (!fs::is_empty(output.local_path, ec)) {
        return Invalid("spec.output_uri",
                       absl::StrCat("output directory ", output.local_path,
                                    " exists and is not empty"));
      }
    }
  }

  if (spec.has_bits()) {
    const int b = spec.bits();
    if (b != 2 && b != 3 && b != 4 && b != 8) {
      return Invalid("spec.bits", absl::StrCat("must be 2, 3, 4 or 8 (got ", b, ")"));
    }
  }
  if (spec.has_group_size() && !(spec.group_size() > 0 || spec.group_size() == -1)) {
    return Invalid("spec.group_size",
                   absl::StrCat("must be > 0 or -1 (got ", spec.group_size(), ")"));
  }
  if (spec.has_damp_percent() && !(spec.damp_percent() > 0 && spec.damp_percent() < 1)) {
    return Invalid("spec.damp_percent",
                   absl::StrCat("must be in (0, 1) (got ", spec.damp_percent(), ")"));
  }
  if (spec.has_damp_auto_increment() &&
      !(spec.damp_auto_increment() > 0 && spec.damp_auto_increment() < 1)) {
    return Invalid("spec.damp_auto_increment",
                   absl::StrCat("must be in (0, 1) (got ", spec.damp_auto_increment(), ")"));
  }
  if (!gptq::v1::CheckpointFormat_IsValid(spec.format())) {
    return Invalid("spec.format", absl::StrCat("unknown checkpoint format ", spec.format()));
  }
  if (!gptq::v1::DevicePreference_IsValid(spec.device())) {
    return Invalid("spec.device", absl::StrCat("unknown device preference ", spec.device()));
  }

  const auto& cal = spec.calibration();
  switch (cal.source_case()) {
    case gptq::v1::CalibrationSpec::kDataset:
      if (!KnownDatasets().count(cal.dataset())) {
        return Invalid("spec.calibration.dataset",
                       absl::StrCat("unknown dataset '", cal.dataset(),
                                    "' (known: brown, c4, tinystories, wikitext2)"));
      }
      break;
    case gptq::v1::CalibrationSpec::kTexts:
      if (cal.texts().texts_size() == 0) {
        return Invalid("spec.calibration.texts", "needs at least one text");
      }
      for (int i = 0; i < cal.texts().texts_size(); ++i) {
        if (cal.texts().texts(i).empty()) {
          return Invalid(absl::StrCat("spec.calibration.texts.texts[", i, "]"),
                         "must not be empty");
        }
      }
      break;
    case gptq::v1::CalibrationSpec::kFileUri: {
      GPTQ_ASSIGN_OR_RETURN(ResolvedUri f,
                            ResolveUri("spec.calibration.file_uri", cal.file_uri(),
                                       /*allow_hf=*/false, options.allowed_model_roots));
      (void)f;
      break;
    }
    case gptq::v1::CalibrationSpec::kTokenIds:
      if (cal.token_ids().ids_size() == 0) {
        return Invalid("spec.calibration.token_ids", "needs at least one token id");
      }
      for (int i = 0; i < cal.token_ids().ids_size(); ++i) {
        if (cal.token_ids().ids(i) < 0) {
          return Invalid(absl::StrCat("spec.calibration.token_ids.ids[", i, "]"),
                         "must be >= 0");
        }
      }
      break;
    case gptq::v1::CalibrationSpec::SOURCE_NOT_SET:
      break;
  }
  if (cal.has_nsamples() && (cal.nsamples() < 1 || cal.nsamples() > 4096)) {
    return Invalid("spec.calibration.nsamples",
                   absl::StrCat("must be in [1, 4096] (got ", cal.nsamples(), ")"));
  }
  if (cal.has_seqlen() && (cal.seqlen() < 8 || cal.seqlen() > 32768)) {
    return Invalid("spec.calibration.seqlen",
                   absl::StrCat("must be in [8, 32768] (got ", cal.seqlen(), ")"));
  }
  const auto& eval = spec.evaluation();
  for (int i = 0; i < eval.datasets_size(); ++i) {
    if (!KnownDatasets().count(eval.datasets(i))) {
      return Invalid(absl::StrCat("spec.evaluation.datasets[", i, "]"),
                     absl::StrCat("unknown dataset '", eval.datasets(i),
                                  "' (known: brown, c4, tinystories, wikitext2)"));
    }
  }
  if (eval.has_seqlen() && (eval.seqlen() < 8 || eval.seqlen() > 32768)) {
    return Invalid("spec.evaluation.seqlen",
                   absl::StrCat("must be in [8, 32768] (got ", eval.seqlen(), ")"));
  }
  if (spec.has_batch_size()) {
    const int nsamples = cal.has_nsamples() ? cal.nsamples() : kDefaultNsamples;
    if (spec.batch_size() < 1 || spec.batch_size() > nsamples) {
      return Invalid("spec.batch_size", absl::StrCat("must be in [1, nsamples=", nsamples,
                                                     "] (got ", spec.batch_size(), ")"));
    }
  }
  if (spec.has_max_shard_size_bytes() && spec.max_shard_size_bytes() < kMinShardBytes) {
    return Invalid("spec.max_shard_size_bytes",
                   absl::StrCat("must be at least 1 MiB (1048576) (got ",
                                spec.max_shard_size_bytes(), ")"));
  }

  if (request.labels_size() > kMaxLabels) {
    return Invalid("labels", absl::StrCat("at most ", kMaxLabels, " labels (got ",
                                          request.labels_size(), ")"));
  }
  for (const auto& [key, value] : request.labels()) {
    if (!IsValidLabelKey(key)) {
      return Invalid(absl::StrCat("labels[", key, "]"), "keys must be 1-63 chars of [a-z0-9_.-]");
    }
    if (value.size() > kMaxLabelValueChars) {
      return Invalid(absl::StrCat("labels[", key, "]"),
                     absl::StrCat("values must be at most ", kMaxLabelValueChars, " chars"));
    }
  }
  if (request.request_id().size() > kMaxRequestIdChars) {
    return Invalid("request_id", absl::StrCat("must be at most ", kMaxRequestIdChars,
                                              " chars (got ", request.request_id().size(), ")"));
  }
  if (request.priority() < -100 || request.priority() > 100) {
    return Invalid("priority",
                   absl::StrCat("must be in [-100, 100] (got ", request.priority(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace gptq::server
