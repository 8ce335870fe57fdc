#include "metrics.h"

#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>

#include "test_util.h"

namespace gptq::server {
namespace {

TEST(MetricsTest, RendersCountersGaugesAndCumulativeHistogram) {
  Metrics m;
  m.RecordRpc("svc", "CreateJob", 0);
  m.RecordRpc("svc", "CreateJob", 0);
  m.RecordRpc("svc", "CreateJob", 3);
  m.ObserveJobDuration("succeeded", 0.5);
  m.ObserveJobDuration("succeeded", 100);
  m.WatcherStarted();
  MetricsSnapshot s;
  s.jobs_by_state = {{"queued", 2}, {"running", 1}};
  s.queue_depth = 2;
  s.workers_connected = 3;
  s.workers_busy = 1;
  const std::string text = m.Render(s);
  EXPECT_NE(text.find("gptq_rpcs_total{service=\"svc\",method=\"CreateJob\",code=\"OK\"} 2\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("code=\"INVALID_ARGUMENT\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gptq_jobs{state=\"queued\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("gptq_workers_busy 1\n"), std::string::npos);
  EXPECT_NE(text.find("gptq_watchers 1\n"), std::string::npos);
  EXPECT_NE(text.find("gptq_job_duration_seconds_bucket{outcome=\"succeeded\",le=\"1\"} 1\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("gptq_job_duration_seconds_bucket{outcome=\"succeeded\",le=\"120\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("gptq_job_duration_seconds_bucket{outcome=\"succeeded\",le=\"+Inf\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("gptq_job_duration_seconds_count{outcome=\"succeeded\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("gptq_job_duration_seconds_sum{outcome=\"succeeded\"} 100.5\n"),
            std::string::npos);
  EXPECT_STREQ(GrpcCodeName(16), "UNAUTHENTICATED");
}

TEST(MetricsTest, PromtoolAcceptsTheExposition) {
  std::string out;
  if (testing::RunShell("command -v promtool", &out) != 0) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  }
  Metrics m;
  m.RecordRpc("gptq.v1.QuantizationService", "GetJob", 5);
  m.ObserveJobDuration("failed", 3);
  m.RecordRequeue("worker_lost");
  MetricsSnapshot s;
  s.jobs_by_state = {{"queued", 0}};
  testing::TempDir dir;
  std::ofstream(dir.File("m.txt")) << m.Render(s);
  const int rc = testing::RunShell("promtool check metrics < " + dir.File("m.txt"), &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "") << "promtool lint findings: " << out;
}

}  // namespace
}  // namespace gptq::server
