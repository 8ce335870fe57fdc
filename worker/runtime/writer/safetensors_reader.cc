#include "worker/runtime/writer/safetensors_reader.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/runtime/writer/checkpoint_writer.h"

namespace gptq::runtime {

absl::string_view SafetensorsFile::Data(const std::string& name) const {
  const SafetensorsEntry& e = tensors.at(name);
  return absl::string_view(bytes).substr(8 + header_size + e.begin, e.end - e.begin);
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string bytes, const std::string& what) {
  auto bad = [&what](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors ", what, ": ", why));
  };
  if (bytes.size() < 8) return bad("shorter than the 8-byte header length");
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) {
    header_size |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
  }
  if (header_size > bytes.size() - 8) {
    return bad(absl::StrCat("header length ", header_size, " exceeds the file size ",
                            bytes.size()));
  }
  SafetensorsFile file;
  file.header_size = header_size;
  file.header_json = bytes.substr(8, header_size);
  const uint64_t data_size = bytes.size() - 8 - header_size;
  // ordered_json keeps the header's key order (the order of the file's data).
  nlohmann::ordered_json header =
      nlohmann::ordered_json::parse(file.header_json, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return bad("header is not a JSON object");

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) return bad("__metadata__ is not an object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) return bad("__metadata__ values must be strings");
        file.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets") || !value["dtype"].is_string() ||
        !value["shape"].is_array() || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2) {
      return bad(absl::StrCat("tensor \"", name, "\" lacks dtype/shape/data_offsets"));
    }
    SafetensorsEntry e;
    e.dtype = value["dtype"].get<std::string>();
    const size_t element_size = DtypeElementSize(e.dtype);
    if (element_size == 0) {
      return bad(absl::StrCat("tensor \"", name, "\" has unsupported dtype ", e.dtype));
    }
    uint64_t num_elements = 1;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_unsigned()) {
        return bad(absl::StrCat("tensor \"", name, "\" has a bad shape"));
      }
      e.shape.push_back(d.get<int64_t>());
      num_elements *= d.get<uint64_t>();
    }
    const auto& offsets = value["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return bad(absl::StrCat("tensor \"", name, "\" has bad data_offsets"));
    }
    e.begin = offsets[0].get<uint64_t>();
    e.end = offsets[1].get<uint64_t>();
    if (e.end < e.begin || e.end > data_size) {
      return bad(absl::StrCat("tensor \"", name, "\" data_offsets [", e.begin, ", ", e.end,
                              "] outside the data section of ", data_size, " bytes"));
    }
    if (e.end - e.begin != num_elements * element_size) {
      return bad(absl::StrCat("tensor \"", name, "\" spans ", e.end - e.begin,
                              " bytes but its dtype and shape need ",
                              num_elements * element_size));
    }
    ranges.emplace_back(e.begin, e.end);
    file.names_in_header_order.push_back(name);
    file.tensors[name] = std::move(e);
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t expected = 0;
  for (const auto& [begin, end] : ranges) {
    if (begin != expected) {
      return bad(absl::StrCat("tensor data is not contiguous: a range starts at ", begin,
                              ", expected ", expected));
    }
    expected = end;
  }
  if (expected != data_size) {
    return bad(absl::StrCat("tensors cover ", expected, " bytes of a ", data_size,
                            "-byte data section"));
  }
  file.bytes = std::move(bytes);
  return file;
}

absl::StatusOr<SafetensorsFile> ReadSafetensorsFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const std::string message = absl::StrCat("cannot open ", path, ": ", std::strerror(errno));
    return errno == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
  }
  std::string bytes;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), f)) > 0) bytes.append(buffer, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::InternalError(absl::StrCat("read error in ", path));
  return ParseSafetensors(std::move(bytes), path);
}

}  // namespace gptq::runtime
