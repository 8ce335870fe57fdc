#include "cli.h"

#include <cctype>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gptq/status_macros.h"

namespace gptq::client {
namespace {

using gptq::v1::JobState;

// Flags that take no value. Every other flag takes one.
const std::set<std::string>& BoolFlags() {
  static const auto* flags = new std::set<std::string>{
      "json",          "wait",          "sym",
      "no-sym",        "desc-act",      "no-desc-act",
      "act-group-aware", "no-act-group-aware", "static-groups",
      "no-static-groups", "true-sequential", "no-true-sequential",
      "all",           "help"};
  return *flags;
}

const std::set<std::string>& GlobalFlags() {
  static const auto* flags =
      new std::set<std::string>{"server", "json", "token", "tls-ca", "reconnect-seconds", "help"};
  return *flags;
}

const std::set<std::string>& SubmitFlags() {
  static const auto* flags = new std::set<std::string>{
      "model", "output", "bits", "group-size", "damp-percent", "damp-auto-increment", "sym",
      "no-sym", "desc-act", "no-desc-act", "act-group-aware", "no-act-group-aware",
      "static-groups", "no-static-groups", "true-sequential", "no-true-sequential", "format",
      "dataset", "calib-file", "calib-text", "calib-tokens", "calib-tokens-file", "nsamples",
      "seqlen", "seed", "eval", "eval-seqlen", "batch-size", "max-shard-size", "device",
      "label", "request-id", "priority", "wait"};
  return *flags;
}

struct Flag {
  std::string name;
  std::string value;
};

absl::StatusOr<int32_t> ParseInt32(const std::string& text, const std::string& flag) {
  int32_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected an integer, got \"", text, "\""));
  }
  return v;
}

absl::StatusOr<int64_t> ParseInt64(const std::string& text, const std::string& flag) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected an integer, got \"", text, "\""));
  }
  return v;
}

absl::StatusOr<uint64_t> ParseUint64(const std::string& text, const std::string& flag) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected a non-negative integer, got \"", text, "\""));
  }
  return v;
}

absl::StatusOr<double> ParseDouble(const std::string& text, const std::string& flag) {
  double v = 0;
  if (!absl::SimpleAtod(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected a number, got \"", text, "\""));
  }
  return v;
}

absl::Status ParseLabel(const std::string& text, const std::string& flag,
                        google::protobuf::Map<std::string, std::string>* labels) {
  std::pair<std::string, std::string> kv = absl::StrSplit(text, absl::MaxSplits('=', 1));
  if (kv.first.empty() || text.find('=') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected KEY=VALUE, got \"", text, "\""));
  }
  (*labels)[kv.first] = kv.second;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read \"", path, "\""));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status ApplySubmitFlag(const Flag& f, const Environment& env, Command& cmd,
                             int* num_calib_sources) {
  gptq::v1::QuantizationSpec& spec = *cmd.create.mutable_spec();
  const std::string& n = f.name;
  const std::string& v = f.value;
  if (n == "model") {
    spec.set_model_uri(AbsolutizeLocalPath(v, env.cwd));
  } else if (n == "output") {
    spec.set_output_uri(AbsolutizeLocalPath(v, env.cwd));
  } else if (n == "bits") {
    GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(v, n));
    spec.set_bits(x);
  } else if (n == "group-size") {
    GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(v, n));
    spec.set_group_size(x);
  } else if (n == "damp-percent") {
    GPTQ_ASSIGN_OR_RETURN(double x, ParseDouble(v, n));
    spec.set_damp_percent(x);
  } else if (n == "damp-auto-increment") {
    GPTQ_ASSIGN_OR_RETURN(double x, ParseDouble(v, n));
    spec.set_damp_auto_increment(x);
  } else if (n == "sym" || n == "no-sym") {
    spec.set_sym(n == "sym");
  } else if (n == "desc-act" || n == "no-desc-act") {
    spec.set_desc_act(n == "desc-act");
  } else if (n == "act-group-aware" || n == "no-act-group-aware") {
    spec.set_act_group_aware(n == "act-group-aware");
  } else if (n == "static-groups" || n == "no-static-groups") {
    spec.set_static_groups(n == "static-groups");
  } else if (n == "true-sequential" || n == "no-true-sequential") {
    spec.set_true_sequential(n == "true-sequential");
  } else if (n == "format") {
    const std::string lower = absl::AsciiStrToLower(v);
    if (lower == "gptq" || lower == "v1") {
      spec.set_format(gptq::v1::CHECKPOINT_FORMAT_GPTQ);
    } else if (lower == "gptq_v2" || lower == "v2") {
      spec.set_format(gptq::v1::CHECKPOINT_FORMAT_GPTQ_V2);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--format: expected gptq or gptq_v2, got \"", v, "\""));
    }
  } else if (n == "dataset") {
    ++*num_calib_sources;
    spec.mutable_calibration()->set_dataset(v);
  } else if (n == "calib-file") {
    ++*num_calib_sources;
    spec.mutable_calibration()->set_file_uri(AbsolutizeLocalPath(v, env.cwd));
  } else if (n == "calib-text") {
    if (!spec.calibration().has_texts()) ++*num_calib_sources;
    spec.mutable_calibration()->mutable_texts()->add_texts(v);
  } else if (n == "calib-tokens" || n == "calib-tokens-file") {
    std::string text = v;
    if (n == "calib-tokens-file") {
      GPTQ_ASSIGN_OR_RETURN(text, ReadFile(v, n));
    }
    GPTQ_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseTokenIds(text, n));
    if (!spec.calibration().has_token_ids()) ++*num_calib_sources;
    for (int32_t id : ids) spec.mutable_calibration()->mutable_token_ids()->add_ids(id);
  } else if (n == "nsamples") {
    GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(v, n));
    spec.mutable_calibration()->set_nsamples(x);
  } else if (n == "seqlen") {
    GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(v, n));
    spec.mutable_calibration()->set_seqlen(x);
  } else if (n == "seed") {
    GPTQ_ASSIGN_OR_RETURN(uint64_t x, ParseUint64(v, n));
    spec.mutable_calibration()->set_seed(x);
  } else if (n == "eval") {
    for (absl::string_view name : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
      spec.mutable_evaluation()->add_datasets(
          std::string(absl::StripAsciiWhitespace(name)));
    }
  } else if (n == "eval-seqlen") {
    GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(v, n));
    spec.mutable_evaluation()->set_seqlen(x);
  } else if (n == "batch-size") {
    GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(v, n));
    spec.set_batch_size(x);
  } else if (n == "max-shard-size") {
    GPTQ_ASSIGN_OR_RETURN(int64_t x, ParseByteSize(v, n));
    spec.set_max_shard_size_bytes(x);
  } else if (n == "device") {
    const std::string lower = absl::AsciiStrToLower(v);
    if (lower == "cuda" || lower == "gpu") {
      spec.set_device(gptq::v1::DEVICE_PREFERENCE_CUDA);
    } else if (lower == "cpu") {
      spec.set_device(gptq::v1::DEVICE_PREFERENCE_CPU);
    } else if (lower == "any" || lower == "auto") {
      spec.set_device(gptq::v1::DEVICE_PREFERENCE_UNSPECIFIED);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--device: expected cuda, cpu or any, got \"", v, "\""));
    }
  } else if (n == "label") {
    GPTQ_RETURN_IF_ERROR(ParseLabel(v, n, cmd.create.mutable_labels()));
  } else if (n == "request-id") {
    cmd.create.set_request_id(v);
  } else if (n == "priority") {
    GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(v, n));
    cmd.create.set_priority(x);
  } else if (n == "wait") {
    cmd.wait = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown flag --", n, " for submit"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Subcommand> ParseSubcommand(const std::string& word) {
  if (word == "submit") return Subcommand::kSubmit;
  if (word == "get") return Subcommand::kGet;
  if (word == "list") return Subcommand::kList;
  if (word == "watch") return Subcommand::kWatch;
  if (word == "cancel") return Subcommand::kCancel;
  if (word == "delete") return Subcommand::kDelete;
  if (word == "help") return Subcommand::kHelp;
  return absl::InvalidArgumentError(absl::StrCat("unknown subcommand \"", word, "\""));
}

std::string SubcommandName(Subcommand s) {
  switch (s) {
    case Subcommand::kSubmit: return "submit";
    case Subcommand::kGet: return "get";
    case Subcommand::kList: return "list";
    case Subcommand::kWatch: return "watch";
    case Subcommand::kCancel: return "cancel";
    case Subcommand::kDelete: return "delete";
    case Subcommand::kHelp: return "help";
  }
  return "?";
}

}  // namespace

std::string AbsolutizeLocalPath(const std::string& path, const std::string& cwd) {
  if (path.empty() || path[0] == '/' || absl::StrContains(path, "://") || cwd.empty()) {
    return path;
  }
  std::string p = path;
  while (absl::StartsWith(p, "./")) p = p.substr(2);
  if (p == ".") return cwd;
  return absl::StrCat(absl::StripSuffix(cwd, "/"), "/", p);
}

absl::StatusOr<int64_t> ParseByteSize(const std::string& text, const std::string& flag) {
  std::string s(absl::StripAsciiWhitespace(text));
  size_t digits = 0;
  while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits]))) ++digits;
  if (digits == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected a size such as 1073741824, 512M or 2G, got \"",
                     text, "\""));
  }
  int64_t number = 0;
  if (!absl::SimpleAtoi(s.substr(0, digits), &number)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": number out of range in \"", text, "\""));
  }
  std::string suffix = absl::AsciiStrToUpper(s.substr(digits));
  int shift = 0;
  if (suffix.empty() || suffix == "B") {
    shift = 0;
  } else if (suffix == "K" || suffix == "KB" || suffix == "KIB") {
    shift = 10;
  } else if (suffix == "M" || suffix == "MB" || suffix == "MIB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "GB" || suffix == "GIB") {
    shift = 30;
  } else if (suffix == "T" || suffix == "TB" || suffix == "TIB") {
    shift = 40;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, ": unknown size suffix \"", s.substr(digits), "\" (use K, M, G or T)"));
  }
  if (number > (std::numeric_limits<int64_t>::max() >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": size too large: ", text));
  }
  return number << shift;
}

absl::StatusOr<std::vector<int32_t>> ParseTokenIds(const std::string& text,
                                                   const std::string& flag) {
  std::vector<int32_t> ids;
  for (absl::string_view piece :
       absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"), absl::SkipEmpty())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": \"", piece, "\" is not a token id"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": no token ids given"));
  }
  return ids;
}

absl::StatusOr<JobState> ParseJobState(const std::string& text) {
  std::string s = absl::AsciiStrToLower(text);
  if (absl::StartsWith(s, "job_state_")) s = s.substr(10);
  if (s == "queued") return gptq::v1::JOB_STATE_QUEUED;
  if (s == "running") return gptq::v1::JOB_STATE_RUNNING;
  if (s == "succeeded") return gptq::v1::JOB_STATE_SUCCEEDED;
  if (s == "failed") return gptq::v1::JOB_STATE_FAILED;
  if (s == "cancelled" || s == "canceled") return gptq::v1::JOB_STATE_CANCELLED;
  if (s == "any" || s == "all") return gptq::v1::JOB_STATE_UNSPECIFIED;
  return absl::InvalidArgumentError(absl::StrCat(
      "--state: expected queued, running, succeeded, failed or cancelled, got \"", text, "\""));
}

std::string JobStateName(JobState state) {
  switch (state) {
    case gptq::v1::JOB_STATE_QUEUED: return "QUEUED";
    case gptq::v1::JOB_STATE_RUNNING: return "RUNNING";
    case gptq::v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case gptq::v1::JOB_STATE_FAILED: return "FAILED";
    case gptq::v1::JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
  }
}

absl::StatusOr<Command> ParseCommandLine(const std::vector<std::string>& args,
                                         const Environment& env) {
  Command cmd;
  cmd.global.server = env.server.empty() ? "127.0.0.1:50051" : env.server;
  cmd.global.token = env.auth_token;

  std::vector<Flag> flags;
  std::vector<std::string> positionals;
  bool only_positionals = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_positionals || a.size() < 2 || a[0] != '-' ) {
      positionals.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positionals = true;
      continue;
    }
    if (a == "-h") {
      flags.push_back({"help", ""});
      continue;
    }
    if (!absl::StartsWith(a, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option \"", a, "\" (flags start with --)"));
    }
    std::string body = a.substr(2);
    Flag f;
    const size_t eq = body.find('=');
    if (eq != std::string::npos) {
      f.name = body.substr(0, eq);
      f.value = body.substr(eq + 1);
      if (BoolFlags().count(f.name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", f.name, " takes no value (got \"", f.value, "\")"));
      }
    } else {
      f.name = body;
      if (!BoolFlags().count(f.name)) {
        // "--bits --wait" is a forgotten value, not the value "--wait" (use --bits=X for odd
        // values).
        if (i + 1 >= args.size() || absl::StartsWith(args[i + 1], "--")) {
          return absl::InvalidArgumentError(absl::StrCat("--", f.name, " needs a value"));
        }
        f.value = args[++i];
      }
    }
    flags.push_back(std::move(f));
  }

  if (positionals.empty()) {
    cmd.subcommand = Subcommand::kHelp;
  } else {
    GPTQ_ASSIGN_OR_RETURN(cmd.subcommand, ParseSubcommand(positionals[0]));
  }
  const std::string sub = SubcommandName(cmd.subcommand);

  // Positional arguments.
  const bool needs_id = cmd.subcommand == Subcommand::kGet ||
                        cmd.subcommand == Subcommand::kWatch ||
                        cmd.subcommand == Subcommand::kCancel ||
                        cmd.subcommand == Subcommand::kDelete;
  if (needs_id) {
    if (positionals.size() < 2 || positionals[1].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(sub, ": missing job ID"));
    }
    if (positionals.size() > 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(sub, ": unexpected argument \"", positionals[2], "\""));
    }
    cmd.job_id = positionals[1];
  } else if (positionals.size() > 1 && cmd.subcommand != Subcommand::kHelp) {
    return absl::InvalidArgumentError(
        absl::StrCat(sub, ": unexpected argument \"", positionals[1], "\""));
  }

  int num_calib_sources = 0;
  for (const Flag& f : flags) {
    if (f.name == "help") {
      cmd.subcommand = Subcommand::kHelp;
      return cmd;
    }
    if (GlobalFlags().count(f.name)) {
      if (f.name == "server") {
        if (f.value.empty()) return absl::InvalidArgumentError("--server: empty address");
        cmd.global.server = f.value;
      } else if (f.name == "json") {
        cmd.global.json = true;
      } else if (f.name == "token") {
        cmd.global.token = f.value;
      } else if (f.name == "tls-ca") {
        cmd.global.tls_ca = f.value;
      } else if (f.name == "reconnect-seconds") {
        GPTQ_ASSIGN_OR_RETURN(cmd.global.reconnect_seconds, ParseInt32(f.value, f.name));
      }
      continue;
    }
    switch (cmd.subcommand) {
      case Subcommand::kSubmit:
        if (!SubmitFlags().count(f.name)) {
          return absl::InvalidArgumentError(absl::StrCat("unknown flag --", f.name, " for submit"));
        }
        GPTQ_RETURN_IF_ERROR(ApplySubmitFlag(f, env, cmd, &num_calib_sources));
        break;
      case Subcommand::kList:
        if (f.name == "state") {
          GPTQ_ASSIGN_OR_RETURN(JobState s, ParseJobState(f.value));
          cmd.list.set_state(s);
        } else if (f.name == "label") {
          GPTQ_RETURN_IF_ERROR(ParseLabel(f.value, f.name, cmd.list.mutable_label_selector()));
        } else if (f.name == "page-size") {
          GPTQ_ASSIGN_OR_RETURN(int32_t x, ParseInt32(f.value, f.name));
          cmd.list.set_page_size(x);
        } else if (f.name == "page-token") {
          cmd.list.set_page_token(f.value);
        } else if (f.name == "all") {
          cmd.list_all = true;
        } else {
          return absl::InvalidArgumentError(absl::StrCat("unknown flag --", f.name, " for list"));
        }
        break;
      case Subcommand::kWatch:
        if (f.name == "from") {
          GPTQ_ASSIGN_OR_RETURN(cmd.from_sequence, ParseInt64(f.value, f.name));
          if (cmd.from_sequence < 0) {
            return absl::InvalidArgumentError("--from: must be >= 0");
          }
        } else {
          return absl::InvalidArgumentError(absl::StrCat("unknown flag --", f.name, " for watch"));
        }
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("unknown flag --", f.name, " for ", sub));
    }
  }

  if (cmd.subcommand == Subcommand::kSubmit) {
    const auto& spec = cmd.create.spec();
    if (spec.model_uri().empty()) {
      return absl::InvalidArgumentError("submit: --model is required");
    }
    if (spec.output_uri().empty()) {
      return absl::InvalidArgumentError("submit: --output is required");
    }
    if (num_calib_sources > 1) {
      return absl::InvalidArgumentError(
          "submit: give at most one calibration source (--dataset, --calib-file, --calib-text, "
          "--calib-tokens, --calib-tokens-file)");
    }
  }
  return cmd;
}

std::string UsageText() {
  return R"(Usage: gptqctl [GLOBAL FLAGS] SUBCOMMAND [ARGS] [FLAGS]

Global flags (anywhere on the line):
  --server HOST:PORT     server address (default $GPTQ_SERVER, else 127.0.0.1:50051)
  --json                 print the protobuf responses as JSON
  --token TOKEN          bearer token (default $GPTQ_AUTH_TOKEN)
  --tls-ca FILE          use TLS, trusting the PEM root certificates in FILE
  --reconnect-seconds N  how long --wait/watch keep reconnecting to a lost server (default 120)

Subcommands:
  submit --model URI --output URI [spec flags] [--wait]
      Creates a job. Only the flags given are set; the server applies the defaults.
      --bits N  --group-size N  --damp-percent X  --damp-auto-increment X
      --sym | --no-sym  --desc-act | --no-desc-act  --act-group-aware | --no-act-group-aware
      --static-groups | --no-static-groups  --true-sequential | --no-true-sequential
      --format gptq|gptq_v2
      calibration (one source): --dataset NAME | --calib-file PATH | --calib-text TEXT
          (repeatable) | --calib-tokens IDS (comma/space separated) | --calib-tokens-file FILE
      --nsamples N  --seqlen N  --seed N
      --eval a,b  --eval-seqlen N  --batch-size N  --max-shard-size SIZE (e.g. 512M, 2G)
      --device cuda|cpu|any  --label KEY=VALUE (repeatable)  --request-id ID  --priority N
      --wait   follow the job: progress by layer, then perplexity before/after and output
  get ID                          shows one job
  list [--state S] [--label K=V] [--page-size N] [--page-token T] [--all]
  watch ID [--from N]             streams the job's events until it ends
  cancel ID                       requests cancellation
  delete ID                       deletes a finished job (its output files stay)

Exit codes: 0 ok; 1 job FAILED or CANCELLED (submit --wait); 2 RPC error; 64 usage error.
)";
}

}  // namespace gptq::client
