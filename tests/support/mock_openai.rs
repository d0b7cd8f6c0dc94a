//! Scripted mock of the OpenAI *Responses API* (`POST …/responses`, SSE) for driving
//! `codex exec` / `codex app-server` offline. Rust port of `mock_openai.py`.
//!
//! Script (JSON):
//! ```jsonc
//! { "mode": "sequential",                 // default: one STEP per POST …/responses, in order
//!   "turns": [STEP, ...],
//!   "mode": "keyed",                      // the last user message containing "@@NAME" selects
//!   "scenarios": {"NAME": [STEP, ...]},   //   a scenario; step index = number of tool-call items
//!                                         //   after the last user message
//!   "default": STEP }                     // queue/scenario exhausted, or no @@NAME
//! ```
//! STEP keys (all optional): `items` (`{"message"}`, `{"reasoning"}`, `{"function_call":{name,
//! arguments, call_id?, namespace?}}`, `{"custom_tool_call":{name, input, call_id?}}`, `{"raw"}`),
//! `usage` (merged into the defaults), `status` / `error_body` / `headers` (non-200 → JSON error),
//! `delay_s` (before the headers), `stall_s` (after `response.created`), `fail` (`response.failed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use super::http::{self, Request, Response, SseStep};
use super::{
    MockState, RecordedRequest, SharedState, chunk_chars, lock, new_state, scenario_key, seconds,
    step_headers, step_status, text_of, truthy,
};

/// A running mock Responses API server. Dropping it shuts the server down.
pub struct OpenAiMock {
    inner: Arc<Inner>,
    server: http::Server,
}

impl OpenAiMock {
    /// Start on 127.0.0.1 with an ephemeral port. Panics only if the server cannot be started.
    pub fn start(script: Value) -> OpenAiMock {
        let inner = Arc::new(Inner {
            state: new_state(script),
            ids: AtomicU64::new(0),
        });
        let server = http::Server::start("mock_openai", inner.clone());
        OpenAiMock { inner, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `http://127.0.0.1:PORT/v1` (codex POSTs `{base_url}/responses`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port())
    }

    /// Replace the script and reset the sequential position.
    pub fn set_script(&self, script: Value) {
        lock(&self.inner.state).set_script(script);
    }

    /// Every request received so far (except the `/__*` control endpoints), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.state)
            .requests
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Only the model requests (`POST …/responses`).
    pub fn model_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && is_responses_path(r.path_only()))
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.state).requests.clear();
    }
}

struct Inner {
    state: SharedState,
    ids: AtomicU64,
}

fn is_responses_path(path: &str) -> bool {
    path.trim_end_matches('/').ends_with("/responses")
}

impl Inner {
    /// `prefix_N`, N counting from 1 per server.
    fn nid(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.ids.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn build_response(&self, step: &Value, req: &Value) -> Response {
        let delay = seconds(step.get("delay_s"));
        let status = step_status(step);
        if status != 200 {
            let body = step.get("error_body").cloned().unwrap_or_else(|| {
                json!({"error": {"message": "mock error", "type": "server_error", "code": "server_error"}})
            });
            return Response::json(status, body)
                .with_headers(step_headers(step))
                .with_delay(delay);
        }
        let rid = self.nid("resp");
        let model = req
            .get("model")
            .cloned()
            .unwrap_or_else(|| json!("mock-model"));
        let mut events = vec![SseStep::Event(json!({
            "type": "response.created",
            "response": {"id": rid, "model": model, "status": "in_progress"},
        }))];
        if let Some(stall) = seconds(step.get("stall_s")) {
            events.push(SseStep::Sleep(stall));
        }
        let empty = Vec::new();
        let items = step
            .get("items")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for (oi, it) in items.iter().enumerate() {
            let Some(item) = self.expand_item(it) else {
                // like the Python mock raising mid-stream: the stream just ends here
                return Response::sse(events).with_delay(delay);
            };
            events.push(SseStep::Event(json!({
                "type": "response.output_item.added", "output_index": oi, "item": item,
            })));
            let item_id = item.get("id").cloned().unwrap_or(Value::Null);
            match item.get("type").and_then(Value::as_str) {
                Some("message") => {
                    let text = item
                        .pointer("/content/0/text")
                        .map(|t| text_of(Some(t)))
                        .unwrap_or_default();
                    for chunk in chunk_chars(&text, 16) {
                        events.push(SseStep::Event(json!({
                            "type": "response.output_text.delta", "item_id": item_id,
                            "output_index": oi, "content_index": 0, "delta": chunk,
                        })));
                    }
                }
                Some("reasoning") => {
                    let summaries = item.get("summary").and_then(Value::as_array);
                    for (si, s) in summaries.into_iter().flatten().enumerate() {
                        events.push(SseStep::Event(json!({
                            "type": "response.reasoning_summary_text.delta", "item_id": item_id,
                            "output_index": oi, "summary_index": si,
                            "delta": text_of(s.get("text")),
                        })));
                    }
                }
                _ => {}
            }
            events.push(SseStep::Event(json!({
                "type": "response.output_item.done", "output_index": oi, "item": item,
            })));
        }
        let mut usage = json!({
            "input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15,
        });
        if let (Some(u), Some(extra)) = (
            usage.as_object_mut(),
            step.get("usage").and_then(Value::as_object),
        ) {
            for (k, v) in extra {
                u.insert(k.clone(), v.clone());
            }
        }
        if truthy(step.get("fail")) {
            events.push(SseStep::Event(json!({
                "type": "response.failed",
                "response": {"id": rid, "status": "failed", "error": step.get("fail")},
            })));
        } else {
            events.push(SseStep::Event(json!({
                "type": "response.completed",
                "response": {"id": rid, "status": "completed", "usage": usage},
            })));
        }
        Response::sse(events).with_delay(delay)
    }

    /// Expand an item shorthand; `None` for an item the Python mock would reject.
    fn expand_item(&self, it: &Value) -> Option<Value> {
        let it = it.as_object()?;
        if let Some(raw) = it.get("raw") {
            return Some(raw.clone());
        }
        if let Some(text) = it.get("message") {
            return Some(json!({
                "type": "message", "role": "assistant", "id": self.nid("msg"), "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }));
        }
        if let Some(summary) = it.get("reasoning") {
            return Some(json!({
                "type": "reasoning", "id": self.nid("rs"),
                "summary": [{"type": "summary_text", "text": summary}],
                "content": null, "encrypted_content": null,
            }));
        }
        if let Some(fc) = it.get("function_call") {
            let name = fc.get("name")?.clone();
            let args = match fc.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "{}".to_string(),
            };
            let id = self.nid("fc");
            let call_id = match fc.get("call_id") {
                Some(c) if truthy(Some(c)) => c.clone(),
                _ => Value::String(self.nid("call")),
            };
            let mut out = json!({
                "type": "function_call", "id": id, "status": "completed", "name": name,
                "arguments": args, "call_id": call_id,
            });
            // e.g. MCP tools: name="echo", namespace="mcp__<server>"
            if truthy(fc.get("namespace"))
                && let (Some(o), Some(ns)) = (out.as_object_mut(), fc.get("namespace"))
            {
                o.insert("namespace".into(), ns.clone());
            }
            return Some(out);
        }
        if let Some(ct) = it.get("custom_tool_call") {
            let name = ct.get("name")?.clone();
            let input = ct.get("input")?.clone();
            let id = self.nid("ctc");
            let call_id = match ct.get("call_id") {
                Some(c) if truthy(Some(c)) => c.clone(),
                _ => Value::String(self.nid("call")),
            };
            return Some(json!({
                "type": "custom_tool_call", "id": id, "status": "completed", "name": name,
                "input": input, "call_id": call_id,
            }));
        }
        None
    }
}

/// (text of the last user message, number of tool-call items after it).
fn last_user_text_and_tool_count(input: Option<&Value>) -> (String, usize) {
    let items = match input {
        Some(Value::String(s)) => return (s.clone(), 0),
        Some(Value::Array(a)) => a.as_slice(),
        _ => &[],
    };
    let mut last_user = String::new();
    let mut idx: Option<usize> = None;
    for (i, it) in items.iter().enumerate() {
        let ty = it.get("type").and_then(Value::as_str).unwrap_or("message");
        if ty == "message" && it.get("role").and_then(Value::as_str) == Some("user") {
            last_user = match it.get("content") {
                // the Python mock ignores string content; accepting it is harmless
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter(|c| c.is_object())
                    .map(|c| c.get("text").and_then(Value::as_str).unwrap_or(""))
                    .collect(),
                _ => String::new(),
            };
            idx = Some(i);
        }
    }
    let start = idx.map_or(0, |i| i + 1);
    let calls = items[start..]
        .iter()
        .filter(|it| {
            matches!(
                it.get("type").and_then(Value::as_str),
                Some("function_call" | "custom_tool_call" | "local_shell_call")
            )
        })
        .count();
    (last_user, calls)
}

fn pick_step(state: &mut MockState, req: &Value) -> Value {
    let sc = &state.script;
    let hello = || json!({"items": [{"message": "Hello from mock model"}]});
    if sc.get("mode").and_then(Value::as_str) == Some("keyed") {
        let (text, ncalls) = last_user_text_and_tool_count(req.get("input"));
        let steps = scenario_key(&text).and_then(|k| sc.get("scenarios")?.get(k));
        if let Some(steps) = steps {
            let steps = steps.as_array().map(Vec::as_slice).unwrap_or(&[]);
            return match steps.get(ncalls) {
                Some(st) => st.clone(),
                None => sc
                    .get("default")
                    .cloned()
                    .unwrap_or_else(|| json!({"items": [{"message": "done"}]})),
            };
        }
        return sc.get("default").cloned().unwrap_or_else(hello);
    }
    let step = sc
        .get("turns")
        .and_then(Value::as_array)
        .and_then(|t| t.get(state.seq))
        .cloned();
    match step {
        Some(st) => {
            state.seq += 1;
            st
        }
        None => sc.get("default").cloned().unwrap_or_else(hello),
    }
}

impl http::Handler for Inner {
    fn handle(&self, req: &Request) -> Response {
        let target = req.target.as_str();
        match req.method.as_str() {
            "GET" => {
                if target.starts_with("/__requests") {
                    return Response::json(200, lock(&self.state).requests_json());
                }
                if target.starts_with("/__health") {
                    return Response::json(200, json!({"ok": true}));
                }
                lock(&self.state).record(req.recorded(req.json_body()));
                if req.path().trim_end_matches('/').ends_with("/models") {
                    // codex may ask for the model list; an empty list is fine
                    return Response::json(
                        200,
                        json!({"object": "list", "data": [], "models": []}),
                    );
                }
                Response::json(404, json!({"error": {"message": "not found"}}))
            }
            "POST" => {
                if target.starts_with("/__script") {
                    return match serde_json::from_slice::<Value>(&req.body) {
                        Ok(script) => {
                            lock(&self.state).set_script(script);
                            Response::json(200, json!({"ok": true}))
                        }
                        Err(e) => Response::json(
                            400,
                            json!({"error": {"message": format!("mock: script is not JSON: {e}")}}),
                        ),
                    };
                }
                let body = req.json_body();
                let step = {
                    let mut st = lock(&self.state);
                    st.record(req.recorded(body.clone()));
                    if !is_responses_path(req.path()) {
                        None
                    } else {
                        Some(pick_step(&mut st, &body))
                    }
                };
                let Some(step) = step else {
                    return Response::json(
                        404,
                        json!({"error": {"message": format!("mock: unsupported path {target}")}}),
                    );
                };
                let step = if step.is_object() {
                    step
                } else {
                    Value::Object(Map::new())
                };
                let req_obj = if body.is_object() {
                    body
                } else {
                    Value::Object(Map::new())
                };
                self.build_response(&step, &req_obj)
            }
            _ => {
                lock(&self.state).record(req.recorded(req.json_body()));
                Response::json(
                    501,
                    json!({"error": {"message": format!("mock: unsupported method {}", req.method)}}),
                )
            }
        }
    }
}
