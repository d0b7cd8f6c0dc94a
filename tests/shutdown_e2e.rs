//! Shutdown that fits its deadline: a SIGTERMed zwarm stops even an executor that ignores
//! SIGINT and SIGTERM, records the turn interrupted, and exits within 2 s; a second signal
//! forces the exit at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;
use support::harness::{Env, Zwarm, turn_pids};
use support::mock_openai::OpenAiMock;

/// A codex stand-in that starts a thread, then ignores SIGINT and SIGTERM and sleeps (its
/// `sleep` child ignores them too).
fn stubborn(env: &Env) -> String {
    let p = env.dir.path().join("stubborn.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\ntrap '' INT TERM\ncat >/dev/null 2>&1 &\necho '{\"type\":\"thread.started\",\"thread_id\":\"0199a000-0000-7000-8000-00000000beef\"}'\necho '{\"type\":\"turn.started\"}'\nsleep 300\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

async fn running_turn(z: &Zwarm) -> String {
    let r = z
        .ok("delegate", json!({"task": "hold on", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    for _ in 0..100 {
        let pids = turn_pids(&id);
        if pids
            .iter()
            .any(|p| support::harness::cmdline(*p).starts_with("sleep"))
        {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the stubborn executor never started its sleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_signal_proof_executor_and_records_it_within_two_seconds() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let bin = stubborn(&env);
    let args = ["--set", &format!("codex.binary={bin}")];
    let z = Zwarm::start(&env, &args).await;
    let id = running_turn(&z).await;
    let took = z
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert!(turn_pids(&id).is_empty(), "{:?}", turn_pids(&id));
    drop(z);
    // Recorded as interrupted by the shutdown (not adopted later as a crash).
    let z = Zwarm::start(&env, &args).await;
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["turns"][0]["status"], "interrupted");
    assert!(s["error"].as_str().unwrap().contains("shut down"), "{s}");
    assert!(
        !env.events().contains("\"event\":\"session_recovered\""),
        "the shutdown recorded it; no recovery was needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_forces_exit() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let bin = stubborn(&env);
    // A long grace would hold a first-signal shutdown; the second signal cuts it short.
    let z = Zwarm::start(&env, &["--set", &format!("codex.binary={bin}")]).await;
    let _id = running_turn(&z).await;
    // SAFETY: signalling the child we started.
    unsafe {
        libc::kill(z.pid as i32, libc::SIGINT);
    }
    // The first signal is taken (the server says so) before the second is sent.
    for _ in 0..500 {
        if z.stderr().contains("a second signal forces exit") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        z.stderr().contains("a second signal forces exit"),
        "the first signal was not taken\n{}",
        z.stderr()
    );
    z.signal_and_wait(libc::SIGINT, Duration::from_secs(5))
        .await;
    // Forced: the server left at once, by the second signal, not at the end of the first
    // signal's shutdown.
    let log = z.stderr();
    assert!(log.contains("second signal: exiting now"), "{log}");
}

/// A state dir whose database exists (a server ran and stopped), then a connection holding a
/// write lock on it in rollback-journal mode: the lock state in which SQLite refuses zwarm's
/// switch to WAL at once, without its busy timeout.
fn locked_state(env: &Env) -> rusqlite::Connection {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"))
        .args(["serve", "--state-dir"])
        .arg(&env.state)
        .current_dir(&env.work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let c = rusqlite::Connection::open(env.state.join("zwarm.db")).unwrap();
    c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    c
}

/// Wait until one of the servers' stderr files in `dir` says `what`.
fn wait_for_stderr(dir: &std::path::Path, what: &str, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let said = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains(what)));
        if said {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_at_start_is_waited_for() {
    let env = Env::new(None, None);
    let lock = locked_state(&env);
    // Released once the server says it waits (it has met the lock and not exited).
    let dir = env.dir.path().to_path_buf();
    let waiting = std::thread::spawn(move || {
        let said = wait_for_stderr(&dir, "locked by another process", Duration::from_secs(20));
        lock.execute_batch("COMMIT").unwrap();
        drop(lock);
        said
    });
    let z = Zwarm::start(&env, &[]).await;
    assert!(
        waiting.join().unwrap(),
        "the server never said it waits for the lock\n{}",
        z.stderr()
    );
    let l = z.ok("list_sessions", json!({})).await;
    assert!(l["sessions"].is_array(), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_for_good_is_a_clear_error_after_the_busy_timeout() {
    let env = Env::new(None, None);
    let _lock = locked_state(&env);
    let start = std::time::Instant::now();
    let out = env
        .command(&[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        // The store's busy timeout is 10 s.
        took >= Duration::from_millis(9500),
        "gave up after {took:?}, before the busy timeout\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("is locked by another process")
            && last.contains("zwarm.db")
            && last.contains("waited"),
        "{err}"
    );
}
