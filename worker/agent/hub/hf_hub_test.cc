#include "hub/hf_hub.h"

#include <httplib.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "gptq/sha256.h"

namespace gptq::hub {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string DataModels() { return std::string(GPTQ_TEST_DATA_ROOT) + "/models"; }

// A loopback HF-hub lookalike: /ORG/NAME/resolve/REV/FILE serves ROOT/NAME/FILE. Large files go
// through a redirect to /cdn/NAME/FILE (like the real hub's LFS files), with X-Linked-ETag on
// the redirect; small ones are answered directly with an ETag.
class FakeHub {
 public:
  explicit FakeHub(std::string root) : root_(std::move(root)) {
    server_.Get(R"(/([^/]+)/([^/]+)/resolve/([^/]+)/(.+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  const std::string name = req.matches[2], file = req.matches[4];
                  Record(req);
                  const std::string path = root_ + "/" + name + "/" + file;
                  if (!fs::is_regular_file(path)) {
                    res.status = 404;
                    res.set_content("Entry not found", "text/plain");
                    return;
                  }
                  const std::string body = ReadAll(path);
                  std::string sha = Sha256Hex(body);
                  {
                    std::lock_guard<std::mutex> lock(mu_);
                    if (wrong_sha_) sha = std::string(64, 'a');
                    if (!send_sha_) sha.clear();
                  }
                  if (body.size() > 4096) {
                    res.status = 302;
                    res.set_header("Location", "/cdn/" + name + "/" + file);
                    if (!sha.empty()) res.set_header("X-Linked-ETag", "\"" + sha + "\"");
                    return;
                  }
                  if (!sha.empty()) res.set_header("ETag", "\"" + sha + "\"");
                  res.set_content(body, "application/octet-stream");
                });
    server_.Get(R"(/cdn/([^/]+)/(.+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Record(req);
                  const std::string path =
                      root_ + "/" + std::string(req.matches[1]) + "/" + std::string(req.matches[2]);
                  // The CDN's own ETag is not a sha256 (like S3's MD5-based ones).
                  res.set_header("ETag", "\"0123abcd\"");
                  res.set_content(ReadAll(path), "application/octet-stream");
                });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeHub() {
    server_.stop();
    thread_.join();
  }

  std::string endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }
  void set_wrong_sha(bool v) {
    std::lock_guard<std::mutex> lock(mu_);
    wrong_sha_ = v;
  }
  void set_send_sha(bool v) {
    std::lock_guard<std::mutex> lock(mu_);
    send_sha_ = v;
  }
  // "PATH RANGE" for each request seen.
  std::vector<std::string> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  void Record(const httplib::Request& req) {
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(absl::StrCat(req.path, " ", req.get_header_value("Range")));
  }

  std::string root_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  bool wrong_sha_ = false;
  bool send_sha_ = true;
  std::vector<std::string> requests_;
};

class HfHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cache_ = fs::temp_directory_path() /
             absl::StrCat("hf_hub_test_", getpid(), "_",
                          ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(cache_);
    fs::create_directories(cache_);
  }
  void TearDown() override { fs::remove_all(cache_); }

  bool HaveData() const { return fs::exists(DataModels() + "/stories260K-hf/model.safetensors"); }

  HubOptions Options(const FakeHub& hub) const {
    HubOptions o;
    o.endpoint = hub.endpoint();
    o.cache_dir = cache_.string();
    o.max_attempts = 2;
    return o;
  }

  fs::path cache_;
};

#define SKIP_WITHOUT_DATA()                                                         \
  if (!HaveData()) {                                                                \
    GTEST_SKIP() << "test data absent: " << DataModels() << "/stories260K-hf (set " \
                 << "GPTQ_TEST_DATA_ROOT at configure time)";                       \
  }

TEST(ParseHfUriTest, ParsesOrgNameAndRevision) {
  auto ref = ParseHfUri("hf://meta-llama/Llama-2-7b-hf");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->org, "meta-llama");
  EXPECT_EQ(ref->name, "Llama-2-7b-hf");
  EXPECT_EQ(ref->revision, "main");
  ref = ParseHfUri("hf://a/b@refs/pr/1");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->revision, "refs/pr/1");
  EXPECT_EQ(ref->ToString(), "hf://a/b@refs/pr/1");
}

TEST(ParseHfUriTest, RejectsMalformedUris) {
  for (const char* bad : {"hf://", "hf://onlyname", "hf://a/b/c", "hf://../b", "hf://a/b@",
                          "hf://a/b@x/../y", "s3://a/b", "hf://a b/c"}) {
    auto ref = ParseHfUri(bad);
    EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST_F(HfHubTest, FetchesModelThroughRedirectAndCachesIt) {
  SKIP_WITHOUT_DATA();
  FakeHub server(DataModels());
  HfHub hub(Options(server));
  const HfModelRef ref{"local", "stories260K-hf", "main"};
  auto snap = hub.FetchModel(ref);
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_FALSE(snap->from_cache);
  EXPECT_EQ(snap->dir, (cache_ / "local/stories260K-hf/main").string());
  std::vector<std::string> names;
  for (const FetchedFile& f : snap->files) {
    names.push_back(f.path);
    const std::string src = DataModels() + "/stories260K-hf/" + f.path;
    EXPECT_EQ(f.sha256, *Sha256File(src)) << f.path;
    EXPECT_EQ(f.size_bytes, static_cast<int64_t>(fs::file_size(src))) << f.path;
    EXPECT_EQ(ReadAll(snap->dir + "/" + f.path), ReadAll(src)) << f.path;
    EXPECT_FALSE(fs::exists(snap->dir + "/" + f.path + ".part"));
  }
  EXPECT_THAT(names,
              ::testing::ElementsAre("config.json", "model.safetensors", "generation_config.json"));
  // The big file went through the redirect.
  EXPECT_THAT(server.requests(), ::testing::Contains("/cdn/stories260K-hf/model.safetensors "));
  const std::string manifest = ReadAll(snap->dir + "/.gptq-hub-manifest.json");
  EXPECT_THAT(manifest, ::testing::HasSubstr(*Sha256File(snap->dir + "/model.safetensors")));

  const size_t num_requests = server.requests().size();
  auto again = hub.FetchModel(ref);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->from_cache);
  EXPECT_EQ(again->files.size(), snap->files.size());
  EXPECT_EQ(server.requests().size(), num_requests) << "a cache hit must not touch the network";
}

TEST_F(HfHubTest, ResumesTruncatedPartWithRangeRequest) {
  SKIP_WITHOUT_DATA();
  FakeHub server(DataModels());
  HfHub hub(Options(server));
  const HfModelRef ref{"local", "stories260K-hf", "main"};
  const std::string full = ReadAll(DataModels() + "/stories260K-hf/model.safetensors");
  const std::string dir = hub.SnapshotDir(ref);
  WriteAll(dir + "/model.safetensors.part", full.substr(0, 400000));
  auto f = hub.FetchFile(ref, "model.safetensors", dir);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(ReadAll(dir + "/model.safetensors"), full);
  EXPECT_EQ(f->sha256, Sha256Hex(full));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.part"));
  EXPECT_THAT(server.requests(),
              ::testing::Contains("/cdn/stories260K-hf/model.safetensors bytes=400000-"));
}

TEST_F(HfHubTest, CorruptPartIsDetectedAndDownloadedAgain) {
  SKIP_WITHOUT_DATA();
  FakeHub server(DataModels());
  HfHub hub(Options(server));
  const HfModelRef ref{"local", "stories260K-hf", "main"};
  const std::string full = ReadAll(DataModels() + "/stories260K-hf/model.safetensors");
  const std::string dir = hub.SnapshotDir(ref);
  WriteAll(dir + "/model.safetensors.part", std::string(1000, 'x'));
  auto f = hub.FetchFile(ref, "model.safetensors", dir);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(ReadAll(dir + "/model.safetensors"), full);
  // One resumed try (checksum mismatch), then one from scratch.
  EXPECT_THAT(server.requests(),
              ::testing::Contains("/cdn/stories260K-hf/model.safetensors bytes=1000-"));
  EXPECT_THAT(server.requests(), ::testing::Contains("/cdn/stories260K-hf/model.safetensors "));
}

TEST_F(HfHubTest, ChecksumMismatchNamesTheFile) {
  SKIP_WITHOUT_DATA();
  FakeHub server(DataModels());
  server.set_wrong_sha(true);
  HfHub hub(Options(server));
  auto snap = hub.FetchModel({"local", "stories260K-hf", "main"});
  ASSERT_EQ(snap.status().code(), absl::StatusCode::kDataLoss) << snap.status();
  EXPECT_THAT(std::string(snap.status().message()),
              ::testing::HasSubstr("'config.json' of hf://local/stories260K-hf@main"));
  EXPECT_THAT(std::string(snap.status().message()), ::testing::HasSubstr(std::string(64, 'a')));
  const std::string dir = hub.SnapshotDir({"local", "stories260K-hf", "main"});
  EXPECT_FALSE(fs::exists(dir + "/config.json"));
  EXPECT_FALSE(fs::exists(dir + "/config.json.part"));
  EXPECT_FALSE(fs::exists(dir + "/.gptq-hub-manifest.json"));
}

TEST_F(HfHubTest, WithoutServerChecksumStillRecordsSha256) {
  SKIP_WITHOUT_DATA();
  FakeHub server(DataModels());
  server.set_send_sha(false);
  HfHub hub(Options(server));
  auto snap = hub.FetchModel({"local", "stories260K-hf", "main"});
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->files[1].sha256, *Sha256File(DataModels() + "/stories260K-hf/model.safetensors"));
}

TEST_F(HfHubTest, MissingRequiredFileIsNotFound) {
  const fs::path root = cache_ / "server";
  WriteAll((root / "noconfig/model.safetensors").string(), "weights");
  FakeHub server(root.string());
  HubOptions o = Options(server);
  o.cache_dir = (cache_ / "cache").string();
  HfHub hub(o);
  auto snap = hub.FetchModel({"org", "noconfig", "main"});
  ASSERT_EQ(snap.status().code(), absl::StatusCode::kNotFound) << snap.status();
  EXPECT_THAT(std::string(snap.status().message()),
              ::testing::HasSubstr("'config.json' of hf://org/noconfig@main not found"));
  EXPECT_THAT(std::string(snap.status().message()), ::testing::HasSubstr("HTTP 404"));

  WriteAll((root / "noweights/config.json").string(), "{}");
  auto snap2 = hub.FetchModel({"org", "noweights", "v1"});
  ASSERT_EQ(snap2.status().code(), absl::StatusCode::kNotFound) << snap2.status();
  EXPECT_THAT(std::string(snap2.status().message()),
              ::testing::HasSubstr("neither model.safetensors nor model.safetensors.index.json"));
}

TEST_F(HfHubTest, FetchesShardsNamedByTheIndex) {
  const fs::path root = cache_ / "server";
  WriteAll((root / "sharded/config.json").string(), "{\"model_type\": \"llama\"}");
  WriteAll((root / "sharded/model.safetensors.index.json").string(),
           R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
               "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}})");
  WriteAll((root / "sharded/model-00001-of-00002.safetensors").string(), std::string(5000, '1'));
  WriteAll((root / "sharded/model-00002-of-00002.safetensors").string(), "22");
  WriteAll((root / "sharded/tokenizer.json").string(), "{}");
  FakeHub server(root.string());
  HubOptions o = Options(server);
  o.cache_dir = (cache_ / "cache").string();
  HfHub hub(o);
  auto snap = hub.FetchModel({"org", "sharded", "main"});
  ASSERT_TRUE(snap.ok()) << snap.status();
  std::vector<std::string> names;
  for (const FetchedFile& f : snap->files) names.push_back(f.path);
  EXPECT_THAT(names, ::testing::ElementsAre("config.json", "model.safetensors.index.json",
                                            "model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors", "tokenizer.json"));
  EXPECT_EQ(ReadAll(snap->dir + "/model-00001-of-00002.safetensors"), std::string(5000, '1'));
}

TEST_F(HfHubTest, IndexNamingAPathOutsideTheRepoIsRejected) {
  const fs::path root = cache_ / "server";
  WriteAll((root / "evil/config.json").string(), "{}");
  WriteAll((root / "evil/model.safetensors.index.json").string(),
           R"({"weight_map": {"a": "../../../etc/passwd"}})");
  FakeHub server(root.string());
  HubOptions o = Options(server);
  o.cache_dir = (cache_ / "cache").string();
  HfHub hub(o);
  auto snap = hub.FetchModel({"org", "evil", "main"});
  ASSERT_EQ(snap.status().code(), absl::StatusCode::kInvalidArgument) << snap.status();
  EXPECT_THAT(std::string(snap.status().message()), ::testing::HasSubstr("../../../etc/passwd"));
}

TEST_F(HfHubTest, CancelStopsTheDownload) {
  SKIP_WITHOUT_DATA();
  FakeHub server(DataModels());
  HfHub hub(Options(server));
  auto snap = hub.FetchModel({"local", "stories260K-hf", "main"}, [] { return true; });
  EXPECT_EQ(snap.status().code(), absl::StatusCode::kCancelled) << snap.status();
}

TEST_F(HfHubTest, UnreachableEndpointIsUnavailable) {
  HubOptions o;
  o.endpoint = "http://127.0.0.1:1";  // nothing listens on port 1
  o.cache_dir = cache_.string();
  o.max_attempts = 1;
  HfHub hub(o);
  auto snap = hub.FetchModel({"org", "name", "main"});
  EXPECT_EQ(snap.status().code(), absl::StatusCode::kUnavailable) << snap.status();
  EXPECT_THAT(std::string(snap.status().message()), ::testing::HasSubstr("config.json"));
}

}  // namespace
}  // namespace gptq::hub
