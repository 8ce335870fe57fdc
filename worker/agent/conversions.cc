#include "conversions.h"

#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace gptq::agent {
namespace {

namespace v1 = ::gptq::v1;

constexpr const char* kDatasets[] = {"c4", "wikitext2", "tinystories", "brown"};

bool KnownDataset(const std::string& name) {
  for (const char* d : kDatasets) {
    if (name == d) return true;
  }
  return false;
}

absl::Status Invalid(absl::string_view field, absl::string_view rule, absl::string_view got) {
  return absl::InvalidArgumentError(absl::StrCat("spec.", field, " ", rule, " (got ", got, ")"));
}

}  // namespace

absl::StatusOr<std::string> LocalPathFromUri(const std::string& uri, const std::string& field) {
  absl::string_view rest = uri;
  if (absl::ConsumePrefix(&rest, "file://")) {
    // file:///abs/path (empty authority) or file://localhost/abs/path.
    absl::ConsumePrefix(&rest, "localhost");
    if (!absl::StartsWith(rest, "/")) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " '", uri, "': a file:// URI must hold an absolute path"));
    }
    return std::string(rest);
  }
  if (uri.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  const size_t scheme = uri.find("://");
  if (scheme != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " '", uri, "': scheme '", uri.substr(0, scheme), "' is not supported here"));
  }
  return uri;
}

absl::StatusOr<runtime::QuantizeOptions> SpecToOptions(const v1::QuantizationSpec& spec,
                                                       const JobPlacement& placement) {
  runtime::QuantizeOptions o;
  o.model_dir = placement.model_dir;
  o.output_dir = placement.output_dir;
  o.data_dir = placement.data_dir;
  o.device = placement.device.empty() ? "auto" : placement.device;

  o.bits = spec.has_bits() ? spec.bits() : 4;
  if (o.bits != 2 && o.bits != 3 && o.bits != 4 && o.bits != 8) {
    return Invalid("bits", "must be 2, 3, 4 or 8", absl::StrCat(o.bits));
  }
  o.group_size = spec.has_group_size() ? spec.group_size() : 128;
  if (o.group_size != -1 && o.group_size <= 0) {
    return Invalid("group_size", "must be -1 or positive", absl::StrCat(o.group_size));
  }
  o.damp_percent = spec.has_damp_percent() ? spec.damp_percent() : 0.1;
  if (!(o.damp_percent > 0.0 && o.damp_percent < 1.0)) {
    return Invalid("damp_percent", "must be in (0, 1)", absl::StrCat(o.damp_percent));
  }
  o.damp_auto_increment = spec.has_damp_auto_increment() ? spec.damp_auto_increment() : 0.01;
  if (!(o.damp_auto_increment > 0.0 && o.damp_auto_increment < 1.0)) {
    return Invalid("damp_auto_increment", "must be in (0, 1)", absl::StrCat(o.damp_auto_increment));
  }
  o.sym = spec.has_sym() ? spec.sym() : true;
  o.desc_act = spec.has_desc_act() ? spec.desc_act() : false;
  // Group-aware reordering defaults to on and cannot be combined with act-order.
  o.act_group_aware =
      o.desc_act ? false : (spec.has_act_group_aware() ? spec.act_group_aware() : true);
  o.static_groups = spec.has_static_groups() ? spec.static_groups() : false;
  o.true_sequential = spec.has_true_sequential() ? spec.true_sequential() : true;
  switch (spec.format()) {
    case v1::CHECKPOINT_FORMAT_UNSPECIFIED:
      o.format = o.sym ? "gptq" : "gptq_v2";
      break;
    case v1::CHECKPOINT_FORMAT_GPTQ:
      o.format = "gptq";
      break;
    case v1::CHECKPOINT_FORMAT_GPTQ_V2:
      o.format = "gptq_v2";
      break;
    default:
      return Invalid("format", "must be a CheckpointFormat value",
                     absl::StrCat(static_cast<int>(spec.format())));
  }

  const v1::CalibrationSpec& cal = spec.calibration();
  runtime::CalibrationOptions& c = o.calibration;
  switch (cal.source_case()) {
    case v1::CalibrationSpec::kDataset:
      if (!KnownDataset(cal.dataset())) {
        return Invalid("calibration.dataset", "must be one of c4, wikitext2, tinystories, brown",
                       absl::StrCat("'", cal.dataset(), "'"));
      }
      c.dataset = cal.dataset();
      break;
    case v1::CalibrationSpec::kTexts:
      if (cal.texts().texts().empty()) {
        return Invalid("calibration.texts.texts", "must hold at least one text", "none");
      }
      for (int i = 0; i < cal.texts().texts_size(); ++i) {
        if (cal.texts().texts(i).empty()) {
          return Invalid(absl::StrCat("calibration.texts.texts[", i, "]"), "must not be empty",
                         "''");
        }
      }
      c.texts.assign(cal.texts().texts().begin(), cal.texts().texts().end());
      break;
    case v1::CalibrationSpec::kFileUri: {
      absl::StatusOr<std::string> path =
          LocalPathFromUri(cal.file_uri(), "spec.calibration.file_uri");
      if (!path.ok()) return path.status();
      c.file = *path;
      break;
    }
    case v1::CalibrationSpec::kTokenIds:
      if (cal.token_ids().ids().empty()) {
        return Invalid("calibration.token_ids.ids", "must hold at least one id", "none");
      }
      for (int i = 0; i < cal.token_ids().ids_size(); ++i) {
        if (cal.token_ids().ids(i) < 0) {
          return Invalid(absl::StrCat("calibration.token_ids.ids[", i, "]"), "must be non-negative",
                         absl::StrCat(cal.token_ids().ids(i)));
        }
      }
      c.token_ids.assign(cal.token_ids().ids().begin(), cal.token_ids().ids().end());
      break;
    case v1::CalibrationSpec::SOURCE_NOT_SET:
      c.dataset = "c4";
      break;
  }
  c.nsamples = cal.has_nsamples() ? cal.nsamples() : 128;
  if (c.nsamples < 1 || c.nsamples > 4096) {
    return Invalid("calibration.nsamples", "must be in [1, 4096]", absl::StrCat(c.nsamples));
  }
  c.seqlen = cal.has_seqlen() ? cal.seqlen() : 0;
  if (cal.has_seqlen() && (c.seqlen < 8 || c.seqlen > 32768)) {
    return Invalid("calibration.seqlen", "must be in [8, 32768]", absl::StrCat(c.seqlen));
  }
  c.seed = cal.has_seed() ? cal.seed() : 0;

  for (int i = 0; i < spec.evaluation().datasets_size(); ++i) {
    const std::string& d = spec.evaluation().datasets(i);
    if (!KnownDataset(d)) {
      return Invalid(absl::StrCat("evaluation.datasets[", i, "]"),
                     "must be one of c4, wikitext2, tinystories, brown", absl::StrCat("'", d, "'"));
    }
    o.eval_datasets.push_back(d);
  }
  o.eval_seqlen = spec.evaluation().has_seqlen() ? spec.evaluation().seqlen() : 0;
  if (spec.evaluation().has_seqlen() && (o.eval_seqlen < 8 || o.eval_seqlen > 32768)) {
    return Invalid("evaluation.seqlen", "must be in [8, 32768]", absl::StrCat(o.eval_seqlen));
  }

  o.batch_size = spec.has_batch_size() ? spec.batch_size() : 1;
  if (o.batch_size < 1 || o.batch_size > c.nsamples) {
    return Invalid("batch_size", absl::StrCat("must be in [1, nsamples=", c.nsamples, "]"),
                   absl::StrCat(o.batch_size));
  }
  o.max_shard_bytes =
      spec.has_max_shard_size_bytes() ? spec.max_shard_size_bytes() : int64_t{4} << 30;
  if (o.max_shard_bytes < (int64_t{1} << 20)) {
    return Invalid("max_shard_size_bytes", "must be at least 1048576 (1 MiB)",
                   absl::StrCat(o.max_shard_bytes));
  }
  return o;
}

std::optional<v1::JobEvent> ToJobEvent(const runtime::ProgressEvent& e) {
  using Kind = runtime::ProgressEvent::Kind;
  v1::JobEvent out;
  switch (e.kind) {
    case Kind::kStage: {
      v1::LogLine* log = out.mutable_log();
      log->set_level(v1::LogLine::LEVEL_INFO);
      std::string text = absl::StrCat("stage ", e.stage);
      if (e.layer >= 0) absl::StrAppend(&text, ": layer ", e.layer + 1, "/", e.num_layers);
      log->set_message(std::move(text));
      return out;
    }
    case Kind::kModule: {
      v1::ModuleProgress* m = out.mutable_module_progress();
      m->set_layer(e.layer);
      m->set_num_layers(e.num_layers);
      m->set_module(e.module);
      m->set_rows(e.rows);
      m->set_columns(e.columns);
      m->set_loss(e.loss);
      m->set_damp(e.damp);
      m->set_rtn_fallback(e.rtn_fallback);
      m->set_unquantized(e.unquantized);
      m->set_samples(e.samples);
      m->set_seconds(e.seconds);
      m->set_fraction(e.fraction);
      if (e.eta_seconds >= 0) m->set_eta_seconds(e.eta_seconds);
      return out;
    }
    case Kind::kPerplexity: {
      v1::PerplexityEvent* p = out.mutable_perplexity();
      p->set_dataset(e.dataset);
      p->set_phase(e.phase);
      p->set_value(e.value);
      p->set_num_tokens(e.num_tokens);
      p->set_seqlen(e.seqlen);
      return out;
    }
    case Kind::kLog: {
      v1::LogLine* log = out.mutable_log();
      log->set_level(e.level == "error"     ? v1::LogLine::LEVEL_ERROR
                     : e.level == "warning" ? v1::LogLine::LEVEL_WARNING
                                            : v1::LogLine::LEVEL_INFO);
      log->set_message(e.message);
      return out;
    }
    case Kind::kArtifact: {
      v1::OutputFile* f = out.mutable_artifact()->mutable_file();
      f->set_path(e.message);
      f->set_size_bytes(e.size_bytes);
      f->set_sha256(e.sha256);
      return out;
    }
  }
  return std::nullopt;
}

void UpdateProgress(const runtime::ProgressEvent& e, v1::JobProgress* progress) {
  using Kind = runtime::ProgressEvent::Kind;
  if (e.kind == Kind::kStage && !e.stage.empty()) progress->set_stage(e.stage);
  if (e.kind == Kind::kStage || e.kind == Kind::kModule) {
    if (e.layer >= 0) progress->set_layer(e.layer);
    if (e.num_layers > 0) progress->set_num_layers(e.num_layers);
  }
  if (e.kind == Kind::kPerplexity) progress->set_stage("evaluate");
  if (e.kind == Kind::kStage || e.kind == Kind::kModule || e.kind == Kind::kPerplexity) {
    // Fraction never goes backwards in the snapshot.
    if (e.fraction > progress->fraction()) progress->set_fraction(std::min(e.fraction, 1.0));
    if (e.eta_seconds >= 0) {
      progress->set_eta_seconds(e.eta_seconds);
    }
  }
}

v1::JobResults ReportToResults(const runtime::QuantizeReport& report, double wall_seconds) {
  v1::JobResults r;
  for (const runtime::PerplexityReport& p : report.perplexity) {
    v1::PerplexityResult* out = r.add_perplexity();
    out->set_dataset(p.dataset);
    if (p.before) out->set_before(*p.before);
    if (p.after) out->set_after(*p.after);
    out->set_seqlen(p.seqlen);
    out->set_num_tokens(p.num_tokens);
  }
  v1::LossSummary* losses = r.mutable_losses();
  int num_modules = 0;
  double total = 0.0, max_loss = -std::numeric_limits<double>::infinity();
  for (const runtime::ModuleReport& m : report.modules) {
    if (m.unquantized) {
      losses->add_unquantized_modules(m.name);
      continue;
    }
    if (m.rtn_fallback) {
      losses->add_rtn_fallback_modules(m.name);
      continue;
    }
    ++num_modules;
    total += m.loss;
    if (m.loss > max_loss) {
      max_loss = m.loss;
      losses->set_max_loss_module(m.name);
    }
  }
  losses->set_num_modules(num_modules);
  losses->set_total_loss(total);
  losses->set_max_loss(num_modules > 0 ? max_loss : 0.0);
  r.set_output_location(report.output_dir);
  for (const runtime::OutputFileReport& f : report.files) {
    v1::OutputFile* out = r.add_files();
    out->set_path(f.path);
    out->set_size_bytes(f.size_bytes);
    out->set_sha256(f.sha256);
  }
  const auto total_it = report.seconds.find("total");
  r.set_seconds(total_it != report.seconds.end() ? total_it->second : wall_seconds);
  r.set_peak_gpu_bytes(report.peak_gpu_bytes);
  return r;
}

v1::JobError StatusToJobError(const absl::Status& status, const std::string& model_dir) {
  v1::JobError e;
  absl::StatusCode code = status.code();
  if (code == absl::StatusCode::kNotFound) code = absl::StatusCode::kFailedPrecondition;
  if (code == absl::StatusCode::kInvalidArgument && !model_dir.empty()) {
    std::string dir = model_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (absl::StrContains(status.message(), dir + "/")) {
      code = absl::StatusCode::kFailedPrecondition;
    }
  }
  if (code == absl::StatusCode::kOk) code = absl::StatusCode::kInternal;
  e.set_code(static_cast<int>(code));
  e.set_message(status.message().empty() ? absl::StatusCodeToString(status.code())
                                         : std::string(status.message()));
  return e;
}

}  // namespace gptq::agent
