#include "sentencepiece_model.h"

#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gptq/status_macros.h"

namespace gptq::tokenizer {
namespace {

// A cursor over wire-format bytes; every read reports the offset of a malformed value.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }
  size_t pos() const { return pos_; }

  absl::StatusOr<uint64_t> Varint() {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) {
        return absl::InvalidArgumentError(absl::StrCat("truncated varint at offset ", pos_));
      }
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      result |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return result;
    }
    return absl::InvalidArgumentError(absl::StrCat("varint longer than 10 bytes at offset ", pos_));
  }

  absl::StatusOr<uint64_t> Fixed(int num_bytes) {
    if (data_.size() - pos_ < static_cast<size_t>(num_bytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("truncated fixed", num_bytes * 8, " at offset ", pos_));
    }
    uint64_t v = 0;
    for (int i = 0; i < num_bytes; ++i) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    }
    pos_ += num_bytes;
    return v;
  }

  absl::StatusOr<std::string_view> Bytes() {
    const size_t start = pos_;
    GPTQ_ASSIGN_OR_RETURN(const uint64_t len, Varint());
    if (len > data_.size() - pos_) {
      return absl::InvalidArgumentError(absl::StrCat("length ", len, " at offset ", start,
                                                     " runs past the end (",
                                                     data_.size() - pos_, " bytes left)"));
    }
    std::string_view v = data_.substr(pos_, len);
    pos_ += len;
    return v;
  }

  absl::StatusOr<WireField> Field() {
    const size_t start = pos_;
    GPTQ_ASSIGN_OR_RETURN(const uint64_t tag, Varint());
    WireField f;
    f.number = static_cast<uint32_t>(tag >> 3);
    if (f.number == 0 || (tag >> 3) > 0x1fffffff) {
      return absl::InvalidArgumentError(absl::StrCat("invalid field number ", tag >> 3,
                                                     " at offset ", start));
    }
    switch (tag & 7) {
      case 0: {
        f.type = WireType::kVarint;
        GPTQ_ASSIGN_OR_RETURN(f.value, Varint());
        break;
      }
      case 1: {
        f.type = WireType::kFixed64;
        GPTQ_ASSIGN_OR_RETURN(f.value, Fixed(8));
        break;
      }
      case 2: {
        f.type = WireType::kLengthDelimited;
        GPTQ_ASSIGN_OR_RETURN(std::string_view b, Bytes());
        f.bytes = std::string(b);
        break;
      }
      case 5: {
        f.type = WireType::kFixed32;
        GPTQ_ASSIGN_OR_RETURN(f.value, Fixed(4));
        break;
      }
      default:
        return absl::InvalidArgumentError(absl::StrCat("unsupported wire type ", tag & 7,
                                                       " (field ", f.number, ") at offset ",
                                                       start));
    }
    return f;
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

void AppendFixed(uint64_t v, int num_bytes, std::string* out) {
  for (int i = 0; i < num_bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void AppendField(const WireField& f, std::string* out) {
  AppendTag(f.number, f.type, out);
  switch (f.type) {
    case WireType::kVarint:
      AppendVarint(f.value, out);
      break;
    case WireType::kFixed64:
      AppendFixed(f.value, 8, out);
      break;
    case WireType::kFixed32:
      AppendFixed(f.value, 4, out);
      break;
    case WireType::kLengthDelimited:
      AppendVarint(f.bytes.size(), out);
      out->append(f.bytes);
      break;
  }
}

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

const char* WireTypeName(WireType t) {
  switch (t) {
    case WireType::kVarint: return "varint";
    case WireType::kFixed64: return "fixed64";
    case WireType::kLengthDelimited: return "length-delimited";
    case WireType::kFixed32: return "fixed32";
  }
  return "?";
}

absl::Status ExpectType(const WireField& f, WireType want, std::string_view what) {
  if (f.type == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(std::string(what), " (field ", f.number, ") has wire type ",
                                                 WireTypeName(f.type), ", expected ",
                                                 WireTypeName(want)));
}

absl::StatusOr<SentencePiece> ParsePiece(std::string_view bytes) {
  SentencePiece p;
  p.has_score = false;
  p.has_type = false;
  Reader r(bytes);
  while (!r.done()) {
    GPTQ_ASSIGN_OR_RETURN(WireField f, r.Field());
    switch (f.number) {
      case 1:
        GPTQ_RETURN_IF_ERROR(ExpectType(f, WireType::kLengthDelimited, "piece"));
        p.piece = std::move(f.bytes);
        break;
      case 2:
        GPTQ_RETURN_IF_ERROR(ExpectType(f, WireType::kFixed32, "score"));
        p.score = BitsFloat(static_cast<uint32_t>(f.value));
        p.has_score = true;
        break;
      case 3: {
        GPTQ_RETURN_IF_ERROR(ExpectType(f, WireType::kVarint, "type"));
        const int64_t t = static_cast<int64_t>(f.value);
        if (t < 1 || t > 6) {
          return absl::InvalidArgumentError(absl::StrCat("type ", t, " is not a valid piece type"));
        }
        p.type = static_cast<PieceType>(t);
        p.has_type = true;
        break;
      }
      default:
        break;  // unknown fields of a piece: ignored, like a protobuf parser would keep them
    }
  }
  return p;
}

}  // namespace

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

void AppendTag(uint32_t number, WireType type, std::string* out) {
  AppendVarint((static_cast<uint64_t>(number) << 3) | static_cast<uint64_t>(type), out);
}

absl::StatusOr<WireMessage> WireMessage::Parse(std::string_view bytes) {
  WireMessage m;
  Reader r(bytes);
  while (!r.done()) {
    GPTQ_ASSIGN_OR_RETURN(WireField f, r.Field());
    m.fields_.push_back(std::move(f));
  }
  return m;
}

void WireMessage::AppendTo(std::string* out) const {
  for (const WireField& f : fields_) AppendField(f, out);
}

std::string WireMessage::Serialize() const {
  std::string out;
  AppendTo(&out);
  return out;
}

bool WireMessage::Has(uint32_t number) const {
  for (const WireField& f : fields_) {
    if (f.number == number) return true;
  }
  return false;
}

uint64_t WireMessage::GetVarint(uint32_t number, uint64_t default_value) const {
  uint64_t v = default_value;
  for (const WireField& f : fields_) {
    if (f.number == number && f.type == WireType::kVarint) v = f.value;
  }
  return v;
}

int64_t WireMessage::GetInt(uint32_t number, int64_t default_value) const {
  // int32 fields carry negative values sign-extended to 64 bits; truncation keeps them right.
  return static_cast<int64_t>(GetVarint(number, static_cast<uint64_t>(default_value)));
}

bool WireMessage::GetBool(uint32_t number, bool default_value) const {
  return GetVarint(number, default_value ? 1 : 0) != 0;
}

float WireMessage::GetFloat(uint32_t number, float default_value) const {
  float v = default_value;
  for (const WireField& f : fields_) {
    if (f.number == number && f.type == WireType::kFixed32) {
      v = BitsFloat(static_cast<uint32_t>(f.value));
    }
  }
  return v;
}

std::string WireMessage::GetString(uint32_t number, std::string_view default_value) const {
  std::string v(default_value);
  for (const WireField& f : fields_) {
    if (f.number == number && f.type == WireType::kLengthDelimited) v = f.bytes;
  }
  return v;
}

void WireMessage::Set(WireField field) {
  std::vector<WireField> out;
  out.reserve(fields_.size() + 1);
  bool placed = false;
  for (WireField& f : fields_) {
    if (f.number == field.number) continue;
    if (!placed && f.number > field.number) {
      out.push_back(field);
      placed = true;
    }
    out.push_back(std::move(f));
  }
  if (!placed) out.push_back(std::move(field));
  fields_ = std::move(out);
}

void WireMessage::SetInt(uint32_t number, int64_t value) {
  Set(WireField{number, WireType::kVarint, static_cast<uint64_t>(value), {}});
}

void WireMessage::SetBool(uint32_t number, bool value) {
  Set(WireField{number, WireType::kVarint, value ? 1u : 0u, {}});
}

void WireMessage::SetFloat(uint32_t number, float value) {
  Set(WireField{number, WireType::kFixed32, FloatBits(value), {}});
}

void WireMessage::SetString(uint32_t number, std::string_view value) {
  Set(WireField{number, WireType::kLengthDelimited, 0, std::string(value)});
}

void WireMessage::AddString(uint32_t number, std::string_view value) {
  WireField field{number, WireType::kLengthDelimited, 0, std::string(value)};
  auto it = fields_.begin();
  while (it != fields_.end() && it->number <= number) ++it;
  fields_.insert(it, std::move(field));
}

bool WireMessage::operator==(const WireMessage& o) const {
  if (fields_.size() != o.fields_.size()) return false;
  for (size_t i = 0; i < fields_.size(); ++i) {
    const WireField& a = fields_[i];
    const WireField& b = o.fields_[i];
    if (a.number != b.number || a.type != b.type || a.value != b.value || a.bytes != b.bytes) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<ModelProto> ModelProto::Parse(std::string_view bytes,
                                             std::string_view source_name) {
  ModelProto m;
  Reader r(bytes);
  auto error = [&](std::string_view what, const absl::Status& s) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source_name),
                                                   ": not a SentencePiece model: ", std::string(what), ": ",
                                                   s.message()));
  };
  while (!r.done()) {
    const size_t start = r.pos();
    absl::StatusOr<WireField> f = r.Field();
    if (!f.ok()) return error("ModelProto", f.status());
    auto expect_message = [&](std::string_view what) -> absl::Status {
      absl::Status s = ExpectType(*f, WireType::kLengthDelimited, what);
      if (!s.ok()) return error(absl::StrCat("ModelProto at offset ", start), s);
      return absl::OkStatus();
    };
    switch (f->number) {
      case 1: {
        const std::string what = absl::StrCat("pieces[", m.pieces.size(), "]");
        GPTQ_RETURN_IF_ERROR(expect_message(what));
        absl::StatusOr<SentencePiece> p = ParsePiece(f->bytes);
        if (!p.ok()) return error(what, p.status());
        m.pieces.push_back(*std::move(p));
        break;
      }
      case 2:
      case 3:
      case 5: {
        const char* what = f->number == 2   ? "trainer_spec"
                           : f->number == 3 ? "normalizer_spec"
                                            : "denormalizer_spec";
        GPTQ_RETURN_IF_ERROR(expect_message(what));
        absl::StatusOr<WireMessage> msg = WireMessage::Parse(f->bytes);
        if (!msg.ok()) return error(what, msg.status());
        std::optional<WireMessage>& slot = f->number == 2   ? m.trainer_spec
                                           : f->number == 3 ? m.normalizer_spec
                                                            : m.denormalizer_spec;
        slot = *std::move(msg);
        break;
      }
      default:
        m.other_fields.push_back(*std::move(f));
    }
  }
  return m;
}

std::string ModelProto::Serialize() const {
  std::string out;
  for (const SentencePiece& p : pieces) {
    std::string body;
    AppendTag(1, WireType::kLengthDelimited, &body);
    AppendVarint(p.piece.size(), &body);
    body.append(p.piece);
    if (p.has_score) {
      AppendTag(2, WireType::kFixed32, &body);
      AppendFixed(FloatBits(p.score), 4, &body);
    }
    if (p.has_type) {
      AppendTag(3, WireType::kVarint, &body);
      AppendVarint(static_cast<uint64_t>(p.type), &body);
    }
    AppendTag(1, WireType::kLengthDelimited, &out);
    AppendVarint(body.size(), &out);
    out.append(body);
  }
  auto append_message = [&out](uint32_t number, const std::optional<WireMessage>& m) {
    if (!m.has_value()) return;
    std::string body = m->Serialize();
    AppendTag(number, WireType::kLengthDelimited, &out);
    AppendVarint(body.size(), &out);
    out.append(body);
  };
  append_message(2, trainer_spec);
  append_message(3, normalizer_spec);
  for (const WireField& f : other_fields) {
    if (f.number < 5) AppendField(f, &out);
  }
  append_message(5, denormalizer_spec);
  for (const WireField& f : other_fields) {
    if (f.number >= 5) AppendField(f, &out);
  }
  return out;
}

}  // namespace gptq::tokenizer
