//! `zwarm approve ID [--deny]`: a person answers the permission request an ACP agent's turn
//! waits on (the session shows `needs_approval`). The answer goes through the session's turn
//! directory, so it reaches the turn whichever server and runner run it.

use super::{StateArgs, open_state};
use crate::acp::approval::{self, ApprovalDecision};

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The session (its id, or a unique prefix of it).
    pub id: String,
    /// Deny the request instead of allowing it.
    #[arg(long)]
    pub deny: bool,
    /// Answer only this request (check_session's `approval.request_id`); default: the one
    /// pending now.
    #[arg(long, value_name = "ID")]
    pub request: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn main(a: ApproveArgs) -> anyhow::Result<i32> {
    let cfg = a.state.load()?;
    let store = open_state(&cfg)?;
    let id = store.resolve(&a.id)?;
    let dir = approval::turn_dir(&cfg.state_dir, &id);
    let decision = if a.deny {
        ApprovalDecision::Deny
    } else {
        ApprovalDecision::Allow
    };
    match approval::answer(&dir, a.request.as_deref(), decision, "person") {
        Ok(p) => {
            let what = match &p.command {
                Some(c) => format!("{} `{c}`", p.kind),
                None if !p.paths.is_empty() => format!("{} {}", p.kind, p.paths.join(", ")),
                None => p.kind.clone(),
            };
            println!(
                "{} {}: {} ({what}; asked by {})",
                if a.deny { "denied" } else { "allowed" },
                super::short_id(&id),
                p.title,
                p.rule
            );
            Ok(0)
        }
        Err(e @ approval::ApprovalError::NothingPending) => {
            eprintln!(
                "zwarm approve: session {id}: {e} (`zwarm ps` shows needs_approval where one is)."
            );
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}
