#include "gptq/posix_fs.h"

#include <stdlib.h>

#include <algorithm>
#include <fstream>

#include <gtest/gtest.h>

namespace gptq::fsutil {
namespace {

class PosixFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/posix_fs_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { ASSERT_TRUE(RemoveAll(root_).ok()); }
  void Write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }
  std::string root_;
};

TEST(PosixFsPathTest, NormalizeParentBase) {
  EXPECT_EQ(Normalize("a//./b/"), "a/b");
  EXPECT_EQ(Normalize("/x/./y//"), "/x/y");
  EXPECT_EQ(Normalize("./"), ".");
  EXPECT_EQ(Normalize("/"), "/");
  EXPECT_EQ(ParentPath("a/b"), "a");
  EXPECT_EQ(ParentPath("a/b/"), "a");
  EXPECT_EQ(ParentPath("/b"), "/");
  EXPECT_EQ(ParentPath("b"), "");
  EXPECT_EQ(ParentPath("/"), "");
  EXPECT_EQ(BaseName("a/b/"), "b");
  EXPECT_EQ(BaseName("b"), "b");
}

TEST_F(PosixFsTest, CreateListSizeRename) {
  ASSERT_TRUE(CreateDirectories(root_ + "/x/y/z").ok());
  ASSERT_TRUE(CreateDirectories(root_ + "/x/y/z").ok());  // idempotent
  EXPECT_TRUE(IsDirectory(root_ + "/x/y/z"));
  Write(root_ + "/x/f", "hello");
  EXPECT_TRUE(IsRegularFile(root_ + "/x/f"));
  EXPECT_FALSE(IsDirectory(root_ + "/x/f"));
  EXPECT_EQ(*FileSize(root_ + "/x/f"), 5u);
  EXPECT_EQ(FileSize(root_ + "/x/nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FileSize(root_ + "/x").status().code(), absl::StatusCode::kFailedPrecondition);
  auto names = ListDirectory(root_ + "/x");
  ASSERT_TRUE(names.ok());
  std::sort(names->begin(), names->end());
  EXPECT_EQ(*names, (std::vector<std::string>{"f", "y"}));
  EXPECT_FALSE(*IsEmptyDirectory(root_ + "/x"));
  EXPECT_TRUE(*IsEmptyDirectory(root_ + "/x/y/z"));
  ASSERT_TRUE(Rename(root_ + "/x/f", root_ + "/g").ok());
  EXPECT_FALSE(Exists(root_ + "/x/f"));
  EXPECT_TRUE(IsRegularFile(root_ + "/g"));
  const absl::Status s = Rename(root_ + "/missing", root_ + "/h");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("missing"), std::string::npos) << s;
  // A file where a directory is wanted.
  EXPECT_FALSE(CreateDirectories(root_ + "/g/sub").ok());
}

TEST_F(PosixFsTest, RemoveAllRemovesTreesButNeverFollowsSymlinks) {
  ASSERT_TRUE(CreateDirectories(root_ + "/keep").ok());
  Write(root_ + "/keep/precious", "x");
  ASSERT_TRUE(CreateDirectories(root_ + "/tree/a/b").ok());
  Write(root_ + "/tree/a/b/f", "1");
  Write(root_ + "/tree/g", "2");
  ASSERT_EQ(symlink((root_ + "/keep").c_str(), (root_ + "/tree/link").c_str()), 0);
  ASSERT_TRUE(RemoveAll(root_ + "/tree").ok());
  EXPECT_FALSE(Exists(root_ + "/tree"));
  EXPECT_TRUE(IsRegularFile(root_ + "/keep/precious"));
  EXPECT_TRUE(RemoveAll(root_ + "/tree").ok());  // nothing there: OK
  EXPECT_TRUE(Remove(root_ + "/nothing").ok());
  ASSERT_TRUE(Remove(root_ + "/keep/precious").ok());
  EXPECT_TRUE(*IsEmptyDirectory(root_ + "/keep"));
}

}  // namespace
}  // namespace gptq::fsutil
