//! `zwarm serve` driving the real `claude` CLI against the scripted Messages-API server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use serde_json::json;
use support::harness::{Env, Zwarm, keyed_script};
use support::mock_anthropic::AnthropicMock;

fn claude_env() -> (AnthropicMock, Env) {
    let mock = AnthropicMock::start(json!({}));
    let env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    (mock, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_writes_files_and_converse_resumes_with_usage_and_cost() {
    let (mock, env) = claude_env();
    let z = Zwarm::start(&env, &[]).await;

    let r = z
        .ok("delegate", json!({"task": "@@tools", "adapter": "claude"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["adapter"], "claude");
    assert_eq!(r["response"], "Done: created out.txt and written.txt");
    // acceptEdits (the default) let claude run Bash and use the Write tool for real.
    assert_eq!(
        std::fs::read_to_string(env.work.join("written.txt")).unwrap(),
        "written by Write tool\n"
    );
    assert!(env.work.join("out.txt").exists());
    let files = r["files_changed"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("written.txt")),
        "{r}"
    );
    assert_eq!(r["commands"][0]["command"], "echo hi > out.txt && ls");
    assert_eq!(r["commands"][0]["exit_code"], 0);
    assert_eq!(r["permission_denials"].as_array().unwrap().len(), 0);
    assert!(r["cost_usd"].as_f64().unwrap() > 0.0, "{r}");
    let id = r["session_id"].as_str().unwrap().to_string();

    let s = z.ok("check_session", json!({"session_id": id})).await;
    let native = s["native_id"]
        .as_str()
        .expect("claude session id")
        .to_string();

    // The alias claude_code is accepted too; converse resumes the same claude session.
    let before = mock.model_requests().len();
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "and one more thing"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}\n{}", z.stderr());
    assert_eq!(c["turn"], 2);
    assert_eq!(c["response"], "Hello from mock claude");
    let reqs = mock.model_requests();
    let last = &reqs[reqs.len() - 1];
    assert!(reqs.len() > before);
    let msgs = last.body["messages"].to_string();
    assert!(
        msgs.contains("@@tools"),
        "history of turn 1 missing from the resumed request"
    );
    assert!(msgs.contains("written by Write tool"));
    assert!(msgs.contains("and one more thing"));
    assert_eq!(
        last.header("x-claude-code-session-id"),
        Some(native.as_str())
    );

    // Tokens and cost per turn and in total.
    let s = z.ok("check_session", json!({"session_id": id})).await;
    let turns = s["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    let t1 = turns[0]["cost_usd"].as_f64().unwrap();
    let t2 = turns[1]["cost_usd"].as_f64().unwrap();
    assert!(t1 > 0.0 && t2 > 0.0);
    assert!(
        (s["cost_usd"].as_f64().unwrap() - (t1 + t2)).abs() < 1e-9,
        "{s}"
    );
    assert_eq!(turns[0]["usage"]["input_tokens"], 30);
    assert_eq!(
        turns[1]["usage"]["input_tokens"], 10,
        "claude usage is per invocation"
    );
    assert_eq!(s["usage"]["input_tokens"], 40);
    let l = z.ok("list_sessions", json!({})).await;
    assert!(l["sessions"][0]["cost_usd"].as_f64().unwrap() > 0.0);
    let d = z
        .ok("delegate", json!({"task": "hi", "adapter": "claude_code"}))
        .await;
    assert_eq!(d["adapter"], "claude");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_bash_is_reported_as_a_permission_denial() {
    // `manual` is newer Claude Code's name for `default`; zwarm passes the spelling every
    // version accepts.
    for mode in ["default", "manual"] {
        let (_mock, env) = claude_env();
        let set = format!("claude.permission_mode={mode}");
        let z = Zwarm::start(&env, &["--set", &set]).await;
        let r = z
            .ok(
                "delegate",
                json!({"task": "@@bashonly", "adapter": "claude"}),
            )
            .await;
        assert_eq!(r["status"], "idle", "{mode}: {r}\n{}", z.stderr());
        let denials = r["permission_denials"].as_array().unwrap();
        assert_eq!(denials.len(), 1, "{mode}: {r}");
        assert_eq!(denials[0]["tool"], "Bash");
        assert_eq!(denials[0]["input"]["command"], "echo hi > out.txt && ls");
        // A denial is reported once, as a denial, not again as a tool error.
        assert_eq!(r["tool_errors"], json!([]), "{mode}: {r}");
        assert!(
            !env.work.join("out.txt").exists(),
            "the denied command must not have run"
        );
        assert_eq!(r["response"], "bash done");
    }
}

/// Refusals inside a turn reach the orchestrator: Claude Code 2.1.332 blocks `sleep 61`
/// ("Blocked: standalone sleep 61 … use Monitor / run_in_background"), 2.1.197 runs it and cuts
/// it off at the tool's 2 s timeout; either way the turn completes, and `tool_errors` says what
/// the executor could not do, with a Read of a missing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_failed_tools_reach_the_orchestrator_as_tool_errors() {
    let (_mock, env) = claude_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "@@blockedsleep", "adapter": "claude"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["response"], "gave up waiting");
    assert_eq!(r["permission_denials"], json!([]), "{r}");
    let errors = r["tool_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{r}");
    assert_eq!(errors[0]["tool"], "Bash");
    assert_eq!(errors[0]["input"], "sleep 61");
    let m = errors[0]["message"].as_str().unwrap();
    assert!(m.starts_with("Blocked:") || m.contains("timed out"), "{m}");
    eprintln!("claude's answer to `sleep 61`: {m}");
    assert_eq!(errors[1]["tool"], "Read");
    assert!(
        errors[1]["input"]
            .as_str()
            .unwrap()
            .ends_with("missing.txt")
    );
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("File does not exist")
    );
    // check_session shows them per turn too.
    let s = z
        .ok("check_session", json!({"session_id": r["session_id"]}))
        .await;
    assert_eq!(s["turns"][0]["tool_errors"], r["tool_errors"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_500_fails_the_turn_with_its_status() {
    let (_mock, env) = claude_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok("delegate", json!({"task": "@@err500", "adapter": "claude"}))
        .await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("API Error: 500"),
        "{r}"
    );
    let s = z
        .ok("check_session", json!({"session_id": r["session_id"]}))
        .await;
    assert_eq!(s["turns"][0]["api_status"], 500);
    assert_eq!(s["turns"][0]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binary_and_root_bypass_are_explained() {
    let (_mock, mut env) = claude_env();
    env.set("ZWARM_CLAUDE_BIN", "/nonexistent/claude");
    let z = Zwarm::start(&env, &[]).await;
    let m = z
        .err("delegate", json!({"task": "hi", "adapter": "claude"}))
        .await;
    assert!(
        m.contains("npm install -g @anthropic-ai/claude-code"),
        "{m}"
    );
    drop(z);
    // bypassPermissions as root without IS_SANDBOX=1: explained up front, not an obscure exit 1.
    let (_mock, env) = claude_env();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let z = Zwarm::start(&env, &["--set", "claude.permission_mode=bypassPermissions"]).await;
        let m = z
            .err("delegate", json!({"task": "hi", "adapter": "claude"}))
            .await;
        assert!(m.contains("IS_SANDBOX=1"), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_resume_says_what_happened() {
    let (_mock, env) = claude_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok("delegate", json!({"task": "hello", "adapter": "claude"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    let id = r["session_id"].as_str().unwrap();
    // Remove claude's transcripts: the next --resume cannot find the conversation.
    let projects = env.dir.path().join("claude-home/projects");
    std::fs::remove_dir_all(&projects).unwrap();
    let c = z
        .ok("converse", json!({"session_id": id, "message": "again"}))
        .await;
    assert_eq!(c["status"], "failed", "{c}");
    let e = c["error"].as_str().unwrap();
    assert!(
        e.contains("could not resume") && e.contains("delegate"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_turn_never_loads_zwarm_even_after_setup_claude_code() {
    let (mock, env) = claude_env();
    // User scope: every claude of this user, executors included, would start zwarm.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"));
    cmd.args(["setup", "claude-code", "--scope", "user", "--state-dir"])
        .arg(&env.state)
        .current_dir(&env.work)
        .env_clear();
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run zwarm setup");
    assert!(
        out.status.success(),
        "zwarm setup claude-code: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "say hello", "adapter": "claude"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    let reqs = mock.model_requests();
    assert!(!reqs.is_empty());
    for req in &reqs {
        let tools: Vec<&str> = req.body["tools"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !tools.iter().any(|t| t.contains("zwarm")),
            "zwarm offered to claude: {tools:?}"
        );
    }
    let started = env.events().matches("\"server_started\"").count();
    assert_eq!(started, 1, "{}", env.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_cost_and_tokens_from_an_executor_are_never_stored_or_summed() {
    use std::os::unix::fs::PermissionsExt;
    let (_mock, env) = claude_env();
    // A claude that reports a negative cost and a negative token count.
    let fake = env.dir.path().join("fake-claude");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
cat > /dev/null
echo '{"type":"system","subtype":"init","session_id":"11111111-2222-4333-8444-555555555555","model":"m"}'
echo '{"type":"assistant","message":{"model":"m","content":[{"type":"text","text":"done"}]}}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"done","total_cost_usd":-1000,"usage":{"input_tokens":-5,"output_tokens":7,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}'
"#,
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let set = format!("claude.binary={}", fake.display());
    let z = Zwarm::start(&env, &["--set", &set]).await;
    let r = z
        .ok("delegate", json!({"task": "go", "adapter": "claude"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["response"], "done");
    let id = r["session_id"].as_str().unwrap().to_string();
    let s = z.ok("check_session", json!({"session_id": id})).await;
    let turn = &s["turns"][0];
    assert!(turn["cost_usd"].is_null(), "negative cost stored: {s}");
    assert!(s["cost_usd"].is_null(), "negative cost summed: {s}");
    assert_eq!(turn["usage"]["input_tokens"], 0, "{s}");
    assert_eq!(s["usage"]["input_tokens"], 0, "{s}");
    // Said, not silently dropped.
    let progress = s["recent_progress"].to_string();
    assert!(
        progress.contains("invalid cost") && progress.contains("invalid token count"),
        "{s}"
    );
}
