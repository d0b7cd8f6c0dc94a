//! Building tool results from sessions: reports, bounded lists, and the `next_step` sentence
//! that tells the orchestrator what to do now.

use crate::event::{FileChange, PermissionDenial, ToolError};
use crate::model::{Session, SessionStatus, Turn};
use crate::text;

use super::dto::{CommandSummary, SessionReport, SessionRow, TurnReport, TurnSummary};

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
        SessionStatus::NeedsApproval => "The agent asks permission for what `approval` shows, and its turn waits. Decide, then call converse with this session_id and approval={request_id, decision: \"allow\" or \"deny\"} (no message). No answer before its deadline is a denial. A person can answer with `zwarm approve SESSION_ID [--deny]`.".into(),
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
        approval: None,
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
        approval: None,
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
        approval: None,
    }
}
