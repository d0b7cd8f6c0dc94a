//! The MCP server: five thin tool handlers over the [`Manager`].
//!
//! Each handler parses its arguments, calls the session manager, and shapes the answer. A bad
//! call becomes an `isError` result whose text says what was wrong and what to do next (no
//! structuredContent, so hosts pass the text to the model); it never becomes a protocol error
//! and never takes the server down.

use std::time::Duration;

use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ProgressNotificationParam, Prompt, PromptArgument, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotificationParam, Role, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{Peer, RequestContext, SubscriptionContext, SubscriptionSink};
use rmcp::{
    ErrorData as McpError, Json, RoleServer, ServerHandler, tool, tool_handler, tool_router,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::model::{Mode, Session, SessionStatus};
use crate::sessions::{DelegateRequest, Manager, ManagerError};
use crate::tools::*;
use crate::watch::WatcherNote;

/// Put the notes from the pre-call watchers in front of the result's own.
fn with_notes(mut own: Vec<WatcherNote>, call: Vec<WatcherNote>) -> Vec<WatcherNote> {
    let mut all = call;
    all.append(&mut own);
    all
}

pub const INSTRUCTIONS: &str = "zwarm runs coding agents (codex, claude) for you as executors.\n\
1. delegate(task, …) starts a session: write the task with acceptance criteria. mode=sync waits (bounded by the host's tool timeout); mode=async returns at once.\n\
2. If status is running, call check_session(session_id, wait_seconds) until it is idle or failed. Never re-delegate a running task.\n\
3. Verify the result yourself (tests, diffs); use converse(session_id, message) to correct or continue in the same thread.\n\
4. end_session(session_id, verdict, summary) when done: completed, failed or cancelled (cancelled stops a running turn).\n\
Parallel work in one git repository: delegate each part with isolation=\"worktree\" (a worktree and branch per session), wait on several with check_session(session_ids, wait=\"any\"), review each `diff`, then end_session(…, integrate=\"merge\") one at a time.\n\
list_sessions shows everything, including sessions from earlier runs. Every result has next_step: follow it.";

#[derive(Clone)]
pub struct ZwarmServer {
    manager: Manager,
    tool_router: rmcp::handler::server::router::tool::ToolRouter<ZwarmServer>,
    /// Resource subscriptions: (uri, the client that asked).
    subs: Subscriptions,
    /// 2026-07-28 `subscriptions/listen` streams and the resources each one accepted.
    listeners: Listeners,
    shutdown: CancellationToken,
}

/// Resource subscriptions: (uri, the client that asked).
type Subscriptions = Arc<Mutex<Vec<(String, Peer<RoleServer>)>>>;

/// `subscriptions/listen` streams: the sink, and each accepted uri as the client wrote it
/// (notifications must use that spelling) with the uri zwarm's changes are matched against
/// (a session prefix resolved to the full id).
type Listeners = Arc<Mutex<Vec<(SubscriptionSink, Vec<(String, String)>)>>>;

pub const SESSIONS_URI: &str = "zwarm://sessions";
pub const EVENTS_URI: &str = "zwarm://events";

/// A tool's result: `Json(T)` becomes `structuredContent`; `Err(text)` an `isError` result
/// whose text says what was wrong and what to do (no structuredContent, so it cannot
/// contradict the declared output schema).
type ToolResult<T> = Result<Json<T>, String>;

fn err(e: ManagerError) -> String {
    e.to_string()
}

/// Sync-wait policy for the calling host: (default, maximum) seconds. Hosts give up on a long
/// tool call: Codex cancels it after `tool_timeout_sec` (300 s by default), Claude Desktop after
/// about 60 s, and Claude Code (since 2.1.212) moves it to the background after 120 s
/// (`CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS`), after which its model may never read the result.
/// zwarm returns before that with status running, so the orchestrator polls instead of losing
/// the call. The name comes from `initialize`'s `clientInfo` or, in the 2026-07-28 revision,
/// from the client info each request carries.
pub fn host_wait_policy(client_name: Option<&str>) -> (u64, Option<u64>) {
    let name = client_name.unwrap_or("").to_ascii_lowercase();
    if name.contains("codex") {
        (240, Some(280))
    } else if name == "claude-code" {
        (110, Some(115))
    } else if name.contains("claude") || name.contains("desktop") {
        (45, Some(55))
    } else {
        (45, None)
    }
}

impl ZwarmServer {
    /// Must be called inside a tokio runtime: it starts the task that turns session changes
    /// into resource-updated notifications for subscribers.
    pub fn new(manager: Manager) -> Self {
        let subs: Subscriptions = Arc::default();
        let listeners: Listeners = Arc::default();
        let mut changes = manager.subscribe_changes();
        let subs2 = subs.clone();
        let listeners2 = listeners.clone();
        tokio::spawn(async move {
            use std::collections::BTreeSet;
            use tokio::sync::broadcast::error::RecvError;
            loop {
                // Coalesce: a chatty executor changes its session many times a second; send at
                // most one notification per resource every 100 ms.
                let mut changed: BTreeSet<String> = BTreeSet::new();
                // Missed changes (the feed lagged) are unknown ones: notify every subscription.
                let mut everything = false;
                match changes.recv().await {
                    Ok(id) => {
                        changed.insert(id);
                    }
                    Err(RecvError::Lagged(_)) => everything = true,
                    Err(RecvError::Closed) => break,
                }
                let window = tokio::time::sleep(Duration::from_millis(100));
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        _ = &mut window => break,
                        r = changes.recv() => match r {
                            Ok(id) => { changed.insert(id); }
                            Err(RecvError::Lagged(_)) => everything = true,
                            Err(RecvError::Closed) => break,
                        },
                    }
                }
                let subs_now: Vec<(String, Peer<RoleServer>)> =
                    subs2.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for (u, peer) in subs_now {
                    let hit = everything
                        || u == SESSIONS_URI && !changed.is_empty()
                        || changed.iter().any(|id| session_uri(id) == u)
                        || changed
                            .iter()
                            .any(|id| format!("{}/diff", session_uri(id)) == u);
                    if hit {
                        let _ = peer
                            .notify_resource_updated(ResourceUpdatedNotificationParam::new(u))
                            .await;
                    }
                }
                let listeners_now = listeners2.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for (sink, uris) in listeners_now {
                    for (asked, u) in uris {
                        let hit = everything
                            || u == SESSIONS_URI && !changed.is_empty()
                            || changed.iter().any(|id| session_uri(id) == u);
                        if hit {
                            let _ = sink.notify_resource_updated(asked).await;
                        }
                    }
                }
            }
        });
        ZwarmServer {
            manager,
            tool_router: Self::tool_router(),
            subs,
            listeners,
            shutdown: CancellationToken::new(),
        }
    }

    /// Run the watchers before a call: a refusal becomes the call's error result.
    async fn guard<A: Serialize>(
        &self,
        tool: &str,
        args: &A,
        acknowledge: bool,
    ) -> Result<Vec<WatcherNote>, String> {
        let v = serde_json::to_value(args).unwrap_or(serde_json::Value::Null);
        self.manager.before_call(tool, &v, acknowledge).await
    }

    async fn normalize_uri(&self, uri: &str) -> String {
        if let Some(id) = uri
            .strip_prefix("zwarm://sessions/")
            .and_then(|r| r.strip_suffix("/diff"))
        {
            return match self.manager.resolve(id).await {
                Ok(full) => format!("{}/diff", session_uri(&full)),
                Err(_) => uri.to_string(),
            };
        }
        match uri.strip_prefix("zwarm://sessions/") {
            Some(id) => match self.manager.resolve(id).await {
                Ok(full) => session_uri(&full),
                Err(_) => uri.to_string(),
            },
            None => uri.to_string(),
        }
    }

    /// The token that ends the whole server (signal or stdin EOF). A tool call cancelled
    /// because of it must not record "the client cancelled" as the turn's reason.
    pub fn with_shutdown(mut self, ct: CancellationToken) -> Self {
        self.shutdown = ct;
        self
    }

    fn max_chars(&self) -> usize {
        self.manager.config().max_response_chars
    }

    async fn read(&self, uri: &str) -> Result<String, McpError> {
        let not_found = |what: String| {
            McpError::resource_not_found(
                format!("{what}. Resources: {SESSIONS_URI}, {SESSIONS_URI}/{{id}}, {EVENTS_URI}"),
                Some(serde_json::json!({ "uri": uri })),
            )
        };
        let internal = |e: ManagerError| McpError::internal_error(e.to_string(), None);
        let text = if uri == SESSIONS_URI {
            let page = self
                .manager
                .list(None, usize::MAX >> 1, 0)
                .await
                .map_err(internal)?;
            let rows: Vec<SessionRow> = page.sessions.into_iter().map(session_row).collect();
            serde_json::to_string_pretty(
                &serde_json::json!({"count": rows.len(), "sessions": rows}),
            )
        } else if let Some(id) = uri
            .strip_prefix("zwarm://sessions/")
            .and_then(|r| r.strip_suffix("/diff"))
        {
            return self
                .manager
                .diff_text(id)
                .await
                .map_err(|e| not_found(format!("no diff for session `{id}`: {e}")));
        } else if uri == EVENTS_URI {
            serde_json::to_string_pretty(&self.manager.recent_events(200).await.map_err(internal)?)
        } else if let Some(id) = uri.strip_prefix("zwarm://sessions/") {
            let s = self
                .manager
                .get(id)
                .await
                .map_err(|e| not_found(format!("no session `{id}`: {e}")))?;
            serde_json::to_string_pretty(&transcript(&s))
        } else {
            return Err(not_found(format!("unknown resource `{uri}`")));
        };
        text.map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    /// (wait to use now, maximum to advertise) for a sync call.
    fn wait_budget(
        &self,
        ctx: &RequestContext<RoleServer>,
        requested: Option<u64>,
        default_zero: bool,
    ) -> (Duration, u64) {
        // The request's own client info (2026-07-28), else `initialize`'s.
        let name = ctx.client_info().map(|c| c.name);
        let (host_default, host_max) = host_wait_policy(name.as_deref());
        let default = if default_zero {
            0
        } else {
            self.manager
                .config()
                .sync_wait_seconds
                .unwrap_or(host_default)
        };
        let max = host_max.unwrap_or(crate::sessions::MAX_WAIT.as_secs());
        let secs = requested.unwrap_or(default).min(max);
        (
            Duration::from_secs(secs),
            host_max.unwrap_or(host_default.max(secs)),
        )
    }

    /// Wait for a session's turn, forwarding its progress to the host when the call carries a
    /// progress token. If the host cancels the call, the turn is interrupted.
    async fn wait_turn(
        &self,
        session_id: &str,
        turn: u32,
        budget: Duration,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<crate::model::Session, ManagerError> {
        let token = ctx.meta.get_progress_token();
        let forward = token.map(|token| {
            let mut rx = self.manager.subscribe();
            let peer = ctx.peer.clone();
            let sid = session_id.to_string();
            let stop = CancellationToken::new();
            let stop2 = stop.clone();
            let handle = tokio::spawn(async move {
                let mut n = 0u32;
                // Token bucket: bursts of up to 10 pass, then 5 per second.
                let mut tokens = 10.0f64;
                let mut refilled = tokio::time::Instant::now();
                loop {
                    let notice = tokio::select! {
                        biased;
                        r = rx.recv() => r,
                        // Stopped: deliver what is already queued (the turn's end is sent
                        // before the waiter wakes), then finish.
                        _ = stop2.cancelled() => match rx.try_recv() {
                            Ok(n) => Ok(n),
                            Err(_) => break,
                        },
                    };
                    let notice = match notice {
                        Ok(n) => n,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    };
                    if notice.session_id != sid {
                        continue;
                    }
                    let Some(msg) = notice.message else { continue };
                    let is_end = matches!(
                        notice.event,
                        crate::event::ExecutorEvent::TurnCompleted { .. }
                            | crate::event::ExecutorEvent::TurnFailed { .. }
                    );
                    tokens = (tokens + refilled.elapsed().as_secs_f64() * 5.0).min(10.0);
                    refilled = tokio::time::Instant::now();
                    // A chatty executor cannot flood the host; the end of the turn always goes.
                    if tokens < 1.0 && !is_end {
                        continue;
                    }
                    tokens = (tokens - 1.0).max(0.0);
                    n += 1;
                    let _ = peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), n as f64)
                                .with_message(msg),
                        )
                        .await;
                }
            });
            (stop, handle)
        });
        let s = self.manager.wait(session_id, budget, &ctx.ct).await;
        if let Some((stop, handle)) = forward {
            stop.cancel();
            let _ = handle.await;
        }
        if ctx.ct.is_cancelled() && !self.shutdown.is_cancelled() {
            // The host gave up on this call (its timeout or the user): stop the turn it started.
            let m = self.manager.clone();
            let sid = session_id.to_string();
            tokio::spawn(async move {
                let _ = m
                    .interrupt_turn(
                        &sid,
                        Some(turn),
                        "interrupted: the MCP client cancelled the tool call that started this turn",
                    )
                    .await;
            });
        }
        s
    }
}

/// check_session over several sessions, and the worktree diff.
impl ZwarmServer {
    /// Add a worktree session's diff to its report.
    async fn add_diff(&self, r: &mut SessionReport, s: &Session) {
        match self.manager.diff_stat(s).await {
            Some(Ok(d)) => r.diff = Some(d),
            Some(Err(e)) => r.diff_error = Some(e),
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
        for s in &sessions {
            let mut r = session_report(s, max, per);
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

#[tool_router]
impl ZwarmServer {
    /// Start a coding session: hand a task to an executor (codex or claude) in a working
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
        let notes = self.guard("delegate", &a, a.acknowledge_pause).await?;
        let mode = a.mode.clone();
        let id = self
            .manager
            .delegate(DelegateRequest {
                task: a.task,
                adapter: a.adapter,
                mode: a.mode,
                model: a.model,
                working_dir: a.working_dir,
                isolation: a.isolation,
                base: a.base,
            })
            .await
            .map_err(err)?;
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, false);
        let is_async = mode.as_deref().and_then(Mode::parse) == Some(Mode::Async);
        let s = if is_async {
            self.manager.get(&id).await
        } else {
            self.wait_turn(&id, 1, budget, &ctx).await
        }
        .map_err(err)?;
        self.manager.attach_notes(&s.id, Some(1), &notes).await;
        let mut r = turn_report(&s, 1, max, self.max_chars());
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
        let notes = self.guard("converse", &a, a.acknowledge_pause).await?;
        let is_async = match a.mode.as_deref().filter(|m| !m.trim().is_empty()) {
            None => false,
            Some(m) => match Mode::parse(m) {
                Some(m) => m == Mode::Async,
                None => return Err(err(ManagerError::UnknownMode(m.to_string()))),
            },
        };
        let (id, turn) = self
            .manager
            .converse(&a.session_id, &a.message)
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
        let mut r = turn_report(&s, turn, max, self.max_chars());
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
        let notes = self.guard("check_session", &a, false).await?;
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, true);
        if let Some(ids) = a.session_ids.as_ref().filter(|ids| !ids.is_empty()) {
            let mut r = self.check_many(&a, ids, budget, max, &ctx).await?;
            r.watchers = with_notes(r.watchers, notes);
            return Ok(Json(r));
        }
        let Some(session_id) = a.session_id.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Err("check_session needs `session_id` (one session), or `session_ids` (a list, with `wait`: \"any\" or \"all\", and wait_seconds) to wait on several. list_sessions shows the ids.".into());
        };
        let s = if budget.is_zero() {
            self.manager.get(session_id).await
        } else {
            self.manager.wait(session_id, budget, &ctx.ct).await
        }
        .map_err(err)?;
        self.manager.attach_notes(&s.id, None, &notes).await;
        let mut r = session_report(&s, max, self.max_chars());
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
        let notes = self.guard("end_session", &a, false).await?;
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
            .end_integrated(&a.session_id, verdict, a.summary, a.integrate.as_deref())
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
            warning: integrated.and_then(|i| i.warning),
        }))
    }

    /// List sessions (newest first), optionally only those with one status.
    #[tool(
        output_schema = schema_for_output::<SessionList>(),
        annotations(title = "List sessions", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_sessions(&self, Parameters(a): Parameters<ListArgs>) -> ToolResult<SessionList> {
        let notes = self.guard("list_sessions", &a, false).await?;
        let status = match a.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match SessionStatus::parse(s) {
                Some(st) => Some(st),
                None => {
                    return Err(format!(
                        "unknown status `{s}`: use queued, running, idle, failed, completed or cancelled, or omit it."
                    ));
                }
            },
        };
        let limit = a
            .limit
            .map(|l| l.clamp(1, 200) as usize)
            .unwrap_or(self.manager.config().list_page_size);
        let offset = a.offset.unwrap_or(0) as usize;
        let page = self
            .manager
            .list(status, limit, offset)
            .await
            .map_err(err)?;
        let sessions: Vec<SessionRow> = page.sessions.into_iter().map(session_row).collect();
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

/// The full record of a session, as the `zwarm://sessions/{id}` resource shows it.
fn transcript(s: &Session) -> serde_json::Value {
    serde_json::json!({
        "session_id": s.id,
        "status": s.status,
        "adapter": s.adapter,
        "mode": s.mode,
        "task": s.task,
        "working_dir": s.working_dir,
        "model": s.model,
        "native_id": s.native_id,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "error": s.error,
        "summary": s.summary,
        "usage": s.total_usage(),
        "cost_usd": s.total_cost(),
        "recent_progress": s.recent,
        "watcher_notes": s.watcher_notes,
        "turns": s.turns,
        "isolation": s.isolation,
    })
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ZwarmServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("zwarm", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    /// Every tool call, in its trace span when traces are exported (see [`crate::telemetry`]).
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        let span = crate::telemetry::tool_span(&request, &ctx);
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, ctx);
        let r = tracing::Instrument::instrument(self.tool_router.call(call), span.clone()).await;
        crate::telemetry::tool_done(&span, &r);
        r
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(SESSIONS_URI, "sessions")
                .with_description(
                    "Index of all zwarm sessions (status, adapter, task, turns, usage)",
                )
                .with_mime_type("application/json"),
            Resource::new(EVENTS_URI, "events")
                .with_description("The last 200 entries of zwarm's event log")
                .with_mime_type("application/json"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("zwarm://sessions/{id}", "session-transcript")
                .with_description(
                    "Full transcript of one session: every turn's prompt, complete response, agent messages, commands with exit codes, file changes, permission denials and usage",
                )
                .with_mime_type("application/json"),
            ResourceTemplate::new("zwarm://sessions/{id}/diff", "session-diff")
                .with_description(
                    "The whole unified diff of a worktree session (isolation \"worktree\") versus its base: committed turns and what is not committed yet",
                )
                .with_mime_type("text/x-diff"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let text = self.read(&request.uri).await?;
        let mime = if request.uri.ends_with("/diff") {
            "text/x-diff"
        } else {
            "application/json"
        };
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri.clone()).with_mime_type(mime),
        ])
        .into())
    }

    #[allow(deprecated)] // the subscription style Claude Code and Codex speak (≤ 2025-11-25)
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.read(&request.uri).await?;
        // A session may be named by a prefix: store the full id, which notifications use.
        let uri = self.normalize_uri(&request.uri).await;
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((uri, ctx.peer));
        Ok(())
    }

    /// 2026-07-28 `subscriptions/listen`: resource updates for zwarm's own resources (rmcp
    /// intersects this with what was requested and what `get_info` advertises).
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| u.starts_with("zwarm://"))
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let sink = context.sink().clone();
        let mut uris = Vec::new();
        for u in sink.accepted().resource_subscriptions.iter().flatten() {
            uris.push((u.clone(), self.normalize_uri(u).await));
        }
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((sink.clone(), uris));
        context.cancelled().await;
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _)| s.id() != sink.id());
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = self.normalize_uri(&request.uri).await;
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(u, _)| *u != uri && *u != request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            "orchestrate",
            Some(
                "System prompt that teaches an orchestrator to use zwarm's tools well: plan, delegate with acceptance criteria, follow up, verify, recover",
            ),
            Some(vec![
                PromptArgument::new("task")
                    .with_description("The overall goal to orchestrate")
                    .with_required(true),
            ]),
        )]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != "orchestrate" {
            return Err(McpError::invalid_params(
                format!(
                    "unknown prompt `{}`; the only prompt is `orchestrate`",
                    request.name
                ),
                None,
            ));
        }
        let task = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("task"))
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                McpError::invalid_params("the `orchestrate` prompt needs a `task` argument", None)
            })?;
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(
            Role::User,
            crate::prompt::orchestrate(&task),
        )])
        .with_description("How to orchestrate coding agents with zwarm")
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::host_wait_policy;

    /// How long each host lets one tool call run before it stops waiting for it (README, "Sync,
    /// async, and host timeouts"; shared/reference/HOSTS.md): (clientInfo.name, seconds, what).
    const HOST_LIMITS: &[(&str, u64, &str)] = &[
        (
            "codex-mcp-client",
            300,
            "Codex cancels the call (tool_timeout_sec)",
        ),
        ("claude-ai", 60, "Claude Desktop cancels the call"),
        (
            "claude-code",
            120,
            "Claude Code moves the call to the background (CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS)",
        ),
    ];

    #[test]
    fn sync_waits_end_before_each_host_gives_up() {
        for (name, limit, what) in HOST_LIMITS {
            let (default, max) = host_wait_policy(Some(name));
            let max = max.unwrap_or_else(|| panic!("{name}: no maximum, but {what} at {limit} s"));
            assert!(
                default <= max && max < *limit,
                "{name}: default {default} s, maximum {max} s, but {what} at {limit} s"
            );
            // Not so short that a sync call rarely gets its answer: most of the host's patience.
            assert!(
                default * 3 >= limit * 2,
                "{name}: default {default} s wastes the host's {limit} s"
            );
        }
        // A host zwarm does not know: below the 60 s that SDK-based clients (the Inspector)
        // allow a request.
        assert!(host_wait_policy(None).0 < 60);
        assert!(host_wait_policy(Some("some-ide")).0 < 60);
    }
}
