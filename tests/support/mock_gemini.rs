//! Scripted mock of the Gemini API (`/v1beta/models/<model>:generateContent` and
//! `:streamGenerateContent?alt=sse`) for driving `gemini --acp` (and OpenCode's google provider)
//! offline.
//!
//! Script (JSON):
//! ```jsonc
//! { "turns": [STEP, ...],   // one STEP per main request (streamGenerateContent), in order
//!   "default": STEP }       // when the turns are used up (default: the text "done")
//! ```
//! STEP keys (all optional): `text` (a text part), `call` (`{name, args}`: a function call
//! part), `parts` (raw parts, used as they are), `usage` (merged into the usageMetadata),
//! `status` + `error_message` (non-200: a JSON error), `stall_s` (seconds to wait before the
//! body), `finish` (finishReason, default `STOP`).
//!
//! A streamed request that offers no tools (OpenCode's session title) is answered "Mock title"
//! and consumes no turn. Every `generateContent` call (not streamed) is a side request: gemini's routing classifier
//! on a flash-lite model, its next-speaker and loop checks. They ask for JSON with a response
//! schema; the mock answers an object that fills each schema property (`complexity_score` 20,
//! `next_speaker` "user", strings "ok", numbers 20, booleans false). They never consume turns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::{RecordedRequest, SharedState, lock, new_state};

/// A running mock Gemini API server. Dropping it shuts the server down.
pub struct GeminiMock {
    inner: Arc<Inner>,
    server: Server,
}

impl GeminiMock {
    pub fn start(script: Value) -> GeminiMock {
        let inner = Arc::new(Inner {
            state: new_state(script),
        });
        let server = Server::start("mock_gemini", inner.clone());
        GeminiMock { inner, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `http://127.0.0.1:PORT` (for `GOOGLE_GEMINI_BASE_URL`; gemini appends `/v1beta/...`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    pub fn set_script(&self, script: Value) {
        lock(&self.inner.state).set_script(script);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.state)
            .requests
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The main model requests (streamed, offering tools), in order.
    pub fn model_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path_only().ends_with(":streamGenerateContent") && has_tools(&r.body))
            .collect()
    }

    /// The side requests (`generateContent`: routing, checks), in order.
    pub fn side_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path_only().ends_with(":generateContent"))
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.state).requests.clear();
    }
}

/// All the text of a Gemini request's `contents` (every part's `text`, and function call and
/// response parts as JSON), for checking what the model was shown.
pub fn contents_text(body: &Value) -> String {
    let mut out = String::new();
    for c in body
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match p.get("text").and_then(Value::as_str) {
                Some(t) => out.push_str(t),
                None => out.push_str(&p.to_string()),
            }
            out.push('\n');
        }
    }
    out
}

struct Inner {
    state: SharedState,
}

impl Handler for Inner {
    fn handle(&self, req: &RecordedRequest) -> Response {
        let body = req.body.clone();
        let path = req.path_only().to_string();
        let mut st = lock(&self.state);
        st.record(req.clone());
        if req.method != "POST" {
            return Response::json(
                404,
                json!({"error": {"code": 404, "message": "mock: no such endpoint", "status": "NOT_FOUND"}}),
            );
        }
        let model = model_of(&path);
        if path.ends_with(":generateContent") {
            return Response::json(200, side_answer(&body, &model));
        }
        if !path.ends_with(":streamGenerateContent") {
            return Response::json(
                404,
                json!({"error": {"code": 404, "message": "mock: no such endpoint", "status": "NOT_FOUND"}}),
            );
        }
        if !has_tools(&body) {
            // A side request streamed (OpenCode's session title): never a turn.
            drop(st);
            return stream_answer(&json!({"text": "Mock title"}), &model);
        }
        let step = {
            let turns = st.script.get("turns").and_then(Value::as_array);
            match turns.and_then(|t| t.get(st.seq)).cloned() {
                Some(s) => {
                    st.seq += 1;
                    s
                }
                None => st
                    .script
                    .get("default")
                    .cloned()
                    .unwrap_or_else(|| json!({"text": "done"})),
            }
        };
        drop(st);
        stream_answer(&step, &model)
    }
}

fn has_tools(body: &Value) -> bool {
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
}

fn model_of(path: &str) -> String {
    path.rsplit('/')
        .next()
        .and_then(|last| last.split(':').next())
        .unwrap_or("gemini-mock")
        .to_string()
}

fn usage(step: &Value) -> Value {
    let mut u = json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15});
    if let (Some(u), Some(extra)) = (
        u.as_object_mut(),
        step.get("usage").and_then(Value::as_object),
    ) {
        for (k, v) in extra {
            u.insert(k.clone(), v.clone());
        }
    }
    u
}

fn stream_answer(step: &Value, model: &str) -> Response {
    let status = step.get("status").and_then(Value::as_u64).unwrap_or(200) as u16;
    if status != 200 {
        let message = step
            .get("error_message")
            .and_then(Value::as_str)
            .unwrap_or("mock error");
        return Response::json(
            status,
            json!({"error": {"code": status, "message": message, "status": "INTERNAL"}}),
        );
    }
    let mut parts: Vec<Value> = Vec::new();
    if let Some(t) = step.get("text") {
        parts.push(json!({"text": t}));
    }
    if let Some(c) = step.get("call") {
        parts.push(json!({"functionCall": {
            "name": c.get("name").cloned().unwrap_or(json!("unknown")),
            "args": c.get("args").cloned().unwrap_or(json!({})),
        }}));
    }
    if let Some(raw) = step.get("parts").and_then(Value::as_array) {
        parts.extend(raw.iter().cloned());
    }
    let finish = step.get("finish").cloned().unwrap_or(json!("STOP"));
    let mut events = Vec::new();
    if let Some(s) = step.get("stall_s").and_then(Value::as_f64) {
        events.push(SseStep::Sleep(Duration::from_secs_f64(s)));
    }
    events.push(SseStep::Data(json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage(step),
        "modelVersion": model,
    })));
    Response::sse(events)
}

/// The answer to a side request: a JSON object filling the requested response schema, as text.
fn side_answer(body: &Value, model: &str) -> Value {
    let cfg = body.get("generationConfig").unwrap_or(&Value::Null);
    let schema = cfg
        .get("responseJsonSchema")
        .or_else(|| cfg.get("responseSchema"));
    let text = match schema {
        Some(s) => fill_schema(s).to_string(),
        None => "ok".to_string(),
    };
    json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 10},
        "modelVersion": model,
    })
}

/// A JSON value that fills `schema` (see the module docs).
pub(crate) fn fill_schema(schema: &Value) -> Value {
    let ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_ascii_lowercase();
    match ty.as_str() {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    let val = match k.as_str() {
                        "complexity_score" => json!(20),
                        "next_speaker" => json!("user"),
                        _ => fill_schema(v),
                    };
                    out.insert(k.clone(), val);
                }
            }
            Value::Object(out)
        }
        "array" => json!([]),
        "string" => match schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            Some(first) => first.clone(),
            None => json!("ok"),
        },
        "integer" | "number" => json!(20),
        "boolean" => json!(false),
        _ => Value::Null,
    }
}

// ---- A small HTTP/1.1 server whose SSE frames are bare `data: …` lines ----
// (The Gemini SDK's stream parser only accepts a body that starts with `data: `; the shared
// server in http.rs writes an `event:` line before each frame.) One connection per request:
// every response says `connection: close`.

/// One piece of an SSE body.
pub(crate) enum SseStep {
    /// Written as `data: <json>\n\n`.
    Data(Value),
    /// Written as `data: <text>\n\n` (e.g. `[DONE]`).
    Raw(String),
    Sleep(Duration),
}

pub(crate) enum Response {
    Json(u16, Value),
    Sse(Vec<SseStep>),
}

impl Response {
    pub(crate) fn json(status: u16, body: Value) -> Response {
        Response::Json(status, body)
    }
    pub(crate) fn sse(steps: Vec<SseStep>) -> Response {
        Response::Sse(steps)
    }
}

pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &RecordedRequest) -> Response;
}

/// A running server; dropping it stops the accept loop and every connection.
pub(crate) struct Server {
    pub(crate) port: u16,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Server {
    pub(crate) fn start(name: &str, handler: Arc<dyn Handler>) -> Server {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("{name}: cannot bind: {e}"));
        let port = listener.local_addr().expect("local_addr").port();
        listener.set_nonblocking(true).expect("set_nonblocking");
        let (tx, mut rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("{name}-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("mock runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("mock listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            a = listener.accept() => if let Ok((s, _)) = a {
                                let h = handler.clone();
                                tokio::spawn(async move { let _ = serve(s, h).await; });
                            },
                        }
                    }
                });
            })
            .expect("mock thread");
        Server {
            port,
            shutdown: Some(tx),
        }
    }
}

async fn serve(mut s: TcpStream, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let json_body = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({"_raw": String::from_utf8_lossy(&body)}))
    };
    let req = RecordedRequest {
        method,
        path,
        headers,
        body: json_body,
    };
    match handler.handle(&req) {
        Response::Json(status, v) => {
            let b = v.to_string();
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                b.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(b.as_bytes()).await?;
        }
        Response::Sse(steps) => {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n").await?;
            s.flush().await?;
            for step in steps {
                match step {
                    SseStep::Data(v) => s.write_all(format!("data: {v}\n\n").as_bytes()).await?,
                    SseStep::Raw(t) => s.write_all(format!("data: {t}\n\n").as_bytes()).await?,
                    SseStep::Sleep(d) => tokio::time::sleep(d).await,
                }
                s.flush().await?;
            }
        }
    }
    s.flush().await?;
    let _ = s.shutdown().await;
    Ok(())
}
