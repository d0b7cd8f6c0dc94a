//! The five tools: thin handlers that parse, ask the watchers, call the session manager and
//! shape the answer. A bad call becomes an `isError` result whose text says what was wrong and
//! what to do next (no structuredContent, so hosts pass the text to the model); it never
//! becomes a protocol error and never takes the server down.

use std::time::Duration;

use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::service::RequestContext;
use rmcp::{Json, RoleServer, tool, tool_router};

use super::ZwarmServer;
use super::dto::*;
use super::errors::{tool_error, unknown_mode};
use super::report::{session_report, session_row, turn_report};
use crate::model::{Mode, Session, SessionStatus};
use crate::sessions::{DelegateRequest, ManagerError};
use crate::watch::{Call, WatcherNote};

/// A tool's result: `Json(T)` becomes `structuredContent`; `Err(text)` an `isError` result
/// whose text says what was wrong and what to do (no structuredContent, so it cannot
/// contradict the declared output schema).
type ToolResult<T> = Result<Json<T>, String>;

/// Most running sessions looked at for `list_sessions(status: "needs_approval")`.
const MAX_RUNNING_LISTED: usize = 1000;

fn err(e: ManagerError) -> String {
    tool_error(&e)
}

/// Put the notes from the pre-call watchers in front of the result's own.
fn with_notes(mut own: Vec<WatcherNote>, call: Vec<WatcherNote>) -> Vec<WatcherNote> {
    let mut all = call;
    all.append(&mut own);
    all
}

/// `mode`, parsed once: absent or empty is sync.
fn parse_mode(mode: Option<&str>) -> Result<Mode, String> {
    match mode.map(str::trim).filter(|m| !m.is_empty()) {
        None => Ok(Mode::Sync),
        Some(m) => Mode::parse(m).ok_or_else(|| unknown_mode(m)),
    }
}

impl ZwarmServer {
    /// Run the watchers before a call: a refusal becomes the call's error result. Gives the
    /// call back, for the handler to go on with.
    async fn guard(
        &self,
        call: Call,
        acknowledge: bool,
    ) -> Result<(Vec<WatcherNote>, Call), String> {
        let notes = self
            .manager
            .check_call(&call, acknowledge)
            .await
            .map_err(|refused| refused.to_string())?;
        Ok((notes, call))
    }

    /// Add a worktree session's diff to its report.
    async fn add_diff(&self, r: &mut SessionReport, s: &Session) {
        let full_diff = format!("{}/diff", super::report::session_uri(&s.id));
        match self.manager.diff_stat_at(s, full_diff).await {
            Some(Ok(d)) => r.diff = Some(d),
            Some(Err(e)) => r.diff_error = Some(e.to_string()),
            None => {}
        }
    }

    /// check_session with `session_ids`: wait for any (or all) of them, report each.
    async fn check_many(
        &self,
        a: &CheckArgs,
        ids: &[String],
        budget: Duration,
        max: u64,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<SessionReport, String> {
        let all = match a.wait.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("any") => false,
            Some(w) if w.eq_ignore_ascii_case("all") => true,
            Some(w) => {
                return Err(format!(
                    "unknown wait `{w}`: use \"any\" (return when one of session_ids has finished; the default) or \"all\"."
                ));
            }
        };
        let mut ids: Vec<String> = ids.to_vec();
        if let Some(one) = a.session_id.as_deref().filter(|s| !s.trim().is_empty()) {
            ids.insert(0, one.to_string());
        }
        if ids.len() > crate::sessions::MAX_WAIT_IDS {
            return Err(format!(
                "session_ids lists {} sessions; at most {} may be waited on in one call.",
                ids.len(),
                crate::sessions::MAX_WAIT_IDS
            ));
        }
        let sessions = self
            .manager
            .wait_many(&ids, all, budget, &ctx.ct)
            .await
            .map_err(err)?;
        // Bounded: the answers of all of them share max_response_chars.
        let per = (self.max_chars() / (sessions.len() + 1)).max(500);
        let mut reports = Vec::with_capacity(sessions.len());
        let mut sessions = sessions;
        let approvals: Vec<_> = sessions
            .iter_mut()
            .map(|s| self.approval_overlay(s))
            .collect();
        for (s, approval) in sessions.iter().zip(approvals) {
            let mut r = session_report(s, max, per);
            r.approval = approval;
            self.add_diff(&mut r, s).await;
            reports.push(r);
        }
        let finished: Vec<String> = sessions
            .iter()
            .filter(|s| !s.status.is_active())
            .map(|s| s.id.clone())
            .collect();
        let running: Vec<&str> = sessions
            .iter()
            .filter(|s| s.status.is_active())
            .map(|s| s.id.as_str())
            .collect();
        let primary = sessions
            .iter()
            .find(|s| !s.status.is_active())
            .or(sessions.first())
            .ok_or_else(|| "session_ids is empty: list the sessions to wait on.".to_string())?;
        let mut top = session_report(primary, max, per);
        self.add_diff(&mut top, primary).await;
        top.next_step = if running.is_empty() {
            format!(
                "All {} sessions have finished. Review each one under `sessions` (its response, and `diff` for worktree sessions), then converse to correct or end_session (integrate \"merge\" for worktree sessions, one at a time).",
                sessions.len()
            )
        } else {
            format!(
                "{} of {} sessions have finished ({}); still running: {}. Review the finished ones under `sessions`, then call check_session with the remaining session_ids and wait_seconds (up to {max}) to wait for the rest.",
                finished.len(),
                sessions.len(),
                if finished.is_empty() {
                    "none yet".to_string()
                } else {
                    finished.join(", ")
                },
                running.join(", ")
            )
        };
        top.sessions = Some(reports);
        top.finished = Some(finished);
        Ok(top)
    }
}

#[tool_router(vis = "pub(super)")]
impl ZwarmServer {
    /// Start a coding session: hand a task to an executor in a working
    /// directory. mode=sync waits for the turn (bounded by the host's tool timeout, then returns
    /// status running); mode=async returns at once. Follow up with check_session.
    #[tool(
        output_schema = schema_for_output::<TurnReport>(),
        annotations(title = "Delegate a task to a coding agent", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = true)
    )]
    async fn delegate(
        &self,
        Parameters(a): Parameters<DelegateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<TurnReport> {
        let mode = parse_mode(a.mode.as_deref())?;
        let call = Call::Delegate {
            task: a.task,
            mode,
            adapter: a.adapter,
            model: a.model,
            working_dir: a.working_dir,
            isolation: a.isolation,
            base: a.base,
        };
        let (
            notes,
            Call::Delegate {
                task,
                adapter,
                model,
                working_dir,
                isolation,
                base,
                ..
            },
        ) = self.guard(call, a.acknowledge_pause).await?
        else {
            return Err("internal error: the delegate call changed its kind".into());
        };
        let id = self
            .manager
            .delegate(DelegateRequest {
                task,
                adapter,
                mode: Some(mode),
                model,
                working_dir,
                isolation,
                base,
            })
            .await
            .map_err(err)?;
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, false);
        let is_async = mode == Mode::Async;
        let s = if is_async {
            self.manager.get(&id).await
        } else {
            self.wait_turn(&id, 1, budget, &ctx).await
        }
        .map_err(err)?;
        self.manager.attach_notes(&s.id, Some(1), &notes).await;
        let mut s = s;
        let approval = self.approval_overlay(&mut s);
        let mut r = turn_report(&s, 1, max, self.max_chars());
        r.approval = approval;
        r.watchers = with_notes(r.watchers, notes);
        Ok(Json(r))
    }

    /// Send the next message to an existing session, continuing the executor's own thread.
    /// Only when no turn is running (status idle or failed).
    #[tool(
        output_schema = schema_for_output::<TurnReport>(),
        annotations(title = "Continue a session", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = true)
    )]
    async fn converse(
        &self,
        Parameters(a): Parameters<ConverseArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<TurnReport> {
        let mode = parse_mode(a.mode.as_deref())?;
        let is_async = mode == Mode::Async;
        let message = a.message.filter(|m| !m.is_empty());
        if let Some(ap) = &a.approval {
            if message.is_some() {
                return Err("converse takes `message` or `approval`, not both: answer the permission request first (approval), then send the message once the turn has finished.".into());
            }
            let (notes, _) = self
                .guard(
                    Call::CheckSession {
                        session_ids: vec![a.session_id.clone()],
                    },
                    false,
                )
                .await?;
            let (s, turn) = self.answer_approval(&a.session_id, ap).await?;
            let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, false);
            let s = if is_async {
                self.manager.get(&s.id).await
            } else {
                self.wait_turn(&s.id, turn, budget, &ctx).await
            }
            .map_err(err)?;
            let mut s = s;
            let approval = self.approval_overlay(&mut s);
            let mut r = turn_report(&s, turn, max, self.max_chars());
            r.approval = approval;
            r.mode = mode;
            r.watchers = with_notes(r.watchers, notes);
            return Ok(Json(r));
        }
        let Some(message) = message else {
            return Err("converse needs `message` (the next message for the executor), or `approval` (an answer to the permission request a running turn waits on).".into());
        };
        let call = Call::Converse {
            session_id: a.session_id,
            message,
            mode,
        };
        let (
            notes,
            Call::Converse {
                session_id,
                message,
                ..
            },
        ) = self.guard(call, a.acknowledge_pause).await?
        else {
            return Err("internal error: the converse call changed its kind".into());
        };
        let (id, turn) = self
            .manager
            .converse(&session_id, &message)
            .await
            .map_err(err)?;
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, false);
        let s = if is_async {
            self.manager.get(&id).await
        } else {
            self.wait_turn(&id, turn, budget, &ctx).await
        }
        .map_err(err)?;
        self.manager.attach_notes(&s.id, Some(turn), &notes).await;
        let mut s = s;
        let approval = self.approval_overlay(&mut s);
        let mut r = turn_report(&s, turn, max, self.max_chars());
        r.approval = approval;
        r.mode = if is_async { Mode::Async } else { Mode::Sync };
        r.watchers = with_notes(r.watchers, notes);
        Ok(Json(r))
    }

    /// Report a session: status, every turn (response, commands, files, usage), recent
    /// progress and totals. With wait_seconds, first wait for a running turn to finish.
    #[tool(
        output_schema = schema_for_output::<SessionReport>(),
        annotations(title = "Check a session", read_only_hint = true, open_world_hint = false)
    )]
    async fn check_session(
        &self,
        Parameters(a): Parameters<CheckArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<SessionReport> {
        let session_ids = a
            .session_id
            .iter()
            .chain(a.session_ids.iter().flatten())
            .cloned()
            .collect();
        let (notes, _) = self
            .guard(Call::CheckSession { session_ids }, false)
            .await?;
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, true);
        if let Some(ids) = a.session_ids.as_ref().filter(|ids| !ids.is_empty()) {
            let mut r = self.check_many(&a, ids, budget, max, &ctx).await?;
            r.watchers = with_notes(r.watchers, notes);
            return Ok(Json(r));
        }
        let Some(session_id) = a.session_id.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Err("check_session needs `session_id` (one session), or `session_ids` (a list, with `wait`: \"any\" or \"all\", and wait_seconds) to wait on several. list_sessions shows the ids.".into());
        };
        let s = self.manager.get(session_id).await.map_err(err)?;
        let s = if budget.is_zero() || !s.status.is_active() {
            s
        } else {
            self.wait_unless_asked(&s.id, budget, &ctx.ct)
                .await
                .map_err(err)?
        };
        self.manager.attach_notes(&s.id, None, &notes).await;
        let mut s = s;
        let approval = self.approval_overlay(&mut s);
        let mut r = session_report(&s, max, self.max_chars());
        r.approval = approval;
        self.add_diff(&mut r, &s).await;
        r.watchers = with_notes(r.watchers, notes);
        Ok(Json(r))
    }

    /// End a session with a verdict (completed, failed or cancelled) and an optional summary.
    /// A running turn is interrupted and its processes stopped.
    #[tool(
        output_schema = schema_for_output::<EndReport>(),
        annotations(title = "End a session", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    async fn end_session(&self, Parameters(a): Parameters<EndArgs>) -> ToolResult<EndReport> {
        let (notes, _) = self
            .guard(
                Call::EndSession {
                    session_id: a.session_id.clone(),
                    verdict: a.verdict.clone(),
                    integrate: a.integrate.clone(),
                },
                false,
            )
            .await?;
        let verdict = match a
            .verdict
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => SessionStatus::Completed,
            Some(v) => match SessionStatus::parse(v) {
                Some(
                    s @ (SessionStatus::Completed
                    | SessionStatus::Failed
                    | SessionStatus::Cancelled),
                ) => s,
                _ => {
                    return Err(format!(
                        "unknown verdict `{v}`: use completed, failed or cancelled."
                    ));
                }
            },
        };
        let (s, interrupted, integrated) = self
            .manager
            .end_integrated_with(
                &a.session_id,
                verdict,
                a.summary,
                a.integrate.as_deref(),
                a.accept_outside_symlinks,
            )
            .await
            .map_err(err)?;
        Ok(Json(EndReport {
            session_id: s.id.clone(),
            status: s.status,
            summary: s.summary.clone(),
            interrupted_turn: interrupted,
            watchers: notes,
            integrate: integrated
                .as_ref()
                .and_then(|i| i.integrate.map(|x| x.as_str().to_string())),
            merged: integrated.as_ref().map(|i| i.merged),
            commit: integrated.as_ref().and_then(|i| i.commit.clone()),
            branch: integrated.as_ref().map(|i| i.branch.clone()),
            worktree_state: integrated.as_ref().map(|i| i.state),
            outside_symlinks: integrated
                .as_ref()
                .map(|i| i.outside_links.iter().map(|l| l.to_string()).collect())
                .unwrap_or_default(),
            warning: integrated.and_then(|i| i.warning),
        }))
    }

    /// List sessions (newest first), optionally only those with one status.
    #[tool(
        output_schema = schema_for_output::<SessionList>(),
        annotations(title = "List sessions", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_sessions(&self, Parameters(a): Parameters<ListArgs>) -> ToolResult<SessionList> {
        let (notes, _) = self.guard(Call::ListSessions, false).await?;
        let status = match a.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match SessionStatus::parse(s) {
                Some(st) => Some(st),
                None => {
                    return Err(format!(
                        "unknown status `{s}`: use queued, running, needs_approval, idle, failed, completed or cancelled, or omit it."
                    ));
                }
            },
        };
        let limit = a
            .limit
            .map(|l| l.clamp(1, 200) as usize)
            .unwrap_or(self.manager.config().list_page_size);
        let offset = a.offset.unwrap_or(0) as usize;
        // needs_approval is never stored: the running sessions whose turn waits for an answer.
        let asked = status == Some(SessionStatus::NeedsApproval);
        let page = if asked {
            self.manager
                .list(Some(SessionStatus::Running), MAX_RUNNING_LISTED, 0)
                .await
        } else {
            self.manager.list(status, limit, offset).await
        }
        .map_err(err)?;
        let mut sessions: Vec<SessionRow> = page.sessions.into_iter().map(session_row).collect();
        for r in &mut sessions {
            self.approval_overlay_row(r);
        }
        if asked {
            sessions.retain(|r| r.status == SessionStatus::NeedsApproval);
            return Ok(Json(SessionList {
                count: sessions.len(),
                total: sessions.len(),
                next_offset: None,
                sessions,
                watchers: notes,
            }));
        }
        let next = offset + sessions.len();
        Ok(Json(SessionList {
            count: sessions.len(),
            total: page.total,
            next_offset: (next < page.total).then_some(next),
            sessions,
            watchers: notes,
        }))
    }
}
