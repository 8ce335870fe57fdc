#include "job_store.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace gptq::server {
namespace {

using testing::TempDir;

gptq::v1::Job MakeJob(const std::string& id, const std::string& request_id = "") {
  gptq::v1::Job j;
  j.set_id(id);
  j.set_request_id(request_id);
  j.set_state(gptq::v1::JOB_STATE_QUEUED);
  j.mutable_spec()->set_model_uri("/m");
  return j;
}

gptq::v1::JobEvent Event(const std::string& job, int64_t seq, const std::string& msg) {
  gptq::v1::JobEvent e;
  e.set_job_id(job);
  e.set_sequence(seq);
  e.mutable_log()->set_message(msg);
  return e;
}

TEST(JobStoreTest, RoundTripSurvivesReopen) {
  TempDir dir;
  const std::string path = dir.File("jobs.db");
  {
    auto store = JobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    auto o1 = (*store)->InsertJob(MakeJob("a", "req-1"), 0, {Event("a", 1, "created")});
    auto o2 = (*store)->InsertJob(MakeJob("b"), 0, {});
    ASSERT_TRUE(o1.ok() && o2.ok());
    EXPECT_LT(*o1, *o2);
    auto j = MakeJob("a", "req-1");
    j.set_state(gptq::v1::JOB_STATE_RUNNING);
    ASSERT_TRUE((*store)->UpdateJob(j, 7, {Event("a", 2, "x"), Event("a", 3, "y")}).ok());
  }
  auto store = JobStore::Open(path);
  ASSERT_TRUE(store.ok());
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[0].job.id(), "a");
  EXPECT_EQ((*jobs)[0].job.state(), gptq::v1::JOB_STATE_RUNNING);
  EXPECT_EQ((*jobs)[0].lease_epoch, 7);
  EXPECT_EQ((*jobs)[0].last_sequence, 3);
  EXPECT_EQ((*jobs)[1].last_sequence, 0);
  auto events = (*store)->LoadEvents("a", 2);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].log().message(), "x");
  EXPECT_EQ((*events)[1].sequence(), 3);
}

TEST(JobStoreTest, DuplicatesAndMissingRows) {
  TempDir dir;
  auto store = JobStore::Open(dir.File("jobs.db"));
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->InsertJob(MakeJob("a", "r"), 0, {}).ok());
  EXPECT_EQ((*store)->InsertJob(MakeJob("b", "r"), 0, {}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*store)->InsertJob(MakeJob("a"), 0, {}).status().code(),
            absl::StatusCode::kAlreadyExists);
  // A failed insert leaves nothing behind.
  EXPECT_EQ((*store)->LoadJobs()->size(), 1u);
  EXPECT_EQ((*store)->UpdateJob(MakeJob("zz"), 0, {}).code(), absl::StatusCode::kNotFound);
  // A duplicate event sequence rolls the whole update back.
  ASSERT_TRUE((*store)->UpdateJob(MakeJob("a", "r"), 1, {Event("a", 1, "one")}).ok());
  auto running = MakeJob("a", "r");
  running.set_state(gptq::v1::JOB_STATE_RUNNING);
  EXPECT_FALSE((*store)->UpdateJob(running, 2, {Event("a", 1, "dup")}).ok());
  auto jobs = (*store)->LoadJobs();
  EXPECT_EQ((*jobs)[0].job.state(), gptq::v1::JOB_STATE_QUEUED);
  EXPECT_EQ((*jobs)[0].lease_epoch, 1);
}

TEST(JobStoreTest, DeleteRemovesEvents) {
  TempDir dir;
  auto store = JobStore::Open(dir.File("jobs.db"));
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->InsertJob(MakeJob("a", "r"), 0, {Event("a", 1, "e")}).ok());
  ASSERT_TRUE((*store)->DeleteJob("a").ok());
  EXPECT_EQ((*store)->DeleteJob("a").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*store)->LoadEvents("a", 1)->empty());
  // The request id is free again.
  EXPECT_TRUE((*store)->InsertJob(MakeJob("b", "r"), 0, {}).ok());
}

TEST(JobStoreTest, OpenFailsClearlyOnBadPath) {
  auto store = JobStore::Open("/nonexistent-dir/x/jobs.db");
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("/nonexistent-dir/x/jobs.db"), std::string::npos);
}

}  // namespace
}  // namespace gptq::server
