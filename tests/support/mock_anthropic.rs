//! Scripted mock of the Anthropic *Messages API* (`POST /v1/messages`, SSE + JSON) for driving
//! `claude -p` offline. Rust port of `mock_anthropic.py`.
//!
//! Script (JSON):
//! ```jsonc
//! { "mode": "sequential",                 // default: one STEP per *main* request, in order
//!   "turns": [STEP, ...],
//!   "mode": "keyed",                      // the last real user prompt containing "@@NAME" selects
//!   "scenarios": {"NAME": [STEP, ...]},   //   a scenario; step index = number of assistant
//!                                         //   messages after that prompt
//!   "default": STEP,                      // queue/scenario exhausted, or no @@NAME
//!   "side_reply": "text",                 // answer for requests without `tools` (never consumes
//!                                         //   steps; in keyed mode a matching @@NAME wins)
//!   "side_detection": true }              // sequential mode: false when running with --tools ""
//! ```
//! STEP keys (all optional): `content` (`{"text"}`, `{"thinking"}`, `{"tool_use":{name, input,
//! id?}}`, `{"raw"}`), `stop_reason`, `usage` (merged into the defaults), `status` / `error_type` /
//! `error_message` / `headers` (non-200 → JSON error), `delay_s` (before the headers), `stall_s`
//! (after `message_start`), `stream_error` (SSE `error` event, no `message_stop`), `if_tool`
//! (keyed mode: the step exists only when the request offers a tool of that name).
//!
//! Deferred tools: newer Claude Code (2.1.328 and later) offers MCP tools behind `ToolSearch`.
//! A model fetches their schemas first (`ToolSearch` with `select:<names>`); Claude answers with
//! a `tool_reference` result and a "Tool loaded." text, which is not a new prompt. A scenario
//! written for both old and new Claude Code starts with a `{"if_tool": "ToolSearch", …}` step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use super::http::{self, Body, Request, Response, SseStep};
use super::{
    MockState, RecordedRequest, SharedState, chunk_chars, lock, new_state, scenario_key, seconds,
    step_headers, step_status, text_of, truthy,
};

/// A running mock Messages API server. Dropping it shuts the server down.
pub struct AnthropicMock {
    inner: Arc<Inner>,
    server: http::Server,
}

impl AnthropicMock {
    /// Start on 127.0.0.1 with an ephemeral port. Panics only if the server cannot be started.
    pub fn start(script: Value) -> AnthropicMock {
        let inner = Arc::new(Inner {
            state: new_state(script),
            ids: AtomicU64::new(0),
        });
        let server = http::Server::start("mock_anthropic", inner.clone());
        AnthropicMock { inner, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `http://127.0.0.1:PORT` (for `ANTHROPIC_BASE_URL`; claude appends `/v1/messages`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
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

    /// Only the model requests (`POST …/v1/messages`, not `count_tokens`).
    pub fn model_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path_only().ends_with("/v1/messages"))
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

impl Inner {
    /// `prefix_` + a 24-digit counter (per server, from 1).
    fn nid(&self, prefix: &str) -> String {
        format!(
            "{prefix}_{:024}",
            self.ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    fn build_response(&self, step: &Value, req: &Value) -> Response {
        let delay = seconds(step.get("delay_s"));
        let status = step_status(step);
        if status != 200 {
            let error_type = step
                .get("error_type")
                .cloned()
                .unwrap_or_else(|| json!("api_error"));
            let message = step
                .get("error_message")
                .cloned()
                .unwrap_or_else(|| json!("mock error"));
            return Response::json(
                status,
                json!({"type": "error", "error": {"type": error_type, "message": message}}),
            )
            .with_headers(step_headers(step))
            .with_delay(delay);
        }
        let model = req
            .get("model")
            .cloned()
            .unwrap_or_else(|| json!("claude-mock"));
        let mid = self.nid("msg");
        let mut usage = json!({
            "input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        });
        if let (Some(u), Some(extra)) = (
            usage.as_object_mut(),
            step.get("usage").and_then(Value::as_object),
        ) {
            for (k, v) in extra {
                u.insert(k.clone(), v.clone());
            }
        }
        let empty = Vec::new();
        let blocks = step
            .get("content")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let has_tool = blocks.iter().any(|b| b.get("tool_use").is_some());
        let stop_reason = step
            .get("stop_reason")
            .cloned()
            .unwrap_or_else(|| json!(if has_tool { "tool_use" } else { "end_turn" }));

        if !truthy(req.get("stream")) {
            let mut content = Vec::new();
            for b in blocks {
                if let Some(t) = b.get("text") {
                    content.push(json!({"type": "text", "text": t}));
                } else if let Some(t) = b.get("thinking") {
                    content
                        .push(json!({"type": "thinking", "thinking": t, "signature": "mocksig"}));
                } else if let Some(tu) = b.get("tool_use") {
                    let Some(name) = tu.get("name") else {
                        return Response::json(
                            500,
                            json!({"type": "error", "error": {"type": "api_error", "message": "mock: tool_use block without name"}}),
                        );
                    };
                    content.push(json!({
                        "type": "tool_use", "id": self.tool_id(tu), "name": name,
                        "input": tu.get("input").cloned().unwrap_or_else(|| json!({})),
                    }));
                } else if let Some(raw) = b.get("raw") {
                    content.push(raw.clone());
                }
            }
            return Response::json(
                200,
                json!({
                    "id": mid, "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": stop_reason, "stop_sequence": null,
                    "usage": usage,
                }),
            )
            .with_delay(delay);
        }

        let request_id = self.nid("req");
        let mut start_usage = usage.clone();
        if let Some(u) = start_usage.as_object_mut() {
            u.insert("output_tokens".into(), json!(1));
        }
        let mut events = vec![SseStep::Event(json!({
            "type": "message_start",
            "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": start_usage,
            },
        }))];
        if let Some(stall) = seconds(step.get("stall_s")) {
            events.push(SseStep::Sleep(stall));
        }
        let ev = |v: Value| SseStep::Event(v);
        for (i, b) in blocks.iter().enumerate() {
            if let Some(t) = b.get("text") {
                events.push(ev(json!({
                    "type": "content_block_start", "index": i,
                    "content_block": {"type": "text", "text": ""},
                })));
                let mut chunks = chunk_chars(&text_of(Some(t)), 20);
                if chunks.is_empty() {
                    chunks.push(String::new());
                }
                for ch in chunks {
                    events.push(ev(json!({
                        "type": "content_block_delta", "index": i,
                        "delta": {"type": "text_delta", "text": ch},
                    })));
                }
            } else if let Some(t) = b.get("thinking") {
                events.push(ev(json!({
                    "type": "content_block_start", "index": i,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                })));
                events.push(ev(json!({
                    "type": "content_block_delta", "index": i,
                    "delta": {"type": "thinking_delta", "thinking": t},
                })));
                events.push(ev(json!({
                    "type": "content_block_delta", "index": i,
                    "delta": {"type": "signature_delta", "signature": "mocksig"},
                })));
            } else if let Some(tu) = b.get("tool_use") {
                let Some(name) = tu.get("name") else {
                    // like the Python mock raising mid-stream: the stream just ends here
                    return Response::sse(events)
                        .with_headers(vec![("request-id".into(), request_id)])
                        .with_delay(delay);
                };
                let input = tu.get("input").cloned().unwrap_or_else(|| json!({}));
                events.push(ev(json!({
                    "type": "content_block_start", "index": i,
                    "content_block": {"type": "tool_use", "id": self.tool_id(tu), "name": name, "input": {}},
                })));
                events.push(ev(json!({
                    "type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": input.to_string()},
                })));
            } else if let Some(raw) = b.get("raw") {
                events.push(ev(json!({
                    "type": "content_block_start", "index": i, "content_block": raw,
                })));
            }
            events.push(ev(json!({"type": "content_block_stop", "index": i})));
        }
        if truthy(step.get("stream_error")) {
            events.push(ev(
                json!({"type": "error", "error": step.get("stream_error")}),
            ));
        } else {
            events.push(ev(json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": usage.get("output_tokens")},
            })));
            events.push(ev(json!({"type": "message_stop"})));
        }
        Response::sse(events)
            .with_headers(vec![("request-id".into(), request_id)])
            .with_delay(delay)
    }

    fn tool_id(&self, tu: &Value) -> Value {
        match tu.get("id") {
            Some(id) if truthy(Some(id)) => id.clone(),
            _ => Value::String(self.nid("toolu")),
        }
    }

    fn route(&self, req: &Request) -> Response {
        let target = req.target.as_str();
        let not_found = |message: String| {
            Response::json(
                404,
                json!({"type": "error", "error": {"type": "not_found_error", "message": message}}),
            )
        };
        match req.method.as_str() {
            // Claude probes `HEAD /`
            "HEAD" => {
                lock(&self.state).record(req.recorded(req.json_body()));
                Response::empty(200)
            }
            "GET" => {
                if target.starts_with("/__requests") {
                    return Response::json(200, lock(&self.state).requests_json());
                }
                if target.starts_with("/__health") {
                    return Response::json(200, json!({"ok": true}));
                }
                lock(&self.state).record(req.recorded(req.json_body()));
                not_found("mock: not found".into())
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
                            json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("mock: script is not JSON: {e}")}}),
                        ),
                    };
                }
                let body = req.json_body();
                let step = {
                    let mut st = lock(&self.state);
                    st.record(req.recorded(body.clone()));
                    if target.contains("count_tokens") {
                        return Response::json(200, json!({"input_tokens": 10}));
                    }
                    if !req.path().ends_with("/v1/messages") {
                        return not_found(format!("mock: {target}"));
                    }
                    pick_step(&mut st, &body)
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
                    json!({"type": "error", "error": {"type": "api_error", "message": format!("mock: unsupported method {}", req.method)}}),
                )
            }
        }
    }
}

impl http::Handler for Inner {
    fn handle(&self, req: &Request) -> Response {
        let mut resp = self.route(req);
        // every JSON reply carries a request-id header (SSE replies set their own)
        if matches!(resp.body, Body::Json(_)) {
            resp.headers
                .insert(0, ("request-id".into(), self.nid("req")));
        }
        resp
    }
}

/// Text blocks that carry a human prompt (skips injected `<system-reminder>` and
/// `[Request interrupted…` markers).
fn prompt_texts(content: Option<&Value>) -> Vec<String> {
    match content {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .map(|b| b.get("text").and_then(Value::as_str).unwrap_or(""))
            .filter(|t| {
                let t = t.trim_start();
                !t.starts_with("<system-reminder>")
                    && !t.starts_with("[Request interrupted")
                    && t.trim_end() != "Tool loaded."
            })
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A user message is a new prompt if it carries human text. Claude Code merges
/// "tool_result + [Request interrupted…] + next prompt" into one user message.
fn is_real_user_msg(m: &Value) -> bool {
    if m.get("role").and_then(Value::as_str) != Some("user") {
        return false;
    }
    let content = m.get("content");
    if let Some(Value::String(_)) = content {
        return true;
    }
    let has_tool_result = content.and_then(Value::as_array).is_some_and(|blocks| {
        blocks
            .iter()
            .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
    });
    !prompt_texts(content).is_empty() || !has_tool_result
}

/// (text of the last real user prompt, number of assistant messages after it).
fn prompt_and_step_index(msgs: &[Value]) -> (String, usize) {
    let Some(idx) = msgs.iter().rposition(is_real_user_msg) else {
        return (String::new(), 0);
    };
    let n_assist = msgs[idx + 1..]
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .count();
    (prompt_texts(msgs[idx].get("content")).concat(), n_assist)
}

fn default_step(sc: &Value) -> Value {
    sc.get("default")
        .cloned()
        .unwrap_or_else(|| json!({"content": [{"text": "Hello from mock claude"}]}))
}

fn pick_step(state: &mut MockState, req: &Value) -> Value {
    let sc = &state.script;
    let side_reply = sc
        .get("side_reply")
        .cloned()
        .unwrap_or_else(|| json!("Mock side reply"));
    let side = json!({"content": [{"text": side_reply}], "_side": true});
    let has_tools = truthy(req.get("tools"));
    if sc.get("mode").and_then(Value::as_str) == Some("keyed") {
        let msgs = req
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let (text, n) = prompt_and_step_index(msgs);
        let steps = scenario_key(&text).and_then(|k| sc.get("scenarios")?.get(k));
        if let Some(steps) = steps {
            let offered = |name: &Value| {
                req.get("tools")
                    .and_then(Value::as_array)
                    .is_some_and(|tools| tools.iter().any(|t| t.get("name") == Some(name)))
            };
            let steps: Vec<&Value> = steps
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .filter(|st| st.get("if_tool").is_none_or(offered))
                .collect();
            return match steps.get(n).map(|st| (*st).clone()) {
                Some(st) => st.clone(),
                None => default_step(sc),
            };
        }
        return if has_tools { default_step(sc) } else { side };
    }
    let side_detection = sc.get("side_detection").is_none_or(|v| truthy(Some(v)));
    if !has_tools && side_detection {
        return side;
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
        None => default_step(sc),
    }
}
