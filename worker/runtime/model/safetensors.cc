#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gptq/status_macros.h"
#include "gptq/torch_status.h"

namespace gptq::runtime {

class MappedFile {
 public:
  MappedFile(void* data, size_t size) : data_(data), size_(size) {}
  ~MappedFile() {
    if (data_ != nullptr && size_ > 0) munmap(data_, size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  uint8_t* data() const { return static_cast<uint8_t*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_;
  size_t size_;
};

namespace {

// Safetensors headers are small; a bigger one means a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
  int size;
};
constexpr DtypeEntry kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeEntry* FindDtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

absl::StatusOr<std::shared_ptr<MappedFile>> MapFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::FailedPreconditionError(msg);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat("cannot stat ", path, ": ", std::strerror(err)));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* data = nullptr;
  if (size > 0) {
    // Private + writable: pages are copy-on-write, so a Torch op that writes into a view can
    // never touch the file, and read-only pages cannot fault a kernel.
    data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::FailedPreconditionError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(err)));
    }
  }
  ::close(fd);
  return std::make_shared<MappedFile>(data, size);
}

}  // namespace

absl::StatusOr<torch::ScalarType> ScalarTypeFromSafetensors(const std::string& dtype) {
  const DtypeEntry* d = FindDtype(dtype);
  if (d == nullptr) return absl::InvalidArgumentError(absl::StrCat("unsupported safetensors dtype \"", dtype, "\""));
  return d->type;
}

absl::StatusOr<std::unique_ptr<MappedSafetensorsFile>> MappedSafetensorsFile::Open(const std::string& path) {
  GPTQ_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> map, MapFile(path));
  const size_t size = map->size();
  if (size < 8) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": truncated safetensors file (", size, " bytes, the 8-byte header length is missing)"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, map->data(), 8);  // little-endian on every supported host
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": corrupt or truncated safetensors header: header length ", header_len,
        " bytes but the file has ", size - 8, " bytes after the length field"));
  }
  const char* hdr = reinterpret_cast<const char*>(map->data() + 8);
  nlohmann::json header = nlohmann::json::parse(hdr, hdr + header_len, nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": corrupt safetensors header: the ", header_len, "-byte header is not a JSON object"));
  }
  auto file = std::unique_ptr<MappedSafetensorsFile>(new MappedSafetensorsFile());
  file->path_ = path;
  file->data_offset_ = 8 + header_len;
  const uint64_t data_size = size - file->data_offset_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (v.is_object()) {
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (m.value().is_string()) file->metadata_[m.key()] = m.value().get<std::string>();
        }
      }
      continue;
    }
    auto bad = [&](const std::string& why) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": corrupt safetensors header: tensor \"", name, "\": ", why));
    };
    if (!v.is_object() || !v.contains("dtype") || !v["dtype"].is_string() ||
        !v.contains("shape") || !v["shape"].is_array() || !v.contains("data_offsets") ||
        !v["data_offsets"].is_array() || v["data_offsets"].size() != 2) {
      return bad("needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" ([begin, end])");
    }
    TensorInfo info;
    info.name = name;
    info.dtype = v["dtype"].get<std::string>();
    const DtypeEntry* d = FindDtype(info.dtype);
    if (d == nullptr) return bad(absl::StrCat("unsupported dtype \"", info.dtype, "\""));
    uint64_t numel = 1;
    for (const auto& s : v["shape"]) {
      if (!s.is_number_unsigned() && !(s.is_number_integer() && s.get<int64_t>() >= 0)) {
        return bad("shape entries must be non-negative integers");
      }
      info.shape.push_back(s.get<int64_t>());
      numel *= s.get<uint64_t>();
    }
    for (const auto& o : v["data_offsets"]) {
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0)) {
        return bad("data_offsets must be non-negative integers");
      }
    }
    info.begin = v["data_offsets"][0].get<uint64_t>();
    info.end = v["data_offsets"][1].get<uint64_t>();
    if (info.end < info.begin) return bad("data_offsets end before begin");
    if (info.end > data_size) {
      return bad(absl::StrCat("data_offsets [", info.begin, ", ", info.end,
                              ") run past the end of the data (", data_size,
                              " bytes): the file is truncated"));
    }
    if (info.end - info.begin != numel * d->size) {
      return bad(absl::StrCat("data_offsets span ", info.end - info.begin, " bytes but shape × ",
                              info.dtype, " needs ", numel * d->size));
    }
    ranges.emplace_back(info.begin, info.end);
    file->tensors_.emplace(name, std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": corrupt safetensors header: tensors overlap at byte ", ranges[i].first));
    }
  }
  file->map_ = std::move(map);
  return file;
}

absl::StatusOr<torch::Tensor> MappedSafetensorsFile::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor \"", name, "\""));
  }
  const TensorInfo& info = it->second;
  const DtypeEntry* d = FindDtype(info.dtype);
  return CallTorch(absl::StrCat(path_, ": tensor ", name), [&]() -> absl::StatusOr<torch::Tensor> {
    const auto options = torch::TensorOptions().dtype(d->type).device(torch::kCPU);
    if (info.begin == info.end) return torch::empty(info.shape, options);
    uint8_t* ptr = map_->data() + data_offset_ + info.begin;
    if (reinterpret_cast<uintptr_t>(ptr) % d->size != 0) {
      // Unaligned element data: copy into a fresh (aligned) tensor.
      torch::Tensor t = torch::empty(info.shape, options);
      std::memcpy(t.data_ptr(), ptr, info.end - info.begin);
      return t;
    }
    std::shared_ptr<MappedFile> keep = map_;
    return torch::from_blob(ptr, info.shape, [keep](void*) mutable { keep.reset(); }, options);
  });
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& model_dir) {
  auto reader = std::unique_ptr<CheckpointReader>(new CheckpointReader());
  reader->dir_ = model_dir;
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  const std::string single_path = model_dir + "/model.safetensors";
  struct stat st;
  if (stat(index_path.c_str(), &st) == 0) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json index = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return absl::FailedPreconditionError(absl::StrCat(
          index_path, ": not a safetensors index (a JSON object with a \"weight_map\" object)"));
    }
    std::map<std::string, std::set<std::string>> by_file;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::FailedPreconditionError(absl::StrCat(index_path, ": weight_map[\"", it.key(), "\"] is not a file name"));
      }
      const std::string f = it.value().get<std::string>();
      if (f.find('/') != std::string::npos || f.empty() || f == "." || f == "..") {
        return absl::FailedPreconditionError(absl::StrCat(index_path, ": weight_map[\"", it.key(), "\"] = \"", f, "\" is not a plain file name"));
      }
      by_file[f].insert(it.key());
    }
    for (const auto& [fname, names] : by_file) {
      const std::string path = model_dir + "/" + fname;
      auto file = MappedSafetensorsFile::Open(path);
      if (!file.ok()) {
        if (absl::IsNotFound(file.status())) {
          return absl::NotFoundError(absl::StrCat(index_path, " names shard ", fname, " (for tensor \"",
                                                  *names.begin(), "\"), but ", path, " does not exist"));
        }
        return file.status();
      }
      for (const auto& name : names) {
        if ((*file)->tensors().count(name) == 0) {
          return absl::FailedPreconditionError(absl::StrCat(
              index_path, " maps tensor \"", name, "\" to ", fname, ", but ", path, " has no such tensor"));
        }
      }
      for (const auto& [name, info] : (*file)->tensors()) {
        if (names.count(name) == 0) {
          return absl::FailedPreconditionError(absl::StrCat(
              path, " holds tensor \"", name, "\" that ", index_path, " does not map to it"));
        }
      }
      const int idx = static_cast<int>(reader->files_.size());
      for (const auto& name : names) reader->where_[name] = idx;
      reader->files_.push_back(std::move(*file));
    }
    return reader;
  }
  auto file = MappedSafetensorsFile::Open(single_path);
  if (!file.ok()) {
    if (absl::IsNotFound(file.status())) {
      return absl::NotFoundError(absl::StrCat("no checkpoint in ", model_dir, ": neither ", single_path,
                                              " nor ", index_path, " exists"));
    }
    return file.status();
  }
  for (const auto& [name, info] : (*file)->tensors()) reader->where_[name] = 0;
  reader->files_.push_back(std::move(*file));
  return reader;
}

std::vector<std::string> CheckpointReader::Names() const {
  std::vector<std::string> names;
  names.reserve(where_.size());
  for (const auto& [name, idx] : where_) names.push_back(name);
  return names;
}

std::string CheckpointReader::FileOf(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return dir_;
  return files_[it->second]->path();
}

const TensorInfo* CheckpointReader::Info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return nullptr;
  return &files_[it->second]->tensors().at(name);
}

absl::StatusOr<torch::Tensor> CheckpointReader::Get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, ": missing tensor \"", name, "\""));
  }
  return files_[it->second]->Get(name);
}

absl::StatusOr<torch::Tensor> CheckpointReader::GetFloat(const std::string& name,
                                                         const std::vector<int64_t>& shape,
                                                         torch::ScalarType dtype) const {
  const TensorInfo* info = Info(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, ": missing tensor \"", name, "\""));
  }
  if (info->shape != shape) {
    return absl::FailedPreconditionError(absl::StrCat(
        FileOf(name), ": tensor \"", name, "\" has shape [", absl::StrJoin(info->shape, ", "),
        "], expected [", absl::StrJoin(shape, ", "), "] from config.json"));
  }
  if (info->dtype != "F32" && info->dtype != "F16" && info->dtype != "BF16" && info->dtype != "F64") {
    return absl::InvalidArgumentError(absl::StrCat(FileOf(name), ": tensor \"", name, "\" has dtype ",
                                                   info->dtype, "; expected F32, F16 or BF16"));
  }
  GPTQ_ASSIGN_OR_RETURN(torch::Tensor t, Get(name));
  return CallTorch(name, [&]() -> absl::StatusOr<torch::Tensor> { return t.to(dtype); });
}

}  // namespace gptq::runtime
