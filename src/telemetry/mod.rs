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

mod spans;
#[cfg(test)]
mod tests;

pub use spans::*;
