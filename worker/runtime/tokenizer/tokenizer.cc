#include "tokenizer.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>
#include <sys/stat.h>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gptq/status_macros.h"

namespace gptq::tokenizer {
namespace {

constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";  // ▁ U+2581
constexpr std::string_view kReplacementChar = "\xef\xbf\xbd";  // U+FFFD
constexpr std::string_view kDefaultUnkSurface = " \xe2\x81\x87 ";  // " ⁇ "

// Length of the valid UTF-8 character at the start of `s` (non-empty), or 0 if malformed —
// SentencePiece's DecodeUTF8/IsValidDecodeUTF8: overlong forms, surrogates and code points
// above U+10FFFF are malformed.
size_t ValidUtf8Length(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const auto trail = [&](size_t i) { return (b(i) & 0xC0) == 0x80; };
  const auto valid_cp = [](uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); };
  const size_t len = s.size();
  const uint8_t c0 = b(0);
  if (c0 < 0x80) return 1;
  if (len >= 2 && (c0 & 0xE0) == 0xC0) {
    const uint32_t cp = ((c0 & 0x1F) << 6) | (b(1) & 0x3F);
    if (trail(1) && cp >= 0x80 && valid_cp(cp)) return 2;
  } else if (len >= 3 && (c0 & 0xF0) == 0xE0) {
    const uint32_t cp = ((c0 & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    if (trail(1) && trail(2) && cp >= 0x800 && valid_cp(cp)) return 3;
  } else if (len >= 4 && (c0 & 0xF8) == 0xF0) {
    const uint32_t cp = ((c0 & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) |
                        (b(3) & 0x3F);
    if (trail(1) && trail(2) && trail(3) && cp >= 0x10000 && valid_cp(cp)) return 4;
  }
  return 0;
}

// SentencePiece's OneCharLen: the length the lead byte announces (no validation).
size_t OneCharLen(char c) {
  return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[(static_cast<uint8_t>(c) & 0xFF) >> 4];
}

// "<0xAB>" → 0xAB, else -1.
int PieceToByte(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

std::string ByteToPiece(int byte) { return absl::StrFormat("<0x%02X>", byte); }

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir_or_file) {
  std::string path = model_dir_or_file;
  if (IsDirectory(path)) {
    path = absl::StrCat(path, path.empty() || path.back() == '/' ? "" : "/", "tokenizer.model");
  }
  if (!Exists(path)) {
    return absl::NotFoundError(absl::StrCat(
        "SentencePiece model not found: ", path,
        IsDirectory(model_dir_or_file) ? " (the model directory has no tokenizer.model)" : ""));
  }
  GPTQ_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  return FromSerializedModel(bytes, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSerializedModel(
    std::string_view bytes, std::string_view source_name) {
  GPTQ_ASSIGN_OR_RETURN(ModelProto model, ModelProto::Parse(bytes, source_name));
  return FromModel(std::move(model), source_name);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModel(ModelProto model,
                                                                std::string_view source_name) {
  std::unique_ptr<Tokenizer> t(new Tokenizer(std::move(model)));
  GPTQ_RETURN_IF_ERROR(t->Init(source_name));
  return t;
}

absl::Status Tokenizer::Init(std::string_view source_name) {
  auto invalid = [&](auto&&... args) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source_name), ": ", args...));
  };
  if (model_.pieces.empty()) return invalid("the model has no pieces");
  if (!model_.trainer_spec.has_value()) return invalid("trainer_spec is missing");
  const WireMessage& ts = *model_.trainer_spec;
  const WireMessage empty_spec;
  const WireMessage& ns = model_.normalizer_spec.has_value() ? *model_.normalizer_spec : empty_spec;

  const int64_t model_type = ts.GetInt(trainer_field::kModelType, trainer_field::kModelTypeUnigram);
  if (model_type != trainer_field::kModelTypeBpe) {
    return invalid("trainer_spec.model_type is ", model_type,
                   "; only BPE (2) is supported by this tokenizer");
  }
  if (ts.GetBool(trainer_field::kTreatWhitespaceAsSuffix, false)) {
    return invalid("trainer_spec.treat_whitespace_as_suffix=true is not supported");
  }
  if (!ns.GetString(normalizer_field::kPrecompiledCharsmap, "").empty()) {
    return invalid("normalizer_spec.precompiled_charsmap is not empty (normalization rule '",
                   ns.GetString(normalizer_field::kName, ""),
                   "'); only the identity normalizer is supported");
  }
  byte_fallback_ = ts.GetBool(trainer_field::kByteFallback, false);

  // As SentencePiece's ModelInterface::InitializePieces.
  bool byte_found[256] = {};
  for (size_t i = 0; i < model_.pieces.size(); ++i) {
    const SentencePiece& sp = model_.pieces[i];
    const int32_t id = static_cast<int32_t>(i);
    if (sp.piece.empty()) return invalid("pieces[", i, "] is empty");
    const bool mergeable = sp.type == PieceType::kNormal || sp.type == PieceType::kUserDefined ||
                           sp.type == PieceType::kUnused;
    auto& map = mergeable ? pieces_ : reserved_;
    if (!map.emplace(std::string_view(sp.piece), id).second) {
      return invalid("pieces[", i, "] \"", sp.piece, "\" is already defined");
    }
    if (sp.type == PieceType::kUserDefined) user_defined_.push_back(sp.piece);
    if (sp.type == PieceType::kUnknown) {
      if (unk_id_ >= 0) return invalid("pieces[", i, "]: unk is already defined (id ", unk_id_, ")");
      unk_id_ = id;
    }
    if (sp.type == PieceType::kByte) {
      if (!byte_fallback_) {
        return invalid("byte piece pieces[", i, "] \"", sp.piece,
                       "\" is found although trainer_spec.byte_fallback is false");
      }
      const int byte = PieceToByte(sp.piece);
      if (byte < 0) return invalid("byte piece pieces[", i, "] \"", sp.piece, "\" is invalid");
      byte_found[byte] = true;
      byte_ids_[byte] = id;
    }
  }
  if (unk_id_ < 0) return invalid("unk is not defined (no piece of type UNKNOWN)");
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      if (!byte_found[b]) {
        return invalid("there are not 256 byte pieces although trainer_spec.byte_fallback is "
                       "true (", ByteToPiece(b), " is missing)");
      }
    }
  }
  const int64_t n = vocab_size();
  auto id_or_none = [n](int64_t id) { return id >= 0 && id < n ? static_cast<int32_t>(id) : -1; };
  bos_id_ = id_or_none(ts.GetInt(trainer_field::kBosId, 1));
  eos_id_ = id_or_none(ts.GetInt(trainer_field::kEosId, 2));
  pad_id_ = id_or_none(ts.GetInt(trainer_field::kPadId, -1));
  // Separators for Encode: ASCII bytes that occur in no mergeable piece longer than one byte.
  // Off when UNUSED pieces exist: their resegmentation depends on the candidate order over the
  // whole text (SentencePiece's `rev_merge`), which segmenting would change.
  bool has_unused = false;
  for (int b = 0; b < 128; ++b) separator_[b] = true;
  for (const SentencePiece& sp : model_.pieces) {
    const bool mergeable = sp.type == PieceType::kNormal || sp.type == PieceType::kUserDefined ||
                           sp.type == PieceType::kUnused;
    has_unused = has_unused || sp.type == PieceType::kUnused;
    if (!mergeable || sp.piece.size() < 2) continue;
    for (char c : sp.piece) {
      if (static_cast<uint8_t>(c) < 128) separator_[static_cast<uint8_t>(c)] = false;
    }
  }
  split_at_separators_ = !has_unused;
  const int64_t spec_unk = ts.GetInt(trainer_field::kUnkId, 0);
  if (spec_unk != unk_id_) {
    return invalid("trainer_spec.unk_id is ", spec_unk, " but the UNKNOWN piece has id ", unk_id_);
  }
  return absl::OkStatus();
}

std::string Tokenizer::Normalize(std::string_view input) const {
  // SentencePiece's Normalizer::Normalize without a charsmap: one UTF-8 character at a time,
  // malformed bytes become U+FFFD (one byte consumed each), spaces become ▁.
  std::string out;
  if (input.empty()) return out;
  const WireMessage empty_spec;
  const WireMessage& ns = model_.normalizer_spec.has_value() ? *model_.normalizer_spec : empty_spec;
  const bool add_dummy_prefix = ns.GetBool(normalizer_field::kAddDummyPrefix, true);
  const bool remove_extra = ns.GetBool(normalizer_field::kRemoveExtraWhitespaces, true);
  const bool escape = ns.GetBool(normalizer_field::kEscapeWhitespaces, true);

  auto next_char = [](std::string_view s) -> std::pair<std::string_view, size_t> {
    const size_t len = ValidUtf8Length(s);
    if (len == 0) return {kReplacementChar, 1};
    return {s.substr(0, len), len};
  };
  if (remove_extra) {
    while (!input.empty()) {
      auto [c, consumed] = next_char(input);
      if (c != " ") break;
      input.remove_prefix(consumed);
    }
    if (input.empty()) return out;
  }
  out.reserve(input.size() + input.size() / 2 + 3);
  const std::string_view space = escape ? kSpaceSymbol : std::string_view(" ");
  if (add_dummy_prefix) out.append(space);
  bool is_prev_space = remove_extra;
  while (!input.empty()) {
    auto [c, consumed] = next_char(input);
    input.remove_prefix(consumed);
    if (is_prev_space && c == " ") continue;
    if (c == " ") {
      out.append(space);
    } else {
      out.append(c);
    }
    // Only remove_extra_whitespaces collapses runs of spaces.
    is_prev_space = remove_extra && c == " ";
  }
  if (remove_extra) {
    while (out.size() >= space.size() &&
           std::string_view(out).substr(out.size() - space.size()) == space) {
      out.resize(out.size() - space.size());
    }
  }
  return out;
}

int32_t Tokenizer::PieceToId(std::string_view piece) const {
  if (auto it = reserved_.find(piece); it != reserved_.end()) return it->second;
  if (auto it = pieces_.find(piece); it != pieces_.end()) return it->second;
  return -1;
}

std::string_view Tokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return model_.pieces[id].piece;
}

void Tokenizer::AppendIds(std::string_view piece, int32_t id, bool* prev_unk,
                          std::vector<int32_t>* out) const {
  // SentencePieceProcessor::Encode: an unknown piece is spelled out in byte pieces; without
  // byte fallback a run of unknown pieces becomes one unk.
  if (id < 0) id = unk_id_;
  const bool is_unk = model_.pieces[id].type == PieceType::kUnknown;
  if (is_unk && byte_fallback_) {
    for (char c : piece) out->push_back(byte_ids_[static_cast<uint8_t>(c)]);
  } else if (!(is_unk && *prev_unk)) {
    out->push_back(id);
  }
  *prev_unk = is_unk && !byte_fallback_;
}

namespace {

// One symbol of the BPE segmentation: a substring of the normalized text, linked to its
// neighbours (SentencePiece's bpe::Model::Encode).
struct Symbol {
  int32_t prev;
  int32_t next;
  bool freeze;
  uint32_t begin;
  uint32_t size;
};

struct SymbolPair {
  float score;
  int32_t left;
  int32_t right;
  uint32_t size;
};

// Highest score first; on ties the leftmost pair.
struct SymbolPairLess {
  bool operator()(const SymbolPair& a, const SymbolPair& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

std::vector<std::string> Tokenizer::EncodeAsPieces(std::string_view text) const {
  std::vector<int32_t> ids = Encode(text, /*add_bos=*/false);
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int32_t id : ids) out.emplace_back(IdToPiece(id));
  return out;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  const std::string normalized = Normalize(text);
  const std::string_view norm(normalized);
  bool prev_unk = false;
  if (!split_at_separators_) {
    if (!norm.empty()) EncodeSegment(norm, &prev_unk, &out);
    return out;
  }
  // A separator (an ASCII character no multi-character mergeable piece contains, e.g. '\n' in
  // Llama-2's vocabulary) can never be merged with a neighbour, so no merge crosses it and the
  // text between separators can be encoded on its own: the same merges, in a much smaller heap.
  size_t segment_start = 0;
  for (size_t i = 0; i < norm.size(); ++i) {
    if (!separator_[static_cast<uint8_t>(norm[i])]) continue;
    if (i > segment_start) {
      EncodeSegment(norm.substr(segment_start, i - segment_start), &prev_unk, &out);
    }
    const std::string_view c = norm.substr(i, 1);
    AppendIds(c, PieceToId(c), &prev_unk, &out);
    segment_start = i + 1;
  }
  if (segment_start < norm.size()) EncodeSegment(norm.substr(segment_start), &prev_unk, &out);
  return out;
}

void Tokenizer::EncodeSegment(std::string_view norm, bool* prev_unk,
                              std::vector<int32_t>* out) const {
  // Split into characters; user-defined symbols are whole, frozen symbols.
  std::vector<Symbol> symbols;
  symbols.reserve(norm.size());
  for (size_t pos = 0; pos < norm.size();) {
    size_t len = std::min(norm.size() - pos, OneCharLen(norm[pos]));
    // SentencePiece's PrefixMatcher: the longest user-defined symbol at `pos`, if any.
    size_t longest = 0;
    for (const std::string& u : user_defined_) {
      if (u.size() > longest && norm.substr(pos, u.size()) == u) longest = u.size();
    }
    const bool freeze = longest > 0;
    if (freeze) len = longest;
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{index - 1, pos + len < norm.size() ? index + 1 : -1, freeze,
                             static_cast<uint32_t>(pos), static_cast<uint32_t>(len)});
    pos += len;
  }

  std::vector<SymbolPair> agenda_storage;
  agenda_storage.reserve(symbols.size());
  std::priority_queue<SymbolPair, std::vector<SymbolPair>, SymbolPairLess> agenda(
      SymbolPairLess(), std::move(agenda_storage));
  // Merged UNUSED piece → the two pieces it was last seen as a candidate of (SentencePiece's
  // `rev_merge`, used to resegment UNUSED pieces).
  absl::flat_hash_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  auto view = [&](const Symbol& s) { return norm.substr(s.begin, s.size); };
  auto maybe_add_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view piece = norm.substr(symbols[left].begin,
                                               symbols[left].size + symbols[right].size);
    const auto it = pieces_.find(piece);
    if (it == pieces_.end()) return;
    agenda.push(SymbolPair{model_.pieces[it->second].score, left, right,
                           static_cast<uint32_t>(piece.size())});
    if (model_.pieces[it->second].type == PieceType::kUnused) {
      rev_merge[piece] = {view(symbols[left]), view(symbols[right])};
    }
  };
  for (size_t i = 1; i < symbols.size(); ++i) {
    maybe_add_pair(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
  }

  while (!agenda.empty()) {
    const SymbolPair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[top.left];
    Symbol& r = symbols[top.right];
    // Stale: one side was merged away or grew since the pair was queued.
    if (l.size == 0 || r.size == 0 || l.size + r.size != top.size) continue;
    l.size += r.size;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = top.left;
    r.size = 0;
    maybe_add_pair(l.prev, top.left);
    maybe_add_pair(top.left, l.next);
  }

  // Final pieces; UNUSED pieces are split back into the pieces they were merged from.
  std::vector<std::string_view> stack;
  for (int32_t index = 0; index != -1; index = symbols[index].next) {
    stack.push_back(view(symbols[index]));
    while (!stack.empty()) {
      const std::string_view w = stack.back();
      stack.pop_back();
      const int32_t id = PieceToId(w);
      if (id >= 0 && model_.pieces[id].type == PieceType::kUnused) {
        const auto p = rev_merge.find(w);
        if (p != rev_merge.end()) {
          stack.push_back(p->second.second);
          stack.push_back(p->second.first);
          continue;
        }
      }
      AppendIds(w, id, prev_unk, out);
    }
  }
}

std::vector<int32_t> Tokenizer::EncodeReference(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  const std::string normalized = Normalize(text);
  // Characters (user-defined symbols whole and frozen), then: while some adjacent pair of
  // unfrozen symbols concatenates to a mergeable piece, merge the pair with the highest score,
  // the leftmost among equals.
  struct Sym {
    std::string piece;
    bool freeze;
  };
  std::vector<Sym> syms;
  for (size_t pos = 0; pos < normalized.size();) {
    size_t len = std::min(normalized.size() - pos, OneCharLen(normalized[pos]));
    size_t longest = 0;
    for (const std::string& u : user_defined_) {
      if (u.size() > longest && normalized.compare(pos, u.size(), u) == 0) longest = u.size();
    }
    const bool freeze = longest > 0;
    if (freeze) len = longest;
    syms.push_back(Sym{normalized.substr(pos, len), freeze});
    pos += len;
  }
  while (true) {
    int best = -1;
    float best_score = 0;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      if (syms[i].freeze || syms[i + 1].freeze) continue;
      const auto it = pieces_.find(syms[i].piece + syms[i + 1].piece);
      if (it == pieces_.end()) continue;
      const float score = model_.pieces[it->second].score;
      if (best < 0 || score > best_score) {
        best = static_cast<int>(i);
        best_score = score;
      }
    }
    if (best < 0) break;
    syms[best].piece += syms[best + 1].piece;
    syms.erase(syms.begin() + best + 1);
  }
  bool prev_unk = false;
  for (const Sym& s : syms) AppendIds(s.piece, PieceToId(s.piece), &prev_unk, &out);
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  const WireMessage& ts = *model_.trainer_spec;
  const std::string unk_surface = ts.GetString(trainer_field::kUnkSurface, kDefaultUnkSurface);
  const WireMessage empty_spec;
  const WireMessage& ns = model_.normalizer_spec.has_value() ? *model_.normalizer_spec : empty_spec;
  const bool strip_first_space = ns.GetBool(normalizer_field::kAddDummyPrefix, true) ||
                                 ns.GetBool(normalizer_field::kRemoveExtraWhitespaces, true);
  std::string out;
  std::string bytes;  // pending byte pieces
  auto flush_bytes = [&]() {
    std::string_view b(bytes);
    while (!b.empty()) {
      const size_t len = ValidUtf8Length(b);
      if (len == 0) {
        out.append(kReplacementChar);
        b.remove_prefix(1);
      } else {
        out.append(b.substr(0, len));
        b.remove_prefix(len);
      }
    }
    bytes.clear();
  };
  bool at_start = strip_first_space;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      flush_bytes();
      out.append(unk_surface);
      at_start = false;
      continue;
    }
    const SentencePiece& sp = model_.pieces[id];
    switch (sp.type) {
      case PieceType::kControl:
        continue;
      case PieceType::kByte:
        bytes.push_back(static_cast<char>(PieceToByte(sp.piece)));
        at_start = false;
        continue;
      case PieceType::kUnknown:
        flush_bytes();
        out.append(unk_surface);
        at_start = false;
        continue;
      default:
        break;
    }
    flush_bytes();
    std::string_view piece(sp.piece);
    if (at_start && piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
      piece.remove_prefix(kSpaceSymbol.size());
    }
    at_start = false;
    for (size_t pos = 0; pos < piece.size();) {
      if (piece.substr(pos, kSpaceSymbol.size()) == kSpaceSymbol) {
        out.push_back(' ');
        pos += kSpaceSymbol.size();
      } else {
        out.push_back(piece[pos++]);
      }
    }
  }
  flush_bytes();
  return out;
}

}  // namespace gptq::tokenizer
