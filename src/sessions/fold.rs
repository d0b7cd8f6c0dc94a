//! Folding: what an executor event, or the end of a turn, does to a session. Pure functions.
//!
//! The turn supervisor is the only caller: it applies each event through [`apply`] and the
//! turn's end through [`settle`]. Keeping these free of I/O and locks makes them easy to test
//! and keeps every mutation of a running turn on one path.

use crate::event::{ExecutorEvent, Usage, UsageScope};
use crate::model::{Adapter, CommandRecord, Session, SessionStatus, TurnStatus};
use crate::text;

const OUTPUT_TAIL: usize = 2000;
const MESSAGE_CAP: usize = 4000;
/// Tool errors kept per turn (a looping executor cannot grow the record without bound).
const TOOL_ERRORS_CAP: usize = 200;

/// What the turn has come to so far.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub completed: bool,
    pub failed: Option<(String, Option<u16>)>,
    pub interrupted: Option<String>,
    pub last_warning: Option<String>,
}

/// Apply one executor event to turn `index` of the session. Returns whether it changed
/// something worth persisting (reasoning and unknown events are not).
pub fn apply(s: &mut Session, index: u32, ev: &ExecutorEvent, outcome: &mut Outcome) -> bool {
    let mut significant = true;
    match ev {
        ExecutorEvent::SessionStarted { native_id, model } => {
            s.native_id = Some(native_id.clone());
            if s.model.is_none() {
                s.model = model.clone();
            }
        }
        ExecutorEvent::TurnCompleted {
            usage,
            scope,
            cost_usd,
            final_text,
        } => {
            outcome.completed = true;
            record_usage(s, index, *usage, *scope, *cost_usd);
            if let (Some(t), Some(text)) = (s.turn_mut(index), final_text) {
                t.response = Some(text.clone());
            }
        }
        ExecutorEvent::TurnFailed {
            message,
            api_status,
            usage,
            scope,
            cost_usd,
        } => {
            outcome.failed = Some((message.clone(), *api_status));
            record_usage(s, index, *usage, *scope, *cost_usd);
        }
        ExecutorEvent::Warning { message } => {
            outcome.last_warning = Some(message.clone());
        }
        _ => {}
    }
    if let Some(t) = s.turn_mut(index) {
        match ev {
            ExecutorEvent::AgentMessage { text } => {
                if let Some(prev) = t.response.take() {
                    t.messages.push(text::truncate_chars(&prev, MESSAGE_CAP));
                }
                t.response = Some(text.clone());
            }
            ExecutorEvent::CommandFinished {
                command,
                exit_code,
                output,
                ok,
                ..
            } => t.commands.push(CommandRecord {
                command: command.clone(),
                exit_code: *exit_code,
                ok: *ok,
                output_tail: text::tail_bytes(output, OUTPUT_TAIL).to_string(),
            }),
            ExecutorEvent::FilesChanged { changes } => {
                for c in changes {
                    t.files_changed.retain(|f| f.path != c.path);
                    t.files_changed.push(c.clone());
                }
            }
            ExecutorEvent::PermissionDenied(d) => {
                // A denial also arrived as an error tool result: keep it as the denial only.
                t.tool_errors.retain(|e| !e.is_denial(d));
                t.permission_denials.push(d.clone());
            }
            ExecutorEvent::ToolFailed(e) => {
                // The same refusal may be reported twice (codex: an event and its stderr log
                // line, which has no input): keep the first.
                let repeated = t
                    .tool_errors
                    .iter()
                    .any(|x| x.message == e.message && (e.input.is_empty() || x.input == e.input));
                if t.tool_errors.len() < TOOL_ERRORS_CAP
                    && !repeated
                    && !t.permission_denials.iter().any(|d| e.is_denial(d))
                {
                    t.tool_errors.push(e.clone());
                }
            }
            ExecutorEvent::Other { .. }
            | ExecutorEvent::TurnStarted
            | ExecutorEvent::Reasoning { .. } => significant = false,
            _ => {}
        }
    }
    significant
}

fn record_usage(
    s: &mut Session,
    index: u32,
    usage: Option<Usage>,
    scope: UsageScope,
    cost: Option<f64>,
) {
    let Some(u) = usage else { return };
    let per_turn = match scope {
        UsageScope::Thread => {
            let d = u.delta_since(&s.native_usage);
            s.native_usage = u;
            d
        }
        UsageScope::Invocation => u,
    };
    if let Some(t) = s.turn_mut(index) {
        t.usage = per_turn;
        if cost.is_some() {
            t.cost_usd = cost;
        }
    }
}

/// How the executor process ended, for a turn that never said it finished.
pub fn exit_failure(
    s: &Session,
    exit: Option<std::process::ExitStatus>,
    stderr_tail: &str,
    last_warning: Option<&str>,
) -> String {
    let status = match exit {
        Some(e) => describe_exit(e),
        None => "an unknown status".into(),
    };
    let detail = explain_failure(s.adapter, stderr_tail, s).unwrap_or_else(|| {
        let tail = text::tail_bytes(stderr_tail.trim(), 1500)
            .trim()
            .to_string();
        let tail = if tail.is_empty() {
            last_warning.unwrap_or_default().to_string()
        } else {
            tail
        };
        if tail.is_empty() {
            String::new()
        } else {
            format!(" Its last output: {tail}")
        }
    });
    format!(
        "{} exited with {status} without finishing the turn.{detail}",
        s.adapter.as_str()
    )
}

pub fn describe_exit(e: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (e.code(), e.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "an unknown status".into(),
    }
}

/// Turn well-known executor failures into advice (they arrive in stderr or in the stream):
/// the session's executor knows its own ([`crate::executor::Executor::explain_failure`]).
pub fn explain_failure(adapter: Adapter, text: &str, s: &Session) -> Option<String> {
    let native = s.native_id.as_deref().unwrap_or_default();
    crate::executor::explain_failure(
        adapter,
        text,
        crate::executor::FailureContext {
            native_id: native,
            working_dir: &s.working_dir,
        },
    )
}

/// The end of turn `index`: its status, error and final answer, and the session's status.
/// Deterministic (the time is given), so the supervisor can settle a copy for the watchers
/// and then the live session identically. Returns the turn's status and error; a turn that
/// has already ended is left as it is.
pub fn settle(
    s: &mut Session,
    index: u32,
    outcome: &Outcome,
    last_message: Option<&str>,
    ended_at: &str,
) -> (TurnStatus, Option<String>) {
    if let Some(t) = s.turn(index)
        && t.ended_at.is_some()
    {
        return (t.status, t.error.clone());
    }
    let (turn_status, session_status, error, api_status) =
        if let Some(reason) = &outcome.interrupted {
            (
                TurnStatus::Interrupted,
                SessionStatus::Failed,
                Some(reason.clone()),
                None,
            )
        } else if let Some((msg, api)) = &outcome.failed {
            let msg = match explain_failure(s.adapter, msg, s) {
                Some(hint) if !msg.contains(hint.trim()) => format!("{msg}.{hint}"),
                _ => msg.clone(),
            };
            (TurnStatus::Failed, SessionStatus::Failed, Some(msg), *api)
        } else {
            (TurnStatus::Completed, SessionStatus::Idle, None, None)
        };
    let authoritative = crate::executor::get(s.adapter).last_message_authoritative();
    let latest = s.turns.last().map(|t| t.index) == Some(index);
    if let Some(t) = s.turn_mut(index) {
        // An executor's read-back message may be authoritative (its stream can lose the final
        // message); for other executors it is only a fallback.
        match last_message {
            Some(m) if authoritative || t.response.is_none() => t.response = Some(m.to_string()),
            _ => {}
        }
        t.status = turn_status;
        t.error = error.clone();
        t.api_status = api_status;
        t.ended_at = Some(ended_at.to_string());
    }
    // end_session may have closed the session meanwhile: its verdict stands. And only the
    // latest turn speaks for the session's status.
    if !s.status.is_final() && latest {
        s.status = session_status;
        s.error = error.clone();
    }
    s.updated_at = ended_at.to_string();
    (turn_status, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::sample()
    }

    #[test]
    fn codex_usage_is_per_turn_and_settle_is_idempotent() {
        let mut s = session();
        let mut o = Outcome::default();
        let u = |i| Usage {
            input_tokens: i,
            ..Default::default()
        };
        apply(
            &mut s,
            1,
            &ExecutorEvent::SessionStarted {
                native_id: "th-1".into(),
                model: None,
            },
            &mut o,
        );
        apply(
            &mut s,
            1,
            &ExecutorEvent::TurnCompleted {
                usage: Some(u(100)),
                scope: UsageScope::Thread,
                cost_usd: None,
                final_text: Some("done".into()),
            },
            &mut o,
        );
        assert_eq!(s.native_usage.input_tokens, 100);
        let (st, err) = settle(&mut s, 1, &o, None, "2026-01-01T00:00:01.000Z");
        assert_eq!((st, err), (TurnStatus::Completed, None));
        assert_eq!(s.status, SessionStatus::Idle);
        // A second settle (say, after a panic) keeps the first record.
        let failed = Outcome {
            failed: Some(("boom".into(), None)),
            ..Default::default()
        };
        let (st, _) = settle(&mut s, 1, &failed, None, "2026-01-01T00:00:02.000Z");
        assert_eq!(st, TurnStatus::Completed);
        assert_eq!(s.status, SessionStatus::Idle);
        assert_eq!(s.native_id.as_deref(), Some("th-1"));
    }

    #[test]
    fn tool_errors_are_kept_apart_from_denials_and_not_repeated() {
        use crate::event::{PermissionDenial, ToolError};
        let mut s = session();
        let mut o = Outcome::default();
        let input = serde_json::json!({"command": "exit 3", "description": "fail"});
        let denied = ToolError::new("Bash", &input, "This command requires approval");
        let blocked = ToolError::new(
            "Bash",
            &serde_json::json!({"command": "sleep 61"}),
            "Blocked: standalone sleep 61.",
        );
        for e in [&blocked, &denied, &blocked] {
            apply(&mut s, 1, &ExecutorEvent::ToolFailed(e.clone()), &mut o);
        }
        assert_eq!(
            s.turns[0].tool_errors,
            vec![blocked.clone(), denied.clone()]
        );
        // claude lists the denial at the end of the turn: it is a denial, not a tool error.
        let d = PermissionDenial {
            tool: "Bash".into(),
            input,
        };
        apply(&mut s, 1, &ExecutorEvent::PermissionDenied(d), &mut o);
        assert_eq!(s.turns[0].tool_errors, vec![blocked.clone()]);
        apply(&mut s, 1, &ExecutorEvent::ToolFailed(denied), &mut o);
        assert_eq!(s.turns[0].tool_errors.len(), 1);
        // The same refusal from codex's stderr (no input) after its event: kept once.
        let no_input = ToolError::new("tool", &serde_json::Value::Null, &blocked.message);
        apply(&mut s, 1, &ExecutorEvent::ToolFailed(no_input), &mut o);
        assert_eq!(s.turns[0].tool_errors, vec![blocked]);
        assert_eq!(
            s.status,
            SessionStatus::Running,
            "a tool error does not end the turn"
        );
    }

    #[test]
    fn an_ended_session_keeps_its_verdict() {
        let mut s = session();
        s.status = SessionStatus::Cancelled;
        let o = Outcome {
            interrupted: Some("stopped".into()),
            ..Default::default()
        };
        settle(&mut s, 1, &o, None, "2026-01-01T00:00:01.000Z");
        assert_eq!(s.status, SessionStatus::Cancelled);
        assert_eq!(s.turns[0].status, TurnStatus::Interrupted);
    }
}
