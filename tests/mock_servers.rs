//! Tests for the scripted model servers in `tests/support` (raw HTTP over a TcpStream).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::mock_anthropic::AnthropicMock;
use support::mock_openai::OpenAiMock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// SSE frames as (event name, data).
    fn events(&self) -> Vec<(String, Value)> {
        let text = String::from_utf8(self.body.clone()).expect("utf-8 SSE");
        text.split("\n\n")
            .filter(|f| !f.trim().is_empty())
            .map(|frame| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in frame.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).expect("JSON data");
                    }
                }
                assert_eq!(data["type"], json!(name), "event name matches data.type");
                (name, data)
            })
            .collect()
    }
}

/// Send raw bytes and read the whole reply (the request says `connection: close`).
async fn send_raw(port: u16, raw: &[u8]) -> Reply {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(raw).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("reply within 5 s");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8(out[..end].to_vec()).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: out[end + 4..].to_vec(),
    }
}

/// One request with a JSON body (serialized up front, so the future borrows nothing).
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> impl Future<Output = Reply> + use<> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Test-Header: Yes\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    async move { send_raw(port, raw.as_bytes()).await }
}

fn user(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

fn openai_script() -> Value {
    json!({
        "mode": "keyed",
        "default": {"items": [{"message": "Hello from mock model"}]},
        "scenarios": {
            "greet": [{"items": [{"message": "Hello there, this is longer than sixteen characters."}],
                       "usage": {"output_tokens": 42}}],
            "tools": [
                {"items": [{"reasoning": "I will run a shell command first."},
                           {"function_call": {"name": "exec_command", "arguments": {"cmd": "echo hi"}}}]},
                {"items": [{"custom_tool_call": {"name": "apply_patch", "input": "*** Begin Patch\n*** Add File: hello.py\n+print('hi')\n*** End Patch\n"}}]},
                {"items": [{"message": "Done: ran a command and created hello.py"}]}
            ],
            "err429": [{"status": 429, "headers": {"retry-after": "0"},
                        "error_body": {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}}],
            "err500": [{"status": 500}],
            "failed": [{"fail": {"code": "server_error", "message": "mock response.failed"}}],
            "slow": [{"delay_s": 0.6, "items": [{"message": "slow"}]}],
            "fast": [{"items": [{"message": "fast"}]}]
        }
    })
}

fn done_items(events: &[(String, Value)]) -> Vec<Value> {
    events
        .iter()
        .filter(|(n, _)| n == "response.output_item.done")
        .map(|(_, d)| d["item"].clone())
        .collect()
}

#[tokio::test]
async fn openai_keyed_message_stream() {
    let mock = OpenAiMock::start(openai_script());
    assert_eq!(
        mock.base_url(),
        format!("http://127.0.0.1:{}/v1", mock.port())
    );
    let body = json!({"model": "gpt-test", "input": [user("please @@greet now")], "stream": true});
    let r = request(mock.port(), "POST", "/v1/responses", Some(&body)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["connection"], "close");
    let events = r.events();
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events[0].1["response"]["model"], "gpt-test");
    assert_eq!(events[1].0, "response.output_item.added");
    let deltas: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().expect("delta"))
        .collect();
    assert!(deltas.len() > 1 && deltas.iter().all(|d| d.chars().count() <= 16));
    let text = "Hello there, this is longer than sixteen characters.";
    assert_eq!(deltas.concat(), text);
    let items = done_items(&events);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["type"], "message");
    assert_eq!(items[0]["role"], "assistant");
    assert_eq!(items[0]["content"][0]["text"], text);
    let (last, data) = events.last().expect("events");
    assert_eq!(last, "response.completed");
    let usage = &data["response"]["usage"];
    assert_eq!(usage["output_tokens"], 42);
    assert_eq!(usage["input_tokens"], 10);
    assert_eq!(usage["total_tokens"], 15);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/responses");
    assert_eq!(reqs[0].headers["x-test-header"], "Yes");
    assert_eq!(reqs[0].body, body);
}

#[tokio::test]
async fn openai_keyed_step_index_counts_tool_calls_after_last_user_message() {
    let mock = OpenAiMock::start(openai_script());
    let port = mock.port();
    let post = |input: Value| async move {
        let r = request(
            port,
            "POST",
            "/v1/responses",
            Some(&json!({"input": input})),
        )
        .await;
        assert_eq!(r.status, 200);
        done_items(&r.events())
    };

    // step 0: reasoning + function_call
    let items = post(json!([user("@@tools please")])).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["type"], "reasoning");
    assert_eq!(
        items[0]["summary"][0]["text"],
        "I will run a shell command first."
    );
    assert_eq!(items[1]["type"], "function_call");
    assert_eq!(items[1]["name"], "exec_command");
    let args: Value =
        serde_json::from_str(items[1]["arguments"].as_str().expect("string arguments"))
            .expect("arguments JSON");
    assert_eq!(args, json!({"cmd": "echo hi"}));
    let call_id = items[1]["call_id"].as_str().expect("call_id").to_string();
    assert!(call_id.starts_with("call_"));

    // step 1: one function_call after the last user message
    let history = json!([
        user("@@tools please"),
        items[0],
        items[1],
        {"type": "function_call_output", "call_id": call_id, "output": "hi"}
    ]);
    let items1 = post(history.clone()).await;
    assert_eq!(items1[0]["type"], "custom_tool_call");
    assert_eq!(items1[0]["name"], "apply_patch");

    // step 2: two calls
    let mut h2 = history.as_array().expect("array").clone();
    h2.push(items1[0].clone());
    h2.push(
        json!({"type": "custom_tool_call_output", "call_id": items1[0]["call_id"], "output": "ok"}),
    );
    let items2 = post(Value::Array(h2.clone())).await;
    assert_eq!(
        items2[0]["content"][0]["text"],
        "Done: ran a command and created hello.py"
    );

    // calls before a new user message do not count: step 0 again
    let mut h3 = h2.clone();
    h3.push(user("again @@tools"));
    assert_eq!(post(Value::Array(h3)).await[1]["type"], "function_call");

    // scenario exhausted -> default
    let mut h4 = h2;
    h4.push(json!({"type": "local_shell_call", "call_id": "x"}));
    assert_eq!(
        post(Value::Array(h4)).await[0]["content"][0]["text"],
        "Hello from mock model"
    );

    // no @@name -> default
    assert_eq!(
        post(json!("plain string input")).await[0]["content"][0]["text"],
        "Hello from mock model"
    );
    assert_eq!(mock.model_requests().len(), 6);
}

#[tokio::test]
async fn openai_errors_failed_and_other_endpoints() {
    let mock = OpenAiMock::start(openai_script());
    let port = mock.port();

    let r = request(
        port,
        "POST",
        "/v1/responses",
        Some(&json!({"input": [user("@@err429")]})),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "0");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["content-length"], r.body.len().to_string());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");

    let r = request(
        port,
        "POST",
        "/v1/responses",
        Some(&json!({"input": [user("@@err500")]})),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "mock error", "type": "server_error", "code": "server_error"}})
    );

    let r = request(
        port,
        "POST",
        "/v1/responses",
        Some(&json!({"input": [user("@@failed")]})),
    )
    .await;
    let events = r.events();
    let (last, data) = events.last().expect("events");
    assert_eq!(last, "response.failed");
    assert_eq!(data["response"]["error"]["message"], "mock response.failed");
    assert!(events.iter().all(|(n, _)| n != "response.completed"));

    let r = request(port, "GET", "/v1/models?client_version=1.0", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], json!([]));
    assert_eq!(request(port, "GET", "/nope", None).await.status, 404);
    assert_eq!(
        request(port, "POST", "/v1/chat/completions", Some(&json!({})))
            .await
            .status,
        404
    );
    assert_eq!(
        request(port, "GET", "/__health", None).await.json(),
        json!({"ok": true})
    );

    let recorded = request(port, "GET", "/__requests", None).await.json();
    let paths: Vec<&str> = recorded
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/responses",
            "/v1/responses",
            "/v1/responses",
            "/v1/models?client_version=1.0",
            "/nope",
            "/v1/chat/completions"
        ]
    );
    assert_eq!(mock.requests().len(), 6);
    assert_eq!(mock.model_requests().len(), 3);
}

#[tokio::test]
async fn openai_sequential_set_script_and_control_script() {
    let mock = OpenAiMock::start(json!({}));
    let port = mock.port();
    let text = |r: Reply| done_items(&r.events())[0]["content"][0]["text"].clone();
    let post = || request(port, "POST", "/v1/responses", Some(&json!({"input": "x"})));
    assert_eq!(text(post().await), "Hello from mock model");

    let seq = json!({"turns": [{"items": [{"message": "one"}]}, {"items": [{"message": "two"}]}],
                     "default": {"items": [{"message": "exhausted"}]}});
    mock.set_script(seq.clone());
    assert_eq!(text(post().await), "one");
    assert_eq!(text(post().await), "two");
    assert_eq!(text(post().await), "exhausted");
    mock.set_script(seq.clone());
    assert_eq!(text(post().await), "one");
    let r = request(port, "POST", "/__script", Some(&seq)).await;
    assert_eq!(r.json(), json!({"ok": true}));
    assert_eq!(text(post().await), "one");
    assert_eq!(request(port, "POST", "/__script", None).await.status, 400);
}

#[tokio::test]
async fn delay_does_not_block_other_connections() {
    let mock = OpenAiMock::start(openai_script());
    let port = mock.port();
    let t0 = Instant::now();
    let slow = tokio::spawn(async move {
        let r = request(
            port,
            "POST",
            "/v1/responses",
            Some(&json!({"input": [user("@@slow")]})),
        )
        .await;
        (
            done_items(&r.events())[0]["content"][0]["text"].clone(),
            t0.elapsed(),
        )
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = request(
        port,
        "POST",
        "/v1/responses",
        Some(&json!({"input": [user("@@fast")]})),
    )
    .await;
    assert_eq!(done_items(&r.events())[0]["content"][0]["text"], "fast");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let (text, took) = slow.await.expect("join");
    assert_eq!(text, "slow");
    assert!(took >= Duration::from_millis(600));
}

#[tokio::test]
async fn malformed_and_chunked_requests() {
    let mock = OpenAiMock::start(openai_script());
    let port = mock.port();
    assert_eq!(send_raw(port, b"garbage\r\n\r\n").await.status, 400);
    let r = send_raw(
        port,
        b"POST /v1/responses HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);

    // not JSON: recorded as _raw, answered with the default
    let r = send_raw(
        port,
        b"POST /v1/responses HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\nnope!",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(mock.requests()[0].body, json!({"_raw": "nope!"}));

    // chunked body
    let body = json!({"input": [user("@@fast")]}).to_string();
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST /v1/responses HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let r = send_raw(port, raw.as_bytes()).await;
    assert_eq!(done_items(&r.events())[0]["content"][0]["text"], "fast");

    // keep-alive: two JSON replies on one connection, then close
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(
        b"GET /__health HTTP/1.1\r\n\r\nGET /__health HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
}

fn anthropic_script() -> Value {
    json!({
        "mode": "keyed",
        "default": {"content": [{"text": "Hello from mock claude"}]},
        "side_reply": "Mock side reply",
        "scenarios": {
            "tools": [
                {"content": [{"thinking": "I should create a file with Bash."},
                             {"text": "Creating the file, with a text longer than twenty characters."},
                             {"tool_use": {"name": "Bash", "input": {"command": "echo hi > out.txt && ls", "description": "write out.txt"}}}]},
                {"content": [{"tool_use": {"name": "Write", "input": {"file_path": "/tmp/x/written.txt", "content": "w\n"}}}],
                 "usage": {"output_tokens": 7}},
                {"content": [{"text": "Done: created out.txt and written.txt"}]}
            ],
            "err529": [{"status": 529, "error_type": "overloaded_error", "error_message": "Overloaded (mock)"}],
            "streamerr": [{"content": [{"text": "partial..."}],
                           "stream_error": {"type": "overloaded_error", "message": "Overloaded mid-stream (mock)"}}]
        }
    })
}

fn messages_body(messages: Value) -> Value {
    json!({"model": "claude-test", "stream": true, "max_tokens": 100,
           "tools": [{"name": "Bash", "input_schema": {"type": "object"}}], "messages": messages})
}

/// (blocks rebuilt from the stream as JSON, stop_reason)
fn rebuild(events: &[(String, Value)]) -> (Vec<Value>, Value) {
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial = String::new();
    let mut stop = Value::Null;
    for (name, d) in events {
        match name.as_str() {
            "content_block_start" => {
                blocks.push(d["content_block"].clone());
                partial.clear();
            }
            "content_block_delta" => {
                let b = blocks.last_mut().expect("block");
                let delta = &d["delta"];
                match delta["type"].as_str().expect("delta type") {
                    "text_delta" => {
                        let t = delta["text"].as_str().expect("text");
                        assert!(t.chars().count() <= 20);
                        b["text"] = json!(format!("{}{t}", b["text"].as_str().expect("text")));
                    }
                    "thinking_delta" => b["thinking"] = delta["thinking"].clone(),
                    "signature_delta" => b["signature"] = delta["signature"].clone(),
                    "input_json_delta" => {
                        partial.push_str(delta["partial_json"].as_str().expect("partial_json"));
                        b["input"] = serde_json::from_str(&partial).expect("input JSON");
                    }
                    other => panic!("unexpected delta {other}"),
                }
            }
            "message_delta" => stop = d["delta"]["stop_reason"].clone(),
            _ => {}
        }
    }
    (blocks, stop)
}

#[tokio::test]
async fn anthropic_tool_use_stream() {
    let mock = AnthropicMock::start(anthropic_script());
    assert_eq!(mock.base_url(), format!("http://127.0.0.1:{}", mock.port()));
    let body = messages_body(json!([{"role": "user", "content": "@@tools"}]));
    let r = request(mock.port(), "POST", "/v1/messages?beta=true", Some(&body)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["connection"], "close");
    assert!(r.headers["request-id"].starts_with("req_"));
    let events = r.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(events[0].1["message"]["model"], "claude-test");
    assert_eq!(events[0].1["message"]["usage"]["output_tokens"], 1);
    assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
    let (blocks, stop) = rebuild(&events);
    assert_eq!(stop, "tool_use");
    assert_eq!(blocks[0]["thinking"], "I should create a file with Bash.");
    assert_eq!(blocks[0]["signature"], "mocksig");
    assert_eq!(
        blocks[1]["text"],
        "Creating the file, with a text longer than twenty characters."
    );
    assert_eq!(blocks[2]["type"], "tool_use");
    assert_eq!(blocks[2]["name"], "Bash");
    assert!(blocks[2]["id"].as_str().expect("id").starts_with("toolu_"));
    assert_eq!(blocks[2]["input"]["command"], "echo hi > out.txt && ls");
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n == "content_block_stop")
            .count(),
        3
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/messages?beta=true");
    assert_eq!(reqs[0].path_only(), "/v1/messages");
    assert_eq!(reqs[0].header("X-Test-Header"), Some("Yes"));
    assert_eq!(reqs[0].body, body);
}

#[tokio::test]
async fn anthropic_step_index_counts_assistant_messages() {
    let mock = AnthropicMock::start(anthropic_script());
    let port = mock.port();
    let post = |messages: Value| async move {
        let r = request(port, "POST", "/v1/messages", Some(&messages_body(messages))).await;
        assert_eq!(r.status, 200);
        let events = r.events();
        let usage = events
            .iter()
            .find(|(n, _)| n == "message_delta")
            .map(|(_, d)| d["usage"]["output_tokens"].clone());
        let (blocks, stop) = rebuild(&events);
        (blocks, stop, usage)
    };
    let assistant = json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]});
    let tool_result = json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
        {"type": "text", "text": "<system-reminder>ignore me</system-reminder>"}
    ]});
    let (blocks, stop, usage) = post(json!([
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": "go @@tools"}]},
        assistant, tool_result
    ]))
    .await;
    assert_eq!(blocks[0]["name"], "Write");
    assert_eq!(stop, "tool_use");
    assert_eq!(usage, Some(json!(7)));

    let (blocks, stop, _) = post(json!([
        {"role": "user", "content": "@@tools"}, assistant, tool_result, assistant, tool_result
    ]))
    .await;
    assert_eq!(blocks[0]["text"], "Done: created out.txt and written.txt");
    assert_eq!(stop, "end_turn");

    // a merged "tool_result + new prompt" message is a new prompt: back to step 0
    let (blocks, _, _) = post(json!([
        {"role": "user", "content": "@@tools"}, assistant,
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                                     {"type": "text", "text": "[Request interrupted by user]"},
                                     {"type": "text", "text": "again @@tools"}]}
    ]))
    .await;
    assert_eq!(blocks[0]["type"], "thinking");

    // exhausted -> default
    let (blocks, _, _) = post(json!([
        {"role": "user", "content": "@@tools"}, assistant, tool_result, assistant, tool_result,
        assistant, tool_result
    ]))
    .await;
    assert_eq!(blocks[0]["text"], "Hello from mock claude");
}

/// Deferred tools (newer Claude Code): a step with `if_tool` exists only when the request offers
/// that tool, and the "Tool loaded." text after a ToolSearch result is not a new prompt.
#[tokio::test]
async fn anthropic_if_tool_steps_and_tool_search_results() {
    let mock = AnthropicMock::start(json!({
        "mode": "keyed",
        "scenarios": {"host": [
            {"if_tool": "ToolSearch", "content": [{"tool_use": {"name": "ToolSearch", "input": {"query": "select:mcp__zwarm__delegate"}}}]},
            {"content": [{"tool_use": {"name": "mcp__zwarm__delegate", "input": {"task": "t"}}}]},
            {"content": [{"text": "host done"}]}
        ]}
    }));
    let port = mock.port();
    let post = |tools: Value, messages: Value| async move {
        let body = json!({"model": "m", "stream": true, "max_tokens": 100, "tools": tools, "messages": messages});
        let r = request(port, "POST", "/v1/messages", Some(&body)).await;
        rebuild(&r.events()).0
    };
    let deferred = json!([{"name": "ToolSearch"}, {"name": "DeferredToolPlaceholder"}]);
    let loaded = json!([{"name": "ToolSearch"}, {"name": "mcp__zwarm__delegate"}]);
    let inline = json!([{"name": "Bash"}, {"name": "mcp__zwarm__delegate"}]);
    let prompt = json!({"role": "user", "content": "@@host"});
    // Old Claude Code: no ToolSearch, the call comes first.
    let b = post(inline.clone(), json!([prompt])).await;
    assert_eq!(b[0]["name"], "mcp__zwarm__delegate");
    // New Claude Code: fetch the schema, then call, then answer.
    let b = post(deferred, json!([prompt])).await;
    assert_eq!(b[0]["name"], "ToolSearch");
    let search = json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {}}]});
    let found = json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "tool_reference", "tool_name": "mcp__zwarm__delegate"}]},
        {"type": "text", "text": "Tool loaded."}
    ]});
    let b = post(loaded.clone(), json!([prompt, search, found])).await;
    assert_eq!(b[0]["name"], "mcp__zwarm__delegate");
    let call = json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "mcp__zwarm__delegate", "input": {}}]});
    let result = json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "{}"}]});
    let b = post(loaded, json!([prompt, search, found, call, result])).await;
    assert_eq!(b[0]["text"], "host done");
}

#[tokio::test]
async fn anthropic_side_reply_json_errors_and_probes() {
    let mock = AnthropicMock::start(anthropic_script());
    let port = mock.port();

    // no tools, no @@name -> side reply; non-stream -> JSON message
    let body = json!({"model": "claude-haiku", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "Generate a title"}]});
    let r = request(port, "POST", "/v1/messages?beta=true", Some(&body)).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["request-id"].starts_with("req_"));
    let msg = r.json();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["model"], "claude-haiku");
    assert_eq!(
        msg["content"],
        json!([{"type": "text", "text": "Mock side reply"}])
    );
    assert_eq!(msg["stop_reason"], "end_turn");
    assert_eq!(msg["usage"]["input_tokens"], 10);
    assert_eq!(msg["usage"]["cache_read_input_tokens"], 0);

    // streamed side reply
    let mut body_stream = body.clone();
    body_stream["stream"] = json!(true);
    let r = request(port, "POST", "/v1/messages", Some(&body_stream)).await;
    assert_eq!(rebuild(&r.events()).0[0]["text"], "Mock side reply");

    // keyed: a matching @@name wins even without tools
    let no_tools = json!({"stream": false, "messages": [{"role": "user", "content": "@@tools"}]});
    let r = request(port, "POST", "/v1/messages", Some(&no_tools)).await;
    assert_eq!(r.json()["content"][2]["name"], "Bash");
    assert_eq!(r.json()["stop_reason"], "tool_use");

    let r = request(
        port,
        "POST",
        "/v1/messages",
        Some(&messages_body(
            json!([{"role": "user", "content": "@@err529"}]),
        )),
    )
    .await;
    assert_eq!(r.status, 529);
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (mock)"}})
    );

    let r = request(
        port,
        "POST",
        "/v1/messages",
        Some(&messages_body(
            json!([{"role": "user", "content": "@@streamerr"}]),
        )),
    )
    .await;
    let events = r.events();
    let (last, data) = events.last().expect("events");
    assert_eq!(last, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(events.iter().all(|(n, _)| n != "message_stop"));

    let r = request(port, "HEAD", "/", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = request(
        port,
        "POST",
        "/v1/messages/count_tokens?beta=true",
        Some(&body),
    )
    .await;
    assert_eq!(r.json(), json!({"input_tokens": 10}));
    assert_eq!(request(port, "GET", "/v1/whatever", None).await.status, 404);
    assert_eq!(
        request(port, "POST", "/v1/complete", Some(&body))
            .await
            .status,
        404
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 9);
    assert_eq!(mock.model_requests().len(), 5);
    assert_eq!(reqs[5].method, "HEAD");
}

#[tokio::test]
async fn anthropic_sequential_side_detection() {
    let mock = AnthropicMock::start(json!({
        "turns": [{"content": [{"text": "one"}]}, {"content": [{"text": "two"}]}],
        "side_reply": "side"
    }));
    let port = mock.port();
    let ask = |tools: bool| async move {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        if tools {
            body["tools"] = json!([{"name": "Bash"}]);
        }
        request(port, "POST", "/v1/messages", Some(&body))
            .await
            .json()["content"][0]["text"]
            .clone()
    };
    assert_eq!(ask(false).await, "side");
    assert_eq!(ask(true).await, "one");
    assert_eq!(ask(false).await, "side");
    assert_eq!(ask(true).await, "two");
    assert_eq!(ask(true).await, "Hello from mock claude");
    mock.set_script(json!({"side_detection": false, "turns": [{"content": [{"text": "first"}]}]}));
    assert_eq!(ask(false).await, "first");
}

#[test]
fn placeholders_are_json_escaped() {
    let v = support::script_with_placeholders(
        r#"{"a": "__CWD__/x.txt", "b": "touch __OUTSIDE__/y"}"#,
        std::path::Path::new("/tmp/we \"ird\\dir"),
        std::path::Path::new("/out"),
    );
    assert_eq!(
        v,
        json!({"a": "/tmp/we \"ird\\dir/x.txt", "b": "touch /out/y"})
    );
}

#[test]
fn works_without_a_tokio_runtime_and_drop_stops_it() {
    let mock = AnthropicMock::start(json!({}));
    let port = mock.port();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    std::io::Write::write_all(
        &mut s,
        b"GET /__health HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("read");
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.ends_with(r#"{"ok":true}"#),
        "{out}"
    );
    drop(mock);
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "server still accepting after drop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
