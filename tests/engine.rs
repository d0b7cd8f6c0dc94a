//! The session engine through `zwarm serve`, with a fake codex (`tests/fake/codex.sh`) instead
//! of the real CLI: the order of status changes, progress batching across a crash, a SIGKILL
//! at every step of a session's life, two servers adopting at once, two live servers sharing a
//! state dir, and a start-up that leaves idle sessions alone. Then what a crash or a second
//! server must not get wrong: the executor's thread id, who a refusal names, and what
//! list_sessions calls running.
//!
//! The fake is steered by files in each session's working dir (see the script's header): a
//! turn can print thousands of events at once, stream until told to stop, or hold still. So
//! the tests wait on conditions (what check_session reports, what the database holds), not on
//! an executor's timing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::harness::{Env, Zwarm, turn_pids};

const KILL_LIMIT: Duration = Duration::from_secs(5);
const RECOVERED: &str = "stopped before it finished";

// ---------------------------------------------------------------------------------------------
// Environment and the fake executor

/// A hermetic environment for the fake executor: no real CLI, no model server.
fn fake_env() -> Env {
    let env = Env::without_clis("zwarm-engine-");
    // A copy, made executable here whatever the checkout did to file modes.
    let fake = env.dir.path().join("fake-codex");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake/codex.sh"),
        &fake,
    )
    .expect("copy the fake codex");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    env
}

/// `zwarm serve` on the env's state dir, running the fake as codex.
async fn start(env: &Env) -> Zwarm {
    start_with(env, &[]).await
}

async fn start_with(env: &Env, extra: &[&str]) -> Zwarm {
    let set = format!(
        "codex.binary={}",
        env.dir.path().join("fake-codex").display()
    );
    let mut args = vec!["--set", &set];
    args.extend_from_slice(extra);
    Zwarm::start(env, &args).await
}

/// SIGKILL a server and start a new one on the same state dir.
async fn crash_and_restart(env: &Env, z: Zwarm) -> Zwarm {
    crash_and_restart_with(env, z, &[]).await
}

async fn crash_and_restart_with(env: &Env, z: Zwarm, extra: &[&str]) -> Zwarm {
    crash(z).await;
    start_with(env, extra).await
}

/// SIGKILL a server and wait until it is reaped. `signal_and_wait` returns once the main
/// thread is a zombie, but a thread stuck in the disk (the state writer in fsync) can keep the
/// process — and its lock, so the server still counts as alive — a little longer; the process
/// is reaped only after its last thread is gone.
async fn crash(z: Zwarm) {
    let pid = z.pid;
    z.signal_and_wait(libc::SIGKILL, KILL_LIMIT).await;
    drop(z);
    let t = Instant::now();
    until("the killed server to be reaped", KILL_LIMIT, async || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    let took = t.elapsed();
    if took > Duration::from_millis(50) {
        eprintln!("server {pid} reaped {took:?} after it was a zombie");
    }
}

/// A new working dir for one session, with the fake's control file.
fn session_dir(env: &Env, name: &str, ctl: &str) -> PathBuf {
    let d = env.work.join(name);
    std::fs::create_dir_all(&d).expect("mkdir session dir");
    set_ctl(&d, ctl);
    d
}

/// What the fake does in its next turns in `dir`.
fn set_ctl(dir: &Path, ctl: &str) {
    std::fs::write(dir.join("fake.ctl"), ctl).expect("write fake.ctl");
}

/// Let a holding or streaming fake finish its turn.
fn release(dir: &Path) {
    std::fs::write(dir.join("release"), "").expect("write release");
}

/// The fake's invocations in `dir`: (n, "new" | "resume", thread id).
fn calls(dir: &Path) -> Vec<(u32, String, String)> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "bad calls.log line `{l}`");
            (f[0].parse().expect("n"), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// The thread id of the fake's first invocation in `dir`, once it has started.
async fn calls_thread(dir: &Path) -> String {
    until(
        "the executor to start",
        Duration::from_secs(10),
        async || calls(dir).first().map(|c| c.2.clone()),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Waiting, reading the event log and the database

/// Poll `f` every 20 ms until it gives a value; fail after `limit`.
async fn until<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sid(v: &Value) -> String {
    v["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no session_id in {v}"))
        .to_string()
}

fn events(env: &Env) -> Vec<Value> {
    env.events()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line {l}: {e}")))
        .collect()
}

/// Events of one kind for one session.
fn count(ev: &[Value], kind: &str, id: &str) -> usize {
    ev.iter()
        .filter(|e| e["event"] == kind && e["session_id"] == id)
        .count()
}

fn db(env: &Env) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(
        env.state.join("zwarm.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open zwarm.db read-only");
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

/// A stored turn as JSON (null when absent).
fn stored_turn(env: &Env, id: &str, idx: u32) -> Value {
    use rusqlite::OptionalExtension;
    db(env)
        .query_row(
            "SELECT data FROM turns WHERE session_id = ?1 AND idx = ?2",
            rusqlite::params![id, idx],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .expect("read turn")
        .map(|d| serde_json::from_str(&d).expect("turn json"))
        .unwrap_or(Value::Null)
}

/// Commands stored for a turn: those in its row, or, while it runs, those flushed as progress
/// (`turn_commands`, numbered from 0), whichever reach further.
fn stored_commands(env: &Env, id: &str, idx: u32) -> usize {
    let in_row = stored_turn(env, id, idx)["commands"]
        .as_array()
        .map_or(0, Vec::len);
    let flushed: i64 = db(env)
        .query_row(
            "SELECT COUNT(*) FROM turn_commands WHERE session_id = ?1 AND idx = ?2",
            rusqlite::params![id, idx],
            |r| r.get(0),
        )
        .expect("read turn_commands");
    in_row.max(flushed as usize)
}

fn stored_status(env: &Env, id: &str) -> String {
    db(env)
        .query_row("SELECT status FROM sessions WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .expect("read status")
}

/// Every session row as stored: id → (version, rev, status, owner_instance, meta).
type Rows = BTreeMap<String, (i64, i64, String, String, String)>;

fn stored_rows(env: &Env) -> Rows {
    let c = db(env);
    let mut st = c
        .prepare("SELECT id, version, rev, status, owner_instance, meta FROM sessions")
        .expect("query sessions");
    st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
        ))
    })
    .expect("read sessions")
    .map(|r| r.expect("session row"))
    .collect()
}

/// Every turn row as stored: (session, idx) → (version, data).
fn stored_turn_rows(env: &Env) -> BTreeMap<(String, i64), (i64, String)> {
    let c = db(env);
    let mut st = c
        .prepare("SELECT session_id, idx, version, data FROM turns")
        .expect("query turns");
    st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))
        .expect("read turns")
        .map(|r| r.expect("turn row"))
        .collect()
}

/// Pids of the servers that logged `session_recovered` for a session.
fn recovered_by(env: &Env, id: &str) -> Vec<u32> {
    let c = db(env);
    let mut st = c
        .prepare("SELECT pid FROM events WHERE kind = 'session_recovered' AND session_id = ?1")
        .expect("query events");
    st.query_map([id], |r| r.get::<_, u32>(0))
        .expect("read events")
        .map(|r| r.expect("pid"))
        .collect()
}

/// The highest `cmd-N` named in a report's recent progress.
fn max_cmd(report: &Value) -> u32 {
    report["recent_progress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|l| l.split("cmd-").nth(1))
        .filter_map(|t| {
            t.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// A session that a dead server left running, as its adopter reports it.
fn assert_recovered(s: &Value) {
    assert_eq!(s["status"], "failed", "{s}");
    let err = s["error"].as_str().unwrap_or_default();
    assert!(err.contains(RECOVERED), "{s}");
    let last = s["turns"]
        .as_array()
        .and_then(|t| t.last())
        .expect("a turn");
    assert_eq!(last["status"], "interrupted", "{s}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .contains(RECOVERED),
        "{s}"
    );
    assert!(last["ended_at"].is_string(), "{s}");
}

// ---------------------------------------------------------------------------------------------
// 1. Ordering

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_are_logged_once_each_in_the_order_they_happened() {
    let env = fake_env();
    let dir = session_dir(&env, "s", "COMMANDS=2\n");
    let z = start(&env).await;
    let r = z
        .ok("delegate", json!({"task": "ordering", "working_dir": dir}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["response"], "fake turn 1 done: 2 commands");
    let id = sid(&r);
    for n in 2..=5u32 {
        let c = z
            .ok(
                "converse",
                json!({"session_id": id, "message": format!("turn {n}")}),
            )
            .await;
        assert_eq!(c["status"], "idle", "{c}");
        assert_eq!(c["turn"], n);
        assert_eq!(c["response"], format!("fake turn {n} done: 2 commands"));
        // Reported idle, so already committed.
        let done = events(&env)
            .iter()
            .filter(|e| e["event"] == "turn_finished" && e["session_id"] == id)
            .count();
        assert_eq!(done, n as usize);
        assert_eq!(stored_status(&env, &id), "idle");
    }

    let ev = events(&env);
    let mine: Vec<&Value> = ev.iter().filter(|e| e["session_id"] == id).collect();
    let pos = |kind: &str, turn: Option<u32>| -> usize {
        let hits: Vec<usize> = ev
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e["session_id"] == id && e["event"] == kind && turn.is_none_or(|t| e["turn"] == t)
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{kind} (turn {turn:?}) must be logged exactly once: {mine:#?}"
        );
        hits[0]
    };
    let started = pos("session_started", None);
    assert_eq!(
        mine.first().map(|e| &e["event"]),
        Some(&json!("session_started")),
        "session_started comes first: {mine:#?}"
    );
    let thread = calls(&dir)[0].2.clone();
    let mut before = started;
    for n in 1..=5u32 {
        let ts = pos("turn_started", Some(n));
        let tf = pos("turn_finished", Some(n));
        if n > 1 {
            let sent = pos("message_sent", Some(n));
            assert!(before < sent && sent < ts, "message {n} out of order");
            assert_eq!(ev[ts]["resume"], thread.as_str());
        } else {
            assert!(ev[ts]["resume"].is_null());
        }
        assert!(
            before < ts && ts < tf,
            "turn {n}: finished of turn {} at {before}, started at {ts}, finished at {tf}: {mine:#?}",
            n - 1
        );
        assert_eq!(ev[tf]["status"], "completed");
        before = tf;
    }
    // Nothing else changed the session's status.
    let status_kinds = [
        "session_started",
        "message_sent",
        "turn_started",
        "turn_finished",
        "session_ended",
        "session_recovered",
        "session_aborted",
    ];
    let n_status = mine
        .iter()
        .filter(|e| status_kinds.iter().any(|k| e["event"] == *k))
        .count();
    assert_eq!(n_status, 1 + 4 + 5 + 5, "{mine:#?}");

    // One executor thread: started once, resumed four times.
    let c = calls(&dir);
    assert_eq!(c.len(), 5, "{c:?}");
    assert_eq!(c[0].1, "new");
    for call in &c[1..] {
        assert_eq!(
            (call.1.as_str(), call.2.as_str()),
            ("resume", thread.as_str())
        );
    }
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["native_id"], thread.as_str());
    let turns = s["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 5);
    for (i, t) in turns.iter().enumerate() {
        assert_eq!(t["turn"], i + 1);
        assert_eq!(t["status"], "completed");
        if let Some(next) = turns.get(i + 1) {
            assert!(
                t["ended_at"].as_str().expect("ended_at")
                    <= next["started_at"].as_str().expect("started_at"),
                "turn {} ended after turn {} started",
                i + 1,
                i + 2
            );
        }
    }
    // Per-turn usage from the thread's cumulative totals (100, 200, … input tokens).
    assert_eq!(s["usage"]["input_tokens"], 500);
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Batching never loses a transition

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_turn_survives_a_sigkill_right_after_it_is_reported() {
    let env = fake_env();
    // 1 000 commands: 2 000 item events, then the end of the turn.
    let dir = session_dir(&env, "big", "COMMANDS=1000\nMESSAGE='all 1000 done'\n");
    let z = start(&env).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "many events", "working_dir": dir}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["response"], "all 1000 done");
    let id = sid(&r);
    // Killed at once: no flush, no shutdown.
    let z = crash_and_restart(&env, z).await;

    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["response"], "all 1000 done");
    let t = &s["turns"][0];
    assert_eq!(t["status"], "completed", "{s}");
    // The report shows the last 20 commands; the store holds all of them.
    let shown = t["commands"].as_array().expect("commands");
    assert_eq!(shown.len(), 20);
    assert_eq!(shown[19]["command"], "echo cmd-1000");
    let stored = stored_turn(&env, &id, 1);
    let cmds = stored["commands"].as_array().expect("stored commands");
    assert_eq!(cmds.len(), 1000);
    for (i, c) in cmds.iter().enumerate() {
        assert_eq!(c["command"], format!("echo cmd-{}", i + 1));
    }
    assert_eq!(stored["status"], "completed");
    let ev = events(&env);
    assert_eq!(count(&ev, "turn_finished", &id), 1);
    assert_eq!(count(&ev, "session_recovered", &id), 0);
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["total"], 1);
    assert_eq!(l["sessions"][0]["status"], "idle");
    assert_eq!(l["sessions"][0]["turns"], 1);
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_flushed_before_a_sigkill_mid_stream_is_kept_and_the_thread_resumes() {
    let env = fake_env();
    // A burst of 600 commands (1 200 events: flushes by count), then one command every 10 ms
    // until told to stop (flushes by time).
    let dir = session_dir(&env, "stream", "COMMANDS=600\nSTREAM_MS=10\n");
    let z = start(&env).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "stream", "mode": "async", "working_dir": dir}),
        )
        .await;
    assert_eq!(r["status"], "running", "{r}");
    let id = sid(&r);
    let seen = until(
        "630 commands reported",
        Duration::from_secs(10),
        async || {
            let s = z.ok("check_session", json!({"session_id": id})).await;
            assert_eq!(s["status"], "running", "{s}");
            Some(max_cmd(&s)).filter(|n| *n >= 630)
        },
    )
    .await;
    // What check_session reported reaches the database within about a second (batches every
    // 200 ms or 256 events; 2 s allowed for a loaded machine).
    let flushed = until(
        "reported progress in the database",
        Duration::from_secs(2),
        async || Some(stored_commands(&env, &id, 1)).filter(|n| *n >= seen as usize),
    )
    .await;
    let thread = calls(&dir)[0].2.clone();
    let z = crash_and_restart(&env, z).await;

    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_recovered(&s);
    assert_eq!(s["native_id"], thread.as_str());
    let kept = stored_commands(&env, &id, 1);
    assert!(
        kept >= flushed,
        "{kept} commands stored after the restart, {flushed} before the kill"
    );
    assert_eq!(recovered_by(&env, &id), vec![z.pid]);
    // The dead server's executor is gone (parent-death signal, then the adopter's sweep).
    until(
        "the old executor to be gone",
        Duration::from_secs(5),
        async || turn_pids(&id).is_empty().then_some(()),
    )
    .await;

    set_ctl(&dir, "COMMANDS=1\n");
    let c = z
        .ok("converse", json!({"session_id": id, "message": "go on"}))
        .await;
    assert_eq!(c["status"], "idle", "{c}");
    assert_eq!(c["turn"], 2);
    assert_eq!(c["response"], "fake turn 2 done: 1 commands");
    let last = calls(&dir).pop().expect("a call");
    assert_eq!(
        (last.1.as_str(), last.2.as_str()),
        ("resume", thread.as_str())
    );
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["turns"][0]["status"], "interrupted");
    assert_eq!(s["turns"][1]["status"], "completed");
    assert_eq!(count(&events(&env), "session_recovered", &id), 1);
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
}

// ---------------------------------------------------------------------------------------------
// 3. A crash at every step

/// After a restart: every session is there once, with the status it should have.
async fn assert_state(z: &Zwarm, env: &Env, expected: &[(&str, &str)]) {
    for (id, status) in expected {
        // check_session adopts a session its dead server left running (start-up does too, in
        // the background), so the list below is settled.
        let s = z.ok("check_session", json!({"session_id": id})).await;
        assert_eq!(s["status"], *status, "{s}");
        if *status == "failed" {
            assert_recovered(&s);
        }
    }
    let l = z.ok("list_sessions", json!({"limit": 200})).await;
    assert_eq!(l["total"], expected.len(), "{l}");
    let listed: BTreeMap<String, String> = l["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| (sid(s), s["status"].as_str().unwrap_or("").to_string()))
        .collect();
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect();
    assert_eq!(listed, want);
    let stored: BTreeSet<String> = env.session_ids().into_iter().collect();
    assert_eq!(stored, want.keys().cloned().collect::<BTreeSet<_>>());
    let ev = events(env);
    for (id, status) in expected {
        assert_eq!(count(&ev, "session_started", id), 1, "{id}");
        let recovered = usize::from(*status == "failed");
        assert_eq!(count(&ev, "session_recovered", id), recovered, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_at_every_step_leaves_a_consistent_state() {
    let env = fake_env();
    // One turn runs at a time, so a second one queues (step f).
    let one = ["--set", "max_running=1"];
    let mut z = start_with(&env, &one).await;
    let mut expected: Vec<(String, &'static str)> = vec![];

    // (a) right after an async delegate returned `running`, before the executor printed anything.
    let da = session_dir(&env, "a", "WAIT=1\n");
    let r = z
        .ok(
            "delegate",
            json!({"task": "crash a", "mode": "async", "working_dir": da}),
        )
        .await;
    assert_eq!(r["status"], "running", "{r}");
    let a = sid(&r);
    z = crash_and_restart_with(&env, z, &one).await;
    expected.push((a.clone(), "failed"));
    assert_state(&z, &env, &pairs(&expected)).await;
    let s = z.ok("check_session", json!({"session_id": a})).await;
    assert!(s["native_id"].is_null(), "{s}");

    // (b) mid-turn: the executor has reported commands and holds.
    let db_ = session_dir(&env, "b", "COMMANDS=3\nHOLD=1\n");
    let r = z
        .ok(
            "delegate",
            json!({"task": "crash b", "mode": "async", "working_dir": db_}),
        )
        .await;
    let b = sid(&r);
    until(
        "three commands reported",
        Duration::from_secs(10),
        async || {
            let s = z.ok("check_session", json!({"session_id": b})).await;
            (s["turns"][0]["commands"].as_array().map_or(0, Vec::len) == 3).then_some(())
        },
    )
    .await;
    // … and flushed, thread id included (a crash inside the flush window is test 7).
    until(
        "the progress in the database",
        Duration::from_secs(5),
        async || {
            (stored_commands(&env, &b, 1) == 3 && env.session_meta(&b)["native_id"].is_string())
                .then_some(())
        },
    )
    .await;
    z = crash_and_restart_with(&env, z, &one).await;
    expected.push((b.clone(), "failed"));
    assert_state(&z, &env, &pairs(&expected)).await;
    assert_eq!(stored_commands(&env, &b, 1), 3);

    // (c) after the turn finished.
    let dc = session_dir(&env, "c", "COMMANDS=2\n");
    let r = z
        .ok("delegate", json!({"task": "crash c", "working_dir": dc}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    let c = sid(&r);
    z = crash_and_restart_with(&env, z, &one).await;
    expected.push((c.clone(), "idle"));
    assert_state(&z, &env, &pairs(&expected)).await;
    let s = z.ok("check_session", json!({"session_id": c})).await;
    assert_eq!(s["response"], "fake turn 1 done: 2 commands");

    // (d) right after end_session returned.
    let dd = session_dir(&env, "d", "COMMANDS=1\n");
    let r = z
        .ok("delegate", json!({"task": "crash d", "working_dir": dd}))
        .await;
    let d = sid(&r);
    let e = z
        .ok(
            "end_session",
            json!({"session_id": d, "verdict": "completed", "summary": "done d"}),
        )
        .await;
    assert_eq!(e["status"], "completed");
    z = crash_and_restart_with(&env, z, &one).await;
    expected.push((d.clone(), "completed"));
    assert_state(&z, &env, &pairs(&expected)).await;
    let s = z.ok("check_session", json!({"session_id": d})).await;
    assert_eq!(s["summary"], "done d");

    // (e) right after end_session stopped a running turn.
    let de = session_dir(&env, "e", "COMMANDS=1\nHOLD=1\n");
    let r = z
        .ok(
            "delegate",
            json!({"task": "crash e", "mode": "async", "working_dir": de}),
        )
        .await;
    let e_id = sid(&r);
    calls_thread(&de).await;
    let e = z
        .ok(
            "end_session",
            json!({"session_id": e_id, "verdict": "cancelled", "summary": "stopped e"}),
        )
        .await;
    assert_eq!(e["status"], "cancelled", "{e}");
    assert_eq!(e["interrupted_turn"], true, "{e}");
    z = crash_and_restart_with(&env, z, &one).await;
    expected.push((e_id.clone(), "cancelled"));
    assert_state(&z, &env, &pairs(&expected)).await;
    let s = z.ok("check_session", json!({"session_id": e_id})).await;
    assert_eq!(s["summary"], "stopped e");
    assert_eq!(s["turns"][0]["status"], "interrupted", "{s}");
    assert!(
        s["turns"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("end_session"),
        "{s}"
    );

    // (f) with one turn running and another queued behind it.
    let df1 = session_dir(&env, "f1", "COMMANDS=1\nHOLD=1\n");
    let df2 = session_dir(&env, "f2", "COMMANDS=1\n");
    let r = z
        .ok(
            "delegate",
            json!({"task": "crash f1", "mode": "async", "working_dir": df1}),
        )
        .await;
    assert_eq!(r["status"], "running", "{r}");
    let f1 = sid(&r);
    let r = z
        .ok(
            "delegate",
            json!({"task": "crash f2", "mode": "async", "working_dir": df2}),
        )
        .await;
    assert_eq!(r["status"], "queued", "{r}");
    let f2 = sid(&r);
    z = crash_and_restart_with(&env, z, &one).await;
    expected.push((f1.clone(), "failed"));
    expected.push((f2.clone(), "failed"));
    assert_state(&z, &env, &pairs(&expected)).await;
    assert!(calls(&df2).is_empty(), "the queued turn never ran");
    let ev = events(&env);
    assert_eq!(count(&ev, "turn_started", &f2), 0);

    // Each step's events: every session started once; the turn ends of the finished ones
    // and the two ends once each.
    for (id, _) in &expected {
        assert!(count(&ev, "turn_finished", id) <= 1, "{id}");
    }
    for id in [&c, &d, &e_id] {
        assert_eq!(count(&ev, "turn_finished", id), 1, "{id}");
    }
    assert_eq!(count(&ev, "session_ended", &d), 1);
    assert_eq!(count(&ev, "session_ended", &e_id), 1);

    // One more crash with nothing running changes nothing.
    let rows = stored_rows(&env);
    z = crash_and_restart_with(&env, z, &one).await;
    assert_state(&z, &env, &pairs(&expected)).await;
    assert_eq!(stored_rows(&env), rows);

    // And every session takes the next step its status allows.
    set_ctl(&da, "COMMANDS=1\n");
    let r = z
        .ok("converse", json!({"session_id": a, "message": "again"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    // (a) never got a thread: the retry starts one.
    assert_eq!(calls(&da).last().expect("a call").1, "new");
    set_ctl(&db_, "COMMANDS=1\n");
    let r = z
        .ok("converse", json!({"session_id": b, "message": "again"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    let cb = calls(&db_);
    assert_eq!(cb.len(), 2, "{cb:?}");
    assert_eq!(
        (cb[1].1.as_str(), cb[1].2.as_str()),
        ("resume", cb[0].2.as_str())
    );
    let r = z
        .ok("converse", json!({"session_id": f2, "message": "now"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    for ended in [&d, &e_id] {
        let m = z
            .err("converse", json!({"session_id": ended, "message": "again"}))
            .await;
        assert!(m.contains("has ended"), "{m}");
    }
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
}

fn pairs<'a>(e: &'a [(String, &'static str)]) -> Vec<(&'a str, &'static str)> {
    e.iter().map(|(i, s)| (i.as_str(), *s)).collect()
}

// ---------------------------------------------------------------------------------------------
// 4. Adoption by two servers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_starting_at_once_adopt_a_dead_servers_session_exactly_once() {
    let env = fake_env();
    let dir = session_dir(&env, "s", "COMMANDS=1\nHOLD=1\n");
    let a = start(&env).await;
    let r = a
        .ok(
            "delegate",
            json!({"task": "adopt me", "mode": "async", "working_dir": dir}),
        )
        .await;
    let id = sid(&r);
    let thread = calls_thread(&dir).await;
    // Its thread id in the database (progress is flushed in batches; see
    // `the_executor_thread_id_survives_a_crash_right_after_it_is_reported` for the gap).
    until(
        "the thread id in the database",
        Duration::from_secs(5),
        async || (env.session_meta(&id)["native_id"] == thread.as_str()).then_some(()),
    )
    .await;
    crash(a).await;
    set_ctl(&dir, "COMMANDS=1\n");

    let (b, c) = tokio::join!(start(&env), start(&env));
    // Both look for sessions to adopt as they start; nobody has asked about this one yet.
    until("start-up adoption", Duration::from_secs(10), async || {
        (stored_status(&env, &id) != "running").then_some(())
    })
    .await;
    let by = recovered_by(&env, &id);
    assert_eq!(by.len(), 1, "adopted {} times: {by:?}", by.len());
    let (adopter, other) = if by[0] == b.pid {
        (&b, &c)
    } else {
        assert_eq!(by[0], c.pid, "adopted by an unknown server");
        (&c, &b)
    };
    assert_eq!(env.session_meta(&id)["owner"]["pid"], adopter.pid);

    // Both see it, with the same state.
    for z in [&b, &c] {
        let s = z.ok("check_session", json!({"session_id": id})).await;
        assert_recovered(&s);
        let l = z.ok("list_sessions", json!({})).await;
        assert_eq!(l["total"], 1, "{l}");
        assert_eq!(l["sessions"][0]["status"], "failed", "{l}");
    }
    // Only the adopter runs its turns; the other server says who does.
    let m = other
        .err("converse", json!({"session_id": id, "message": "mine?"}))
        .await;
    assert!(m.contains("belongs to another zwarm server"), "{m}");
    assert!(m.contains(&format!("pid {}", adopter.pid)), "{m}");
    let r = adopter
        .ok("converse", json!({"session_id": id, "message": "go on"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["turn"], 2);
    let last = calls(&dir).pop().expect("a call");
    assert_eq!(
        (last.1.as_str(), last.2.as_str()),
        ("resume", thread.as_str())
    );
    let s = other
        .ok(
            "check_session",
            json!({"session_id": id, "wait_seconds": 5}),
        )
        .await;
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["turns"].as_array().map(Vec::len), Some(2));

    // Stopped cleanly (their start-up tasks finished): still adopted once.
    for z in [&b, &c] {
        z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
    }
    assert_eq!(recovered_by(&env, &id).len(), 1);
    assert_eq!(env.session_ids(), vec![id]);
}

// ---------------------------------------------------------------------------------------------
// 5. Two live servers share the state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_servers_session_is_visible_and_awaitable_from_another_server() {
    let env = fake_env();
    let dir = session_dir(&env, "s", "COMMANDS=2\nHOLD=1\nMESSAGE='done on a'\n");
    let (a, b) = tokio::join!(start(&env), start(&env));
    let r = a
        .ok(
            "delegate",
            json!({"task": "shared", "mode": "async", "working_dir": dir}),
        )
        .await;
    assert_eq!(r["status"], "running");
    let id = sid(&r);

    // Committed before A reported it: B sees the running turn at once.
    let l = b.ok("list_sessions", json!({})).await;
    assert_eq!(l["total"], 1, "{l}");
    assert_eq!(l["sessions"][0]["session_id"], id.as_str());
    assert_eq!(l["sessions"][0]["status"], "running");
    let s = b.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["turns"][0]["status"], "running");
    // A's progress reaches B through the store.
    until(
        "B to see A's commands",
        Duration::from_secs(5),
        async || {
            let s = b.ok("check_session", json!({"session_id": id})).await;
            assert_eq!(s["status"], "running", "{s}");
            (s["turns"][0]["commands"].as_array().map_or(0, Vec::len) == 2).then_some(())
        },
    )
    .await;
    let m = b
        .err("converse", json!({"session_id": id, "message": "mine?"}))
        .await;
    assert!(m.contains(&format!("pid {}", a.pid)), "{m}");

    // B waits for A's turn to finish.
    let waited = async {
        let s = b
            .ok(
                "check_session",
                json!({"session_id": id, "wait_seconds": 30}),
            )
            .await;
        (s, Instant::now())
    };
    let finish = async {
        // B has taken the wait once it answered a call sent after it (it serves calls
        // concurrently, in the order they arrive); the turn still runs then.
        tokio::task::yield_now().await;
        let l = b.ok("list_sessions", json!({})).await;
        assert_eq!(l["sessions"][0]["status"], "running", "{l}");
        release(&dir);
        Instant::now()
    };
    let ((s, returned), released) = tokio::join!(waited, finish);
    assert!(
        returned > released,
        "B's wait returned before the turn ended: {s}"
    );
    assert!(
        returned - released < Duration::from_secs(3),
        "B noticed the end after {:?}",
        returned - released
    );
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["response"], "done on a");
    assert_eq!(s["turns"][0]["status"], "completed");
    let l = b.ok("list_sessions", json!({})).await;
    assert_eq!(l["sessions"][0]["status"], "idle");
    let s = a.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "idle");
    assert_eq!(count(&events(&env), "session_recovered", &id), 0);
    assert_eq!(env.session_meta(&id)["owner"]["pid"], a.pid);
    for z in [&a, &b] {
        z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Start-up does not touch idle sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_adopts_running_sessions_and_leaves_idle_ones_alone() {
    const IDLE: usize = 200;
    let env = fake_env();
    let dir = session_dir(&env, "many", "COMMANDS=1\n");
    let z = start(&env).await;
    let t = Instant::now();
    let replies: Vec<Value> = futures::stream::iter(0..IDLE)
        .map(|i| {
            z.ok(
                "delegate",
                json!({"task": format!("quick {i}"), "working_dir": dir}),
            )
        })
        .buffer_unordered(8)
        .collect()
        .await;
    eprintln!("{IDLE} sync delegates took {:?}", t.elapsed());
    for r in &replies {
        assert_eq!(r["status"], "idle", "{r}");
    }
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
    drop(z);
    let idle_rows = stored_rows(&env);
    let idle_turns = stored_turn_rows(&env);
    assert_eq!(idle_rows.len(), IDLE);
    assert!(idle_rows.values().all(|r| r.2 == "idle"));

    // One more server leaves a session running when it dies.
    let held = session_dir(&env, "held", "COMMANDS=1\nHOLD=1\n");
    let z = start(&env).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "left running", "mode": "async", "working_dir": held}),
        )
        .await;
    let running = sid(&r);
    crash(z).await;
    let before = stored_rows(&env)[&running].clone();
    assert_eq!(before.2, "running");

    // A new server adopts that one, on its own, and nothing else.
    let z = start(&env).await;
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["total"], IDLE + 1, "{l}");
    until("start-up adoption", Duration::from_secs(10), async || {
        (stored_status(&env, &running) == "failed").then_some(())
    })
    .await;
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
    drop(z);

    let after = stored_rows(&env);
    assert_eq!(after.len(), IDLE + 1);
    let changed: Vec<&String> = idle_rows
        .iter()
        .filter(|(id, row)| after.get(*id) != Some(row))
        .map(|(id, _)| id)
        .collect();
    assert!(
        changed.is_empty(),
        "{} idle session rows changed at start-up, e.g. {:?} → {:?}",
        changed.len(),
        idle_rows[changed[0]],
        after.get(changed[0])
    );
    let turns_after = stored_turn_rows(&env);
    for (k, v) in &idle_turns {
        assert_eq!(turns_after.get(k), Some(v), "turn {k:?} changed");
    }
    let adopted = &after[&running];
    assert_eq!(adopted.0, before.0 + 1, "adopted once, by one write");
    assert_ne!(adopted.3, before.3, "owner changed");
    assert_eq!(recovered_by(&env, &running).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 7. The thread id is what a recovered session resumes with

/// A recovered session's error says "Call converse to resume the same codex thread", so the
/// thread id must survive a crash once the executor has announced it. Three rounds, each
/// killing the server right after check_session first shows the thread id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_thread_id_survives_a_crash_right_after_it_is_reported() {
    let env = fake_env();
    let mut z = start(&env).await;
    let mut lost = vec![];
    for round in 0..3 {
        let dir = session_dir(&env, &format!("r{round}"), "COMMANDS=0\nHOLD=1\n");
        let r = z
            .ok(
                "delegate",
                json!({"task": format!("round {round}"), "mode": "async", "working_dir": dir}),
            )
            .await;
        let id = sid(&r);
        // Polled without pauses: the kill follows the first report as closely as it can.
        let t = Instant::now();
        let thread = loop {
            let s = z.ok("check_session", json!({"session_id": id})).await;
            if let Some(th) = s["native_id"].as_str() {
                break th.to_string();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no thread id: {s}");
            tokio::task::yield_now().await;
        };
        let stored_before_kill = env.session_meta(&id)["native_id"].clone();
        z = crash_and_restart(&env, z).await;
        let s = z.ok("check_session", json!({"session_id": id})).await;
        assert_recovered(&s);
        // What the error promises: converse resumes the same thread.
        set_ctl(&dir, "COMMANDS=1\n");
        let c = z
            .ok("converse", json!({"session_id": id, "message": "go on"}))
            .await;
        assert_eq!(c["status"], "idle", "{c}");
        let last = calls(&dir).pop().expect("a call");
        if s["native_id"] != thread.as_str() || last.2 != thread {
            lost.push(format!(
                "round {round}: thread {thread} reported; stored at the kill: {stored_before_kill}; after the restart: {}; the next turn ran `{} {}`",
                s["native_id"], last.1, last.2
            ));
        }
    }
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
    assert!(
        lost.is_empty(),
        "the executor's thread id was lost by a crash after check_session reported it:\n{}",
        lost.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Two servers adopting on demand

/// Idle sessions of a dead server, continued on two live servers at the same moment: each
/// session runs on exactly one of them, and the other names the server that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_racing_on_two_servers_adopts_each_session_once() {
    const N: usize = 10;
    let env = fake_env();
    let dir = session_dir(&env, "s", "COMMANDS=1\n");
    let a = start(&env).await;
    let mut ids = vec![];
    for i in 0..N {
        let r = a
            .ok(
                "delegate",
                json!({"task": format!("race {i}"), "working_dir": dir}),
            )
            .await;
        assert_eq!(r["status"], "idle", "{r}");
        ids.push(sid(&r));
    }
    crash(a).await;

    let (b, c) = tokio::join!(start(&env), start(&env));
    let text = |r: &rmcp::model::CallToolResult| {
        r.content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut wrong = vec![];
    for id in &ids {
        let args = json!({"session_id": id, "message": "who runs me?"});
        let (rb, rc) = tokio::join!(b.call("converse", args.clone()), c.call("converse", args));
        let ok_b = rb.is_error != Some(true);
        let ok_c = rc.is_error != Some(true);
        assert!(
            ok_b != ok_c,
            "{id}: exactly one server must run the turn: b={} c={}",
            text(&rb),
            text(&rc)
        );
        let (winner, loser) = if ok_b { (&b, &rc) } else { (&c, &rb) };
        let m = text(loser);
        assert!(m.contains("belongs to another zwarm server"), "{id}: {m}");
        if !m.contains(&format!("(pid {})", winner.pid)) {
            wrong.push(format!(
                "{id}: runs on pid {}, the other said: {m}",
                winner.pid
            ));
        }
        let s = wait_idle(winner, id).await;
        assert_eq!(s["turns"].as_array().map(Vec::len), Some(2), "{s}");
        assert_eq!(env.session_meta(id)["owner"]["pid"], winner.pid);
    }
    for z in [&b, &c] {
        let l = z.ok("list_sessions", json!({})).await;
        assert_eq!(l["total"], N);
        z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
    }
    assert!(
        wrong.is_empty(),
        "the refusal names the wrong server:\n{}",
        wrong.join("\n")
    );
}

async fn wait_idle(z: &Zwarm, id: &str) -> Value {
    let s = z
        .ok(
            "check_session",
            json!({"session_id": id, "wait_seconds": 10}),
        )
        .await;
    assert_eq!(s["status"], "idle", "{s}");
    s
}

// ---------------------------------------------------------------------------------------------
// 9. A dead server's turn is not listed as running

/// list_sessions reads the stored status. A turn whose server died is not running, and must
/// not be listed as such: not by a server started after the crash (adoption at start-up runs
/// in the background), and not by a server that was already running when its peer died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sessions_does_not_show_a_dead_servers_turn_as_running() {
    let env = fake_env();
    let mut wrong = vec![];

    // A restart: the first list_sessions of the new server.
    let mut z = start(&env).await;
    for round in 0..3 {
        let d = session_dir(&env, &format!("r{round}"), "COMMANDS=1\nHOLD=1\n");
        let r = z
            .ok(
                "delegate",
                json!({"task": format!("r{round}"), "mode": "async", "working_dir": d}),
            )
            .await;
        let id = sid(&r);
        calls_thread(&d).await;
        z = crash_and_restart(&env, z).await;
        let l = z.ok("list_sessions", json!({"status": "running"})).await;
        if l["total"] != 0 {
            wrong.push(format!(
                "restart round {round}: the new server's first list_sessions: {}",
                l["sessions"]
            ));
        }
        assert_recovered(&z.ok("check_session", json!({"session_id": id})).await);
    }

    // A survivor: B was running when A died, and nothing asks B about the session by id.
    let (a, b) = (z, start(&env).await);
    let d = session_dir(&env, "survivor", "COMMANDS=1\nHOLD=1\n");
    let r = a
        .ok(
            "delegate",
            json!({"task": "survivor", "mode": "async", "working_dir": d}),
        )
        .await;
    let id = sid(&r);
    calls_thread(&d).await;
    crash(a).await;
    let t = Instant::now();
    let settled = loop {
        let l = b.ok("list_sessions", json!({"status": "running"})).await;
        if l["total"] == 0 {
            break true;
        }
        if t.elapsed() > Duration::from_secs(5) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !settled {
        wrong.push(format!(
            "survivor: B still lists {id} as running 5 s after its server died"
        ));
    }
    // Asked by id, B adopts it at once.
    assert_recovered(&b.ok("check_session", json!({"session_id": id})).await);
    let l = b.ok("list_sessions", json!({"status": "running"})).await;
    assert_eq!(l["total"], 0, "{l}");
    b.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
    assert!(
        wrong.is_empty(),
        "a dead server's turn was listed as running:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Memory follows what runs

/// A session at rest is let go after `hold_idle_seconds` and read back when needed: its
/// transcript, a resume of the same thread, the list and end_session all work as before; a
/// running session is never let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_let_go_and_come_back_whole() {
    let mut env = fake_env();
    for (k, v) in env.vars.iter_mut() {
        if k == "ZWARM_LOG" {
            *v = "info,zwarm::sessions=debug".into();
        }
    }
    let z = start_with(&env, &["--set", "hold_idle_seconds=1"]).await;
    let da = session_dir(&env, "a", "COMMANDS=2\n");
    let a = sid(&z
        .ok(
            "delegate",
            json!({"task": "a", "working_dir": da.display().to_string()}),
        )
        .await);
    let thread = calls(&da)[0].2.clone();
    // B runs (held by its turn) while A is idle.
    let db_dir = session_dir(&env, "b", "COMMANDS=1\nHOLD=1\n");
    let b = sid(&z
        .ok(
            "delegate",
            json!({"task": "b", "mode": "async", "working_dir": db_dir.display().to_string()}),
        )
        .await);
    let line = until(
        "the server to let A go",
        Duration::from_secs(10),
        async || {
            z.stderr()
                .lines()
                .find(|l| l.contains("let go of idle sessions"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(
        line.contains("sessions=1") && line.contains("held=1"),
        "only A is let go; B, running, stays: {line}"
    );
    let s = z.ok("check_session", json!({"session_id": b})).await;
    assert_eq!(s["status"], "running", "{s}");

    // A comes back whole.
    let s = z.ok("check_session", json!({"session_id": a})).await;
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["turns"][0]["commands"].as_array().map(Vec::len), Some(2));
    assert_eq!(s["native_id"], thread.as_str());
    set_ctl(&da, "COMMANDS=1\n");
    let c = z
        .ok("converse", json!({"session_id": a, "message": "more"}))
        .await;
    assert_eq!(c["status"], "idle", "{c}");
    assert_eq!(c["turn"], 2);
    let last = calls(&da).pop().expect("a call");
    assert_eq!(
        (last.1.as_str(), last.2.as_str()),
        ("resume", thread.as_str())
    );
    // Let go again after its second turn, though a client keeps listing it (a listing is not
    // a use); then listed and ended from the store.
    until(
        "the server to let A go again while it is listed",
        Duration::from_secs(10),
        async || {
            z.ok("list_sessions", json!({})).await;
            (z.stderr().matches("let go of idle sessions").count() >= 2).then_some(())
        },
    )
    .await;
    let l = z.ok("list_sessions", json!({"status": "idle"})).await;
    assert_eq!(l["sessions"][0]["session_id"], a.as_str(), "{l}");
    assert_eq!(l["sessions"][0]["turns"], 2, "{l}");
    let e = z
        .ok(
            "end_session",
            json!({"session_id": a, "verdict": "completed", "summary": "done"}),
        )
        .await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(stored_status(&env, &a), "completed");
    assert_eq!(count(&events(&env), "session_recovered", &a), 0);

    // B, held all along, finishes normally.
    release(&db_dir);
    let s = z
        .ok(
            "check_session",
            json!({"session_id": b, "wait_seconds": 10}),
        )
        .await;
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["turns"].as_array().map(Vec::len), Some(1));
    z.signal_and_wait(libc::SIGTERM, KILL_LIMIT).await;
}

// ---------------------------------------------------------------------------------------------
// In-process: the engine on the in-memory runner (no process, no CLI; tests/support/memory.rs).
// Each test waits on the engine's own conditions (a session's state), never on fixed sleeps;
// where time matters (timeouts, a wait's bound, the interrupt grace) it runs on a frozen clock
// that only the test moves, so a turn times out at its timeout exactly and no test waits for
// real time to pass.

mod in_process {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::Value;
    use tokio_util::sync::CancellationToken;
    use zwarm::runner::memory::{MemoryRunner, Script};
    use zwarm::sessions::Manager;

    use super::support::memory::{
        Engine, Frozen, codex_command, codex_turn, config, engine, holding, quick, settled,
        start_on, task, thread_of, within,
    };

    async fn events(e: &Engine, id: &str) -> Vec<(String, Value)> {
        e.m.store().sync().await;
        e.m.recent_events(1000)
            .await
            .expect("events")
            .into_iter()
            .filter(|v| v["session_id"] == id)
            .map(|v| (v["event"].as_str().unwrap_or_default().to_string(), v))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_runs_in_process_and_its_last_message_comes_back_from_the_runner() {
        let e = engine(
            |_| {},
            |l| Script {
                stdout: codex_turn(&thread_of(l), "streamed answer"),
                files: vec!["the last message, read back".into()],
                ..Default::default()
            },
        )
        .await;
        let id = e.m.delegate(task("do it")).await.expect("delegate");
        let s = e.settled(&id).await;
        assert_eq!(s.status.as_str(), "idle", "{:?}", s.error);
        let t = &s.turns[0];
        assert_eq!(t.response.as_deref(), Some("the last message, read back"));
        assert!(s.native_id.is_some());
        let launches = e.runner.launches();
        assert_eq!(launches.len(), 1);
        assert_eq!(launches[0].label, format!("{id}.1"));
        assert_eq!(launches[0].stdin.as_deref(), Some(b"do it".as_slice()));
        assert_eq!(launches[0].read_back.len(), 1);
        // A second turn resumes the executor's thread.
        let (_, n) = e.m.converse(&id, "more").await.expect("converse");
        assert_eq!(n, 2);
        let s = e.settled(&id).await;
        assert_eq!(s.turns.len(), 2);
        assert_eq!(s.status.as_str(), "idle");
        let kinds: Vec<String> = events(&e, &id).await.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds,
            [
                "session_started",
                "turn_started",
                "turn_finished",
                "message_sent",
                "turn_started",
                "turn_finished"
            ],
        );
    }

    /// check_session with `session_ids`: "any" returns once one of them has finished, "all"
    /// once every one has, and a change to another session (in the list or not) does not end
    /// the wait early.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_on_several_sessions_returns_when_any_or_all_have_finished() {
        // One gate per task: a turn holds until its gate is opened.
        let gates: Arc<std::collections::HashMap<&'static str, CancellationToken>> = Arc::new(
            ["a", "b", "c", "other"]
                .into_iter()
                .map(|k| (k, CancellationToken::new()))
                .collect(),
        );
        let g = gates.clone();
        let e = engine(
            |_| {},
            move |l| {
                let prompt = String::from_utf8_lossy(l.stdin.as_deref().unwrap_or_default());
                Script {
                    stdout: codex_turn(&thread_of(l), "ok"),
                    hold: g.get(prompt.trim()).cloned(),
                    ..Default::default()
                }
            },
        )
        .await;
        let mut ids = Vec::new();
        for t in ["a", "b", "c"] {
            ids.push(e.m.delegate(task(t)).await.expect("delegate"));
        }
        let other = e.m.delegate(task("other")).await.expect("delegate");
        let wait = |all: bool| {
            let (m, ids) = (e.m.clone(), ids.clone());
            tokio::spawn(async move {
                m.wait_many(
                    &ids,
                    all,
                    Duration::from_secs(600),
                    &CancellationToken::new(),
                )
                .await
                .expect("wait_many")
            })
        };
        let status = |v: &[zwarm::model::Session]| -> Vec<String> {
            v.iter().map(|s| s.status.as_str().to_string()).collect()
        };
        let any = wait(false);
        let every = wait(true);
        // A session outside the list finishing ends neither wait.
        gates["other"].cancel();
        e.settled(&other).await;
        gates["b"].cancel();
        let got = within(any).await.expect("any");
        assert_eq!(status(&got), ["running", "idle", "running"]);
        // One more of the list finishing does not end "all" either: c still runs when it
        // returns only if it returned early.
        gates["a"].cancel();
        e.settled(&ids[0]).await;
        gates["c"].cancel();
        let got = within(every).await.expect("all");
        assert_eq!(status(&got), ["idle", "idle", "idle"]);
        let order: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(order, ids.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turns_beyond_max_running_queue_and_start_in_order() {
        let gate = CancellationToken::new();
        let g = gate.clone();
        let e = engine(
            |c| c.max_running = 1,
            move |l| Script {
                stdout: codex_turn(&thread_of(l), "ok"),
                hold: Some(g.clone()),
                ..Default::default()
            },
        )
        .await;
        let a = e.m.delegate(task("a")).await.expect("a");
        let b = e.m.delegate(task("b")).await.expect("b");
        assert_eq!(e.m.get(&b).await.expect("b").status.as_str(), "queued");
        // The first turn's executor starts in the background after delegate answers: wait for
        // it, then the second still waits for a slot.
        within(e.runner.wait_launches(1)).await;
        assert_eq!(e.m.get(&b).await.expect("b").status.as_str(), "queued");
        assert_eq!(e.runner.launches().len(), 1, "the second waits for a slot");
        gate.cancel();
        let (sa, sb) = (e.settled(&a).await, e.settled(&b).await);
        assert_eq!((sa.status.as_str(), sb.status.as_str()), ("idle", "idle"));
        // b's start is logged after a's end.
        let all = e.m.recent_events(1000).await.expect("events");
        let pos = |kind: &str, id: &str| {
            all.iter()
                .position(|v| v["event"] == kind && v["session_id"] == id)
                .unwrap_or_else(|| panic!("no {kind} for {id}"))
        };
        assert!(pos("turn_finished", &a) < pos("turn_started", &b));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ending_a_running_session_stops_its_turn_through_the_runner() {
        let e = engine(
            |_| {},
            |l| Script {
                stdout: codex_turn(&thread_of(l), "never finished")[..2].to_vec(),
                hold: Some(CancellationToken::new()),
                ..Default::default()
            },
        )
        .await;
        let mut notices = e.m.subscribe();
        let id = e.m.delegate(task("long")).await.expect("delegate");
        // Once the executor has reported something, it is running.
        while notices.recv().await.expect("notice").session_id != id {}
        let (s, interrupted) =
            e.m.end(
                &id,
                zwarm::model::SessionStatus::Cancelled,
                Some("enough".into()),
            )
            .await
            .expect("end");
        assert!(interrupted);
        assert_eq!(s.status.as_str(), "cancelled");
        assert_eq!(s.turns[0].status, zwarm::model::TurnStatus::Interrupted);
        assert_eq!(e.runner.stopped(), vec![format!("{id}.1")]);
        // Ended sessions take no more turns.
        assert!(e.m.converse(&id, "again").await.is_err());
    }

    /// A burst of delegates of one kind shares delegate's up-front check for a second: a
    /// folder removed within it is found when the turn starts (the turn fails, saying why);
    /// after it, delegate refuses the folder up front again.
    #[tokio::test]
    async fn delegates_share_the_up_front_check_for_a_second_and_each_turn_checks_again() {
        let clock = Frozen::new();
        let e = within(engine(|_| {}, quick)).await;
        let sub = e.dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let at = |t: &str| {
            let mut r = task(t);
            r.working_dir = Some(sub.display().to_string());
            r
        };
        let first = e.m.delegate(at("first")).await.expect("delegate");
        assert_eq!(e.settled(&first).await.status.as_str(), "idle");
        std::fs::remove_dir(&sub).expect("rmdir");
        let second =
            e.m.delegate(at("second"))
                .await
                .expect("accepted on the shared check");
        let s = e.settled(&second).await;
        assert_eq!(s.status.as_str(), "failed", "{s:?}");
        let why = s.turns[0].error.clone().unwrap_or_default();
        assert!(why.contains(&sub.display().to_string()), "{why}");
        clock.advance(Duration::from_millis(1001)).await;
        let err =
            e.m.delegate(at("third"))
                .await
                .expect_err("refused up front again");
        assert!(err.to_string().contains("sub"), "{err}");
    }

    /// A turn's end commit holds its whole record: the flusher does not write the session
    /// again afterwards (the database's log does not grow at its next tick).
    #[tokio::test]
    async fn an_ended_turn_is_not_written_again_by_the_flusher() {
        let clock = Frozen::new();
        let e = within(engine(|_| {}, quick)).await;
        let id = e.m.delegate(task("once")).await.expect("delegate");
        assert_eq!(e.settled(&id).await.status.as_str(), "idle");
        let wal = e.dir.path().join("state").join("zwarm.db-wal");
        let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        // What was submitted is on disk (a lazy group waits a few real milliseconds).
        std::thread::sleep(Duration::from_millis(100));
        let before = size();
        assert!(before > 0, "the turn was written");
        clock.advance(zwarm::sessions::FLUSH_INTERVAL * 2).await;
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(size(), before, "written again after its end");
    }

    /// Time only moves when the test moves it: the turn runs until its timeout exactly.
    #[tokio::test]
    async fn a_turn_past_its_timeout_is_stopped_and_failed() {
        let clock = Frozen::new();
        let e = within(engine(|c| c.turn_timeout_seconds = 600, holding)).await;
        let mut notices = e.m.subscribe();
        let id = e.m.delegate(task("slow")).await.expect("delegate");
        within(async { while notices.recv().await.expect("notice").session_id != id {} }).await;
        clock.advance(Duration::from_secs(599)).await;
        let s = e.m.get(&id).await.expect("get");
        assert_eq!(s.status.as_str(), "running", "stopped before its timeout");
        assert!(e.runner.stopped().is_empty());
        // (Timers are due on the next millisecond tick.)
        clock.advance(Duration::from_secs(2)).await;
        let s = e.settled(&id).await;
        let t = &s.turns[0];
        assert_eq!(t.status, zwarm::model::TurnStatus::Interrupted, "{t:?}");
        assert!(
            t.error
                .as_deref()
                .unwrap_or_default()
                .contains("turn_timeout_seconds (600 s)"),
            "{t:?}"
        );
        assert_eq!(e.runner.stopped(), vec![format!("{id}.1")]);
    }

    /// A wait (a sync delegate's, check_session's `wait_seconds`) answers with the running
    /// turn when its bound passes, not before; and with the turn's end as soon as it ends.
    #[tokio::test]
    async fn a_wait_answers_running_at_its_bound_and_the_end_at_once() {
        let clock = Frozen::new();
        let gate = CancellationToken::new();
        let g = gate.clone();
        let e = within(engine(
            |_| {},
            move |l| Script {
                stdout: codex_turn(&thread_of(l), "at last"),
                hold: Some(g.clone()),
                ..Default::default()
            },
        ))
        .await;
        let never = CancellationToken::new();
        let id = e.m.delegate(task("slow")).await.expect("delegate");
        within(e.runner.wait_launches(1)).await;
        let w = e.m.wait(&id, Duration::from_secs(30), &never);
        tokio::pin!(w);
        assert!(futures::poll!(&mut w).is_pending());
        clock.advance(Duration::from_secs(29)).await;
        assert!(
            futures::poll!(&mut w).is_pending(),
            "the wait answered before its bound"
        );
        // (Timers are due on the next millisecond tick.)
        clock.advance(Duration::from_secs(2)).await;
        let s = within(&mut w).await.expect("wait");
        assert_eq!(s.status.as_str(), "running", "{s:?}");
        // The end is answered at once: no time passes.
        let w = e.m.wait(&id, Duration::from_secs(30), &never);
        tokio::pin!(w);
        assert!(futures::poll!(&mut w).is_pending());
        gate.cancel();
        let s = within(&mut w).await.expect("wait");
        assert_eq!(s.status.as_str(), "idle", "{s:?}");
        assert_eq!(s.turns[0].response.as_deref(), Some("at last"));
    }

    /// An executor that ignores the polite stop is forced once `interrupt_grace_seconds` has
    /// passed, not before; end_session waits for it and records the turn interrupted.
    #[tokio::test]
    async fn an_executor_that_ignores_the_interrupt_is_stopped_after_the_grace_period() {
        let clock = Frozen::new();
        let e = within(engine(
            |c| c.interrupt_grace_seconds = 10,
            |l| Script {
                ignores_interrupt: true,
                ..holding(l)
            },
        ))
        .await;
        let mut notices = e.m.subscribe();
        let id = e.m.delegate(task("stubborn")).await.expect("delegate");
        within(async { while notices.recv().await.expect("notice").session_id != id {} }).await;
        let (m, sid) = (e.m.clone(), id.clone());
        let end = tokio::spawn(async move {
            m.end(
                &sid,
                zwarm::model::SessionStatus::Cancelled,
                Some("enough".into()),
            )
            .await
        });
        // The stop is asked for (the grace period starts now) ...
        until_asked(|| !e.runner.stopped().is_empty()).await;
        clock.advance(Duration::from_secs(9)).await;
        assert!(
            !end.is_finished(),
            "the executor was forced before its grace period"
        );
        let s = e.m.get(&id).await.expect("get");
        assert!(s.turns[0].ended_at.is_none(), "{s:?}");
        // ... and the executor is gone once it is over.
        // (Timers are due on the next millisecond tick.)
        clock.advance(Duration::from_secs(2)).await;
        let (s, interrupted) = within(end).await.expect("join").expect("end");
        assert!(interrupted);
        assert_eq!(s.status.as_str(), "cancelled");
        assert_eq!(s.turns[0].status, zwarm::model::TurnStatus::Interrupted);
    }

    /// Yield until `f` holds (on a frozen clock, where sleeping would never end).
    async fn until_asked(f: impl Fn() -> bool) {
        within(async {
            while !f() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    /// A turn a dead server left running that the runner still has is re-attached to: its
    /// progress is rebuilt from the turn's raw log, the run's output is followed from where
    /// the log ends (each line is logged once), and it holds a running slot until it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_re_attached_turn_logs_each_line_once_and_holds_a_running_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The dead server's run: its thread, three commands, and it goes on.
        let before = |l: &zwarm::runner::Launch| {
            let mut lines = codex_turn(&thread_of(l), "x")[..2].to_vec();
            lines.extend((1..=3).map(codex_command));
            lines
        };
        let r1 = MemoryRunner::new(move |l| Script {
            stdout: before(l),
            hold: Some(CancellationToken::new()),
            ..Default::default()
        });
        let m1 = start_on(dir.path(), |_| {}, &r1).await;
        let id = m1.delegate(task("work")).await.expect("delegate");
        let label = format!("{id}.1");
        let log = dir.path().join(format!("state/turns/{id}.1.jsonl"));
        let lines = |p: &std::path::Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        until("the dead server's five lines in the raw log", async || {
            (lines(&log).len() == 5).then_some(())
        })
        .await;
        // It dies: nothing more is written, its lock goes.
        m1.store().crash_after(0);
        m1.shutdown(Duration::from_secs(5)).await;
        drop(m1);
        for f in std::fs::read_dir(dir.path().join("state/locks")).expect("locks") {
            std::fs::remove_file(f.expect("entry").path()).expect("rm lock");
        }
        // ... in the middle of writing a line.
        let whole = std::fs::metadata(&log).expect("log").len();
        let fourth = codex_command(4);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("log");
        std::io::Write::write_all(&mut f, &fourth.as_bytes()[..20]).expect("write");
        drop(f);

        // The runner of the next server still has the run: what the log holds, a fourth
        // command, the answer and the end, once the gate opens.
        let gate = CancellationToken::new();
        let r2 = MemoryRunner::new(quick);
        let launch = zwarm::runner::Launch {
            label: label.clone(),
            ..Default::default()
        };
        let mut all = before(&launch);
        let end = codex_turn(&thread_of(&launch), "followed to its end");
        all.push(fourth.clone());
        all.extend(end[2..].iter().cloned());
        r2.leave_running(
            &label,
            Script {
                stdout: all.clone(),
                hold: Some(gate.clone()),
                ..Default::default()
            },
        );
        let m2 = start_on(dir.path(), |c| c.max_running = 1, &r2).await;
        let s = until("the fourth command followed", async || {
            let s = m2.get(&id).await.expect("get");
            (s.turns[0].commands.len() >= 4).then_some(s)
        })
        .await;
        assert_eq!(s.status.as_str(), "running", "{s:?}");
        assert_eq!(r2.adopted(), vec![(label.clone(), whole)]);
        // It holds the one running slot: a new turn queues behind it.
        let other = m2.delegate(task("next")).await.expect("delegate");
        assert_eq!(
            m2.get(&other).await.expect("get").status.as_str(),
            "queued",
            "{:?}",
            m2.get(&id).await
        );
        assert!(r2.launches().is_empty(), "{:?}", r2.launches());
        gate.cancel();
        let s = settled(&m2, &id).await;
        assert_eq!(s.status.as_str(), "idle", "{s:?}");
        let t = &s.turns[0];
        assert_eq!(t.status, zwarm::model::TurnStatus::Completed, "{t:?}");
        assert_eq!(t.response.as_deref(), Some("followed to its end"));
        let commands: Vec<&str> = t.commands.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(
            commands,
            ["echo cmd-1", "echo cmd-2", "echo cmd-3", "echo cmd-4"]
        );
        assert_eq!(lines(&log), all, "the raw log holds each line once");
        let s = settled(&m2, &other).await;
        assert_eq!(s.status.as_str(), "idle", "{s:?}");
        assert_eq!(r2.launches().len(), 1);
        m2.shutdown(Duration::from_secs(5)).await;
    }

    /// A turn re-attached while every running slot is taken runs anyway (it runs already),
    /// and takes the first slot that frees: a queued turn waits for it to end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_re_attached_turn_takes_the_first_running_slot_that_frees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hold = |gate: &CancellationToken| {
            let g = gate.clone();
            move |l: &zwarm::runner::Launch| Script {
                stdout: codex_turn(&thread_of(l), "done"),
                hold: Some(g.clone()),
                ..Default::default()
            }
        };
        // Server one runs A; server two, one slot, runs B.
        let r1 = MemoryRunner::new(holding);
        let m1 = start_on(dir.path(), |_| {}, &r1).await;
        let a = m1.delegate(task("a")).await.expect("delegate a");
        let gate_b = CancellationToken::new();
        let r2 = MemoryRunner::new(hold(&gate_b));
        let m2 = start_on(dir.path(), |c| c.max_running = 1, &r2).await;
        let b = m2.delegate(task("b")).await.expect("delegate b");
        within(r2.wait_launches(1)).await;
        // Server one dies with A running; server two's runner still has A's run.
        let dead = m1.get(&a).await.expect("get a").owner.instance;
        m1.store().crash_after(0);
        m1.shutdown(Duration::from_secs(5)).await;
        drop(m1);
        std::fs::remove_file(dir.path().join(format!("state/locks/{dead}.lock"))).expect("rm lock");
        let gate_a = CancellationToken::new();
        let launch = zwarm::runner::Launch {
            label: format!("{a}.1"),
            ..Default::default()
        };
        r2.leave_running(&launch.label, hold(&gate_a)(&launch));
        let s = m2.get(&a).await.expect("get a");
        assert_eq!(s.status.as_str(), "running", "{s:?}");
        assert_eq!(r2.adopted().len(), 1);
        // C queues behind B, and behind A once B ends: A takes B's slot.
        let c = m2.delegate(task("c")).await.expect("delegate c");
        assert_eq!(m2.get(&c).await.expect("get c").status.as_str(), "queued");
        gate_b.cancel();
        let s = settled(&m2, &b).await;
        assert_eq!(s.status.as_str(), "idle", "{s:?}");
        assert_eq!(m2.get(&c).await.expect("get c").status.as_str(), "queued");
        assert_eq!(r2.launches().len(), 1, "C started while A held the slot");
        gate_a.cancel();
        let s = settled(&m2, &a).await;
        assert_eq!(s.status.as_str(), "idle", "{s:?}");
        within(r2.wait_launches(2)).await;
        let s = settled(&m2, &c).await;
        assert_eq!(s.status.as_str(), "idle", "{s:?}");
        m2.shutdown(Duration::from_secs(5)).await;
    }

    /// Poll `f` every 5 ms until it gives a value (failing after [`PATIENCE`]).
    async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let started = std::time::Instant::now();
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                started.elapsed() < super::support::memory::PATIENCE,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A turn's stderr goes to `<id>.<n>.stderr` beside its raw log, a file made only once the
    /// executor writes to stderr.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turns_stderr_file_is_made_only_when_it_writes_to_stderr() {
        let e = engine(
            |_| {},
            |l| {
                let mut s = quick(l);
                if l.stdin.as_deref() == Some(b"noisy".as_slice()) {
                    s.stderr = "warning: slow disk\n".into();
                }
                s
            },
        )
        .await;
        let quiet = e.m.delegate(task("quiet")).await.expect("delegate");
        let noisy = e.m.delegate(task("noisy")).await.expect("delegate");
        for id in [&quiet, &noisy] {
            assert_eq!(e.settled(id).await.status.as_str(), "idle");
        }
        let turn = |id: &str, f: &str| e.dir.path().join(format!("state/turns/{id}.1.{f}"));
        assert!(turn(&quiet, "jsonl").exists(), "no raw log");
        assert!(
            !turn(&quiet, "stderr").exists(),
            "a stderr file for a turn that wrote none"
        );
        assert_eq!(
            std::fs::read_to_string(turn(&noisy, "stderr")).expect("the noisy turn's stderr"),
            "warning: slow disk\n"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_executor_that_cannot_start_or_exits_early_fails_the_turn_with_the_reason() {
        let e = engine(
            |_| {},
            |l| {
                if l.stdin.as_deref() == Some(b"no start".as_slice()) {
                    Script {
                        fail_to_start: Some("no such file".into()),
                        ..Default::default()
                    }
                } else {
                    Script {
                        stdout: codex_turn(&thread_of(l), "x")[..2].to_vec(),
                        stderr: "boom: out of luck\n".into(),
                        exit_code: 3,
                        ..Default::default()
                    }
                }
            },
        )
        .await;
        let a = e.m.delegate(task("no start")).await.expect("delegate");
        let s = e.settled(&a).await;
        let err = s.turns[0].error.clone().unwrap_or_default();
        assert!(
            err.contains("could not start codex") && err.contains("no such file"),
            "{err}"
        );
        let b = e.m.delegate(task("exits")).await.expect("delegate");
        let s = e.settled(&b).await;
        let err = s.turns[0].error.clone().unwrap_or_default();
        assert!(
            err.contains("exited with") && err.contains("out of luck"),
            "{err}"
        );
        assert_eq!(s.status.as_str(), "failed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_adopt_a_dead_servers_running_session_exactly_once() {
        // Server one runs a turn that never ends, then "dies": its lock file goes, which is
        // what tells other servers on the state dir that it is gone.
        let dir = tempfile::tempdir().expect("tempdir");
        let r1 = MemoryRunner::new(holding);
        let m1 = start_on(dir.path(), |_| {}, &r1).await;
        let mut notices = m1.subscribe();
        let id = m1.delegate(task("work")).await.expect("delegate");
        while notices.recv().await.expect("notice").session_id != id {}
        // The thread id is committed before it is reported.
        m1.store().sync().await;
        for f in std::fs::read_dir(dir.path().join("state/locks")).expect("locks") {
            std::fs::remove_file(f.expect("entry").path()).expect("rm lock");
        }
        let (r2, r3) = (
            MemoryRunner::new(|_| Script::default()),
            MemoryRunner::new(|_| Script::default()),
        );
        let (m2, m3) = tokio::join!(
            start_on(dir.path(), |_| {}, &r2),
            start_on(dir.path(), |_| {}, &r3),
        );
        let (s2, s3) = tokio::join!(m2.get(&id), m3.get(&id));
        for s in [s2.expect("get two"), s3.expect("get three")] {
            assert!(!s.status.is_active(), "{s:?}");
            assert_eq!(s.turns[0].status, zwarm::model::TurnStatus::Interrupted);
            assert!(s.native_id.is_some(), "the thread id survives");
        }
        let label = format!("{id}.1");
        // The adopter cleans up once its adoption is committed: a server that read the
        // committed state may answer before that.
        let cleaned = until("the clean-up of the dead turn", async || {
            Some([r2.cleaned(), r3.cleaned()].concat()).filter(|c| !c.is_empty())
        })
        .await;
        assert_eq!(
            cleaned,
            vec![label],
            "what the dead turn left is cleaned up once"
        );
        m2.store().sync().await;
        let recovered = m2
            .recent_events(1000)
            .await
            .expect("events")
            .into_iter()
            .filter(|v| v["event"] == "session_recovered" && v["session_id"] == id)
            .count();
        assert_eq!(recovered, 1);
        // The adopter may continue it; the other refuses to (a live foreign owner).
        let owner = m2.get(&id).await.expect("get").owner.pid;
        assert_eq!(owner, std::process::id());
        drop(m1);
    }

    /// A turn that ends while a reader waits for the turn's start to be committed is
    /// reported only once its end is committed too (the reader used to get the newer,
    /// uncommitted state).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_is_never_reported_before_its_last_change_is_committed() {
        let e = engine(
            |_| {},
            |l| Script {
                stdout: codex_turn(&thread_of(l), "quick"),
                ..Default::default()
            },
        )
        .await;
        let id = e.m.delegate(task("x")).await.expect("delegate");
        let db = rusqlite::Connection::open(e.dir.path().join("state/zwarm.db")).expect("db");
        let finished = || -> i64 {
            db.query_row(
                "SELECT count(*) FROM events WHERE kind = 'turn_finished'",
                [],
                |r| r.get(0),
            )
            .expect("count")
        };
        for n in 1..=20i64 {
            if n > 1 {
                e.m.converse(&id, "more").await.expect("converse");
            }
            let s = e.settled(&id).await;
            assert_eq!(s.status.as_str(), "idle");
            assert_eq!(
                finished(),
                n,
                "turn {n} reported before its end was committed"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_launch_carries_the_session_id_and_the_allowed_mcp_servers_setting() {
        let e = engine(|c| c.executors.mcp_servers = vec!["docs".into()], quick).await;
        let id = e.m.delegate(task("mark")).await.expect("delegate");
        e.settled(&id).await;
        let l = &e.runner.launches()[0];
        assert!(
            l.env_set
                .contains(&(zwarm::executor::TURN_ENV.to_string(), id.clone())),
            "{:?}",
            l.env_set
        );
        // The executor's own read-back file, lent by the store, is what the runner hands back.
        assert!(
            l.read_back[0]
                .parent()
                .is_some_and(|d| d.ends_with("scratch"))
                && l.read_back[0].to_string_lossy().ends_with(".last-message"),
            "{:?}",
            l.read_back
        );
    }

    /// The typed call of an async `delegate` of `task`, as the watchers see it.
    fn async_delegate(task: &str) -> zwarm::watch::Call {
        zwarm::watch::Call::Delegate {
            task: task.into(),
            mode: zwarm::model::Mode::Async,
            adapter: None,
            model: None,
            working_dir: None,
            isolation: None,
            base: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_judge_typed_calls_and_a_refusal_is_typed() {
        use zwarm::watch::Call;
        let e = engine(
            |c| {
                c.watchers.budget.enabled = true;
                c.watchers.budget.max_sessions = Some(1);
            },
            quick,
        )
        .await;
        let call = async_delegate;
        e.m.check_call(&call("first"), false)
            .await
            .expect("under the budget");
        let id = e.m.delegate(task("first")).await.expect("delegate");
        e.settled(&id).await;
        let refused =
            e.m.check_call(&call("second"), false)
                .await
                .expect_err("over max_sessions");
        assert!(refused.to_string().contains("budget"), "{refused}");
        // Inspecting is never refused, even after a server-wide abort.
        e.m.check_call(&Call::ListSessions, false)
            .await
            .expect("list_sessions goes on");
        // The JSON entry point judges the same call.
        let refused =
            e.m.before_call("delegate", &serde_json::json!({"task": "third"}), false)
                .await
                .expect_err("still over");
        assert!(refused.to_string().contains("budget"), "{refused}");
    }

    /// Calls that arrive together share one store read for the watchers' totals, and a call
    /// still sees everything committed before it, by this server or another on the state dir.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_together_share_one_read_of_the_fleet_totals_and_see_every_commit() {
        let budget = |c: &mut zwarm::config::Config| {
            c.watchers.budget.enabled = true;
            c.watchers.budget.max_sessions = Some(1);
        };
        let e = engine(budget, quick).await;
        let call = async_delegate("t");
        e.m.check_call(&call, false)
            .await
            .expect("under the budget");
        let before = e.m.fleet_reads().await;
        // The store's read connection is held, so the first call's read stays in flight while
        // the others arrive (otherwise, on a busy machine, each read may finish before the
        // next call is first polled, and the calls do not arrive together at all).
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let store = e.m.store().clone();
        let holder = std::thread::spawn(move || {
            store.read_now(|_| {
                let _ = held_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            })
        });
        held_rx.recv().expect("the read connection is held");
        let mut all = Box::pin(futures::future::join_all(
            (0..20).map(|_| e.m.check_call(&call, false)),
        ));
        // One pass: every call has arrived (the first waits for its read, the rest for it).
        assert!(futures::poll!(all.as_mut()).is_pending());
        release_tx.send(()).expect("release");
        for r in all.await {
            r.expect("under the budget");
        }
        holder.join().expect("holder").expect("read");
        let reads = e.m.fleet_reads().await - before;
        // The first call's read started before the others arrived, so one more read serves
        // them all (a warm-up read of the engine's own may come between).
        assert!(
            (2..=3).contains(&reads),
            "20 calls sent together made {reads} store reads"
        );
        // A session another server on the same state dir started (and committed) counts
        // for the very next call here.
        let r2 = MemoryRunner::new(quick);
        let m2 = start_on(e.dir.path(), budget, &r2).await;
        let id = m2.delegate(task("elsewhere")).await.expect("delegate");
        m2.wait(
            &id,
            super::support::memory::PATIENCE,
            &CancellationToken::new(),
        )
        .await
        .expect("wait");
        let refused =
            e.m.check_call(&call, false)
                .await
                .expect_err("over max_sessions");
        assert!(refused.to_string().contains("budget"), "{refused}");
        m2.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loaded_configuration_says_the_working_dir_and_the_allowed_root() {
        let e = engine(|_| {}, quick).await;
        drop(e);
        let dir = tempfile::tempdir().expect("tempdir");
        let project = std::fs::canonicalize(dir.path()).expect("canon");
        let sub = project.join("sub");
        let sibling = project.join("sibling");
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::create_dir_all(&sibling).expect("mkdir");
        let mut cfg = config(&project);
        cfg.allowed_roots.clear();
        cfg.project_dir = project.clone();
        cfg.cwd = sub.clone();
        let runner = MemoryRunner::new(quick);
        // The process's directory given here is not where zwarm works: the configuration is.
        let m = Manager::start_with(cfg, std::env::temp_dir(), Arc::new(runner.clone()))
            .await
            .expect("engine starts");
        let id = m.delegate(task("here")).await.expect("delegate");
        let s = m.get(&id).await.expect("get");
        assert_eq!(s.working_dir, sub.display().to_string());
        // The whole project is allowed, not only the directory zwarm started in.
        let mut t = task("there");
        t.working_dir = Some(sibling.display().to_string());
        m.delegate(t)
            .await
            .expect("a dir of the project is allowed");
        let mut t = task("outside");
        t.working_dir = Some(std::env::temp_dir().display().to_string());
        let err = m.delegate(t).await.expect_err("outside the project");
        assert!(
            matches!(err, zwarm::sessions::ManagerError::OutsideRoots { .. }),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watchers_pause_refuses_work_until_acknowledged_and_is_logged() {
        use zwarm::model::Mode;
        use zwarm::watch::Call;
        let e = engine(
            |c| {
                c.watchers.budget.enabled = true;
                c.watchers.budget.max_sessions = Some(1);
                c.watchers.budget.action = "pause".into();
            },
            quick,
        )
        .await;
        let id = e.m.delegate(task("first")).await.expect("delegate");
        e.settled(&id).await;
        let converse = Call::Converse {
            session_id: id.clone(),
            message: "more".into(),
            mode: Mode::Async,
        };
        let delegate = Call::Delegate {
            task: "second".into(),
            mode: Mode::Async,
            adapter: None,
            model: None,
            working_dir: None,
            isolation: None,
            base: None,
        };
        let refused = e.m.check_call(&delegate, false).await.expect_err("paused");
        assert!(refused.to_string().contains("budget"), "{refused}");
        // Paused for every call that starts work, not for inspection.
        assert!(e.m.check_call(&converse, false).await.is_err());
        e.m.check_call(
            &Call::CheckSession {
                session_ids: vec![id.clone()],
            },
            false,
        )
        .await
        .expect("check_session goes on");
        // Acknowledged: the call goes on, and the log says so.
        e.m.check_call(&converse, true).await.expect("acknowledged");
        e.m.store().sync().await;
        let kinds: Vec<String> =
            e.m.recent_events(1000)
                .await
                .expect("events")
                .into_iter()
                .map(|v| v["event"].as_str().unwrap_or_default().to_string())
                .collect();
        for k in ["watcher_fired", "call_refused", "pause_acknowledged"] {
            assert!(kinds.iter().any(|x| x == k), "no {k}: {kinds:?}");
        }
    }
}
