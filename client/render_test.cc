#include "render.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gptq::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

gptq::v1::ModuleProgress Module(int layer, int num_layers, const std::string& name, double loss,
                                double seconds, double fraction) {
  gptq::v1::ModuleProgress m;
  m.set_layer(layer);
  m.set_num_layers(num_layers);
  m.set_module(name);
  m.set_loss(loss);
  m.set_seconds(seconds);
  m.set_fraction(fraction);
  return m;
}

TEST(RenderTest, ProgressBar) {
  EXPECT_EQ(ProgressBar(0.0, 10), "[----------]");
  EXPECT_EQ(ProgressBar(0.5, 10), "[#####-----]");
  EXPECT_EQ(ProgressBar(0.29, 10), "[##--------]");
  EXPECT_EQ(ProgressBar(0.3, 10), "[###-------]");
  EXPECT_EQ(ProgressBar(1.0, 4), "[####]");
  EXPECT_EQ(ProgressBar(1.7, 4), "[####]");
  EXPECT_EQ(ProgressBar(-1.0, 4), "[----]");
  EXPECT_EQ(ProgressBar(std::nan(""), 4), "[----]");
}

TEST(RenderTest, DurationsAndBytes) {
  EXPECT_EQ(FormatDuration(0.84), "0.8s");
  EXPECT_EQ(FormatDuration(42.4), "42s");
  EXPECT_EQ(FormatDuration(185), "3m05s");
  EXPECT_EQ(FormatDuration(3725), "1h02m");
  EXPECT_EQ(FormatBytes(640), "640 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(int64_t{12} << 20), "12.0 MiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 30), "3.0 GiB");
}

TEST(RenderTest, OneLinePerLayerWhenTheNextLayerStarts) {
  LayerProgress p(/*bar_width=*/10);
  EXPECT_FALSE(p.Finish().has_value());
  EXPECT_FALSE(p.OnModule(Module(0, 2, "self_attn.q_proj", 0.25, 1.0, 0.1)).has_value());
  EXPECT_FALSE(p.OnModule(Module(0, 2, "mlp.down_proj", 0.5, 2.0, 0.5)).has_value());
  auto line = p.OnModule(Module(1, 2, "self_attn.q_proj", 1.0, 1.0, 0.6));
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(*line, "layer 1/2 [#####-----]  50%  2 modules  loss 0.75  3.0s");
  auto m = Module(1, 2, "mlp.down_proj", 2.0, 0.5, 1.0);
  m.set_rtn_fallback(true);
  m.set_eta_seconds(0);
  EXPECT_FALSE(p.OnModule(m).has_value());
  EXPECT_EQ(p.StatusLine(), "layer 2/2 [##########] 100% quantize mlp.down_proj eta 0.0s");
  line = p.Finish();
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(*line,
            "layer 2/2 [##########] 100%  2 modules  loss 3  1.5s  rtn-fallback 1  eta 0.0s");
  EXPECT_FALSE(p.Finish().has_value());  // returned once only
}

TEST(RenderTest, StatusLineBeforeAnyModule) {
  LayerProgress p(4);
  EXPECT_EQ(p.StatusLine(), "[----]   0%");
  p.set_stage("evaluate");
  EXPECT_EQ(p.StatusLine(), "[----]   0% evaluate");
}

TEST(RenderTest, EventLines) {
  gptq::v1::JobEvent e;
  e.set_sequence(3);
  auto* s = e.mutable_state_change();
  s->set_from(gptq::v1::JOB_STATE_QUEUED);
  s->set_to(gptq::v1::JOB_STATE_RUNNING);
  s->set_reason("leased by worker w-1");
  s->set_attempt(1);
  EXPECT_EQ(FormatEvent(e), "#3 state QUEUED -> RUNNING (leased by worker w-1) attempt 1");

  e.Clear();
  e.set_sequence(9);
  auto* p = e.mutable_perplexity();
  p->set_dataset("wikitext2");
  p->set_phase("after");
  p->set_value(5.6789);
  p->set_seqlen(256);
  p->set_num_tokens(1000);
  EXPECT_EQ(FormatEvent(e), "#9 perplexity wikitext2 after = 5.6789 (seqlen 256, 1000 tokens)");

  e.Clear();
  e.set_sequence(4);
  *e.mutable_module_progress() = Module(0, 5, "self_attn.k_proj", 0.125, 0.5, 0.04);
  e.mutable_module_progress()->set_rows(32);
  e.mutable_module_progress()->set_columns(64);
  e.mutable_module_progress()->set_damp(0.1);
  e.mutable_module_progress()->set_samples(8);
  EXPECT_EQ(FormatEvent(e),
            "#4 module layer 1/5 self_attn.k_proj [32x64] loss 0.125 damp 0.1 samples 8 0.5s 4%");

  e.Clear();
  e.set_sequence(5);
  e.mutable_log()->set_level(gptq::v1::LogLine::LEVEL_WARNING);
  e.mutable_log()->set_message("damp raised");
  EXPECT_EQ(FormatEvent(e), "#5 log warning: damp raised");

  e.Clear();
  e.set_sequence(6);
  e.mutable_artifact()->mutable_file()->set_path("model.safetensors");
  e.mutable_artifact()->mutable_file()->set_size_bytes(2048);
  EXPECT_EQ(FormatEvent(e), "#6 wrote model.safetensors (2.0 KiB)");
}

gptq::v1::Job SucceededJob() {
  gptq::v1::Job job;
  job.set_id("j-1");
  job.set_state(gptq::v1::JOB_STATE_SUCCEEDED);
  job.mutable_spec()->set_model_uri("/models/m");
  job.mutable_spec()->set_output_uri("/out/q");
  auto* r = job.mutable_results();
  auto* p = r->add_perplexity();
  p->set_dataset("tinystories");
  p->set_seqlen(256);
  p->set_num_tokens(65536);
  p->set_before(5.0);
  p->set_after(5.25);
  auto* q = r->add_perplexity();
  q->set_dataset("wikitext2");
  q->set_seqlen(256);
  q->set_num_tokens(100);
  q->set_before(20.0);  // "after" not measured
  r->set_output_location("/out/q");
  auto* f = r->add_files();
  f->set_path("model.safetensors");
  f->set_size_bytes(int64_t{3} << 20);
  f = r->add_files();
  f->set_path("config.json");
  f->set_size_bytes(int64_t{1} << 20);
  r->set_seconds(75);
  r->mutable_losses()->set_num_modules(42);
  r->mutable_losses()->set_total_loss(1.5);
  r->mutable_losses()->set_max_loss(0.25);
  r->mutable_losses()->set_max_loss_module("model.layers.5.mlp.down_proj");
  return job;
}

TEST(RenderTest, ResultsTable) {
  EXPECT_EQ(FormatResults(SucceededJob()),
            "dataset         seqlen     tokens     before      after   change\n"
            "tinystories        256      65536     5.0000     5.2500   +5.00%\n"
            "wikitext2          256        100    20.0000          -        -\n"
            "losses: 42 modules, total 1.5, max 0.25 (model.layers.5.mlp.down_proj)\n"
            "output: /out/q (2 files, 4.0 MiB) in 1m15s\n");
  gptq::v1::Job no_eval = SucceededJob();
  no_eval.mutable_results()->clear_perplexity();
  EXPECT_THAT(FormatResults(no_eval), HasSubstr("perplexity: not evaluated"));
}

TEST(RenderTest, JobDescriptionAndTable) {
  gptq::v1::Job job = SucceededJob();
  (*job.mutable_labels())["team"] = "nlp";
  job.mutable_create_time()->set_seconds(1700000000);
  std::string text = FormatJob(job);
  EXPECT_THAT(text, HasSubstr("id:         j-1\n"));
  EXPECT_THAT(text, HasSubstr("state:      SUCCEEDED\n"));
  EXPECT_THAT(text, HasSubstr("labels:     team=nlp\n"));
  EXPECT_THAT(text, HasSubstr("created:    2023-11-14 22:13:20\n"));
  EXPECT_THAT(text, HasSubstr("output: /out/q (2 files"));

  gptq::v1::Job running;
  running.set_id("j-2");
  running.set_state(gptq::v1::JOB_STATE_RUNNING);
  running.mutable_progress()->set_layer(2);
  running.mutable_progress()->set_num_layers(6);
  running.mutable_progress()->set_fraction(0.5);
  running.mutable_progress()->set_stage("quantize");
  EXPECT_THAT(FormatJob(running), HasSubstr("progress:   layer 3/6 [##########----------] 50% "
                                            "quantize\n"));
  EXPECT_THAT(FormatJob(running), Not(HasSubstr(" files, ")));
  EXPECT_THAT(FormatJob(running), HasSubstr("quant:      4-bit (default)\n"));

  std::string table = FormatJobTable({job, running});
  EXPECT_THAT(table, HasSubstr("ID "));
  EXPECT_THAT(table, HasSubstr("j-1                      SUCCEEDED  100%   2023-11-14 22:13:20 "
                               "/models/m\n"));
  EXPECT_THAT(table, HasSubstr("j-2                      RUNNING    50%    -"));
}

TEST(RenderTest, TerminalProblems) {
  gptq::v1::Job job;
  job.set_id("j-3");
  job.set_state(gptq::v1::JOB_STATE_FAILED);
  job.mutable_error()->set_code(9);
  job.mutable_error()->set_message("cannot open model.safetensors");
  EXPECT_EQ(FormatTerminalProblem(job),
            "job j-3 failed: FAILED_PRECONDITION (9): cannot open model.safetensors");
  job.set_state(gptq::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(FormatTerminalProblem(job), "job j-3 was cancelled");
  EXPECT_EQ(CodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(CodeName(99), "CODE_99");
}

}  // namespace
}  // namespace gptq::client
