#include "validation.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "test_util.h"

namespace gptq::server {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

class ValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(model_dir());
    fs::create_directories(dir_.File("out"));
    options_.allowed_model_roots = {dir_.File("models")};
    options_.allowed_output_roots = {dir_.File("out")};
  }
  std::string model_dir() const { return dir_.File("models/tiny"); }
  gptq::v1::CreateJobRequest Valid() const {
    gptq::v1::CreateJobRequest r;
    r.mutable_spec()->set_model_uri(model_dir());
    r.mutable_spec()->set_output_uri(dir_.File("out/q1"));
    return r;
  }
  absl::Status Check(const gptq::v1::CreateJobRequest& r) const {
    return ValidateCreateJobRequest(r, options_);
  }
  void ExpectInvalid(const gptq::v1::CreateJobRequest& r, const std::string& message_part) {
    absl::Status s = Check(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(message_part), std::string::npos)
        << "message '" << s.message() << "' lacks '" << message_part << "'";
  }

  TempDir dir_;
  ValidationOptions options_;
};

TEST_F(ValidationTest, MinimalRequestIsValid) { EXPECT_TRUE(Check(Valid()).ok()) << Check(Valid()); }

TEST_F(ValidationTest, FullValidRequest) {
  auto r = Valid();
  auto* s = r.mutable_spec();
  s->set_bits(3);
  s->set_group_size(-1);
  s->set_damp_percent(0.01);
  s->set_format(gptq::v1::CHECKPOINT_FORMAT_GPTQ_V2);
  s->mutable_calibration()->set_dataset("wikitext2");
  s->mutable_calibration()->set_nsamples(16);
  s->mutable_calibration()->set_seqlen(256);
  s->mutable_evaluation()->add_datasets("tinystories");
  s->set_batch_size(16);
  s->set_max_shard_size_bytes(1 << 20);
  (*r.mutable_labels())["team.a-1"] = "x";
  r.set_priority(-100);
  EXPECT_TRUE(Check(r).ok()) << Check(r);
}

TEST_F(ValidationTest, NumericRules) {
  auto r = Valid();
  r.mutable_spec()->set_bits(5);
  ExpectInvalid(r, "spec.bits: must be 2, 3, 4 or 8 (got 5)");
  r = Valid();
  r.mutable_spec()->set_group_size(0);
  ExpectInvalid(r, "spec.group_size: must be > 0 or -1");
  r = Valid();
  r.mutable_spec()->set_damp_percent(1.0);
  ExpectInvalid(r, "spec.damp_percent: must be in (0, 1)");
  r = Valid();
  r.mutable_spec()->set_damp_percent(0.0);
  ExpectInvalid(r, "spec.damp_percent");
  r = Valid();
  r.mutable_spec()->set_format(static_cast<gptq::v1::CheckpointFormat>(9));
  ExpectInvalid(r, "spec.format: unknown checkpoint format 9");
  r = Valid();
  r.mutable_spec()->mutable_calibration()->set_nsamples(4097);
  ExpectInvalid(r, "spec.calibration.nsamples: must be in [1, 4096]");
  r = Valid();
  r.mutable_spec()->mutable_calibration()->set_seqlen(4);
  ExpectInvalid(r, "spec.calibration.seqlen: must be in [8, 32768]");
  r = Valid();
  r.mutable_spec()->mutable_calibration()->set_nsamples(8);
  r.mutable_spec()->set_batch_size(9);
  ExpectInvalid(r, "spec.batch_size: must be in [1, nsamples=8]");
  r = Valid();
  r.mutable_spec()->set_max_shard_size_bytes(1000);
  ExpectInvalid(r, "spec.max_shard_size_bytes: must be at least 1 MiB");
  r = Valid();
  r.set_priority(101);
  ExpectInvalid(r, "priority: must be in [-100, 100]");
  r = Valid();
  r.set_request_id(std::string(129, 'x'));
  ExpectInvalid(r, "request_id: must be at most 128 chars");
}

TEST_F(ValidationTest, DatasetsAndLabels) {
  auto r = Valid();
  r.mutable_spec()->mutable_calibration()->set_dataset("imagenet");
  ExpectInvalid(r, "spec.calibration.dataset: unknown dataset 'imagenet'");
  r = Valid();
  r.mutable_spec()->mutable_evaluation()->add_datasets("c4");
  r.mutable_spec()->mutable_evaluation()->add_datasets("nope");
  ExpectInvalid(r, "spec.evaluation.datasets[1]: unknown dataset 'nope'");
  r = Valid();
  r.mutable_spec()->mutable_calibration()->mutable_texts()->add_texts("");
  ExpectInvalid(r, "spec.calibration.texts.texts[0]: must not be empty");
  r = Valid();
  r.mutable_spec()->mutable_calibration()->mutable_token_ids()->add_ids(-1);
  ExpectInvalid(r, "spec.calibration.token_ids.ids[0]: must be >= 0");
  r = Valid();
  (*r.mutable_labels())["Bad Key"] = "v";
  ExpectInvalid(r, "labels[Bad Key]: keys must be 1-63 chars of [a-z0-9_.-]");
}

TEST_F(ValidationTest, UriSchemesAndRoots) {
  auto r = Valid();
  r.mutable_spec()->set_model_uri("");
  ExpectInvalid(r, "spec.model_uri: is required");
  r = Valid();
  r.mutable_spec()->set_model_uri("s3://bucket/model");
  ExpectInvalid(r, "spec.model_uri: unsupported scheme 's3://'");
  r = Valid();
  r.mutable_spec()->set_model_uri("models/tiny");
  ExpectInvalid(r, "spec.model_uri: local paths must be absolute");
  r = Valid();
  r.mutable_spec()->set_model_uri("file://" + model_dir());
  EXPECT_TRUE(Check(r).ok()) << Check(r);
  r = Valid();
  r.mutable_spec()->set_model_uri("hf://meta-llama/Llama-2-7b@main");
  EXPECT_TRUE(Check(r).ok()) << Check(r);
  r = Valid();
  r.mutable_spec()->set_model_uri("hf://just-a-name");
  ExpectInvalid(r, "spec.model_uri: hf:// URIs must look like hf://ORG/NAME[@REVISION]");
  r = Valid();
  r.mutable_spec()->set_model_uri(dir_.File("models/tiny/../../etc"));
  ExpectInvalid(r, "is outside the allowed roots");
  r = Valid();
  r.mutable_spec()->set_model_uri(dir_.File("models/missing"));
  ExpectInvalid(r, "does not exist");
  r = Valid();
  r.mutable_spec()->set_output_uri("hf://org/name");
  ExpectInvalid(r, "spec.output_uri: hf:// URIs are not supported here");
  r = Valid();
  r.mutable_spec()->set_output_uri("/elsewhere/out");
  ExpectInvalid(r, "spec.output_uri: path /elsewhere/out is outside the allowed roots");
}

TEST_F(ValidationTest, SymlinkEscapeIsRefused) {
  fs::create_directories(dir_.File("secret"));
  fs::create_directory_symlink(dir_.File("secret"), dir_.File("models/link"));
  auto r = Valid();
  r.mutable_spec()->set_model_uri(dir_.File("models/link"));
  ExpectInvalid(r, "is outside the allowed roots");
}

TEST_F(ValidationTest, OutputMustBeAbsentOrEmpty) {
  fs::create_directories(dir_.File("out/full"));
  std::ofstream(dir_.File("out/full/x")) << "x";
  auto r = Valid();
  r.mutable_spec()->set_output_uri(dir_.File("out/full"));
  ExpectInvalid(r, "exists and is not empty");
  fs::create_directories(dir_.File("out/empty"));
  r.mutable_spec()->set_output_uri(dir_.File("out/empty"));
  EXPECT_TRUE(Check(r).ok());
}

TEST(ResolveUriTest, NormalizesAndParsesHf) {
  auto hf = ResolveUri("f", "hf://org/name@refs/pr/1", true, {});
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->scheme, ResolvedUri::Scheme::kHuggingFace);
  EXPECT_EQ(hf->hf_repo, "org/name");
  EXPECT_EQ(hf->hf_revision, "refs/pr/1");
  auto local = ResolveUri("f", "file:///nonexistent-root/a/./b/../c/", false, {});
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(local->local_path, "/nonexistent-root/a/c");
}

}  // namespace
}  // namespace gptq::server
