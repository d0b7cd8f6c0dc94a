//! `zwarm serve` driving the real `codex` CLI against the scripted Responses-API server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use serde_json::json;
use support::harness::{Env, Zwarm, keyed_script, wait_done};
use support::mock_openai::OpenAiMock;

fn codex_env() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    (mock, env)
}

/// All text the model server received in one request's `input` (for history assertions).
fn input_text(body: &serde_json::Value) -> String {
    body["input"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_creates_file_then_converse_resumes_the_thread() {
    let (mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;

    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["adapter"], "codex");
    assert_eq!(r["mode"], "sync");
    assert_eq!(r["turn"], 1);
    assert_eq!(r["response"], "Done: ran a command and created hello.py");
    assert!(r["error"].is_null());
    // codex really ran the shell command and applied the patch, in the working dir.
    let hello = std::fs::read_to_string(env.work.join("hello.py"))
        .expect("hello.py created by apply_patch");
    assert!(hello.contains("hi from apply_patch"));
    assert!(env.work.join("from_shell.txt").exists());
    let files = r["files_changed"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("hello.py") && f["kind"] == "add"),
        "{r}"
    );
    assert_eq!(r["commands"][0]["exit_code"], 0);
    assert_eq!(r["usage"]["input_tokens"], 30);
    let id = r["session_id"].as_str().unwrap().to_string();

    // converse resumes the same codex thread: the model sees the earlier turn's history.
    let before = mock.model_requests().len();
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "and now say hello"}),
        )
        .await;
    assert_eq!(c["session_id"], id.as_str());
    assert_eq!(c["turn"], 2);
    assert_eq!(c["status"], "idle", "{c}");
    assert_eq!(c["response"], "Hello from mock model");
    let reqs = mock.model_requests();
    assert!(reqs.len() > before);
    let last = input_text(&reqs.last().unwrap().body);
    assert!(
        last.contains("@@tools please"),
        "resumed turn lacks the first prompt: {last}"
    );
    assert!(last.contains("and now say hello"));
    assert!(
        last.contains("apply_patch"),
        "resumed turn lacks the earlier tool calls"
    );
    // Same native thread id on both requests.
    let first_thread = reqs[0].header("thread-id").map(str::to_string);
    assert!(first_thread.is_some());
    assert_eq!(
        reqs.last().unwrap().header("thread-id").map(str::to_string),
        first_thread
    );
    // Usage is per turn although codex reports it cumulatively (30, then 40).
    assert_eq!(c["usage"]["input_tokens"], 10, "{c}");

    // check_session reports both turns and the totals.
    let s = z.ok("check_session", json!({"session_id": &id[..8]})).await;
    assert_eq!(s["session_id"], id.as_str());
    assert_eq!(s["status"], "idle");
    assert_eq!(s["task"], "@@tools please");
    assert_eq!(s["turns"].as_array().unwrap().len(), 2);
    assert_eq!(s["turns"][0]["status"], "completed");
    assert_eq!(s["response"], "Hello from mock model");
    assert_eq!(s["usage"]["input_tokens"], 40);
    assert!(
        s["native_id"]
            .as_str()
            .is_some_and(|t| Some(t.to_string()) == first_thread)
    );

    // Raw executor output and the event log are on disk.
    let raw =
        std::fs::read_to_string(env.state.join("turns").join(format!("{id}.1.jsonl"))).unwrap();
    assert!(raw.lines().any(|l| l.contains("\"turn.completed\"")));
    let events = env.events();
    for kind in [
        "session_started",
        "turn_started",
        "message_sent",
        "turn_finished",
    ] {
        assert!(
            events.contains(&format!("\"event\":\"{kind}\"")),
            "missing {kind} in the event log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_check_end_follow_the_contract_and_survive_a_restart() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let a = z.ok("delegate", json!({"task": "first task"})).await;
    let b = z
        .ok("delegate", json!({"task": "second task", "mode": "sync"}))
        .await;
    let (ida, idb) = (
        a["session_id"].as_str().unwrap().to_string(),
        b["session_id"].as_str().unwrap().to_string(),
    );
    assert_eq!(a["response"], "Hello from mock model");

    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["count"], 2);
    let row = l["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_id"] == ida.as_str())
        .unwrap();
    assert_eq!(row["status"], "idle");
    assert_eq!(row["adapter"], "codex");
    assert_eq!(row["mode"], "sync");
    assert_eq!(row["task"], "first task");
    assert_eq!(row["turns"], 1);
    assert!(row["updated_at"].as_str().is_some());

    let e = z
        .ok(
            "end_session",
            json!({"session_id": ida, "summary": "looked good"}),
        )
        .await;
    assert_eq!(e["status"], "completed");
    assert_eq!(e["summary"], "looked good");
    assert_eq!(e["interrupted_turn"], false);
    let e = z
        .ok(
            "end_session",
            json!({"session_id": idb, "verdict": "failed"}),
        )
        .await;
    assert_eq!(e["status"], "failed");

    let done = z.ok("list_sessions", json!({"status": "completed"})).await;
    assert_eq!(done["count"], 1);
    assert_eq!(done["sessions"][0]["session_id"], ida.as_str());
    // Ended sessions are final.
    let msg = z
        .err("converse", json!({"session_id": ida, "message": "more"}))
        .await;
    assert!(
        msg.contains("has ended") && msg.contains("delegate"),
        "{msg}"
    );
    let msg = z.err("end_session", json!({"session_id": ida})).await;
    assert!(msg.contains("has ended"), "{msg}");
    // A failed session may be retried with converse.
    let c = z
        .ok(
            "converse",
            json!({"session_id": idb, "message": "try again"}),
        )
        .await;
    assert_eq!(c["status"], "idle");

    // Restart on the same state dir: everything is still there.
    z.signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(5))
        .await;
    drop(z);
    let z2 = Zwarm::start(&env, &[]).await;
    let l = z2.ok("list_sessions", json!({})).await;
    assert_eq!(l["count"], 2, "{l}");
    let s = z2.ok("check_session", json!({"session_id": ida})).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["summary"], "looked good");
    let s = z2.ok("check_session", json!({"session_id": idb})).await;
    assert_eq!(s["turns"].as_array().unwrap().len(), 2);
    // And a restarted server continues an old conversation.
    let c = z2
        .ok(
            "converse",
            json!({"session_id": idb, "message": "after restart"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}");
    assert_eq!(c["turn"], 3);
}

/// What codex's sandbox and approval policy refuse reaches the orchestrator as `tool_errors`,
/// although `codex exec --json` reports none of it: zwarm reads codex's stderr as the turn
/// runs. Read-only sandbox: a patch that adds a file, a command asking for escalation, and a
/// patch of a missing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_and_patches_reach_the_orchestrator_as_tool_errors() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &["--set", "codex.sandbox=read-only"]).await;
    let r = z.ok("delegate", json!({"task": "@@toolerrors"})).await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["response"], "tried four things");
    assert!(!env.work.join("hello.py").exists());
    let errors = r["tool_errors"].as_array().unwrap();
    let tools: Vec<&str> = errors.iter().map(|e| e["tool"].as_str().unwrap()).collect();
    assert_eq!(tools, ["apply_patch", "exec_command", "apply_patch"], "{r}");
    let messages: Vec<&str> = errors
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(messages[0].starts_with("patch rejected"), "{r}");
    assert!(messages[1].contains("reject command"), "{r}");
    assert!(messages[2].contains("nothere.py"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_http_500_fails_the_turn_with_the_error() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z.ok("delegate", json!({"task": "@@err500"})).await;
    assert_eq!(r["status"], "failed", "{r}");
    let err = r["error"].as_str().unwrap();
    assert!(err.contains("high demand"), "{err}");
    assert!(r["next_step"].as_str().unwrap().contains("converse"));
    let s = z
        .ok("check_session", json!({"session_id": r["session_id"]}))
        .await;
    assert_eq!(s["turns"][0]["status"], "failed");
    assert_eq!(s["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_an_error_that_says_what_to_do_and_the_server_keeps_answering() {
    let (_mock, env) = codex_env();
    let outside = tempfile::tempdir().unwrap();
    let z = Zwarm::start(&env, &[]).await;

    let m = z
        .err("check_session", json!({"session_id": "00000000-nope"}))
        .await;
    assert!(
        m.contains("no session matches") && m.contains("list_sessions"),
        "{m}"
    );
    alive(&z).await;
    // Two sessions sharing an 8-character prefix: the prefix is ambiguous.
    let r = z.ok("delegate", json!({"task": "one"})).await;
    let real = r["session_id"].as_str().unwrap().to_string();
    for twin in [
        "abcdef12-0000-4000-8000-000000000001",
        "abcdef12-0000-4000-8000-000000000002",
    ] {
        env.clone_session(&real, twin);
    }
    let m = z
        .err("check_session", json!({"session_id": "abcdef12"}))
        .await;
    assert!(
        m.contains("ambiguous") && m.contains("abcdef12-0000-4000-8000-000000000001"),
        "{m}"
    );
    let s = z
        .ok(
            "check_session",
            json!({"session_id": "abcdef12-0000-4000-8000-000000000002"}),
        )
        .await;
    assert_eq!(s["task"], "one");
    // Absurd waits are clamped, never a crash.
    let s = z
        .ok(
            "check_session",
            json!({"session_id": real, "wait_seconds": 1e300}),
        )
        .await;
    assert_eq!(s["status"], "idle");
    let m = z.err("check_session", json!({"session_id": "abc"})).await;
    assert!(m.contains("too short"), "{m}");
    let m = z.err("delegate", json!({"task": "   "})).await;
    assert!(m.contains("task") && m.contains("empty"), "{m}");
    alive(&z).await;
    let m = z
        .err("delegate", json!({"task": "x", "adapter": "cursor"}))
        .await;
    assert!(m.contains("unknown adapter") && m.contains("codex"), "{m}");
    let m = z
        .err("delegate", json!({"task": "x", "mode": "later"}))
        .await;
    assert!(m.contains("unknown mode"), "{m}");
    let m = z
        .err(
            "delegate",
            json!({"task": "x", "working_dir": outside.path()}),
        )
        .await;
    assert!(
        m.contains("outside the allowed roots") && m.contains("allowed_roots"),
        "{m}"
    );
    let m = z
        .err(
            "delegate",
            json!({"task": "x", "working_dir": "does/not/exist"}),
        )
        .await;
    assert!(m.contains("does not exist"), "{m}");
    let m = z.err("delegate", json!({})).await;
    assert!(m.contains("task"), "{m}");
    let m = z
        .err(
            "end_session",
            json!({"session_id": "whatever", "verdict": "great"}),
        )
        .await;
    assert!(m.contains("unknown verdict"), "{m}");
    alive(&z).await;

    // converse on a running session: busy. (async + a model that stalls)
    let r = z
        .ok("delegate", json!({"task": "@@stall", "mode": "async"}))
        .await;
    assert_eq!(r["status"], "running");
    let id = r["session_id"].as_str().unwrap();
    let m = z
        .err("converse", json!({"session_id": id, "message": "hurry"}))
        .await;
    assert!(m.contains("busy") && m.contains("check_session"), "{m}");
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled"}),
        )
        .await;
    assert_eq!(e["status"], "cancelled");
    assert_eq!(e["interrupted_turn"], true);
    let m = z
        .err("converse", json!({"session_id": id, "message": "again"}))
        .await;
    assert!(m.contains("has ended"), "{m}");
    let s = wait_done(&z, id).await;
    assert_eq!(s["turns"][0]["status"], "interrupted");
    alive(&z).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_codex_binary_says_how_to_install_it() {
    let (_mock, mut env) = codex_env();
    env.set("ZWARM_CODEX_BIN", "/nonexistent/codex");
    let z = Zwarm::start(&env, &[]).await;
    let m = z.err("delegate", json!({"task": "hello"})).await;
    assert!(m.contains("npm install -g @openai/codex"), "{m}");
    assert!(m.contains("ZWARM_CODEX_BIN"), "{m}");
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(
        l["count"], 0,
        "a refused delegate must not leave a session behind"
    );
}

async fn alive(z: &Zwarm) {
    z.ok("list_sessions", json!({})).await;
}

/// Run `zwarm setup HOST --state-dir STATE` in the test's environment, as a user would.
fn zwarm_setup(env: &Env, host: &str) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"));
    cmd.args(["setup", host, "--state-dir"])
        .arg(&env.state)
        .current_dir(&env.work)
        .env_clear();
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run zwarm setup");
    assert!(
        out.status.success(),
        "zwarm setup {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codex_turn_never_loads_zwarm_even_after_setup_codex() {
    let (mock, mut env) = codex_env();
    // codex's own config now starts zwarm (required = true) for every codex, executors included.
    zwarm_setup(&env, "codex");
    let config = std::fs::read_to_string(env.dir.path().join("codex-home/config.toml")).unwrap();
    assert!(config.contains("[mcp_servers.zwarm]"), "{config}");
    env.set("ZWARM_LOG", "info");
    let z = Zwarm::start(&env, &[]).await;
    // An unknown model slug makes codex list MCP tools inline in `tools` (EXECUTORS.md §A.2).
    let r = z
        .ok(
            "delegate",
            json!({"task": "say hello", "model": "mock-model"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    let reqs = mock.model_requests();
    assert!(!reqs.is_empty());
    for req in &reqs {
        let tools = req.body["tools"].to_string();
        for name in ["mcp__zwarm", "\"name\":\"delegate\"", "list_sessions"] {
            assert!(
                !tools.contains(name),
                "zwarm offered to codex ({name}): {tools}"
            );
        }
    }
    // No nested `zwarm serve` started on this state: one server_started, the test's own.
    let started = env.events().matches("\"server_started\"").count();
    assert_eq!(started, 1, "{}", env.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_turn_is_marked_with_its_session_id() {
    use std::os::unix::fs::PermissionsExt;
    let (_mock, env) = codex_env();
    // A codex that writes down its marker, then runs the real one.
    let marker = env.dir.path().join("marker");
    let wrapper = env.dir.path().join("codex-wrapper");
    let real = support::harness::cli_dir("codex").join("codex");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$ZWARM_EXECUTOR_TURN\" >> '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let set = format!("codex.binary={}", wrapper.display());
    let z = Zwarm::start(&env, &["--set", &set]).await;
    let r = z.ok("delegate", json!({"task": "say hello"})).await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    let id = r["session_id"].as_str().unwrap().to_string();
    let c = z
        .ok("converse", json!({"session_id": id, "message": "again"}))
        .await;
    assert_eq!(c["status"], "idle", "{c}\n{}", z.stderr());
    let seen = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(seen, format!("{id}\n{id}\n"), "one marker per turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_as_the_last_message_file_is_never_written_through() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z.ok("delegate", json!({"task": "say hello"})).await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    let id = r["session_id"].as_str().unwrap().to_string();
    // Something plants the -o file turn 2 will be lent (the one turn 1 used, back in the
    // store's pool) as a link to a file outside the state.
    let victim = env.dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let lent: Vec<_> = std::fs::read_dir(env.state.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(lent.len(), 1, "one file lent so far: {lent:?}");
    let planted = lent[0].clone();
    std::fs::remove_file(&planted).unwrap();
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let c = z
        .ok("converse", json!({"session_id": id, "message": "again"}))
        .await;
    // Either the turn is refused, saying why, or the link is replaced by a file of zwarm's
    // own before codex runs; never is the file it names written.
    match c["status"].as_str() {
        Some("failed") => assert!(
            c["error"]
                .as_str()
                .is_some_and(|e| e.contains("symbolic link") || e.contains("symlink")),
            "{c}"
        ),
        Some("idle") => assert!(
            !std::fs::symlink_metadata(&planted).is_ok_and(|m| m.file_type().is_symlink()),
            "{c}"
        ),
        _ => panic!("{c}"),
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}
