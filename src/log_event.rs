//! zwarm's own event log, typed: one [`LogEvent`] per entry (`zwarm://events`, `zwarm logs`,
//! telemetry). Apart from [`crate::event`] (what executors report), so that the executor
//! vocabulary, which [`crate::model`] builds on, does not depend on the model.

use serde::Serialize;
use serde_json::Value;

/// One entry of zwarm's event log (`zwarm://events`, `zwarm logs`, telemetry), typed.
///
/// Stored as a `kind` string plus a JSON `data` object ([`LogEvent::into_parts`]): the stored
/// format is what readers of the log (the CLI, the read-only store, telemetry) parse, so a
/// variant's name (snake_case) and its fields are that format and must not change.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum LogEvent {
    ServerStarted {
        version: String,
        cwd: String,
    },
    ServerStopped {},
    StateImported(Value),
    ConfigIgnored(Value),
    ConfigWarning {
        message: String,
    },
    SessionStarted {
        adapter: String,
        mode: crate::model::Mode,
        working_dir: String,
        task: String,
    },
    SessionFailedToStart {
        error: String,
    },
    MessageSent {
        turn: u32,
        message: String,
    },
    TurnStarted {
        turn: u32,
        resume: Option<String>,
    },
    TurnFinished {
        turn: u32,
        status: crate::model::TurnStatus,
        error: Option<String>,
    },
    LinesSkipped {
        turn: u32,
        lines: u64,
        max_bytes: usize,
    },
    SessionEnded {
        verdict: crate::model::SessionStatus,
        summary: Option<String>,
        interrupted_turn: bool,
    },
    SessionRecovered {
        status: String,
        turn: u32,
        reason: String,
    },
    /// A watcher fired on an executor event or at the end of a turn.
    WatcherFired {
        turn: Option<u32>,
        watcher: String,
        action: crate::model::Action,
        message: String,
    },
    /// A watcher fired before a tool call.
    #[serde(rename = "watcher_fired")]
    WatcherFiredOnCall {
        watcher: String,
        action: crate::model::Action,
        message: String,
        tool: String,
    },
    SessionAborted {
        reason: String,
    },
    WatchersAbort {
        reason: String,
    },
    PauseAcknowledged {
        tool: String,
    },
    CallRefused {
        tool: String,
        reason: String,
    },
    WorktreeCreated {
        branch: String,
        base: String,
        base_ref: String,
        worktree: String,
        repo: String,
    },
    WorktreeMissing {
        worktree: String,
        branch: String,
    },
    MergeRefused {
        branch: String,
        reason: String,
    },
    WorktreeMerged {
        branch: String,
        into: Value,
        commit: Value,
        fast_forward: Value,
        already_merged: Value,
        /// Symlinks pointing outside the repository the merge brought (`path -> target`),
        /// accepted by whoever ended the session.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outside_links: Vec<String>,
    },
    WorktreeRemoved {
        worktree: String,
        branch: String,
        integrate: String,
        branch_deleted: bool,
    },
    WorktreeOrphaned {
        worktree: String,
        reason: String,
    },
    TurnCommitted {
        turn: u32,
        commit: String,
        branch: String,
        files: usize,
    },
    TurnCommitSkipped {
        turn: u32,
        reason: String,
    },
    TurnCommitFailed {
        turn: u32,
        error: String,
    },
}

impl LogEvent {
    /// The stored form: the kind and the data object.
    pub fn into_parts(self) -> (String, Value) {
        match serde_json::to_value(&self) {
            Ok(Value::Object(mut m)) => {
                let kind = match m.remove("kind") {
                    Some(Value::String(k)) => k,
                    _ => "unknown".to_string(),
                };
                let data = m
                    .remove("data")
                    .unwrap_or_else(|| Value::Object(Default::default()));
                (kind, data)
            }
            _ => ("unknown".to_string(), Value::Object(Default::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_events_keep_the_stored_format() {
        let (k, d) = LogEvent::TurnStarted {
            turn: 2,
            resume: None,
        }
        .into_parts();
        assert_eq!(k, "turn_started");
        assert_eq!(d, json!({"turn": 2, "resume": null}));
        let (k, d) = LogEvent::ServerStopped {}.into_parts();
        assert_eq!((k.as_str(), d), ("server_stopped", json!({})));
        let (k, d) = LogEvent::WatcherFiredOnCall {
            watcher: "budget".into(),
            action: crate::model::Action::Nudge,
            message: "m".into(),
            tool: "delegate".into(),
        }
        .into_parts();
        assert_eq!(k, "watcher_fired");
        assert_eq!(d["tool"], "delegate");
        let (k, d) = LogEvent::StateImported(json!({"sessions": 3})).into_parts();
        assert_eq!((k.as_str(), d), ("state_imported", json!({"sessions": 3})));
    }
}
