//! Durable state: an embedded SQLite database plus the executors' raw turn logs.
//!
//! ```text
//! <state dir>/
//!   zwarm.db (+ -wal, -shm)   sessions, turns, watcher notes, the event log (WAL mode)
//!   turns/<id>.<n>.jsonl      the executor's raw stdout for turn n, append-only
//!   turns/<id>.<n>.stderr     its stderr (made only when the executor writes to stderr)
//!   turns/<id>/               files an executor keeps across a session's turns (ACP)
//!   scratch/<instance>-<k>.last-message   codex's `-o` file, lent to one turn at a time
//!   locks/<instance>.lock     held (flock) by a live server; how others know it is alive
//! ```
//!
//! Why a database: 0.2 kept one JSON file per session and rewrote (and fsynced) a whole file
//! for every executor event, and read every file for every list, check and start. Here every
//! question the tools ask is an indexed query, and nothing reads or rewrites all sessions.
//!
//! **One writer, in order.** All writes go through one thread that owns the write connection
//! ([`writer`]). Callers submit a group of writes and get a [`Ticket`]; groups are applied in
//! submission order, batched into one transaction (one fsync) per wake-up, each group in its
//! own savepoint so a conflict in one does not undo the others. A status change is *committed*
//! when its ticket resolves: the session engine awaits that before it reports the change.
//! Progress (per-event state) is submitted by the engine's flusher in time-bounded batches,
//! without waiting. The async workers never block on the disk: reads run on
//! `spawn_blocking` (see [`Store::read`]), writes on the writer thread.
//!
//! **Versions.** Every session row and turn row carries the version of the in-memory session
//! it was taken from; an upsert never replaces a newer version with an older one, so a late
//! progress batch cannot undo a status change.
//!
//! **Two servers** on one state dir share the database (WAL, busy timeout). A server marks the
//! sessions it runs with its instance id; another server adopts a session only when the owner's
//! lock file is no longer held, with a compare-and-set on the owner column, so a dead server's
//! session is adopted exactly once.

mod db;
mod events;
pub mod legacy;
pub mod logs;
pub mod readonly;
pub mod requests;
pub mod scratch;
mod writer;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use crate::model::{Session, SessionStatus, Turn, WatcherNote};

pub use crate::fleet::Stat;
pub use db::{NOTES_KEPT, SessionRow};

/// Load one session on a connection (inside [`Store::read`]).
pub fn load_session_with(c: &Connection, id: &str) -> Result<Option<Session>, StoreError> {
    db::load_session(c, id)
}

/// A session's stored version (0 when absent), inside [`Store::read`].
pub fn version_with(c: &Connection, id: &str) -> Result<u64, StoreError> {
    db::version_of(c, id)
}
pub use logs::TurnLog;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("database {path}: {err}")]
    Db { path: String, err: rusqlite::Error },
    #[error("stored record {what} is not valid: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("session {0} was changed by another zwarm server meanwhile")]
    Conflict(String),
    #[error("could not commit to the state database: {0}")]
    Commit(String),
    #[error("the state writer has stopped (zwarm is shutting down)")]
    Closed,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |err| StoreError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// One write, applied by the writer thread.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or update the session row (never older over newer). With `expect_owner`, only
    /// when the stored owner is that instance (adoption's compare-and-set); otherwise the
    /// group fails with [`StoreError::Conflict`].
    Session {
        session: SessionImage,
        expect_owner: Option<String>,
    },
    /// Insert or update one turn (never older over newer).
    Turn {
        session_id: String,
        version: u64,
        turn: Box<Turn>,
    },
    /// Commands of a running turn, numbered from `start` (progress: a running turn's row is
    /// written without its commands, which arrive here, so a flush costs what is new, not the
    /// whole turn again). The turn's final row holds them all, and these rows go.
    Commands {
        session_id: String,
        turn: u32,
        start: usize,
        commands: Vec<crate::model::CommandRecord>,
    },
    /// Append a watcher note.
    Note {
        session_id: String,
        note: WatcherNote,
    },
    /// Append to the event log.
    Event(EventRecord),
}

/// A session as stored: its row (without turns and notes), taken from memory at `version`.
#[derive(Debug, Clone)]
pub struct SessionImage {
    pub version: u64,
    pub row: db::RowValues,
}

impl SessionImage {
    pub fn of(s: &Session, version: u64) -> SessionImage {
        SessionImage {
            version,
            row: db::RowValues::of(s),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventRecord {
    pub ts: String,
    pub server: String,
    pub pid: u32,
    pub session_id: Option<String>,
    pub kind: String,
    pub data: Value,
}

/// Resolves when a submitted group is committed (or failed).
pub struct Ticket {
    pub seq: u64,
    rx: oneshot::Receiver<Result<(), StoreError>>,
}

impl Ticket {
    pub async fn committed(self) -> Result<(), StoreError> {
        self.rx.await.unwrap_or(Err(StoreError::Closed))
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    root: PathBuf,
    instance: String,
    writer: writer::Handle,
    /// Writes the turns' raw logs.
    logs: logs::Writer,
    /// The files executors write for zwarm to read back.
    scratch: Arc<scratch::Pool>,
    reader: Mutex<Connection>,
    /// Held for the life of the server: tells other servers this instance is alive.
    _lock: File,
}

impl Store {
    /// Open (create) the state dir and database. Blocking: call it before serving, or from
    /// `spawn_blocking`.
    pub fn open(root: &Path, instance: &str) -> Result<Store, StoreError> {
        for sub in ["", "turns", "locks"] {
            let p = root.join(sub);
            create_private_dir(&p)?;
        }
        let root = std::fs::canonicalize(root).map_err(io(root))?;
        let lp = root.join("locks").join(format!("{instance}.lock"));
        let lock = private_file(&lp)?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB).map_err(io(&lp))?;
        let path = root.join("zwarm.db");
        let conn = db::open(&path)?;
        db::migrate_schema(&conn).map_err(db::err(&path))?;
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            set_private(&p);
        }
        let reader = db::open(&path)?;
        let writer = writer::start(conn, path.clone())?;
        let scratch = Arc::new(scratch::Pool::new(root.join("scratch"), instance));
        Ok(Store {
            inner: Arc::new(StoreInner {
                root,
                instance: instance.to_string(),
                writer,
                logs: logs::Writer::default(),
                scratch,
                reader: Mutex::new(reader),
                _lock: lock,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Queue a group of writes; they commit together, after every group submitted before.
    /// Never blocks.
    pub fn submit(&self, writes: Vec<Write>) -> Ticket {
        self.inner.writer.submit(writes)
    }

    /// [`Store::submit`] for writes nobody waits for at once (a queued turn recorded as
    /// running, progress): they may wait a few milliseconds (`writer::LAZY_WAIT`) to share
    /// the next group's transaction, and so its sync. Still committed in submission order.
    pub fn submit_lazy(&self, writes: Vec<Write>) -> Ticket {
        self.inner.writer.submit_lazy(writes)
    }

    /// Transactions the writer has committed so far (for tests of the group commit).
    #[doc(hidden)]
    pub fn transactions(&self) -> u64 {
        self.inner.writer.transactions()
    }

    /// The highest group sequence number that has been applied (committed or failed).
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.writer.applied()
    }

    /// For crash tests: commit at most `groups` more groups, then stop as a crash would
    /// (nothing later is written; every later group fails with [`StoreError::Closed`]). The
    /// token is cancelled once the writer has stopped.
    #[doc(hidden)]
    pub fn crash_after(&self, groups: u64) -> tokio_util::sync::CancellationToken {
        self.inner.writer.crash_after(groups)
    }

    /// Wait until every group submitted before now is applied.
    pub async fn sync(&self) {
        let _ = self.submit(vec![]).committed().await;
    }

    /// Build an event record for this server.
    pub fn event(&self, kind: &str, session_id: Option<&str>, data: Value) -> Write {
        Write::Event(EventRecord {
            ts: crate::model::now(),
            server: self.inner.instance.clone(),
            pid: std::process::id(),
            session_id: session_id.map(str::to_string),
            kind: kind.to_string(),
            data,
        })
    }

    /// Append an event without waiting for it.
    pub fn log(&self, kind: &str, session_id: Option<&str>, data: Value) {
        let _ = self.submit(vec![self.event(kind, session_id, data)]);
    }

    /// A typed log event of `session` (or of the server), to add to a group of writes.
    pub fn record(&self, ev: crate::log_event::LogEvent, session_id: Option<&str>) -> Write {
        let (kind, data) = ev.into_parts();
        self.event(&kind, session_id, data)
    }

    /// Append a typed log event without waiting for it.
    pub fn log_event(&self, ev: crate::log_event::LogEvent, session_id: Option<&str>) {
        let _ = self.submit(vec![self.record(ev, session_id)]);
    }

    /// Import a zwarm 0.2 state dir found at `from` (once; see [`legacy`]). Blocking.
    pub fn import_legacy(&self, from: &Path) -> Result<Option<legacy::ImportReport>, StoreError> {
        if !legacy::has_legacy(from) {
            return Ok(None);
        }
        let path = self.inner.root.join("zwarm.db");
        let mut conn = db::open(&path)?;
        legacy::import(&mut conn, from, &self.inner.root)
    }

    /// Run a read on the read connection, off the async workers.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner.reader.lock())).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Corrupt {
                what: "read task".into(),
                reason: e.to_string(),
            }),
        }
    }

    /// Run a read on the read connection, here (blocking).
    pub fn read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.inner.reader.lock())
    }

    pub async fn load_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let id = id.to_string();
        self.read(move |c| db::load_session(c, &id)).await
    }

    pub async fn version_of(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_string();
        self.read(move |c| db::version_of(c, &id)).await
    }

    /// Ids equal to, or starting with, `prefix` (at most `limit`).
    pub async fn ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let p = prefix.to_string();
        self.read(move |c| db::ids_with_prefix(c, &p, limit)).await
    }

    /// One page of sessions, newest first, and the total matching.
    pub async fn page(
        &self,
        status: Option<SessionStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<SessionRow>, usize), StoreError> {
        self.read(move |c| db::page(c, status, limit, offset)).await
    }

    /// Watcher statistics of sessions changed after `rev` (all sessions for 0), and the new rev.
    pub async fn stats_since(&self, rev: i64) -> Result<(Vec<Stat>, i64), StoreError> {
        self.read(move |c| db::stats_since(c, rev)).await
    }

    /// Sessions with a turn queued or running, with their owners: (id, instance, pid).
    pub async fn active(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        self.read(db::active).await
    }

    /// The last `limit` events of every server, oldest first.
    pub async fn recent_events(&self, limit: usize) -> Result<Vec<Value>, StoreError> {
        self.read(move |c| db::recent_events(c, limit, None)).await
    }

    /// Events after sequence number `after` (at most `limit`), oldest first, with their `seq`.
    pub async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Value>, StoreError> {
        self.read(move |c| db::recent_events(c, limit, Some(after)))
            .await
    }

    /// Remove the read-back files crashed servers left in `scratch/` (blocking). Returns how
    /// many.
    pub fn sweep_scratch(&self) -> usize {
        scratch::sweep(&self.inner.root.join("scratch"), |i| self.owner_alive(i))
    }

    /// Whether the server instance that owns a session is still running (its lock is held).
    /// Blocking (a file lock probe): call off the async workers.
    pub fn owner_alive(&self, instance: &str) -> bool {
        if instance == self.inner.instance {
            return true;
        }
        if !valid_instance(instance) {
            return false;
        }
        let lp = self
            .inner
            .root
            .join("locks")
            .join(format!("{instance}.lock"));
        let Ok(f) = OpenOptions::new().write(true).open(&lp) else {
            return false;
        };
        // A shared probe: the live owner holds the lock exclusively, so this fails only while
        // it lives; two probes at once (two servers recovering) do not mistake each other
        // for the owner.
        match flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(()) => {
                // Nobody holds it: that server is gone. Tidy its lock file.
                let _ = std::fs::remove_file(&lp);
                false
            }
            Err(_) => true,
        }
    }

    /// Remove lock files of servers that are gone (they would otherwise pile up).
    pub fn prune_locks(&self) -> usize {
        let dir = self.inner.root.join("locks");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(inst) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            // A lock file just created by a starting server may not be locked yet.
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age.as_secs() < 10);
            if !young && valid_instance(inst) && !self.owner_alive(inst) {
                n += 1;
            }
        }
        n
    }

    /// The raw log files of one turn, written off the async workers.
    pub fn turn_log(&self, id: &str, turn: u32) -> Result<TurnLog, StoreError> {
        session_id_ok(id)?;
        let turns = self.inner.root.join("turns");
        TurnLog::open(&self.inner.logs, logs::files(&turns, id, turn))
    }

    /// [`Store::turn_log`] for a turn a dead server started: appended to where its log already
    /// is (a server of 0.4.0 or earlier wrote `turns/<id>/<n>.jsonl`).
    pub fn turn_log_to_go_on(&self, id: &str, turn: u32) -> Result<TurnLog, StoreError> {
        session_id_ok(id)?;
        let turns = self.inner.root.join("turns");
        TurnLog::open(&self.inner.logs, logs::existing_files(&turns, id, turn))
    }

    /// An empty file for an executor to write what zwarm reads back after the turn (codex's
    /// `-o`), lent until dropped (blocking: call it off the async workers).
    pub fn scratch(&self) -> Result<scratch::Scratch, StoreError> {
        self.inner.scratch.take()
    }

    /// Where the raw log of a turn is read from (stdout, stderr): [`logs::existing_files`].
    pub fn turn_log_files(&self, id: &str, turn: u32) -> (PathBuf, PathBuf) {
        logs::existing_files(&self.inner.root.join("turns"), id, turn)
    }

    /// The session's own folder, `turns/<id>` (made, private, when missing; blocking): for an
    /// executor that keeps files across the session's turns
    /// ([`crate::executor::Executor::keeps_session_files`]).
    pub fn session_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        session_id_ok(id)?;
        let d = self.inner.root.join("turns").join(id);
        logs::own_dir(&d)?;
        Ok(d)
    }

    /// Stop the writer after everything queued is committed (bounded by `limit`).
    pub async fn close(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, self.sync()).await;
    }
}

/// Server instance ids are UUIDs (the lock file name is built from one).
pub fn valid_instance(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// A session id used in a path under the state dir: a UUID, nothing else.
fn session_id_ok(id: &str) -> Result<(), StoreError> {
    if crate::model::valid_id(id) {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            what: format!("session id `{id}`"),
            reason: "not a UUID".into(),
        })
    }
}

pub(crate) fn create_private_dir(p: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(io(p)(e)),
    }
}

pub(crate) fn private_file(p: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(p)
        .map_err(io(p))
}

fn set_private(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if p.exists() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }
}

pub(crate) fn flock(f: &File, op: i32) -> std::io::Result<()> {
    // SAFETY: flock on a valid, open file descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
