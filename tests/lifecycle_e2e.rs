//! Async sessions and the lifecycle: interrupts, shutdown, crashes, the running cap, two
//! servers on one state dir — with the real codex CLI running scripted slow commands.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, cmdline, keyed_script, turn_pids, wait_done};
use support::mock_openai::OpenAiMock;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The keyed codex script plus `@@sleepN` scenarios: a shell command `sleep N`, then a message.
fn script(env: &Env) -> Value {
    let mut s = keyed_script("codex_keyed.json", &env.work);
    for n in [3, 60] {
        s["scenarios"][format!("sleep{n}")] = json!([
            {"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": format!("sleep {n}; echo finished > slept{n}.txt"), "yield_time_ms": 120000}}}]},
            {"items": [{"message": format!("slept {n}")}]}
        ]);
    }
    s
}

fn codex_env() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(script(&env));
    (mock, env)
}

/// Wait until the session's turn has processes and one of them is the scripted `sleep`.
async fn wait_for_sleep(id: &str) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let pids = turn_pids(id);
        if pids.iter().any(|p| cmdline(*p).starts_with("sleep ")) {
            return pids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no `sleep` process appeared for {id}: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_gone_within(id: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let left = turn_pids(id);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "processes of {id} still alive after {limit:?}: {:?}",
            left.iter().map(|p| (p, cmdline(*p))).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_delegate_returns_at_once_and_check_session_waits_for_the_end() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let t = Instant::now();
    let r = z
        .ok("delegate", json!({"task": "@@sleep3", "mode": "async"}))
        .await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r["status"], "running");
    assert_eq!(r["mode"], "async");
    assert!(r["response"].is_null());
    assert!(r["next_step"].as_str().unwrap().contains("check_session"));
    let id = r["session_id"].as_str().unwrap().to_string();

    wait_for_sleep(&id).await;
    // codex reports the command (item.started) a moment after spawning it.
    let start = Instant::now();
    loop {
        let s = z.ok("check_session", json!({"session_id": id})).await;
        assert_eq!(s["status"], "running");
        let progress = s["recent_progress"].to_string();
        if progress.contains("codex runs `sleep 3") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "progress should name the running command: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let s = z
        .ok(
            "check_session",
            json!({"session_id": id, "wait_seconds": 60}),
        )
        .await;
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["response"], "slept 3");
    assert!(env.work.join("slept3.txt").exists());
    assert_eq!(s["turns"][0]["commands"][0]["exit_code"], 0);

    // converse after the turn ended continues the thread, async this time.
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "@@sleep3 again", "mode": "async"}),
        )
        .await;
    assert_eq!(c["status"], "running");
    assert_eq!(c["turn"], 2);
    let s = wait_done(&z, &id).await;
    assert_eq!(s["status"], "idle");
    assert_eq!(s["turns"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_session_cancelled_kills_the_executor_and_its_command() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok("delegate", json!({"task": "@@sleep60", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let pids = wait_for_sleep(&id).await;
    assert!(pids.len() >= 2, "expected codex and its sleep: {pids:?}");

    let t = Instant::now();
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled", "summary": "not needed"}),
        )
        .await;
    assert_eq!(e["status"], "cancelled");
    assert_eq!(e["interrupted_turn"], true);
    assert_gone_within(&id, Duration::from_secs(10) - t.elapsed()).await;
    for p in pids {
        assert!(!zwarm::process::pid_alive(p), "pid {p} survived");
    }
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "cancelled");
    assert_eq!(s["summary"], "not needed");
    assert_eq!(s["turns"][0]["status"], "interrupted");
    assert!(!env.work.join("slept60.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_sync_call_interrupts_its_turn_and_timeouts_fail_the_turn() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &["--set", "turn_timeout_seconds=4"]).await;
    // The client gives up after 2 s: rmcp sends notifications/cancelled for the dropped call.
    let call = z.call("delegate", json!({"task": "@@sleep60"}));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .is_err()
    );
    let l = z.ok("list_sessions", json!({})).await;
    let id = l["sessions"][0]["session_id"].as_str().unwrap().to_string();
    let s = wait_done(&z, &id).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["turns"][0]["status"], "interrupted");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("cancelled the tool call"),
        "{s}"
    );
    assert_gone_within(&id, Duration::from_secs(10)).await;

    // A turn that outlives turn_timeout_seconds is stopped and failed with the reason.
    let r = z
        .ok("delegate", json!({"task": "@@sleep60", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let s = wait_done(&z, &id).await;
    assert_eq!(s["status"], "failed");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("turn_timeout_seconds"),
        "{s}"
    );
    assert_gone_within(&id, Duration::from_secs(10)).await;
}

/// A raw JSON-RPC client over pipes, so the test controls stdin EOF itself.
struct RawClient {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl RawClient {
    async fn start(env: &Env) -> RawClient {
        let mut cmd = env.command(&[]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut c = RawClient {
            child,
            stdin,
            lines,
        };
        c.send(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw-test","version":"1"}}})).await;
        c.response(0).await;
        c.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        c
    }
    async fn send(&mut self, v: Value) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(format!("{v}\n").as_bytes()).await.unwrap();
        s.flush().await.unwrap();
    }
    async fn response(&mut self, id: i64) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .expect("response in time")
                .unwrap()
                .expect("zwarm closed stdout");
            let v: Value = serde_json::from_str(&line).expect("stdout carries only JSON-RPC");
            if v["id"] == id {
                return v;
            }
        }
    }
    async fn call(&mut self, id: i64, tool: &str, args: Value) -> Value {
        self.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})).await;
        self.response(id).await["result"]["structuredContent"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_by_stdin_eof_or_sigterm_leaves_nothing_and_restart_resumes() {
    let (mock, env) = codex_env();

    // 1. stdin EOF while a turn runs.
    let mut raw = RawClient::start(&env).await;
    let r = raw
        .call(1, "delegate", json!({"task": "@@sleep60", "mode": "async"}))
        .await;
    let id_eof = r["session_id"].as_str().unwrap().to_string();
    wait_for_sleep(&id_eof).await;
    let t = Instant::now();
    drop(raw.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(5), raw.child.wait())
        .await
        .expect("zwarm exits after stdin EOF")
        .unwrap();
    let took = t.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert_gone_within(&id_eof, Duration::from_millis(500)).await;

    // 2. SIGTERM while a turn runs.
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok("delegate", json!({"task": "@@sleep60", "mode": "async"}))
        .await;
    let id_term = r["session_id"].as_str().unwrap().to_string();
    wait_for_sleep(&id_term).await;
    let took = z
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert_gone_within(&id_term, Duration::from_millis(500)).await;
    drop(z);

    // 3. After a restart both sessions carry the reason, and converse resumes their threads.
    let z = Zwarm::start(&env, &[]).await;
    for id in [&id_eof, &id_term] {
        let s = z.ok("check_session", json!({"session_id": id})).await;
        assert_eq!(s["status"], "failed", "{s}");
        assert_eq!(s["turns"][0]["status"], "interrupted");
        assert!(s["error"].as_str().unwrap().contains("shut down"), "{s}");
        assert!(s["native_id"].is_string());
        let c = z
            .ok(
                "converse",
                json!({"session_id": id, "message": "please continue"}),
            )
            .await;
        assert_eq!(c["status"], "idle", "{c}");
        let last = mock.model_requests().last().unwrap().body["input"].to_string();
        assert!(
            last.contains("@@sleep60") && last.contains("please continue"),
            "thread not resumed: {last}"
        );
    }
    let events = env.events();
    assert!(events.matches("\"event\":\"server_stopped\"").count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_server_mid_turn_is_recovered_on_restart() {
    let (_mock, env) = codex_env();
    // danger-full-access: codex's commands are not confined, so they outlive codex.
    let danger = ["--set", "codex.sandbox=danger-full-access"];
    let z = Zwarm::start(&env, &danger).await;
    let done = z
        .ok("delegate", json!({"task": "finished before the crash"}))
        .await;
    let r = z
        .ok("delegate", json!({"task": "@@sleep60", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    wait_for_sleep(&id).await;
    let events_before = env.events();
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .await;
    drop(z);
    // codex got SIGTERM (parent-death signal); its `sleep` would outlive the crash, but the
    // reaper kills what the dead server's turn left within 2 s.
    assert_gone_within(&id, Duration::from_secs(2)).await;

    let z = Zwarm::start(&env, &danger).await;
    // Every stored session parses; every event written before the kill is still there.
    let ids = env.session_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    for id in ids {
        assert_eq!(env.session_meta(&id)["id"], Value::String(id.clone()));
    }
    let events_after = env.events();
    assert!(events_after.starts_with(&events_before));
    for l in events_after.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}"));
    }
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "failed");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("stopped before it finished"),
        "{s}"
    );
    let s = z
        .ok("check_session", json!({"session_id": done["session_id"]}))
        .await;
    assert_eq!(s["status"], "idle");
    let c = z
        .ok("converse", json!({"session_id": id, "message": "go on"}))
        .await;
    assert_eq!(c["status"], "idle", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_cap_queues_and_queued_turns_start_when_slots_free() {
    let (_mock, env) = codex_env();
    let cap = 2;
    let z = Zwarm::start(&env, &["--set", &format!("max_running={cap}")]).await;
    let mut ids = vec![];
    for _ in 0..cap + 2 {
        let r = z
            .ok("delegate", json!({"task": "@@sleep60", "mode": "async"}))
            .await;
        ids.push(r["session_id"].as_str().unwrap().to_string());
    }
    let count = |l: &Value, st: &str| {
        l["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == st)
            .count()
    };
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(count(&l, "running"), cap, "{l}");
    assert_eq!(count(&l, "queued"), 2, "{l}");
    let queued = z.ok("list_sessions", json!({"status": "queued"})).await;
    assert_eq!(queued["count"], 2);
    // Queued sessions have no executor process yet.
    for s in queued["sessions"].as_array().unwrap() {
        assert!(turn_pids(s["session_id"].as_str().unwrap()).is_empty());
    }
    // Free one slot: exactly one queued session starts.
    let running: Vec<String> = ids
        .iter()
        .filter(|i| !queued["sessions"].to_string().contains(i.as_str()))
        .cloned()
        .collect();
    z.ok(
        "end_session",
        json!({"session_id": running[0], "verdict": "cancelled"}),
    )
    .await;
    let start = Instant::now();
    loop {
        let l = z.ok("list_sessions", json!({})).await;
        if count(&l, "queued") == 1 {
            assert_eq!(count(&l, "running"), cap, "{l}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "queued turn did not start: {l}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids[1..] {
        let _ = z
            .call(
                "end_session",
                json!({"session_id": id, "verdict": "cancelled"}),
            )
            .await;
    }
    for id in &ids {
        assert_gone_within(id, Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_state_dir_keep_every_session_and_event() {
    let (_mock, env) = codex_env();
    let a = Zwarm::start(&env, &[]).await;
    let b = Zwarm::start(&env, &[]).await;
    let mut ids = vec![];
    for i in 0..3 {
        for (name, z) in [("a", &a), ("b", &b)] {
            let r = z
                .ok(
                    "delegate",
                    json!({"task": format!("task {name}{i}"), "mode": "async"}),
                )
                .await;
            ids.push(r["session_id"].as_str().unwrap().to_string());
        }
    }
    for id in &ids {
        // Each server can see (and wait for) the other's sessions.
        let s = wait_done(&a, id).await;
        assert_eq!(s["status"], "idle", "{s}");
    }
    // A server cannot run turns of a live peer's session, and says why.
    let m = a
        .err(
            "converse",
            json!({"session_id": ids[1], "message": "mine now"}),
        )
        .await;
    assert!(m.contains("another zwarm server"), "{m}");
    let la = a.ok("list_sessions", json!({})).await;
    let lb = b.ok("list_sessions", json!({})).await;
    assert_eq!(la["count"], 6);
    assert_eq!(lb["count"], 6);
    let events = env.events();
    let parsed: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).expect("whole lines"))
        .collect();
    for id in &ids {
        for kind in ["session_started", "turn_started", "turn_finished"] {
            assert!(
                parsed
                    .iter()
                    .any(|e| e["event"] == kind && e["session_id"] == id.as_str()),
                "{kind} missing for {id}"
            );
        }
    }
    // When one server goes away, the other adopts its sessions.
    b.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    let c = a
        .ok(
            "converse",
            json!({"session_id": ids[1], "message": "adopted"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_process_left_by_a_finished_turn_is_killed_and_reaped() {
    let (mock, env) = codex_env();
    let mut s = script(&env);
    s["scenarios"]["daemon"] = json!([
        {"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": "setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo $! > daemon.pid; echo started"}}}]},
        {"items": [{"message": "left a daemon"}]}
    ]);
    mock.set_script(s);
    // danger-full-access: codex does not confine (or kill) what its commands start.
    let z = Zwarm::start(&env, &["--set", "codex.sandbox=danger-full-access"]).await;
    let r = z.ok("delegate", json!({"task": "@@daemon"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["response"], "left a daemon");
    let id = r["session_id"].as_str().unwrap();
    let pid: i32 = std::fs::read_to_string(env.work.join("daemon.pid"))
        .expect("the daemon was started")
        .trim()
        .parse()
        .unwrap();
    assert_gone_within(id, Duration::from_secs(5)).await;
    assert!(
        !zwarm::process::pid_alive(pid),
        "daemon {pid} survived the turn"
    );
    // No zombie either: zwarm (a subreaper) reaped what it killed. (Children zwarm runs
    // itself, like the quality watcher's git scan, can be zombies for the instant between
    // their exit and their wait: wait for the condition rather than sample it once. On a
    // loaded machine a killed process can turn into a zombie only after the sweep's own wait
    // ended; then the 5 s housekeeping reaps it, so allow for one period of it.)
    for _ in 0..200 {
        if zombie_children_of(z.pid).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        zombie_children_of(z.pid).is_empty(),
        "zombies: {:?}",
        zombie_children_of(z.pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_session_stops_a_claude_bash_command() {
    let mock = support::mock_anthropic::AnthropicMock::start(json!({}));
    let env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "@@slowcmd", "adapter": "claude", "mode": "async"}),
        )
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    wait_for_sleep(&id).await;
    let t = Instant::now();
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled"}),
        )
        .await;
    assert_eq!(e["interrupted_turn"], true);
    assert_gone_within(&id, Duration::from_secs(10) - t.elapsed()).await;
    assert!(!env.work.join("slow.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_converses_start_exactly_one_turn() {
    let (mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z.ok("delegate", json!({"task": "say hello"})).await;
    let id = r["session_id"].as_str().unwrap().to_string();
    for round in 0..3 {
        let a = z.call(
            "converse",
            json!({"session_id": id, "message": format!("@@sleep3 a{round}"), "mode": "async"}),
        );
        let b = z.call(
            "converse",
            json!({"session_id": id, "message": format!("@@sleep3 b{round}"), "mode": "async"}),
        );
        let (a, b) = tokio::join!(a, b);
        let ok: Vec<_> = [&a, &b]
            .into_iter()
            .filter(|r| r.is_error != Some(true))
            .collect();
        assert_eq!(
            ok.len(),
            1,
            "exactly one converse may start a turn: {a:?} {b:?}"
        );
        let s = wait_done(&z, &id).await;
        assert_eq!(s["status"], "idle", "{s}");
        assert_eq!(s["turns"].as_array().unwrap().len(), round + 2);
    }
    // Exactly one of each round's two messages ever reached the model.
    let texts: Vec<String> = mock
        .model_requests()
        .iter()
        .map(|r| r.body["input"].to_string())
        .collect();
    for round in 0..3 {
        let a = texts
            .iter()
            .any(|t| t.contains(&format!("@@sleep3 a{round}")));
        let b = texts
            .iter()
            .any(|t| t.contains(&format!("@@sleep3 b{round}")));
        assert!(a ^ b, "round {round}: a seen {a}, b seen {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_eof_with_a_sync_call_in_flight_exits_within_two_seconds() {
    let (_mock, env) = codex_env();
    let mut raw = RawClient::start(&env).await;
    raw.send(json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delegate","arguments":{"task":"@@sleep60"}}})).await;
    // Find the session from the state dir (the sync call has not answered).
    let start = Instant::now();
    let id = loop {
        if let Some(id) = env.session_ids().into_iter().next() {
            break id;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for_sleep(&id).await;
    let t = Instant::now();
    drop(raw.stdin.take());
    tokio::time::timeout(Duration::from_secs(5), raw.child.wait())
        .await
        .expect("zwarm exits")
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "exit took {:?}",
        t.elapsed()
    );
    assert_gone_within(&id, Duration::from_millis(500)).await;
    // The turn records the shutdown, not "the client cancelled the call".
    let z = Zwarm::start(&env, &[]).await;
    let s = z.ok("check_session", json!({"session_id": id})).await;
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("shut down") && !err.contains("cancelled the tool call"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_that_exits_on_its_own_is_reaped() {
    let (mock, env) = codex_env();
    let mut s = script(&env);
    s["scenarios"]["orphan"] = json!([
        {"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": "sh -c 'sleep 0.3 & echo $! > orphan.pid' ; sleep 8; echo done", "yield_time_ms": 120000}}}]},
        {"items": [{"message": "orphan left"}]}
    ]);
    mock.set_script(s);
    let z = Zwarm::start(&env, &["--set", "codex.sandbox=danger-full-access"]).await;
    let r = z
        .ok("delegate", json!({"task": "@@orphan", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    // While the turn is still running (it sleeps 8 s), the orphan exits after 0.3 s and
    // becomes zwarm's zombie; the periodic reaper (every 5 s) must collect it mid-turn.
    let start = Instant::now();
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(env.work.join("orphan.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "orphan never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Wait for the orphan to be reaped (gone from /proc), not for a fixed time: the reaper
    // runs every 5 s, and the turn holds on for 8 s.
    let reaped = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            reaped.elapsed() < Duration::from_secs(7),
            "the orphan {pid} was not reaped within two reaper rounds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(
        s["status"], "running",
        "the check must happen mid-turn: {s}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || !stat.contains(") Z"),
        "zombie left mid-turn: {stat}"
    );
    assert!(zombie_children_of(z.pid).is_empty());
    let s = wait_done(&z, &id).await;
    assert_eq!(s["status"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_call_returns_running_after_wait_seconds_and_the_turn_goes_on() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let t = Instant::now();
    let r = z
        .ok("delegate", json!({"task": "@@sleep3", "wait_seconds": 1}))
        .await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(r["status"], "running", "{r}");
    assert_eq!(r["mode"], "sync");
    assert!(r["response"].is_null());
    assert!(r["next_step"].as_str().unwrap().contains("check_session"));
    let s = z
        .ok(
            "check_session",
            json!({"session_id": r["session_id"], "wait_seconds": 30}),
        )
        .await;
    assert_eq!(s["status"], "idle");
    assert_eq!(s["response"], "slept 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_session_racing_converse_or_itself_ends_final_with_nothing_running() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &["--set", "interrupt_grace_seconds=1"]).await;
    for round in 0..3 {
        let r = z.ok("delegate", json!({"task": "say hello"})).await;
        let id = r["session_id"].as_str().unwrap().to_string();
        let c = z.call(
            "converse",
            json!({"session_id": id, "message": "@@sleep60", "mode": "async"}),
        );
        let e1 = z.call(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled", "summary": format!("r{round}")}),
        );
        let e2 = z.call(
            "end_session",
            json!({"session_id": id, "verdict": "completed"}),
        );
        let (_c, e1, e2) = tokio::join!(c, e1, e2);
        let ended: Vec<_> = [&e1, &e2]
            .into_iter()
            .filter(|r| r.is_error != Some(true))
            .collect();
        assert_eq!(
            ended.len(),
            1,
            "exactly one end_session wins: {e1:?} {e2:?}"
        );
        let s = z.ok("check_session", json!({"session_id": id})).await;
        assert!(
            s["status"] == "cancelled" || s["status"] == "completed",
            "{s}"
        );
        assert_gone_within(&id, Duration::from_secs(10)).await;
        // Whatever the order, no turn is left running under a final status.
        let s = z.ok("check_session", json!({"session_id": id})).await;
        assert!(
            s["turns"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["status"] != "running" && t["status"] != "queued"),
            "{s}"
        );
    }
}

/// Zombie processes whose parent is `parent`.
fn zombie_children_of(parent: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|st| {
            st.rsplit_once(')').is_some_and(|(_, r)| {
                let f: Vec<&str> = r.split_whitespace().collect();
                f.first() == Some(&"Z") && f.get(1) == Some(&parent.to_string().as_str())
            })
        })
        .collect()
}
