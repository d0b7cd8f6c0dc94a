//! Read-only access to a state dir, for the terminal commands (`zwarm ps`, `show`, `logs`,
//! `top`) that look at what running servers write.
//!
//! Opening it takes no server lock, starts no writer thread, creates nothing (a state dir
//! without a database is reported, never made) and migrates nothing. The connection is opened
//! read-only (and `query_only`), so it cannot write even by mistake. With the database in WAL
//! mode a reader never blocks the writer and the writer never blocks a reader; every question
//! here is one short statement or one short read transaction, so a reader polling every few
//! hundred milliseconds does not hold back the servers' checkpoints either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;

use super::{Stat, Store, StoreError, db};
use crate::model::{Session, SessionStatus};

pub use db::SessionRow;

/// A state database opened for reading only.
pub struct ReadOnlyStore {
    root: PathBuf,
    conn: Connection,
}

/// What the terminal views show about a session beyond a `list_sessions` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowExtra {
    pub created_at: String,
    pub model: Option<String>,
    /// The session's git branch, when the session has one (worktree isolation).
    pub branch: Option<String>,
    pub owner_instance: String,
    pub owner_pid: u32,
    /// The last progress line ("codex runs `cargo test`").
    pub last_progress: Option<String>,
    /// When the session's last turn started.
    pub turn_started_at: Option<String>,
    pub error: Option<String>,
}

/// Why a session id or prefix did not name exactly one session.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "session id `{0}` is too short: give the full id or a unique prefix of at least 8 characters (see `zwarm ps`)."
    )]
    Short(String),
    #[error("no session matches `{0}` (see `zwarm ps`).")]
    Unknown(String),
    #[error(
        "session id prefix `{prefix}` is ambiguous: it matches {candidates}. Give more characters."
    )]
    Ambiguous { prefix: String, candidates: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Open a state dir's database read-only: no lock, no writer, nothing created (see
    /// [`ReadOnlyStore`]). Blocking.
    pub fn open_read_only(root: &Path) -> Result<ReadOnlyStore, StoreError> {
        ReadOnlyStore::open(root)
    }
}

fn db_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    db::err(path)
}

fn e(err: rusqlite::Error) -> StoreError {
    StoreError::Db {
        path: "zwarm.db".into(),
        err,
    }
}

/// A column as text, whatever SQLite type it holds (JSON values come back typed).
fn text_at(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    })
}

/// How long an opener waits for a starting server to create the tables.
const TABLES_WAIT: Duration = Duration::from_secs(2);

impl ReadOnlyStore {
    /// The database file of a state dir.
    pub fn db_path(root: &Path) -> PathBuf {
        root.join("zwarm.db")
    }

    /// Whether a server has ever written state there.
    pub fn exists(root: &Path) -> bool {
        Self::db_path(root).is_file()
    }

    pub fn open(root: &Path) -> Result<ReadOnlyStore, StoreError> {
        let path = Self::db_path(root);
        if !path.is_file() {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                err: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no zwarm state here yet (no server has run with this state dir)",
                ),
            });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err(&path))?;
        conn.busy_timeout(Duration::from_secs(2))
            .map_err(db_err(&path))?;
        conn.pragma_update(None, "query_only", true)
            .map_err(db_err(&path))?;
        // A database a server is still creating has no tables yet: a starting server makes
        // them within milliseconds, so wait a moment (as for a lock) before saying so.
        let since = std::time::Instant::now();
        let ready = loop {
            let ready: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('sessions', 'events')",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n == 2)
                .map_err(db_err(&path))?;
            if ready || since.elapsed() >= TABLES_WAIT {
                break ready;
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        if !ready {
            return Err(StoreError::Corrupt {
                what: path.display().to_string(),
                reason: "it has no zwarm tables yet (a server may be creating it; try again)"
                    .into(),
            });
        }
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(ReadOnlyStore { root, conn })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// One page of sessions, newest first, and the total matching (as `list_sessions`).
    pub fn page(
        &self,
        status: Option<SessionStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<SessionRow>, usize), StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(e)?;
        let r = db::page(&tx, status, limit, offset)?;
        tx.commit().map_err(e)?;
        Ok(r)
    }

    /// Sessions with a turn queued or running: (id, owner instance, owner pid).
    pub fn active(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        db::active(&self.conn)
    }

    /// [`RowExtra`] of each of `ids` (absent ids are left out).
    pub fn extras(&self, ids: &[String]) -> Result<HashMap<String, RowExtra>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(e)?;
        let mut out = HashMap::new();
        {
            let mut st = tx
                .prepare_cached(
                    "SELECT created_at, model, owner_instance, owner_pid,
                       CASE WHEN json_valid(meta) THEN json_extract(meta, '$.isolation.branch') END,
                       CASE WHEN json_valid(meta) THEN json_extract(meta, '$.recent[#-1]') END,
                       CASE WHEN json_valid(meta) THEN json_extract(meta, '$.error') END,
                       (SELECT CASE WHEN json_valid(t.data) THEN json_extract(t.data, '$.started_at') END
                          FROM turns t WHERE t.session_id = s.id AND t.idx = s.turns)
                     FROM sessions s WHERE id = ?1",
                )
                .map_err(e)?;
            for id in ids {
                let row = st
                    .query_row([id], |r| {
                        Ok(RowExtra {
                            created_at: r.get(0)?,
                            model: text_at(r, 1)?,
                            owner_instance: r.get(2)?,
                            owner_pid: r.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
                            branch: text_at(r, 4)?,
                            last_progress: text_at(r, 5)?,
                            error: text_at(r, 6)?,
                            turn_started_at: text_at(r, 7)?,
                        })
                    })
                    .optional()
                    .map_err(e)?;
                if let Some(x) = row {
                    out.insert(id.clone(), x);
                }
            }
        }
        tx.commit().map_err(e)?;
        Ok(out)
    }

    /// One whole session (row, turns, the commands of a running turn, the last notes), read in
    /// one short read transaction so its parts agree.
    pub fn load_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(e)?;
        let s = db::load_session(&tx, id)?;
        tx.commit().map_err(e)?;
        Ok(s)
    }

    /// The full id of the session `prefix` names: the id itself, or a unique prefix of at
    /// least 8 characters.
    pub fn resolve(&self, prefix: &str) -> Result<String, ResolveError> {
        let p = prefix.trim().to_ascii_lowercase();
        if p.is_empty() {
            return Err(ResolveError::Unknown(p));
        }
        if p.len() < 8 {
            return Err(ResolveError::Short(p));
        }
        let ids = db::ids_with_prefix(&self.conn, &p, 6)?;
        if ids.contains(&p) {
            return Ok(p);
        }
        match ids.as_slice() {
            [] => Err(ResolveError::Unknown(p)),
            [one] => Ok(one.clone()),
            many => Err(ResolveError::Ambiguous {
                prefix: p,
                candidates: many
                    .iter()
                    .take(5)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Watcher statistics of sessions changed after `rev` (all for 0), and the new rev.
    pub fn stats_since(&self, rev: i64) -> Result<(Vec<Stat>, i64), StoreError> {
        db::stats_since(&self.conn, rev)
    }

    /// The highest event sequence number (0 when the log is empty).
    pub fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT IFNULL(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(e)
    }

    /// Events after `after` (oldest first, at most `limit`), of one session or of all, each
    /// as `{"seq", "ts", "server", "pid", "event", "session_id"?, …its data}`.
    pub fn events_after(
        &self,
        session: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        // Two statements, so each uses its index (the primary key; `events_by_session`).
        let sql = match session {
            None => {
                "SELECT seq, ts, server, pid, session_id, kind, data FROM events
                 WHERE seq > ?1 AND ?2 IS NULL ORDER BY seq LIMIT ?3"
            }
            Some(_) => {
                "SELECT seq, ts, server, pid, session_id, kind, data FROM events
                 WHERE session_id = ?2 AND seq > ?1 ORDER BY seq LIMIT ?3"
            }
        };
        let mut st = self.conn.prepare_cached(sql).map_err(e)?;
        let rows = st
            .query_map(params![after, session, limit as i64], db::event_row)
            .map_err(e)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
    }

    /// The last `limit` events (of one session or of all), oldest first.
    pub fn last_events(
        &self,
        session: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let sql = match session {
            None => {
                "SELECT * FROM (SELECT seq, ts, server, pid, session_id, kind, data FROM events
                   WHERE ?1 IS NULL ORDER BY seq DESC LIMIT ?2) ORDER BY seq"
            }
            Some(_) => {
                "SELECT * FROM (SELECT seq, ts, server, pid, session_id, kind, data FROM events
                   WHERE session_id = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq"
            }
        };
        let mut st = self.conn.prepare_cached(sql).map_err(e)?;
        let rows = st
            .query_map(params![session, limit as i64], db::event_row)
            .map_err(e)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
    }

    /// Whether the server instance `instance` still runs (holds its lock). Unlike
    /// [`Store::owner_alive`] this never removes a lock file: it only looks.
    pub fn owner_alive(&self, instance: &str) -> bool {
        if !super::valid_instance(instance) {
            return false;
        }
        let lp = self.root.join("locks").join(format!("{instance}.lock"));
        let Ok(f) = std::fs::File::open(&lp) else {
            return false;
        };
        // The live owner holds the lock exclusively; a shared probe fails only while it lives.
        super::flock(&f, libc::LOCK_SH | libc::LOCK_NB).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that comes while a server is creating the database (the file is there, its
    /// tables not yet) waits for them, and says what is wrong if they never come.
    #[test]
    fn an_opener_waits_for_a_starting_server_to_create_the_tables() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().to_path_buf();
        let db = ReadOnlyStore::db_path(&root);
        drop(Connection::open(&db).expect("create"));
        let creator = {
            let db = db.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                Connection::open(&db)
                    .expect("open")
                    .execute_batch("CREATE TABLE sessions (x); CREATE TABLE events (y);")
                    .expect("tables");
            })
        };
        ReadOnlyStore::open(&root).expect("opened once the tables exist");
        creator.join().expect("creator");

        let never = tempfile::tempdir().expect("tempdir");
        drop(Connection::open(ReadOnlyStore::db_path(never.path())).expect("create"));
        let t = std::time::Instant::now();
        let e = ReadOnlyStore::open(never.path())
            .err()
            .expect("no tables")
            .to_string();
        assert!(e.contains("no zwarm tables yet"), "{e}");
        assert!(t.elapsed() >= TABLES_WAIT, "it waited first");
    }

    #[test]
    fn reads_a_live_store_without_creating_or_writing_anything() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("state");
        // Nothing there: an error, and nothing is created.
        assert!(Store::open_read_only(&root).is_err());
        assert!(!root.exists());

        let instance = uuid::Uuid::new_v4().to_string();
        let store = Store::open(&root, &instance).expect("open");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        store.log("server_started", None, serde_json::json!({"version": "t"}));
        rt.block_on(store.sync());

        // While the server's store is open (and holds its lock), a reader sees its events.
        let ro = Store::open_read_only(&root).expect("read-only open");
        let evs = ro.last_events(None, 10).expect("events");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["event"], "server_started");
        assert!(ro.owner_alive(&instance), "the live server's lock is held");
        assert!(!ro.owner_alive(&uuid::Uuid::new_v4().to_string()));
        assert!(ro.page(None, 10, 0).expect("page").0.is_empty());
        assert!(matches!(ro.resolve("0123"), Err(ResolveError::Short(_))));
        assert!(matches!(
            ro.resolve("01234567"),
            Err(ResolveError::Unknown(_))
        ));
        // It cannot write, even by mistake.
        assert!(ro.conn.execute("DELETE FROM events", []).is_err());
        // The writer goes on while the reader is open, and the reader sees what follows.
        let seq = ro.last_event_seq().expect("seq");
        store.log("server_stopped", None, serde_json::json!({}));
        rt.block_on(store.sync());
        let new = ro.events_after(None, seq, 10).expect("after");
        assert_eq!(new.len(), 1);
        assert_eq!(new[0]["event"], "server_stopped");
        // A look at the lock leaves it as it was: the file is still there.
        assert!(root.join("locks").join(format!("{instance}.lock")).exists());
    }
}
