#include "hub/hf_hub.h"

#ifdef GPTQ_HUB_HAVE_CURL
#include <curl/curl.h>
#endif

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gptq/posix_fs.h"
#include "gptq/sha256.h"
#include "gptq/status_macros.h"
#include "nlohmann/json.hpp"

namespace gptq::hub {
namespace {


constexpr char kManifestName[] = ".gptq-hub-manifest.json";
// Optional files: fetched when present (a 404 is fine).
constexpr const char* kOptionalFiles[] = {
    "generation_config.json", "tokenizer.model",         "tokenizer.json",
    "tokenizer_config.json",  "special_tokens_map.json",
};

void GlobalInit() {
#ifdef GPTQ_HUB_HAVE_CURL
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
#endif
}

bool IsHex64(absl::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// `"abc"`, `W/"abc"` → abc (lower case).
std::string CleanEtag(absl::string_view v) {
  v = absl::StripAsciiWhitespace(v);
  absl::ConsumePrefix(&v, "W/");
  absl::ConsumePrefix(&v, "\"");
  absl::ConsumeSuffix(&v, "\"");
  return absl::AsciiStrToLower(v);
}

// Percent-encodes one path segment.
std::string EscapeSegment(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::string_view("0123456789ABCDEF" + (c >> 4), 1),
                      absl::string_view("0123456789ABCDEF" + (c & 15), 1));
    }
  }
  return out;
}

// A file name from the repository (possibly from an index file): relative, no "..".
absl::Status ValidateRepoPath(absl::string_view file) {
  if (file.empty() || file.front() == '/' || absl::StrContains(file, '\\')) {
    return absl::InvalidArgumentError(absl::StrCat("invalid repository file name '", file, "'"));
  }
  for (absl::string_view part : absl::StrSplit(file, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(absl::StrCat("invalid repository file name '", file, "'"));
    }
  }
  return absl::OkStatus();
}

bool ValidRefPart(absl::string_view s) {
  if (s.empty() || s == "." || s == "..") return false;
  for (unsigned char c : s) {
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

int64_t FileSize(const std::string& path) {
  const absl::StatusOr<uint64_t> size = fsutil::FileSize(path);
  return size.ok() ? static_cast<int64_t>(*size) : -1;
}

#ifdef GPTQ_HUB_HAVE_CURL
// State of one HTTP transfer.
struct Transfer {
  std::string part_path;
  bool resuming = false;
  std::FILE* out = nullptr;
  bool body_to_file = false;
  bool decided = false;
  long status = 0;
  std::string error_body;  // first bytes of a non-2xx body, for the message
  std::string linked_etag;
  std::string etag;
  std::string content_range;
  int64_t content_length = -1;
  const CancelFn* cancelled = nullptr;
  bool write_failed = false;
  CURL* curl = nullptr;
};

size_t HeaderCallback(char* data, size_t size, size_t nitems, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * nitems;
  absl::string_view line(data, n);
  if (absl::StartsWith(line, "HTTP/")) {
    // A new response (after a redirect): per-response headers start over. X-Linked-ETag is
    // kept from any hop (the hub sends it on the redirect, not on the CDN's answer).
    t->etag.clear();
    t->content_range.clear();
    t->content_length = -1;
    return n;
  }
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos) return n;
  const std::string key = absl::AsciiStrToLower(absl::StripAsciiWhitespace(line.substr(0, colon)));
  const absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
  if (key == "x-linked-etag") {
    t->linked_etag = CleanEtag(value);
  } else if (key == "etag") {
    t->etag = CleanEtag(value);
  } else if (key == "content-range") {
    t->content_range = std::string(value);
  } else if (key == "content-length") {
    int64_t v;
    if (absl::SimpleAtoi(value, &v)) t->content_length = v;
  }
  return n;
}

size_t WriteCallback(char* data, size_t size, size_t nmemb, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * nmemb;
  if (!t->decided) {
    t->decided = true;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
    if (t->status == 200 || (t->status == 206 && t->resuming)) {
      t->out = std::fopen(t->part_path.c_str(), t->status == 206 ? "ab" : "wb");
      if (t->out == nullptr) {
        t->write_failed = true;
        return 0;
      }
      t->body_to_file = true;
    }
  }
  if (t->body_to_file) {
    if (std::fwrite(data, 1, n, t->out) != n) {
      t->write_failed = true;
      return 0;
    }
  } else if (t->error_body.size() < 512) {
    t->error_body.append(data, std::min<size_t>(n, 512 - t->error_body.size()));
  }
  return n;
}

int ProgressCallback(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return (t->cancelled != nullptr && *t->cancelled && (*t->cancelled)()) ? 1 : 0;
}

#endif  // GPTQ_HUB_HAVE_CURL

absl::Status WriteManifest(const std::string& dir, const HfModelRef& ref,
                           const std::vector<FetchedFile>& files) {
  nlohmann::json j;
  j["repo"] = absl::StrCat(ref.org, "/", ref.name);
  j["revision"] = ref.revision;
  j["files"] = nlohmann::json::array();
  for (const FetchedFile& f : files) {
    j["files"].push_back({{"path", f.path}, {"size_bytes", f.size_bytes}, {"sha256", f.sha256}});
  }
  const std::string path = absl::StrCat(dir, "/", kManifestName);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write '", tmp, "'"));
  }
  return fsutil::Rename(tmp, path);
}

// A complete cached snapshot (manifest present, every file there with its size), or nullopt.
std::optional<std::vector<FetchedFile>> ReadManifest(const std::string& dir) {
  std::ifstream in(absl::StrCat(dir, "/", kManifestName));
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("files") || !j["files"].is_array()) return std::nullopt;
  std::vector<FetchedFile> files;
  for (const auto& e : j["files"]) {
    if (!e.is_object() || !e.contains("path") || !e["path"].is_string() ||
        !e.contains("size_bytes") || !e["size_bytes"].is_number_integer() ||
        !e.contains("sha256") || !e["sha256"].is_string()) {
      return std::nullopt;
    }
    FetchedFile f{e["path"].get<std::string>(), e["size_bytes"].get<int64_t>(),
                  e["sha256"].get<std::string>()};
    if (FileSize(absl::StrCat(dir, "/", f.path)) != f.size_bytes) return std::nullopt;
    files.push_back(std::move(f));
  }
  return files;
}

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::string(v) : fallback;
}

}  // namespace

std::string HfModelRef::ToString() const {
  return absl::StrCat("hf://", org, "/", name, "@", revision);
}

absl::StatusOr<HfModelRef> ParseHfUri(absl::string_view uri) {
  absl::string_view rest = uri;
  if (!absl::ConsumePrefix(&rest, "hf://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("model URI '", uri, "' does not start with hf://"));
  }
  HfModelRef ref;
  const size_t at = rest.find('@');
  if (at != absl::string_view::npos) {
    ref.revision = std::string(rest.substr(at + 1));
    rest = rest.substr(0, at);
    if (ref.revision.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model URI '", uri, "': empty revision after '@'"));
    }
    for (absl::string_view part : absl::StrSplit(ref.revision, '/')) {
      if (!ValidRefPart(part)) {
        return absl::InvalidArgumentError(
            absl::StrCat("model URI '", uri, "': revision may hold only [A-Za-z0-9._-] and '/'"));
      }
    }
  }
  std::vector<absl::string_view> parts = absl::StrSplit(rest, '/');
  if (parts.size() != 2 || !ValidRefPart(parts[0]) || !ValidRefPart(parts[1])) {
    return absl::InvalidArgumentError(
        absl::StrCat("model URI '", uri,
                     "' must be hf://ORG/NAME[@REVISION] with ORG and NAME of [A-Za-z0-9._-]"));
  }
  ref.org = std::string(parts[0]);
  ref.name = std::string(parts[1]);
  return ref;
}

HfHub::HfHub(HubOptions options) : options_(std::move(options)) {
  GlobalInit();
  endpoint_ = options_.endpoint.empty() ? EnvOr("HF_ENDPOINT", "https://huggingface.co")
                                        : options_.endpoint;
  while (!endpoint_.empty() && endpoint_.back() == '/') endpoint_.pop_back();
  cache_dir_ = options_.cache_dir.empty()
                   ? absl::StrCat(EnvOr("HOME", "/tmp"), "/.cache/gptq-service/hub")
                   : options_.cache_dir;
  token_ = options_.token.empty() ? EnvOr("HF_TOKEN", "") : options_.token;
  if (options_.max_attempts < 1) options_.max_attempts = 1;
}

std::string HfHub::SnapshotDir(const HfModelRef& ref) const {
  return absl::StrCat(cache_dir_, "/", ref.org, "/", ref.name, "/",
                      absl::StrReplaceAll(ref.revision, {{"/", "--"}}));
}

std::string HfHub::FileUrl(const HfModelRef& ref, const std::string& file) const {
  std::string path;
  for (absl::string_view seg : absl::StrSplit(file, '/')) {
    absl::StrAppend(&path, "/", EscapeSegment(seg));
  }
  return absl::StrCat(endpoint_, "/", EscapeSegment(ref.org), "/", EscapeSegment(ref.name),
                      "/resolve/", EscapeSegment(ref.revision), path);
}

absl::StatusOr<FetchedFile> HfHub::FetchFile(const HfModelRef& ref, const std::string& file,
                                             const std::string& dir, const CancelFn& cancelled) {
  GPTQ_RETURN_IF_ERROR(ValidateRepoPath(file));
  const std::string dest = absl::StrCat(dir, "/", file);
  const std::string part = dest + ".part";
  GPTQ_RETURN_IF_ERROR(fsutil::CreateDirectories(fsutil::ParentPath(dest)));
#ifdef GPTQ_HUB_HAVE_CURL
  const std::string url = FileUrl(ref, file);
  const std::string what = absl::StrCat("'", file, "' of ", ref.ToString());
  absl::Status last = absl::UnavailableError("no attempt made");
  bool retried_after_mismatch = false;
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    if (cancelled && cancelled()) return absl::CancelledError("download cancelled");
    Transfer t;
    t.part_path = part;
    t.cancelled = &cancelled;
    const int64_t have = FileSize(part);
    t.resuming = have > 0;

    CURL* curl = curl_easy_init();
    if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
    t.curl = curl;
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_slist* headers = nullptr;
    if (!token_.empty()) {
      headers = curl_slist_append(headers, absl::StrCat("Authorization: Bearer ", token_).c_str());
    }
    headers = curl_slist_append(headers, "Accept-Encoding: identity");
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
    // The token goes only to the hub itself, not to the CDN it redirects to.
    curl_easy_setopt(curl, CURLOPT_UNRESTRICTED_AUTH, 0L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &HeaderCallback);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &WriteCallback);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &ProgressCallback);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, options_.connect_timeout_seconds);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, options_.stall_timeout_seconds);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "gptq-service-worker/0.1");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    if (t.resuming) {
      curl_easy_setopt(curl, CURLOPT_RANGE, absl::StrCat(have, "-").c_str());
    }
    const CURLcode rc = curl_easy_perform(curl);
    if (!t.decided) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &t.status);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    if (t.out != nullptr && std::fclose(t.out) != 0) t.write_failed = true;

    if (rc == CURLE_ABORTED_BY_CALLBACK) return absl::CancelledError("download cancelled");
    if (t.write_failed) {
      return absl::InternalError(absl::StrCat("cannot write '", part, "'"));
    }
    if (rc != CURLE_OK) {
      last = absl::UnavailableError(absl::StrCat("downloading ", what, " from ", url, ": ",
                                                 errbuf[0] ? errbuf : curl_easy_strerror(rc)));
      continue;  // transient: retry, resuming the .part
    }
    if (t.status == 404) {
      return absl::NotFoundError(absl::StrCat(what, " not found (HTTP 404 from ", url, ")"));
    }
    if (t.status == 401 || t.status == 403) {
      return absl::PermissionDeniedError(
          absl::StrCat("access to ", what, " denied (HTTP ", t.status, " from ", url,
                       "); set HF_TOKEN for gated or private repositories"));
    }
    if (t.status == 416 && t.resuming) {
      // The .part is at least as long as the file: complete, or garbage. Check it below when
      // its length matches the total, else start over.
      int64_t total = -1;
      const size_t slash = t.content_range.rfind('/');
      if (slash != std::string::npos) {
        absl::SimpleAtoi(absl::string_view(t.content_range).substr(slash + 1), &total);
      }
      if (total != have) {
        (void)fsutil::Remove(part);
        last = absl::UnavailableError(absl::StrCat("stale partial download of ", what));
        continue;
      }
    } else if (t.status == 200 || t.status == 206) {
      // Body written to the .part; check its length against what the server announced.
      int64_t total = -1;
      if (t.status == 206) {
        const size_t slash = t.content_range.rfind('/');
        if (slash != std::string::npos) {
          absl::SimpleAtoi(absl::string_view(t.content_range).substr(slash + 1), &total);
        }
      } else {
        total = t.content_length;
      }
      const int64_t size = FileSize(part);
      if (total >= 0 && size != total) {
        last = absl::UnavailableError(
            absl::StrCat("download of ", what, " ended at ", size, " of ", total, " bytes"));
        continue;  // resume
      }
    } else if (t.status >= 500 || t.status == 429) {
      last = absl::UnavailableError(
          absl::StrCat("HTTP ", t.status, " from ", url, " for ", what, ": ", t.error_body));
      continue;
    } else {
      return absl::FailedPreconditionError(
          absl::StrCat("HTTP ", t.status, " from ", url, " for ", what, ": ", t.error_body));
    }

    GPTQ_ASSIGN_OR_RETURN(std::string sha, Sha256File(part));
    const std::string expected = IsHex64(t.linked_etag) ? t.linked_etag
                                 : IsHex64(t.etag)      ? t.etag
                                                        : std::string();
    if (!expected.empty() && sha != expected) {
      (void)fsutil::Remove(part);
      if (t.resuming && !retried_after_mismatch) {
        // The leftover .part may have been corrupt: one more try from scratch.
        retried_after_mismatch = true;
        --attempt;
        continue;
      }
      return absl::DataLossError(absl::StrCat("sha256 mismatch for ", what, ": server says ",
                                              expected, ", downloaded content has ", sha));
    }
    GPTQ_RETURN_IF_ERROR(fsutil::Rename(part, dest));
    return FetchedFile{file, FileSize(dest), sha};
  }
  return last;
#else
  (void)cancelled;
  return absl::UnimplementedError(
      absl::StrCat("cannot fetch '", file, "' of ", ref.ToString(),
                   ": this worker was built without libcurl (hf:// downloads unavailable)"));
#endif
}

absl::StatusOr<Snapshot> HfHub::FetchModel(const HfModelRef& ref, const CancelFn& cancelled) {
  Snapshot snap;
  snap.dir = SnapshotDir(ref);
  if (auto cached = ReadManifest(snap.dir)) {
    snap.files = std::move(*cached);
    snap.from_cache = true;
    return snap;
  }
  GPTQ_ASSIGN_OR_RETURN(FetchedFile config, FetchFile(ref, "config.json", snap.dir, cancelled));
  snap.files.push_back(std::move(config));

  absl::StatusOr<FetchedFile> single = FetchFile(ref, "model.safetensors", snap.dir, cancelled);
  if (single.ok()) {
    snap.files.push_back(*std::move(single));
  } else if (absl::IsNotFound(single.status())) {
    absl::StatusOr<FetchedFile> index =
        FetchFile(ref, "model.safetensors.index.json", snap.dir, cancelled);
    if (absl::IsNotFound(index.status())) {
      return absl::NotFoundError(absl::StrCat(
          ref.ToString(), " has neither model.safetensors nor model.safetensors.index.json (",
          single.status().message(), ")"));
    }
    if (!index.ok()) return index.status();
    std::ifstream in(absl::StrCat(snap.dir, "/", index->path));
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model.safetensors.index.json of ", ref.ToString(), " has no weight_map object"));
    }
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      if (!shard.is_string()) {
        return absl::FailedPreconditionError(absl::StrCat("model.safetensors.index.json of ",
                                                          ref.ToString(), ": weight_map[\"", tensor,
                                                          "\"] is not a string"));
      }
      shards.insert(shard.get<std::string>());
    }
    snap.files.push_back(*std::move(index));
    for (const std::string& shard : shards) {
      GPTQ_ASSIGN_OR_RETURN(FetchedFile f, FetchFile(ref, shard, snap.dir, cancelled));
      snap.files.push_back(std::move(f));
    }
  } else {
    return single.status();
  }
  for (const char* optional : kOptionalFiles) {
    absl::StatusOr<FetchedFile> f = FetchFile(ref, optional, snap.dir, cancelled);
    if (f.ok()) {
      snap.files.push_back(*std::move(f));
    } else if (!absl::IsNotFound(f.status())) {
      return f.status();
    }
  }
  GPTQ_RETURN_IF_ERROR(WriteManifest(snap.dir, ref, snap.files));
  return snap;
}

}  // namespace gptq::hub
