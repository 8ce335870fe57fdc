// Checks the contract's generated code is usable and that every message, field, enum value,
// service and method carries a documentation comment (read from the .proto sources with
// protobuf's own parser, so an undocumented addition fails this test).
#include <string>
#include <vector>

#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include "gptq/status_macros.h"
#include "gptq/v1/quantization.grpc.pb.h"
#include "gptq/worker/v1/worker.grpc.pb.h"

namespace {

namespace pb = google::protobuf;

class CollectErrors : public pb::compiler::MultiFileErrorCollector {
 public:
  void AddError(const std::string& file, int line, int col, const std::string& msg) override {
    errors.push_back(file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + msg);
  }
  std::vector<std::string> errors;
};

bool Documented(const pb::SourceLocation& loc) {
  return !loc.leading_comments.empty() || !loc.trailing_comments.empty();
}

void CheckMessage(const pb::Descriptor* m, std::vector<std::string>* missing) {
  pb::SourceLocation loc;
  if (m->options().map_entry()) return;  // synthesized by protoc for map fields
  if (!m->GetSourceLocation(&loc) || !Documented(loc)) missing->push_back(m->full_name());
  for (int i = 0; i < m->field_count(); ++i) {
    if (!m->field(i)->GetSourceLocation(&loc) || !Documented(loc))
      missing->push_back(m->field(i)->full_name());
  }
  for (int i = 0; i < m->nested_type_count(); ++i) CheckMessage(m->nested_type(i), missing);
  for (int i = 0; i < m->enum_type_count(); ++i) {
    const pb::EnumDescriptor* e = m->enum_type(i);
    if (!e->GetSourceLocation(&loc) || !Documented(loc)) missing->push_back(e->full_name());
    for (int j = 0; j < e->value_count(); ++j)
      if (!e->value(j)->GetSourceLocation(&loc) || !Documented(loc))
        missing->push_back(e->value(j)->full_name());
  }
}

TEST(ProtoContract, EveryElementIsDocumented) {
  pb::compiler::DiskSourceTree tree;
  tree.MapPath("", GPTQ_SOURCE_DIR "/proto");
  tree.MapPath("", "/usr/include");
  CollectErrors errors;
  pb::compiler::Importer importer(&tree, &errors);
  std::vector<std::string> missing;
  for (const char* file : {"gptq/v1/quantization.proto", "gptq/worker/v1/worker.proto"}) {
    const pb::FileDescriptor* fd = importer.Import(file);
    ASSERT_NE(fd, nullptr) << file << ": " << testing::PrintToString(errors.errors);
    for (int i = 0; i < fd->message_type_count(); ++i) CheckMessage(fd->message_type(i), &missing);
    pb::SourceLocation loc;
    for (int i = 0; i < fd->enum_type_count(); ++i) {
      const pb::EnumDescriptor* e = fd->enum_type(i);
      if (!e->GetSourceLocation(&loc) || !Documented(loc)) missing.push_back(e->full_name());
      for (int j = 0; j < e->value_count(); ++j)
        if (!e->value(j)->GetSourceLocation(&loc) || !Documented(loc))
          missing.push_back(e->value(j)->full_name());
    }
    for (int i = 0; i < fd->service_count(); ++i) {
      const pb::ServiceDescriptor* s = fd->service(i);
      if (!s->GetSourceLocation(&loc) || !Documented(loc)) missing.push_back(s->full_name());
      for (int j = 0; j < s->method_count(); ++j)
        if (!s->method(j)->GetSourceLocation(&loc) || !Documented(loc))
          missing.push_back(s->method(j)->full_name());
    }
  }
  EXPECT_TRUE(missing.empty()) << "undocumented: " << testing::PrintToString(missing);
}

TEST(ProtoContract, EnumZeroValuesAreUnspecified) {
  EXPECT_EQ(gptq::v1::JobState_Name(gptq::v1::JOB_STATE_UNSPECIFIED), "JOB_STATE_UNSPECIFIED");
  EXPECT_EQ(gptq::v1::CheckpointFormat_Name(gptq::v1::CheckpointFormat(0)),
            "CHECKPOINT_FORMAT_UNSPECIFIED");
  EXPECT_EQ(gptq::v1::DevicePreference_Name(gptq::v1::DevicePreference(0)),
            "DEVICE_PREFERENCE_UNSPECIFIED");
}

TEST(ProtoContract, UnsetOptionalFieldsAreDistinguishable) {
  gptq::v1::QuantizationSpec spec;
  EXPECT_FALSE(spec.has_bits());
  spec.set_bits(4);
  EXPECT_TRUE(spec.has_bits());
  gptq::v1::QuantizationSpec round_trip;
  ASSERT_TRUE(round_trip.ParseFromString(spec.SerializeAsString()));
  EXPECT_TRUE(round_trip.has_bits());
  EXPECT_FALSE(round_trip.has_group_size());
}

absl::StatusOr<int> Half(int x) {
  if (x % 2) return absl::InvalidArgumentError("odd");
  return x / 2;
}
absl::Status Quarter(int x, int* out) {
  GPTQ_ASSIGN_OR_RETURN(int h, Half(x));
  GPTQ_ASSIGN_OR_RETURN(*out, Half(h));
  GPTQ_RETURN_IF_ERROR(absl::OkStatus());
  return absl::OkStatus();
}

TEST(StatusMacros, PropagateErrorsAndValues) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  absl::Status s = Quarter(6, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd");
}

}  // namespace
