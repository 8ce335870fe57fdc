#include "worker/runtime/import/llama2c_import.h"

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gptq/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/runtime/tokenizer/sentencepiece_model.h"
#include "worker/runtime/tokenizer/tokenizer.h"

namespace gptq::runtime {
namespace {

constexpr size_t kLegacyHeaderBytes = 7 * sizeof(int32_t);
constexpr size_t kVersionedHeaderBytes = 256;
constexpr int32_t kMaxDim = 1 << 24;
constexpr int32_t kMaxLayers = 1 << 12;
constexpr uint32_t kLlama2cMagic = 0x616b3432;  // "ak42", llama2.c export versions >= 1

int32_t ReadInt32Le(const uint8_t* p) {
  return static_cast<int32_t>(uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
                              (uint32_t{p[3]} << 24));
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Reads `count` floats at float index `offset` of the data section (after the header).
absl::Status ReadFloats(std::FILE* file, const std::string& path, uint64_t header_bytes,
                        uint64_t offset, uint64_t count, std::vector<float>* out) {
  out->resize(count);
  if (::fseeko(file, static_cast<off_t>(header_bytes + offset * sizeof(float)), SEEK_SET) != 0) {
    return absl::InternalError(absl::StrCat("cannot seek in ", path, ": ", std::strerror(errno)));
  }
  if (std::fread(out->data(), sizeof(float), count, file) != count) {
    return absl::InternalError(absl::StrCat("short read in ", path, " at float offset ", offset));
  }
  static_assert(sizeof(float) == 4, "float32 expected");
  // The file is little-endian, like every machine we build for; a big-endian host would need a
  // byte swap here.
  return absl::OkStatus();
}

TensorView F32View(std::string name, std::vector<int64_t> shape, const std::vector<float>& data) {
  return TensorView{std::move(name), "F32", std::move(shape), data.data(),
                    data.size() * sizeof(float)};
}

}  // namespace

uint64_t Llama2cConfig::header_bytes() const {
  return version == 0 ? kLegacyHeaderBytes : kVersionedHeaderBytes;
}

Llama2cLayout Llama2cConfig::Layout() const {
  const uint64_t d = dim, h = hidden_dim, l = n_layers, v = vocab_size;
  const uint64_t kv = static_cast<uint64_t>(kv_dim());
  Llama2cLayout o;
  uint64_t next = 0;
  auto take = [&next](uint64_t* field, uint64_t count) {
    *field = next;
    next += count;
  };
  if (version == 0) {
    // legacy_export: embeddings, then per kind all layers, final norm, freq_cis, [wcls].
    take(&o.token_embedding, v * d);
    take(&o.rms_att, l * d);
    take(&o.wq, l * d * d);
    take(&o.wk, l * kv * d);
    take(&o.wv, l * kv * d);
    take(&o.wo, l * d * d);
    take(&o.rms_ffn, l * d);
    take(&o.w1, l * h * d);
    take(&o.w2, l * d * h);
    take(&o.w3, l * h * d);
    take(&o.rms_final, d);
    uint64_t freqs = 0;
    take(&freqs, 2 * static_cast<uint64_t>(seq_len) * static_cast<uint64_t>(head_dim() / 2));
  } else {
    // version1_export: the norms first, then embeddings and the matrices; no freq_cis.
    take(&o.rms_att, l * d);
    take(&o.rms_ffn, l * d);
    take(&o.rms_final, d);
    take(&o.token_embedding, v * d);
    take(&o.wq, l * d * d);
    take(&o.wk, l * kv * d);
    take(&o.wv, l * kv * d);
    take(&o.wo, l * d * d);
    take(&o.w1, l * h * d);
    take(&o.w2, l * d * h);
    take(&o.w3, l * h * d);
  }
  o.wcls = next;
  if (!shared_classifier) next += v * d;
  o.total_floats = next;
  return o;
}

uint64_t Llama2cConfig::ExpectedFileBytes() const {
  return header_bytes() + Layout().total_floats * sizeof(float);
}

absl::StatusOr<Llama2cConfig> ParseLlama2cHeader(const void* header, size_t size,
                                                 const std::string& what) {
  if (size < kLegacyHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama2.c model ", what, ": ", size, " bytes, shorter than the 28-byte config header"));
  }
  const uint8_t* p = static_cast<const uint8_t*>(header);
  Llama2cConfig c;
  int32_t vocab = 0;
  if (static_cast<uint32_t>(ReadInt32Le(p)) == kLlama2cMagic) {
    // export.py version1_export: magic, version, the 7 ints, uint8 shared_classifier, zero
    // padding to 256 bytes.
    c.version = ReadInt32Le(p + 4);
    if (c.version != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "llama2.c model ", what, ": export version ", c.version,
          " is not supported (only the float32 formats: legacy version 0 and version 1; "
          "version 2 is int8 Q8_0)"));
    }
    if (size < kVersionedHeaderBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "llama2.c model ", what, ": ", size, " bytes, shorter than the 256-byte version-1 "
          "header"));
    }
    p += 8;
    vocab = ReadInt32Le(p + 20);
    if (vocab < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "llama2.c model ", what, ": version-1 header has a negative vocab_size ", vocab));
    }
    const int shared = p[28];
    if (shared > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "llama2.c model ", what, ": version-1 shared_classifier flag is ", shared));
    }
    c.shared_classifier = shared == 1;
  } else {
    vocab = ReadInt32Le(p + 20);
    c.shared_classifier = vocab > 0;  // the legacy format's sign convention
  }
  c.dim = ReadInt32Le(p);
  c.hidden_dim = ReadInt32Le(p + 4);
  c.n_layers = ReadInt32Le(p + 8);
  c.n_heads = ReadInt32Le(p + 12);
  c.n_kv_heads = ReadInt32Le(p + 16);
  c.seq_len = ReadInt32Le(p + 24);
  c.vocab_size = vocab == INT32_MIN ? 0 : (vocab < 0 ? -vocab : vocab);
  const std::pair<const char*, int32_t> fields[] = {
      {"dim", c.dim}, {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers},
      {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads}, {"vocab_size", vocab},
      {"seq_len", c.seq_len}};
  for (const auto& [field, value] : fields) {
    const bool bad = std::strcmp(field, "vocab_size") == 0
                         ? (value == 0 || value == INT32_MIN)
                         : value <= 0;
    if (bad) {
      return absl::InvalidArgumentError(absl::StrCat("llama2.c model ", what, ": header field ",
                                                     field, " = ", value, " is not valid"));
    }
  }
  // Bounds far above any llama2.c model, so the size arithmetic below cannot overflow.
  if (c.dim > kMaxDim || c.hidden_dim > kMaxDim || c.vocab_size > kMaxDim ||
      c.seq_len > kMaxDim || c.n_layers > kMaxLayers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama2.c model ", what, ": implausible header (dim ", c.dim, ", hidden_dim ",
        c.hidden_dim, ", n_layers ", c.n_layers, ", vocab_size ", c.vocab_size, ", seq_len ",
        c.seq_len, "); is this a llama2.c model.bin?"));
  }
  if (c.dim % c.n_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("llama2.c model ", what, ": dim ", c.dim,
                                                   " is not a multiple of n_heads ", c.n_heads));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("llama2.c model ", what, ": n_heads ",
                                                   c.n_heads, " is not a multiple of n_kv_heads ",
                                                   c.n_kv_heads));
  }
  if (c.head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("llama2.c model ", what, ": head size ",
                                                   c.head_dim(), " is odd (RoPE needs pairs)"));
  }
  return c;
}

std::string HfLlamaConfigJson(const Llama2cConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.hidden_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["max_position_embeddings"] = c.seq_len;
  j["rms_norm_eps"] = 1e-05;
  j["rope_theta"] = 10000.0;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.shared_classifier;
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  j["torch_dtype"] = "float32";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["initializer_range"] = 0.02;
  j["pretraining_tp"] = 1;
  j["rope_scaling"] = nullptr;
  j["use_cache"] = true;
  return j.dump(2);
}

std::vector<float> PermuteQkRowsToHf(const float* w, int64_t rows, int64_t cols,
                                     int64_t num_heads) {
  const int64_t head_dim = rows / num_heads;
  const int64_t half = head_dim / 2;
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t j = 0; j < 2; ++j) {
      for (int64_t i = 0; i < half; ++i) {
        const float* src = w + (h * head_dim + 2 * i + j) * cols;
        std::memcpy(out.data() + (h * head_dim + j * half + i) * cols, src,
                    static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<WrittenFile>> ImportLlama2c(const ImportLlama2cOptions& options) {
  const std::string& path = options.model_path;
  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) {
    const std::string message =
        absl::StrCat("cannot open llama2.c model ", path, ": ", std::strerror(errno));
    return errno == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
  }
  uint8_t header[kVersionedHeaderBytes];
  const size_t got = std::fread(header, 1, sizeof(header), file.get());
  GPTQ_ASSIGN_OR_RETURN(const Llama2cConfig c, ParseLlama2cHeader(header, got, path));
  if (::fseeko(file.get(), 0, SEEK_END) != 0) {
    return absl::InternalError(absl::StrCat("cannot seek in ", path));
  }
  const uint64_t file_bytes = static_cast<uint64_t>(::ftello(file.get()));
  if (file_bytes != c.ExpectedFileBytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama2.c model ", path, ": ", file_bytes, " bytes, but its header (dim ", c.dim,
        ", hidden_dim ", c.hidden_dim, ", n_layers ", c.n_layers, ", n_heads ", c.n_heads,
        ", n_kv_heads ", c.n_kv_heads, ", vocab_size ", c.vocab_size,
        c.shared_classifier ? ", shared" : ", unshared", " classifier, seq_len ", c.seq_len,
        ") implies ", c.ExpectedFileBytes(), " (version-", c.version, " float32 layout)"));
  }

  // The tokenizer first: a bad tokenizer.bin fails before anything is written.
  std::string tokenizer_model;
  if (!options.tokenizer_path.empty()) {
    GPTQ_ASSIGN_OR_RETURN(tokenizer_model,
                          tokenizer::BuildSentencePieceModelFromLlama2c(options.tokenizer_path));
    // tokenizer.bin does not record its size (run.c reads vocab_size from the model), so a
    // tokenizer of another model is only caught by counting.
    GPTQ_ASSIGN_OR_RETURN(const tokenizer::ModelProto proto,
                          tokenizer::ModelProto::Parse(tokenizer_model, options.tokenizer_path));
    if (proto.pieces.size() != static_cast<size_t>(c.vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "llama2.c tokenizer ", options.tokenizer_path, " has ", proto.pieces.size(),
          " pieces but model ", path, " has vocab_size ", c.vocab_size,
          " (a tokenizer.bin of another model?)"));
    }
  }

  CheckpointWriterOptions writer_options;
  writer_options.output_dir = options.output_dir;
  writer_options.max_shard_bytes = options.max_shard_bytes;
  writer_options.torch_dtype = "float32";
  GPTQ_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> writer,
                        CheckpointWriter::Create(writer_options));

  const Llama2cLayout at = c.Layout();
  const uint64_t d = c.dim, h = c.hidden_dim, l = c.n_layers;
  const uint64_t kv = static_cast<uint64_t>(c.kv_dim());
  const int64_t di = c.dim, hi = c.hidden_dim, kvi = c.kv_dim(), vi = c.vocab_size;
  std::vector<float> buffer;
  // Tensors in the order of the reference conversion's file.
  auto add = [&](const std::string& name, std::vector<int64_t> shape, uint64_t offset,
                 int64_t permute_heads) -> absl::Status {
    uint64_t count = 1;
    for (int64_t s : shape) count *= static_cast<uint64_t>(s);
    GPTQ_RETURN_IF_ERROR(ReadFloats(file.get(), path, c.header_bytes(), offset, count, &buffer));
    if (permute_heads > 0) {
      buffer = PermuteQkRowsToHf(buffer.data(), shape[0], shape[1], permute_heads);
    }
    return writer->AddTensor(F32View(name, std::move(shape), buffer));
  };
  GPTQ_RETURN_IF_ERROR(add("model.embed_tokens.weight", {vi, di}, at.token_embedding, 0));
  for (uint64_t i = 0; i < l; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    GPTQ_RETURN_IF_ERROR(add(p + "input_layernorm.weight", {di}, at.rms_att + i * d, 0));
    GPTQ_RETURN_IF_ERROR(add(p + "self_attn.q_proj.weight", {di, di}, at.wq + i * d * d, c.n_heads));
    GPTQ_RETURN_IF_ERROR(
        add(p + "self_attn.k_proj.weight", {kvi, di}, at.wk + i * kv * d, c.n_kv_heads));
    GPTQ_RETURN_IF_ERROR(add(p + "self_attn.v_proj.weight", {kvi, di}, at.wv + i * kv * d, 0));
    GPTQ_RETURN_IF_ERROR(add(p + "self_attn.o_proj.weight", {di, di}, at.wo + i * d * d, 0));
    GPTQ_RETURN_IF_ERROR(add(p + "post_attention_layernorm.weight", {di}, at.rms_ffn + i * d, 0));
    GPTQ_RETURN_IF_ERROR(add(p + "mlp.gate_proj.weight", {hi, di}, at.w1 + i * h * d, 0));
    GPTQ_RETURN_IF_ERROR(add(p + "mlp.down_proj.weight", {di, hi}, at.w2 + i * d * h, 0));
    GPTQ_RETURN_IF_ERROR(add(p + "mlp.up_proj.weight", {hi, di}, at.w3 + i * h * d, 0));
  }
  GPTQ_RETURN_IF_ERROR(add("model.norm.weight", {di}, at.rms_final, 0));
  if (!c.shared_classifier) GPTQ_RETURN_IF_ERROR(add("lm_head.weight", {vi, di}, at.wcls, 0));

  if (!tokenizer_model.empty()) {
    GPTQ_RETURN_IF_ERROR(writer->AddFile("tokenizer.model", tokenizer_model));
    nlohmann::ordered_json tokenizer_config = {
        {"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
        {"unk_token", "<unk>"}, {"add_bos_token", true}, {"add_eos_token", false},
        {"legacy", true}, {"clean_up_tokenization_spaces", false},
        {"model_max_length", c.seq_len}};
    GPTQ_RETURN_IF_ERROR(writer->AddFile("tokenizer_config.json", tokenizer_config.dump(2)));
    nlohmann::ordered_json special = {
        {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
    GPTQ_RETURN_IF_ERROR(writer->AddFile("special_tokens_map.json", special.dump()));
  }
  nlohmann::ordered_json generation = {{"bos_token_id", 1}, {"eos_token_id", 2},
                                       {"pad_token_id", 0}};
  GPTQ_RETURN_IF_ERROR(writer->AddFile("generation_config.json", generation.dump(2)));
  return writer->Finish(HfLlamaConfigJson(c));
}

}  // namespace gptq::runtime
