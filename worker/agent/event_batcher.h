// Batches a job's progress events into ReportEvents calls: a batch is due when it holds
// `max_events` events or its oldest event has waited `max_delay`. Not thread-safe (the agent
// guards it with its own mutex); time is passed in so tests need no clock.
#ifndef GPTQ_WORKER_AGENT_EVENT_BATCHER_H_
#define GPTQ_WORKER_AGENT_EVENT_BATCHER_H_

#include <vector>

#include "absl/time/time.h"
#include "gptq/v1/quantization.pb.h"
#include "worker/runtime/quantize_job.h"

namespace gptq::agent {

struct BatcherOptions {
  int max_events = 32;
  absl::Duration max_delay = absl::Milliseconds(250);
};

class EventBatcher {
 public:
  struct Batch {
    std::vector<gptq::v1::JobEvent> events;
    gptq::v1::JobProgress progress;  // snapshot after the batch's events
  };

  explicit EventBatcher(BatcherOptions options = {});

  // Converts and queues `event` (received at `now`); updates the progress snapshot.
  void Add(const runtime::ProgressEvent& event, absl::Time now);
  // True when a batch should be sent now.
  bool Due(absl::Time now) const;
  // When the pending batch becomes due by age; InfiniteFuture when nothing is pending, and
  // InfinitePast when it is already due by count.
  absl::Time Deadline() const;
  bool empty() const { return pending_.empty(); }
  int size() const { return static_cast<int>(pending_.size()); }
  // Removes and returns at most max_events pending events with the current progress.
  Batch Take();
  const gptq::v1::JobProgress& progress() const { return progress_; }
  // Window length to put on perplexity events that carry none (the runtime's ProgressEvent has
  // no seqlen field): the job's eval seqlen, else its calibration seqlen; 0 = leave unset.
  void set_perplexity_seqlen(int seqlen) { perplexity_seqlen_ = seqlen; }

 private:
  BatcherOptions options_;
  std::vector<gptq::v1::JobEvent> pending_;
  absl::Time oldest_ = absl::InfiniteFuture();
  gptq::v1::JobProgress progress_;
  int perplexity_seqlen_ = 0;
};

}  // namespace gptq::agent

#endif  // GPTQ_WORKER_AGENT_EVENT_BATCHER_H_
