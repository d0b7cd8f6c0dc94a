//! Trust and containment, end to end through `zwarm serve`: prompts travel on stdin (no argv
//! limit, not in /proc/<pid>/cmdline) and are checked up front; a turn's whole process tree —
//! including a `setsid env -i` grandchild that escapes the process group and the marker — dies
//! with it in cgroup mode; an executor that ignores SIGINT and SIGTERM is still stopped; and the
//! stop sequence fits a deadline.
//!
//! The fake executors are shell scripts configured as `codex.binary`; they print a minimal
//! `codex exec --json` transcript.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, cmdline, keyed_script, turn_pids, wait_done};
use support::mock_openai::OpenAiMock;

/// Fail (never skip) when this machine cannot give each turn its own cgroup.
fn require_cgroup_mode() {
    let c = zwarm::process::Containment::new(zwarm::process::ContainmentPreference::Auto);
    let mode = c.probe();
    assert_eq!(
        mode,
        "cgroup",
        "these tests need cgroup v2 containment, but zwarm would use `{mode}` here: {}. \
         Run them as root or in a delegated, writable cgroup v2 subtree (cgroup2 mounted, \
         cgroup.kill available, Linux 5.14+).",
        c.detail()
    );
}

/// Write an executable fake `codex` into the test dir.
fn fake_executor(env: &Env, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = env.dir.path().join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}")).expect("write fake");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod fake");
    p
}

async fn start_with_fake(env: &Env, fake: &Path, extra: &[&str]) -> Zwarm {
    let bin = format!("codex.binary={}", fake.display());
    let mut args = vec!["--set", bin.as_str()];
    args.extend_from_slice(extra);
    Zwarm::start(env, &args).await
}

/// Wait until `path` holds a pid (written by a fake) and return it.
async fn read_pid(path: &Path, z: &Zwarm) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            return pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} was not written\n{}",
            path.display(),
            z.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn assert_dead_within(pids: &[i32], limit: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let alive: Vec<(i32, String)> = pids
            .iter()
            .filter(|p| zwarm::process::pid_alive(**p))
            .map(|p| (*p, cmdline(*p)))
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: still alive after {limit:?}: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn environ_has_marker(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|e| {
            e.split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"ZWARM_TURN="))
        })
        .unwrap_or(false)
}

/// The directory of a cgroup v2 path (`/zwarm/turn-…` from /proc/<pid>/cgroup) on this host.
fn cgroup_dir(cgroup_path: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        let f: Vec<&str> = left.split_whitespace().collect();
        let root = f.get(3)?.trim_end_matches('/');
        let rel = cgroup_path.strip_prefix(root)?;
        let dir = Path::new(f.get(4)?).join(rel.trim_start_matches('/'));
        dir.exists().then_some(dir)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_session_kills_a_setsid_env_i_grandchild_in_cgroup_mode() {
    require_cgroup_mode();
    let env = Env::new(None, None);
    let d = env.dir.path().display().to_string();
    let fake = fake_executor(
        &env,
        "fake-codex-daemon.sh",
        &format!(
            r#"cat > /dev/null
cat /proc/self/cgroup > "{d}/cgroup.txt"
echo $$ > "{d}/exec.pid"
echo '{{"type":"thread.started","thread_id":"fake-thread-1"}}'
echo '{{"type":"turn.started"}}'
setsid env -i sleep 1000 < /dev/null > /dev/null 2>&1 &
echo $! > "{d}/grandchild.pid"
while :; do sleep 1; done
"#
        ),
    );
    let z = start_with_fake(&env, &fake, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "start a daemon", "mode": "async"}),
        )
        .await;
    let id = r["session_id"].as_str().expect("session id").to_string();
    let exec = read_pid(&env.dir.path().join("exec.pid"), &z).await;
    let grandchild = read_pid(&env.dir.path().join("grandchild.pid"), &z).await;

    // The grandchild really escaped the group and the marker: only the cgroup holds it.
    let start = Instant::now();
    while !cmdline(grandchild).starts_with("sleep 1000") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "grandchild {grandchild} is `{}`",
            cmdline(grandchild)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !environ_has_marker(grandchild),
        "env -i should have cleared ZWARM_TURN"
    );
    // SAFETY: getsid/getpgid only read process attributes.
    let (gsid, epgid) = unsafe { (libc::getsid(grandchild), libc::getpgid(exec)) };
    assert_ne!(gsid, epgid, "setsid should have left the executor's group");
    let cg = std::fs::read_to_string(env.dir.path().join("cgroup.txt")).expect("cgroup.txt");
    let cg_path = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string();
    assert!(
        cg_path.ends_with(&format!("/zwarm/turn-{id}.1")),
        "the executor is not in its turn's cgroup: {cg_path}"
    );
    let dir = cgroup_dir(&cg_path).expect("the turn cgroup directory exists");
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().any(|l| l.trim() == grandchild.to_string()),
        "the grandchild is not in the turn cgroup: {procs}"
    );

    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled", "summary": "stop"}),
        )
        .await;
    assert_eq!(e["status"], "cancelled", "{e}");
    assert_dead_within(
        &[exec, grandchild],
        Duration::from_secs(5),
        "end_session in cgroup mode",
    )
    .await;
    let start = Instant::now();
    while dir.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "turn cgroup {} was not removed",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_ignores_sigint_and_sigterm_is_gone_after_end_session() {
    let env = Env::new(None, None);
    let d = env.dir.path().display().to_string();
    // Never reads stdin either: the 200 KiB prompt fills the pipe and the writer waits.
    let fake = fake_executor(
        &env,
        "fake-codex-stubborn.sh",
        &format!(
            r#"trap '' INT TERM
echo $$ > "{d}/exec.pid"
echo '{{"type":"thread.started","thread_id":"fake-thread-2"}}'
echo '{{"type":"turn.started"}}'
while :; do sleep 1; done
"#
        ),
    );
    let z = start_with_fake(&env, &fake, &["--set", "interrupt_grace_seconds=1"]).await;
    let task = format!("stubborn {}", "x".repeat(200 * 1024));
    let r = z
        .ok("delegate", json!({"task": task, "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().expect("session id").to_string();
    let exec = read_pid(&env.dir.path().join("exec.pid"), &z).await;
    // Let the trap be installed and the loop start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = turn_pids(&id);
    assert!(before.contains(&exec), "{before:?}");

    let t = Instant::now();
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled", "summary": "stop"}),
        )
        .await;
    assert_eq!(e["status"], "cancelled", "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "end_session took {:?}",
        t.elapsed()
    );
    let mut all = before.clone();
    all.push(exec);
    assert_dead_within(
        &all,
        Duration::from_secs(5),
        "a SIGINT/SIGTERM-proof executor",
    )
    .await;
    assert!(turn_pids(&id).is_empty(), "{:?}", turn_pids(&id));
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["turns"][0]["status"], "interrupted", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_kib_task_reaches_codex_on_stdin_and_never_its_argv() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let mut script: Value = keyed_script("codex_keyed.json", &env.work);
    script["scenarios"]["bigtask"] = json!([
        {"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": "sleep 3", "yield_time_ms": 30000}}}]},
        {"items": [{"message": "big task done"}]}
    ]);
    mock.set_script(script);
    let z = Zwarm::start(&env, &[]).await;

    let tail = "END-OF-THE-BIG-TASK-7f3a";
    let mut task = String::from("@@bigtask ");
    while task.len() < 300 * 1024 {
        task.push_str("filler text that makes this task long; ");
    }
    task.push_str(tail);
    assert!(task.len() > 300 * 1024);
    let r = z
        .ok("delegate", json!({"task": task, "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().expect("session id").to_string();

    // While the turn runs (its `sleep 3`), no process of the turn has the task in argv.
    let start = Instant::now();
    let pids = loop {
        let pids = turn_pids(&id);
        if pids.iter().any(|p| cmdline(*p).starts_with("sleep 3")) {
            break pids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no `sleep 3` in the turn: {:?}\n{}",
            pids.iter().map(|p| cmdline(*p)).collect::<Vec<_>>(),
            z.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let codex = pids
        .iter()
        .map(|p| cmdline(*p))
        .find(|c| c.contains(" exec ") && c.contains("--json"))
        .expect("the codex process");
    assert!(codex.trim_end().ends_with(" -- -"), "{codex}");
    for p in &pids {
        let c = cmdline(*p);
        assert!(
            !c.contains("filler text") && !c.contains(tail),
            "the prompt is in the argv of {p}"
        );
    }

    let s = wait_done(&z, &id).await;
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["response"], "big task done", "{s}");
    // The model received all of it.
    let first = mock
        .model_requests()
        .into_iter()
        .next()
        .expect("a model request");
    let input = first.body["input"].to_string();
    assert!(input.contains(tail), "the end of the task did not arrive");
    assert!(input.len() > 300 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_kib_task_reaches_claude_on_stdin() {
    let mock = support::mock_anthropic::AnthropicMock::start(json!({}));
    let env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    let z = Zwarm::start(&env, &[]).await;
    let tail = "END-OF-THE-BIG-CLAUDE-TASK-91c2";
    let mut task = String::new();
    while task.len() < 300 * 1024 {
        task.push_str("filler text that makes this task long; ");
    }
    task.push_str(tail);
    let r = z
        .ok("delegate", json!({"task": task, "adapter": "claude"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["response"], "Hello from mock claude", "{r}");
    let body = mock
        .requests()
        .into_iter()
        .filter(|q| q.path_only().ends_with("/messages"))
        .map(|q| q.body.to_string())
        .find(|b| b.contains("filler text"))
        .expect("a model request with the task");
    assert!(body.contains(tail), "the end of the task did not arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_with_a_nul_byte_is_refused_up_front() {
    let env = Env::new(None, None);
    let fake = fake_executor(&env, "fake-codex-never.sh", "exit 99\n");
    let z = start_with_fake(&env, &fake, &[]).await;
    let m = z.err("delegate", json!({"task": "before\u{0}after"})).await;
    assert!(m.contains("NUL"), "{m}");
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(
        l["sessions"].as_array().map(Vec::len),
        Some(0),
        "a session was created: {l}"
    );
}

/// Needs the engine to check the size before starting a turn: today the limit is the
/// default `max_task_bytes` (1 MiB), enforced by `executor::build_process`, which `delegate`
/// runs as a dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_the_limit_is_refused_up_front_with_size_and_limit() {
    let env = Env::new(None, None);
    let fake = fake_executor(&env, "fake-codex-never.sh", "exit 99\n");
    let z = start_with_fake(&env, &fake, &[]).await;
    let limit = zwarm::executor::DEFAULT_MAX_TASK_BYTES;
    let task = "y".repeat(limit + 1);
    let m = z.err("delegate", json!({"task": task})).await;
    assert!(
        m.contains(&format!("{} bytes", limit + 1)) && m.contains(&format!("{limit} bytes")),
        "{m}"
    );
    assert!(m.contains("max_task_bytes"), "{m}");
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["sessions"].as_array().map(Vec::len), Some(0), "{l}");
    // Exactly at the limit is fine (the turn then fails in the fake, which is not the point).
    let ok = z
        .call(
            "delegate",
            json!({"task": "z".repeat(limit), "mode": "async"}),
        )
        .await;
    assert_ne!(ok.is_error, Some(true), "{:?}", ok.content);
}

/// In-process: `stop_turn` keeps its deadline with an executor that ignores SIGINT and
/// SIGTERM, and in process-group mode a marked `setsid` grandchild still dies (each mode on a
/// containment of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_turn_fits_its_deadline_in_both_modes() {
    use zwarm::process::{Containment, ContainmentPreference, ProcessSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("gc.pid");
    let script = format!(
        "trap '' INT TERM; setsid sleep 1000 < /dev/null > /dev/null 2>&1 & echo $! > {}; while :; do sleep 1; done",
        pidfile.display()
    );
    for pref in [
        ContainmentPreference::Auto,
        ContainmentPreference::ProcessGroup,
    ] {
        let c = Containment::new(pref.clone());
        let mode = c.probe();
        let _ = std::fs::remove_file(&pidfile);
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.clone().into()],
            cwd: dir.path().to_path_buf(),
            ..Default::default()
        };
        let marker = format!("stop-test-{}-{mode}", std::process::id());
        let mut child = c.spawn(&spec, &marker).await.expect("spawn");
        let exec = child.id().expect("pid") as i32;
        let start = Instant::now();
        let gc = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break p;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no grandchild");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let reaped = c
            .stop_turn(&mut child, &marker, Duration::from_secs(5), deadline)
            .await;
        let took = t.elapsed();
        assert!(reaped, "{mode}: the executor was not reaped");
        assert!(
            took < Duration::from_millis(1700),
            "{mode}: stop_turn took {took:?} with a 1.5 s deadline"
        );
        assert_dead_within(&[exec, gc], Duration::from_millis(500), mode).await;
    }
}
