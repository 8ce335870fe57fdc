#include "event_batcher.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "conversions.h"

namespace gptq::agent {

EventBatcher::EventBatcher(BatcherOptions options) : options_(options) {
  if (options_.max_events < 1) options_.max_events = 1;
}

void EventBatcher::Add(const runtime::ProgressEvent& event, absl::Time now) {
  UpdateProgress(event, &progress_);
  std::optional<gptq::v1::JobEvent> converted = ToJobEvent(event);
  if (!converted) return;
  if (converted->has_perplexity() && converted->perplexity().seqlen() == 0) {
    converted->mutable_perplexity()->set_seqlen(perplexity_seqlen_);
  }
  if (pending_.empty()) oldest_ = now;
  pending_.push_back(*std::move(converted));
}

absl::Time EventBatcher::Deadline() const {
  if (pending_.empty()) return absl::InfiniteFuture();
  if (static_cast<int>(pending_.size()) >= options_.max_events) return absl::InfinitePast();
  return oldest_ + options_.max_delay;
}

bool EventBatcher::Due(absl::Time now) const { return !pending_.empty() && now >= Deadline(); }

EventBatcher::Batch EventBatcher::Take() {
  Batch batch;
  const size_t n = std::min<size_t>(pending_.size(), options_.max_events);
  batch.events.assign(std::make_move_iterator(pending_.begin()),
                      std::make_move_iterator(pending_.begin() + n));
  pending_.erase(pending_.begin(), pending_.begin() + n);
  batch.progress = progress_;
  // Leftovers keep the old timestamp, so they are due at once.
  if (pending_.empty()) oldest_ = absl::InfiniteFuture();
  return batch;
}

}  // namespace gptq::agent
