//! Approvals: how an `ask` reaches the orchestrator or a person, and how the answer comes back.
//!
//! The bridge that runs a turn is a process the runner started (here, in a container, on a
//! cluster node), so the channel is files in the session's turn directory under zwarm's state
//! dir, which every runner gives the turn:
//!
//! - [`REQUEST_FILE`]: the pending request ([`Pending`]), written by the bridge (to a temporary
//!   name, then renamed) when the policy answers `ask`, removed when it is answered or times
//!   out. While it exists the session shows `needs_approval`.
//! - [`ANSWER_FILE`]: the answer ([`Answer`]), written by zwarm (`converse` with `approval`,
//!   or `zwarm approve`) the same way. The bridge accepts it only when its `request_id` is the
//!   pending request's; anything else is removed and ignored.
//!
//! No answer within `acp.ask_timeout_seconds` is a denial.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::Approver;
use super::policy::PermissionAsk;

/// The pending request, in the session's turn directory.
pub const REQUEST_FILE: &str = "acp-approval.json";
/// The answer to it.
pub const ANSWER_FILE: &str = "acp-approval-answer.json";

/// How often the bridge looks for an answer.
const POLL: Duration = Duration::from_millis(100);

/// What the agent asks, as the orchestrator and `zwarm approve` see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pending {
    /// Give it back with the answer.
    pub request_id: String,
    /// The ACP tool kind: `edit`, `execute`, `fetch`, ...
    pub kind: String,
    pub title: String,
    pub command: Option<String>,
    pub paths: Vec<String>,
    /// The policy rule that said `ask`.
    pub rule: String,
    pub asked_at: String,
    /// Unanswered until then (RFC 3339), it is denied.
    pub deadline: String,
}

/// allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Allow,
    Deny,
}

impl ApprovalDecision {
    /// `allow`/`approve`/`yes`, `deny`/`refuse`/`no`.
    pub fn parse(s: &str) -> Option<ApprovalDecision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" | "approve" | "approved" | "yes" => Some(ApprovalDecision::Allow),
            "deny" | "refuse" | "reject" | "no" => Some(ApprovalDecision::Deny),
            _ => None,
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub request_id: String,
    pub decision: ApprovalDecision,
    /// Who answered: `orchestrator` or `person`.
    pub by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("nothing is waiting for approval in this session")]
    NothingPending,
    #[error(
        "request `{given}` is not the pending one: the agent now asks `{pending}` ({title}); answer that id"
    )]
    WrongRequest {
        given: String,
        pending: String,
        title: String,
    },
    #[error("cannot write the answer: {0}")]
    Io(#[from] std::io::Error),
}

/// Write `value` as JSON to `dir/name` atomically (a temporary file renamed into place).
fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join(name))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    if text.len() > 1 << 20 {
        return None;
    }
    serde_json::from_slice(&text).ok()
}

/// A session's turn directory under the state dir (where its turns' files are kept).
pub fn turn_dir(state_dir: &Path, session_id: &str) -> PathBuf {
    state_dir.join("turns").join(session_id)
}

/// The status to show for a session: `needs_approval` when it is running and its turn waits
/// for an answer, else `status`.
pub fn shown_status(
    state_dir: &Path,
    session_id: &str,
    status: crate::model::SessionStatus,
) -> crate::model::SessionStatus {
    use crate::model::SessionStatus;
    if status == SessionStatus::Running
        && crate::model::valid_id(session_id)
        && pending(&turn_dir(state_dir, session_id)).is_some()
    {
        SessionStatus::NeedsApproval
    } else {
        status
    }
}

/// The request waiting in `turn_dir`, if any.
pub fn pending(turn_dir: &Path) -> Option<Pending> {
    read_json(&turn_dir.join(REQUEST_FILE))
}

/// Answer the pending request of `turn_dir`. `request_id` may be omitted (`None`) by a person
/// answering from the terminal: the request pending now is answered.
pub fn answer(
    turn_dir: &Path,
    request_id: Option<&str>,
    decision: ApprovalDecision,
    by: &str,
) -> Result<Pending, ApprovalError> {
    let p = pending(turn_dir).ok_or(ApprovalError::NothingPending)?;
    if let Some(id) = request_id
        && id != p.request_id
    {
        return Err(ApprovalError::WrongRequest {
            given: id.to_string(),
            pending: p.request_id,
            title: p.title,
        });
    }
    write_atomic(
        turn_dir,
        ANSWER_FILE,
        &Answer {
            request_id: p.request_id.clone(),
            decision,
            by: by.to_string(),
        },
    )?;
    Ok(p)
}

/// Told about a request once it is written.
pub type Announce = Box<dyn Fn(&Pending) + Send + Sync>;

/// The bridge's approver: writes the request, waits for a valid answer (the caller bounds the
/// wait with the ask timeout), removes both files whatever happens.
pub struct FileApprover {
    pub dir: PathBuf,
    pub ask_timeout: Duration,
    /// Told about each request once it is written (the bridge reports it as an event, so
    /// waiting callers see it at once).
    pub announce: Option<Announce>,
}

/// Removes the request (and any answer) when the wait ends, answered, timed out or dropped.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join(REQUEST_FILE));
        let _ = std::fs::remove_file(self.0.join(ANSWER_FILE));
    }
}

#[async_trait::async_trait]
impl Approver for FileApprover {
    async fn approve(&self, ask: &PermissionAsk, rule: &str) -> Option<bool> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let deadline = std::time::SystemTime::now() + self.ask_timeout;
        let p = Pending {
            request_id: request_id.clone(),
            kind: ask.kind.clone(),
            title: ask.title.clone(),
            command: ask.command.clone(),
            paths: ask.paths.clone(),
            rule: rule.to_string(),
            asked_at: crate::model::now(),
            deadline: humantime::format_rfc3339_millis(deadline).to_string(),
        };
        let _ = std::fs::remove_file(self.dir.join(ANSWER_FILE));
        if let Err(e) = write_atomic(&self.dir, REQUEST_FILE, &p) {
            tracing::warn!("acp: cannot write the approval request: {e}");
            return None;
        }
        let _cleanup = Cleanup(&self.dir);
        if let Some(f) = &self.announce {
            f(&p);
        }
        let answer_path = self.dir.join(ANSWER_FILE);
        loop {
            if let Some(a) = read_json::<Answer>(&answer_path) {
                if a.request_id == request_id {
                    return Some(a.decision == ApprovalDecision::Allow);
                }
                let _ = std::fs::remove_file(&answer_path);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> PermissionAsk {
        PermissionAsk {
            tool_call_id: "t".into(),
            kind: "execute".into(),
            title: "run ls".into(),
            command: Some("ls".into()),
            paths: vec![],
            input: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn an_answer_with_the_pending_id_is_taken_and_the_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            answer(d.path(), None, ApprovalDecision::Allow, "person"),
            Err(ApprovalError::NothingPending)
        ));
        let a = FileApprover {
            dir: d.path().into(),
            ask_timeout: Duration::from_secs(60),
            announce: None,
        };
        let dir = d.path().to_path_buf();
        let answerer = tokio::spawn(async move {
            let p = loop {
                if let Some(p) = pending(&dir) {
                    break p;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(p.command.as_deref(), Some("ls"));
            assert_eq!(p.rule, "r");
            let e = answer(&dir, Some("other"), ApprovalDecision::Allow, "orchestrator");
            assert!(matches!(e, Err(ApprovalError::WrongRequest { .. })));
            answer(
                &dir,
                Some(&p.request_id),
                ApprovalDecision::Deny,
                "orchestrator",
            )
            .unwrap();
        });
        assert_eq!(a.approve(&ask(), "r").await, Some(false));
        answerer.await.unwrap();
        assert!(pending(d.path()).is_none());
        assert!(!d.path().join(ANSWER_FILE).exists());
    }

    #[test]
    fn decisions_parse() {
        assert_eq!(
            ApprovalDecision::parse("Approve"),
            Some(ApprovalDecision::Allow)
        );
        assert_eq!(ApprovalDecision::parse("no"), Some(ApprovalDecision::Deny));
        assert_eq!(ApprovalDecision::parse("maybe"), None);
    }
}
