#include "cli.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gptq::client {
namespace {

using ::testing::HasSubstr;

Environment Env() {
  Environment env;
  env.cwd = "/home/u";
  return env;
}

absl::StatusOr<Command> Parse(const std::vector<std::string>& args,
                              const Environment& env = Env()) {
  return ParseCommandLine(args, env);
}

TEST(CliTest, SubmitSetsOnlyTheFieldsGiven) {
  auto cmd = Parse({"submit", "--model", "/m", "--output", "/o"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->subcommand, Subcommand::kSubmit);
  const auto& spec = cmd->create.spec();
  EXPECT_EQ(spec.model_uri(), "/m");
  EXPECT_EQ(spec.output_uri(), "/o");
  EXPECT_FALSE(spec.has_bits());
  EXPECT_FALSE(spec.has_group_size());
  EXPECT_FALSE(spec.has_damp_percent());
  EXPECT_FALSE(spec.has_sym());
  EXPECT_FALSE(spec.has_desc_act());
  EXPECT_FALSE(spec.has_act_group_aware());
  EXPECT_FALSE(spec.has_true_sequential());
  EXPECT_FALSE(spec.has_batch_size());
  EXPECT_FALSE(spec.has_max_shard_size_bytes());
  EXPECT_FALSE(spec.has_calibration());
  EXPECT_FALSE(spec.has_evaluation());
  EXPECT_EQ(spec.format(), gptq::v1::CHECKPOINT_FORMAT_UNSPECIFIED);
  EXPECT_EQ(spec.device(), gptq::v1::DEVICE_PREFERENCE_UNSPECIFIED);
  EXPECT_FALSE(cmd->wait);
  EXPECT_EQ(cmd->global.server, "127.0.0.1:50051");
  EXPECT_FALSE(cmd->global.json);
}

TEST(CliTest, SubmitAllFlags) {
  auto cmd = Parse({"--server", "h:1", "submit", "--model", "hf://org/m@rev", "--output=out/q",
                    "--bits", "3", "--group-size=-1", "--damp-percent", "0.05",
                    "--damp-auto-increment", "0.02", "--no-sym", "--desc-act",
                    "--no-act-group-aware", "--static-groups", "--no-true-sequential",
                    "--format", "gptq_v2", "--dataset", "wikitext2", "--nsamples", "64",
                    "--seqlen", "512", "--seed", "7", "--eval", "wikitext2, c4",
                    "--eval", "tinystories", "--eval-seqlen", "1024", "--batch-size", "4",
                    "--max-shard-size", "2G", "--device", "cuda", "--label", "team=nlp",
                    "--label", "run=a=b", "--request-id", "r-1", "--priority", "-5", "--wait",
                    "--json"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->global.server, "h:1");
  EXPECT_TRUE(cmd->global.json);
  EXPECT_TRUE(cmd->wait);
  const auto& r = cmd->create;
  const auto& spec = r.spec();
  EXPECT_EQ(spec.model_uri(), "hf://org/m@rev");
  EXPECT_EQ(spec.output_uri(), "/home/u/out/q");
  EXPECT_EQ(spec.bits(), 3);
  EXPECT_EQ(spec.group_size(), -1);
  EXPECT_DOUBLE_EQ(spec.damp_percent(), 0.05);
  EXPECT_DOUBLE_EQ(spec.damp_auto_increment(), 0.02);
  ASSERT_TRUE(spec.has_sym());
  EXPECT_FALSE(spec.sym());
  EXPECT_TRUE(spec.desc_act());
  ASSERT_TRUE(spec.has_act_group_aware());
  EXPECT_FALSE(spec.act_group_aware());
  EXPECT_TRUE(spec.static_groups());
  ASSERT_TRUE(spec.has_true_sequential());
  EXPECT_FALSE(spec.true_sequential());
  EXPECT_EQ(spec.format(), gptq::v1::CHECKPOINT_FORMAT_GPTQ_V2);
  EXPECT_EQ(spec.calibration().dataset(), "wikitext2");
  EXPECT_EQ(spec.calibration().nsamples(), 64);
  EXPECT_EQ(spec.calibration().seqlen(), 512);
  EXPECT_EQ(spec.calibration().seed(), 7u);
  ASSERT_EQ(spec.evaluation().datasets_size(), 3);
  EXPECT_EQ(spec.evaluation().datasets(0), "wikitext2");
  EXPECT_EQ(spec.evaluation().datasets(1), "c4");
  EXPECT_EQ(spec.evaluation().datasets(2), "tinystories");
  EXPECT_EQ(spec.evaluation().seqlen(), 1024);
  EXPECT_EQ(spec.batch_size(), 4);
  EXPECT_EQ(spec.max_shard_size_bytes(), int64_t{2} << 30);
  EXPECT_EQ(spec.device(), gptq::v1::DEVICE_PREFERENCE_CUDA);
  EXPECT_EQ(r.labels().at("team"), "nlp");
  EXPECT_EQ(r.labels().at("run"), "a=b");
  EXPECT_EQ(r.request_id(), "r-1");
  EXPECT_EQ(r.priority(), -5);
}

TEST(CliTest, PositiveBooleanFlagsSetTrue) {
  auto cmd = Parse({"submit", "--model", "/m", "--output", "/o", "--sym", "--true-sequential",
                    "--act-group-aware", "--format", "gptq", "--device", "cpu"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  const auto& spec = cmd->create.spec();
  ASSERT_TRUE(spec.has_sym());
  EXPECT_TRUE(spec.sym());
  EXPECT_TRUE(spec.true_sequential());
  EXPECT_TRUE(spec.act_group_aware());
  EXPECT_FALSE(spec.has_desc_act());
  EXPECT_EQ(spec.format(), gptq::v1::CHECKPOINT_FORMAT_GPTQ);
  EXPECT_EQ(spec.device(), gptq::v1::DEVICE_PREFERENCE_CPU);
}

TEST(CliTest, EnvironmentGivesServerAndTokenAndFlagsOverride) {
  Environment env = Env();
  env.server = "envhost:9";
  env.auth_token = "secret";
  auto cmd = Parse({"get", "j1"}, env);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->global.server, "envhost:9");
  EXPECT_EQ(cmd->global.token, "secret");
  EXPECT_EQ(cmd->job_id, "j1");
  cmd = Parse({"get", "j1", "--server=flag:1", "--token", "t2", "--tls-ca", "/ca.pem"}, env);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->global.server, "flag:1");
  EXPECT_EQ(cmd->global.token, "t2");
  EXPECT_EQ(cmd->global.tls_ca, "/ca.pem");
}

TEST(CliTest, CalibrationSources) {
  auto cmd = Parse({"submit", "--model", "/m", "--output", "/o", "--calib-tokens", "1,2, 3 4"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_THAT(cmd->create.spec().calibration().token_ids().ids(),
              ::testing::ElementsAre(1, 2, 3, 4));

  cmd = Parse({"submit", "--model", "/m", "--output", "/o", "--calib-text", "a b",
               "--calib-text", "c"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_THAT(cmd->create.spec().calibration().texts().texts(),
              ::testing::ElementsAre("a b", "c"));

  cmd = Parse({"submit", "--model", "/m", "--output", "/o", "--calib-file", "data.txt"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->create.spec().calibration().file_uri(), "/home/u/data.txt");

  const std::string path = ::testing::TempDir() + "/ids.txt";
  {
    std::ofstream f(path);
    f << "5 6\n7\n";
  }
  cmd = Parse({"submit", "--model", "/m", "--output", "/o", "--calib-tokens-file", path});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_THAT(cmd->create.spec().calibration().token_ids().ids(),
              ::testing::ElementsAre(5, 6, 7));

  cmd = Parse({"submit", "--model", "/m", "--output", "/o", "--dataset", "c4", "--calib-file",
               "/x"});
  ASSERT_FALSE(cmd.ok());
  EXPECT_THAT(cmd.status().message(), HasSubstr("at most one calibration source"));
}

TEST(CliTest, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"submit", "--model", "/m", "--output", "/o", "--bits", "four"}, "--bits"},
      {{"submit", "--model", "/m", "--output", "/o", "--group-size"}, "--group-size needs a value"},
      {{"--server", "--json", "list"}, "--server needs a value"},
      {{"submit", "--model", "/m", "--output", "/o", "--damp-percent", "x"}, "--damp-percent"},
      {{"submit", "--model", "/m", "--output", "/o", "--format", "awq"}, "--format"},
      {{"submit", "--model", "/m", "--output", "/o", "--device", "tpu"}, "--device"},
      {{"submit", "--model", "/m", "--output", "/o", "--label", "novalue"}, "--label"},
      {{"submit", "--model", "/m", "--output", "/o", "--max-shard-size", "3X"}, "--max-shard-size"},
      {{"submit", "--model", "/m", "--output", "/o", "--calib-tokens", "1,a"}, "--calib-tokens"},
      {{"submit", "--model", "/m", "--output", "/o", "--calib-tokens-file", "/nonexistent/x"},
       "--calib-tokens-file"},
      {{"submit", "--model", "/m", "--output", "/o", "--seed", "-1"}, "--seed"},
      {{"submit", "--model", "/m", "--output", "/o", "--wait=yes"}, "--wait takes no value"},
      {{"submit", "--model", "/m", "--output", "/o", "--bogus", "1"}, "unknown flag --bogus"},
      {{"submit", "--output", "/o"}, "--model is required"},
      {{"submit", "--model", "/m"}, "--output is required"},
      {{"get"}, "get: missing job ID"},
      {{"get", "a", "b"}, "unexpected argument \"b\""},
      {{"cancel", "a", "--bits", "4"}, "unknown flag --bits for cancel"},
      {{"list", "--state", "done"}, "--state"},
      {{"list", "--page-size", "x"}, "--page-size"},
      {{"list", "extra"}, "unexpected argument"},
      {{"watch", "j", "--from", "-2"}, "--from"},
      {{"frobnicate"}, "unknown subcommand \"frobnicate\""},
      {{"get", "j", "-x"}, "unknown option \"-x\""},
  };
  for (const Case& c : cases) {
    auto cmd = Parse(c.args);
    ASSERT_FALSE(cmd.ok()) << ::testing::PrintToString(c.args);
    EXPECT_EQ(cmd.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(cmd.status().message(), HasSubstr(c.message)) << ::testing::PrintToString(c.args);
  }
}

TEST(CliTest, ListAndWatchFlags) {
  auto cmd = Parse({"list", "--state", "running", "--label", "a=b", "--page-size", "10", "--all"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->subcommand, Subcommand::kList);
  EXPECT_EQ(cmd->list.state(), gptq::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(cmd->list.label_selector().at("a"), "b");
  EXPECT_EQ(cmd->list.page_size(), 10);
  EXPECT_TRUE(cmd->list_all);

  cmd = Parse({"watch", "j7", "--from", "12"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->subcommand, Subcommand::kWatch);
  EXPECT_EQ(cmd->job_id, "j7");
  EXPECT_EQ(cmd->from_sequence, 12);

  cmd = Parse({"delete", "--", "-odd-id"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->job_id, "-odd-id");
}

TEST(CliTest, HelpAndNoArguments) {
  auto cmd = Parse({});
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(cmd->subcommand, Subcommand::kHelp);
  cmd = Parse({"submit", "--help"});
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(cmd->subcommand, Subcommand::kHelp);
  EXPECT_THAT(UsageText(), HasSubstr("submit --model URI --output URI"));
}

TEST(CliTest, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("1048576", "f"), 1048576);
  EXPECT_EQ(*ParseByteSize("512M", "f"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("4GiB", "f"), int64_t{4} << 30);
  EXPECT_EQ(*ParseByteSize("1k", "f"), 1024);
  EXPECT_EQ(*ParseByteSize("2T", "f"), int64_t{2} << 40);
  EXPECT_FALSE(ParseByteSize("", "f").ok());
  EXPECT_FALSE(ParseByteSize("G", "f").ok());
  EXPECT_FALSE(ParseByteSize("99999999999999999999", "f").ok());
  EXPECT_FALSE(ParseByteSize("9000000000T", "f").ok());
}

TEST(CliTest, StatesAndPaths) {
  EXPECT_EQ(*ParseJobState("Succeeded"), gptq::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(*ParseJobState("JOB_STATE_QUEUED"), gptq::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(*ParseJobState("canceled"), gptq::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(JobStateName(gptq::v1::JOB_STATE_FAILED), "FAILED");
  EXPECT_EQ(AbsolutizeLocalPath("rel/x", "/a/"), "/a/rel/x");
  EXPECT_EQ(AbsolutizeLocalPath("./x", "/a"), "/a/x");
  EXPECT_EQ(AbsolutizeLocalPath("/abs", "/a"), "/abs");
  EXPECT_EQ(AbsolutizeLocalPath("file:///x", "/a"), "file:///x");
  EXPECT_EQ(AbsolutizeLocalPath("s3://b/k", "/a"), "s3://b/k");
}

}  // namespace
}  // namespace gptq::client
