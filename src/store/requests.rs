//! Requests from a terminal command to the live server that owns a session ("end it",
//! "continue it", "interrupt its turn"), and that server's answers.
//!
//! ```text
//! <state dir>/requests/<owner instance>/
//!   <request id>.json      a request, waiting for the owner
//!   <request id>.taken     the same request once the owner has claimed it
//!   <request id>.outcome   the owner's answer (the asker reads it, then removes it)
//! ```
//!
//! Files, not database rows: a terminal command only reads the database (no writer, no lock),
//! and the owner reads its own folder with one directory listing per poll.
//!
//! **Crash-safe.** Every file is written whole under a temporary name, fsynced, and renamed
//! into place (then the folder is fsynced), so a reader never sees half a file. Claiming and
//! withdrawing are renames of the same `.json` file: exactly one of them succeeds, so a
//! request the asker gave up on is never carried out, and one the owner took is always
//! answered (or the owner died, which the asker sees from its lock).
//!
//! **Validated.** Everything read back is checked (size, JSON shape with no unknown fields,
//! UUIDs, a verdict that ends, text lengths) before anything acts on it; a request that fails
//! the checks is answered with what was wrong.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StoreError, create_private_dir, io, valid_instance};
use crate::model::{SessionStatus, WorktreeState};

/// The largest request or outcome file read (a continued session's message is bounded by
/// `max_task_bytes` again by the engine).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// A summary longer than this is refused.
pub const MAX_SUMMARY_CHARS: usize = 10_000;
/// Answers nobody collected (the asker died) are removed after this long.
pub const STALE_OUTCOME: Duration = Duration::from_secs(600);

/// What the asker wants done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Ask {
    /// End the session with a verdict (a running turn is interrupted first).
    End {
        verdict: SessionStatus,
        #[serde(default)]
        summary: Option<String>,
        /// `merge`, `keep` or `discard` (worktree sessions).
        #[serde(default)]
        integrate: Option<String>,
        /// With `merge`: also merge when the branch brings symlinks pointing outside the
        /// repository.
        #[serde(default)]
        accept_outside_symlinks: bool,
    },
    /// Continue the session with a new message (a new turn).
    Converse { message: String },
    /// Interrupt the running turn (only turn `turn`, when given).
    Interrupt {
        #[serde(default)]
        turn: Option<u32>,
    },
}

impl Ask {
    pub fn name(&self) -> &'static str {
        match self {
            Ask::End { .. } => "end",
            Ask::Converse { .. } => "converse",
            Ask::Interrupt { .. } => "interrupt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// A UUID naming the request's files.
    pub id: String,
    pub session_id: String,
    /// The asking process (for the log).
    pub from_pid: u32,
    pub created_at: String,
    pub ask: Ask,
}

/// What a worktree session's branch became (for `end`'s line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegratedFacts {
    pub integrate: Option<String>,
    pub merged: bool,
    pub commit: Option<String>,
    pub branch: String,
    pub state: WorktreeState,
    pub warning: Option<String>,
    /// Symlinks pointing outside the repository that the merge brought (accepted).
    #[serde(default)]
    pub outside_links: Vec<LinkFacts>,
}

/// One symlink: where it is (relative to the checkout's top) and what it points to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFacts {
    pub path: String,
    pub target: String,
}

/// The owner's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub request_id: String,
    /// The answering server's pid.
    pub server_pid: u32,
    /// Why the request was not carried out (the engine's message), or `None` when it was.
    #[serde(default)]
    pub error: Option<String>,
    /// The session's status afterwards.
    #[serde(default)]
    pub status: Option<SessionStatus>,
    /// `end`/`interrupt`: a running turn was interrupted.
    #[serde(default)]
    pub interrupted: bool,
    /// `converse`: the number of the turn started.
    #[serde(default)]
    pub turn: Option<u32>,
    #[serde(default)]
    pub integrated: Option<IntegratedFacts>,
    /// Watcher notes (pre-call) to show with the result.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// What is wrong with a request, in words for its asker.
pub fn check(r: &Request) -> Result<(), String> {
    if uuid::Uuid::parse_str(&r.id).is_err() {
        return Err(format!("request id `{}` is not a UUID", r.id));
    }
    if !crate::model::valid_id(&r.session_id) {
        return Err(format!("session id `{}` is not a UUID", r.session_id));
    }
    match &r.ask {
        Ask::End {
            verdict, summary, ..
        } => {
            if !matches!(
                verdict,
                SessionStatus::Completed | SessionStatus::Failed | SessionStatus::Cancelled
            ) {
                return Err(format!(
                    "verdict `{}` does not end a session: use completed, failed or cancelled",
                    verdict.as_str()
                ));
            }
            if summary
                .as_ref()
                .is_some_and(|s| s.chars().count() > MAX_SUMMARY_CHARS)
            {
                return Err(format!(
                    "the summary is longer than {MAX_SUMMARY_CHARS} characters"
                ));
            }
        }
        Ask::Converse { message } if message.trim().is_empty() => {
            return Err("the message is empty: say what the executor should do next".into());
        }
        Ask::Converse { .. } | Ask::Interrupt { .. } => {}
    }
    Ok(())
}

/// The folder of requests to server `instance`.
fn mailbox(root: &Path, instance: &str) -> Result<PathBuf, StoreError> {
    if !valid_instance(instance) {
        return Err(StoreError::Corrupt {
            what: format!("server instance `{instance}`"),
            reason: "not a UUID".into(),
        });
    }
    Ok(root.join("requests").join(instance))
}

/// Write `bytes` to `dir/name` atomically (temporary file, fsync, rename, fsync the folder).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
    let dst = dir.join(name);
    let r = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
        File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io(&dst))
}

/// Read a small JSON file, checking its size first.
fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, StoreError> {
    let f = File::open(p).map_err(io(p))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io(p))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(StoreError::Corrupt {
            what: p.display().to_string(),
            reason: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    serde_json::from_slice(&buf).map_err(|e| StoreError::Corrupt {
        what: p.display().to_string(),
        reason: e.to_string(),
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt {
        what: "request".into(),
        reason: e.to_string(),
    })
}

/// A request sent, as its asker sees it.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    pub id: String,
}

/// Send `ask` about `session_id` to the server `instance` (blocking).
pub fn send(
    root: &Path,
    instance: &str,
    session_id: &str,
    ask: Ask,
) -> Result<Pending, StoreError> {
    let dir = mailbox(root, instance)?;
    create_private_dir(&dir)?;
    let req = Request {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: session_id.to_string(),
        from_pid: std::process::id(),
        created_at: crate::model::now(),
        ask,
    };
    if let Err(reason) = check(&req) {
        return Err(StoreError::Corrupt {
            what: "request".into(),
            reason,
        });
    }
    write_atomic(&dir, &format!("{}.json", req.id), &to_json(&req)?)?;
    Ok(Pending { dir, id: req.id })
}

impl Pending {
    /// The owner's answer, once there is one (the file is removed once read).
    pub fn outcome(&self) -> Result<Option<Outcome>, StoreError> {
        let p = self.dir.join(format!("{}.outcome", self.id));
        if !p.exists() {
            return Ok(None);
        }
        let o: Outcome = read_json(&p)?;
        let _ = std::fs::remove_file(&p);
        if o.request_id != self.id {
            return Err(StoreError::Corrupt {
                what: p.display().to_string(),
                reason: format!("answers request {}, not {}", o.request_id, self.id),
            });
        }
        Ok(Some(o))
    }

    /// Whether the owner has claimed the request.
    pub fn taken(&self) -> bool {
        !self.dir.join(format!("{}.json", self.id)).exists()
    }

    /// Take the request back. `Ok(true)`: withdrawn, the owner never saw it and never will;
    /// `Ok(false)`: the owner had claimed it already (its answer will come, or it died).
    pub fn withdraw(&self) -> Result<bool, StoreError> {
        let from = self.dir.join(format!("{}.json", self.id));
        let to = self.dir.join(format!(".{}.withdrawn", self.id));
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                let _ = std::fs::remove_file(&to);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&from)(e)),
        }
    }
}

/// A request claimed by its owner: the request, or why it cannot be carried out.
pub type Taken = (String, Result<Request, String>);

/// Claim every waiting request to server `instance` (blocking). Each is renamed to `.taken`
/// first (a withdrawn one is skipped), then read and checked.
pub fn take(root: &Path, instance: &str) -> Result<Vec<Taken>, StoreError> {
    let dir = mailbox(root, instance)?;
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".outcome") {
            // An answer nobody collected (its asker died).
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_OUTCOME);
            if old && uuid::Uuid::parse_str(id).is_ok() {
                let _ = std::fs::remove_file(e.path());
            }
            continue;
        }
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if uuid::Uuid::parse_str(id).is_err() {
            continue;
        }
        let taken = dir.join(format!("{id}.taken"));
        match std::fs::rename(e.path(), &taken) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&taken)(e)),
        }
        let r = read_json::<Request>(&taken)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.id != id {
                    return Err(format!("the request in {id}.json names itself {}", r.id));
                }
                check(&r).map(|()| r)
            });
        out.push((id.to_string(), r));
    }
    Ok(out)
}

/// Answer request `id` (blocking): the outcome is written, then the claimed request removed.
pub fn answer(root: &Path, instance: &str, outcome: &Outcome) -> Result<(), StoreError> {
    let dir = mailbox(root, instance)?;
    if uuid::Uuid::parse_str(&outcome.request_id).is_err() {
        return Err(StoreError::Corrupt {
            what: "outcome".into(),
            reason: "request id is not a UUID".into(),
        });
    }
    write_atomic(
        &dir,
        &format!("{}.outcome", outcome.request_id),
        &to_json(outcome)?,
    )?;
    let _ = std::fs::remove_file(dir.join(format!("{}.taken", outcome.request_id)));
    Ok(())
}

/// Remove the request folders of servers that are gone (`alive` says which are not).
pub fn prune(root: &Path, alive: impl Fn(&str) -> bool) -> usize {
    let Ok(rd) = std::fs::read_dir(root.join("requests")) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(inst) = name.to_str() else { continue };
        if valid_instance(inst) && !alive(inst) && std::fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn inst() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn sid() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn end() -> Ask {
        Ask::End {
            verdict: SessionStatus::Cancelled,
            summary: Some("stop".into()),
            integrate: None,
            accept_outside_symlinks: false,
        }
    }

    #[test]
    fn a_request_is_taken_once_and_answered() {
        let d = tempfile::tempdir().unwrap();
        let i = inst();
        let s = sid();
        let p = send(d.path(), &i, &s, end()).unwrap();
        assert!(!p.taken());
        assert_eq!(p.outcome().unwrap(), None);
        let got = take(d.path(), &i).unwrap();
        assert_eq!(got.len(), 1);
        let req = got[0].1.clone().unwrap();
        assert_eq!(req.session_id, s);
        assert_eq!(req.ask, end());
        assert!(p.taken());
        // Taken once: a second poll finds nothing, and the asker can no longer withdraw it.
        assert!(take(d.path(), &i).unwrap().is_empty());
        assert!(!p.withdraw().unwrap());
        let o = Outcome {
            request_id: p.id.clone(),
            server_pid: 7,
            status: Some(SessionStatus::Cancelled),
            interrupted: true,
            ..Outcome::default()
        };
        answer(d.path(), &i, &o).unwrap();
        assert_eq!(p.outcome().unwrap(), Some(o));
        // Read once, then gone; nothing is left in the folder.
        assert_eq!(p.outcome().unwrap(), None);
        let left: Vec<_> = std::fs::read_dir(d.path().join("requests").join(&i))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_withdrawn_request_is_never_taken() {
        let d = tempfile::tempdir().unwrap();
        let i = inst();
        let p = send(d.path(), &i, &sid(), Ask::Interrupt { turn: Some(2) }).unwrap();
        assert!(p.withdraw().unwrap());
        assert!(take(d.path(), &i).unwrap().is_empty());
    }

    #[test]
    fn bad_requests_are_named_not_acted_on() {
        let d = tempfile::tempdir().unwrap();
        let i = inst();
        let dir = d.path().join("requests").join(&i);
        std::fs::create_dir_all(&dir).unwrap();
        let good_id = uuid::Uuid::new_v4().to_string();
        let write = |id: &str, body: &str| std::fs::write(dir.join(format!("{id}.json")), body);
        // Not JSON; an unknown field; a verdict that does not end; an empty message; a
        // request whose id is not its file's.
        let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        write(&ids[0], "{not json").unwrap();
        let base = |id: &str, ask: serde_json::Value| {
            serde_json::json!({"id": id, "session_id": sid(), "from_pid": 1,
                "created_at": "2026-01-01T00:00:00Z", "ask": ask})
        };
        let mut extra = base(&ids[1], serde_json::json!({"kind": "interrupt"}));
        extra["sneaky"] = serde_json::json!(true);
        write(&ids[1], &extra.to_string()).unwrap();
        write(
            &ids[2],
            &base(
                &ids[2],
                serde_json::json!({"kind": "end", "verdict": "running"}),
            )
            .to_string(),
        )
        .unwrap();
        write(
            &ids[3],
            &base(
                &ids[3],
                serde_json::json!({"kind": "converse", "message": "  "}),
            )
            .to_string(),
        )
        .unwrap();
        write(
            &ids[4],
            &base(&good_id, serde_json::json!({"kind": "interrupt"})).to_string(),
        )
        .unwrap();
        // A file that is no request at all is left alone.
        std::fs::write(dir.join("notes.json"), "{}").unwrap();
        let mut got = take(d.path(), &i).unwrap();
        got.sort_by_key(|(id, _)| ids.iter().position(|x| x == id));
        assert_eq!(got.len(), 5);
        let errs: Vec<String> = got.into_iter().map(|(_, r)| r.unwrap_err()).collect();
        assert!(errs[0].contains("not valid"), "{errs:?}");
        assert!(errs[1].contains("sneaky"), "{errs:?}");
        assert!(errs[2].contains("does not end"), "{errs:?}");
        assert!(errs[3].contains("empty"), "{errs:?}");
        assert!(errs[4].contains("names itself"), "{errs:?}");
        assert!(dir.join("notes.json").exists());
        // A bad instance id never becomes a path.
        assert!(send(d.path(), "../x", &sid(), end()).is_err());
        assert!(take(d.path(), "../x").is_err());
    }

    #[test]
    fn folders_of_gone_servers_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        let (live, dead) = (inst(), inst());
        send(d.path(), &live, &sid(), end()).unwrap();
        send(d.path(), &dead, &sid(), end()).unwrap();
        assert_eq!(prune(d.path(), |i| i == live), 1);
        assert!(d.path().join("requests").join(&live).exists());
        assert!(!d.path().join("requests").join(&dead).exists());
    }
}
