// Filesystem helpers on plain POSIX calls, for every target that links LibTorch.
//
// Why not std::filesystem: PyTorch's wheels (LibTorch 2.x, the GPU machine's) export their own
// statically linked copies of libstdc++'s std::filesystem. In a process that lists libtorch
// before libstdc++, our std::filesystem calls bind to those copies and crash (seen on the H100:
// a jump to address 0 inside remove_all). Worker code therefore uses these, and the ctest
// worker_no_std_filesystem fails when std::filesystem appears in a worker source.
#ifndef GPTQ_COMMON_POSIX_FS_H_
#define GPTQ_COMMON_POSIX_FS_H_

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gptq::fsutil {

// "<what> '<path>': <strerror>" with the errno mapped to a status code.
inline absl::Status ErrnoStatus(int err, const std::string& what, const std::string& path) {
  const std::string message = absl::StrCat(what, " '", path, "': ", strerror(err));
  switch (err) {
    case ENOENT: return absl::NotFoundError(message);
    case EEXIST: return absl::AlreadyExistsError(message);
    case EACCES:
    case EPERM: return absl::PermissionDeniedError(message);
    case ENOTDIR:
    case ENOTEMPTY:
    case EISDIR: return absl::FailedPreconditionError(message);
    case ENOSPC: return absl::ResourceExhaustedError(message);
    default: return absl::InternalError(message);
  }
}

// True when something (of any type, a dangling symlink included) is at `path`.
inline bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// Follows symlinks, like std::filesystem::is_directory.
inline bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

inline bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

inline bool IsSymlink(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

inline absl::StatusOr<uint64_t> FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "cannot stat", path);
  if (!S_ISREG(st.st_mode)) return absl::FailedPreconditionError(absl::StrCat("'", path, "' is not a regular file"));
  return static_cast<uint64_t>(st.st_size);
}

// Entry names of a directory (no "." or ".."), in readdir order.
inline absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return ErrnoStatus(errno, "cannot open directory", path);
  std::vector<std::string> names;
  errno = 0;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
    errno = 0;
  }
  const int err = errno;
  ::closedir(dir);
  if (err != 0) return ErrnoStatus(err, "cannot read directory", path);
  return names;
}

inline absl::StatusOr<bool> IsEmptyDirectory(const std::string& path) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(path);
  if (!names.ok()) return names.status();
  return names->empty();
}

// rename(2): atomic within one filesystem; replaces a file or an empty directory at `to`.
inline absl::Status Rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot rename to '", to, "' from"), from);
  }
  return absl::OkStatus();
}

// Removes a file, symlink or empty directory; OK when nothing is there.
inline absl::Status Remove(const std::string& path) {
  if (::remove(path.c_str()) != 0 && errno != ENOENT) return ErrnoStatus(errno, "cannot remove", path);
  return absl::OkStatus();
}

namespace internal {
inline int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) {
  return ::remove(path) == 0 || errno == ENOENT ? 0 : errno;
}
}  // namespace internal

// Removes `path` and everything below it (symlinks are removed, never followed); OK when
// nothing is there.
inline absl::Status RemoveAll(const std::string& path) {
  if (!Exists(path)) return absl::OkStatus();
  const int rc = ::nftw(path.c_str(), internal::RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
  if (rc != 0) return ErrnoStatus(rc > 0 ? rc : errno, "cannot remove", path);
  return absl::OkStatus();
}

// Collapses repeated '/', drops "." components and a trailing '/' ("a//./b/" → "a/b").
// ".." is kept as written (no symlink-unaware folding).
inline std::string Normalize(const std::string& path) {
  if (path.empty()) return path;
  const bool absolute = path[0] == '/';
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    const std::string part = path.substr(i, j - i);
    if (!part.empty() && part != ".") parts.push_back(part);
    i = j + 1;
  }
  std::string out = absolute ? "/" : "";
  for (size_t k = 0; k < parts.size(); ++k) {
    if (k > 0) out += "/";
    out += parts[k];
  }
  if (out.empty()) out = ".";
  return out;
}

// The directory part of `path` after Normalize: "a/b" → "a", "/b" → "/", "b" → "".
inline std::string ParentPath(const std::string& path) {
  const std::string p = Normalize(path);
  const size_t slash = p.rfind('/');
  if (slash == std::string::npos) return "";
  if (slash == 0) return p.size() > 1 ? "/" : "";
  return p.substr(0, slash);
}

// The last component of `path` after Normalize: "a/b/" → "b".
inline std::string BaseName(const std::string& path) {
  const std::string p = Normalize(path);
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

// mkdir -p (mode 0755 before umask). OK when the directory exists.
inline absl::Status CreateDirectories(const std::string& path) {
  const std::string p = Normalize(path);
  if (p.empty() || p == "." || p == "/") return absl::OkStatus();
  if (IsDirectory(p)) return absl::OkStatus();
  const std::string parent = ParentPath(p);
  if (!parent.empty()) {
    absl::Status s = CreateDirectories(parent);
    if (!s.ok()) return s;
  }
  if (::mkdir(p.c_str(), 0755) != 0 && !(errno == EEXIST && IsDirectory(p))) {
    return ErrnoStatus(errno, "cannot create directory", p);
  }
  return absl::OkStatus();
}

}  // namespace gptq::fsutil

#endif  // GPTQ_COMMON_POSIX_FS_H_
