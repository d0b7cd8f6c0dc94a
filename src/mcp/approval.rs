//! Approvals in the five tools: a session whose turn waits for an answer to an agent's
//! permission request shows `needs_approval` with what is asked (check_session,
//! list_sessions, delegate and converse results), and `converse` with `approval` answers it
//! (see [`crate::acp::approval`] for the files that carry the answer to the turn).

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ZwarmServer;
use super::dto::{ApprovalArg, SessionRow};
use crate::acp::approval::{self, ApprovalDecision, Pending};
use crate::model::{Adapter, Session, SessionStatus};
use crate::sessions::ManagerError;

pub use crate::acp::approval::turn_dir;

/// How long an answered request may still look pending (the bridge polls every 100 ms).
const TAKEN_WITHIN: Duration = Duration::from_secs(5);

/// Whether a session of this executor can wait for an answer at all (else there is no
/// request file to look for).
fn may_ask(adapter: Adapter) -> bool {
    crate::executor::get(adapter).asks_approval()
}

/// A running session whose turn waits for an answer: `needs_approval`, and what is asked.
pub fn overlay(state_dir: &std::path::Path, s: &mut Session) -> Option<Pending> {
    if s.status != SessionStatus::Running || !may_ask(s.adapter) || !crate::model::valid_id(&s.id) {
        return None;
    }
    let p = approval::pending(&turn_dir(state_dir, &s.id))?;
    s.status = SessionStatus::NeedsApproval;
    Some(p)
}

/// [`overlay`] for a list row.
pub fn overlay_row(state_dir: &std::path::Path, r: &mut SessionRow) {
    if r.status != SessionStatus::Running
        || !may_ask(r.adapter)
        || !crate::model::valid_id(&r.session_id)
    {
        return;
    }
    if let Some(p) = approval::pending(&turn_dir(state_dir, &r.session_id)) {
        r.status = SessionStatus::NeedsApproval;
        r.approval = Some(p);
    }
}

impl ZwarmServer {
    fn state_dir(&self) -> PathBuf {
        self.manager.config().state_dir.clone()
    }

    /// [`overlay`] with this server's state dir.
    pub(super) fn approval_overlay(&self, s: &mut Session) -> Option<Pending> {
        overlay(&self.state_dir(), s)
    }

    pub(super) fn approval_overlay_row(&self, r: &mut SessionRow) {
        overlay_row(&self.state_dir(), r)
    }

    /// Wait up to `budget` for the session's turn to end, or until it asks for approval.
    pub(super) async fn wait_unless_asked(
        &self,
        id: &str,
        budget: Duration,
        ct: &CancellationToken,
    ) -> Result<Session, ManagerError> {
        // A session of an executor that never asks (codex, claude) is only waited for: no
        // request file to look for at each of its events.
        if self.manager.adapter_of(id).is_some_and(|a| !may_ask(a)) {
            return self.manager.wait(id, budget, ct).await;
        }
        let dir = turn_dir(&self.state_dir(), id);
        if approval::pending(&dir).is_some() {
            return self.manager.get(id).await;
        }
        let stop = ct.child_token();
        let mut rx = self.manager.subscribe();
        let (sid, stop2) = (id.to_string(), stop.clone());
        // Each event of the session (the bridge reports an ask as one) is a moment to look.
        let watcher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    n = rx.recv() => match n {
                        Ok(n) if n.session_id == sid => {
                            if approval::pending(&dir).is_some() {
                                stop2.cancel();
                                break;
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                }
            }
        });
        let s = self.manager.wait(id, budget, &stop).await;
        stop.cancel();
        let _ = watcher.await;
        s
    }

    /// converse with `approval`: answer the pending request of the session's running turn,
    /// then (sync) wait for the turn as converse does.
    pub(super) async fn answer_approval(
        &self,
        session_id: &str,
        a: &ApprovalArg,
    ) -> Result<(Session, u32), String> {
        let s = self
            .manager
            .get(session_id)
            .await
            .map_err(|e| super::errors::tool_error(&e))?;
        let Some(decision) = ApprovalDecision::parse(&a.decision) else {
            return Err(format!(
                "approval.decision is `{}`: use \"allow\" or \"deny\".",
                a.decision
            ));
        };
        if s.status != SessionStatus::Running {
            return Err(format!(
                "session {} is {}: no turn is waiting for approval. check_session shows its state.",
                s.id,
                s.status.as_str()
            ));
        }
        let dir = turn_dir(&self.state_dir(), &s.id);
        let rid = a.request_id.trim().to_string();
        let r = tokio::task::spawn_blocking(move || {
            let r = approval::answer(&dir, Some(&rid), decision, "orchestrator");
            if r.is_ok() {
                // The turn takes the answer within its poll interval; until then the request
                // would still look pending to the wait that follows.
                let start = std::time::Instant::now();
                while approval::pending(&dir).is_some_and(|p| p.request_id == rid)
                    && start.elapsed() < TAKEN_WITHIN
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            r
        })
        .await
        .map_err(|e| e.to_string())?;
        match r {
            Ok(p) => tracing::info!(
                session = %s.id,
                request = %p.request_id,
                ?decision,
                "approval answered by the orchestrator"
            ),
            Err(e) => {
                return Err(format!(
                    "{e}. check_session shows what the session waits for (its `approval`)."
                ));
            }
        }
        let turn = s.turns.last().map(|t| t.index).unwrap_or(1);
        Ok((s, turn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request file in a running session's turn folder, as the ACP bridge writes it.
    fn asked(state_dir: &std::path::Path, s: &Session) {
        let dir = turn_dir(state_dir, &s.id);
        std::fs::create_dir_all(&dir).unwrap();
        let p = Pending {
            request_id: "r1".into(),
            kind: "execute".into(),
            title: "run ls".into(),
            command: Some("ls".into()),
            paths: vec![],
            rule: "ask".into(),
            asked_at: "2026-01-01T00:00:00Z".into(),
            deadline: "2026-01-01T00:05:00Z".into(),
        };
        std::fs::write(
            dir.join(approval::REQUEST_FILE),
            serde_json::to_vec(&p).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn only_a_session_of_an_executor_that_asks_shows_a_request() {
        let d = tempfile::tempdir().unwrap();
        let mut acp = Session::sample();
        acp.adapter = Adapter::parse("gemini").expect("gemini is registered");
        asked(d.path(), &acp);
        assert_eq!(
            overlay(d.path(), &mut acp).map(|p| p.request_id),
            Some("r1".into())
        );
        assert_eq!(acp.status, SessionStatus::NeedsApproval);
        // codex never asks: a file in its folder is not a request, and is not looked for.
        let mut codex = Session::sample();
        asked(d.path(), &codex);
        assert!(overlay(d.path(), &mut codex).is_none());
        assert_eq!(codex.status, SessionStatus::Running);
    }
}
