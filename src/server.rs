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
    SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{Peer, RequestContext};
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
list_sessions shows everything, including sessions from earlier runs. Every result has next_step: follow it.";

#[derive(Clone)]
pub struct ZwarmServer {
    manager: Manager,
    tool_router: rmcp::handler::server::router::tool::ToolRouter<ZwarmServer>,
    /// Resource subscriptions: (uri, the client that asked).
    subs: Subscriptions,
    shutdown: CancellationToken,
}

/// Resource subscriptions: (uri, the client that asked).
type Subscriptions = Arc<Mutex<Vec<(String, Peer<RoleServer>)>>>;

pub const SESSIONS_URI: &str = "zwarm://sessions";
pub const EVENTS_URI: &str = "zwarm://events";

/// A tool's result: `Json(T)` becomes `structuredContent`; `Err(text)` an `isError` result
/// whose text says what was wrong and what to do (no structuredContent, so it cannot
/// contradict the declared output schema).
type ToolResult<T> = Result<Json<T>, String>;

fn err(e: ManagerError) -> String {
    e.to_string()
}

/// Sync-wait policy for the calling host: (default, maximum) seconds. Hosts cancel tool calls
/// after their own timeout (Codex 300 s, Claude Desktop about 60 s); zwarm returns earlier with
/// status running so the orchestrator can poll instead of losing the call.
pub fn host_wait_policy(client_name: Option<&str>) -> (u64, Option<u64>) {
    let name = client_name.unwrap_or("").to_ascii_lowercase();
    if name.contains("codex") {
        (240, Some(280))
    } else if name == "claude-code" {
        (240, None)
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
        let mut changes = manager.subscribe_changes();
        let subs2 = subs.clone();
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
                        || changed.iter().any(|id| session_uri(id) == u);
                    if hit {
                        let _ = peer
                            .notify_resource_updated(ResourceUpdatedNotificationParam::new(u))
                            .await;
                    }
                }
            }
        });
        ZwarmServer {
            manager,
            tool_router: Self::tool_router(),
            subs,
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
        let name = ctx.peer.peer_info().map(|p| p.client_info.name.clone());
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
        let s = if budget.is_zero() {
            self.manager.get(&a.session_id).await
        } else {
            self.manager.wait(&a.session_id, budget, &ctx.ct).await
        }
        .map_err(err)?;
        self.manager.attach_notes(&s.id, None, &notes).await;
        let mut r = session_report(&s, max, self.max_chars());
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
        let (s, interrupted) = self
            .manager
            .end(&a.session_id, verdict, a.summary)
            .await
            .map_err(err)?;
        Ok(Json(EndReport {
            session_id: s.id.clone(),
            status: s.status,
            summary: s.summary.clone(),
            interrupted_turn: interrupted,
            watchers: notes,
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
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let text = self.read(&request.uri).await?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri.clone()).with_mime_type("application/json"),
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

    #[test]
    fn sync_waits_stay_under_each_hosts_timeout() {
        // Codex cancels tool calls after 300 s, Claude Desktop after about 60 s.
        assert_eq!(host_wait_policy(Some("codex-mcp-client")), (240, Some(280)));
        assert_eq!(host_wait_policy(Some("claude-ai")), (45, Some(55)));
        assert_eq!(host_wait_policy(Some("claude-code")), (240, None));
        assert_eq!(host_wait_policy(None), (45, None));
    }
}
