// Crash recovery with the real binaries: kill -9 of the server mid-job (restart on the same db
// and port: the job is neither lost nor duplicated, and completes), and kill -9 of a worker
// mid-job (the job is requeued, completes on a new worker, and its output is written once).
// Workers are explicit `gptq-worker serve` processes so they outlive a killed server.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "harness.h"

namespace gptq::testing {
namespace {

namespace fs = std::filesystem;
using gptq::v1::Job;

class RecoveryTest : public JobServiceTest {
 protected:
  void SetUp() override {
    GPTQ_REQUIRE_SERVER();
    GPTQ_REQUIRE_WORKER();
    GPTQ_REQUIRE_DATA();
    StartServer(/*local_workers=*/0);
  }

  // Waits until the job has quantized its first module (mid-job); returns the job then.
  absl::StatusOr<Job> WaitMidJob(const std::string& id) {
    if (!WaitForModuleProgress(server_->stub(), id, std::chrono::seconds(120))) {
      return absl::DeadlineExceededError("no module progress within 120 s");
    }
    return WaitForJob(server_->stub(), id, [](const Job&) { return true; },
                      std::chrono::seconds(10));
  }

  // Checks the finished job: SUCCEEDED, its files exactly the reported ones, nothing else
  // under the output root, an event log without gaps and with one terminal event.
  void ExpectCompletedOnce(const std::string& id, const std::string& out) {
    auto done = WaitForJob(server_->stub(), id, [](const Job& j) { return IsTerminal(j.state()); },
                           std::chrono::seconds(300));
    ASSERT_TRUE(done.ok()) << done.status() << "\n" << server_->LogTail();
    ASSERT_EQ(done->state(), gptq::v1::JOB_STATE_SUCCEEDED)
        << done->error().message() << "\n" << server_->LogTail();
    std::vector<std::string> reported;
    for (const auto& f : done->results().files()) reported.push_back(f.path());
    std::sort(reported.begin(), reported.end());
    ASSERT_FALSE(reported.empty());
    EXPECT_EQ(ListFiles(out), reported) << "the output directory holds exactly one checkpoint";
    // Nothing else under the output root: no second copy, no temp/spool dir of a dead attempt.
    std::vector<std::string> others;
    for (const auto& entry : fs::directory_iterator(outputs_)) {
      if (entry.path() != fs::path(out)) others.push_back(entry.path().filename().string());
    }
    EXPECT_THAT(others, ::testing::IsEmpty())
        << "left beside the output (e.g. a killed attempt's temp dir): " << ::testing::PrintToString(ListFiles(outputs_));

    grpc::ClientContext ctx;
    gptq::v1::ListJobsResponse list;
    ASSERT_TRUE(server_->stub().ListJobs(&ctx, {}, &list).ok());
    ASSERT_EQ(list.jobs_size(), 1) << "the job is neither lost nor duplicated";
    EXPECT_EQ(list.jobs(0).id(), id);

    auto events = WatchAll(server_->stub(), id, std::chrono::seconds(30));
    ASSERT_TRUE(events.ok()) << events.status();
    int terminal = 0;
    for (size_t i = 0; i < events->size(); ++i) {
      EXPECT_EQ((*events)[i].sequence(), static_cast<int64_t>(i) + 1);
      if ((*events)[i].has_state_change() && IsTerminal((*events)[i].state_change().to())) {
        ++terminal;
      }
    }
    EXPECT_EQ(terminal, 1);
    final_job_ = *done;
  }

  Job final_job_;
};

TEST_F(RecoveryTest, ServerKilledMidJobRestartsOnTheSameDbAndTheJobCompletes) {
  Worker worker(tmp_.Sub("worker-a.log"));
  ASSERT_TRUE(worker.Start(server_->address()).ok());
  const std::string out = outputs_ + "/q";
  Job job = Create(Stories260KRequest(out, /*nsamples=*/128, /*seqlen=*/128));
  auto mid = WaitMidJob(job.id());
  ASSERT_TRUE(mid.ok()) << mid.status() << "\n" << worker.LogTail();
  ASSERT_EQ(mid->state(), gptq::v1::JOB_STATE_RUNNING) << "finished before the kill";

  server_->Kill9();
  ASSERT_TRUE(server_->Start().ok()) << server_->LogTail();

  ExpectCompletedOnce(job.id(), out);
  EXPECT_EQ(final_job_.id(), job.id());
}

TEST_F(RecoveryTest, WorkerKilledMidJobIsRequeuedAndCompletesOnANewWorker) {
  auto first = std::make_unique<Worker>(tmp_.Sub("worker-a.log"));
  ASSERT_TRUE(first->Start(server_->address()).ok());
  const std::string out = outputs_ + "/q";
  Job job = Create(Stories260KRequest(out, /*nsamples=*/128, /*seqlen=*/128));
  auto mid = WaitMidJob(job.id());
  ASSERT_TRUE(mid.ok()) << mid.status() << "\n" << first->LogTail();
  ASSERT_EQ(mid->state(), gptq::v1::JOB_STATE_RUNNING) << "finished before the kill";
  const std::string first_worker = mid->worker_id();
  ASSERT_FALSE(first_worker.empty());

  first->Kill9();
  Worker second(tmp_.Sub("worker-b.log"));
  ASSERT_TRUE(second.Start(server_->address()).ok());

  ExpectCompletedOnce(job.id(), out);
  EXPECT_NE(final_job_.worker_id(), first_worker);
  EXPECT_GE(final_job_.attempt(), 2);
  auto events = WatchAll(server_->stub(), job.id(), std::chrono::seconds(30));
  ASSERT_TRUE(events.ok());
  bool requeued = false;
  for (const auto& e : *events) {
    if (e.has_state_change() && e.state_change().from() == gptq::v1::JOB_STATE_RUNNING &&
        e.state_change().to() == gptq::v1::JOB_STATE_QUEUED) {
      requeued = true;
    }
  }
  EXPECT_TRUE(requeued) << "a RUNNING -> QUEUED event records the lost worker";
}

}  // namespace
}  // namespace gptq::testing
