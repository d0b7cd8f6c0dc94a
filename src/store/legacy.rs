//! Import of a zwarm 0.2 state dir (`sessions/*.json`, `events.jsonl`, `turns/`).
//!
//! Runs once per source directory, inside one database transaction, so two servers starting
//! at the same moment import it exactly once. Every record is validated as untrusted input
//! (an executor could have written the old files): ids must be UUIDs matching their file
//! names, owners must be server instance ids, native ids must not look like flags. Bad
//! records are skipped and reported, never guessed at. The old files are moved aside into
//! `legacy-0.2/` next to where they were, never deleted; the turn logs move into the new
//! state dir (they keep their layout).

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::Value;

use super::{EventRecord, SessionImage, StoreError, Write, db};
use crate::model::{Session, valid_id, valid_native_id};

/// What an import did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportReport {
    pub from: String,
    pub sessions: usize,
    pub events: usize,
    /// (file, reason) of records that were not imported.
    pub skipped: Vec<(String, String)>,
    /// Where the old files now are.
    pub moved_to: String,
}

/// Whether `dir` holds a 0.2 state (session files or an event log) not yet imported.
pub fn has_legacy(dir: &Path) -> bool {
    dir.join("sessions").is_dir() || dir.join("events.jsonl").is_file()
}

fn db_err(err: rusqlite::Error) -> StoreError {
    StoreError::Db {
        path: "zwarm.db".into(),
        err,
    }
}

/// Import `from` (a 0.2 state dir) into the database at `conn`, whose state dir is `root`.
/// Returns `None` when there was nothing to import.
pub fn import(
    conn: &mut Connection,
    from: &Path,
    root: &Path,
) -> Result<Option<ImportReport>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    // Checked under the write lock: a server that started at the same moment and imported
    // first has moved the files away already.
    if !has_legacy(from) {
        return Ok(None);
    }
    let mut report = ImportReport {
        from: from.display().to_string(),
        ..Default::default()
    };
    let sessions_dir = from.join("sessions");
    let mut imported: Vec<String> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&sessions_dir) {
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        files.sort();
        for f in files {
            let name = f.display().to_string();
            match read_session(&f) {
                Ok(s) => {
                    let id = s.id.clone();
                    let mut writes = vec![Write::Session {
                        session: SessionImage::of(&s, 1),
                        expect_owner: None,
                    }];
                    for t in &s.turns {
                        writes.push(Write::Turn {
                            session_id: id.clone(),
                            version: 1,
                            turn: Box::new(t.clone()),
                        });
                    }
                    for n in &s.watcher_notes {
                        writes.push(Write::Note {
                            session_id: id.clone(),
                            note: n.clone(),
                        });
                    }
                    for w in &writes {
                        db::apply(&tx, w).map_err(db_err)?;
                    }
                    imported.push(id);
                    report.sessions += 1;
                }
                Err(reason) => {
                    tracing::warn!(file = %name, %reason, "0.2 session not imported");
                    report.skipped.push((name, reason));
                }
            }
        }
    }
    let events = from.join("events.jsonl");
    if let Ok(text) = std::fs::read(&events) {
        for line in String::from_utf8_lossy(&text).lines() {
            let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let mut take = |k: &str| m.remove(k);
            let ts = take("ts").and_then(|v| v.as_str().map(str::to_string));
            let kind = take("event").and_then(|v| v.as_str().map(str::to_string));
            let server = take("server")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let pid = take("pid").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
            let sid = take("session_id")
                .and_then(|v| v.as_str().map(str::to_string))
                .filter(|s| valid_id(s));
            let (Some(ts), Some(kind)) = (ts, kind) else {
                continue;
            };
            db::insert_event(
                &tx,
                &EventRecord {
                    ts,
                    server,
                    pid,
                    session_id: sid,
                    kind,
                    data: Value::Object(m),
                },
            )
            .map_err(db_err)?;
            report.events += 1;
        }
    }
    // Move the old files aside (kept, never deleted) and the turn logs into the new state dir.
    let aside = from.join("legacy-0.2");
    super::create_private_dir(&aside)?;
    for name in ["sessions", "events.jsonl"] {
        let src = from.join(name);
        if src.exists() {
            let dst = unique(&aside.join(name));
            std::fs::rename(&src, &dst).map_err(super::io(&src))?;
        }
    }
    let same_dir = std::fs::canonicalize(from).ok() == std::fs::canonicalize(root).ok();
    if !same_dir {
        for id in &imported {
            let src = from.join("turns").join(id);
            let dst = root.join("turns").join(id);
            if src.is_dir() && !dst.exists() && std::fs::rename(&src, &dst).is_err() {
                copy_dir(&src, &dst);
            }
        }
    }
    report.moved_to = aside.display().to_string();
    db::meta_set(
        &tx,
        &format!("imported:{}", from.display()),
        &crate::model::now(),
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Some(report))
}

fn unique(p: &Path) -> PathBuf {
    if !p.exists() {
        return p.to_path_buf();
    }
    for i in 2.. {
        let q = PathBuf::from(format!("{}.{i}", p.display()));
        if !q.exists() {
            return q;
        }
    }
    p.to_path_buf()
}

fn copy_dir(src: &Path, dst: &Path) {
    if super::create_private_dir(dst).is_err() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(src) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() {
                let _ = std::fs::copy(&p, dst.join(e.file_name()));
            }
        }
    }
}

/// Read and validate one 0.2 session file.
fn read_session(path: &Path) -> Result<Session, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > 64 * 1024 * 1024 {
        return Err("larger than 64 MiB".into());
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut s: Session = serde_json::from_slice(&bytes).map_err(|e| format!("not valid: {e}"))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if !valid_id(&s.id) {
        return Err(format!("id `{}` is not a UUID", s.id));
    }
    if stem != s.id {
        return Err(format!("file name does not match its id `{}`", s.id));
    }
    if !super::valid_instance(&s.owner.instance) {
        // Not a server id: treat the owner as a dead server (the session gets adopted).
        s.owner.instance = uuid::Uuid::new_v4().to_string();
    }
    if let Some(n) = s.native_id.clone()
        && !valid_native_id(&n)
    {
        s.native_id = None;
        s.error = Some(format!(
            "the stored executor thread id was not valid and was dropped (`{}`); converse starts a new thread",
            crate::text::one_line(&n, 60)
        ));
    }
    if !Path::new(&s.working_dir).is_absolute() {
        return Err(format!("working_dir `{}` is not absolute", s.working_dir));
    }
    for (i, t) in s.turns.iter().enumerate() {
        if t.index as usize != i + 1 {
            return Err(format!("turn {} is out of order", t.index));
        }
    }
    Ok(s)
}
