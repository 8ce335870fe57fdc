#include "gptqctl.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "render.h"

namespace gptq::client {
namespace {

using gptq::v1::Job;
using gptq::v1::JobEvent;
using gptq::v1::QuantizationService;
using Clock = std::chrono::steady_clock;

bool IsTerminal(gptq::v1::JobState s) {
  return s == gptq::v1::JOB_STATE_SUCCEEDED || s == gptq::v1::JOB_STATE_FAILED ||
         s == gptq::v1::JOB_STATE_CANCELLED;
}

std::string GrpcCodeName(grpc::StatusCode code) { return CodeName(static_cast<int>(code)); }

void SetUp(grpc::ClientContext& ctx, const GlobalOptions& g) {
  if (!g.token.empty()) ctx.AddMetadata("authorization", absl::StrCat("Bearer ", g.token));
}

int ReportRpcError(Console& c, const std::string& rpc, const grpc::Status& s) {
  c.err << "gptqctl: " << rpc << " failed: " << GrpcCodeName(s.error_code()) << ": "
        << s.error_message() << "\n";
  return kExitRpcError;
}

std::string ToJson(const google::protobuf::Message& m, bool pretty) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = pretty;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!st.ok()) return absl::StrCat("{\"error\": \"cannot print as JSON\"}");
  // With add_whitespace the printer ends with a newline; without, it does not.
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Retries `call` while the server is unreachable, up to `reconnect_seconds`.
template <typename Call>
grpc::Status WithReconnect(const GlobalOptions& g, Call call) {
  const auto deadline = Clock::now() + std::chrono::seconds(g.reconnect_seconds);
  auto backoff = std::chrono::milliseconds(200);
  while (true) {
    grpc::Status s = call();
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || Clock::now() >= deadline) return s;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

class WaitRenderer {
 public:
  WaitRenderer(Console& c) : c_(c) {}

  void OnEvent(const JobEvent& e) {
    switch (e.kind_case()) {
      case JobEvent::kModuleProgress: {
        auto done = progress_.OnModule(e.module_progress());
        if (done) PrintLine(*done);
        if (c_.tty) Redraw();
        break;
      }
      case JobEvent::kStateChange: {
        const auto& s = e.state_change();
        if (IsTerminal(s.to()) || s.to() == gptq::v1::JOB_STATE_QUEUED) FinishLayer();
        std::string line = absl::StrCat("state ", JobStateName(s.from()), " -> ",
                                        JobStateName(s.to()));
        if (!s.reason().empty()) absl::StrAppend(&line, " (", s.reason(), ")");
        if (s.attempt() > 1) absl::StrAppend(&line, " attempt ", s.attempt());
        PrintLine(line);
        break;
      }
      case JobEvent::kPerplexity: {
        const auto& p = e.perplexity();
        if (p.phase() == "after") FinishLayer();
        progress_.set_stage("evaluate");
        PrintLine(absl::StrFormat("perplexity %s %s: %.4f (seqlen %d, %d tokens)", p.dataset(),
                                  p.phase(), p.value(), p.seqlen(), p.num_tokens()));
        break;
      }
      case JobEvent::kLog: {
        const auto& l = e.log();
        const char* prefix = "";
        if (l.level() == gptq::v1::LogLine::LEVEL_WARNING) prefix = "warning: ";
        if (l.level() == gptq::v1::LogLine::LEVEL_ERROR) prefix = "error: ";
        // The worker announces stages as "stage NAME[: detail]": shown in the live line too.
        if (absl::StartsWith(l.message(), "stage ")) {
          std::string stage = l.message().substr(6);
          stage = stage.substr(0, stage.find_first_of(": "));
          progress_.set_stage(stage);
        }
        PrintLine(absl::StrCat(prefix, l.message()));
        if (c_.tty) Redraw();
        break;
      }
      case JobEvent::kArtifact:
        FinishLayer();
        progress_.set_stage("write");
        if (c_.tty) Redraw();
        break;
      default:
        break;
    }
  }

  void Done() {
    FinishLayer();
    ClearLive();
    c_.out.flush();
  }

 private:
  void FinishLayer() {
    auto line = progress_.Finish();
    if (line) PrintLine(*line);
  }
  void ClearLive() {
    if (c_.tty && live_) {
      c_.out << "\r\x1b[K";
      live_ = false;
    }
  }
  void PrintLine(const std::string& line) {
    ClearLive();
    c_.out << line << "\n";
    c_.out.flush();
  }
  void Redraw() {
    c_.out << "\r\x1b[K" << progress_.StatusLine();
    c_.out.flush();
    live_ = true;
  }

  Console& c_;
  LayerProgress progress_;
  bool live_ = false;
};

// Follows the job's events until the stream ends (the job is terminal), reconnecting from the
// next sequence number when the server goes away; then prints the final job.
int WaitForJob(const Command& cmd, const std::string& id, QuantizationService::StubInterface& stub,
               Console& c) {
  WaitRenderer renderer(c);
  int64_t next_sequence = 1;
  const auto reconnect_window = std::chrono::seconds(cmd.global.reconnect_seconds);
  auto give_up = Clock::now() + reconnect_window;
  auto backoff = std::chrono::milliseconds(200);
  while (true) {
    grpc::ClientContext ctx;
    SetUp(ctx, cmd.global);
    gptq::v1::WatchJobRequest req;
    req.set_id(id);
    req.set_from_sequence(next_sequence);
    auto reader = stub.WatchJob(&ctx, req);
    JobEvent e;
    while (reader->Read(&e)) {
      if (e.sequence() < next_sequence) continue;  // already seen before a reconnect
      next_sequence = e.sequence() + 1;
      give_up = Clock::now() + reconnect_window;
      backoff = std::chrono::milliseconds(200);
      if (!cmd.global.json) renderer.OnEvent(e);
    }
    grpc::Status s = reader->Finish();
    if (s.ok()) break;
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE && Clock::now() < give_up) {
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
      continue;
    }
    renderer.Done();
    return ReportRpcError(c, "WatchJob", s);
  }
  renderer.Done();

  Job job;
  grpc::Status s = WithReconnect(cmd.global, [&] {
    grpc::ClientContext ctx;
    SetUp(ctx, cmd.global);
    gptq::v1::GetJobRequest req;
    req.set_id(id);
    return stub.GetJob(&ctx, req, &job);
  });
  if (!s.ok()) return ReportRpcError(c, "GetJob", s);
  if (cmd.global.json) {
    c.out << ToJson(job, true) << "\n";
  } else if (job.state() == gptq::v1::JOB_STATE_SUCCEEDED) {
    c.out << "job " << job.id() << " succeeded\n" << FormatResults(job);
  }
  if (!IsTerminal(job.state())) {
    c.err << "gptqctl: the event stream ended but job " << id << " is "
          << JobStateName(job.state()) << "\n";
    return kExitRpcError;
  }
  if (job.state() != gptq::v1::JOB_STATE_SUCCEEDED) {
    c.err << "gptqctl: " << FormatTerminalProblem(job) << "\n";
    return kExitJobFailed;
  }
  return kExitOk;
}

int Submit(const Command& cmd, QuantizationService::StubInterface& stub, Console& c) {
  Job job;
  grpc::ClientContext ctx;
  SetUp(ctx, cmd.global);
  grpc::Status s = stub.CreateJob(&ctx, cmd.create, &job);
  if (!s.ok()) return ReportRpcError(c, "CreateJob", s);
  if (!cmd.wait) {
    if (cmd.global.json) {
      c.out << ToJson(job, true) << "\n";
    } else {
      c.out << job.id() << "\n";
    }
    return kExitOk;
  }
  if (!cmd.global.json) c.out << "job " << job.id() << " submitted\n";
  return WaitForJob(cmd, job.id(), stub, c);
}

int Get(const Command& cmd, QuantizationService::StubInterface& stub, Console& c) {
  Job job;
  grpc::ClientContext ctx;
  SetUp(ctx, cmd.global);
  gptq::v1::GetJobRequest req;
  req.set_id(cmd.job_id);
  grpc::Status s = stub.GetJob(&ctx, req, &job);
  if (!s.ok()) return ReportRpcError(c, "GetJob", s);
  c.out << (cmd.global.json ? ToJson(job, true) + "\n" : FormatJob(job));
  return kExitOk;
}

int List(const Command& cmd, QuantizationService::StubInterface& stub, Console& c) {
  gptq::v1::ListJobsRequest req = cmd.list;
  gptq::v1::ListJobsResponse all;
  while (true) {
    gptq::v1::ListJobsResponse resp;
    grpc::ClientContext ctx;
    SetUp(ctx, cmd.global);
    grpc::Status s = stub.ListJobs(&ctx, req, &resp);
    if (!s.ok()) return ReportRpcError(c, "ListJobs", s);
    for (auto& j : *resp.mutable_jobs()) *all.add_jobs() = std::move(j);
    all.set_next_page_token(resp.next_page_token());
    if (!cmd.list_all || resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  if (cmd.global.json) {
    c.out << ToJson(all, true) << "\n";
    return kExitOk;
  }
  c.out << FormatJobTable({all.jobs().begin(), all.jobs().end()});
  if (!all.next_page_token().empty()) {
    c.out << "(more: --page-token " << all.next_page_token() << ", or --all)\n";
  }
  return kExitOk;
}

int Watch(const Command& cmd, QuantizationService::StubInterface& stub, Console& c) {
  int64_t next_sequence = cmd.from_sequence;
  const auto reconnect_window = std::chrono::seconds(cmd.global.reconnect_seconds);
  auto give_up = Clock::now() + reconnect_window;
  while (true) {
    grpc::ClientContext ctx;
    SetUp(ctx, cmd.global);
    gptq::v1::WatchJobRequest req;
    req.set_id(cmd.job_id);
    req.set_from_sequence(next_sequence);
    auto reader = stub.WatchJob(&ctx, req);
    JobEvent e;
    while (reader->Read(&e)) {
      if (e.sequence() < next_sequence) continue;
      next_sequence = e.sequence() + 1;
      give_up = Clock::now() + reconnect_window;
      c.out << (cmd.global.json ? ToJson(e, false) : FormatEvent(e)) << "\n";
      c.out.flush();
    }
    grpc::Status s = reader->Finish();
    if (s.ok()) return kExitOk;
    // Reconnect only after at least one event came through: a first-call UNAVAILABLE is
    // reported like any RPC error.
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE && next_sequence > cmd.from_sequence &&
        Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      continue;
    }
    return ReportRpcError(c, "WatchJob", s);
  }
}

int Cancel(const Command& cmd, QuantizationService::StubInterface& stub, Console& c) {
  Job job;
  grpc::ClientContext ctx;
  SetUp(ctx, cmd.global);
  gptq::v1::CancelJobRequest req;
  req.set_id(cmd.job_id);
  grpc::Status s = stub.CancelJob(&ctx, req, &job);
  if (!s.ok()) return ReportRpcError(c, "CancelJob", s);
  if (cmd.global.json) {
    c.out << ToJson(job, true) << "\n";
  } else {
    c.out << "job " << job.id() << ": " << JobStateName(job.state())
          << (job.cancel_requested() && !IsTerminal(job.state()) ? " (cancel requested)" : "")
          << "\n";
  }
  return kExitOk;
}

int Delete(const Command& cmd, QuantizationService::StubInterface& stub, Console& c) {
  gptq::v1::DeleteJobResponse resp;
  grpc::ClientContext ctx;
  SetUp(ctx, cmd.global);
  gptq::v1::DeleteJobRequest req;
  req.set_id(cmd.job_id);
  grpc::Status s = stub.DeleteJob(&ctx, req, &resp);
  if (!s.ok()) return ReportRpcError(c, "DeleteJob", s);
  if (cmd.global.json) {
    c.out << ToJson(resp, true) << "\n";
  } else {
    c.out << "deleted job " << cmd.job_id << "\n";
  }
  return kExitOk;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const GlobalOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!options.tls_ca.empty()) {
    std::ifstream in(options.tls_ca, std::ios::binary);
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-ca: cannot read \"", options.tls_ca, "\""));
    }
    std::stringstream pem;
    pem << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem.str();
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(options.server, creds, args);
}

int RunCommand(const Command& command, QuantizationService::StubInterface& stub,
               Console& console) {
  switch (command.subcommand) {
    case Subcommand::kSubmit: return Submit(command, stub, console);
    case Subcommand::kGet: return Get(command, stub, console);
    case Subcommand::kList: return List(command, stub, console);
    case Subcommand::kWatch: return Watch(command, stub, console);
    case Subcommand::kCancel: return Cancel(command, stub, console);
    case Subcommand::kDelete: return Delete(command, stub, console);
    case Subcommand::kHelp:
      console.out << UsageText();
      return kExitOk;
  }
  return kExitUsage;
}

int RunGptqctl(const std::vector<std::string>& args, const Environment& env, Console& console) {
  absl::StatusOr<Command> cmd = ParseCommandLine(args, env);
  if (!cmd.ok()) {
    console.err << "gptqctl: " << cmd.status().message() << "\n"
                << "Run 'gptqctl help' for usage.\n";
    return kExitUsage;
  }
  if (cmd->subcommand == Subcommand::kHelp) {
    console.out << UsageText();
    return kExitOk;
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(cmd->global);
  if (!channel.ok()) {
    console.err << "gptqctl: " << channel.status().message() << "\n";
    return kExitUsage;
  }
  auto stub = QuantizationService::NewStub(*channel);
  return RunCommand(*cmd, *stub, console);
}

}  // namespace gptq::client
