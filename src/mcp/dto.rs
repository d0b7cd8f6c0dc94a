//! Tool arguments and results: the MCP contract, as Rust types.
//!
//! Hosts (Claude Code, Codex) show the model only `structuredContent`, so every result type
//! carries everything the orchestrator needs — ids, status, the executor's answer, and a
//! `next_step` sentence that says what to do now. Hosts do not validate arguments against
//! the input schema, so arguments are parsed leniently (numbers may arrive as strings) and
//! checked again by the session manager.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::acp::approval::Pending;
use crate::event::{FileChange, PermissionDenial, ToolError, Usage};
use crate::model::Adapter;
use crate::model::{Mode, SessionStatus, TurnStatus};
use crate::watch::WatcherNote;

/// Accept `30`, `30.0` or `"30"` for the field `field`; anything else is an error naming it.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Option<u64>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
        }
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
        Some(serde_json::Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Some(f.max(0.0) as u64),
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "`{field}` must be a number, got `{s}`"
                )));
            }
        },
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "`{field}` must be a number, got {other}"
            )));
        }
    })
}

fn lenient_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient_u64(d, "wait_seconds")
}

fn lenient_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient_u64(d, "limit")
}

fn lenient_offset<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient_u64(d, "offset")
}

/// Accept a list of ids, or one string holding ids separated by commas or spaces (or a JSON
/// list written as a string).
fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    fn split(s: &str) -> Vec<String> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .map(|p| p.trim_matches(|c| c == '"' || c == '\'' || c == '[' || c == ']'))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    }
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(a)) => Some(
            a.into_iter()
                .flat_map(|x| match x {
                    serde_json::Value::String(s) => split(&s),
                    serde_json::Value::Null => vec![],
                    other => vec![other.to_string()],
                })
                .collect(),
        ),
        Some(serde_json::Value::String(s)) => Some(split(&s)),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "session_ids must be a list of session ids, got {other}"
            )));
        }
    })
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DelegateArgs {
    /// What the executor should do. Be specific and include acceptance criteria
    /// (e.g. "add a unit test for X; `cargo test` must pass").
    pub task: String,
    /// "sync" (default): wait for the turn, up to wait_seconds. "async": return at once with
    /// status running; follow up with check_session.
    #[serde(default)]
    pub mode: Option<String>,
    /// The executor (default: the configured default_adapter); the server lists the names.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Model for the executor (default: the executor's configured model).
    #[serde(default)]
    pub model: Option<String>,
    /// Directory the executor works in (default: zwarm's working directory). Must be inside
    /// the configured allowed roots.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Sync mode: return with status running after this many seconds if the turn is not done
    /// (default and maximum: a safe margin under the host's tool-call timeout).
    #[serde(default, deserialize_with = "lenient_wait")]
    pub wait_seconds: Option<u64>,
    /// Set to true to continue after a watcher paused zwarm (only after the user agreed).
    #[serde(default)]
    pub acknowledge_pause: bool,
    /// "none": work in working_dir itself. "worktree": work in a git worktree of its own, on a
    /// new branch `zwarm/<id8>` made from `base`; every turn is committed there, and
    /// end_session merges, keeps or discards it. Default: the config's `isolation` ("none").
    #[serde(default)]
    pub isolation: Option<String>,
    /// With isolation "worktree": the git ref (branch, tag, commit) the session's branch starts
    /// from (default: the project's current HEAD).
    #[serde(default)]
    pub base: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ConverseArgs {
    /// Session id from delegate (or a unique prefix of 8+ characters).
    pub session_id: String,
    /// The next message for the executor, in the same conversation. Not with `approval`.
    #[serde(default)]
    pub message: Option<String>,
    /// Answer the permission request a running turn waits on (status needs_approval): the
    /// request_id from check_session's `approval`, and `decision` "allow" or "deny". The turn
    /// then goes on; no message is sent.
    #[serde(default)]
    pub approval: Option<ApprovalArg>,
    /// "sync" (default) or "async".
    #[serde(default)]
    pub mode: Option<String>,
    /// Sync mode: how long to wait for the turn before returning with status running.
    #[serde(default, deserialize_with = "lenient_wait")]
    pub wait_seconds: Option<u64>,
    /// Set to true to continue after a watcher paused zwarm (only after the user agreed).
    #[serde(default)]
    pub acknowledge_pause: bool,
}

/// converse's `approval`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalArg {
    /// The pending request's id (check_session's `approval.request_id`).
    pub request_id: String,
    /// "allow" or "deny".
    pub decision: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CheckArgs {
    /// Session id (or a unique prefix of 8+ characters). Give this or `session_ids`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// If a turn is running, wait up to this many seconds for it to finish before reporting
    /// (default 0: report at once).
    #[serde(default, deserialize_with = "lenient_wait")]
    pub wait_seconds: Option<u64>,
    /// Several sessions at once, instead of `session_id`: waits (up to wait_seconds) until
    /// `wait` of them are no longer running or queued, then reports each under `sessions`
    /// and lists the finished ones under `finished`.
    #[serde(default, deserialize_with = "lenient_ids")]
    pub session_ids: Option<Vec<String>>,
    /// With session_ids: "any" (default: return when one of them has finished) or "all".
    #[serde(default)]
    pub wait: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct EndArgs {
    /// Session id (or a unique prefix of 8+ characters).
    pub session_id: String,
    /// "completed" (default), "failed" or "cancelled". A running turn is interrupted first.
    #[serde(default)]
    pub verdict: Option<String>,
    /// What was achieved, for the record.
    #[serde(default)]
    pub summary: Option<String>,
    /// For a session with isolation "worktree": "merge" (merge its branch into the branch
    /// checked out in the project: fast-forward when possible, else a merge commit; refused,
    /// with nothing changed and the session left open, on conflicts or uncommitted files in
    /// the way), "keep" (default: remove the worktree, keep the branch) or "discard" (remove
    /// the worktree and the branch).
    #[serde(default)]
    pub integrate: Option<String>,
    /// With integrate "merge": also merge when the branch brings symlinks that point outside
    /// the repository (absolute, or climbing above its top). Default false: such a merge is
    /// refused and names the links. Set it only after reviewing them in the session's diff.
    #[serde(default)]
    pub accept_outside_symlinks: bool,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Only sessions with this status: queued, running, idle, failed, completed, cancelled.
    #[serde(default)]
    pub status: Option<String>,
    /// Page size (default 50, at most 200).
    #[serde(default, deserialize_with = "lenient_limit")]
    pub limit: Option<u64>,
    /// Skip this many sessions (from `next_offset` of the previous page).
    #[serde(default, deserialize_with = "lenient_offset")]
    pub offset: Option<u64>,
}

/// A command the executor ran.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CommandSummary {
    pub command: String,
    pub exit_code: Option<i64>,
}

/// Result of delegate and converse.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TurnReport {
    pub session_id: String,
    pub status: SessionStatus,
    pub adapter: Adapter,
    pub mode: Mode,
    /// The turn this call started (1 for delegate).
    pub turn: u32,
    /// The executor's final message, once the turn has finished (capped; see
    /// `response_truncated`).
    pub response: Option<String>,
    /// The response was longer than max_response_chars: its middle is omitted here, and
    /// `transcript_uri` holds all of it.
    pub response_truncated: bool,
    /// Resource with the session's full transcript.
    pub transcript_uri: String,
    /// Tokens used by this turn.
    pub usage: Usage,
    /// Cost of this turn in USD, when the executor reports it.
    pub cost_usd: Option<f64>,
    pub files_changed: Vec<FileChange>,
    pub commands: Vec<CommandSummary>,
    /// Tool uses the executor's permission settings refused.
    pub permission_denials: Vec<PermissionDenial>,
    /// Tool calls that failed or were refused inside the turn (a blocked or timed-out command,
    /// a rejected patch, a missing file, a failed MCP call): what the executor could not do.
    pub tool_errors: Vec<ToolError>,
    /// What the executor did most recently (while running).
    pub recent_progress: Vec<String>,
    pub error: Option<String>,
    /// What zwarm's watchers (guardrails) say: read and act on these.
    pub watchers: Vec<WatcherNote>,
    /// What the orchestrator should do now.
    pub next_step: String,
    /// "worktree" when the session works in a git worktree of its own (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The session's branch (`zwarm/<id8>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit the branch started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The worktree's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<String>,
    /// With status needs_approval: what the agent asks permission for. Answer with converse
    /// (`approval`: its request_id and a decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Pending>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TurnSummary {
    pub turn: u32,
    pub prompt: String,
    pub status: TurnStatus,
    pub response: Option<String>,
    pub error: Option<String>,
    pub api_status: Option<u16>,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub files_changed: Vec<FileChange>,
    pub commands: Vec<CommandSummary>,
    pub permission_denials: Vec<PermissionDenial>,
    pub tool_errors: Vec<ToolError>,
    pub started_at: String,
    pub ended_at: Option<String>,
}

/// Result of check_session.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionReport {
    pub session_id: String,
    pub status: SessionStatus,
    pub adapter: Adapter,
    pub mode: Mode,
    pub task: String,
    pub working_dir: String,
    pub model: Option<String>,
    /// The executor's own thread/session id.
    pub native_id: Option<String>,
    pub turns: Vec<TurnSummary>,
    /// The last turn's final message (capped; see `response_truncated`).
    pub response: Option<String>,
    pub response_truncated: bool,
    /// Resource with the full transcript (all responses uncut).
    pub transcript_uri: String,
    pub recent_progress: Vec<String>,
    /// Tokens across all turns.
    pub usage: Usage,
    /// Cost across all turns in USD, when the executor reports it.
    pub cost_usd: Option<f64>,
    pub error: Option<String>,
    pub summary: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// What zwarm's watchers (guardrails) say: read and act on these.
    pub watchers: Vec<WatcherNote>,
    pub next_step: String,
    /// "worktree" when the session works in a git worktree of its own (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The session's branch (`zwarm/<id8>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit the branch started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The worktree's path (removed when the session ends; see `worktree_state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<String>,
    /// The directory in the project the session was asked to work in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_dir: Option<String>,
    /// What has become of the worktree: active, merged, kept or discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_state: Option<crate::model::WorktreeState>,
    /// The branch's changes versus `base`: files with added/removed lines (uncommitted ones
    /// flagged) and the branch's commits. The whole unified diff is the resource `diff.uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<crate::worktree::DiffStat>,
    /// Why `diff` could not be computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_error: Option<String>,
    /// With `session_ids`: every session's report, in the order asked. The top-level fields
    /// then describe the first of them that finished (else the first one), and `next_step`
    /// covers them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionReport>>,
    /// With `session_ids`: the ids (full) of those no longer running or queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Vec<String>>,
    /// With status needs_approval: what the agent asks permission for. Answer with converse
    /// (`approval`: its request_id and a decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Pending>,
}

/// Result of end_session.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EndReport {
    pub session_id: String,
    pub status: SessionStatus,
    pub summary: Option<String>,
    /// Whether a running turn was interrupted.
    pub interrupted_turn: bool,
    /// What zwarm's watchers (guardrails) say: read and act on these.
    pub watchers: Vec<WatcherNote>,
    /// Worktree sessions: what was done with the branch (merge, keep or discard; absent when
    /// the worktree was left for a retry after verdict failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrate: Option<String>,
    /// Worktree sessions: whether the branch was merged into the project's branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<bool>,
    /// After a merge: the commit the project's branch points to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Worktree sessions: the session's branch (deleted by discard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Worktree sessions: what has become of the worktree (active, merged, kept, discarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_state: Option<crate::model::WorktreeState>,
    /// Something that went wrong after the session ended (e.g. a worktree that could not be
    /// removed), and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// After a merge with accept_outside_symlinks: the symlinks pointing outside the
    /// repository it brought (`path -> target`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside_symlinks: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionRow {
    pub session_id: String,
    pub status: SessionStatus,
    pub adapter: Adapter,
    pub mode: Mode,
    pub task: String,
    pub turns: u32,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub updated_at: String,
    /// The session's git branch (isolation "worktree"; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// With status needs_approval: what the agent asks permission for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Pending>,
}

/// Result of list_sessions.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionRow>,
    /// Sessions in this page.
    pub count: usize,
    /// Sessions matching the filter, over all pages.
    pub total: usize,
    /// Pass as `offset` to get the next page; absent on the last page.
    pub next_offset: Option<usize>,
    /// What zwarm's watchers (guardrails) say: read and act on these.
    pub watchers: Vec<WatcherNote>,
}
