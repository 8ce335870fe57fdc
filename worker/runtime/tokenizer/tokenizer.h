// A native SentencePiece tokenizer for `tokenizer.model` files (Llama-2 family: BPE model type,
// byte fallback, dummy-prefix, identity normalizer). Plain C++ + Abseil: no protobuf library
// (the model file's wire format is parsed by hand, see sentencepiece_model.h) and no
// libsentencepiece (it cannot share a process with protobuf, PITFALLS 1).
//
// Encode() reproduces SentencePiece 0.1.97's `EncodeAsIds` token for token (checked against the
// real library on WikiText-2 and TinyStories in tokenizer_test.cc).
//
// Thread-safety: a loaded Tokenizer is immutable; Encode/Decode may be called concurrently.
#ifndef GPTQ_WORKER_RUNTIME_TOKENIZER_TOKENIZER_H_
#define GPTQ_WORKER_RUNTIME_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "sentencepiece_model.h"

namespace gptq::tokenizer {

class Tokenizer {
 public:
  // Loads `<path>/tokenizer.model` when `model_dir_or_file` is a directory, else the file itself.
  // NotFound (naming the path) when absent; InvalidArgument naming the file and the field on a
  // corrupt or unsupported model (only model_type BPE is supported).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir_or_file);

  // Builds from the bytes of a serialized ModelProto; `source_name` appears in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSerializedModel(
      std::string_view bytes, std::string_view source_name);

  // Builds from a parsed model; validates it like SentencePiece does.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModel(ModelProto model,
                                                              std::string_view source_name);

  // Token ids of `text` (UTF-8; malformed bytes become U+FFFD as in SentencePiece), with the BOS
  // id first when `add_bos` (and the model has one). Never fails: unknown characters fall back
  // to byte pieces <0xXX> (without byte fallback, each run of them to one unk id).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;

  // The same, as pieces (for debugging and tests).
  std::vector<std::string> EncodeAsPieces(std::string_view text) const;

  // The slow, obviously-correct twin of Encode: repeatedly merges the adjacent pair whose merged
  // piece has the highest score (leftmost on ties), O(n^2). For tests only.
  std::vector<int32_t> EncodeReference(std::string_view text, bool add_bos) const;

  // Text of `ids`, like SentencePiece's DecodeIds: control pieces vanish, byte pieces are joined
  // into UTF-8 (invalid sequences become U+FFFD), ▁ becomes ' ', the dummy-prefix space of the
  // first piece is dropped, unknown ids and the unk piece become the unk surface (" ⁇ ").
  std::string Decode(absl::Span<const int32_t> ids) const;

  // Piece of `id`; empty for ids out of range.
  std::string_view IdToPiece(int32_t id) const;
  // Id of `piece`, or -1 if it is not in the vocabulary.
  int32_t PieceToId(std::string_view piece) const;

  int32_t vocab_size() const { return static_cast<int32_t>(model_.pieces.size()); }
  int32_t bos_id() const { return bos_id_; }  // -1 if the model has none
  int32_t eos_id() const { return eos_id_; }  // -1 if the model has none
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }  // -1 if the model has none
  const ModelProto& model() const { return model_; }

 private:
  explicit Tokenizer(ModelProto model) : model_(std::move(model)) {}
  absl::Status Init(std::string_view source_name);
  // Normalized text: ▁ for spaces, dummy prefix, malformed UTF-8 replaced.
  std::string Normalize(std::string_view text) const;
  // Appends the id(s) of a final piece: byte fallback for unknown pieces, or one unk for a run
  // of them (`prev_unk` carries the run between calls).
  void AppendIds(std::string_view piece, int32_t id, bool* prev_unk,
                 std::vector<int32_t>* out) const;
  // BPE over one stretch of normalized text (SentencePiece's bpe::Model::Encode), appending ids.
  void EncodeSegment(std::string_view normalized, bool* prev_unk, std::vector<int32_t>* out) const;

  // Constant after construction.
  ModelProto model_;
  // NORMAL, USER_DEFINED and UNUSED pieces (those BPE may merge into).
  absl::flat_hash_map<std::string_view, int32_t> pieces_;
  // CONTROL, UNKNOWN and BYTE pieces.
  absl::flat_hash_map<std::string_view, int32_t> reserved_;
  std::vector<std::string> user_defined_;  // matched as whole symbols, never split
  int32_t byte_ids_[256] = {};
  bool byte_fallback_ = false;
  bool separator_[256] = {};  // see Init
  bool split_at_separators_ = false;
  int32_t unk_id_ = -1;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t pad_id_ = -1;
};

// The bytes of a SentencePiece `tokenizer.model` (ModelProto wire format) rebuilt from a
// llama2.c `tokenizer.bin` (int32 max_token_length, then per token: float32 score, int32 len,
// bytes). Piece types, trainer_spec and normalizer_spec, which the .bin lacks, are
// reconstructed as in Meta's Llama-2 tokenizer.model: id 0 UNKNOWN "<unk>", ids 1/2 CONTROL
// "<s>"/"</s>" (llama2.c wrote them as "\n<s>\n"/"\n</s>\n"), "<0xXX>" BYTE, the rest NORMAL
// with ' ' mapped back to ▁; BPE, byte_fallback, identity normalizer with dummy prefix.
// NotFound for a missing file; InvalidArgument naming the file and offset on a malformed one.
absl::StatusOr<std::string> BuildSentencePieceModelFromLlama2c(
    const std::string& tokenizer_bin_path);

// The same from the .bin's bytes (`source_name` for messages).
absl::StatusOr<std::string> BuildSentencePieceModelFromLlama2cBytes(std::string_view bin,
                                                                   std::string_view source_name);

}  // namespace gptq::tokenizer

#endif  // GPTQ_WORKER_RUNTIME_TOKENIZER_TOKENIZER_H_
