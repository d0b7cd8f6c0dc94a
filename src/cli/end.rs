//! `zwarm end ID` and `zwarm diff ID`.
//!
//! `end` runs the engine in this process, like `run`: it adopts the session when the server
//! that ran it is gone (recording a turn that server left running as failed, and stopping what
//! it left behind), then ends it with the verdict. A session a live server owns is that
//! server's to end: `end` says so and exits 1, without touching it.

use std::time::Duration;

use super::{StateArgs, open_state, short_id};
use crate::model::{SessionStatus, WorktreeState};
use crate::sessions::ManagerError;
use crate::sessions::isolation::{Integrate as EngineIntegrate, Integrated, session_diff};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verdict {
    Completed,
    Failed,
    Cancelled,
}

impl Integrate {
    fn as_str(self) -> &'static str {
        match self {
            Integrate::Merge => "merge",
            Integrate::Keep => "keep",
            Integrate::Discard => "discard",
        }
    }
}

/// What the event log says about a merge that was done: (the branch merged into, whether
/// the session's branch held nothing new).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeFacts {
    pub into: Option<String>,
    pub already: bool,
}

/// The last `worktree_merged` event of session `id` (read-only).
fn merge_facts(cfg: &crate::config::Config, id: &str) -> MergeFacts {
    let Ok(store) = open_state(cfg) else {
        return MergeFacts::default();
    };
    let evs = store.last_events(Some(id), 50).unwrap_or_default();
    evs.iter()
        .rev()
        .find(|e| e["event"] == "worktree_merged")
        .map(|e| MergeFacts {
            into: e["into"].as_str().map(str::to_string),
            already: e["already_merged"].as_bool().unwrap_or(false),
        })
        .unwrap_or_default()
}

/// What became of a worktree session's branch, as the end of `end`'s line.
fn integration(i: &Integrated, merge: &MergeFacts) -> String {
    let at = |c: &str| c.get(..12).unwrap_or(c).to_string();
    let into = match merge.into.as_deref() {
        Some("HEAD") | None => "the project checkout".to_string(),
        Some(b) => format!("`{b}`"),
    };
    match i.integrate {
        Some(EngineIntegrate::Merge) if merge.already => format!(
            "; branch `{}` had no commits that {into} lacks, so nothing was merged{}",
            i.branch,
            i.commit
                .as_deref()
                .map(|c| format!(" ({into} stays at {})", at(c)))
                .unwrap_or_default()
        ),
        Some(EngineIntegrate::Merge) => format!(
            "; branch `{}` merged into {into}{}",
            i.branch,
            i.commit
                .as_deref()
                .map(|c| format!(" (now at {})", at(c)))
                .unwrap_or_default()
        ),
        Some(EngineIntegrate::Keep) if i.state == WorktreeState::Kept => format!(
            "; branch `{}` kept and its worktree removed: merge it yourself with `git merge {}`",
            i.branch, i.branch
        ),
        Some(EngineIntegrate::Keep) => format!(
            "; branch `{}` kept (its worktree is {}): merge it yourself with `git merge {}`",
            i.branch,
            i.state.as_str(),
            i.branch
        ),
        Some(EngineIntegrate::Discard) => {
            format!("; branch `{}` and its worktree discarded", i.branch)
        }
        None => format!(
            "; its worktree and branch `{}` are kept for a retry",
            i.branch
        ),
    }
}

impl Verdict {
    fn status(self) -> SessionStatus {
        match self {
            Verdict::Completed => SessionStatus::Completed,
            Verdict::Failed => SessionStatus::Failed,
            Verdict::Cancelled => SessionStatus::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Integrate {
    /// Merge the session's branch into the branch checked out in the project now (where
    /// `git merge` there would put it), then remove the worktree.
    Merge,
    /// Keep the session's branch (uncommitted work is committed to it first) and remove its
    /// worktree; `git merge` the branch later yourself. The default for a completed session.
    Keep,
    /// Delete the session's branch and worktree.
    Discard,
}

#[derive(Debug, clap::Args)]
pub struct EndArgs {
    /// Session id, or a unique prefix of 8 or more characters.
    pub id: String,
    /// completed (default), failed (may be retried later) or cancelled.
    #[arg(long, value_enum, default_value = "completed", value_name = "V")]
    pub verdict: Verdict,
    /// A summary to record with the verdict.
    #[arg(long)]
    pub summary: Option<String>,
    /// What to do with a worktree session's branch: merge (into the checked-out branch),
    /// keep (the branch; the worktree is removed), discard (both). Default: keep, except
    /// with `--verdict failed`, which leaves branch and worktree for a retry.
    #[arg(long, value_enum, value_name = "HOW")]
    pub integrate: Option<Integrate>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Session id, or a unique prefix of 8 or more characters.
    pub id: String,
    #[command(flatten)]
    pub state: StateArgs,
}

/// The message for a session a live server owns.
fn owned_elsewhere(id: &str, pid: u32) -> String {
    format!(
        "session {id} belongs to a zwarm server that is still running (pid {pid}). End it from that server's host (end_session), or run `zwarm end` again after that server has exited."
    )
}

pub fn main(a: EndArgs) -> anyhow::Result<i32> {
    let cfg = a.state.load()?;
    let read_cfg = cfg.clone();
    // Look first, read-only: a session a live server owns is not ours to touch, and starting
    // an engine for nothing would only add a server to the log.
    let id = {
        let store = open_state(&cfg)?;
        let id = store.resolve(&a.id)?;
        let extra = store.extras(std::slice::from_ref(&id))?.remove(&id);
        if let Some(x) = extra
            && store.owner_alive(&x.owner_instance)
        {
            eprintln!("zwarm: {}", owned_elsewhere(&id, x.owner_pid));
            return Ok(1);
        }
        id
    };
    let rt = super::runtime()?;
    let manager = super::start_engine(&rt, cfg)?;
    let r = rt.block_on(manager.end_integrated(
        &id,
        a.verdict.status(),
        a.summary.clone(),
        a.integrate.map(Integrate::as_str),
    ));
    rt.block_on(manager.shutdown(Duration::from_millis(1700)));
    rt.shutdown_timeout(Duration::from_millis(200));
    match r {
        Ok((s, interrupted, integrated)) => {
            let mut msg = format!("ended session {} as {}", short_id(&s.id), s.status.as_str());
            if interrupted {
                msg.push_str("; its running turn was interrupted");
            }
            if let Some(i) = &integrated {
                let facts = if i.merged {
                    merge_facts(&read_cfg, &s.id)
                } else {
                    MergeFacts::default()
                };
                msg.push_str(&integration(i, &facts));
            }
            super::out(&format!("{msg}\n"))?;
            if let Some(w) = integrated.and_then(|i| i.warning) {
                eprintln!("zwarm: warning: {w}");
            }
            Ok(0)
        }
        Err(ManagerError::ForeignOwner { id, pid }) => {
            eprintln!("zwarm: {}", owned_elsewhere(&id, pid));
            Ok(1)
        }
        Err(e) => {
            eprintln!("zwarm: {e}");
            Ok(1)
        }
    }
}

pub fn diff_main(a: DiffArgs) -> anyhow::Result<i32> {
    let cfg = a.state.load()?;
    let store = open_state(&cfg)?;
    let id = store.resolve(&a.id)?;
    let Some(s) = store.load_session(&id)? else {
        anyhow::bail!("session {id} is gone from the state database");
    };
    let Some(iso) = s.isolation.clone() else {
        return no_worktree(&s);
    };
    // Read-only like `show`: git reads the worktree (or the branch once it is removed); no
    // engine starts and nothing in the session changes.
    let diff = match session_diff(store.root(), &s.id, &iso) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("zwarm: session {}: {e}", short_id(&s.id));
            return Ok(1);
        }
    };
    eprintln!(
        "zwarm: session {} · branch {} from {} · {}{}",
        short_id(&s.id),
        iso.branch,
        iso.base.get(..12).unwrap_or(&iso.base),
        super::show::worktree_text(iso.state),
        if diff.is_empty() {
            " · no changes"
        } else {
            ""
        }
    );
    super::out(&diff)?;
    Ok(0)
}

/// `zwarm diff` of a session that ran in its working directory: there is no branch to diff,
/// so say where its changes are, and list the files it reported. Exit 1.
fn no_worktree(s: &crate::model::Session) -> anyhow::Result<i32> {
    eprintln!(
        "zwarm: session {} has no worktree of its own, so there is no diff to show: it ran in its working directory ({}), where its changes already are. Use `git diff` there (start sessions with `zwarm run --isolation worktree` or delegate's `isolation: \"worktree\"` to review them before they land). The files it reported changing:",
        short_id(&s.id),
        s.working_dir
    );
    let mut files: Vec<String> = s
        .turns
        .iter()
        .flat_map(|t| {
            t.files_changed
                .iter()
                .map(|f| format!("{} {}", f.kind, f.path))
        })
        .collect();
    files.dedup();
    if files.is_empty() {
        eprintln!("  (none reported)");
    }
    for f in files {
        eprintln!("  {f}");
    }
    Ok(1)
}
