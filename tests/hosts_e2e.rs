//! zwarm under real MCP hosts: Codex and Claude Code each call zwarm's `delegate` tool
//! (scripted by the model servers), and zwarm runs a real codex executor for it. Checks that
//! the hosts accept zwarm's tools and that the model receives the structured result; that
//! Codex runs two zwarm calls of one turn at the same time; that a sync call from Claude Code
//! comes back `running` before Claude Code would move it to the background; and that a client
//! speaking the 2026-07-28 revision (no `initialize`, client info on every request) gets its
//! host's wait and `subscriptions/listen`.
//!
//! `.ci/run` runs this file twice: against the pinned CLIs and against the newest ones
//! (`ZWARM_TEST_CLI_DIR`), so the scripts cope with both (Claude Code 2.1.328 and later defer
//! MCP tools behind ToolSearch).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::harness::{Env, cli_dir};
use support::mock_anthropic::AnthropicMock;
use support::mock_openai::OpenAiMock;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn zwarm_bin() -> String {
    env!("CARGO_BIN_EXE_zwarm").to_string()
}

/// The executor's model server and a CODEX_HOME for the executor (zwarm's child codex). A task
/// with `@@slowexec` takes 3 s to answer; one with `@@stall` does not answer for a minute.
fn executor_side() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({
        "mode": "keyed",
        "scenarios": {
            "slowexec": [{"delay_s": 3, "items": [{"message": "slow executor done"}]}],
            "stall": [{"stall_s": 60, "items": [{"message": "too late"}]}]
        },
        "default": {"items": [{"message": "executor says hi"}]}
    }));
    let env = Env::new(Some(&mock), None);
    (mock, env)
}

/// The Claude Code host's scripted model: call zwarm's `tool` with `input`, then answer "host
/// done". Newer Claude Code offers MCP tools behind ToolSearch, so the model fetches the tool's
/// schema first when the request offers ToolSearch, as a real model must.
fn claude_host_model(tool: &str, input: Value) -> AnthropicMock {
    let full = format!("mcp__zwarm__{tool}");
    AnthropicMock::start(json!({
        "mode": "keyed",
        "scenarios": {"hostdelegate": [
            {"if_tool": "ToolSearch", "content": [{"tool_use": {"name": "ToolSearch", "input": {"query": format!("select:{full}"), "max_results": 10}}}]},
            {"content": [{"tool_use": {"name": full, "input": input}}]},
            {"content": [{"text": "host done"}]}
        ]}
    }))
}

/// Run `claude -p` as the MCP host of `zwarm serve <zwarm_args>`, allowed to call `tool`.
/// Returns the stream-json events and the raw stdout.
async fn run_claude_host(
    exec_env: &Env,
    host_mock: &AnthropicMock,
    zwarm_args: &[&str],
    tool: &str,
) -> (Vec<Value>, String) {
    let cfg = exec_env.dir.path().join("mcp.json");
    let mut args = vec!["serve".to_string(), "--state-dir".to_string()];
    args.push(exec_env.state.display().to_string());
    args.extend(zwarm_args.iter().map(|a| a.to_string()));
    std::fs::write(
        &cfg,
        json!({"mcpServers": {"zwarm": {"command": zwarm_bin(), "args": args}}}).to_string(),
    )
    .unwrap();
    let home = exec_env.dir.path().join("claude-host-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = tokio::process::Command::new(cli_dir("claude").join("claude"));
    cmd.args([
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--strict-mcp-config",
    ])
    .arg(format!("--allowedTools=mcp__zwarm__{tool}"))
    .arg("--mcp-config")
    .arg(&cfg)
    .args(["--", "@@hostdelegate"])
    .current_dir(&exec_env.work)
    .env_remove("IS_SANDBOX")
    .env_remove("CLAUDECODE")
    .env_remove("RUST_LOG")
    .env_remove("ZWARM_TEST_CLI_DIR")
    .stdin(Stdio::null());
    for (k, v) in &exec_env.vars {
        cmd.env(k, v); // claude passes its whole environment to zwarm (CODEX_HOME, MOCK_KEY, PATH)
    }
    cmd.env("HOME", &home)
        .env("CLAUDE_CONFIG_DIR", &home)
        .env("ANTHROPIC_BASE_URL", host_mock.base_url())
        .env("MCP_CONNECTION_NONBLOCKING", "0")
        .env("MCP_CONNECT_TIMEOUT_MS", "30000");
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (events, stdout)
}

/// When the host deferred zwarm's tools (ToolSearch), the model fetched `tool`'s schema and the
/// next request carried it, with zwarm's input schema. Returns whether the host deferred them.
fn assert_schema_reached_the_model(host_mock: &AnthropicMock, tool: &str) -> bool {
    let full = format!("mcp__zwarm__{tool}");
    let reqs = host_mock.model_requests();
    let tools = |i: usize| -> Vec<Value> {
        reqs.get(i)
            .and_then(|r| r.body["tools"].as_array().cloned())
            .unwrap_or_default()
    };
    let names = |i: usize| -> Vec<String> {
        tools(i)
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect()
    };
    let first = names(0);
    let deferred = first.iter().any(|n| n == "ToolSearch") && !first.contains(&full);
    let with_schema = (0..reqs.len())
        .flat_map(tools)
        .find(|t| t["name"] == full.as_str())
        .unwrap_or_else(|| panic!("{full} never reached the model: {first:?}"));
    assert!(
        with_schema["input_schema"]["properties"].is_object(),
        "{with_schema}"
    );
    deferred
}

fn var<'a>(env: &'a Env, k: &str) -> &'a str {
    env.vars
        .iter()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.as_str())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_as_host_delegates_through_zwarm() {
    let (exec_mock, exec_env) = executor_side();
    // The host's own model server: first a namespaced MCP call to zwarm's delegate, then text.
    let host_mock = OpenAiMock::start(json!({
        "mode": "keyed",
        "scenarios": {"hostdelegate": [
            {"items": [{"function_call": {"name": "delegate", "namespace": "mcp__zwarm", "arguments": {"task": "say hello from the executor"}}}]},
            {"items": [{"message": "host done"}]}
        ]}
    }));
    let host_home = exec_env.dir.path().join("host-codex-home");
    std::fs::create_dir_all(&host_home).unwrap();
    let mut cfg = support::codex_config_toml(&host_mock.base_url());
    cfg.push_str(&format!(
        "\n[mcp_servers.zwarm]\ncommand = {:?}\nargs = [\"serve\", \"--state-dir\", {:?}]\nrequired = true\ndefault_tools_approval_mode = \"approve\"\nenv = {{ CODEX_HOME = {:?}, MOCK_KEY = \"x\", PATH = {:?} }}\n",
        zwarm_bin(),
        exec_env.state.display().to_string(),
        var(&exec_env, "CODEX_HOME"),
        var(&exec_env, "PATH"),
    ));
    std::fs::write(host_home.join("config.toml"), cfg).unwrap();
    let out = tokio::process::Command::new(cli_dir("codex").join("codex"))
        .args([
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-s",
            "workspace-write",
            "--",
            "@@hostdelegate",
        ])
        .current_dir(&exec_env.work)
        .env("CODEX_HOME", &host_home)
        .env("MOCK_KEY", "x")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let call: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "item.completed" && v["item"]["type"] == "mcp_tool_call")
        .unwrap_or_else(|| {
            panic!(
                "no mcp_tool_call in codex output:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let item = &call["item"];
    assert_eq!(item["server"], "zwarm");
    assert_eq!(item["tool"], "delegate");
    assert_eq!(item["status"], "completed", "{item}");
    let sc = &item["result"]["structured_content"];
    assert_eq!(sc["status"], "idle", "{item}");
    assert_eq!(sc["response"], "executor says hi");
    // The host's model got zwarm's structured result back.
    let last = host_mock.model_requests().last().unwrap().body["input"].to_string();
    assert!(
        last.contains("executor says hi") && last.contains("next_step"),
        "{last}"
    );
    assert!(exec_mock.model_requests().iter().any(|r| {
        r.body["input"]
            .to_string()
            .contains("say hello from the executor")
    }));
    assert!(stdout.contains("host done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_as_host_delegates_through_zwarm() {
    let (exec_mock, exec_env) = executor_side();
    let host_mock = claude_host_model("delegate", json!({"task": "say hello from the executor"}));
    let (events, stdout) = run_claude_host(&exec_env, &host_mock, &[], "delegate").await;
    let init = events
        .iter()
        .find(|e| e["type"] == "system" && e["subtype"] == "init")
        .expect("init");
    assert!(
        init["mcp_servers"].to_string().contains("\"connected\""),
        "{}",
        init["mcp_servers"]
    );
    assert!(
        init["tools"]
            .to_string()
            .contains("mcp__zwarm__check_session")
    );
    let result = events
        .iter()
        .find_map(|e| {
            e["tool_use_result"]["structuredContent"]
                .as_object()
                .cloned()
        })
        .unwrap_or_else(|| panic!("no structured tool result in claude output:\n{stdout}"));
    assert_eq!(result["status"], "idle", "{result:?}");
    assert_eq!(result["response"], "executor says hi");
    let meta = events
        .iter()
        .find(|e| {
            e["tool_use_meta"]
                .as_array()
                .is_some_and(|m| m.iter().any(|x| x["server_display_name"].is_string()))
        })
        .expect("tool_use_meta");
    assert!(
        meta["tool_use_meta"]
            .to_string()
            .contains("\"server_display_name\":\"zwarm\"")
    );
    // Deferred or not, zwarm's schema reached the model before it called the tool.
    let deferred = assert_schema_reached_the_model(&host_mock, "delegate");
    eprintln!(
        "claude {} deferred zwarm's tools behind ToolSearch: {deferred}",
        init["claude_code_version"]
    );
    // What the host's model saw for the tool result is zwarm's structuredContent.
    let reqs = host_mock.model_requests();
    let last = reqs.last().unwrap().body["messages"].to_string();
    assert!(
        last.contains("executor says hi") && last.contains("next_step"),
        "{last}"
    );
    assert!(exec_mock.model_requests().iter().any(|r| {
        r.body["input"]
            .to_string()
            .contains("say hello from the executor")
    }));
    let fin = events
        .iter()
        .find(|e| e["type"] == "result")
        .expect("result");
    assert_eq!(fin["result"], "host done");
}

/// Claude Code moves a tool call that runs 120 s into the background, and its model may then
/// never read the result. A sync `delegate` from Claude Code comes back `running` before that:
/// here with the wait shortened by config (the host's default is checked in `server.rs`), and
/// with the host's maximum, under 120 s, offered for the follow-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_sync_call_comes_back_running_before_the_background_move() {
    let (_exec_mock, exec_env) = executor_side();
    let host_mock = claude_host_model("delegate", json!({"task": "@@stall a long job"}));
    let started = Instant::now();
    let (events, stdout) = run_claude_host(
        &exec_env,
        &host_mock,
        &["--set", "sync_wait_seconds=2"],
        "delegate",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let result = events
        .iter()
        .find_map(|e| {
            e["tool_use_result"]["structuredContent"]
                .as_object()
                .cloned()
        })
        .unwrap_or_else(|| panic!("no structured tool result in claude output:\n{stdout}"));
    assert_eq!(result["status"], "running", "{result:?}");
    let next = result["next_step"].as_str().unwrap();
    let max: u64 = next
        .split("(up to ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no maximum wait in {next}"));
    assert!(
        max < 120,
        "Claude Code's maximum wait {max} s reaches its 120 s background move"
    );
    let last = host_mock.model_requests().last().unwrap().body["messages"].to_string();
    assert!(
        last.contains("running") && last.contains("check_session"),
        "{last}"
    );
}

/// Codex runs the MCP calls of one model response at the same time when the server entry says
/// `supports_parallel_tool_calls = true` (README): two `delegate` calls in one response, each
/// with an executor turn that takes 3 s, overlap in zwarm's event log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_two_zwarm_calls_of_one_turn_at_once() {
    let (exec_mock, exec_env) = executor_side();
    let call = |task: &str, call_id: &str| json!({"function_call": {"name": "delegate", "namespace": "mcp__zwarm", "call_id": call_id, "arguments": {"task": task}}});
    // The step index counts the tool calls after the prompt: 0, then 2 once both answered.
    let host_mock = OpenAiMock::start(json!({
        "mode": "keyed",
        "scenarios": {"hostparallel": [
            {"items": [call("@@slowexec first part", "call_a"), call("@@slowexec second part", "call_b")]},
            {"items": [{"message": "unused"}]},
            {"items": [{"message": "host done"}]}
        ]}
    }));
    let host_home = exec_env.dir.path().join("host-codex-home");
    std::fs::create_dir_all(&host_home).unwrap();
    let mut cfg = support::codex_config_toml(&host_mock.base_url());
    cfg.push_str(&format!(
        "\n[mcp_servers.zwarm]\ncommand = {:?}\nargs = [\"serve\", \"--state-dir\", {:?}]\nrequired = true\ndefault_tools_approval_mode = \"approve\"\nsupports_parallel_tool_calls = true\nenv = {{ CODEX_HOME = {:?}, MOCK_KEY = \"x\", PATH = {:?} }}\n",
        zwarm_bin(),
        exec_env.state.display().to_string(),
        var(&exec_env, "CODEX_HOME"),
        var(&exec_env, "PATH"),
    ));
    std::fs::write(host_home.join("config.toml"), cfg).unwrap();
    let out = tokio::process::Command::new(cli_dir("codex").join("codex"))
        .args([
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-s",
            "workspace-write",
            "--",
            "@@hostparallel",
        ])
        .current_dir(&exec_env.work)
        .env("CODEX_HOME", &host_home)
        .env("MOCK_KEY", "x")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let calls: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "item.completed" && v["item"]["type"] == "mcp_tool_call")
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for c in &calls {
        assert_eq!(c["item"]["status"], "completed", "{c}");
        assert_eq!(c["item"]["result"]["structured_content"]["status"], "idle");
    }
    assert!(stdout.contains("host done"));
    assert_eq!(exec_mock.model_requests().len(), 2);
    // From zwarm's event log: each session's turn ran from turn_started to turn_finished, and
    // the two ranges overlap.
    let events: Vec<Value> = exec_env
        .events()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let at = |kind: &str, sid: &str| -> std::time::SystemTime {
        let e = events
            .iter()
            .find(|e| e["event"] == kind && e["session_id"] == sid)
            .unwrap_or_else(|| panic!("no {kind} for {sid}"));
        humantime::parse_rfc3339(e["ts"].as_str().unwrap()).unwrap()
    };
    let sessions: Vec<String> = exec_env.session_ids();
    assert_eq!(sessions.len(), 2);
    let (a, b) = (&sessions[0], &sessions[1]);
    let (a0, a1, b0, b1) = (
        at("turn_started", a),
        at("turn_finished", a),
        at("turn_started", b),
        at("turn_finished", b),
    );
    assert!(
        a0.max(b0) < a1.min(b1),
        "the two turns did not overlap: {a0:?}..{a1:?} and {b0:?}..{b1:?}"
    );
}

/// A raw JSON-RPC client of the 2026-07-28 revision over zwarm's stdio.
struct Client2026 {
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: i64,
    /// Notifications (and other messages) read while waiting for answers.
    seen: Vec<Value>,
}

impl Client2026 {
    /// The `_meta` every 2026-07-28 request carries (client info is optional).
    fn meta(client: Option<&str>) -> Value {
        let mut m = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        });
        if let Some(name) = client {
            m["io.modelcontextprotocol/clientInfo"] = json!({"name": name, "version": "1"});
        }
        m
    }

    async fn send(&mut self, msg: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Send a request as `client` and wait for its answer.
    async fn request(&mut self, client: Option<&str>, method: &str, mut params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        params["_meta"] = Self::meta(client);
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let v = self
                .read(Duration::from_secs(60))
                .await
                .expect("an answer in time");
            if v["id"] == id && v.get("method").is_none() {
                return v;
            }
            self.seen.push(v);
        }
    }

    async fn read(&mut self, within: Duration) -> Option<Value> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .ok()?
            .unwrap()
            .expect("zwarm closed stdout");
        Some(serde_json::from_str(&line).expect("stdout carries only JSON-RPC"))
    }

    /// Wait (up to 5 s) for a message with this method.
    async fn notification(&mut self, method: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = self.seen.iter().find(|v| v["method"] == method) {
                return v.clone();
            }
            assert!(Instant::now() < deadline, "no {method}: {:?}", self.seen);
            if let Some(v) = self.read(Duration::from_millis(200)).await {
                self.seen.push(v);
            }
        }
    }
}

/// The maximum wait a running result's `next_step` offers ("… wait_seconds (up to N) …").
fn offered_wait(r: &Value) -> u64 {
    let next = r["result"]["structuredContent"]["next_step"]
        .as_str()
        .unwrap_or_else(|| panic!("no next_step: {r}"));
    next.split("(up to ")
        .nth(1)
        .and_then(|x| x.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no maximum wait in {next}"))
}

/// A client of the 2026-07-28 revision: no `initialize`; every request carries the protocol
/// version, its capabilities and its client info in `_meta`. zwarm answers `server/discover`,
/// applies each request's own host wait (one stream, several hosts), and serves
/// `subscriptions/listen` alongside the 2025 flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_07_28_client_gets_its_hosts_wait_from_each_request() {
    let (_exec_mock, exec_env) = executor_side();
    let mut cmd = exec_env.command(&["--set", "sync_wait_seconds=1"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut c = Client2026 {
        stdin: child.stdin.take(),
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        next_id: 0,
        seen: Vec::new(),
    };
    let code = Some("claude-code");
    let d = c.request(code, "server/discover", json!({})).await;
    let versions = d["result"]["supportedVersions"].to_string();
    assert!(
        ["2026-07-28", "2025-11-25", "2025-06-18"]
            .iter()
            .all(|v| versions.contains(v)),
        "{d}"
    );
    assert!(d["result"]["capabilities"]["tools"].is_object(), "{d}");

    // subscriptions/listen answers only when its stream ends; the acknowledgment comes first.
    c.send(
        json!({"jsonrpc": "2.0", "id": 100, "method": "subscriptions/listen", "params": {
            "_meta": Client2026::meta(code),
            "notifications": {"resourceSubscriptions": ["zwarm://sessions"]}
        }}),
    )
    .await;
    let ack = c
        .notification("notifications/subscriptions/acknowledged")
        .await;
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        100
    );

    // Claude Code: the sync call comes back running after the (shortened) wait, and offers at
    // most its host's maximum, under Claude Code's 120 s.
    let t = Instant::now();
    let r = c
        .request(
            code,
            "tools/call",
            json!({"name": "delegate", "arguments": {"task": "@@stall a long job"}}),
        )
        .await;
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let sc = &r["result"]["structuredContent"];
    assert_eq!(sc["status"], "running", "{r}");
    let sid = sc["session_id"].as_str().unwrap().to_string();
    assert_eq!(offered_wait(&r), 115, "{r}");
    // The same stream, other hosts: each request is judged by its own client info.
    for (client, expected) in [
        (Some("codex-mcp-client"), 280),
        (Some("claude-ai"), 55),
        (code, 115),
        (None, 45),
    ] {
        let r = c
            .request(
                client,
                "tools/call",
                json!({"name": "check_session", "arguments": {"session_id": sid}}),
            )
            .await;
        assert_eq!(r["result"]["structuredContent"]["status"], "running", "{r}");
        assert_eq!(offered_wait(&r), expected, "{client:?}: {r}");
    }
    // The listen stream hears about the new session.
    let upd = c.notification("notifications/resources/updated").await;
    assert_eq!(upd["params"]["uri"], "zwarm://sessions");
    assert_eq!(
        upd["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        100
    );
    let r = c
        .request(
            code,
            "tools/call",
            json!({"name": "end_session", "arguments": {"session_id": sid, "verdict": "cancelled"}}),
        )
        .await;
    assert_eq!(
        r["result"]["structuredContent"]["status"], "cancelled",
        "{r}"
    );
    // resources/subscribe belongs to the 2025 flow: a 2026 request is pointed elsewhere.
    let r = c
        .request(
            code,
            "resources/subscribe",
            json!({"uri": "zwarm://sessions"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32601, "{r}");
    drop(c.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("zwarm exits on stdin EOF")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Run `codex exec` as the MCP host of `zwarm serve` (with `required = true`, as `zwarm setup
/// codex` writes it) whose model calls zwarm's `list_sessions`, then answers; `server_env` goes
/// into the server's `env`. Returns codex's exit status, stdout, and its zwarm call (the
/// `mcp_tool_call` item) if codex made one.
async fn codex_host_lists_sessions(
    exec_env: &Env,
    server_env: &str,
) -> (bool, String, Option<Value>) {
    let host_mock = OpenAiMock::start(json!({
        "mode": "keyed",
        "scenarios": {"hostlist": [
            {"items": [{"function_call": {"name": "list_sessions", "namespace": "mcp__zwarm", "arguments": {}}}]},
            {"items": [{"message": "host done"}]}
        ]}
    }));
    let host_home = exec_env.dir.path().join("host-codex-home");
    std::fs::create_dir_all(&host_home).unwrap();
    let mut cfg = support::codex_config_toml(&host_mock.base_url());
    cfg.push_str(&format!(
        "\n[mcp_servers.zwarm]\ncommand = {:?}\nargs = [\"serve\", \"--state-dir\", {:?}]\nrequired = true\ndefault_tools_approval_mode = \"approve\"\nenv = {{ CODEX_HOME = {:?}, MOCK_KEY = \"x\", PATH = {:?}{server_env} }}\n",
        zwarm_bin(),
        exec_env.state.display().to_string(),
        var(exec_env, "CODEX_HOME"),
        var(exec_env, "PATH"),
    ));
    std::fs::write(host_home.join("config.toml"), cfg).unwrap();
    let out = tokio::process::Command::new(cli_dir("codex").join("codex"))
        .args([
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--",
            "@@hostlist",
        ])
        .current_dir(&exec_env.work)
        .env("CODEX_HOME", &host_home)
        .env("MOCK_KEY", "x")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let call = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "item.completed" && v["item"]["type"] == "mcp_tool_call")
        .map(|v| v["item"].clone());
    (out.status.success(), stdout, call)
}

/// A `zwarm serve` started inside an executor's turn (ZWARM_EXECUTOR_TURN set) starts
/// normally, so a codex with `required = true` still runs its turn, but zwarm's tools are not
/// there for its model to call. The same host without the variable calls list_sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_an_executor_turn_codex_runs_its_turn_without_zwarm_tools() {
    let (_exec_mock, exec_env) = executor_side();
    let (ok, stdout, call) = codex_host_lists_sessions(&exec_env, "").await;
    assert!(ok && stdout.contains("host done"), "{stdout}");
    let call = call.unwrap_or_else(|| panic!("control: no zwarm call: {stdout}"));
    assert_eq!(call["status"], "completed", "control: {call}");
    let (ok, stdout, call) =
        codex_host_lists_sessions(&exec_env, ", ZWARM_EXECUTOR_TURN = \"1\"").await;
    assert!(ok, "the nested server failed the turn: {stdout}");
    assert!(stdout.contains("host done"), "{stdout}");
    if let Some(call) = call {
        assert_ne!(call["status"], "completed", "{call}");
        assert!(
            !call.to_string().contains("\"total\""),
            "the sessions reached the executor: {call}"
        );
    }
}

/// Claude Code as the host of `zwarm serve` with the executor's environment (`turn_env`
/// adds ZWARM_EXECUTOR_TURN); its model just answers. Returns zwarm's server status and the
/// tools Claude Code offers, from the `init` event.
async fn claude_host_init(turn_env: bool) -> (Value, String, String) {
    let (_exec_mock, mut exec_env) = executor_side();
    if turn_env {
        exec_env.set("ZWARM_EXECUTOR_TURN", "1");
    }
    let host_mock = AnthropicMock::start(json!({
        "mode": "keyed",
        "scenarios": {"hostdelegate": [{"content": [{"text": "host done"}]}]}
    }));
    let (events, stdout) = run_claude_host(&exec_env, &host_mock, &[], "delegate").await;
    let init = events
        .iter()
        .find(|e| e["type"] == "system" && e["subtype"] == "init")
        .unwrap_or_else(|| panic!("no init event: {stdout}"));
    let zwarm = init["mcp_servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "zwarm"))
        .unwrap_or_else(|| panic!("zwarm not among the servers: {init}"))
        .clone();
    (zwarm["status"].clone(), init["tools"].to_string(), stdout)
}

/// The same under Claude Code: the server connects, and the model is offered no zwarm tool
/// (without the variable, the same host offers them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_an_executor_turn_claude_code_connects_and_offers_no_zwarm_tools() {
    let (status, tools, _) = claude_host_init(false).await;
    assert_eq!(status, "connected");
    assert!(tools.contains("mcp__zwarm__delegate"), "control: {tools}");
    let (status, tools, stdout) = claude_host_init(true).await;
    assert_eq!(status, "connected", "{stdout}");
    assert!(!tools.contains("mcp__zwarm__"), "{tools}");
    assert!(stdout.contains("host done"), "{stdout}");
}
