// SentencePiece's ModelProto (sentencepiece_model.proto), read and written in the protobuf wire
// format by hand: the worker links libprotobuf 3.21 while libsentencepiece carries its own
// protobuf-lite (PITFALLS 1), so neither library nor generated code is used here.
//
// Only what a tokenizer needs is typed (pieces); trainer_spec, normalizer_spec and
// denormalizer_spec are kept as ordered field lists (WireMessage) so that a parsed model
// serializes back to the same bytes and every field can be compared.
#ifndef GPTQ_WORKER_RUNTIME_TOKENIZER_SENTENCEPIECE_MODEL_H_
#define GPTQ_WORKER_RUNTIME_TOKENIZER_SENTENCEPIECE_MODEL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace gptq::tokenizer {

// Protobuf wire types used by sentencepiece_model.proto.
enum class WireType : uint8_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

// One field as it appeared on the wire. Varints and fixed-width values live in `value` (fixed32
// as its 32 raw bits), length-delimited payloads in `bytes`.
struct WireField {
  uint32_t number = 0;
  WireType type = WireType::kVarint;
  uint64_t value = 0;
  std::string bytes;
};

// A message as an ordered list of fields. Getters return the last occurrence (protobuf's rule
// for singular fields) or the default; setters replace every occurrence, or insert the field
// before the first field with a larger number (protobuf serializes by field number).
class WireMessage {
 public:
  static absl::StatusOr<WireMessage> Parse(std::string_view bytes);
  std::string Serialize() const;
  void AppendTo(std::string* out) const;

  bool Has(uint32_t number) const;
  uint64_t GetVarint(uint32_t number, uint64_t default_value) const;
  int64_t GetInt(uint32_t number, int64_t default_value) const;  // int32/int64/enum
  bool GetBool(uint32_t number, bool default_value) const;
  float GetFloat(uint32_t number, float default_value) const;
  std::string GetString(uint32_t number, std::string_view default_value) const;

  void SetInt(uint32_t number, int64_t value);  // int32/int64/uint64/enum (negative: 10 bytes)
  void SetBool(uint32_t number, bool value);
  void SetFloat(uint32_t number, float value);
  void SetString(uint32_t number, std::string_view value);
  void AddString(uint32_t number, std::string_view value);  // repeated string

  const std::vector<WireField>& fields() const { return fields_; }
  bool operator==(const WireMessage& o) const;

 private:
  void Set(WireField field);
  std::vector<WireField> fields_;
};

// ModelProto.SentencePiece.Type.
enum class PieceType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct SentencePiece {
  std::string piece;
  float score = 0.0f;
  PieceType type = PieceType::kNormal;
  // Presence on the wire (proto2 optional), kept so serialization round-trips byte for byte.
  bool has_score = true;
  bool has_type = true;
};

// Field numbers of TrainerSpec and NormalizerSpec used by the tokenizer and the llama2.c import.
namespace trainer_field {
inline constexpr uint32_t kInput = 1, kModelPrefix = 2, kModelType = 3, kVocabSize = 4,
    kSelfTestSampleSize = 6, kInputFormat = 7, kCharacterCoverage = 10, kInputSentenceSize = 11,
    kSeedSentencepieceSize = 14, kShrinkingFactor = 15, kNumThreads = 16, kNumSubIterations = 17,
    kMaxSentenceLength = 18, kShuffleInputSentence = 19, kMaxSentencepieceLength = 20,
    kSplitByUnicodeScript = 21, kSplitByWhitespace = 22, kSplitByNumber = 23,
    kTreatWhitespaceAsSuffix = 24, kSplitDigits = 25, kAllowWhitespaceOnlyPieces = 26,
    kVocabularyOutputPieceScore = 32, kHardVocabLimit = 33, kUseAllVocab = 34,
    kByteFallback = 35, kRequiredChars = 36, kUnkId = 40, kBosId = 41, kEosId = 42, kPadId = 43,
    kUnkSurface = 44, kUnkPiece = 45, kBosPiece = 46, kEosPiece = 47, kPadPiece = 48,
    kTrainExtremelyLargeCorpus = 49, kEnableDifferentialPrivacy = 50,
    kDifferentialPrivacyNoiseLevel = 51, kDifferentialPrivacyClippingThreshold = 52;
inline constexpr int64_t kModelTypeUnigram = 1, kModelTypeBpe = 2, kModelTypeWord = 3,
    kModelTypeChar = 4;
}  // namespace trainer_field
namespace normalizer_field {
inline constexpr uint32_t kName = 1, kPrecompiledCharsmap = 2, kAddDummyPrefix = 3,
    kRemoveExtraWhitespaces = 4, kEscapeWhitespaces = 5, kNormalizationRuleTsv = 6;
}  // namespace normalizer_field

struct ModelProto {
  std::vector<SentencePiece> pieces;                // field 1
  std::optional<WireMessage> trainer_spec;          // field 2
  std::optional<WireMessage> normalizer_spec;       // field 3
  std::optional<WireMessage> denormalizer_spec;     // field 5
  std::vector<WireField> other_fields;              // self_test_data (4) and unknown fields

  // InvalidArgument naming `source_name` and the offending field / offset.
  static absl::StatusOr<ModelProto> Parse(std::string_view bytes, std::string_view source_name);
  std::string Serialize() const;
};

// Low-level helpers (exposed for tests).
void AppendVarint(uint64_t value, std::string* out);
void AppendTag(uint32_t number, WireType type, std::string* out);

}  // namespace gptq::tokenizer

#endif  // GPTQ_WORKER_RUNTIME_TOKENIZER_SENTENCEPIECE_MODEL_H_
