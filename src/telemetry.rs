//! Traces: OpenTelemetry spans for tool calls, turns and executor work, exported over OTLP/HTTP
//! (protobuf) when configured. Off by default.
//!
//! A trace looks like this:
//!
//! ```text
//! tools/call delegate                 one span per tool call; its parent is the request's
//! │                                   `_meta.traceparent` when the client sends one
//! └─ invoke_agent codex               one span per turn; an async turn keeps the call that
//!    │                                started it as its parent, long after the call returned
//!    ├─ command                       one span per executor command, with its exit code
//!    └─ events: file_changed, tool_call, permission_denied, watcher_fired, turn_failed
//! ```
//!
//! Every executor process gets `TRACEPARENT` (and `TRACESTATE`) of its turn's span, so an
//! executor that exports telemetry of its own joins the same trace.
//!
//! The spans are `tracing` spans and events with the target [`TARGET`]. Only the exporter's
//! layer listens to that target (the stderr log filters it out), so with export off their
//! callsites are disabled: no exporter thread runs, and each helper below returns after one
//! relaxed atomic load.
//!
//! Export never blocks or fails a call: finished spans go into the SDK's bounded batch queue
//! (a full queue drops spans; they are counted and the count is logged), a dedicated thread
//! sends them with a blocking HTTP client that has timeouts, and the server flushes them at
//! shutdown within a bounded time ([`Telemetry::shutdown`]).
//!
//! What spans hold: tool names and the *keys* of their arguments (never the values), session
//! ids, statuses, adapter, model, token counts, cost, exit codes, executor command lines and
//! changed file paths (both cut to a few hundred characters), watcher findings. Never a task, a
//! message or an answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Array, KeyValue, StringValue, Value as OtelValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use serde::{Deserialize, Serialize};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::event::ExecutorEvent;
use crate::model::{Adapter, Session, TurnStatus};
use crate::text::one_line;

/// The `tracing` target of every span and event meant for the trace exporter only.
pub const TARGET: &str = "zwarm_otel";
/// Where spans go when export is on and no endpoint is configured (the OTLP/HTTP default).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/traces";
/// The service name when neither `telemetry.service_name` nor `OTEL_SERVICE_NAME` sets one.
pub const DEFAULT_SERVICE_NAME: &str = "zwarm";

/// Longest command line, file path or message kept in a span.
const MAX_TEXT: usize = 300;
/// Most argument keys listed on a tool span, and file changes recorded per executor event.
const MAX_ITEMS: usize = 32;
/// Most command spans open at once in one turn (a command that never reports its end does not
/// keep memory growing).
const MAX_OPEN_COMMANDS: usize = 64;
/// Timeout of one export request (connect, send, answer).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the collector.
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The `[telemetry]` table.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `true`: export traces; `false`: never (whatever the `OTEL_*` variables say); unset:
    /// export when an endpoint is configured, here or by `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub enabled: Option<bool>,
    /// OTLP/HTTP traces URL, e.g. `https://trace.wandb.ai/otel/v1/traces`. A URL without a
    /// path (`http://localhost:4318`) gets `/v1/traces`. Trusted layers only.
    pub endpoint: Option<String>,
    /// Extra request headers, `name=value` pairs separated by commas, values percent-encoded
    /// (the `OTEL_EXPORTER_OTLP_HEADERS` format). Trusted layers only; never logged.
    #[serde(skip_serializing)]
    pub headers: Option<String>,
    /// `service.name` of the spans (else `OTEL_SERVICE_NAME`, else `zwarm`).
    pub service_name: Option<String>,
}

impl std::fmt::Debug for TelemetryConfig {
    // Headers carry credentials: their names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names = self.headers.as_deref().map(|h| {
            parse_headers(h)
                .map(|v| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>())
                .unwrap_or_default()
        });
        f.debug_struct("TelemetryConfig")
            .field("enabled", &self.enabled)
            .field("endpoint", &self.endpoint)
            .field("header_names", &header_names)
            .field("service_name", &self.service_name)
            .finish()
    }
}

/// What export is configured to do, from the `[telemetry]` table and the `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The full traces URL.
    pub endpoint: String,
    /// Headers from `telemetry.headers` (the exporter adds `OTEL_EXPORTER_OTLP_HEADERS` and
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` itself; those win for a header named in both).
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    /// Things worth a warning that do not stop export.
    pub warnings: Vec<String>,
}

/// Decide whether to export, and where. `env` reads an environment variable (empty counts as
/// unset). `Ok(None)`: export is off.
pub fn resolve(
    cfg: &TelemetryConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, String> {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let cfg_endpoint = cfg
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let base_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
    let on = match cfg.enabled {
        Some(on) => on,
        None => {
            let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
                || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
            !disabled
                && (cfg_endpoint.is_some() || traces_endpoint.is_some() || base_endpoint.is_some())
        }
    };
    if !on {
        return Ok(None);
    }
    let (endpoint, from) = if let Some(e) = cfg_endpoint {
        (with_traces_path(e), "telemetry.endpoint")
    } else if let Some(e) = traces_endpoint {
        (e, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    } else if let Some(e) = base_endpoint {
        (
            format!("{}/v1/traces", e.trim_end_matches('/')),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    } else {
        (DEFAULT_ENDPOINT.to_string(), "the default")
    };
    let lower = endpoint.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://"))
        || endpoint.parse::<ureq::http::Uri>().is_err()
    {
        return Err(format!(
            "the traces endpoint `{endpoint}` (from {from}) is not an http:// or https:// URL"
        ));
    }
    let headers = match cfg.headers.as_deref() {
        Some(h) => parse_headers(h).map_err(|e| format!("telemetry.headers: {e}"))?,
        None => vec![],
    };
    let service_name = cfg
        .service_name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    let mut warnings = vec![];
    for v in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = var(v).filter(|p| p != "http/protobuf") {
            warnings.push(format!(
                "{v}={p} is ignored: zwarm exports traces as OTLP over HTTP with protobuf (http/protobuf)"
            ));
        }
    }
    Ok(Some(Settings {
        endpoint,
        headers,
        service_name,
        warnings,
    }))
}

/// `http://host:4318` → `http://host:4318/v1/traces`; a URL with a path is kept as it is.
fn with_traces_path(endpoint: &str) -> String {
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    if path.is_empty() || path == "/" {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_string()
    }
}

/// `name=value,name2=value2` with percent-encoded values (the `OTEL_EXPORTER_OTLP_HEADERS`
/// format). Errors name the offending entry by position, never its value.
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![];
    for (i, part) in s.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("entry {} has no `=`", i + 1));
        };
        let k = k.trim();
        if k.is_empty() || ureq::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(format!("entry {} has no valid header name", i + 1));
        }
        let v = percent_decode(v.trim())
            .ok_or_else(|| format!("the value of `{k}` is not valid percent-encoded UTF-8"))?;
        if ureq::http::HeaderValue::from_str(&v).is_err() {
            return Err(format!("the value of `{k}` is not a valid header value"));
        }
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// Installing the subscriber and the exporter

/// The stderr log's filter: `ZWARM_LOG` (default `info`), never the trace-only target.
pub fn log_filter() -> tracing_subscriber::EnvFilter {
    let f = tracing_subscriber::EnvFilter::try_from_env("ZWARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format!("{TARGET}=off").parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    }
}

/// A subscriber that logs to stderr only: for the time before [`install`] (config loading).
pub fn stderr_subscriber() -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .finish()
}

/// The trace exporter, while it runs.
pub struct Telemetry {
    provider: SdkTracerProvider,
    stats: Arc<Stats>,
}

/// Install the process-wide `tracing` subscriber: the stderr log, plus the trace exporter when
/// the config (or the `OTEL_*` variables) ask for it. Returns the exporter, to flush at exit.
/// A bad telemetry setting is logged and leaves export off; it never stops the server.
pub fn install(cfg: &TelemetryConfig) -> Option<Telemetry> {
    let stderr = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    };
    let built = resolve(cfg, &|k| std::env::var(k).ok())
        .and_then(|s| s.map(|s| build(&s).map(|b| (s, b))).transpose());
    match built {
        Ok(Some((settings, (telemetry, tracer)))) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target(TARGET, tracing::Level::TRACE),
                );
            let _ = tracing_subscriber::registry()
                .with(stderr().with_filter(log_filter()))
                .with(otel)
                .try_init();
            ON.store(true, Ordering::Relaxed);
            let header_names: Vec<&str> =
                settings.headers.iter().map(|(k, _)| k.as_str()).collect();
            tracing::info!(endpoint = %settings.endpoint, service = %settings.service_name, headers = ?header_names, "exporting traces (OTLP/HTTP protobuf)");
            for w in &settings.warnings {
                tracing::warn!("{w}");
            }
            Some(telemetry)
        }
        other => {
            // Export off: the stderr log alone, as without this module.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(log_filter())
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .try_init();
            if let Err(e) = other {
                tracing::error!("traces are not exported: {e}");
            }
            None
        }
    }
}

fn build(s: &Settings) -> Result<(Telemetry, opentelemetry_sdk::trace::SdkTracer), String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build(),
    );
    let mut headers: HashMap<String, String> = s.headers.iter().cloned().collect();
    headers
        .entry("User-Agent".into())
        .or_insert_with(|| format!("zwarm/{}", env!("CARGO_PKG_VERSION")));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(s.endpoint.clone())
        .with_headers(headers)
        .with_http_client(UreqClient(agent))
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    // A bounded queue, batches, one thread (OTEL_BSP_* tune it; defaults: 2048 spans, sent
    // every 5 s or by 512). zwarm keeps the queue's bound itself, to count what it drops: the
    // SDK's own queue is a batch larger, so it never drops a span unseen.
    let env_usize = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let queue = env_usize("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(2048).max(1);
    let batch_size = env_usize("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        .unwrap_or(512)
        .clamp(1, queue);
    let stats = Arc::new(Stats {
        queue: queue as u64,
        ..Stats::default()
    });
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        stats: stats.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(queue + batch_size)
            .with_max_export_batch_size(batch_size)
            .build(),
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Ends {
            inner: batch,
            stats: stats.clone(),
        })
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(s.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("zwarm");
    let _ = STATS.set(stats.clone());
    Ok((Telemetry { provider, stats }, tracer))
}

impl Telemetry {
    /// Export what is queued and stop, waiting at most `timeout` (blocking: call it off the
    /// async workers). Logs how many spans were exported and how many were lost.
    pub fn shutdown(&self, timeout: Duration) {
        ON.store(false, Ordering::Relaxed);
        let r = self.provider.shutdown_with_timeout(timeout);
        self.stats.closed.store(true, Ordering::Relaxed);
        let s = &self.stats;
        let accepted = s.accepted.load(Ordering::Relaxed);
        let dropped = s.dropped.load(Ordering::Relaxed);
        let exported = s.exported.load(Ordering::Relaxed);
        let failed = s.failed.load(Ordering::Relaxed);
        let unsent = accepted.saturating_sub(exported + failed);
        if let Err(e) = &r {
            tracing::warn!(error = %e, "traces: the final flush did not complete");
        }
        let spans = accepted + dropped;
        if failed > 0 || dropped > 0 || unsent > 0 {
            tracing::warn!(
                spans,
                exported,
                failed,
                dropped,
                unsent,
                "traces: some spans were not exported (failed: the collector refused them or could not be reached; dropped: the export queue was full; unsent: still queued when the final flush ran out of time)"
            );
        } else {
            tracing::info!(spans, exported, "traces flushed");
        }
    }
}

/// The exporter's counts, for the log. Set once the exporter runs.
static STATS: std::sync::OnceLock<Arc<Stats>> = std::sync::OnceLock::new();

#[derive(Debug, Default)]
struct Stats {
    /// The export queue's bound (spans queued or being sent).
    queue: u64,
    /// Spans put in the queue.
    accepted: AtomicU64,
    /// Spans dropped because the queue was full.
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    /// Set after shutdown: spans that end later are not sent to a stopped queue.
    closed: AtomicBool,
    /// Drops already logged, and when (at most one line a minute).
    reported: AtomicU64,
    last_report: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl Stats {
    /// Log new drops, at most once a minute. Called where logging is safe (a tool call's end,
    /// the export thread), never from inside the subscriber.
    fn report_drops(&self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped == self.reported.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut last = self.last_report.lock();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        self.reported.store(dropped, Ordering::Relaxed);
        tracing::warn!(
            dropped,
            queue = self.queue,
            "traces: spans dropped so far because the export queue was full (the collector is slow or unreachable); tool calls are not affected"
        );
    }
}

/// In front of the batch processor: counts the spans that end, and drops those that do not fit
/// in the queue.
#[derive(Debug)]
struct Ends<P> {
    inner: P,
    stats: Arc<Stats>,
}

impl<P: SpanProcessor> SpanProcessor for Ends<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let s = &self.stats;
        if s.closed.load(Ordering::Relaxed) {
            return;
        }
        let done = s.exported.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed);
        if s.accepted.load(Ordering::Relaxed).saturating_sub(done) >= s.queue {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.accepted.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the exporter sent and what it could not.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    stats: Arc<Stats>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        let counter = if r.is_ok() {
            &self.stats.exported
        } else {
            &self.stats.failed
        };
        counter.fetch_add(n, Ordering::Relaxed);
        self.stats.report_drops();
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: ureq, blocking, on the batch processor's own thread (which
/// drives each export with a blocking executor), with an overall timeout per request.
#[derive(Debug)]
struct UreqClient(ureq::Agent);

#[async_trait::async_trait]
impl HttpClient for UreqClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut answer = self.0.run(Request::from_parts(parts, body.to_vec()))?;
        let status = answer.status();
        let headers = std::mem::take(answer.headers_mut());
        let body = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()?;
        let mut out = Response::builder().status(status).body(Bytes::from(body))?;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Spans

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
pub fn with_trace_env(mut launch: crate::process::Launch) -> crate::process::Launch {
    if !enabled() {
        return launch;
    }
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return launch;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let env = &mut launch.spec;
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
    commands: HashMap<String, Span>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn cfg(enabled: Option<bool>, endpoint: Option<&str>) -> TelemetryConfig {
        TelemetryConfig {
            enabled,
            endpoint: endpoint.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn off_unless_configured() {
        assert_eq!(resolve(&cfg(None, None), &env(&[])), Ok(None));
        assert_eq!(
            resolve(
                &cfg(Some(false), Some("http://x:4318")),
                &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://y:4318")])
            ),
            Ok(None)
        );
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://y:4318"), off]);
            assert_eq!(resolve(&cfg(None, None), &e), Ok(None), "{off:?}");
        }
        // Empty values count as unset.
        assert_eq!(
            resolve(
                &cfg(None, Some(" ")),
                &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])
            ),
            Ok(None)
        );
    }

    #[test]
    fn endpoint_precedence_and_paths() {
        let ep = |c: TelemetryConfig, e: &[(&str, &str)]| {
            resolve(&c, &env(e)).expect("valid").expect("on").endpoint
        };
        assert_eq!(ep(cfg(Some(true), None), &[]), DEFAULT_ENDPOINT);
        assert_eq!(
            ep(
                cfg(None, None),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]
            ),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            ep(
                cfg(None, None),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom")
                ]
            ),
            "http://t:1/custom"
        );
        assert_eq!(
            ep(
                cfg(None, Some("http://cfg:4318")),
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom")]
            ),
            "http://cfg:4318/v1/traces"
        );
        assert_eq!(
            ep(
                cfg(None, Some("https://trace.wandb.ai/otel/v1/traces")),
                &[]
            ),
            "https://trace.wandb.ai/otel/v1/traces"
        );
        assert!(resolve(&cfg(None, Some("localhost:4318")), &env(&[])).is_err());
    }

    #[test]
    fn service_name_and_headers() {
        let c = TelemetryConfig {
            enabled: Some(true),
            headers: Some("Authorization=Basic%20YXBpOmtleQ==, project_id=me/proj".into()),
            ..Default::default()
        };
        let s = resolve(&c, &env(&[("OTEL_SERVICE_NAME", "svc")]))
            .expect("valid")
            .expect("on");
        assert_eq!(s.service_name, "svc");
        assert_eq!(
            s.headers,
            vec![
                (
                    "Authorization".to_string(),
                    "Basic YXBpOmtleQ==".to_string()
                ),
                ("project_id".to_string(), "me/proj".to_string())
            ]
        );
        let s = resolve(&cfg(Some(true), None), &env(&[]))
            .expect("valid")
            .expect("on");
        assert_eq!(s.service_name, "zwarm");
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("a=%zz").is_err());
        assert!(parse_headers("bad name=x").is_err());
        // Debug never shows header values.
        let shown = format!("{c:?}");
        assert!(
            shown.contains("Authorization") && !shown.contains("YXBp"),
            "{shown}"
        );
    }

    #[test]
    fn protocol_other_than_http_protobuf_is_a_warning() {
        let s = resolve(
            &cfg(Some(true), None),
            &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
        )
        .expect("valid")
        .expect("on");
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn remote_context_parses_w3c_traceparent() {
        let cx = remote_context(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("vendor=x"),
        )
        .expect("valid");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_remote());
        assert!(remote_context(Some("garbage"), None).is_none());
        assert!(remote_context(None, Some("vendor=x")).is_none());
    }

    #[test]
    fn helpers_are_no_ops_when_off() {
        assert!(!enabled());
        let launch = crate::process::Launch::default();
        let launch = with_trace_env(launch);
        assert!(launch.spec.env_set.is_empty() && launch.spec.env_remove.is_empty());
        assert!(turn_span("s", 1, || unreachable!("not asked when off")).is_disabled());
        assert!(after_turn_span(&capture()).is_disabled());
        let mut t = TurnTrace::default();
        t.event(&ExecutorEvent::CommandStarted {
            id: "1".into(),
            command: "ls".into(),
        });
        assert!(t.commands.is_empty());
    }
}
