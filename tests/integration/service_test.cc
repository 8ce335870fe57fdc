// The real gptq-server without workers: validation (every invalid input gives INVALID_ARGUMENT
// naming the field, and nothing crashes), the job resource's life without a worker (queued
// cancel, delete, list filters, idempotent create), and gptqctl's exit codes against it.
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "harness.h"

namespace gptq::testing {
namespace {

using ::testing::HasSubstr;
using gptq::v1::CreateJobRequest;
using gptq::v1::Job;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GPTQ_REQUIRE_SERVER();
    model_dir_ = tmp_.Sub("models/m");
    outputs_ = tmp_.Sub("outputs");
    std::filesystem::create_directories(model_dir_);
    std::filesystem::create_directories(outputs_);
    ServerOptions opts;
    opts.allowed_model_roots = {tmp_.Sub("models")};
    opts.allowed_output_roots = {outputs_};
    server_ = std::make_unique<Server>(tmp_.path(), opts);
    ASSERT_TRUE(server_->Start().ok()) << server_->LogTail();
  }

  CreateJobRequest Valid(const std::string& out = "q") {
    CreateJobRequest req;
    req.mutable_spec()->set_model_uri(model_dir_);
    req.mutable_spec()->set_output_uri(outputs_ + "/" + out);
    return req;
  }

  grpc::Status Create(const CreateJobRequest& req, Job* job) {
    grpc::ClientContext ctx;
    return server_->stub().CreateJob(&ctx, req, job);
  }

  CommandResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {GptqctlBinary(), "--server", server_->address()});
    return RunCommand(args, std::chrono::seconds(60));
  }

  TempDir tmp_;
  std::string model_dir_, outputs_;
  std::unique_ptr<Server> server_;
};

TEST_F(ServiceTest, EachInvalidInputIsInvalidArgumentNamingTheField) {
  struct Case {
    std::string name;
    std::function<void(CreateJobRequest&)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"bits 5", [](auto& r) { r.mutable_spec()->set_bits(5); }, "spec.bits"},
      {"bits 0", [](auto& r) { r.mutable_spec()->set_bits(0); }, "spec.bits"},
      {"group_size 0", [](auto& r) { r.mutable_spec()->set_group_size(0); }, "spec.group_size"},
      {"group_size -2", [](auto& r) { r.mutable_spec()->set_group_size(-2); }, "spec.group_size"},
      {"damp 0", [](auto& r) { r.mutable_spec()->set_damp_percent(0); }, "spec.damp_percent"},
      {"damp 1", [](auto& r) { r.mutable_spec()->set_damp_percent(1.0); }, "spec.damp_percent"},
      {"damp -0.1", [](auto& r) { r.mutable_spec()->set_damp_percent(-0.1); },
       "spec.damp_percent"},
      {"damp_auto_increment 2",
       [](auto& r) { r.mutable_spec()->set_damp_auto_increment(2); },
       "spec.damp_auto_increment"},
      {"format 7",
       [](auto& r) { r.mutable_spec()->set_format(static_cast<gptq::v1::CheckpointFormat>(7)); },
       "spec.format"},
      {"nsamples 0", [](auto& r) { r.mutable_spec()->mutable_calibration()->set_nsamples(0); },
       "spec.calibration.nsamples"},
      {"nsamples 4097",
       [](auto& r) { r.mutable_spec()->mutable_calibration()->set_nsamples(4097); },
       "spec.calibration.nsamples"},
      {"seqlen 7", [](auto& r) { r.mutable_spec()->mutable_calibration()->set_seqlen(7); },
       "spec.calibration.seqlen"},
      {"seqlen 32769",
       [](auto& r) { r.mutable_spec()->mutable_calibration()->set_seqlen(32769); },
       "spec.calibration.seqlen"},
      {"unknown dataset",
       [](auto& r) { r.mutable_spec()->mutable_calibration()->set_dataset("imagenet"); },
       "spec.calibration"},
      {"s3 model", [](auto& r) { r.mutable_spec()->set_model_uri("s3://bucket/model"); },
       "spec.model_uri"},
      {"http output",
       [](auto& r) { r.mutable_spec()->set_output_uri("http://example.com/out"); },
       "spec.output_uri"},
      {"relative model", [](auto& r) { r.mutable_spec()->set_model_uri("models/m"); },
       "spec.model_uri"},
      {"missing model", [](auto& r) { r.mutable_spec()->set_model_uri(""); }, "spec.model_uri"},
      {"model outside roots", [](auto& r) { r.mutable_spec()->set_model_uri("/usr/share"); },
       "spec.model_uri"},
      {"output outside roots", [](auto& r) { r.mutable_spec()->set_output_uri("/tmp/elsewhere"); },
       "spec.output_uri"},
      {"output escapes roots with ..",
       [this](auto& r) { r.mutable_spec()->set_output_uri(outputs_ + "/../escape"); },
       "spec.output_uri"},
      {"batch_size 0", [](auto& r) { r.mutable_spec()->set_batch_size(0); }, "spec.batch_size"},
      {"max_shard_size 1000",
       [](auto& r) { r.mutable_spec()->set_max_shard_size_bytes(1000); },
       "spec.max_shard_size_bytes"},
      {"priority 101", [](auto& r) { r.set_priority(101); }, "priority"},
      {"label key", [](auto& r) { (*r.mutable_labels())["Bad Key"] = "v"; }, "labels"},
  };
  for (const Case& c : cases) {
    CreateJobRequest req = Valid(c.name);
    c.mutate(req);
    Job job;
    grpc::Status s = Create(req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.name << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.field)) << c.name;
  }
  // Nothing crashed and nothing was stored.
  grpc::ClientContext ctx;
  gptq::v1::ListJobsResponse list;
  ASSERT_TRUE(server_->stub().ListJobs(&ctx, {}, &list).ok()) << server_->LogTail();
  EXPECT_EQ(list.jobs_size(), 0);
}

TEST_F(ServiceTest, JobLifeWithoutWorkers) {
  CreateJobRequest req = Valid("a");
  req.set_request_id("req-1");
  (*req.mutable_labels())["team"] = "nlp";
  Job a;
  ASSERT_TRUE(Create(req, &a).ok());
  EXPECT_EQ(a.state(), gptq::v1::JOB_STATE_QUEUED);
  EXPECT_FALSE(a.spec().has_bits()) << "the spec is stored as submitted";

  // Idempotent on request_id, even with a different spec.
  CreateJobRequest again = req;
  again.mutable_spec()->set_bits(8);
  Job a2;
  ASSERT_TRUE(Create(again, &a2).ok());
  EXPECT_EQ(a2.id(), a.id());
  EXPECT_FALSE(a2.spec().has_bits());

  Job b;
  ASSERT_TRUE(Create(Valid("b"), &b).ok());
  EXPECT_NE(b.id(), a.id());

  {
    grpc::ClientContext ctx;
    gptq::v1::ListJobsRequest lr;
    (*lr.mutable_label_selector())["team"] = "nlp";
    gptq::v1::ListJobsResponse resp;
    ASSERT_TRUE(server_->stub().ListJobs(&ctx, lr, &resp).ok());
    ASSERT_EQ(resp.jobs_size(), 1);
    EXPECT_EQ(resp.jobs(0).id(), a.id());
  }
  {
    grpc::ClientContext ctx;
    gptq::v1::DeleteJobRequest dr;
    dr.set_id(a.id());
    gptq::v1::DeleteJobResponse resp;
    EXPECT_EQ(server_->stub().DeleteJob(&ctx, dr, &resp).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    gptq::v1::CancelJobRequest cr;
    cr.set_id(a.id());
    Job cancelled;
    ASSERT_TRUE(server_->stub().CancelJob(&ctx, cr, &cancelled).ok());
    EXPECT_EQ(cancelled.state(), gptq::v1::JOB_STATE_CANCELLED);
  }
  // The watch of a cancelled queued job replays QUEUED... -> CANCELLED and ends.
  auto events = WatchAll(server_->stub(), a.id(), std::chrono::seconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_FALSE(events->empty());
  EXPECT_EQ(events->back().state_change().to(), gptq::v1::JOB_STATE_CANCELLED);
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].sequence(), int64_t(i) + 1);
  {
    grpc::ClientContext ctx;
    gptq::v1::DeleteJobRequest dr;
    dr.set_id(a.id());
    gptq::v1::DeleteJobResponse resp;
    EXPECT_TRUE(server_->stub().DeleteJob(&ctx, dr, &resp).ok());
  }
  {
    grpc::ClientContext ctx;
    gptq::v1::GetJobRequest gr;
    gr.set_id(a.id());
    Job j;
    EXPECT_EQ(server_->stub().GetJob(&ctx, gr, &j).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(ServiceTest, GptqctlExitCodesAgainstTheRealServer) {
  CommandResult r = Ctl({"submit", "--model", model_dir_, "--output", outputs_ + "/x", "--bits",
                         "5"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(r.err, HasSubstr("spec.bits"));

  r = Ctl({"submit", "--model", model_dir_, "--output", "/elsewhere/x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("spec.output_uri"));

  r = Ctl({"submit", "--model", model_dir_});
  EXPECT_EQ(r.exit_code, 64);

  r = Ctl({"submit", "--model", model_dir_, "--output", outputs_ + "/y", "--label", "k=v"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string id(absl::StripAsciiWhitespace(r.out));
  ASSERT_FALSE(id.empty());

  r = Ctl({"get", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("state:      QUEUED"));

  r = Ctl({"--json", "list", "--label", "k=v"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(id));

  r = Ctl({"get", "no-such-job"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));

  r = Ctl({"delete", id});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("FAILED_PRECONDITION"));

  r = Ctl({"cancel", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("CANCELLED"));

  // --wait on a job that ends CANCELLED exits 1 and says why.
  r = Ctl({"submit", "--model", model_dir_, "--output", outputs_ + "/z", "--request-id",
           "dup-1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string id2(absl::StripAsciiWhitespace(r.out));
  ASSERT_EQ(Ctl({"cancel", id2}).exit_code, 0);
  r = Ctl({"submit", "--model", model_dir_, "--output", outputs_ + "/z", "--request-id", "dup-1",
           "--wait"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("was cancelled"));

  r = Ctl({"delete", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // An unreachable server is an RPC error (2).
  r = RunCommand({GptqctlBinary(), "--server", "127.0.0.1:1", "list"}, std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace gptq::testing
