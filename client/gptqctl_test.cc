// Drives gptqctl's whole CLI (RunGptqctl) over a real gRPC channel against an in-process fake
// QuantizationService, checking output and exit codes.
#include "gptqctl.h"

#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"

namespace gptq::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using gptq::v1::Job;
using gptq::v1::JobEvent;

class FakeService final : public gptq::v1::QuantizationService::Service {
 public:
  std::string required_token;  // when set, calls must carry "Bearer <token>"

  grpc::Status CreateJob(grpc::ServerContext* ctx, const gptq::v1::CreateJobRequest* req,
                         Job* job) override {
    if (auto s = CheckAuth(ctx); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    last_create_ = *req;
    if (req->spec().has_bits() && req->spec().bits() == 5) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "spec.bits: must be one of 2, 3, 4, 8 (got 5)");
    }
    Job j;
    const std::string& model = req->spec().model_uri();
    j.set_id(model == "/fail" ? "job-fail" : model == "/cancel" ? "job-cancel"
                             : model == "/flaky"                   ? "job-flaky"
                                                                   : "job-ok");
    j.set_state(gptq::v1::JOB_STATE_QUEUED);
    *j.mutable_spec() = req->spec();
    *j.mutable_labels() = req->labels();
    jobs_[j.id()] = j;
    *job = j;
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* ctx, const gptq::v1::GetJobRequest* req,
                      Job* job) override {
    if (auto s = CheckAuth(ctx); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(req->id());
    if (it == jobs_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("job ", req->id(), " not found"));
    }
    *job = it->second;
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx, const gptq::v1::ListJobsRequest* req,
                        gptq::v1::ListJobsResponse* resp) override {
    if (auto s = CheckAuth(ctx); !s.ok()) return s;
    // Five jobs "l0".."l4"; the page token is the index of the next job.
    const int page_size = req->page_size() > 0 ? req->page_size() : 50;
    int start = req->page_token().empty() ? 0 : std::stoi(req->page_token());
    for (int i = start; i < 5 && i < start + page_size; ++i) {
      Job* j = resp->add_jobs();
      j->set_id(absl::StrCat("l", i));
      j->set_state(gptq::v1::JOB_STATE_QUEUED);
    }
    if (start + page_size < 5) resp->set_next_page_token(std::to_string(start + page_size));
    std::lock_guard<std::mutex> lock(mu_);
    list_requests_.push_back(*req);
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext* ctx, const gptq::v1::CancelJobRequest* req,
                         Job* job) override {
    if (auto s = CheckAuth(ctx); !s.ok()) return s;
    job->set_id(req->id());
    job->set_state(gptq::v1::JOB_STATE_RUNNING);
    job->set_cancel_requested(true);
    return grpc::Status::OK;
  }

  grpc::Status DeleteJob(grpc::ServerContext* ctx, const gptq::v1::DeleteJobRequest* req,
                         gptq::v1::DeleteJobResponse*) override {
    if (auto s = CheckAuth(ctx); !s.ok()) return s;
    if (req->id() == "running") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "job running is not terminal");
    }
    return grpc::Status::OK;
  }

  // Events for a two-layer job with two modules per layer, ending in the state the job's model
  // asks for. "job-flaky" drops the stream (UNAVAILABLE) after its first three events once.
  grpc::Status WatchJob(grpc::ServerContext* ctx, const gptq::v1::WatchJobRequest* req,
                        grpc::ServerWriter<JobEvent>* writer) override {
    if (auto s = CheckAuth(ctx); !s.ok()) return s;
    std::vector<JobEvent> events;
    gptq::v1::JobState final_state;
    {
      std::lock_guard<std::mutex> lock(mu_);
      watch_from_.push_back(req->from_sequence());
      auto it = jobs_.find(req->id());
      if (it == jobs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such job");
      final_state = req->id() == "job-fail"     ? gptq::v1::JOB_STATE_FAILED
                    : req->id() == "job-cancel" ? gptq::v1::JOB_STATE_CANCELLED
                                                : gptq::v1::JOB_STATE_SUCCEEDED;
      events = Script(req->id(), final_state);
      // The job is terminal once its events are out.
      Job& job = it->second;
      job.set_state(final_state);
      if (final_state == gptq::v1::JOB_STATE_FAILED) {
        job.mutable_error()->set_code(9);
        job.mutable_error()->set_message("cannot read model.safetensors");
      } else if (final_state == gptq::v1::JOB_STATE_SUCCEEDED) {
        auto* r = job.mutable_results();
        auto* p = r->add_perplexity();
        p->set_dataset("tinystories");
        p->set_seqlen(64);
        p->set_num_tokens(4096);
        p->set_before(10.0);
        p->set_after(11.0);
        r->set_output_location("/out/q");
        r->add_files()->set_path("model.safetensors");
      }
    }
    const int64_t from = std::max<int64_t>(1, req->from_sequence());
    for (const JobEvent& e : events) {
      if (e.sequence() < from) continue;
      writer->Write(e);
      if (req->id() == "job-flaky" && e.sequence() == 3 && !dropped_once_) {
        dropped_once_ = true;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server going away");
      }
    }
    return grpc::Status::OK;
  }

  gptq::v1::CreateJobRequest last_create() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_create_;
  }
  std::vector<int64_t> watch_from() {
    std::lock_guard<std::mutex> lock(mu_);
    return watch_from_;
  }
  std::vector<gptq::v1::ListJobsRequest> list_requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return list_requests_;
  }

 private:
  grpc::Status CheckAuth(grpc::ServerContext* ctx) {
    if (required_token.empty()) return grpc::Status::OK;
    auto it = ctx->client_metadata().find("authorization");
    if (it == ctx->client_metadata().end() ||
        std::string(it->second.data(), it->second.size()) != "Bearer " + required_token) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token");
    }
    return grpc::Status::OK;
  }

  static std::vector<JobEvent> Script(const std::string& id, gptq::v1::JobState final_state) {
    std::vector<JobEvent> events;
    auto add = [&](auto fill) {
      JobEvent e;
      e.set_job_id(id);
      e.set_sequence(static_cast<int64_t>(events.size()) + 1);
      fill(e);
      events.push_back(e);
    };
    add([](JobEvent& e) {
      e.mutable_state_change()->set_from(gptq::v1::JOB_STATE_QUEUED);
      e.mutable_state_change()->set_to(gptq::v1::JOB_STATE_RUNNING);
      e.mutable_state_change()->set_reason("leased by worker w-1");
      e.mutable_state_change()->set_attempt(1);
    });
    add([](JobEvent& e) {
      e.mutable_perplexity()->set_dataset("tinystories");
      e.mutable_perplexity()->set_phase("before");
      e.mutable_perplexity()->set_value(10.0);
    });
    add([](JobEvent& e) {
      e.mutable_log()->set_level(gptq::v1::LogLine::LEVEL_INFO);
      e.mutable_log()->set_message("stage quantize: layer 1/2");
    });
    int n = 0;
    for (int layer = 0; layer < 2; ++layer) {
      for (const char* module : {"self_attn.q_proj", "mlp.down_proj"}) {
        ++n;
        add([&](JobEvent& e) {
          auto* m = e.mutable_module_progress();
          m->set_layer(layer);
          m->set_num_layers(2);
          m->set_module(module);
          m->set_loss(0.5);
          m->set_fraction(n / 4.0);
        });
      }
    }
    if (final_state == gptq::v1::JOB_STATE_SUCCEEDED) {
      add([](JobEvent& e) {
        e.mutable_perplexity()->set_dataset("tinystories");
        e.mutable_perplexity()->set_phase("after");
        e.mutable_perplexity()->set_value(11.0);
      });
    }
    add([&](JobEvent& e) {
      e.mutable_state_change()->set_from(gptq::v1::JOB_STATE_RUNNING);
      e.mutable_state_change()->set_to(final_state);
      e.mutable_state_change()->set_attempt(1);
      if (final_state == gptq::v1::JOB_STATE_FAILED) {
        e.mutable_state_change()->set_reason("cannot read model.safetensors");
      }
    });
    return events;
  }

  std::mutex mu_;
  gptq::v1::CreateJobRequest last_create_;
  std::map<std::string, Job> jobs_;
  std::vector<int64_t> watch_from_;
  std::vector<gptq::v1::ListJobsRequest> list_requests_;
  bool dropped_once_ = false;
};

class GptqctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    env_.server = absl::StrCat("127.0.0.1:", port);
    env_.cwd = "/work";
  }
  void TearDown() override { server_->Shutdown(); }

  int Run(const std::vector<std::string>& args, bool tty = false) {
    out_.str("");
    err_.str("");
    Console console{out_, err_, tty};
    return RunGptqctl(args, env_, console);
  }

  FakeService service_;
  std::unique_ptr<grpc::Server> server_;
  Environment env_;
  std::ostringstream out_, err_;
};

TEST_F(GptqctlTest, SubmitSendsTheSpecAndPrintsTheId) {
  EXPECT_EQ(Run({"submit", "--model", "/m", "--output", "out", "--bits", "3", "--label",
                 "k=v", "--request-id", "r1", "--priority", "7"}),
            0)
      << err_.str();
  EXPECT_EQ(out_.str(), "job-ok\n");
  auto req = service_.last_create();
  EXPECT_EQ(req.spec().model_uri(), "/m");
  EXPECT_EQ(req.spec().output_uri(), "/work/out");
  EXPECT_EQ(req.spec().bits(), 3);
  EXPECT_FALSE(req.spec().has_group_size());
  EXPECT_EQ(req.labels().at("k"), "v");
  EXPECT_EQ(req.request_id(), "r1");
  EXPECT_EQ(req.priority(), 7);
}

TEST_F(GptqctlTest, SubmitWaitShowsOneLinePerLayerAndTheResults) {
  ASSERT_EQ(Run({"submit", "--model", "/m", "--output", "/o", "--wait"}), 0) << err_.str();
  const std::string out = out_.str();
  EXPECT_THAT(out, HasSubstr("job job-ok submitted\n"));
  EXPECT_THAT(out, HasSubstr("state QUEUED -> RUNNING (leased by worker w-1)\n"));
  EXPECT_THAT(out, HasSubstr("perplexity tinystories before: 10.0000"));
  EXPECT_THAT(out, HasSubstr("layer 1/2 [###############---------------]  50%  2 modules"));
  EXPECT_THAT(out, HasSubstr("layer 2/2 [##############################] 100%  2 modules"));
  EXPECT_THAT(out, HasSubstr("state RUNNING -> SUCCEEDED\n"));
  EXPECT_THAT(out, HasSubstr("\nstage quantize: layer 1/2\n"));
  EXPECT_THAT(out, HasSubstr("job job-ok succeeded\n"));
  EXPECT_THAT(out, HasSubstr("tinystories         64       4096    10.0000    11.0000  +10.00%"));
  EXPECT_THAT(out, HasSubstr("output: /out/q (1 file"));
  // Not a TTY: no carriage returns, and exactly one line per layer.
  EXPECT_THAT(out, Not(HasSubstr("\r")));
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  int layer_lines = 0;
  for (const auto& l : lines) layer_lines += l.rfind("layer ", 0) == 0 ? 1 : 0;
  EXPECT_EQ(layer_lines, 2) << out;
  // The layer lines come before the "after" perplexity.
  EXPECT_LT(out.find("layer 2/2"), out.find("perplexity tinystories after"));
}

TEST_F(GptqctlTest, SubmitWaitOnATtyRedrawsOneLine) {
  ASSERT_EQ(Run({"submit", "--model", "/m", "--output", "/o", "--wait"}, /*tty=*/true), 0);
  EXPECT_THAT(out_.str(), HasSubstr("\r\x1b[Klayer 1/2 [#######"));
  EXPECT_THAT(out_.str(), HasSubstr("quantize self_attn.q_proj"));
}

TEST_F(GptqctlTest, FailedJobExitsOneAndSaysWhy) {
  EXPECT_EQ(Run({"submit", "--model", "/fail", "--output", "/o", "--wait"}), 1);
  EXPECT_THAT(err_.str(), HasSubstr("job job-fail failed: FAILED_PRECONDITION (9): cannot read "
                                    "model.safetensors"));
}

TEST_F(GptqctlTest, CancelledJobExitsOne) {
  EXPECT_EQ(Run({"submit", "--model", "/cancel", "--output", "/o", "--wait"}), 1);
  EXPECT_THAT(err_.str(), HasSubstr("job job-cancel was cancelled"));
}

TEST_F(GptqctlTest, WaitResumesAfterTheStreamDropsWithoutRepeatingEvents) {
  ASSERT_EQ(Run({"submit", "--model", "/flaky", "--output", "/o", "--wait"}), 0) << err_.str();
  EXPECT_THAT(service_.watch_from(), ::testing::ElementsAre(1, 4));  // dropped after #3
  const std::string out = out_.str();
  EXPECT_EQ(out.find("perplexity tinystories before"),
            out.rfind("perplexity tinystories before"));
  EXPECT_THAT(out, HasSubstr("layer 2/2"));
}

TEST_F(GptqctlTest, RpcErrorsExitTwoWithCodeAndMessage) {
  EXPECT_EQ(Run({"submit", "--model", "/m", "--output", "/o", "--bits", "5"}), 2);
  EXPECT_THAT(err_.str(),
              HasSubstr("CreateJob failed: INVALID_ARGUMENT: spec.bits: must be one of"));
  EXPECT_EQ(Run({"get", "nope"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("GetJob failed: NOT_FOUND: job nope not found"));
  EXPECT_EQ(Run({"delete", "running"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("DeleteJob failed: FAILED_PRECONDITION"));
}

TEST_F(GptqctlTest, UnreachableServerExitsTwo) {
  server_->Shutdown();
  EXPECT_EQ(Run({"get", "x"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("UNAVAILABLE"));
}

TEST_F(GptqctlTest, UsageErrorsExit64) {
  EXPECT_EQ(Run({"submit", "--model", "/m"}), 64);
  EXPECT_THAT(err_.str(), HasSubstr("--output is required"));
  EXPECT_EQ(Run({"get"}), 64);
  EXPECT_EQ(Run({"get", "x", "--tls-ca", "/nonexistent/ca.pem"}), 64);
  EXPECT_THAT(err_.str(), HasSubstr("--tls-ca"));
  EXPECT_EQ(Run({"help"}), 0);
  EXPECT_THAT(out_.str(), HasSubstr("Usage: gptqctl"));
}

TEST_F(GptqctlTest, JsonOutputRoundTrips) {
  ASSERT_EQ(Run({"submit", "--model", "/m", "--output", "/o", "--label", "a=b"}), 0);
  ASSERT_EQ(Run({"--json", "get", "job-ok"}), 0) << err_.str();
  Job parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out_.str(), &parsed).ok()) << out_.str();
  EXPECT_EQ(parsed.id(), "job-ok");
  EXPECT_EQ(parsed.spec().model_uri(), "/m");
  EXPECT_EQ(parsed.labels().at("a"), "b");
  EXPECT_THAT(out_.str(), HasSubstr("\"modelUri\": \"/m\""));
}

TEST_F(GptqctlTest, WatchPrintsEveryEventAndJsonLines) {
  ASSERT_EQ(Run({"submit", "--model", "/m", "--output", "/o"}), 0);
  ASSERT_EQ(Run({"watch", "job-ok"}), 0) << err_.str();
  EXPECT_THAT(out_.str(), HasSubstr("#1 state QUEUED -> RUNNING (leased by worker w-1) attempt 1\n"));
  EXPECT_THAT(out_.str(), HasSubstr("#3 log info: stage quantize: layer 1/2\n"));
  EXPECT_THAT(out_.str(), HasSubstr("#9 state RUNNING -> SUCCEEDED attempt 1\n"));
  ASSERT_EQ(Run({"watch", "job-ok", "--from", "8", "--json"}), 0);
  std::vector<std::string> lines = absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << out_.str();
  JobEvent e;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(lines[0], &e).ok());
  EXPECT_EQ(e.sequence(), 8);
  EXPECT_EQ(e.perplexity().phase(), "after");
}

TEST_F(GptqctlTest, ListFollowsPagesWithAll) {
  ASSERT_EQ(Run({"list", "--page-size", "2", "--state", "queued", "--label", "x=y"}), 0);
  EXPECT_THAT(out_.str(), HasSubstr("l1 "));
  EXPECT_THAT(out_.str(), Not(HasSubstr("l2 ")));
  EXPECT_THAT(out_.str(), HasSubstr("(more: --page-token 2, or --all)"));
  ASSERT_EQ(Run({"list", "--page-size", "2", "--all", "--json"}), 0);
  gptq::v1::ListJobsResponse all;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out_.str(), &all).ok());
  ASSERT_EQ(all.jobs_size(), 5);
  EXPECT_EQ(all.jobs(4).id(), "l4");
  EXPECT_TRUE(all.next_page_token().empty());
  auto reqs = service_.list_requests();
  ASSERT_EQ(reqs.size(), 4u);
  EXPECT_EQ(reqs[0].state(), gptq::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(reqs[0].label_selector().at("x"), "y");
  EXPECT_EQ(reqs[3].page_token(), "4");
}

TEST_F(GptqctlTest, CancelPrintsTheState) {
  ASSERT_EQ(Run({"cancel", "job-9"}), 0);
  EXPECT_EQ(out_.str(), "job job-9: RUNNING (cancel requested)\n");
}

TEST_F(GptqctlTest, BearerTokenFromFlagOrEnvironment) {
  service_.required_token = "s3cret";
  EXPECT_EQ(Run({"get", "x"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("UNAUTHENTICATED"));
  EXPECT_EQ(Run({"cancel", "x", "--token", "s3cret"}), 0) << err_.str();
  env_.auth_token = "s3cret";
  EXPECT_EQ(Run({"cancel", "x"}), 0) << err_.str();
}

}  // namespace
}  // namespace gptq::client
