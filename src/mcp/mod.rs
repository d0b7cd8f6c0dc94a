//! Everything MCP: the server a host talks to over stdio.
//!
//! * [`handlers`] — the five tools, thin: parse, ask the watchers, call the session manager,
//!   shape the answer;
//! * [`dto`] — tool arguments and results (the contract, as Rust types); [`report`] builds the
//!   results and their `next_step`; [`errors`] turns session-manager errors into host-facing
//!   text with the next step;
//! * [`resources`] — `zwarm://` resources and subscriptions; [`prompts`] — the `orchestrate`
//!   prompt; [`progress`] — progress notifications while a sync call waits;
//! * [`host`] — per-host policy (sync-wait budgets, instructions, a server inside an executor's
//!   turn); [`validate`] — checks every call gets up front; [`framing`] — the line layer in front
//!   of rmcp that answers every request line.

pub mod approval;
pub mod dto;
pub mod errors;
pub mod framing;
mod handlers;
pub mod host;
mod progress;
mod prompts;
#[cfg(test)]
mod protocol_tests;
pub mod report;
pub mod resources;
pub mod validate;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, ResourceContents, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RunningService, ServerInitializeError, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tokio_util::sync::CancellationToken;

use crate::sessions::Manager;

pub use host::{EXECUTOR_TURN_ENV, INSTRUCTIONS, host_wait_policy, inside_executor_turn};
pub use resources::{EVENTS_URI, SESSIONS_URI};

#[derive(Clone)]
pub struct ZwarmServer {
    manager: Manager,
    tool_router: rmcp::handler::server::router::tool::ToolRouter<ZwarmServer>,
    subs: resources::Subscriptions,
    listeners: resources::Listeners,
    shutdown: CancellationToken,
    /// Started inside an executor's turn: no tools, resources or prompts (see [`host`]).
    executor_turn: bool,
}

impl ZwarmServer {
    /// Must be called inside a tokio runtime: it starts the task that turns session changes
    /// into resource-updated notifications for subscribers.
    pub fn new(manager: Manager) -> Self {
        let executor_turn = inside_executor_turn();
        if executor_turn {
            tracing::warn!(
                "{EXECUTOR_TURN_ENV} is set: this server runs inside a zwarm executor's turn and offers no tools, resources or prompts (an executor must not start, continue or end sessions, nor read the orchestrator's)"
            );
        }
        let subs = resources::Subscriptions::default();
        let listeners = resources::Listeners::default();
        if !executor_turn {
            resources::spawn_notifier(&manager, subs.clone(), listeners.clone());
        }
        let mut tool_router = Self::tool_router();
        host::name_executors(&mut tool_router, &manager.config().default_adapter);
        ZwarmServer {
            manager,
            tool_router,
            subs,
            listeners,
            shutdown: CancellationToken::new(),
            executor_turn,
        }
    }

    /// Whether this server runs inside an executor's turn (default: from the environment,
    /// [`EXECUTOR_TURN_ENV`]): then it offers no tools, resources or prompts.
    pub fn with_executor_turn(mut self, inside: bool) -> Self {
        self.executor_turn = inside;
        self
    }

    /// The token that ends the whole server (signal or stdin EOF). A tool call cancelled
    /// because of it must not record "the client cancelled" as the turn's reason.
    pub fn with_shutdown(mut self, ct: CancellationToken) -> Self {
        self.shutdown = ct;
        self
    }

    /// Serve over a (stdin, stdout) pair through zwarm's framing layer ([`framing`]), which
    /// answers every request line (parse errors, oversized requests, bad parameters) before
    /// rmcp sees it. `zwarm serve` should call this instead of rmcp's `serve_with_ct`.
    pub async fn serve_framed<R, W>(
        self,
        (input, output): (R, W),
        ct: CancellationToken,
    ) -> Result<RunningService<RoleServer, ZwarmServer>, ServerInitializeError>
    where
        R: tokio::io::AsyncRead + Send + Unpin + 'static,
        W: tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        framing::serve(self, input, output, ct).await
    }

    fn max_chars(&self) -> usize {
        self.manager.config().max_response_chars
    }

    fn max_task_bytes(&self) -> usize {
        self.manager.config().max_task_bytes
    }

    fn refused_in_turn() -> McpError {
        McpError::invalid_request(host::EXECUTOR_TURN_INSTRUCTIONS, None)
    }
}

fn error_result(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

#[rmcp::tool_handler(router = self.tool_router)]
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
        .with_instructions(if self.executor_turn {
            host::EXECUTOR_TURN_INSTRUCTIONS.to_string()
        } else {
            host::instructions()
        })
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        if self.executor_turn {
            return Ok(ListToolsResult::with_all_items(vec![]));
        }
        Ok(ListToolsResult::with_all_items(self.tool_router.list_all()))
    }

    /// Every tool call, in its trace span when traces are exported (see [`crate::telemetry`]).
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if self.executor_turn {
            return Ok(error_result(host::EXECUTOR_TURN_INSTRUCTIONS.into()));
        }
        if let Some(tool) = self.tool_router.get(&request.name) {
            let args = request.arguments.as_ref();
            let why = validate::check_arguments(&request.name, args)
                .or_else(|| validate::check_types(&tool.input_schema, args));
            if let Some(why) = why {
                return Ok(error_result(why));
            }
        }
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
        if self.executor_turn {
            return Ok(ListResourcesResult::with_all_items(vec![]));
        }
        Ok(resources::resource_list())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        if self.executor_turn {
            return Ok(ListResourceTemplatesResult::with_all_items(vec![]));
        }
        Ok(resources::resource_templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if self.executor_turn {
            return Err(Self::refused_in_turn());
        }
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
        if self.executor_turn {
            return Err(Self::refused_in_turn());
        }
        let uri = self.subscription_uri(&request.uri).await?;
        self.subscribe_uri(uri, ctx.peer);
        Ok(())
    }

    /// 2026-07-28 `subscriptions/listen`: resource updates for zwarm's own resources (rmcp
    /// intersects this with what was requested and what `get_info` advertises).
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        if self.executor_turn {
            return Some(accepted);
        }
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            let mut seen = std::collections::BTreeSet::new();
            uris.iter()
                .filter(|u| u.starts_with("zwarm://") && seen.insert(u.as_str()))
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
        self.add_listener(sink.clone(), uris);
        context.cancelled().await;
        self.remove_listener(&sink);
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = self.normalize_uri(&request.uri).await;
        self.unsubscribe_uri(&uri, &request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        if self.executor_turn {
            return Ok(ListPromptsResult::with_all_items(vec![]));
        }
        Ok(prompts::prompt_list())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if self.executor_turn {
            return Err(Self::refused_in_turn());
        }
        Ok(prompts::get(&request)?.into())
    }
}
