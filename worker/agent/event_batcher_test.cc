#include "event_batcher.h"

#include "gtest/gtest.h"

namespace gptq::agent {
namespace {

using runtime::ProgressEvent;

ProgressEvent Module(int layer, const std::string& name, double fraction) {
  ProgressEvent e;
  e.kind = ProgressEvent::Kind::kModule;
  e.layer = layer;
  e.num_layers = 4;
  e.module = name;
  e.fraction = fraction;
  return e;
}

TEST(EventBatcherTest, EmptyBatcherIsNeverDue) {
  EventBatcher b;
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_FALSE(b.Due(t0));
  EXPECT_FALSE(b.Due(t0 + absl::Hours(1)));
  EXPECT_EQ(b.Deadline(), absl::InfiniteFuture());
}

TEST(EventBatcherTest, DueAfterMaxDelayFromOldestEvent) {
  EventBatcher b({/*max_events=*/32, /*max_delay=*/absl::Milliseconds(250)});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  b.Add(Module(0, "self_attn.q_proj", 0.1), t0);
  b.Add(Module(0, "self_attn.k_proj", 0.2), t0 + absl::Milliseconds(200));
  EXPECT_FALSE(b.Due(t0 + absl::Milliseconds(249)));
  EXPECT_TRUE(b.Due(t0 + absl::Milliseconds(250)));
  EXPECT_EQ(b.Deadline(), t0 + absl::Milliseconds(250));
  EventBatcher::Batch batch = b.Take();
  ASSERT_EQ(batch.events.size(), 2u);
  EXPECT_EQ(batch.events[0].module_progress().module(), "self_attn.q_proj");
  EXPECT_EQ(batch.events[1].module_progress().module(), "self_attn.k_proj");
  EXPECT_DOUBLE_EQ(batch.progress.fraction(), 0.2);
  EXPECT_TRUE(b.empty());
  EXPECT_FALSE(b.Due(t0 + absl::Hours(1)));
  // The clock restarts with the next event.
  b.Add(Module(1, "mlp.up_proj", 0.3), t0 + absl::Seconds(10));
  EXPECT_FALSE(b.Due(t0 + absl::Seconds(10) + absl::Milliseconds(100)));
  EXPECT_TRUE(b.Due(t0 + absl::Seconds(10) + absl::Milliseconds(250)));
}

TEST(EventBatcherTest, DueAtOnceWhenFullAndTakesAtMostMaxEvents) {
  EventBatcher b({/*max_events=*/32, /*max_delay=*/absl::Seconds(10)});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 31; ++i) b.Add(Module(0, "m" + std::to_string(i), i / 100.0), t0);
  EXPECT_FALSE(b.Due(t0));
  b.Add(Module(0, "m31", 0.31), t0);
  EXPECT_TRUE(b.Due(t0));
  for (int i = 32; i < 40; ++i) b.Add(Module(0, "m" + std::to_string(i), i / 100.0), t0);
  EventBatcher::Batch first = b.Take();
  ASSERT_EQ(first.events.size(), 32u);
  EXPECT_EQ(first.events[0].module_progress().module(), "m0");
  EXPECT_EQ(first.events[31].module_progress().module(), "m31");
  // The 8 left over keep their age: due as soon as their delay is over.
  EXPECT_EQ(b.size(), 8);
  EXPECT_FALSE(b.Due(t0 + absl::Seconds(9)));
  EXPECT_TRUE(b.Due(t0 + absl::Seconds(10)));
  EventBatcher::Batch second = b.Take();
  ASSERT_EQ(second.events.size(), 8u);
  EXPECT_EQ(second.events[0].module_progress().module(), "m32");
  EXPECT_TRUE(b.empty());
}

TEST(EventBatcherTest, StageEventsUpdateProgressAndLog) {
  EventBatcher b;
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  ProgressEvent stage;
  stage.kind = ProgressEvent::Kind::kStage;
  stage.stage = "quantize";
  stage.layer = 2;
  stage.num_layers = 5;
  stage.fraction = 0.5;
  stage.eta_seconds = 12.5;
  b.Add(stage, t0);
  EXPECT_EQ(b.progress().stage(), "quantize");
  EXPECT_EQ(b.progress().layer(), 2);
  EXPECT_EQ(b.progress().num_layers(), 5);
  EXPECT_DOUBLE_EQ(b.progress().fraction(), 0.5);
  ASSERT_TRUE(b.progress().has_eta_seconds());
  EXPECT_DOUBLE_EQ(b.progress().eta_seconds(), 12.5);
  // A later event with a smaller fraction does not move the snapshot back.
  b.Add(Module(2, "mlp.down_proj", 0.4), t0);
  EXPECT_DOUBLE_EQ(b.progress().fraction(), 0.5);
  EventBatcher::Batch batch = b.Take();
  ASSERT_EQ(batch.events.size(), 2u);
  ASSERT_TRUE(batch.events[0].has_log());
  EXPECT_EQ(batch.events[0].log().message(), "stage quantize: layer 3/5");
}

TEST(EventBatcherTest, PerplexityEventsGetTheJobsSeqlen) {
  EventBatcher b;
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  ProgressEvent p;
  p.kind = ProgressEvent::Kind::kPerplexity;
  p.dataset = "wikitext2";
  p.phase = "before";
  p.value = 7.5;
  b.Add(p, t0);
  b.set_perplexity_seqlen(256);
  b.Add(p, t0);
  EventBatcher::Batch batch = b.Take();
  ASSERT_EQ(batch.events.size(), 2u);
  EXPECT_EQ(batch.events[0].perplexity().seqlen(), 0) << "unknown: left unset";
  EXPECT_EQ(batch.events[1].perplexity().seqlen(), 256);
  EXPECT_EQ(b.progress().stage(), "evaluate");
}

}  // namespace
}  // namespace gptq::agent
