//! The spans zwarm exports: tool calls, turns, commands, watcher firings.

use super::*;

/// The span of one tool call (disabled when export is off). Its parent is the W3C trace
/// context the request carries in `_meta` (`traceparent`, `tracestate`), if any.
pub fn tool_span(
    request: &rmcp::model::CallToolRequestParams,
    ctx: &rmcp::service::RequestContext<rmcp::RoleServer>,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let tool = one_line(&request.name, 64);
    let args = request.arguments.as_ref();
    let session_ref = args
        .and_then(|a| a.get("session_id"))
        .and_then(|v| v.as_str())
        .map(|s| one_line(s, 64));
    let span = tracing::info_span!(
        target: TARGET,
        "tool",
        otel.name = %format_args!("tools/call {tool}"),
        otel.kind = "server",
        mcp.method.name = "tools/call",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %tool,
        jsonrpc.request.id = %request_id(&ctx.id),
        zwarm.session.ref = session_ref.as_deref(),
        zwarm.session.id = Empty,
        zwarm.turn = Empty,
        zwarm.result.status = Empty,
        zwarm.result.is_error = Empty,
        error.type = Empty,
    );
    let mut keys: Vec<StringValue> = args
        .map(|a| {
            a.keys()
                .take(MAX_ITEMS)
                .map(|k| one_line(k, 64).into())
                .collect()
        })
        .unwrap_or_default();
    keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    span.set_attribute(
        "zwarm.tool.argument_keys",
        OtelValue::Array(Array::String(keys)),
    );
    let meta_value = |f: fn(&rmcp::model::MetaObject) -> Option<&str>| {
        f(&ctx.meta).or_else(|| request.meta.as_ref().and_then(|m| f(m)))
    };
    if let Some(parent) = remote_context(
        meta_value(rmcp::model::MetaObject::get_traceparent),
        meta_value(rmcp::model::MetaObject::get_tracestate),
    ) {
        let _ = span.set_parent(parent);
    }
    span
}

fn request_id(id: &rmcp::model::RequestId) -> String {
    match serde_json::to_value(id) {
        Ok(serde_json::Value::String(s)) => one_line(&s, 64),
        Ok(v) => one_line(&v.to_string(), 64),
        Err(_) => String::new(),
    }
}

/// A W3C trace context from its two header values; `None` when `traceparent` is missing or
/// not valid.
pub fn remote_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<opentelemetry::Context> {
    let tp = traceparent.filter(|t| t.len() <= 128)?;
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert("traceparent".into(), tp.to_string());
    if let Some(ts) = tracestate.filter(|t| t.len() <= 1024) {
        carrier.insert("tracestate".into(), ts.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Record a tool call's outcome on its span: status, session, turn, isError.
pub fn tool_done(span: &Span, result: &Result<rmcp::model::CallToolResponse, rmcp::ErrorData>) {
    if span.is_disabled() {
        return;
    }
    if let Some(s) = STATS.get() {
        s.report_drops();
    }
    use rmcp::model::CallToolResponse;
    match result {
        Ok(CallToolResponse::Complete(r)) => {
            let is_error = r.is_error == Some(true);
            span.record("zwarm.result.is_error", is_error);
            let sc = r.structured_content.as_ref();
            let field = |k: &str| sc.and_then(|v| v.get(k));
            if let Some(id) = field("session_id").and_then(|v| v.as_str()) {
                span.record("zwarm.session.id", one_line(id, 64).as_str());
            }
            if let Some(t) = field("turn").and_then(|v| v.as_u64()) {
                span.record("zwarm.turn", int(t));
            }
            match field("status").and_then(|v| v.as_str()) {
                Some(s) => span.record("zwarm.result.status", one_line(s, 32).as_str()),
                None if is_error => span.record("zwarm.result.status", "error"),
                None => span.record("zwarm.result.status", "ok"),
            };
            if is_error {
                let text: String = r
                    .content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
                    .collect::<Vec<_>>()
                    .join(" ");
                span.record("error.type", "tool_error");
                span.set_status(Status::error(one_line(&text, MAX_TEXT)));
            }
        }
        Ok(CallToolResponse::InputRequired(_)) => {
            span.record("zwarm.result.status", "input_required");
        }
        Ok(CallToolResponse::Task(_)) => {
            span.record("zwarm.result.status", "task");
        }
        Ok(_) => {
            span.record("zwarm.result.status", "other");
        }
        Err(e) => {
            span.record("zwarm.result.status", "protocol_error");
            span.record("error.type", i64::from(e.code.0));
            span.set_status(Status::error(one_line(&e.message, MAX_TEXT)));
        }
    }
}

/// The span of a turn that is starting, as a child of the current span (the tool call that
/// starts it) by OpenTelemetry context only: the turn may outlive the call, and the call's
/// span must end when the call returns. `describe` is called only when export is on.
pub fn turn_span(session_id: &str, index: u32, describe: impl FnOnce() -> Adapter) -> Span {
    if !enabled() {
        return Span::none();
    }
    let adapter = describe();
    let system = crate::executor::get(adapter).provider();
    let parent = Span::current().context();
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "turn",
        otel.name = %format_args!("invoke_agent {}", adapter.as_str()),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = adapter.as_str(),
        gen_ai.system = system,
        gen_ai.provider.name = system,
        gen_ai.conversation.id = session_id,
        gen_ai.request.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.usage.cache_read.input_tokens = Empty,
        zwarm.usage.reasoning_output_tokens = Empty,
        zwarm.cost_usd = Empty,
        zwarm.session.id = session_id,
        zwarm.turn = i64::from(index),
        zwarm.turn.status = Empty,
        zwarm.turn.duration_ms = Empty,
        process.exit.code = Empty,
        zwarm.exit.signal = Empty,
        error.type = Empty,
    );
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// Add `TRACEPARENT` and `TRACESTATE` of the current span (the turn's) to an executor's
/// environment, so that an executor exporting its own telemetry joins the trace.
pub fn with_trace_env(mut launch: crate::runner::Launch) -> crate::runner::Launch {
    if !enabled() {
        return launch;
    }
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return launch;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let env = &mut launch;
    if let Some(tp) = carrier.remove("traceparent") {
        env.env_set.push(("TRACEPARENT".into(), tp));
    }
    match carrier.remove("tracestate").filter(|s| !s.is_empty()) {
        Some(ts) => env.env_set.push(("TRACESTATE".into(), ts)),
        // Not one inherited from zwarm's own environment, which belongs to another span.
        None => env.env_remove.push("TRACESTATE".into()),
    }
    launch
}

/// Per-turn trace state, kept by the turn's supervisor: the executor's commands that have
/// started and not yet finished, each an open span.
#[derive(Default)]
pub struct TurnTrace {
    pub(super) commands: HashMap<String, Span>,
}

impl TurnTrace {
    /// Trace one executor event (inside the turn's span).
    pub fn event(&mut self, ev: &ExecutorEvent) {
        if !enabled() {
            return;
        }
        match ev {
            ExecutorEvent::CommandStarted { id, command }
                if self.commands.len() < MAX_OPEN_COMMANDS =>
            {
                self.commands.insert(id.clone(), command_span(command));
            }
            ExecutorEvent::CommandFinished {
                id,
                command,
                exit_code,
                ok,
                ..
            } => {
                let span = self
                    .commands
                    .remove(id)
                    .unwrap_or_else(|| command_span(command));
                if let Some(code) = exit_code {
                    span.record("process.exit.code", *code);
                }
                span.record("zwarm.command.ok", *ok);
                if !*ok {
                    span.record("error.type", "command_failed");
                    span.set_status(Status::error(match exit_code {
                        Some(c) => format!("exit {c}"),
                        None => "failed".to_string(),
                    }));
                }
            }
            ExecutorEvent::FilesChanged { changes } => {
                for c in changes.iter().take(MAX_ITEMS) {
                    tracing::info!(
                        target: TARGET,
                        {
                            file.path = %one_line(&c.path, MAX_TEXT),
                            zwarm.change.kind = %one_line(&c.kind, 16),
                        },
                        "file_changed"
                    );
                }
            }
            ExecutorEvent::ToolCall { name, .. } => {
                tracing::info!(target: TARGET, { gen_ai.tool.name = %one_line(name, 64) }, "tool_call");
            }
            ExecutorEvent::PermissionDenied(d) => {
                tracing::info!(target: TARGET, { gen_ai.tool.name = %one_line(&d.tool, 64) }, "permission_denied");
            }
            ExecutorEvent::TurnFailed {
                message,
                api_status,
                ..
            } => {
                tracing::info!(
                    target: TARGET,
                    {
                        zwarm.error = %one_line(message, MAX_TEXT),
                        http.response.status_code = api_status.map(i64::from),
                    },
                    "turn_failed"
                );
            }
            _ => {}
        }
    }
}

fn command_span(command: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "command",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = "command",
        process.command_line = %one_line(command, MAX_TEXT),
        process.exit.code = Empty,
        zwarm.command.ok = Empty,
        error.type = Empty,
    )
}

/// Record the executor process's exit on the current span (the turn's).
pub fn turn_exit(exit: Option<&std::process::ExitStatus>) {
    if !enabled() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let span = Span::current();
    match exit {
        Some(e) => match (e.code(), e.signal()) {
            (Some(code), _) => span.record("process.exit.code", code),
            (None, Some(sig)) => span.record("zwarm.exit.signal", sig),
            _ => &span,
        },
        None => &span,
    };
}

/// Record the end of turn `index` on the current span (the turn's): status, model, tokens,
/// cost, duration.
pub fn turn_finished(s: &Session, index: u32) {
    if !enabled() {
        return;
    }
    let Some(t) = s.turn(index) else {
        return;
    };
    let span = Span::current();
    let status = match t.status {
        TurnStatus::Queued => "queued",
        TurnStatus::Running => "running",
        TurnStatus::Completed => "completed",
        TurnStatus::Failed => "failed",
        TurnStatus::Interrupted => "interrupted",
    };
    span.record("zwarm.turn.status", status);
    if let Some(m) = &s.model {
        span.record("gen_ai.request.model", one_line(m, 64).as_str());
    }
    span.record("gen_ai.usage.input_tokens", int(t.usage.input_tokens));
    span.record("gen_ai.usage.output_tokens", int(t.usage.output_tokens));
    span.record(
        "gen_ai.usage.cache_read.input_tokens",
        int(t.usage.cached_input_tokens),
    );
    span.record(
        "zwarm.usage.reasoning_output_tokens",
        int(t.usage.reasoning_output_tokens),
    );
    if let Some(c) = t.cost_usd {
        span.record("zwarm.cost_usd", c);
    }
    let ms = |ts: &str| humantime::parse_rfc3339_weak(ts).ok();
    if let (Some(a), Some(b)) = (ms(&t.started_at), t.ended_at.as_deref().and_then(ms))
        && let Ok(d) = b.duration_since(a)
    {
        span.record("zwarm.turn.duration_ms", int(d.as_millis() as u64));
    }
    if t.status == TurnStatus::Failed {
        span.record("error.type", "turn_failed");
        span.set_status(Status::error(one_line(
            t.error.as_deref().unwrap_or("failed"),
            MAX_TEXT,
        )));
    }
}

/// OpenTelemetry has no unsigned integers (and `tracing-opentelemetry` records a `u64` as a
/// string): counts go in as `i64`.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A watcher firing, as an event on the current span (a tool call's or a turn's).
pub fn watcher_fired(f: &crate::watch::Firing) {
    if !enabled() {
        return;
    }
    let action = serde_json::to_value(f.action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    tracing::info!(
        target: TARGET,
        {
            zwarm.watcher = %one_line(&f.watcher, 64),
            zwarm.watcher.action = %action,
            zwarm.watcher.message = %one_line(&f.message, MAX_TEXT),
        },
        "watcher_fired"
    );
}

/// The current span's context, to parent work that runs after it ended (`None` when export
/// is off).
pub fn capture() -> Option<opentelemetry::Context> {
    enabled().then(|| Span::current().context())
}

/// A span for checks that run after a turn's end (the background watchers), as a child of the
/// turn by OpenTelemetry context.
pub fn after_turn_span(turn: &Option<opentelemetry::Context>) -> Span {
    let Some(cx) = turn.as_ref().filter(|_| enabled()) else {
        return Span::none();
    };
    let span = tracing::info_span!(target: TARGET, parent: None, "after_turn", otel.name = "watchers after_turn");
    let _ = span.set_parent(cx.clone());
    span
}
