#include "conversions.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gptq::agent {
namespace {

namespace v1 = ::gptq::v1;
using ::testing::HasSubstr;

JobPlacement Placement() { return {"/models/m", "/out/o", "/data", "cuda:1"}; }

TEST(SpecToOptionsTest, EmptySpecTakesOptimumDefaults) {
  v1::QuantizationSpec spec;
  auto o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_dir, "/models/m");
  EXPECT_EQ(o->output_dir, "/out/o");
  EXPECT_EQ(o->data_dir, "/data");
  EXPECT_EQ(o->device, "cuda:1");
  EXPECT_EQ(o->bits, 4);
  EXPECT_EQ(o->group_size, 128);
  EXPECT_DOUBLE_EQ(o->damp_percent, 0.1);
  EXPECT_DOUBLE_EQ(o->damp_auto_increment, 0.01);
  EXPECT_TRUE(o->sym);
  EXPECT_FALSE(o->desc_act);
  ASSERT_TRUE(o->act_group_aware.has_value());
  EXPECT_TRUE(*o->act_group_aware);
  EXPECT_FALSE(o->static_groups);
  EXPECT_TRUE(o->true_sequential);
  EXPECT_EQ(o->format, "gptq");
  EXPECT_EQ(o->calibration.dataset, "c4");
  EXPECT_TRUE(o->calibration.texts.empty());
  EXPECT_TRUE(o->calibration.file.empty());
  EXPECT_TRUE(o->calibration.token_ids.empty());
  EXPECT_EQ(o->calibration.nsamples, 128);
  EXPECT_EQ(o->calibration.seqlen, 0);
  EXPECT_EQ(o->calibration.seed, 0u);
  EXPECT_TRUE(o->eval_datasets.empty());
  EXPECT_EQ(o->eval_seqlen, 0);
  EXPECT_EQ(o->batch_size, 1);
  EXPECT_EQ(o->max_shard_bytes, int64_t{4294967296});
}

TEST(SpecToOptionsTest, ExplicitFieldsWin) {
  v1::QuantizationSpec spec;
  spec.set_bits(3);
  spec.set_group_size(-1);
  spec.set_damp_percent(0.05);
  spec.set_damp_auto_increment(0.02);
  spec.set_desc_act(true);
  spec.set_static_groups(true);
  spec.set_true_sequential(false);
  spec.set_format(v1::CHECKPOINT_FORMAT_GPTQ_V2);
  spec.mutable_calibration()->set_dataset("wikitext2");
  spec.mutable_calibration()->set_nsamples(16);
  spec.mutable_calibration()->set_seqlen(256);
  spec.mutable_calibration()->set_seed(7);
  spec.mutable_evaluation()->add_datasets("wikitext2");
  spec.mutable_evaluation()->add_datasets("c4");
  spec.mutable_evaluation()->set_seqlen(512);
  spec.set_batch_size(4);
  spec.set_max_shard_size_bytes(int64_t{1} << 20);
  auto o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->bits, 3);
  EXPECT_EQ(o->group_size, -1);
  EXPECT_DOUBLE_EQ(o->damp_percent, 0.05);
  EXPECT_DOUBLE_EQ(o->damp_auto_increment, 0.02);
  EXPECT_TRUE(o->desc_act);
  EXPECT_EQ(o->act_group_aware, false) << "act_group_aware defaults to !desc_act";
  EXPECT_TRUE(o->static_groups);
  EXPECT_FALSE(o->true_sequential);
  EXPECT_EQ(o->format, "gptq_v2");
  EXPECT_EQ(o->calibration.dataset, "wikitext2");
  EXPECT_EQ(o->calibration.nsamples, 16);
  EXPECT_EQ(o->calibration.seqlen, 256);
  EXPECT_EQ(o->calibration.seed, 7u);
  EXPECT_THAT(o->eval_datasets, ::testing::ElementsAre("wikitext2", "c4"));
  EXPECT_EQ(o->eval_seqlen, 512);
  EXPECT_EQ(o->batch_size, 4);
  EXPECT_EQ(o->max_shard_bytes, int64_t{1} << 20);
}

TEST(SpecToOptionsTest, AsymmetricDefaultsToGptqV2AndActGroupAwareFollowsDescAct) {
  v1::QuantizationSpec spec;
  spec.set_sym(false);
  auto o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->sym);
  EXPECT_EQ(o->format, "gptq_v2");

  spec.set_act_group_aware(false);
  o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->act_group_aware, false);

  // Forced off with desc_act even when asked for.
  spec.set_act_group_aware(true);
  spec.set_desc_act(true);
  o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->act_group_aware, false);

  spec.set_format(v1::CHECKPOINT_FORMAT_GPTQ);
  o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->format, "gptq");
}

TEST(SpecToOptionsTest, CalibrationSources) {
  v1::QuantizationSpec spec;
  spec.mutable_calibration()->mutable_token_ids()->add_ids(5);
  spec.mutable_calibration()->mutable_token_ids()->add_ids(0);
  auto o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->calibration.token_ids, ::testing::ElementsAre(5, 0));
  EXPECT_EQ(o->calibration.nsamples, 128);

  spec.mutable_calibration()->mutable_texts()->add_texts("hello");
  o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->calibration.token_ids.empty());
  EXPECT_THAT(o->calibration.texts, ::testing::ElementsAre("hello"));

  spec.mutable_calibration()->set_file_uri("file:///data/calib.txt");
  o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->calibration.file, "/data/calib.txt");
  EXPECT_TRUE(o->calibration.texts.empty());

  spec.mutable_calibration()->set_file_uri("/plain/path.txt");
  o = SpecToOptions(spec, Placement());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->calibration.file, "/plain/path.txt");
}

struct BadCase {
  std::function<void(v1::QuantizationSpec*)> mutate;
  std::string expected;
};

TEST(SpecToOptionsTest, RejectsOutOfRangeFieldsNamingThem) {
  const std::vector<BadCase> cases = {
      {[](auto* s) { s->set_bits(5); }, "spec.bits must be 2, 3, 4 or 8 (got 5)"},
      {[](auto* s) { s->set_group_size(0); }, "spec.group_size must be -1 or positive (got 0)"},
      {[](auto* s) { s->set_damp_percent(1.0); }, "spec.damp_percent must be in (0, 1)"},
      {[](auto* s) { s->set_damp_auto_increment(0.0); }, "spec.damp_auto_increment"},
      {[](auto* s) { s->mutable_calibration()->set_nsamples(0); },
       "spec.calibration.nsamples must be in [1, 4096] (got 0)"},
      {[](auto* s) { s->mutable_calibration()->set_seqlen(4); },
       "spec.calibration.seqlen must be in [8, 32768] (got 4)"},
      {[](auto* s) { s->mutable_calibration()->set_dataset("pile"); },
       "spec.calibration.dataset must be one of"},
      {[](auto* s) { s->mutable_calibration()->mutable_token_ids()->add_ids(-1); },
       "spec.calibration.token_ids.ids[0] must be non-negative (got -1)"},
      {[](auto* s) { s->mutable_calibration()->mutable_token_ids(); },
       "spec.calibration.token_ids.ids must hold at least one id"},
      {[](auto* s) { s->mutable_calibration()->mutable_texts()->add_texts(""); },
       "spec.calibration.texts.texts[0] must not be empty"},
      {[](auto* s) { s->mutable_calibration()->set_file_uri("s3://bucket/x"); },
       "spec.calibration.file_uri 's3://bucket/x': scheme 's3' is not supported"},
      {[](auto* s) { s->mutable_evaluation()->add_datasets("nope"); },
       "spec.evaluation.datasets[0] must be one of"},
      {[](auto* s) { s->set_batch_size(200); }, "spec.batch_size must be in [1, nsamples=128]"},
      {[](auto* s) { s->set_max_shard_size_bytes(1000); },
       "spec.max_shard_size_bytes must be at least 1048576"},
  };
  for (const BadCase& c : cases) {
    v1::QuantizationSpec spec;
    c.mutate(&spec);
    auto o = SpecToOptions(spec, Placement());
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << c.expected;
    EXPECT_THAT(std::string(o.status().message()), HasSubstr(c.expected));
  }
}

TEST(ToJobEventTest, ConvertsEachKind) {
  using runtime::ProgressEvent;
  ProgressEvent m;
  m.kind = ProgressEvent::Kind::kModule;
  m.layer = 3;
  m.num_layers = 5;
  m.module = "mlp.down_proj";
  m.rows = 64;
  m.columns = 172;
  m.loss = 0.25;
  m.damp = 0.11;
  m.rtn_fallback = true;
  m.samples = 16;
  m.seconds = 0.5;
  m.fraction = 0.7;
  auto e = ToJobEvent(m);
  ASSERT_TRUE(e && e->has_module_progress());
  EXPECT_EQ(e->module_progress().layer(), 3);
  EXPECT_EQ(e->module_progress().module(), "mlp.down_proj");
  EXPECT_EQ(e->module_progress().columns(), 172);
  EXPECT_DOUBLE_EQ(e->module_progress().loss(), 0.25);
  EXPECT_TRUE(e->module_progress().rtn_fallback());
  EXPECT_FALSE(e->module_progress().has_eta_seconds()) << "eta < 0 means unknown";
  m.eta_seconds = 3.0;
  EXPECT_DOUBLE_EQ(ToJobEvent(m)->module_progress().eta_seconds(), 3.0);

  ProgressEvent p;
  p.kind = ProgressEvent::Kind::kPerplexity;
  p.dataset = "wikitext2";
  p.phase = "after";
  p.value = 9.5;
  p.num_tokens = 1000;
  e = ToJobEvent(p);
  ASSERT_TRUE(e && e->has_perplexity());
  EXPECT_EQ(e->perplexity().phase(), "after");
  EXPECT_DOUBLE_EQ(e->perplexity().value(), 9.5);

  ProgressEvent l;
  l.kind = ProgressEvent::Kind::kLog;
  l.level = "warning";
  l.message = "damp raised";
  e = ToJobEvent(l);
  ASSERT_TRUE(e && e->has_log());
  EXPECT_EQ(e->log().level(), v1::LogLine::LEVEL_WARNING);
  EXPECT_EQ(e->log().message(), "damp raised");

  ProgressEvent a;
  a.kind = ProgressEvent::Kind::kArtifact;
  a.message = "model.safetensors";
  a.size_bytes = 123;
  a.sha256 = "ab";
  e = ToJobEvent(a);
  ASSERT_TRUE(e && e->has_artifact());
  EXPECT_EQ(e->artifact().file().path(), "model.safetensors");
  EXPECT_EQ(e->artifact().file().size_bytes(), 123);
}

TEST(ReportToResultsTest, SummarizesLossesAndCopiesFiles) {
  runtime::QuantizeReport report;
  report.modules = {
      {0, "model.layers.0.self_attn.q_proj", 64, 64, 1.5, 0.1, false, false, 0.1},
      {0, "model.layers.0.mlp.down_proj", 64, 172, 0.0, 0.0, false, true, 0.0},
      {1, "model.layers.1.self_attn.q_proj", 64, 64, 4.0, 0.1, false, false, 0.1},
      {1, "model.layers.1.self_attn.k_proj", 32, 64, 9.0, 1.0, true, false, 0.1},
  };
  runtime::PerplexityReport ppl;
  ppl.dataset = "wikitext2";
  ppl.before = 10.0;
  ppl.seqlen = 256;
  ppl.num_tokens = 4096;
  report.perplexity.push_back(ppl);
  report.files = {{"config.json", 10, "aa"}, {"model.safetensors", 1000, "bb"}};
  report.output_dir = "/out/x";
  report.seconds = {{"total", 12.5}, {"quantize", 10.0}};
  report.peak_gpu_bytes = 1 << 20;
  v1::JobResults r = ReportToResults(report, 99.0);
  EXPECT_EQ(r.losses().num_modules(), 2);
  EXPECT_DOUBLE_EQ(r.losses().total_loss(), 5.5);
  EXPECT_DOUBLE_EQ(r.losses().max_loss(), 4.0);
  EXPECT_EQ(r.losses().max_loss_module(), "model.layers.1.self_attn.q_proj");
  EXPECT_THAT(r.losses().rtn_fallback_modules(),
              ::testing::ElementsAre("model.layers.1.self_attn.k_proj"));
  EXPECT_THAT(r.losses().unquantized_modules(),
              ::testing::ElementsAre("model.layers.0.mlp.down_proj"));
  ASSERT_EQ(r.perplexity_size(), 1);
  EXPECT_TRUE(r.perplexity(0).has_before());
  EXPECT_FALSE(r.perplexity(0).has_after());
  EXPECT_EQ(r.perplexity(0).seqlen(), 256);
  EXPECT_EQ(r.output_location(), "/out/x");
  ASSERT_EQ(r.files_size(), 2);
  EXPECT_EQ(r.files(1).sha256(), "bb");
  EXPECT_DOUBLE_EQ(r.seconds(), 12.5);
  EXPECT_EQ(r.peak_gpu_bytes(), 1 << 20);
  report.seconds.clear();
  EXPECT_DOUBLE_EQ(ReportToResults(report, 99.0).seconds(), 99.0);
}

TEST(StatusToJobErrorTest, MapsCodes) {
  EXPECT_EQ(StatusToJobError(absl::NotFoundError("config.json missing")).code(), 9);
  EXPECT_EQ(StatusToJobError(absl::NotFoundError("config.json missing")).message(),
            "config.json missing");
  EXPECT_EQ(StatusToJobError(absl::FailedPreconditionError("bad tensor")).code(), 9);
  EXPECT_EQ(StatusToJobError(absl::ResourceExhaustedError("CUDA out of memory")).code(), 8);
  EXPECT_EQ(StatusToJobError(absl::CancelledError("cancelled")).code(), 1);
  EXPECT_EQ(StatusToJobError(absl::InvalidArgumentError("x")).code(), 3);
  EXPECT_EQ(StatusToJobError(absl::OkStatus()).code(), 13);
  // The loader rejecting a file of the model: a bad model, FAILED_PRECONDITION.
  const absl::Status bad_config =
      absl::InvalidArgumentError("/m/llama/config.json: missing \"architectures\"");
  EXPECT_EQ(StatusToJobError(bad_config, "/m/llama").code(), 9);
  EXPECT_EQ(StatusToJobError(bad_config, "/m/llama/").code(), 9);
  EXPECT_EQ(StatusToJobError(bad_config, "/m/llama").message(), bad_config.message());
  EXPECT_EQ(StatusToJobError(bad_config, "/m/other").code(), 3);
  EXPECT_EQ(StatusToJobError(bad_config, "/m/llam").code(), 3);
  EXPECT_EQ(StatusToJobError(bad_config).code(), 3);
}

TEST(LocalPathFromUriTest, Forms) {
  EXPECT_EQ(*LocalPathFromUri("file:///a/b", "f"), "/a/b");
  EXPECT_EQ(*LocalPathFromUri("file://localhost/a/b", "f"), "/a/b");
  EXPECT_EQ(*LocalPathFromUri("/a/b", "f"), "/a/b");
  EXPECT_EQ(LocalPathFromUri("file://a/b", "f").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LocalPathFromUri("", "f").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gptq::agent
