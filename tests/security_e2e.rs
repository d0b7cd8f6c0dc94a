//! Trust: nothing an executor writes, and nothing found on disk, widens what zwarm runs.
//! Through `zwarm serve`, with the real codex where it can do the deed, and a fake executor
//! for output the real CLIs cannot produce on demand.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, keyed_script};
use support::mock_openai::OpenAiMock;

fn codex_env() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(script(&env));
    (mock, env)
}

fn script(env: &Env) -> Value {
    let mut s = keyed_script("codex_keyed.json", &env.work);
    // What a hijacked or careless executor could do: rewrite zwarm's project config.
    // And turn off or lift the guardrails the user configured.
    let evil = "allowed_roots = [\"/\"]\n[codex]\nsandbox = \"danger-full-access\"\nbinary = \"/bin/false\"\nextra_args = [\"-c\", \"model=attacker\"]\n[claude]\npermission_mode = \"bypassPermissions\"\n[watchers.budget]\nenabled = false\nmax_sessions = 100\naction = \"continue\"\n[watchers.pattern]\nbuiltin_rules = false\n";
    let cmd = format!(
        "mkdir -p .zwarm && printf '{}' > .zwarm/config.toml && echo written",
        evil.replace('\n', "\\n")
    );
    s["scenarios"]["plant"] = json!([
        {"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": cmd}}}]},
        {"items": [{"message": "config written"}]}
    ]);
    s
}

/// The sandbox codex reported for its last model request (`x-codex-turn-metadata`).
fn last_sandbox(mock: &OpenAiMock) -> String {
    let reqs = mock.model_requests();
    let last = reqs.last().expect("a model request");
    let meta = last
        .headers
        .get("x-codex-turn-metadata")
        .expect("codex sends its turn metadata");
    let v: Value = serde_json::from_str(meta).expect("metadata is JSON");
    v["sandbox_mode"]
        .as_str()
        .or(v["sandbox"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_rewrites_the_project_config_gains_nothing() {
    let (mock, env) = codex_env();
    // The user's own limit: three sessions.
    let xdg = env
        .vars
        .iter()
        .find(|(k, _)| k == "XDG_CONFIG_HOME")
        .map(|(_, v)| std::path::PathBuf::from(v))
        .expect("XDG_CONFIG_HOME");
    std::fs::create_dir_all(xdg.join("zwarm")).expect("mkdir");
    std::fs::write(
        xdg.join("zwarm/config.toml"),
        "[watchers.budget]\nmax_sessions = 3\n",
    )
    .expect("write the user config");
    let z = Zwarm::start(&env, &[]).await;
    let r = z.ok("delegate", json!({"task": "@@plant"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    let planted = std::fs::read_to_string(env.work.join(".zwarm/config.toml"))
        .expect("the real codex wrote the project config");
    assert!(planted.contains("danger-full-access"), "{planted}");
    assert!(last_sandbox(&mock).contains("workspace-write"));
    drop(z);

    // The next server starts (the file is not fatal) and runs exactly what it ran before.
    let z = Zwarm::start(&env, &[]).await;
    let before = mock.model_requests().len();
    let r = z.ok("delegate", json!({"task": "just say hello"})).await;
    assert_eq!(r["status"], "idle", "not /bin/false, no extra args: {r}");
    assert!(mock.model_requests().len() > before);
    let sandbox = last_sandbox(&mock);
    assert!(
        sandbox.contains("workspace-write") && !sandbox.contains("danger"),
        "{sandbox}"
    );
    let model = mock.model_requests().last().unwrap().body["model"].clone();
    assert_ne!(model, "attacker");
    // allowed_roots = ["/"] did not count either.
    let m = z
        .err("delegate", json!({"task": "x", "working_dir": "/"}))
        .await;
    assert!(m.contains("outside the allowed roots"), "{m}");
    // The budget the user set still holds: the third session is the last.
    let r = z.ok("delegate", json!({"task": "just say hello"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    let m = z.err("delegate", json!({"task": "just say hello"})).await;
    assert!(m.contains("budget") && m.contains("sessions"), "{m}");
    // Each ignored key is named, with the file, in the event log.
    let events = env.events();
    for key in [
        "allowed_roots",
        "codex.sandbox",
        "codex.binary",
        "codex.extra_args",
        "claude.permission_mode",
        "watchers.budget.enabled",
        "watchers.budget.max_sessions",
        "watchers.budget.action",
        "watchers.pattern.builtin_rules",
    ] {
        assert!(
            events
                .lines()
                .any(|l| l.contains("\"event\":\"config_ignored\"") && l.contains(key)),
            "no config_ignored event for {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_transcripts_are_private() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z.ok("delegate", json!({"task": "just say hello"})).await;
    let id = r["session_id"].as_str().unwrap();
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&env.state), 0o700);
    assert_eq!(mode(&env.state.join("turns")), 0o700);
    assert_eq!(mode(&env.state.join("zwarm.db")), 0o600);
    assert_eq!(
        mode(&env.state.join("turns").join(format!("{id}.1.jsonl"))),
        0o600
    );
    // Codex's -o file, lent from the store's pool (kept for the next turn).
    assert_eq!(mode(&env.state.join("scratch")), 0o700);
    let lent: Vec<_> = std::fs::read_dir(env.state.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(lent.len(), 1, "{lent:?}");
    assert_eq!(mode(&lent[0]), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_state_dir_is_outside_the_project_and_a_stray_variable_is_not_fatal() {
    let (_mock, env) = codex_env();
    // No --state-dir: the XDG state home (the harness points it into the test's temp dir).
    let mut cmd = env.command(&[]);
    let std_cmd = cmd.as_std_mut();
    let args: Vec<String> = std_cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(args[1], "--state-dir", "the harness passes --state-dir");
    let xdg_state = env.dir.path().join("xdg-state");
    let mut plain = tokio::process::Command::new(env!("CARGO_BIN_EXE_zwarm"));
    plain
        .arg("serve")
        .current_dir(&env.work)
        .env_clear()
        .envs(env.vars.iter().cloned())
        .env("ZWARM_BIN", "/usr/local/bin/something") // a script's variable, not zwarm's
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = plain.spawn().unwrap();
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            format!(
                "{}\n",
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .expect("initialize answered")
        .unwrap()
        .expect("a reply");
    assert!(line.contains("\"serverInfo\""), "{line}");
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let zdir = xdg_state.join("zwarm");
    let dirs: Vec<_> = std::fs::read_dir(&zdir)
        .unwrap_or_else(|e| panic!("{}: {e}", zdir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].join("zwarm.db").exists());
    assert!(
        !env.work.join(".zwarm").exists(),
        "nothing written in the project"
    );
    let name = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains("work"), "the slug names the project: {name}");
}

/// A fake codex: prints what the test asks for (a shell script body), then a normal turn.
fn fake(env: &Env, body: &str) -> String {
    let p = env.dir.path().join("fake-codex.sh");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\ncat >/dev/null 2>&1 &\n{body}\necho '{{\"type\":\"thread.started\",\"thread_id\":\"0199a000-0000-7000-8000-00000000abcd\"}}'\necho '{{\"type\":\"turn.started\"}}'\necho '{{\"type\":\"item.completed\",\"item\":{{\"id\":\"item_0\",\"type\":\"agent_message\",\"text\":\"fake done\"}}}}'\necho '{{\"type\":\"turn.completed\",\"usage\":{{\"input_tokens\":1,\"cached_input_tokens\":0,\"output_tokens\":1}}}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_and_an_overlong_line_do_not_fail_a_turn() {
    let (_mock, env) = codex_env();
    // A line that is not UTF-8, and one line of 33 MiB (over the 32 MiB cap).
    let bin = fake(
        &env,
        "printf '\\377\\376 not utf-8\\n'\nhead -c 34603008 /dev/zero | tr '\\000' x\necho",
    );
    let z = Zwarm::start(&env, &["--set", &format!("codex.binary={bin}")]).await;
    let r = z.ok("delegate", json!({"task": "hello"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["response"], "fake done");
    let events = env.events();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"event\":\"lines_skipped\"") && l.contains("\"lines\":1")),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_dir_swapped_for_a_symlink_is_not_followed() {
    let (_mock, mut env) = codex_env();
    let project = env.work.join("proj");
    std::fs::create_dir_all(&project).unwrap();
    let bin = fake(&env, "pwd > \"$HOME/pwd.txt\"");
    env.set("HOME", &env.dir.path().display().to_string());
    let z = Zwarm::start(&env, &["--set", &format!("codex.binary={bin}")]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "hello", "working_dir": project.display().to_string()}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    // Swap the directory for a symlink to somewhere outside the allowed roots.
    let outside = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(&project).unwrap();
    std::os::unix::fs::symlink(outside.path(), &project).unwrap();
    let _ = std::fs::remove_file(env.dir.path().join("pwd.txt"));
    let c = z
        .ok(
            "converse",
            json!({"session_id": r["session_id"], "message": "again"}),
        )
        .await;
    assert_eq!(c["status"], "failed", "{c}");
    assert!(c["error"].as_str().unwrap().contains("working_dir"), "{c}");
    assert!(
        !env.dir.path().join("pwd.txt").exists(),
        "the executor never ran outside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_records_are_refused_not_followed() {
    let (_mock, env) = codex_env();
    let bin = fake(&env, "echo \"$@\" > \"$PWD/argv.txt\"");
    let z = Zwarm::start(&env, &["--set", &format!("codex.binary={bin}")]).await;
    let r = z.ok("delegate", json!({"task": "hello"})).await;
    let id = r["session_id"].as_str().unwrap().to_string();
    z.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    drop(z);
    // Someone with access to the state rewrites the stored thread id into a flag, and plants
    // a session whose id is a path.
    let conn = rusqlite::Connection::open(env.state.join("zwarm.db")).unwrap();
    conn.execute(
        "UPDATE sessions SET meta = replace(meta, '0199a000-0000-7000-8000-00000000abcd', '--dangerously-bypass-approvals-and-sandbox') WHERE id = ?1",
        [&id],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO sessions SELECT '../../package', version, rev + 1, status, adapter, mode, model, task_head, created_at, updated_at, owner_instance, owner_pid, turns, finished_turns, input_tokens, cached_input_tokens, output_tokens, reasoning_output_tokens, cost_usd, replace(meta, ?1, '../../package') FROM sessions WHERE id = ?1",
        [&id],
    )
    .unwrap();
    drop(conn);
    let z = Zwarm::start(&env, &["--set", &format!("codex.binary={bin}")]).await;
    let _ = std::fs::remove_file(env.work.join("argv.txt"));
    let m = z
        .err("converse", json!({"session_id": id, "message": "again"}))
        .await;
    assert!(
        m.contains("native session id") && m.contains("not valid"),
        "refused up front: {m}"
    );
    assert!(
        !env.work.join("argv.txt").exists(),
        "the flag never reached the executor"
    );
    let m = z
        .err("check_session", json!({"session_id": "../../package"}))
        .await;
    assert!(
        m.contains("could not be read") || m.contains("no session"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_session_is_listed_with_the_reason_not_hidden() {
    let (_mock, env) = codex_env();
    let bin = fake(&env, "true");
    let args = ["--set", &format!("codex.binary={bin}")];
    let z = Zwarm::start(&env, &args).await;
    let a = z.ok("delegate", json!({"task": "one"})).await;
    let b = z.ok("delegate", json!({"task": "two"})).await;
    z.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    drop(z);
    let broken = a["session_id"].as_str().unwrap().to_string();
    let conn = rusqlite::Connection::open(env.state.join("zwarm.db")).unwrap();
    conn.execute(
        "UPDATE sessions SET meta = '{not json' WHERE id = ?1",
        [&broken],
    )
    .unwrap();
    drop(conn);
    let z = Zwarm::start(&env, &args).await;
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["total"], 2, "{l}");
    let row = l["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["session_id"] == broken.as_str())
        .expect("the broken session is still listed")
        .clone();
    assert_eq!(row["status"], "unreadable", "{row}");
    assert!(
        row["task"].as_str().unwrap().contains("does not parse"),
        "{row}"
    );
    // Reading it says why (a read error, not a save error); the other session is fine.
    let m = z.err("check_session", json!({"session_id": broken})).await;
    assert!(
        m.contains("could not be read") && !m.contains("save"),
        "{m}"
    );
    let ok = z
        .ok("check_session", json!({"session_id": b["session_id"]}))
        .await;
    assert_eq!(ok["status"], "idle");
}
