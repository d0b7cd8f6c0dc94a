//! `zwarm end ID` and `zwarm diff ID`.
//!
//! `end` runs the engine in this process, like `run`: it adopts the session when the server
//! that ran it is gone (recording a turn that server left running as failed, and stopping what
//! it left behind), then ends it with the verdict. A session a live server owns is that
//! server's to end: `end` says so and exits 1, without touching it.

use std::time::Duration;

use super::{StateArgs, open_state, short_id};
use crate::model::SessionStatus;
use crate::sessions::ManagerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verdict {
    Completed,
    Failed,
    Cancelled,
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
    /// Merge the session's branch into the branch it started from.
    Merge,
    /// Keep the session's branch and worktree as they are.
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
    /// What to do with a worktree session's branch (merge, keep, discard).
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
    if let Some(how) = a.integrate {
        eprintln!(
            "zwarm: --integrate {how:?} ignored: sessions of this zwarm have no worktree of their own (their changes are already in their working directory)"
        );
    }
    let rt = super::runtime()?;
    let manager = super::start_engine(&rt, cfg)?;
    let r = rt.block_on(manager.end(&id, a.verdict.status(), a.summary.clone()));
    rt.block_on(manager.shutdown(Duration::from_millis(1700)));
    rt.shutdown_timeout(Duration::from_millis(200));
    match r {
        Ok((s, interrupted)) => {
            let mut msg = format!("ended session {} as {}", short_id(&s.id), s.status.as_str());
            if interrupted {
                msg.push_str("; its running turn was interrupted");
            }
            super::out(&format!("{msg}\n"))?;
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
    eprintln!(
        "zwarm: session {} has no worktree of its own, so there is no diff to show: this zwarm runs sessions in their working directory ({}), and worktree isolation is not supported yet. Use `git diff` there; the files it reported changing:",
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
