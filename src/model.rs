//! The data every part of zwarm shares: adapters, statuses, sessions, turns, watcher notes.
//!
//! This is nearly a leaf module: it imports nothing from the rest of zwarm except the executor
//! event vocabulary ([`crate::event`]) and [`Adapter`] (a registered executor's name, defined
//! beside the executor registry), so configuration, watchers, the store and the session engine
//! can all depend on it without depending on each other.
//!
//! A session is the unit every tool talks about. It holds the executor's native id (so a
//! conversation can be resumed even after zwarm restarts), and one [`Turn`] per prompt with
//! what the executor reported. The store keeps the session row and each turn separately.

use std::collections::VecDeque;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{FileChange, PermissionDenial, ToolError, Usage};

/// Which executor a session runs on: a registered executor's name (an open set, defined with
/// the executor registry).
pub use crate::executor::Adapter;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Continue,
    Nudge,
    Pause,
    Abort,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "continue" => Action::Continue,
            "nudge" => Action::Nudge,
            "pause" => Action::Pause,
            "abort" => Action::Abort,
            _ => return None,
        })
    }
}

/// A watcher's finding as the orchestrator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatcherNote {
    pub watcher: String,
    pub action: Action,
    pub message: String,
    /// The turn it is about, if any.
    pub turn: Option<u32>,
    pub at: String,
}

/// How many progress lines a session remembers.
pub const RECENT_PROGRESS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Waiting for a free slot (more than `max_running` turns are running).
    Queued,
    /// A turn is in progress.
    Running,
    /// A turn waits for an answer to an agent's permission request (ACP `ask`): converse with
    /// `approval`, or `zwarm approve`. Shown, never stored (the stored status is `running`).
    NeedsApproval,
    /// The last turn finished; converse may continue.
    Idle,
    /// The last turn failed; converse may retry.
    Failed,
    /// Ended by end_session with verdict completed (final).
    Completed,
    /// Ended by end_session with verdict cancelled (final).
    Cancelled,
    /// Its stored record could not be read (the reason is shown instead of its task).
    Unreadable,
}

impl SessionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionStatus::Queued => "queued",
            SessionStatus::Running => "running",
            SessionStatus::NeedsApproval => "needs_approval",
            SessionStatus::Idle => "idle",
            SessionStatus::Failed => "failed",
            SessionStatus::Completed => "completed",
            SessionStatus::Cancelled => "cancelled",
            SessionStatus::Unreadable => "unreadable",
        }
    }

    pub fn parse(s: &str) -> Option<SessionStatus> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "queued" => SessionStatus::Queued,
            "running" => SessionStatus::Running,
            "needs_approval" => SessionStatus::NeedsApproval,
            "idle" => SessionStatus::Idle,
            "failed" => SessionStatus::Failed,
            "completed" => SessionStatus::Completed,
            "cancelled" | "canceled" => SessionStatus::Cancelled,
            "unreadable" => SessionStatus::Unreadable,
            _ => return None,
        })
    }

    /// A turn is queued or running.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            SessionStatus::Queued | SessionStatus::Running | SessionStatus::NeedsApproval
        )
    }

    /// Ended by end_session; nothing more can happen.
    pub fn is_final(&self) -> bool {
        matches!(self, SessionStatus::Completed | SessionStatus::Cancelled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Sync,
    Async,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sync" => Some(Mode::Sync),
            "async" => Some(Mode::Async),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Queued,
    Running,
    Completed,
    Failed,
    /// Stopped by end_session, a cancelled tool call, a timeout or a server shutdown.
    Interrupted,
}

/// A command the executor ran, as it reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandRecord {
    pub command: String,
    pub exit_code: Option<i64>,
    pub ok: bool,
    /// The end of the command's output (bounded).
    pub output_tail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Turn {
    /// 1-based.
    pub index: u32,
    pub prompt: String,
    pub status: TurnStatus,
    /// The executor's final message for this turn.
    pub response: Option<String>,
    pub error: Option<String>,
    /// HTTP status of a model-API error, when the executor reported one.
    pub api_status: Option<u16>,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub commands: Vec<CommandRecord>,
    pub files_changed: Vec<FileChange>,
    pub permission_denials: Vec<PermissionDenial>,
    /// Agent messages before the final one (each bounded).
    pub messages: Vec<String>,
    /// Tool calls that failed or were refused inside the turn (not permission denials).
    #[serde(default)]
    pub tool_errors: Vec<ToolError>,
}

/// Which server process owns (runs the turns of) a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub instance: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub adapter: Adapter,
    pub mode: Mode,
    pub status: SessionStatus,
    pub task: String,
    pub working_dir: String,
    pub model: Option<String>,
    /// The executor's thread id (codex) or session id (claude).
    pub native_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub turns: Vec<Turn>,
    pub error: Option<String>,
    /// end_session's summary.
    pub summary: Option<String>,
    /// Codex's last thread-cumulative usage, to turn the next report into a per-turn delta.
    #[serde(default)]
    pub native_usage: Usage,
    pub owner: Owner,
    #[serde(default)]
    pub recent: VecDeque<String>,
    /// What watchers said about this session (nudges, pauses, aborts).
    #[serde(default)]
    pub watcher_notes: Vec<WatcherNote>,
    /// A watcher stopped this session (its reason): it takes no more turns.
    #[serde(default)]
    pub aborted: Option<String>,
    /// The session's own git worktree and branch (`isolation: "worktree"`); `None` when it
    /// works in the project directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

/// A session isolated in a git worktree of its own, on a branch of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Isolation {
    /// `zwarm/<first 8 characters of the session id>`.
    pub branch: String,
    /// The ref the branch was made from, as given (`HEAD` by default).
    pub base_ref: String,
    /// The commit `base_ref` named then.
    pub base: String,
    /// The worktree's path (under the state dir).
    pub worktree: String,
    /// The directory the session was asked to work in (in the project checkout).
    pub project_dir: String,
    /// The top of the project checkout (`git rev-parse --show-toplevel` of `project_dir`).
    pub repo: String,
    /// What has become of the worktree and branch.
    #[serde(default)]
    pub state: WorktreeState,
    /// The commit the project's branch points to after `integrate: "merge"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_commit: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorktreeState {
    /// The worktree exists; turns run there.
    #[default]
    Active,
    /// Merged into the project's branch; the worktree was removed, the branch kept.
    Merged,
    /// The worktree was removed and the branch kept.
    Kept,
    /// The worktree and the branch were removed.
    Discarded,
}

impl WorktreeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorktreeState::Active => "active",
            WorktreeState::Merged => "merged",
            WorktreeState::Kept => "kept",
            WorktreeState::Discarded => "discarded",
        }
    }
}

impl Session {
    pub fn last_turn(&self) -> Option<&Turn> {
        self.turns.last()
    }

    pub fn last_turn_mut(&mut self) -> Option<&mut Turn> {
        self.turns.last_mut()
    }

    /// Turn number `index` (1-based).
    pub fn turn(&self, index: u32) -> Option<&Turn> {
        self.turns.iter().find(|t| t.index == index)
    }

    pub fn turn_mut(&mut self, index: u32) -> Option<&mut Turn> {
        self.turns.iter_mut().find(|t| t.index == index)
    }

    pub fn total_usage(&self) -> Usage {
        let mut u = Usage::default();
        for t in &self.turns {
            u.add(&t.usage);
        }
        u
    }

    pub fn total_cost(&self) -> Option<f64> {
        let costs: Vec<f64> = self.turns.iter().filter_map(|t| t.cost_usd).collect();
        if costs.is_empty() {
            None
        } else {
            Some(costs.iter().sum())
        }
    }

    pub fn push_progress(&mut self, line: String) {
        if self.recent.len() >= RECENT_PROGRESS {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Session ids are lower-case hyphenated UUIDs (file and lock names are built from them).
pub fn valid_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// An executor's native thread/session id as zwarm will pass it back to the CLI: no leading
/// `-` (it must never be read as a flag), no whitespace or control characters, bounded.
pub fn valid_native_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
impl Session {
    /// A running codex session with one running turn, for unit tests.
    pub(crate) fn sample() -> Session {
        Session {
            id: "00000000-0000-4000-8000-000000000001".into(),
            adapter: Adapter::parse("codex").expect("registered"),
            mode: Mode::Sync,
            status: SessionStatus::Running,
            task: "t".into(),
            working_dir: "/tmp".into(),
            model: None,
            native_id: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            turns: vec![Turn {
                index: 1,
                prompt: "t".into(),
                status: TurnStatus::Running,
                response: None,
                error: None,
                api_status: None,
                usage: Usage::default(),
                cost_usd: None,
                started_at: "2026-01-01T00:00:00.000Z".into(),
                ended_at: None,
                commands: vec![],
                files_changed: vec![],
                permission_denials: vec![],
                messages: vec![],
                tool_errors: vec![],
            }],
            error: None,
            summary: None,
            native_usage: Usage::default(),
            owner: Owner {
                pid: 1,
                instance: "x".into(),
            },
            recent: Default::default(),
            watcher_notes: vec![],
            aborted: None,
            isolation: None,
        }
    }
}
