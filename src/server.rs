//! The MCP server: five thin tool handlers over the [`Manager`].
//!
//! Each handler parses its arguments, calls the session manager, and shapes the answer. A bad
//! call becomes an `isError` result whose text says what was wrong and what to do next (no
//! structuredContent, so hosts pass the text to the model); it never becomes a protocol error
//! and never takes the server down.

use std::time::Duration;

use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::manager::{DelegateRequest, Manager, ManagerError};
use crate::session::{Mode, SessionStatus};
use crate::tools::*;

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
}

type ToolResult = Result<CallToolResult, McpError>;

fn ok<T: Serialize>(v: &T) -> ToolResult {
    match serde_json::to_value(v) {
        Ok(v) => Ok(CallToolResult::structured(v)),
        Err(e) => Ok(fail(format!(
            "internal error while encoding the result: {e}"
        ))),
    }
}

fn fail(msg: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(msg.into())])
}

fn err(e: ManagerError) -> ToolResult {
    Ok(fail(e.to_string()))
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
    pub fn new(manager: Manager) -> Self {
        ZwarmServer {
            manager,
            tool_router: Self::tool_router(),
        }
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
        let max = host_max.unwrap_or(u64::MAX);
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
        budget: Duration,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<crate::session::Session, ManagerError> {
        let token = ctx.meta.get_progress_token();
        let forward = token.map(|token| {
            let mut rx = self.manager.subscribe();
            let peer = ctx.peer.clone();
            let sid = session_id.to_string();
            let stop = CancellationToken::new();
            let stop2 = stop.clone();
            let handle = tokio::spawn(async move {
                let mut n = 0u32;
                let mut last = tokio::time::Instant::now() - Duration::from_secs(1);
                loop {
                    let notice = tokio::select! {
                        r = rx.recv() => r,
                        _ = stop2.cancelled() => break,
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
                    // Rate limit: at most 5 per second, but never drop the turn's end.
                    if !is_end && last.elapsed() < Duration::from_millis(200) {
                        continue;
                    }
                    last = tokio::time::Instant::now();
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
            // Let the forwarder deliver the final notices already queued.
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.cancel();
            let _ = handle.await;
        }
        if ctx.ct.is_cancelled() {
            // The host gave up on this call (its timeout or the user): stop the turn it started.
            let m = self.manager.clone();
            let sid = session_id.to_string();
            tokio::spawn(async move {
                let _ = m.interrupt(&sid, "interrupted: the MCP client cancelled the tool call that started this turn").await;
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
    ) -> ToolResult {
        let mode = a.mode.clone();
        let id = match self.manager.delegate(DelegateRequest {
            task: a.task,
            adapter: a.adapter,
            mode: a.mode,
            model: a.model,
            working_dir: a.working_dir,
        }) {
            Ok(id) => id,
            Err(e) => return err(e),
        };
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, false);
        let is_async = mode.as_deref().and_then(Mode::parse) == Some(Mode::Async);
        let s = if is_async {
            self.manager.get(&id)
        } else {
            self.wait_turn(&id, budget, &ctx).await
        };
        match s {
            Ok(s) => ok(&turn_report(&s, 1, max)),
            Err(e) => err(e),
        }
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
    ) -> ToolResult {
        let is_async = match a.mode.as_deref().filter(|m| !m.trim().is_empty()) {
            None => false,
            Some(m) => match Mode::parse(m) {
                Some(m) => m == Mode::Async,
                None => return err(ManagerError::UnknownMode(m.to_string())),
            },
        };
        let (id, turn) = match self.manager.converse(&a.session_id, &a.message) {
            Ok(x) => x,
            Err(e) => return err(e),
        };
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, false);
        let s = if is_async {
            self.manager.get(&id)
        } else {
            self.wait_turn(&id, budget, &ctx).await
        };
        match s {
            Ok(s) => ok(&turn_report(&s, turn, max)),
            Err(e) => err(e),
        }
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
    ) -> ToolResult {
        let (budget, max) = self.wait_budget(&ctx, a.wait_seconds, true);
        let s = if budget.is_zero() {
            self.manager.get(&a.session_id)
        } else {
            self.manager.wait(&a.session_id, budget, &ctx.ct).await
        };
        match s {
            Ok(s) => ok(&session_report(&s, max)),
            Err(e) => err(e),
        }
    }

    /// End a session with a verdict (completed, failed or cancelled) and an optional summary.
    /// A running turn is interrupted and its processes stopped.
    #[tool(
        output_schema = schema_for_output::<EndReport>(),
        annotations(title = "End a session", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    async fn end_session(&self, Parameters(a): Parameters<EndArgs>) -> ToolResult {
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
                    return Ok(fail(format!(
                        "unknown verdict `{v}`: use completed, failed or cancelled."
                    )));
                }
            },
        };
        match self.manager.end(&a.session_id, verdict, a.summary).await {
            Ok((s, interrupted)) => ok(&EndReport {
                session_id: s.id.clone(),
                status: s.status,
                summary: s.summary.clone(),
                interrupted_turn: interrupted,
            }),
            Err(e) => err(e),
        }
    }

    /// List sessions (newest first), optionally only those with one status.
    #[tool(
        output_schema = schema_for_output::<SessionList>(),
        annotations(title = "List sessions", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_sessions(&self, Parameters(a): Parameters<ListArgs>) -> ToolResult {
        let status = match a.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match SessionStatus::parse(s) {
                Some(st) => Some(st),
                None => {
                    return Ok(fail(format!(
                        "unknown status `{s}`: use queued, running, idle, failed, completed or cancelled, or omit it."
                    )));
                }
            },
        };
        let sessions: Vec<SessionRow> = self.manager.list(status).iter().map(session_row).collect();
        ok(&SessionList {
            count: sessions.len(),
            sessions,
        })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ZwarmServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("zwarm", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
