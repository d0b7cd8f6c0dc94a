//! zwarm under real MCP hosts: Codex and Claude Code each call zwarm's `delegate` tool
//! (scripted by the model servers), and zwarm runs a real codex executor for it. Checks that
//! the hosts accept zwarm's tools and that the model receives the structured result.

mod support;

use std::process::Stdio;

use serde_json::{Value, json};
use support::harness::{Env, cli_dir};
use support::mock_anthropic::AnthropicMock;
use support::mock_openai::OpenAiMock;

fn zwarm_bin() -> String {
    env!("CARGO_BIN_EXE_zwarm").to_string()
}

/// The executor's model server and a CODEX_HOME for the executor (zwarm's child codex).
fn executor_side() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(
        json!({"mode": "keyed", "scenarios": {}, "default": {"items": [{"message": "executor says hi"}]}}),
    );
    let env = Env::new(Some(&mock), None);
    (mock, env)
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
    let host_mock = AnthropicMock::start(json!({
        "mode": "keyed",
        "scenarios": {"hostdelegate": [
            {"content": [{"tool_use": {"name": "mcp__zwarm__delegate", "input": {"task": "say hello from the executor"}}}]},
            {"content": [{"text": "host done"}]}
        ]}
    }));
    let cfg = exec_env.dir.path().join("mcp.json");
    std::fs::write(
        &cfg,
        json!({"mcpServers": {"zwarm": {"command": zwarm_bin(), "args": ["serve", "--state-dir", exec_env.state]}}}).to_string(),
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
        "--allowedTools=mcp__zwarm__delegate",
        "--mcp-config",
    ])
    .arg(&cfg)
    .args(["--", "@@hostdelegate"])
    .current_dir(&exec_env.work)
    .env_remove("IS_SANDBOX")
    .env_remove("CLAUDECODE")
    .env_remove("RUST_LOG")
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
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
        .find(|e| e["tool_use_meta"].is_array())
        .expect("tool_use_meta");
    assert_eq!(meta["tool_use_meta"][0]["server_display_name"], "zwarm");
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
