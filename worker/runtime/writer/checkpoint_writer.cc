#include "worker/runtime/writer/checkpoint_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gptq/posix_fs.h"
#include "gptq/sha256.h"
#include "gptq/status_macros.h"
#include "nlohmann/json.hpp"

namespace gptq::runtime {

namespace {

constexpr const char* kTokenizerFiles[] = {
    "tokenizer.model",         "tokenizer.json",    "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt",              "chat_template.jinja", "generation_config.json"};

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Writes all of `data` to `file`, feeding `sha` (if any) with what was written.
absl::Status WriteAll(std::FILE* file, const void* data, size_t size, const std::string& path,
                      Sha256* sha) {
  if (size == 0) return absl::OkStatus();
  if (std::fwrite(data, 1, size, file) != size) return ErrnoError("cannot write", path);
  if (sha != nullptr) sha->Update(data, size);
  return absl::OkStatus();
}

// Flushes and fsyncs, then closes `file` (always closed, even on error).
absl::Status CloseDurably(std::FILE* file, const std::string& path) {
  bool ok = std::fflush(file) == 0 && ::fsync(::fileno(file)) == 0;
  const int saved_errno = errno;
  ok = (std::fclose(file) == 0) && ok;
  if (!ok) {
    errno = saved_errno;
    return ErrnoError("cannot close", path);
  }
  return absl::OkStatus();
}

absl::Status WriteFileDurably(const std::string& path, const std::string& contents) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return ErrnoError("cannot create", path);
  absl::Status status = WriteAll(file, contents.data(), contents.size(), path, nullptr);
  absl::Status close_status = CloseDurably(file, path);
  return status.ok() ? close_status : status;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return ErrnoError("cannot open", path);
  std::string contents;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) contents.append(buffer, n);
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) return absl::InternalError(absl::StrCat("read error in ", path));
  return contents;
}

absl::Status SyncDirectory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return ErrnoError("cannot open directory", path);
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) return ErrnoError("cannot fsync directory", path);
  return absl::OkStatus();
}

// OK when `path` does not exist or is an empty directory.
absl::Status CheckOutputDirUsable(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError("cannot stat output directory", path);
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("output path ", path, " exists and is not a directory"));
  }
  absl::StatusOr<bool> empty = fsutil::IsEmptyDirectory(path);
  if (!empty.ok() || !*empty) {
    return absl::FailedPreconditionError(absl::StrCat(
        "output directory ", path, " exists and is not empty (refusing to overwrite)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateQuantization(const QuantizationConfig& q) {
  if (q.bits != 2 && q.bits != 3 && q.bits != 4 && q.bits != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization.bits must be 2, 3, 4 or 8, got ", q.bits));
  }
  if (q.group_size != -1 && q.group_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization.group_size must be > 0 or -1, got ", q.group_size));
  }
  if (!(q.damp_percent > 0.0 && q.damp_percent < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization.damp_percent must be in (0, 1), got ", q.damp_percent));
  }
  if (q.checkpoint_format != "gptq" && q.checkpoint_format != "gptq_v2") {
    return absl::InvalidArgumentError(absl::StrCat(
        "quantization.checkpoint_format must be \"gptq\" or \"gptq_v2\", got \"",
        q.checkpoint_format, "\""));
  }
  if (!q.sym && q.checkpoint_format != "gptq_v2") {
    return absl::InvalidArgumentError(
        "quantization: sym=false requires checkpoint_format \"gptq_v2\" (format \"gptq\" (v1) "
        "stores zero-1 and cannot represent an asymmetric zero point of 0)");
  }
  return absl::OkStatus();
}

nlohmann::ordered_json QuantizationJson(const QuantizationConfig& q,
                                        const std::string& quantizer_name) {
  nlohmann::ordered_json j;
  j["quant_method"] = "gptq";
  j["bits"] = q.bits;
  j["group_size"] = q.group_size;
  j["desc_act"] = q.desc_act;
  j["sym"] = q.sym;
  j["damp_percent"] = q.damp_percent;
  j["true_sequential"] = q.true_sequential;
  j["static_groups"] = q.static_groups;
  j["checkpoint_format"] = q.checkpoint_format;
  j["format"] = q.checkpoint_format;
  j["lm_head"] = false;
  j["meta"] = {{"quantizer", nlohmann::ordered_json::array({quantizer_name})},
               {"damp_auto_increment", q.damp_auto_increment},
               {"act_group_aware", q.act_group_aware}};
  return j;
}

bool IsReservedOutputName(const std::string& name) {
  if (name == "config.json" || name == "quantize_config.json" ||
      name == "model.safetensors.index.json") {
    return true;
  }
  return name.rfind("model", 0) == 0 && name.size() >= 12 &&
         name.compare(name.size() - 12, 12, ".safetensors") == 0;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

constexpr const char* kGptqSuffixes[] = {".qweight", ".qzeros", ".scales", ".g_idx"};

// dtype a GPTQ tensor must have, or nullptr for a tensor that is not one.
const char* GptqTensorDtype(const std::string& name) {
  if (EndsWith(name, ".qweight") || EndsWith(name, ".qzeros") || EndsWith(name, ".g_idx")) {
    return "I32";
  }
  if (EndsWith(name, ".scales")) return "F16";
  return nullptr;
}

int64_t NumGroups(int64_t in_features, int group_size) {
  return group_size > 0 ? (in_features + group_size - 1) / group_size : 1;
}

// g_idx values: in [0, G); exactly k / group_size unless act-order with dynamic groups.
absl::Status CheckGIdx(const TensorView& t, const QuantizationConfig& q) {
  if (t.shape.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint writer: ", t.name,
                                                   " must be 1-D [in_features], got rank ",
                                                   t.shape.size()));
  }
  const int64_t k = t.shape[0];
  const int64_t num_groups = NumGroups(k, q.group_size);
  const bool monotonic = !q.desc_act || q.static_groups;
  const int32_t* g = static_cast<const int32_t*>(t.data);
  for (int64_t i = 0; i < k; ++i) {
    int32_t v;
    std::memcpy(&v, g + i, sizeof(v));  // the caller's buffer may be unaligned
    if (v < 0 || v >= num_groups) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint writer: ", t.name, "[", i, "] = ", v, " is outside [0, ", num_groups,
          ") for in_features ", k, " and group_size ", q.group_size));
    }
    if (monotonic && q.group_size > 0 && v != i / q.group_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint writer: ", t.name, "[", i, "] = ", v, " but without act-order (or with "
          "static_groups) g_idx[k] must be k / group_size = ", i / q.group_size));
    }
  }
  return absl::OkStatus();
}

// Shapes of one quantized module's tensors against gptq-format.md: K = len(g_idx),
// N = qweight.shape[1], qweight [K*b/32, N], qzeros [G, N*b/32], scales [G, N].
absl::Status CheckGptqModule(const std::string& prefix,
                             const std::map<std::string, std::vector<int64_t>>& shapes,
                             const QuantizationConfig& q) {
  for (const char* suffix : kGptqSuffixes) {
    if (shapes.count(prefix + suffix) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint writer: quantized module ",
                                                     prefix, " lacks ", prefix, suffix));
    }
  }
  const std::vector<int64_t>& qweight = shapes.at(prefix + ".qweight");
  const std::vector<int64_t>& qzeros = shapes.at(prefix + ".qzeros");
  const std::vector<int64_t>& scales = shapes.at(prefix + ".scales");
  const std::vector<int64_t>& g_idx = shapes.at(prefix + ".g_idx");
  auto bad = [&prefix](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint writer: quantized module ", prefix, ": ", why));
  };
  if (qweight.size() != 2 || qzeros.size() != 2 || scales.size() != 2 || g_idx.size() != 1) {
    return bad("qweight, qzeros, scales must be 2-D and g_idx 1-D");
  }
  const int64_t k = g_idx[0], n = qweight[1], b = q.bits;
  const int64_t num_groups = NumGroups(k, q.group_size);
  if ((k * b) % 32 != 0 || qweight[0] != k * b / 32) {
    return bad(absl::StrCat("qweight has ", qweight[0], " rows; in_features ", k, " at ", b,
                            " bits needs ", k * b / 32.0));
  }
  if ((n * b) % 32 != 0 || qzeros[0] != num_groups || qzeros[1] != n * b / 32) {
    return bad(absl::StrCat("qzeros is [", qzeros[0], ", ", qzeros[1], "], expected [",
                            num_groups, ", ", n * b / 32.0, "]"));
  }
  if (scales[0] != num_groups || scales[1] != n) {
    return bad(absl::StrCat("scales is [", scales[0], ", ", scales[1], "], expected [",
                            num_groups, ", ", n, "]"));
  }
  if (shapes.count(prefix + ".bias") != 0 && shapes.at(prefix + ".bias") !=
                                                 std::vector<int64_t>{n}) {
    return bad(absl::StrCat("bias must be [", n, "]"));
  }
  return absl::OkStatus();
}

struct ShardEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct ClosedShard {
  std::string temp_name;  // file name inside the temporary directory
  uint64_t size_bytes = 0;
  std::string sha256_hex;
  std::vector<std::string> tensor_names;
};

}  // namespace

size_t DtypeElementSize(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  return 0;
}

struct CheckpointWriter::Impl {
  enum class State { kOpen, kFinished, kAborted };

  CheckpointWriterOptions options;
  std::string output_dir;  // normalized, no trailing '/'
  std::string temp_dir;
  State state = State::kOpen;
  absl::Status sticky_error;  // first I/O error; the writer is unusable afterwards

  std::set<std::string> tensor_names;
  uint64_t total_tensor_bytes = 0;

  // The shard being filled: its header entries and a spool file holding its bytes.
  std::vector<ShardEntry> current;
  uint64_t current_bytes = 0;
  std::FILE* spool = nullptr;
  std::string spool_path;

  std::vector<ClosedShard> closed;
  std::map<std::string, std::string> extra_files;
  std::map<std::string, std::vector<int64_t>> shapes;  // every tensor's shape, for validation

  std::string TempPath(const std::string& name) const { return temp_dir + "/" + name; }

  absl::Status Usable() const {
    if (state == State::kFinished) {
      return absl::FailedPreconditionError("checkpoint writer: already finished");
    }
    if (state == State::kAborted) {
      return absl::FailedPreconditionError(
          sticky_error.ok() ? std::string("checkpoint writer: aborted")
                            : absl::StrCat("checkpoint writer: aborted after an earlier error: ",
                                           sticky_error.message()));
    }
    return absl::OkStatus();
  }

  absl::Status OpenSpool() {
    spool_path = TempPath(absl::StrFormat(".spool-%05d", closed.size() + 1));
    spool = std::fopen(spool_path.c_str(), "w+b");
    if (spool == nullptr) return ErrnoError("cannot create spool file", spool_path);
    return absl::OkStatus();
  }

  // Writes the current shard (header + spooled bytes) to its own file and starts a new one.
  absl::Status CloseShard() {
    nlohmann::ordered_json header;
    header["__metadata__"] = {{"format", "pt"}};
    for (const ShardEntry& e : current) {
      header[e.name] = {{"dtype", e.dtype},
                        {"shape", e.shape},
                        {"data_offsets", {e.begin, e.end}}};
    }
    std::string header_text = header.dump();
    // The 8-byte length prefix is already aligned, so pad the JSON itself to a multiple of 8
    // and the tensor data starts 8-byte aligned.
    header_text.append((8 - header_text.size() % 8) % 8, ' ');

    ClosedShard shard;
    shard.temp_name = absl::StrFormat("shard-%05d.safetensors", closed.size() + 1);
    const std::string path = TempPath(shard.temp_name);
    std::FILE* out = std::fopen(path.c_str(), "wb");
    if (out == nullptr) return ErrnoError("cannot create", path);
    Sha256 sha;
    uint8_t length_le[8];
    for (int i = 0; i < 8; ++i) {
      length_le[i] = static_cast<uint8_t>(uint64_t{header_text.size()} >> (8 * i));
    }
    absl::Status status = WriteAll(out, length_le, 8, path, &sha);
    if (status.ok()) status = WriteAll(out, header_text.data(), header_text.size(), path, &sha);
    if (status.ok()) {
      if (std::fflush(spool) != 0 || std::fseek(spool, 0, SEEK_SET) != 0) {
        status = ErrnoError("cannot rewind spool file", spool_path);
      }
    }
    std::vector<char> buffer(1 << 20);
    uint64_t copied = 0;
    while (status.ok()) {
      const size_t n = std::fread(buffer.data(), 1, buffer.size(), spool);
      if (n == 0) {
        if (std::ferror(spool)) status = ErrnoError("cannot read spool file", spool_path);
        break;
      }
      status = WriteAll(out, buffer.data(), n, path, &sha);
      copied += n;
    }
    if (status.ok() && copied != current_bytes) {
      status = absl::InternalError(absl::StrCat("spool file ", spool_path, " holds ", copied,
                                                " bytes, expected ", current_bytes));
    }
    absl::Status close_status = CloseDurably(out, path);
    if (status.ok()) status = close_status;
    GPTQ_RETURN_IF_ERROR(status);

    std::fclose(spool);
    spool = nullptr;
    std::remove(spool_path.c_str());
    shard.size_bytes = 8 + header_text.size() + current_bytes;
    shard.sha256_hex = sha.HexDigest();
    for (const ShardEntry& e : current) shard.tensor_names.push_back(e.name);
    closed.push_back(std::move(shard));
    current.clear();
    current_bytes = 0;
    return OpenSpool();
  }

  void RemoveTemp() {
    if (spool != nullptr) {
      std::fclose(spool);
      spool = nullptr;
    }
    if (!temp_dir.empty()) {
      (void)fsutil::RemoveAll(temp_dir);  // best effort: the caller already has the real error
    }
  }

  absl::Status Fail(absl::Status status) {
    sticky_error = status;
    RemoveTemp();
    state = State::kAborted;
    return status;
  }

  absl::StatusOr<std::vector<WrittenFile>> FinishInternal(const std::string& source_config_json);
};

CheckpointWriter::CheckpointWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CheckpointWriter::~CheckpointWriter() { Abort(); }

const std::string& CheckpointWriter::temp_dir() const { return impl_->temp_dir; }

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(
    CheckpointWriterOptions options) {
  if (options.output_dir.empty()) {
    return absl::InvalidArgumentError("checkpoint writer: output_dir is empty");
  }
  if (options.torch_dtype.empty()) {
    return absl::InvalidArgumentError("checkpoint writer: torch_dtype is empty");
  }
  if (options.quantization.has_value()) {
    GPTQ_RETURN_IF_ERROR(ValidateQuantization(*options.quantization));
  }
  std::string output_dir = options.output_dir;
  while (output_dir.size() > 1 && output_dir.back() == '/') output_dir.pop_back();
  if (output_dir == "/" || output_dir == "." || output_dir == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint writer: output_dir \"", output_dir, "\" is not usable"));
  }
  std::string parent = fsutil::ParentPath(output_dir);
  if (parent.empty()) parent = ".";
  if (!fsutil::IsDirectory(parent)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parent directory ", parent, " of output directory ", output_dir,
        " does not exist"));
  }
  GPTQ_RETURN_IF_ERROR(CheckOutputDirUsable(output_dir));
  if (!options.tokenizer_source_dir.empty() &&
      !fsutil::IsDirectory(options.tokenizer_source_dir)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint writer: tokenizer_source_dir ", options.tokenizer_source_dir,
        " is not a directory"));
  }

  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->output_dir = output_dir;
  // Not mkdtemp(): its 0700 mode would become the checkpoint's; mkdir honours the umask.
  std::random_device random;
  std::string temp;
  for (int attempt = 0;; ++attempt) {
    temp = absl::StrFormat("%s.tmp-%06x", output_dir, random() & 0xffffff);
    if (::mkdir(temp.c_str(), 0777) == 0) break;
    if (errno != EEXIST || attempt == 100) {
      return ErrnoError("cannot create temporary directory", temp);
    }
  }
  impl->temp_dir = temp;
  std::unique_ptr<CheckpointWriter> writer(new CheckpointWriter(std::move(impl)));
  absl::Status status = writer->impl_->OpenSpool();
  if (!status.ok()) return writer->impl_->Fail(status);  // the destructor then has nothing left
  return writer;
}

absl::Status CheckpointWriter::AddTensor(const TensorView& tensor) {
  Impl& s = *impl_;
  GPTQ_RETURN_IF_ERROR(s.Usable());
  if (tensor.name.empty()) {
    return absl::InvalidArgumentError("checkpoint writer: tensor name is empty");
  }
  if (tensor.name == "__metadata__") {
    return absl::InvalidArgumentError(
        "checkpoint writer: tensor name \"__metadata__\" is reserved by safetensors");
  }
  for (char ch : tensor.name) {
    // Names go into the JSON header; real checkpoints use printable ASCII only.
    if (ch < 0x20 || ch > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint writer: tensor name \"", absl::CHexEscape(tensor.name),
          "\" has a character outside printable ASCII"));
    }
  }
  if (s.tensor_names.count(tensor.name) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint writer: duplicate tensor name \"", tensor.name, "\""));
  }
  const size_t element_size = DtypeElementSize(tensor.dtype);
  if (element_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint writer: tensor \"", tensor.name, "\" has unsupported dtype \"", tensor.dtype,
        "\" (expected F16, F32, BF16 or I32)"));
  }
  uint64_t num_elements = 1;
  for (int64_t d : tensor.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint writer: tensor \"", tensor.name, "\" has a negative dimension in shape [",
          absl::StrJoin(tensor.shape, ", "), "]"));
    }
    num_elements *= static_cast<uint64_t>(d);
  }
  if (num_elements * element_size != tensor.num_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint writer: tensor \"", tensor.name, "\" of dtype ", tensor.dtype, " and shape [",
        absl::StrJoin(tensor.shape, ", "), "] needs ", num_elements * element_size,
        " bytes, got ", tensor.num_bytes));
  }
  if (tensor.num_bytes > 0 && tensor.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint writer: tensor \"", tensor.name, "\" has null data"));
  }

  if (s.options.quantization.has_value()) {
    const char* required = GptqTensorDtype(tensor.name);
    if (required != nullptr && tensor.dtype != required) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint writer: GPTQ tensor \"",
                                                     tensor.name, "\" must be ", required,
                                                     ", got ", tensor.dtype));
    }
    if (EndsWith(tensor.name, ".g_idx")) {
      GPTQ_RETURN_IF_ERROR(CheckGIdx(tensor, *s.options.quantization));
    }
  }

  const int64_t limit = s.options.max_shard_bytes;
  if (limit > 0 && !s.current.empty() &&
      s.current_bytes + tensor.num_bytes > static_cast<uint64_t>(limit)) {
    absl::Status status = s.CloseShard();
    if (!status.ok()) return s.Fail(status);
  }
  absl::Status status = WriteAll(s.spool, tensor.data, tensor.num_bytes, s.spool_path, nullptr);
  if (!status.ok()) return s.Fail(status);
  s.current.push_back(ShardEntry{tensor.name, tensor.dtype, tensor.shape, s.current_bytes,
                                 s.current_bytes + tensor.num_bytes});
  s.current_bytes += tensor.num_bytes;
  s.total_tensor_bytes += tensor.num_bytes;
  s.tensor_names.insert(tensor.name);
  s.shapes[tensor.name] = tensor.shape;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::AddFile(const std::string& name, const std::string& contents) {
  Impl& s = *impl_;
  GPTQ_RETURN_IF_ERROR(s.Usable());
  const bool printable = std::all_of(name.begin(), name.end(),
                                     [](char ch) { return ch >= 0x21 && ch <= 0x7e; });
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      !printable) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint writer: file name \"", name, "\" is not a plain file name"));
  }
  if (IsReservedOutputName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint writer: file name \"", name, "\" is reserved for the writer's own output"));
  }
  s.extra_files[name] = contents;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<WrittenFile>> CheckpointWriter::Impl::FinishInternal(
    const std::string& source_config_json) {
  nlohmann::ordered_json config =
      nlohmann::ordered_json::parse(source_config_json, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(
        "checkpoint writer: source config is not a JSON object (config.json)");
  }
  if (tensor_names.empty()) {
    return absl::FailedPreconditionError("checkpoint writer: no tensors were added");
  }
  if (options.quantization.has_value()) {
    std::set<std::string> prefixes;
    for (const std::string& name : tensor_names) {
      for (const char* suffix : kGptqSuffixes) {
        if (EndsWith(name, suffix)) {
          prefixes.insert(name.substr(0, name.size() - std::strlen(suffix)));
        }
      }
    }
    if (prefixes.empty()) {
      return absl::FailedPreconditionError(
          "checkpoint writer: a quantized checkpoint without any quantized module "
          "(no *.qweight tensor)");
    }
    for (const std::string& prefix : prefixes) {
      GPTQ_RETURN_IF_ERROR(CheckGptqModule(prefix, shapes, *options.quantization));
    }
  }
  if (!current.empty()) GPTQ_RETURN_IF_ERROR(CloseShard());
  std::fclose(spool);
  spool = nullptr;
  std::remove(spool_path.c_str());

  std::vector<WrittenFile> files;
  const size_t num_shards = closed.size();
  std::map<std::string, std::string> weight_map;  // sorted, as transformers writes it
  for (size_t i = 0; i < num_shards; ++i) {
    const std::string final_name =
        num_shards == 1 ? std::string("model.safetensors")
                        : absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, num_shards);
    if (std::rename(TempPath(closed[i].temp_name).c_str(), TempPath(final_name).c_str()) != 0) {
      return ErrnoError("cannot rename shard to", TempPath(final_name));
    }
    for (const std::string& t : closed[i].tensor_names) weight_map[t] = final_name;
    files.push_back({final_name, closed[i].size_bytes, closed[i].sha256_hex});
  }

  std::map<std::string, std::string> small_files;  // name -> contents
  if (num_shards > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_tensor_bytes}};
    index["weight_map"] = nlohmann::ordered_json::object();
    for (const auto& [tensor, file] : weight_map) index["weight_map"][tensor] = file;
    small_files["model.safetensors.index.json"] = index.dump(2) + "\n";
  }

  config["torch_dtype"] = options.torch_dtype;
  // transformers >= 4.56 writes "dtype" instead; keep the two consistent when present.
  if (config.contains("dtype")) config["dtype"] = options.torch_dtype;
  if (options.quantization.has_value()) {
    const nlohmann::ordered_json q = QuantizationJson(*options.quantization,
                                                      options.quantizer_name);
    config["quantization_config"] = q;
    small_files["quantize_config.json"] = q.dump(2) + "\n";
  } else {
    config.erase("quantization_config");
  }
  small_files["config.json"] = config.dump(2) + "\n";

  if (!options.tokenizer_source_dir.empty()) {
    for (const char* name : kTokenizerFiles) {
      if (extra_files.count(name) != 0) continue;
      const std::string source = options.tokenizer_source_dir + "/" + name;
      if (!fsutil::IsRegularFile(source)) continue;
      GPTQ_ASSIGN_OR_RETURN(small_files[name], ReadWholeFile(source));
    }
  }
  for (const auto& [name, contents] : extra_files) small_files[name] = contents;

  for (const auto& [name, contents] : small_files) {
    GPTQ_RETURN_IF_ERROR(WriteFileDurably(TempPath(name), contents));
    files.push_back({name, contents.size(), Sha256Hex(contents)});
  }
  std::sort(files.begin(), files.end(),
            [](const WrittenFile& a, const WrittenFile& b) { return a.name < b.name; });
  GPTQ_RETURN_IF_ERROR(SyncDirectory(temp_dir));

  // Re-check right before the rename: something may have appeared at output_dir meanwhile.
  // rename(2) atomically replaces an empty directory and fails on a non-empty one.
  GPTQ_RETURN_IF_ERROR(CheckOutputDirUsable(output_dir));
  if (std::rename(temp_dir.c_str(), output_dir.c_str()) != 0) {
    if (errno == ENOTEMPTY || errno == EEXIST) {
      return absl::FailedPreconditionError(absl::StrCat(
          "output directory ", output_dir, " became non-empty while the checkpoint was written"));
    }
    return ErrnoError(absl::StrCat("cannot rename ", temp_dir, " to"), output_dir);
  }
  temp_dir.clear();  // now the output; nothing to clean up
  const std::string parent = fsutil::ParentPath(output_dir);
  GPTQ_RETURN_IF_ERROR(SyncDirectory(parent.empty() ? "." : parent));
  return files;
}

absl::StatusOr<std::vector<WrittenFile>> CheckpointWriter::Finish(
    const std::string& source_config_json) {
  Impl& s = *impl_;
  GPTQ_RETURN_IF_ERROR(s.Usable());
  absl::StatusOr<std::vector<WrittenFile>> files = s.FinishInternal(source_config_json);
  if (!files.ok()) {
    if (!s.temp_dir.empty()) return s.Fail(files.status());
    // Only the final directory fsync failed: the checkpoint is complete and in place.
    s.state = Impl::State::kFinished;
    return files.status();
  }
  s.state = Impl::State::kFinished;
  return files;
}

void CheckpointWriter::Abort() {
  if (impl_ == nullptr || impl_->state != Impl::State::kOpen) return;
  impl_->RemoveTemp();
  impl_->state = Impl::State::kAborted;
}

}  // namespace gptq::runtime
