//! Durable state under the state dir (default `.zwarm/`).
//!
//! ```text
//! .zwarm/
//!   sessions/<id>.json        one file per session, replaced atomically (temp file + fsync + rename)
//!   turns/<id>/<n>.jsonl      the executor's raw stdout for turn n, appended line by line
//!   turns/<id>/<n>.stderr     its stderr
//!   events.jsonl              append-only log: session started, message sent, turn finished, …
//!   locks/<instance>.lock     held (flock) by a live server; how others know it is alive
//! ```
//!
//! Nothing acknowledged is lost: a session file is either the old or the new version, never a
//! torn one; events are appended with a single `write` under an exclusive `flock`, so two
//! servers sharing a state dir interleave whole lines. A crash leaves at worst a stray temp
//! file, which loading ignores.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::model::Session;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("session file {path} is not valid: {err}")]
    Corrupt {
        path: String,
        err: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |err| StoreError::Io {
        path: path.display().to_string(),
        err,
    }
}

pub struct Store {
    root: PathBuf,
    events: File,
    /// Held for the life of the server: tells other servers this instance is alive.
    _lock: File,
    instance: String,
}

impl Store {
    pub fn open(root: &Path, instance: &str) -> Result<Store, StoreError> {
        for sub in ["sessions", "turns", "locks"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let root = std::fs::canonicalize(root).map_err(io(root))?;
        let ev = root.join("events.jsonl");
        let events = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ev)
            .map_err(io(&ev))?;
        let lp = root.join("locks").join(format!("{instance}.lock"));
        let lock = File::create(&lp).map_err(io(&lp))?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB).map_err(io(&lp))?;
        Ok(Store {
            root,
            events,
            _lock: lock,
            instance: instance.to_string(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn session_path(&self, id: &str) -> PathBuf {
        self.root.join("sessions").join(format!("{id}.json"))
    }

    pub fn turn_dir(&self, id: &str) -> PathBuf {
        self.root.join("turns").join(id)
    }

    /// Write a session atomically: a reader (or a crash) sees the old file or the new one.
    pub fn save_session(&self, s: &Session) -> Result<(), StoreError> {
        let path = self.session_path(&s.id);
        let tmp = self
            .root
            .join("sessions")
            .join(format!(".{}.{}.tmp", s.id, std::process::id()));
        let data = serde_json::to_vec_pretty(s).map_err(|err| StoreError::Corrupt {
            path: path.display().to_string(),
            err,
        })?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&data).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    pub fn load_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let path = self.session_path(id);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|err| StoreError::Corrupt {
                    path: path.display().to_string(),
                    err,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// All session ids on disk (file names), without reading them.
    pub fn session_ids(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("sessions");
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            if let Some(id) = name.strip_suffix(".json") {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Append one event line to `events.jsonl`.
    pub fn append_event<T: Serialize>(&self, kind: &str, session_id: Option<&str>, data: T) {
        let mut line = serde_json::json!({
            "ts": crate::model::now(),
            "server": self.instance,
            "pid": std::process::id(),
            "event": kind,
        });
        if let Some(id) = session_id {
            line["session_id"] = Value::String(id.to_string());
        }
        if let (Value::Object(dst), Ok(Value::Object(src))) =
            (&mut line, serde_json::to_value(data))
        {
            for (k, v) in src {
                dst.insert(k, v);
            }
        }
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let res = flock(&self.events, libc::LOCK_EX).and_then(|_| {
            let r = (&self.events)
                .write_all(&bytes)
                .and_then(|_| self.events.sync_data());
            let _ = flock(&self.events, libc::LOCK_UN);
            r
        });
        if let Err(e) = res {
            tracing::error!(error = %e, kind, "cannot append to events.jsonl");
        }
    }

    /// The last `limit` events (all servers).
    pub fn recent_events(&self, limit: usize) -> Vec<Value> {
        let text = std::fs::read_to_string(self.root.join("events.jsonl")).unwrap_or_default();
        let mut v: Vec<Value> = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(limit)
            .collect();
        v.reverse();
        v
    }

    /// Whether the server instance that owns a session is still running.
    pub fn owner_alive(&self, instance: &str) -> bool {
        if instance == self.instance {
            return true;
        }
        let lp = self.root.join("locks").join(format!("{instance}.lock"));
        let Ok(f) = OpenOptions::new().write(true).open(&lp) else {
            return false;
        };
        match flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {
                // Nobody holds it: that server is gone. Tidy its lock file.
                let _ = std::fs::remove_file(&lp);
                false
            }
            Err(_) => true,
        }
    }

    /// Exclusive lock serialising adoption of sessions between servers (and threads): held
    /// while a server checks that a session's owner is dead and writes itself as the owner.
    pub fn lock_adoption(&self) -> Result<File, StoreError> {
        let p = self.root.join("locks").join("adopt.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        flock(&f, libc::LOCK_EX).map_err(io(&p))?;
        Ok(f)
    }

    /// Open (create) the raw log files for a turn.
    pub fn open_turn_logs(&self, id: &str, turn: u32) -> Result<(File, File, PathBuf), StoreError> {
        let dir = self.turn_dir(id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let jsonl = dir.join(format!("{turn}.jsonl"));
        let stderr = dir.join(format!("{turn}.stderr"));
        let last = dir.join(format!("{turn}.last-message"));
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io(p))
        };
        Ok((open(&jsonl)?, open(&stderr)?, last))
    }
}

fn flock(f: &File, op: i32) -> std::io::Result<()> {
    // SAFETY: flock on a valid, open file descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
