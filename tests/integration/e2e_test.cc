// End to end on the real gptq-server with one local gptq-worker and real models:
// submit -> RUNNING -> SUCCEEDED with 100 concurrent watchers, perplexity before/after through
// `gptqctl submit --wait`, cancel of a running job, and the /metrics exposition under promtool.
#include <atomic>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "gptq/sha256.h"
#include "harness.h"

namespace gptq::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using gptq::v1::Job;
using gptq::v1::JobEvent;

class EndToEndTest : public JobServiceTest {
 protected:
  void SetUp() override {
    GPTQ_REQUIRE_SERVER();
    GPTQ_REQUIRE_WORKER();
    GPTQ_REQUIRE_DATA();
    StartServer(/*local_workers=*/1);
  }
};

TEST_F(EndToEndTest, SucceedsWithOutputWatchedByHundredWatchersSeeingTheSameEvents) {
  const std::string out = outputs_ + "/stories260K-gptq";
  Job job = Create(Stories260KRequest(out, /*nsamples=*/64, /*seqlen=*/128));
  ASSERT_FALSE(job.id().empty());
  EXPECT_EQ(job.state(), gptq::v1::JOB_STATE_QUEUED);

  constexpr int kWatchers = 100;
  constexpr int kChannels = 10;
  std::vector<std::unique_ptr<gptq::v1::QuantizationService::Stub>> stubs;
  for (int c = 0; c < kChannels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("gptq.test.channel", c);  // distinct args: distinct connections
    stubs.push_back(gptq::v1::QuantizationService::NewStub(grpc::CreateCustomChannel(
        server_->address(), grpc::InsecureChannelCredentials(), args)));
  }
  std::vector<absl::StatusOr<std::vector<JobEvent>>> results(kWatchers,
                                                             absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int w = 0; w < kWatchers; ++w) {
    threads.emplace_back([&, w] {
      results[w] = WatchAll(*stubs[w % kChannels], job.id(), std::chrono::seconds(240));
    });
  }
  for (auto& t : threads) t.join();

  ASSERT_TRUE(results[0].ok()) << results[0].status() << "\n" << server_->LogTail();
  const std::vector<JobEvent>& reference = *results[0];
  for (int w = 1; w < kWatchers; ++w) {
    ASSERT_TRUE(results[w].ok()) << "watcher " << w << ": " << results[w].status();
    ASSERT_EQ(results[w]->size(), reference.size()) << "watcher " << w;
    for (size_t i = 0; i < reference.size(); ++i) {
      ASSERT_EQ((*results[w])[i].SerializeAsString(), reference[i].SerializeAsString())
          << "watcher " << w << " event " << i;
    }
  }
  // The sequence: numbered from 1 without gaps, through RUNNING, module progress, SUCCEEDED.
  std::vector<gptq::v1::JobState> states;
  std::set<int> layers;
  for (size_t i = 0; i < reference.size(); ++i) {
    EXPECT_EQ(reference[i].sequence(), static_cast<int64_t>(i) + 1);
    EXPECT_EQ(reference[i].job_id(), job.id());
    if (reference[i].has_state_change()) states.push_back(reference[i].state_change().to());
    if (reference[i].has_module_progress()) {
      layers.insert(reference[i].module_progress().layer());
      EXPECT_EQ(reference[i].module_progress().num_layers(), 5);
    }
  }
  EXPECT_THAT(states, ::testing::Contains(gptq::v1::JOB_STATE_RUNNING));
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back(), gptq::v1::JOB_STATE_SUCCEEDED) << server_->LogTail();
  EXPECT_TRUE(reference.back().has_state_change()) << "the stream ends at the terminal event";
  EXPECT_EQ(layers, (std::set<int>{0, 1, 2, 3, 4})) << "progress from each of the 5 layers";

  // A late watcher replays the same log.
  auto late = WatchAll(server_->stub(), job.id(), std::chrono::seconds(30));
  ASSERT_TRUE(late.ok());
  ASSERT_EQ(late->size(), reference.size());

  // The job: SUCCEEDED with results describing the files actually written.
  auto done = WaitForJob(server_->stub(), job.id(), [](const Job& j) { return IsTerminal(j.state()); },
                         std::chrono::seconds(30));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), gptq::v1::JOB_STATE_SUCCEEDED) << done->error().message();
  const auto& r = done->results();
  EXPECT_EQ(fs::weakly_canonical(r.output_location()), fs::weakly_canonical(out));
  ASSERT_GT(r.files_size(), 0);
  std::vector<std::string> reported;
  for (const auto& f : r.files()) {
    reported.push_back(f.path());
    const std::string path = out + "/" + f.path();
    ASSERT_TRUE(fs::exists(path)) << path;
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(path)), f.size_bytes()) << f.path();
    EXPECT_EQ(*gptq::Sha256File(path), f.sha256()) << f.path();
  }
  std::sort(reported.begin(), reported.end());
  EXPECT_EQ(ListFiles(out), reported) << "exactly the reported files, no leftovers";
  EXPECT_THAT(reported, ::testing::Contains("config.json"));
  EXPECT_TRUE(std::any_of(reported.begin(), reported.end(), [](const std::string& p) {
    return p.size() > 12 && p.substr(p.size() - 12) == ".safetensors";
  }));
  EXPECT_EQ(r.losses().num_modules() + r.losses().unquantized_modules_size(), 35);
  EXPECT_GT(r.losses().total_loss(), 0.0);
}

TEST_F(EndToEndTest, GptqctlWaitShowsPerplexityBeforeAndAfterOnStories15M) {
  const std::string out = outputs_ + "/stories15M-gptq";
  CommandResult r = RunCommand(
      {GptqctlBinary(), "--server", server_->address(), "submit", "--model", Stories15M(),
       "--output", out, "--bits", "4", "--group-size", "128", "--dataset", "tinystories",
       "--nsamples", "16", "--seqlen", "128", "--eval", "tinystories", "--eval-seqlen", "256",
       "--device", "cpu", "--label", "test=e2e", "--wait"},
      std::chrono::seconds(600));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << server_->LogTail();
  // Not a TTY: one line per layer (6 layers), then the results table.
  for (int layer = 1; layer <= 6; ++layer) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("layer ", layer, "/6 ["))) << r.out;
  }
  EXPECT_THAT(r.out, HasSubstr("state RUNNING -> SUCCEEDED"));
  EXPECT_THAT(r.out, HasSubstr("before      after   change"));
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("output: ", out)));
  EXPECT_EQ(r.out.find('\r'), std::string::npos);

  // The same figures through --json.
  CommandResult list = RunCommand({GptqctlBinary(), "--server", server_->address(), "--json",
                                   "list", "--label", "test=e2e"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  gptq::v1::ListJobsRequest req;
  (*req.mutable_label_selector())["test"] = "e2e";
  grpc::ClientContext ctx;
  gptq::v1::ListJobsResponse resp;
  ASSERT_TRUE(server_->stub().ListJobs(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.jobs_size(), 1);
  const Job& job = resp.jobs(0);
  EXPECT_THAT(list.out, HasSubstr(job.id()));
  ASSERT_EQ(job.results().perplexity_size(), 1);
  const auto& p = job.results().perplexity(0);
  EXPECT_EQ(p.dataset(), "tinystories");
  ASSERT_TRUE(p.has_before());
  ASSERT_TRUE(p.has_after());
  // stories15M on its own domain: a low perplexity that 4-bit GPTQ raises only a little.
  EXPECT_GT(p.before(), 1.0);
  EXPECT_LT(p.before(), 20.0);
  EXPECT_GE(p.after(), p.before() * 0.98);
  EXPECT_LT(p.after(), p.before() * 1.5);
  EXPECT_THAT(r.out, HasSubstr(absl::StrFormat("%.4f", p.before())));
  EXPECT_THAT(r.out, HasSubstr(absl::StrFormat("%.4f", p.after())));
  EXPECT_GT(p.num_tokens(), 0);
  EXPECT_EQ(p.seqlen(), 256);
  // The perplexity events carry the same figures as the results.
  auto events = WatchAll(server_->stub(), job.id(), std::chrono::seconds(30));
  ASSERT_TRUE(events.ok()) << events.status();
  int num_perplexity_events = 0;
  for (const auto& e : *events) {
    if (!e.has_perplexity()) continue;
    ++num_perplexity_events;
    EXPECT_EQ(e.perplexity().dataset(), "tinystories");
    EXPECT_DOUBLE_EQ(e.perplexity().value(), e.perplexity().phase() == "before" ? p.before() : p.after());
    EXPECT_EQ(e.perplexity().seqlen(), 256) << "PerplexityEvent.seqlen: window length used";
    EXPECT_EQ(e.perplexity().num_tokens(), p.num_tokens());
  }
  EXPECT_EQ(num_perplexity_events, 2);
}

TEST_F(EndToEndTest, CancelOfARunningJobEndsCancelledWithinTwoSecondsWithoutOutput) {
  const std::string out = outputs_ + "/cancelled";
  // Long enough to be cancelled mid-way (many calibration windows: seconds per module group),
  // cancelled once the first module is done, i.e. in the middle of the layer loop.
  Job job = Create(Stories260KRequest(out, /*nsamples=*/512, /*seqlen=*/256, 8192));
  ASSERT_TRUE(WaitForModuleProgress(server_->stub(), job.id(), std::chrono::seconds(120)))
      << server_->LogTail();
  auto running = WaitForJob(server_->stub(), job.id(), [](const Job&) { return true; },
                            std::chrono::seconds(10));
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_EQ(running->state(), gptq::v1::JOB_STATE_RUNNING) << "finished before it could be cancelled";

  const auto start = std::chrono::steady_clock::now();
  {
    grpc::ClientContext ctx;
    gptq::v1::CancelJobRequest req;
    req.set_id(job.id());
    Job j;
    grpc::Status s = server_->stub().CancelJob(&ctx, req, &j);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(j.cancel_requested() || j.state() == gptq::v1::JOB_STATE_CANCELLED);
  }
  auto done = WaitForJob(server_->stub(), job.id(),
                         [](const Job& j) { return IsTerminal(j.state()); },
                         std::chrono::seconds(10));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), gptq::v1::JOB_STATE_CANCELLED);
  EXPECT_LE(seconds, 2.0) << "cancel took " << seconds << " s";
  EXPECT_THAT(ListFiles(out), ::testing::IsEmpty()) << "no output left behind";
  // Nothing half-written beside it either.
  EXPECT_THAT(ListFiles(outputs_), ::testing::IsEmpty());
}

TEST_F(EndToEndTest, MetricsScrapedDuringAJobPassPromtool) {
  if (!fs::exists("/usr/bin/promtool")) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus; deploy/setup-deps.sh)";
  }
  Job job = Create(Stories260KRequest(outputs_ + "/metrics", /*nsamples=*/256, /*seqlen=*/128));
  auto running = WaitForJob(server_->stub(), job.id(),
                            [](const Job& j) { return j.state() != gptq::v1::JOB_STATE_QUEUED; },
                            std::chrono::seconds(60));
  ASSERT_TRUE(running.ok()) << running.status();
  auto body = HttpGet(server_->metrics_address(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(running->state(), gptq::v1::JOB_STATE_RUNNING) << "scrape should be taken mid-job";
  EXPECT_THAT(*body, HasSubstr("# TYPE "));
  CommandResult r = RunCommand({"/usr/bin/promtool", "check", "metrics"}, std::chrono::seconds(30),
                               *body);
  EXPECT_EQ(r.exit_code, 0) << "promtool: " << r.out << r.err << "\nexposition:\n" << *body;
  grpc::ClientContext ctx;
  gptq::v1::CancelJobRequest req;
  req.set_id(job.id());
  Job j;
  server_->stub().CancelJob(&ctx, req, &j);
}

}  // namespace
}  // namespace gptq::testing
