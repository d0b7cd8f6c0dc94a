//! The database schema and every query the store runs.
//!
//! A session is one row (indexed columns for what the tools ask, plus the rest as JSON), one
//! row per turn, and its watcher notes; the event log is a table. Everything read back is
//! validated: a row that does not parse, or whose id is not a UUID, is an error naming it,
//! never a silently skipped session.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub(super) use super::events::{event_row, recent_events};
use super::{EventRecord, SessionImage, StoreError, Write};
use crate::event::Usage;
use crate::fleet::Stat;
use crate::model::{Adapter, Mode, Owner, Session, SessionStatus, Turn, TurnStatus, WatcherNote};

const SCHEMA_VERSION: i64 = 1;

/// Notes kept per session when it is loaded (older ones stay in the table).
pub const NOTES_KEPT: usize = 100;

pub(super) fn err(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |err| StoreError::Db {
        path: path.display().to_string(),
        err,
    }
}

pub(super) fn db(err: rusqlite::Error) -> StoreError {
    StoreError::Db {
        path: "zwarm.db".into(),
        err,
    }
}

pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(err(path))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(err(path))?;
    // WAL: readers never wait for the writer. FULL: a committed status change survives a
    // power loss, not only a crash (one fsync per batch).
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err(path))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err(path))?;
    Ok(conn)
}

pub(super) fn migrate_schema(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(
        "BEGIN IMMEDIATE;
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            rev INTEGER NOT NULL,
            status TEXT NOT NULL,
            adapter TEXT NOT NULL,
            mode TEXT NOT NULL,
            model TEXT,
            task_head TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            owner_instance TEXT NOT NULL,
            owner_pid INTEGER NOT NULL,
            turns INTEGER NOT NULL,
            finished_turns INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            reasoning_output_tokens INTEGER NOT NULL,
            cost_usd REAL,
            meta TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS sessions_by_updated ON sessions (updated_at DESC, id);
        CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, updated_at DESC, id);
        CREATE INDEX IF NOT EXISTS sessions_by_rev ON sessions (rev);
        CREATE TABLE IF NOT EXISTS turns (
            session_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (session_id, idx)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS turn_commands (
            session_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            n INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (session_id, idx, n)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS notes (
            seq INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS notes_by_session ON notes (session_id, seq);
        CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            server TEXT NOT NULL,
            pid INTEGER NOT NULL,
            session_id TEXT,
            kind TEXT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, seq);
        INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
        COMMIT;",
    )?;
    let v: String = c.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if v.parse::<i64>().unwrap_or(0) > SCHEMA_VERSION {
        tracing::warn!(
            schema = %v,
            "the state database was written by a newer zwarm; reading it as far as this version understands"
        );
    }
    Ok(())
}

/// The session fields stored as JSON in the row (everything but turns and notes).
#[derive(Serialize)]
struct MetaRef<'a> {
    id: &'a str,
    adapter: Adapter,
    mode: Mode,
    status: SessionStatus,
    task: &'a str,
    working_dir: &'a str,
    model: &'a Option<String>,
    native_id: &'a Option<String>,
    created_at: &'a str,
    updated_at: &'a str,
    error: &'a Option<String>,
    summary: &'a Option<String>,
    native_usage: Usage,
    owner: &'a Owner,
    recent: &'a std::collections::VecDeque<String>,
    aborted: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    isolation: &'a Option<crate::model::Isolation>,
}

#[derive(Deserialize)]
struct Meta {
    id: String,
    adapter: Adapter,
    mode: Mode,
    status: SessionStatus,
    task: String,
    working_dir: String,
    model: Option<String>,
    native_id: Option<String>,
    created_at: String,
    updated_at: String,
    error: Option<String>,
    summary: Option<String>,
    #[serde(default)]
    native_usage: Usage,
    owner: Owner,
    #[serde(default)]
    recent: std::collections::VecDeque<String>,
    #[serde(default)]
    aborted: Option<String>,
    #[serde(default)]
    isolation: Option<crate::model::Isolation>,
}

/// The values of one session row, computed from the session in memory.
#[derive(Debug, Clone)]
pub struct RowValues {
    pub id: String,
    status: &'static str,
    adapter: &'static str,
    mode: &'static str,
    model: Option<String>,
    task_head: String,
    created_at: String,
    updated_at: String,
    pub owner_instance: String,
    owner_pid: u32,
    turns: u32,
    finished_turns: u32,
    usage: Usage,
    cost_usd: Option<f64>,
    meta: String,
}

fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Sync => "sync",
        Mode::Async => "async",
    }
}

impl RowValues {
    pub fn of(s: &Session) -> RowValues {
        let meta = MetaRef {
            id: &s.id,
            adapter: s.adapter,
            mode: s.mode,
            status: s.status,
            task: &s.task,
            working_dir: &s.working_dir,
            model: &s.model,
            native_id: &s.native_id,
            created_at: &s.created_at,
            updated_at: &s.updated_at,
            error: &s.error,
            summary: &s.summary,
            native_usage: s.native_usage,
            owner: &s.owner,
            recent: &s.recent,
            aborted: &s.aborted,
            isolation: &s.isolation,
        };
        RowValues {
            id: s.id.clone(),
            status: s.status.as_str(),
            adapter: s.adapter.as_str(),
            mode: mode_str(s.mode),
            model: s.model.clone(),
            task_head: crate::text::truncate_chars(&s.task, 200),
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
            owner_instance: s.owner.instance.clone(),
            owner_pid: s.owner.pid,
            turns: s.turns.len() as u32,
            finished_turns: s.turns.iter().filter(|t| t.ended_at.is_some()).count() as u32,
            usage: s.total_usage(),
            cost_usd: s.total_cost(),
            // Serialising plain data cannot fail; an empty object keeps the row writable.
            meta: serde_json::to_string(&meta).unwrap_or_else(|_| "{}".into()),
        }
    }
}

fn turn_status_str(t: TurnStatus) -> &'static str {
    match t {
        TurnStatus::Queued => "queued",
        TurnStatus::Running => "running",
        TurnStatus::Completed => "completed",
        TurnStatus::Failed => "failed",
        TurnStatus::Interrupted => "interrupted",
    }
}

/// Apply one write. `Ok(false)`: a compare-and-set did not hold.
pub(super) fn apply(c: &Connection, w: &Write) -> rusqlite::Result<bool> {
    match w {
        Write::Session {
            session,
            expect_owner,
        } => upsert_session(c, session, expect_owner.as_deref()),
        Write::Turn {
            session_id,
            version,
            turn,
        } => {
            let data = serde_json::to_string(turn).unwrap_or_else(|_| "{}".into());
            c.prepare_cached(
                "INSERT INTO turns (session_id, idx, version, status, data) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (session_id, idx) DO UPDATE SET version = excluded.version,
                   status = excluded.status, data = excluded.data
                 WHERE excluded.version >= turns.version",
            )?
            .execute(params![
                session_id,
                turn.index,
                *version as i64,
                turn_status_str(turn.status),
                data
            ])?;
            if turn.ended_at.is_some() {
                // The final row holds every command.
                c.prepare_cached("DELETE FROM turn_commands WHERE session_id = ?1 AND idx = ?2")?
                    .execute(params![session_id, turn.index])?;
            }
            Ok(true)
        }
        Write::Commands {
            session_id,
            turn,
            start,
            commands,
        } => {
            let mut st = c.prepare_cached(
                "INSERT OR REPLACE INTO turn_commands (session_id, idx, n, data) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (i, cmd) in commands.iter().enumerate() {
                let data = serde_json::to_string(cmd).unwrap_or_else(|_| "{}".into());
                st.execute(params![session_id, turn, (start + i) as i64, data])?;
            }
            Ok(true)
        }
        Write::Note { session_id, note } => {
            let data = serde_json::to_string(note).unwrap_or_else(|_| "{}".into());
            c.prepare_cached("INSERT INTO notes (session_id, data) VALUES (?1, ?2)")?
                .execute(params![session_id, data])?;
            Ok(true)
        }
        Write::Event(e) => {
            insert_event(c, e)?;
            Ok(true)
        }
    }
}

pub(super) fn insert_event(c: &Connection, e: &EventRecord) -> rusqlite::Result<()> {
    let data = serde_json::to_string(&e.data).unwrap_or_else(|_| "{}".into());
    c.prepare_cached(
        "INSERT INTO events (ts, server, pid, session_id, kind, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![e.ts, e.server, e.pid, e.session_id, e.kind, data])?;
    Ok(())
}

fn upsert_session(
    c: &Connection,
    img: &SessionImage,
    expect_owner: Option<&str>,
) -> rusqlite::Result<bool> {
    let r = &img.row;
    let u = &r.usage;
    let sql = if expect_owner.is_some() {
        "UPDATE sessions SET version = ?2, rev = (SELECT IFNULL(MAX(rev), 0) + 1 FROM sessions),
           status = ?3, adapter = ?4, mode = ?5, model = ?6, task_head = ?7, created_at = ?8,
           updated_at = ?9, owner_instance = ?10, owner_pid = ?11, turns = ?12, finished_turns = ?13,
           input_tokens = ?14, cached_input_tokens = ?15, output_tokens = ?16,
           reasoning_output_tokens = ?17, cost_usd = ?18, meta = ?19
         WHERE id = ?1 AND owner_instance = ?20"
    } else {
        "INSERT INTO sessions (id, version, rev, status, adapter, mode, model, task_head, created_at,
           updated_at, owner_instance, owner_pid, turns, finished_turns, input_tokens,
           cached_input_tokens, output_tokens, reasoning_output_tokens, cost_usd, meta)
         VALUES (?1, ?2, (SELECT IFNULL(MAX(rev), 0) + 1 FROM sessions), ?3, ?4, ?5, ?6, ?7, ?8, ?9,
           ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, rev = excluded.rev,
           status = excluded.status, adapter = excluded.adapter, mode = excluded.mode,
           model = excluded.model, task_head = excluded.task_head, created_at = excluded.created_at,
           updated_at = excluded.updated_at, owner_instance = excluded.owner_instance,
           owner_pid = excluded.owner_pid, turns = excluded.turns,
           finished_turns = excluded.finished_turns, input_tokens = excluded.input_tokens,
           cached_input_tokens = excluded.cached_input_tokens, output_tokens = excluded.output_tokens,
           reasoning_output_tokens = excluded.reasoning_output_tokens, cost_usd = excluded.cost_usd,
           meta = excluded.meta
         WHERE excluded.version >= sessions.version AND ?20 IS NULL"
    };
    let n = c.prepare_cached(sql)?.execute(params![
        r.id,
        img.version as i64,
        r.status,
        r.adapter,
        r.mode,
        r.model,
        r.task_head,
        r.created_at,
        r.updated_at,
        r.owner_instance,
        r.owner_pid,
        r.turns,
        r.finished_turns,
        u.input_tokens as i64,
        u.cached_input_tokens as i64,
        u.output_tokens as i64,
        u.reasoning_output_tokens as i64,
        r.cost_usd,
        r.meta,
        expect_owner,
    ])?;
    Ok(expect_owner.is_none() || n == 1)
}

fn corrupt(what: String, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: reason.to_string(),
    }
}

/// Load one whole session (row, turns, last notes), validated.
pub(super) fn load_session(c: &Connection, id: &str) -> Result<Option<Session>, StoreError> {
    let row: Option<(String, i64)> = c
        .prepare_cached("SELECT meta, version FROM sessions WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(db)?;
    let Some((meta, _version)) = row else {
        return Ok(None);
    };
    let m = parse_meta(id, &meta).map_err(|why| corrupt(format!("session {id}"), why))?;
    let mut turns: Vec<Turn> = Vec::new();
    {
        let mut st = c
            .prepare_cached("SELECT idx, data FROM turns WHERE session_id = ?1 ORDER BY idx")
            .map_err(db)?;
        let rows = st
            .query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(db)?;
        for row in rows {
            let (idx, data) = row.map_err(db)?;
            let mut t: Turn = serde_json::from_str(&data)
                .map_err(|e| corrupt(format!("turn {idx} of session {id}"), e))?;
            if t.ended_at.is_none() {
                extend_commands(c, id, &mut t)?;
            }
            if i64::from(t.index) != idx {
                return Err(corrupt(
                    format!("turn {idx} of session {id}"),
                    "its record names another turn",
                ));
            }
            turns.push(t);
        }
    }
    let mut notes: Vec<WatcherNote> = Vec::new();
    {
        let mut st = c
            .prepare_cached(
                "SELECT data FROM (SELECT seq, data FROM notes WHERE session_id = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![id, NOTES_KEPT as i64], |r| r.get::<_, String>(0))
            .map_err(db)?;
        for row in rows {
            let data = row.map_err(db)?;
            match serde_json::from_str(&data) {
                Ok(n) => notes.push(n),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "skipping an unreadable watcher note")
                }
            }
        }
    }
    Ok(Some(Session {
        id: m.id,
        adapter: m.adapter,
        mode: m.mode,
        status: m.status,
        task: m.task,
        working_dir: m.working_dir,
        model: m.model,
        native_id: m.native_id,
        created_at: m.created_at,
        updated_at: m.updated_at,
        turns,
        error: m.error,
        summary: m.summary,
        native_usage: m.native_usage,
        owner: m.owner,
        recent: m.recent,
        watcher_notes: notes,
        aborted: m.aborted,
        isolation: m.isolation,
    }))
}

/// A running turn's commands flushed as progress, after those its row already holds.
fn extend_commands(c: &Connection, id: &str, t: &mut Turn) -> Result<(), StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT data FROM turn_commands WHERE session_id = ?1 AND idx = ?2 AND n >= ?3 ORDER BY n",
        )
        .map_err(db)?;
    let rows = st
        .query_map(params![id, t.index, t.commands.len() as i64], |r| {
            r.get::<_, String>(0)
        })
        .map_err(db)?;
    for row in rows {
        let data = row.map_err(db)?;
        let cmd = serde_json::from_str(&data)
            .map_err(|e| corrupt(format!("a command of turn {} of session {id}", t.index), e))?;
        t.commands.push(cmd);
    }
    Ok(())
}

pub(super) fn version_of(c: &Connection, id: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = c
        .prepare_cached("SELECT version FROM sessions WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db)?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

pub(super) fn ids_with_prefix(
    c: &Connection,
    prefix: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    // Ids are lower-case hex and hyphens; '~' sorts after all of them.
    let mut st = c
        .prepare_cached(
            "SELECT id FROM sessions WHERE id >= ?1 AND id < ?1 || '~' ORDER BY id LIMIT ?2",
        )
        .map_err(db)?;
    let rows = st
        .query_map(params![prefix, limit as i64], |r| r.get::<_, String>(0))
        .map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

/// A session as `list_sessions` shows it.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub session_id: String,
    pub status: SessionStatus,
    pub adapter: Adapter,
    pub mode: Mode,
    pub task: String,
    pub turns: u32,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub updated_at: String,
    /// The session's git branch (`isolation: "worktree"`), read from its record.
    pub branch: Option<String>,
}

fn usage_at(r: &rusqlite::Row, first: usize) -> rusqlite::Result<Usage> {
    let g = |i: usize| r.get::<_, i64>(first + i).map(|v| v.max(0) as u64);
    Ok(Usage {
        input_tokens: g(0)?,
        cached_input_tokens: g(1)?,
        output_tokens: g(2)?,
        reasoning_output_tokens: g(3)?,
    })
}

fn parse_status(s: &str) -> SessionStatus {
    SessionStatus::parse(s).unwrap_or(SessionStatus::Unreadable)
}

/// A stored session record, validated: the row's id is a UUID and the record parses and names
/// that id. The one check behind both listing (a row that fails is listed as unreadable, with
/// the reason) and loading (it is an error).
fn parse_meta(id: &str, meta: &str) -> Result<Meta, String> {
    if !crate::model::valid_id(id) {
        return Err(format!(
            "its id `{}` is not a UUID",
            crate::text::one_line(id, 60)
        ));
    }
    let m: Meta =
        serde_json::from_str(meta).map_err(|e| format!("its record does not parse: {e}"))?;
    if m.id != id {
        return Err(format!(
            "its record names another id `{}`",
            crate::text::one_line(&m.id, 60)
        ));
    }
    Ok(m)
}

pub(super) fn page(
    c: &Connection,
    status: Option<SessionStatus>,
    limit: usize,
    offset: usize,
) -> Result<(Vec<SessionRow>, usize), StoreError> {
    let st_name = status.map(|s| s.as_str());
    let total: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM sessions WHERE ?1 IS NULL OR status = ?1")
        .and_then(|mut s| s.query_row([st_name], |r| r.get(0)))
        .map_err(db)?;
    let sql = if status.is_some() {
        "SELECT id, status, adapter, mode, task_head, turns, input_tokens, cached_input_tokens,
           output_tokens, reasoning_output_tokens, cost_usd, updated_at, meta
         FROM sessions INDEXED BY sessions_by_status WHERE status = ?1
         ORDER BY updated_at DESC, id LIMIT ?2 OFFSET ?3"
    } else {
        "SELECT id, status, adapter, mode, task_head, turns, input_tokens, cached_input_tokens,
           output_tokens, reasoning_output_tokens, cost_usd, updated_at, meta
         FROM sessions WHERE ?1 IS NULL ORDER BY updated_at DESC, id LIMIT ?2 OFFSET ?3"
    };
    let mut st = c.prepare_cached(sql).map_err(db)?;
    let rows = st
        .query_map(params![st_name, limit as i64, offset as i64], |r| {
            let id: String = r.get(0)?;
            let status_text: String = r.get(1)?;
            let adapter_text: String = r.get(2)?;
            let adapter = Adapter::parse(&adapter_text);
            let mut row = SessionRow {
                status: parse_status(&status_text),
                // An executor zwarm does not know makes the row unreadable (below); the value
                // here is then only a placeholder.
                adapter: adapter.unwrap_or(Adapter::Codex),
                mode: Mode::parse(&r.get::<_, String>(3)?).unwrap_or(Mode::Sync),
                task: r.get(4)?,
                turns: r.get(5)?,
                usage: usage_at(r, 6)?,
                cost_usd: r.get(10)?,
                updated_at: r.get(11)?,
                session_id: id,
                branch: None,
            };
            let meta: String = r.get(12)?;
            // A record that cannot be used is listed as such, with the reason, never hidden.
            let problem = match parse_meta(&row.session_id, &meta) {
                Ok(_) if adapter.is_none() => Some(format!(
                    "its executor `{}` is not one zwarm knows",
                    crate::text::one_line(&adapter_text, 40)
                )),
                Ok(m) => {
                    row.branch = m.isolation.map(|i| i.branch);
                    (row.status == SessionStatus::Unreadable)
                        .then(|| format!("its status `{status_text}` is not one zwarm knows"))
                }
                Err(why) => Some(why),
            };
            if let Some(why) = problem {
                row.status = SessionStatus::Unreadable;
                row.task = format!("(unreadable: {why})");
            }
            Ok(row)
        })
        .map_err(db)?;
    let rows = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?;
    Ok((rows, total.max(0) as usize))
}

pub(super) fn stats_since(c: &Connection, rev: i64) -> Result<(Vec<Stat>, i64), StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT id, adapter, model, status, turns, finished_turns, input_tokens,
               cached_input_tokens, output_tokens, reasoning_output_tokens, cost_usd, rev
             FROM sessions WHERE rev > ?1 ORDER BY rev",
        )
        .map_err(db)?;
    let mut max = rev;
    let rows = st
        .query_map([rev], |r| {
            let id: String = r.get(0)?;
            let adapter_text: String = r.get(1)?;
            let stat = Adapter::parse(&adapter_text).map(|adapter| -> rusqlite::Result<Stat> {
                Ok(Stat {
                    id: id.clone(),
                    adapter,
                    model: r.get(2)?,
                    status: parse_status(&r.get::<_, String>(3)?),
                    turns: r.get(4)?,
                    finished_turns: r.get(5)?,
                    usage: usage_at(r, 6)?,
                    cost_usd: r.get(10)?,
                })
            });
            Ok((id, adapter_text, stat.transpose()?, r.get::<_, i64>(11)?))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, adapter, s, r) = row.map_err(db)?;
        max = max.max(r);
        match s {
            Some(s) => out.push(s),
            // Not counted by the watchers: a session of an executor zwarm does not know is
            // unreadable (listed as such), not another executor's.
            None => {
                tracing::warn!(session = %id, adapter = %crate::text::one_line(&adapter, 40), "a stored session names an executor zwarm does not know; it is left out of the totals")
            }
        }
    }
    Ok((out, max))
}

pub(super) fn active(c: &Connection) -> Result<Vec<(String, String, u32)>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT id, owner_instance, owner_pid FROM sessions INDEXED BY sessions_by_status
             WHERE status IN ('running', 'queued')",
        )
        .map_err(db)?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

pub(super) fn meta_set(c: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
