//! Scripted mock of OpenAI-compatible chat completions (`POST …/chat/completions`, streamed
//! SSE or JSON) for driving Qwen Code (`qwen --acp`) offline.
//!
//! Script (JSON), as for the Gemini mock:
//! ```jsonc
//! { "turns": [STEP, ...],   // one STEP per main request (a request that offers tools), in order
//!   "default": STEP }       // when the turns are used up (default: the text "done")
//! ```
//! STEP keys (all optional): `text`, `call` (`{name, args}`: one tool call), `usage`
//! (merged into the usage), `status` + `error_message` (non-200), `stall_s`.
//!
//! A request without `tools` is a side request (a title, a next-speaker check), and so is
//! qwen's follow-up suggestion (it offers tools, but asks for the user's next words): it never
//! consumes turns; with a JSON response format its answer fills the schema like the Gemini
//! mock's side answers, else it is the text "ok".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::mock_gemini::{Handler, Response, Server, SseStep, fill_schema};
use super::{RecordedRequest, SharedState, lock, new_state};

pub struct ChatMock {
    inner: Arc<Inner>,
    server: Server,
}

impl ChatMock {
    pub fn start(script: Value) -> ChatMock {
        let inner = Arc::new(Inner {
            state: new_state(script),
            ids: AtomicU64::new(0),
        });
        let server = Server::start("mock_chat", inner.clone());
        ChatMock { inner, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `http://127.0.0.1:PORT/v1` (for `OPENAI_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port())
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

    /// The main model requests (they offer tools), in order.
    pub fn model_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path_only().ends_with("/chat/completions") && is_main(&r.body))
            .collect()
    }
}

/// A main request: it offers tools and is not qwen's follow-up suggestion (sent with the
/// tools after a turn, asking for the user's likely next words).
fn is_main(body: &Value) -> bool {
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .map(|m| messages_text(&json!({"messages": [m]})))
        .unwrap_or_default();
    tools && !last.contains(SUGGESTION_MARK)
}

/// How qwen's follow-up suggestion request ends its prompt.
const SUGGESTION_MARK: &str = "Reply with ONLY the suggestion";

/// All the text of a chat request's messages (contents, and tool calls as JSON).
pub fn messages_text(body: &Value) -> String {
    let mut out = String::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match m.get("content") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
            }
            _ => {}
        }
        if let Some(tc) = m.get("tool_calls") {
            out.push_str(&tc.to_string());
        }
        out.push('\n');
    }
    out
}

struct Inner {
    state: SharedState,
    ids: AtomicU64,
}

impl Handler for Inner {
    fn handle(&self, req: &RecordedRequest) -> Response {
        let mut st = lock(&self.state);
        st.record(req.clone());
        if req.method != "POST" || !req.path_only().ends_with("/chat/completions") {
            return Response::json(404, json!({"error": {"message": "mock: no such endpoint"}}));
        }
        let body = &req.body;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("mock-model")
            .to_string();
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let step = if is_main(body) {
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
        } else {
            let schema = body.pointer("/response_format/json_schema/schema").cloned();
            match schema {
                Some(s) => json!({"text": fill_schema(&s).to_string()}),
                None => json!({"text": "ok"}),
            }
        };
        drop(st);
        let n = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        answer(&step, &model, stream, n)
    }
}

fn answer(step: &Value, model: &str, stream: bool, n: u64) -> Response {
    let status = step.get("status").and_then(Value::as_u64).unwrap_or(200) as u16;
    if status != 200 {
        let message = step
            .get("error_message")
            .and_then(Value::as_str)
            .unwrap_or("mock error");
        return Response::json(
            status,
            json!({"error": {"message": message, "type": "server_error"}}),
        );
    }
    let mut usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    if let (Some(u), Some(extra)) = (
        usage.as_object_mut(),
        step.get("usage").and_then(Value::as_object),
    ) {
        for (k, v) in extra {
            u.insert(k.clone(), v.clone());
        }
    }
    let text = step.get("text").and_then(Value::as_str);
    let call = step.get("call").map(|c| {
        json!({
            "id": format!("call_{n}"),
            "type": "function",
            "function": {
                "name": c.get("name").cloned().unwrap_or(json!("unknown")),
                "arguments": c.get("args").cloned().unwrap_or(json!({})).to_string(),
            },
        })
    });
    let finish = if call.is_some() { "tool_calls" } else { "stop" };
    let id = format!("chatcmpl-{n}");
    if !stream {
        let mut message = json!({"role": "assistant", "content": text});
        if let Some(c) = &call {
            message["tool_calls"] = json!([c]);
        }
        return Response::json(
            200,
            json!({
                "id": id, "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        SseStep::Data(json!({
            "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    };
    let mut steps = Vec::new();
    if let Some(s) = step.get("stall_s").and_then(Value::as_f64) {
        steps.push(SseStep::Sleep(Duration::from_secs_f64(s)));
    }
    steps.push(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    if let Some(t) = text {
        steps.push(chunk(json!({"content": t}), Value::Null));
    }
    if let Some(mut c) = call {
        c["index"] = json!(0);
        steps.push(chunk(json!({"tool_calls": [c]}), Value::Null));
    }
    steps.push(chunk(json!({}), json!(finish)));
    steps.push(SseStep::Data(json!({
        "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [], "usage": usage,
    })));
    steps.push(SseStep::Raw("[DONE]".into()));
    Response::sse(steps)
}
