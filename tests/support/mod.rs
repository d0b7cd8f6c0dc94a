#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test
#![allow(dead_code)]
//! Test support: scripted model servers that drive the real `codex` and `claude` CLIs offline.
//!
//! Rust ports of the reference mocks `mock_openai.py` (OpenAI Responses API) and
//! `mock_anthropic.py` (Anthropic Messages API). See the module docs of [`mock_openai`] and
//! [`mock_anthropic`] for the script format.

pub mod harness;
pub mod memory;
pub mod mock_anthropic;
pub mod mock_chat;
pub mod mock_gemini;
pub mod mock_kube;
pub mod mock_openai;

mod http;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// One request received by a mock (control endpoints `/__*` are not recorded).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as sent, including any query string (e.g. `/v1/messages?beta=true`).
    pub path: String,
    /// Header names lowercased; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// Parsed JSON body. An empty body is `{}` for POST and `null` otherwise; a body that is
    /// not JSON is recorded as `{"_raw": "<lossy utf-8>"}`.
    pub body: Value,
}

impl RecordedRequest {
    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn to_json(&self, t: f64) -> Value {
        json!({
            "t": t,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
        })
    }
}

/// State shared by a mock's handle and its server thread.
#[derive(Default)]
pub(crate) struct MockState {
    pub(crate) script: Value,
    /// Sequential-mode position (number of consumed `turns`).
    pub(crate) seq: usize,
    /// (unix time, request)
    pub(crate) requests: Vec<(f64, RecordedRequest)>,
}

pub(crate) type SharedState = Arc<Mutex<MockState>>;

pub(crate) fn new_state(script: Value) -> SharedState {
    Arc::new(Mutex::new(MockState {
        script,
        seq: 0,
        requests: Vec::new(),
    }))
}

/// Lock ignoring poisoning (a panicking test thread must not take the mock down with it).
pub(crate) fn lock(state: &SharedState) -> MutexGuard<'_, MockState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MockState {
    pub(crate) fn record(&mut self, req: RecordedRequest) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.requests.push((t, req));
    }

    pub(crate) fn requests_json(&self) -> Value {
        Value::Array(self.requests.iter().map(|(t, r)| r.to_json(*t)).collect())
    }

    pub(crate) fn set_script(&mut self, script: Value) {
        self.script = script;
        self.seq = 0;
    }
}

/// Python-style truthiness of a JSON value (`null`, `false`, `0`, `""`, `[]`, `{}` are falsy).
pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// The text of a JSON value: a string as-is, anything else as its JSON serialization.
pub(crate) fn text_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Split `text` into chunks of at most `n` characters (not bytes).
pub(crate) fn chunk_chars(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// `@@name` in `text` (the first one), `name` matching `[A-Za-z0-9_.-]+`.
pub(crate) fn scenario_key(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(pos) = rest.find("@@") {
        let after = &rest[pos + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .unwrap_or(after.len());
        if len > 0 {
            return Some(&after[..len]);
        }
        // like a regex search: retry from the next character ("@@@x" -> "x")
        rest = &rest[pos + 1..];
    }
    None
}

/// A duration in seconds (`delay_s`, `stall_s`); `None` unless a positive finite number.
pub(crate) fn seconds(v: Option<&Value>) -> Option<std::time::Duration> {
    let s = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if s.is_finite() && s > 0.0 {
        Some(std::time::Duration::from_secs_f64(s))
    } else {
        None
    }
}

/// Status code of a step (`status`, default 200).
pub(crate) fn step_status(step: &Value) -> u16 {
    match step.get("status") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(200),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(200),
        _ => 200,
    }
}

/// Extra response headers of a step (`headers` object; non-string values are serialized).
pub(crate) fn step_headers(step: &Value) -> Vec<(String, String)> {
    step.get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), text_of(Some(v))))
                .collect()
        })
        .unwrap_or_default()
}

/// Parse a script containing the placeholders `__CWD__` (the CLI's working directory) and
/// `__OUTSIDE__` (a directory outside it). The paths are JSON-escaped and substituted textually
/// before parsing. Panics if the result is not valid JSON.
pub fn script_with_placeholders(json_text: &str, cwd: &Path, outside: &Path) -> Value {
    let esc = |p: &Path| {
        let quoted = Value::String(p.to_string_lossy().into_owned()).to_string();
        quoted[1..quoted.len() - 1].to_string()
    };
    let text = json_text
        .replace("__CWD__", &esc(cwd))
        .replace("__OUTSIDE__", &esc(outside));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("script is not valid JSON: {e}"))
}

/// A hermetic `CODEX_HOME/config.toml` pointing codex at a mock Responses API (the reference
/// `codex_config.toml`): model `gpt-5.5`, provider `mock` with `env_key = "MOCK_KEY"` (that env var
/// must be set for codex), retries off, analytics and plugins off.
pub fn codex_config_toml(base_url: &str) -> String {
    format!(
        r#"model = "gpt-5.5"
model_provider = "mock"
sandbox_mode = "workspace-write"
approval_policy = "never"

[model_providers.mock]
name = "mock"
base_url = "{base_url}"
wire_api = "responses"
env_key = "MOCK_KEY"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]
plugins = false
unbounded_connection_retries = false
"#
    )
}
