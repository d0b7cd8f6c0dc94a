//! Tool arguments and results: the MCP contract, as Rust types.
//!
//! Hosts (Claude Code, Codex) show the model only `structuredContent`, so every result type
//! carries everything the orchestrator needs — ids, status, the executor's answer, and a
//! `next_step` sentence that says what to do now. Hosts do not validate arguments against
//! the input schema, so arguments are parsed leniently (numbers may arrive as strings) and
//! checked again by the session manager.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::event::{FileChange, PermissionDenial, ToolError, Usage};
use crate::model::Adapter;
use crate::model::{Mode, Session, SessionStatus, Turn, TurnStatus};
use crate::text;
use crate::watch::WatcherNote;

/// Accept `30`, `30.0` or `"30"`.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
        }
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(s.trim().parse::<f64>().map_err(|_| {
            serde::de::Error::custom(format!(
                "wait_seconds must be a number of seconds, got `{s}`"
            ))
        })? as u64),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "wait_seconds must be a number of seconds, got {other}"
            )));
        }
    })
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
    /// "codex" (default) or "claude" (aliases "codex_mcp", "claude_code").
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
    #[serde(default, deserialize_with = "lenient_u64")]
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
    /// The next message for the executor, in the same conversation.
    pub message: String,
    /// "sync" (default) or "async".
    #[serde(default)]
    pub mode: Option<String>,
    /// Sync mode: how long to wait for the turn before returning with status running.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub wait_seconds: Option<u64>,
    /// Set to true to continue after a watcher paused zwarm (only after the user agreed).
    #[serde(default)]
    pub acknowledge_pause: bool,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CheckArgs {
    /// Session id (or a unique prefix of 8+ characters). Give this or `session_ids`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// If a turn is running, wait up to this many seconds for it to finish before reporting
    /// (default 0: report at once).
    #[serde(default, deserialize_with = "lenient_u64")]
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
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Only sessions with this status: queued, running, idle, failed, completed, cancelled.
    #[serde(default)]
    pub status: Option<String>,
    /// Page size (default 50, at most 200).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub limit: Option<u64>,
    /// Skip this many sessions (from `next_offset` of the previous page).
    #[serde(default, deserialize_with = "lenient_u64")]
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
    /// Cost of this turn in USD, when the executor reports it (claude).
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
    /// Cost across all turns in USD (claude reports it).
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

/// URI of the resource holding a session's full transcript.
pub fn session_uri(id: &str) -> String {
    format!("zwarm://sessions/{id}")
}

/// Cap an executor answer at `max` characters, keeping its head and tail and naming the
/// resource that holds all of it. Returns the text and whether it was cut.
pub fn cap_response(text: &str, max: usize, uri: &str) -> (String, bool) {
    let total = text.chars().count();
    if total <= max {
        return (text.to_string(), false);
    }
    let head_n = max * 2 / 3;
    let tail_n = max - head_n;
    let head: String = text.chars().take(head_n).collect();
    let tail: String = text.chars().skip(total - tail_n).collect();
    (
        format!(
            "{head}\n\n[… {} of {total} characters omitted; read resource {uri} for the full response …]\n\n{tail}",
            total - head_n - tail_n
        ),
        true,
    )
}

/// Bound what a tool input can add to a result (a denied Write carries the whole file).
fn bounded_denials(t: &Turn) -> Vec<PermissionDenial> {
    t.permission_denials
        .iter()
        .take(20)
        .map(|d| {
            let text = d.input.to_string();
            if text.len() <= 1000 {
                d.clone()
            } else {
                PermissionDenial {
                    tool: d.tool.clone(),
                    input: serde_json::Value::String(text::truncate_chars(&text, 1000)),
                }
            }
        })
        .collect()
}

/// The last 20 tool errors of a turn (each is bounded when recorded).
fn bounded_tool_errors(t: &Turn) -> Vec<ToolError> {
    let skip = t.tool_errors.len().saturating_sub(20);
    t.tool_errors.iter().skip(skip).cloned().collect()
}

fn bounded_files(t: &Turn) -> Vec<FileChange> {
    t.files_changed.iter().take(100).cloned().collect()
}

fn commands(t: &Turn) -> Vec<CommandSummary> {
    let skip = t.commands.len().saturating_sub(20);
    t.commands
        .iter()
        .skip(skip)
        .map(|c| CommandSummary {
            command: text::truncate_chars(&c.command, 300),
            exit_code: c.exit_code,
        })
        .collect()
}

pub fn next_step(s: &Session, max_wait: u64) -> String {
    match s.status {
        SessionStatus::Running | SessionStatus::Queued => format!(
            "The turn is still {}. Call check_session with this session_id and wait_seconds (up to {max_wait}) to wait for it; do not delegate the same task again.",
            s.status.as_str()
        ),
        SessionStatus::Idle => "The turn finished. Verify the result (run the tests, read the diff), then converse to continue or correct, or end_session with verdict completed.".into(),
        SessionStatus::Failed => format!(
            "The turn failed: {}. Fix the cause if it is on your side, then converse to retry in the same thread, or end_session with verdict failed.",
            s.error.as_deref().unwrap_or("no reason reported")
        ),
        SessionStatus::Completed | SessionStatus::Cancelled => {
            "This session has ended. Start a new one with delegate if more work is needed.".into()
        }
        SessionStatus::Unreadable => "zwarm cannot read this session's stored record; it cannot continue. Start a new session with delegate, and report the state dir problem to the user.".into(),
    }
}

pub fn turn_report(s: &Session, turn: u32, max_wait: u64, max_chars: usize) -> TurnReport {
    let t = s.turns.iter().find(|t| t.index == turn);
    let running = s.status.is_active();
    let uri = session_uri(&s.id);
    let (response, response_truncated) =
        match t.and_then(|t| if running { None } else { t.response.as_deref() }) {
            Some(r) => {
                let (r, cut) = cap_response(r, max_chars, &uri);
                (Some(r), cut)
            }
            None => (None, false),
        };
    TurnReport {
        session_id: s.id.clone(),
        status: s.status,
        adapter: s.adapter,
        mode: s.mode,
        turn,
        response,
        response_truncated,
        transcript_uri: uri,
        usage: t.map(|t| t.usage).unwrap_or_default(),
        cost_usd: t.and_then(|t| t.cost_usd),
        files_changed: t.map(bounded_files).unwrap_or_default(),
        commands: t.map(commands).unwrap_or_default(),
        permission_denials: t.map(bounded_denials).unwrap_or_default(),
        tool_errors: t.map(bounded_tool_errors).unwrap_or_default(),
        recent_progress: if running {
            s.recent.iter().rev().take(8).rev().cloned().collect()
        } else {
            vec![]
        },
        error: t.and_then(|t| t.error.clone()).or_else(|| s.error.clone()),
        watchers: s
            .watcher_notes
            .iter()
            .filter(|n| n.turn == Some(turn))
            .cloned()
            .collect(),
        next_step: with_isolation_hint(next_step(s, max_wait), s),
        isolation: s.isolation.as_ref().map(|_| "worktree".to_string()),
        branch: s.isolation.as_ref().map(|i| i.branch.clone()),
        base: s.isolation.as_ref().map(|i| i.base.clone()),
        worktree: s.isolation.as_ref().map(|i| i.worktree.clone()),
    }
}

/// For an idle worktree session: how to review and integrate its branch.
fn with_isolation_hint(step: String, s: &Session) -> String {
    match &s.isolation {
        Some(i)
            if i.state == crate::model::WorktreeState::Active
                && matches!(s.status, SessionStatus::Idle) =>
        {
            format!(
                "{step} This session works on branch `{}` in its own worktree: review its diff (check_session `diff`, resource {}/diff), then end_session with integrate \"merge\" to merge it into the project (or \"keep\" / \"discard\").",
                i.branch,
                session_uri(&s.id)
            )
        }
        _ => step,
    }
}

pub fn session_report(s: &Session, max_wait: u64, max_chars: usize) -> SessionReport {
    let uri = session_uri(&s.id);
    let (response, response_truncated) = match s.last_turn().and_then(|t| t.response.as_deref()) {
        Some(r) => {
            let (r, cut) = cap_response(r, max_chars, &uri);
            (Some(r), cut)
        }
        None => (None, false),
    };
    // Earlier turns' answers are shown shorter; all of them are in the resource.
    let per_turn = (max_chars / 4).max(200);
    SessionReport {
        session_id: s.id.clone(),
        status: s.status,
        adapter: s.adapter,
        mode: s.mode,
        task: s.task.clone(),
        working_dir: s.working_dir.clone(),
        model: s.model.clone(),
        native_id: s.native_id.clone(),
        // The last 20 turns; all of them are in the transcript resource.
        turns: s
            .turns
            .iter()
            .skip(s.turns.len().saturating_sub(20))
            .map(|t| TurnSummary {
                turn: t.index,
                prompt: text::truncate_chars(&t.prompt, 500),
                status: t.status,
                response: t
                    .response
                    .as_deref()
                    .map(|r| cap_response(r, per_turn, &uri).0),
                error: t.error.clone(),
                api_status: t.api_status,
                usage: t.usage,
                cost_usd: t.cost_usd,
                files_changed: bounded_files(t),
                commands: commands(t),
                permission_denials: bounded_denials(t),
                tool_errors: bounded_tool_errors(t),
                started_at: t.started_at.clone(),
                ended_at: t.ended_at.clone(),
            })
            .collect(),
        response,
        response_truncated,
        transcript_uri: uri.clone(),
        recent_progress: s.recent.iter().rev().take(10).rev().cloned().collect(),
        usage: s.total_usage(),
        cost_usd: s.total_cost(),
        error: s.error.clone(),
        summary: s.summary.clone(),
        created_at: s.created_at.clone(),
        updated_at: s.updated_at.clone(),
        watchers: s
            .watcher_notes
            .iter()
            .rev()
            .take(20)
            .rev()
            .cloned()
            .collect(),
        next_step: with_isolation_hint(next_step(s, max_wait), s),
        isolation: s.isolation.as_ref().map(|_| "worktree".to_string()),
        branch: s.isolation.as_ref().map(|i| i.branch.clone()),
        base: s.isolation.as_ref().map(|i| i.base.clone()),
        worktree: s.isolation.as_ref().map(|i| i.worktree.clone()),
        project_dir: s.isolation.as_ref().map(|i| i.project_dir.clone()),
        worktree_state: s.isolation.as_ref().map(|i| i.state),
        diff: None,
        diff_error: None,
        sessions: None,
        finished: None,
    }
}

pub fn session_row(r: crate::store::SessionRow) -> SessionRow {
    SessionRow {
        session_id: r.session_id,
        status: r.status,
        adapter: r.adapter,
        mode: r.mode,
        task: r.task,
        turns: r.turns,
        usage: r.usage,
        cost_usd: r.cost_usd,
        updated_at: r.updated_at,
        branch: r.branch,
    }
}
