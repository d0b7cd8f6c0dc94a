//! Import of a zwarm 0.2 state dir (`sessions/*.json`, `events.jsonl`, `turns/`).
//!
//! Runs at most once per state database, and only into a database that holds no 0.3 state
//! yet (no session, no event, no earlier import): an executor can write the project's
//! `.zwarm/` at any time, and a state planted there later is never taken in. The import runs
//! inside one database transaction, so two servers starting at the same moment import it
//! exactly once. Every record is validated as untrusted input (an executor could have written
//! the old files): ids must be UUIDs matching their file names, owners must be server instance
//! ids, native ids must not look like flags. Bad records are skipped and reported, never
//! guessed at. A symlink (or anything but plain files and folders) anywhere under what is
//! imported refuses that part. The 0.2 event log is not imported (its events cannot be told
//! from forged ones); it is kept aside with the rest. The old files are moved aside into
//! `legacy-0.2/` next to where they were, never deleted; the turn logs move into the new
//! state dir (they keep their layout, and get the state dir's modes: 0700 folders, 0600
//! files).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{SessionImage, StoreError, Write, db};
use crate::model::{Session, valid_id, valid_native_id};

/// What an import did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportReport {
    pub from: String,
    pub sessions: usize,
    /// Events imported: always 0 (0.2's event log is kept aside, not imported).
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
    if let Some(why) = has_state(&tx).map_err(db_err)? {
        tracing::warn!(from = %from.display(), %why, "a zwarm 0.2 state was found and not imported: this state database already {why}; zwarm imports a 0.2 state only into a new one");
        return Ok(None);
    }
    let mut report = ImportReport {
        from: from.display().to_string(),
        ..Default::default()
    };
    let sessions_dir = from.join("sessions");
    let same_dir = std::fs::canonicalize(from).ok() == std::fs::canonicalize(root).ok();
    let mut imported: Vec<String> = Vec::new();
    let files = match plain(&sessions_dir, 2) {
        Ok(()) => session_files(&sessions_dir),
        Err(reason) => {
            report
                .skipped
                .push((sessions_dir.display().to_string(), reason));
            Vec::new()
        }
    };
    for f in files {
        let name = f.display().to_string();
        let s = read_session(&f).and_then(|s| {
            let turns = from.join("turns");
            match std::fs::symlink_metadata(&turns) {
                Err(_) => Ok(s),
                Ok(m) if m.is_symlink() => Err(format!(
                    "{} is a symlink: its turn logs are not taken in",
                    turns.display()
                )),
                Ok(_) => plain(&turns.join(&s.id), 4).map(|()| s),
            }
        });
        match s {
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
    for id in &imported {
        let src = from.join("turns").join(id);
        let dst = root.join("turns").join(id);
        if same_dir {
            private_modes(&dst, 4);
            continue;
        }
        let is_dir = std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir());
        if !is_dir || std::fs::symlink_metadata(&dst).is_ok() {
            continue;
        }
        super::create_private_dir(&root.join("turns"))?;
        if std::fs::rename(&src, &dst).is_ok() {
            private_modes(&dst, 4);
        } else {
            copy_dir(&src, &dst);
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

/// Copy the plain files of `src` into a new private `dst` (no symlink followed on either side).
fn copy_dir(src: &Path, dst: &Path) {
    if super::create_private_dir(dst).is_err() {
        return;
    }
    for e in std::fs::read_dir(src).into_iter().flatten().flatten() {
        let from = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(e.path());
        let Ok(mut from) = from else { continue };
        if !from.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst.join(e.file_name()));
        if let Ok(mut to) = to {
            let _ = std::io::copy(&mut from, &mut to);
        }
    }
}

/// Whether the database already holds state: a session, an event, or an earlier import.
fn has_state(tx: &Connection) -> Result<Option<&'static str>, rusqlite::Error> {
    let q = |sql: &str| tx.query_row(sql, [], |r| r.get::<_, bool>(0));
    Ok(
        if q("SELECT EXISTS(SELECT 1 FROM meta WHERE key LIKE 'imported:%')")? {
            Some("imported a 0.2 state once")
        } else if q("SELECT EXISTS(SELECT 1 FROM sessions)")? {
            Some("holds sessions")
        } else if q("SELECT EXISTS(SELECT 1 FROM events)")? {
            Some("holds events")
        } else {
            None
        },
    )
}

/// The session files of a 0.2 `sessions/` folder.
fn session_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
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
    files
}

/// `Ok` when `p` is absent, a plain file, or a folder holding only plain files and folders
/// (at most `depth` levels, 10,000 entries); else why not.
/// Most entries looked at under one imported folder: bounds the walk of a planted tree, far
/// above any real 0.2 state (one file per session, a few turn logs each).
const MAX_ENTRIES: u32 = 2_000_000;

fn plain(p: &Path, depth: u32) -> Result<(), String> {
    let mut left = MAX_ENTRIES;
    fn walk(p: &Path, depth: u32, left: &mut u32) -> Result<(), String> {
        let m = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        *left = left.saturating_sub(1);
        if *left == 0 {
            return Err(format!("{} holds too many files", p.display()));
        }
        if m.is_symlink() {
            return Err(format!("{} is a symlink; zwarm imports none", p.display()));
        }
        if m.is_file() {
            return Ok(());
        }
        if !m.is_dir() {
            return Err(format!("{} is not a plain file or folder", p.display()));
        }
        if depth == 0 {
            return Err(format!("{} is nested too deep", p.display()));
        }
        let rd = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("{}: {e}", p.display()))?;
            walk(&e.path(), depth - 1, left)?;
        }
        Ok(())
    }
    walk(p, depth, &mut left)
}

/// Give an imported folder the state dir's modes: 0700 folders, 0600 files. Whatever else
/// is found in it (a symlink put there meanwhile) is removed.
fn private_modes(p: &Path, depth: u32) {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return;
    };
    let open = |extra: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | extra)
            .open(p)
    };
    if m.is_file() {
        if let Ok(f) = open(0) {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
    } else if m.is_dir() && depth > 0 {
        if let Ok(f) = open(libc::O_DIRECTORY) {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o700));
        }
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            private_modes(&e.path(), depth - 1);
        }
    } else {
        let _ = std::fs::remove_file(p);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A 0.2 state with 10,000 sessions is taken in whole (the walk's bound once equalled
    /// it, and the whole import was refused as "too many files").
    #[test]
    fn ten_thousand_session_files_are_plain() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions");
        std::fs::create_dir(&sessions).unwrap();
        for i in 0..10_001 {
            std::fs::write(sessions.join(format!("{i}.json")), "{}").unwrap();
        }
        assert_eq!(plain(&sessions, 2), Ok(()));
        std::os::unix::fs::symlink("/etc/passwd", sessions.join("x.json")).unwrap();
        assert!(plain(&sessions, 2).unwrap_err().contains("symlink"));
    }
}
