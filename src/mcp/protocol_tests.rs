//! The protocol as a client sees it, line by line: a server on a real session manager (a
//! temporary state dir, no executor), driven through the framing layer with raw JSON-RPC
//! lines, the way a host drives `zwarm serve` over stdio.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
use tokio_util::sync::CancellationToken;

use super::ZwarmServer;

struct Raw {
    to: DuplexStream,
    from: Lines<BufReader<DuplexStream>>,
    server: ZwarmServer,
    ct: CancellationToken,
    /// The answer to `initialize`.
    init: Value,
    _dir: tempfile::TempDir,
}

impl Raw {
    async fn start(executor_turn: bool) -> Raw {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::config::Config {
            state_dir: dir.path().join("state"),
            ..Default::default()
        };
        let manager = crate::sessions::Manager::start(cfg, dir.path().to_path_buf())
            .await
            .expect("manager");
        let server = ZwarmServer::new(manager).with_executor_turn(executor_turn);
        let (to, server_in) = tokio::io::duplex(1 << 20);
        let (server_out, from) = tokio::io::duplex(1 << 20);
        let ct = CancellationToken::new();
        let mut raw = Raw {
            to,
            from: BufReader::new(from).lines(),
            server: server.clone(),
            ct: ct.clone(),
            init: Value::Null,
            _dir: dir,
        };
        raw.send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#.as_bytes()).await;
        raw.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        let running = server
            .serve_framed((server_in, server_out), ct)
            .await
            .expect("initialized");
        tokio::spawn(async move {
            let _ = running.waiting().await;
        });
        raw.init = raw.next().await;
        assert_eq!(raw.init["id"], 0, "{}", raw.init);
        raw
    }

    async fn send(&mut self, line: &[u8]) {
        self.to.write_all(line).await.expect("write");
        self.to.write_all(b"\n").await.expect("write");
        self.to.flush().await.expect("flush");
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.from.next_line())
            .await
            .expect("an answer in time")
            .expect("read")
            .expect("a line");
        serde_json::from_str(&line).expect("stdout carries only JSON-RPC")
    }

    /// The answer to request `id` (notifications in between are skipped).
    async fn answer(&mut self, id: i64) -> Value {
        loop {
            let v = self.next().await;
            if v["id"] == id {
                return v;
            }
        }
    }

    async fn call(&mut self, id: i64, tool: &str, args: Value) -> Value {
        let req = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}});
        self.send(req.to_string().as_bytes()).await;
        self.answer(id).await
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.ct.cancel();
    }
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn error_text(v: &Value) -> String {
    assert_eq!(v["result"]["isError"], true, "{v}");
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_line_gets_an_answer_that_says_what_was_wrong() {
    let mut c = Raw::start(false).await;
    // Not JSON, not UTF-8, a lone surrogate: −32700 each, never silence.
    for line in [
        &b"this is not json"[..],
        &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"x\":\"\xff\xfe\"}"[..],
        &br#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"\ud800"}}"#[..],
    ] {
        c.send(line).await;
        let r = c.next().await;
        assert_eq!(r["error"]["code"], -32700, "{r}");
        assert_eq!(r["id"], Value::Null);
    }
    // Over the size limit: −32700 naming the limit; the server reads on.
    let limit = super::framing::max_request_bytes(c.server.max_task_bytes());
    let mut big = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delegate","arguments":{"task":""#.to_vec();
    big.resize(limit + 10, b'a');
    big.extend_from_slice(br#""}}}"#);
    c.send(&big).await;
    let r = c.next().await;
    assert_eq!(r["error"]["code"], -32700, "{r}");
    assert!(message(&r).contains(&limit.to_string()), "{r}");
    // `arguments` as a string: −32602 naming it (rmcp alone says "method not found").
    c.send(br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"list_sessions","arguments":"{}"}}"#).await;
    let r = c.answer(4).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(message(&r).contains("`arguments` must be an object"), "{r}");
    // A bad value names its own field.
    let r = c.call(5, "list_sessions", json!({"limit": "ten"})).await;
    let t = error_text(&r);
    assert!(t.contains("`limit` must be a number"), "{t}");
    assert!(!t.contains("wait_seconds"), "{t}");
    let r = c.call(51, "delegate", json!({"task": 5})).await;
    let t = error_text(&r);
    assert!(t.contains("`task` must be a string, got 5"), "{t}");
    // A NUL in any string argument, and a model no executor can take: refused up front.
    let r = c
        .call(
            6,
            "delegate",
            json!({"task": "fix\u{0}it", "mode": "async"}),
        )
        .await;
    assert!(error_text(&r).contains("`task` contains a NUL"), "{r}");
    let r = c
        .call(7, "delegate", json!({"task": "fix it", "model": "--yolo"}))
        .await;
    assert!(error_text(&r).contains("model `--yolo`"), "{r}");
    let r = c.call(8, "list_sessions", json!({})).await;
    assert_eq!(
        r["result"]["structuredContent"]["total"], 0,
        "nothing was started: {r}"
    );
    // The stream is still in step: a good request after all that gets its answer.
    c.send(br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#).await;
    assert!(c.answer(9).await.get("result").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_subscriptions_are_kept_once_and_checked_without_reading() {
    let mut c = Raw::start(false).await;
    let mut batch = Vec::new();
    for i in 0..20_000 {
        batch.extend_from_slice(
            format!(r#"{{"jsonrpc":"2.0","id":{},"method":"resources/subscribe","params":{{"uri":"zwarm://sessions"}}}}"#, 100 + i)
                .as_bytes(),
        );
        batch.push(b'\n');
    }
    let writer = {
        let mut to = std::mem::replace(&mut c.to, tokio::io::duplex(1).0);
        tokio::spawn(async move {
            to.write_all(&batch).await.expect("write");
            to.flush().await.expect("flush");
            to
        })
    };
    let mut answered = 0;
    while answered < 20_000 {
        let r = c.next().await;
        assert!(r.get("result").is_some(), "{r}");
        answered += 1;
    }
    c.to = writer.await.expect("writer");
    assert_eq!(c.server.subs.lock().map(|s| s.len()).unwrap_or(0), 1);
    // An unknown session is refused; a page uri with a bad parameter too.
    c.send(br#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"zwarm://sessions/nope-nope-nope"}}"#).await;
    assert!(c.answer(1).await.get("error").is_some());
    c.send(br#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"zwarm://sessions?limit=ten"}}"#).await;
    let r = c.answer(2).await;
    assert!(message(&r).contains("`limit`"), "{r}");
    // The index is a page, with the total.
    c.send(br#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"zwarm://sessions"}}"#).await;
    let r = c.answer(3).await;
    let text = r["result"]["contents"][0]["text"].as_str().unwrap_or("{}");
    let page: Value = serde_json::from_str(text).expect("json");
    assert_eq!(page["total"], 0, "{page}");
    assert_eq!(page["next_offset"], Value::Null, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_an_executor_turn_the_server_offers_nothing_and_says_why() {
    let mut c = Raw::start(true).await;
    let instructions = c.init["result"]["instructions"]
        .as_str()
        .unwrap_or_default();
    assert!(
        instructions.contains("inside a zwarm executor's turn"),
        "{}",
        c.init
    );
    c.send(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .await;
    let r = c.answer(1).await;
    assert_eq!(r["result"]["tools"], json!([]), "{r}");
    let r = c
        .call(2, "delegate", json!({"task": "recurse", "mode": "async"}))
        .await;
    assert!(error_text(&r).contains("executor's turn"), "{r}");
    let r = c.call(3, "list_sessions", json!({})).await;
    assert!(error_text(&r).contains("ZWARM_EXECUTOR_TURN"), "{r}");
    c.send(br#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"zwarm://sessions"}}"#).await;
    assert!(c.answer(4).await.get("error").is_some());
}
