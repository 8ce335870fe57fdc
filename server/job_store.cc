#include "job_store.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "gptq/status_macros.h"

namespace gptq::server {
namespace {

using gptq::v1::Job;
using gptq::v1::JobEvent;

// Finalizes a prepared statement on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  sqlite3_stmt* get() { return stmt_; }
  void BindText(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  void BindBlob(int i, const std::string& s) {
    sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  void BindInt(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void BindNull(int i) { sqlite3_bind_null(stmt_, i); }
  std::string ColumnBlob(int i) {
    const void* p = sqlite3_column_blob(stmt_, i);
    int n = sqlite3_column_bytes(stmt_, i);
    return p ? std::string(static_cast<const char*>(p), n) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

absl::Status SqliteError(sqlite3* db, const std::string& what) {
  const int code = sqlite3_extended_errcode(db);
  std::string msg = absl::StrCat("sqlite ", what, ": ", sqlite3_errmsg(db));
  if ((code & 0xff) == SQLITE_CONSTRAINT) return absl::AlreadyExistsError(msg);
  if ((code & 0xff) == SQLITE_FULL) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

// Commits on Commit(), rolls back otherwise.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    status_ = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK
                  ? absl::OkStatus()
                  : SqliteError(db_, "begin");
  }
  ~Transaction() {
    if (status_.ok() && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  const absl::Status& status() const { return status_; }
  absl::Status Commit() {
    done_ = true;
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      absl::Status s = SqliteError(db_, "commit");
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      return s;
    }
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  absl::Status status_;
  bool done_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                     SQLITE_OPEN_FULLMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open job database ", path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<JobStore> store(new JobStore(db));
  absl::MutexLock lock(&store->mu_);
  // WAL + synchronous=NORMAL: a committed transaction survives a process crash (kill -9);
  // only an OS crash / power loss may lose the last commits.
  GPTQ_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  GPTQ_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=NORMAL"));
  GPTQ_RETURN_IF_ERROR(store->Exec("PRAGMA foreign_keys=ON"));
  GPTQ_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS jobs ("
      " ord INTEGER PRIMARY KEY AUTOINCREMENT,"
      " id TEXT NOT NULL UNIQUE,"
      " request_id TEXT,"
      " lease_epoch INTEGER NOT NULL,"
      " job BLOB NOT NULL)"));
  GPTQ_RETURN_IF_ERROR(store->Exec(
      "CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs(request_id)"
      " WHERE request_id IS NOT NULL"));
  GPTQ_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS events ("
      " job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
      " seq INTEGER NOT NULL,"
      " event BLOB NOT NULL,"
      " PRIMARY KEY (job_id, seq)) WITHOUT ROWID"));
  return store;
}

JobStore::~JobStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close_v2(db_);
}

absl::Status JobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("sqlite: ", msg, " in: ", sql));
  }
  return absl::OkStatus();
}

absl::Status JobStore::AppendEventsLocked(const std::vector<JobEvent>& events) {
  if (events.empty()) return absl::OkStatus();
  Stmt st(db_, "INSERT INTO events(job_id, seq, event) VALUES (?, ?, ?)");
  GPTQ_RETURN_IF_ERROR(st.status());
  for (const JobEvent& e : events) {
    sqlite3_reset(st.get());
    st.BindText(1, e.job_id());
    st.BindInt(2, e.sequence());
    st.BindBlob(3, e.SerializeAsString());
    if (sqlite3_step(st.get()) != SQLITE_DONE) return SqliteError(db_, "insert event");
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> JobStore::InsertJob(const Job& job, int64_t lease_epoch,
                                            const std::vector<JobEvent>& events) {
  absl::MutexLock lock(&mu_);
  Transaction tx(db_);
  GPTQ_RETURN_IF_ERROR(tx.status());
  Stmt st(db_, "INSERT INTO jobs(id, request_id, lease_epoch, job) VALUES (?, ?, ?, ?)");
  GPTQ_RETURN_IF_ERROR(st.status());
  st.BindText(1, job.id());
  if (job.request_id().empty()) {
    st.BindNull(2);
  } else {
    st.BindText(2, job.request_id());
  }
  st.BindInt(3, lease_epoch);
  st.BindBlob(4, job.SerializeAsString());
  if (sqlite3_step(st.get()) != SQLITE_DONE) return SqliteError(db_, "insert job");
  const int64_t order = sqlite3_last_insert_rowid(db_);
  GPTQ_RETURN_IF_ERROR(AppendEventsLocked(events));
  GPTQ_RETURN_IF_ERROR(tx.Commit());
  return order;
}

absl::Status JobStore::UpdateJob(const Job& job, int64_t lease_epoch,
                                 const std::vector<JobEvent>& events) {
  absl::MutexLock lock(&mu_);
  Transaction tx(db_);
  GPTQ_RETURN_IF_ERROR(tx.status());
  Stmt st(db_, "UPDATE jobs SET lease_epoch = ?, job = ? WHERE id = ?");
  GPTQ_RETURN_IF_ERROR(st.status());
  st.BindInt(1, lease_epoch);
  st.BindBlob(2, job.SerializeAsString());
  st.BindText(3, job.id());
  if (sqlite3_step(st.get()) != SQLITE_DONE) return SqliteError(db_, "update job");
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(absl::StrCat("job ", job.id(), " is not stored"));
  }
  GPTQ_RETURN_IF_ERROR(AppendEventsLocked(events));
  return tx.Commit();
}

absl::Status JobStore::DeleteJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Transaction tx(db_);
  GPTQ_RETURN_IF_ERROR(tx.status());
  {
    Stmt ev(db_, "DELETE FROM events WHERE job_id = ?");
    GPTQ_RETURN_IF_ERROR(ev.status());
    ev.BindText(1, id);
    if (sqlite3_step(ev.get()) != SQLITE_DONE) return SqliteError(db_, "delete events");
  }
  Stmt st(db_, "DELETE FROM jobs WHERE id = ?");
  GPTQ_RETURN_IF_ERROR(st.status());
  st.BindText(1, id);
  if (sqlite3_step(st.get()) != SQLITE_DONE) return SqliteError(db_, "delete job");
  if (sqlite3_changes(db_) == 0) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return tx.Commit();
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadJobs() {
  absl::MutexLock lock(&mu_);
  Stmt st(db_,
          "SELECT j.ord, j.lease_epoch, j.job,"
          " (SELECT COALESCE(MAX(seq), 0) FROM events e WHERE e.job_id = j.id)"
          " FROM jobs j ORDER BY j.ord");
  GPTQ_RETURN_IF_ERROR(st.status());
  std::vector<StoredJob> out;
  int rc;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    StoredJob s;
    s.order = sqlite3_column_int64(st.get(), 0);
    s.lease_epoch = sqlite3_column_int64(st.get(), 1);
    if (!s.job.ParseFromString(st.ColumnBlob(2))) {
      return absl::DataLossError(absl::StrCat("job row ", s.order, " does not parse"));
    }
    s.last_sequence = sqlite3_column_int64(st.get(), 3);
    out.push_back(std::move(s));
  }
  if (rc != SQLITE_DONE) return SqliteError(db_, "load jobs");
  return out;
}

absl::StatusOr<std::vector<JobEvent>> JobStore::LoadEvents(const std::string& job_id,
                                                           int64_t from_sequence) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "SELECT event FROM events WHERE job_id = ? AND seq >= ? ORDER BY seq");
  GPTQ_RETURN_IF_ERROR(st.status());
  st.BindText(1, job_id);
  st.BindInt(2, from_sequence);
  std::vector<JobEvent> out;
  int rc;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    JobEvent e;
    if (!e.ParseFromString(st.ColumnBlob(0))) {
      return absl::DataLossError(absl::StrCat("event of job ", job_id, " does not parse"));
    }
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return SqliteError(db_, "load events");
  return out;
}

}  // namespace gptq::server
