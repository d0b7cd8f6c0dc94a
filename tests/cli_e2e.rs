//! The terminal commands end to end: `zwarm run` with the real codex against the scripted
//! model; `ps`, `show`, `logs`, `end` on a state a running `zwarm serve` writes; `doctor`
//! with a missing CLI and with a CLI that lost a flag; `setup` run twice on existing host
//! configs; `top` in a real terminal (tmux, and a pty made by `script`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, cli_dir, git, keyed_script, wait_done};
use support::mock_openai::OpenAiMock;

fn codex_env() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    (mock, env)
}

/// `zwarm <args>` in the test's work dir with the test's environment (no stray ZWARM_*).
fn zwarm(env: &Env, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zwarm"));
    cmd.args(args).current_dir(&env.work).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("ZWARM_") || k == "IS_SANDBOX" || k == "CLAUDECODE" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    cmd.env("ZWARM_LOG", "warn");
    cmd
}

/// Run `zwarm <args> --state-dir <state>` to the end.
fn cli(env: &Env, args: &[&str]) -> Output {
    let state = env.state.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--state-dir", &state]);
    zwarm(env, &all).output().expect("run zwarm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(o)))
}

#[test]
fn run_answers_on_stdout_shows_progress_and_records_the_session() {
    let (_mock, env) = codex_env();
    let t = Instant::now();
    let o = cli(&env, &["run", "@@tools", "please"]);
    println!("zwarm run took {:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        text(&o.stdout),
        "Done: ran a command and created hello.py\n",
        "{}",
        show(&o)
    );
    let err = text(&o.stderr);
    // Progress (plain lines without a terminal): what the executor ran and edited.
    assert!(err.contains("ran `"), "{err}");
    assert!(err.contains("hello.py"), "{err}");
    assert!(env.work.join("hello.py").exists());

    // Recorded like any other session.
    let ps = json_of(&cli(&env, &["ps", "--json"]));
    let sessions = ps["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{ps}");
    let s = &sessions[0];
    // `run` ends its session when the turn is over.
    assert_eq!(s["status"], "completed", "{ps}");
    assert_eq!(s["adapter"], "codex");
    assert_eq!(s["mode"], "sync");
    assert_eq!(s["task"], "@@tools please");
    assert_eq!(s["turns"], 1);
    assert_eq!(s["usage"]["input_tokens"], 30);
    assert!(
        s["updated_at"].is_string() && s.get("branch").is_none(),
        "{s}"
    );
    let id = s["session_id"].as_str().expect("id").to_string();
    assert!(err.contains(&id), "the session id is announced: {err}");
    let events = env.events();
    for kind in [
        "server_started",
        "session_started",
        "turn_started",
        "turn_finished",
        "session_ended",
        "server_stopped",
    ] {
        assert!(
            events.contains(&format!("\"event\":\"{kind}\"")),
            "{kind}: {events}"
        );
    }

    // `logs` shows what the executor did, not only the lifecycle.
    let o = cli(&env, &["logs", &id]);
    let l = text(&o.stdout);
    assert!(
        l.contains("codex ran `echo hello-from-shell") && l.contains("exit 0"),
        "{}",
        show(&o)
    );
    assert!(l.contains("created hello.py"), "{l}");
    // Watcher firings too (hello.py is code, and no test changed).
    assert!(l.contains("watcher quality nudge"), "{l}");
    assert!(l.contains("session_ended"), "{l}");

    // Outside a git repository a worktree is refused with a way out the CLI accepts.
    let o = cli(&env, &["run", "--isolation", "worktree", "hello"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("isolation \"none\""),
        "{}",
        show(&o)
    );
    // --keep leaves the session open for converse.
    let o = cli(&env, &["run", "--keep", "--isolation", "none", "hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("stays open (--keep)"),
        "{}",
        show(&o)
    );
    let ps = json_of(&cli(&env, &["ps", "--json", "--status", "idle"]));
    assert_eq!(ps["sessions"].as_array().map(Vec::len), Some(1), "{ps}");
    assert_eq!(ps["total"], 1, "{ps}");

    // A failing turn: exit 1, the reason on stderr, nothing on stdout.
    let o = cli(&env, &["run", "--adapter", "codex", "@@err500"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stdout).is_empty(), "{}", show(&o));
    assert!(text(&o.stderr).contains("the turn failed"), "{}", show(&o));
    let ps = json_of(&cli(&env, &["ps", "--json", "--status", "failed"]));
    assert_eq!(ps["sessions"].as_array().map(Vec::len), Some(1), "{ps}");
}

/// The reviewable path from a terminal: `run --isolation worktree` leaves the checkout alone,
/// `diff` shows the branch's changes, `end --integrate merge` lands them; `discard` drops a
/// second session's branch; the refusals say what to do.
#[test]
fn run_in_a_worktree_then_diff_and_merge_or_discard_from_the_terminal() {
    let (_mock, env) = codex_env();
    git(&env.work, &["init", "-q", "-b", "main"]);
    std::fs::write(env.work.join("README"), "project\n").expect("write");
    git(&env.work, &["add", "-A"]);
    git(&env.work, &["commit", "-q", "-m", "init"]);

    let o = cli(&env, &["run", "--isolation", "worktree", "@@tools please"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        text(&o.stdout),
        "Done: ran a command and created hello.py\n"
    );
    let err = text(&o.stderr);
    assert!(
        err.contains("working on branch zwarm/")
            && err.contains("the changes are on branch zwarm/")
            && err.contains("zwarm diff ")
            && err.contains("--integrate merge"),
        "the next steps are said: {err}"
    );
    // The checkout is untouched: the work is on the session's branch.
    assert!(!env.work.join("hello.py").exists(), "{err}");
    let ps = json_of(&cli(&env, &["ps", "--json"]));
    let s = &ps["sessions"][0];
    let id = s["session_id"].as_str().expect("id").to_string();
    let branch = s["branch"].as_str().expect("branch").to_string();
    assert_eq!(branch, format!("zwarm/{}", &id[..8]), "{ps}");
    let table = cli(&env, &["ps"]);
    assert!(text(&table.stdout).contains(&branch), "{}", show(&table));

    let o = cli(&env, &["diff", &id[..8]]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let diff = text(&o.stdout);
    assert!(
        diff.contains("+++ b/hello.py") && diff.contains("+print('hi from apply_patch')"),
        "{}",
        show(&o)
    );
    assert!(text(&o.stderr).contains(&branch), "{}", show(&o));

    let o = cli(&env, &["end", &id, "--integrate", "merge"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stdout).contains(&format!("branch `{branch}` merged into `main` (now at ")),
        "{}",
        show(&o)
    );
    assert_eq!(
        std::fs::read_to_string(env.work.join("hello.py")).expect("merged"),
        "print('hi from apply_patch')\n"
    );
    assert!(git(&env.work, &["status", "--porcelain"]).trim().is_empty());
    let j = json_of(&cli(&env, &["show", &id, "--json"]));
    assert_eq!(j["status"], "completed", "{j}");
    let o = cli(&env, &["show", &id]);
    let t = text(&o.stdout);
    assert!(
        t.contains(&format!("branch   {branch} from "))
            && t.contains("merged; worktree removed, branch kept")
            && t.contains(" (removed)")
            && t.contains("merged at "),
        "{}",
        show(&o)
    );
    // The branch's diff stays readable after the merge (the worktree is gone).
    let o = cli(&env, &["diff", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("hello.py"), "{}", show(&o));

    // A second session, discarded: its branch is gone and the checkout unchanged.
    let o = cli(
        &env,
        &[
            "run",
            "--isolation",
            "worktree",
            "--base",
            "main",
            "@@tools again",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // A worktree session stays open for its review.
    let ps = json_of(&cli(&env, &["ps", "--json", "--status", "idle"]));
    let id2 = ps["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let head = git(&env.work, &["rev-parse", "HEAD"]);
    let o = cli(&env, &["end", &id2, "--integrate", "discard"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("discarded"), "{}", show(&o));
    assert_eq!(git(&env.work, &["rev-parse", "HEAD"]), head);
    assert!(
        git(
            &env.work,
            &["branch", "--list", &format!("zwarm/{}", &id2[..8])]
        )
        .trim()
        .is_empty()
    );
    let o = cli(&env, &["diff", &id2]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("no longer exists"), "{}", show(&o));

    // A session that changed nothing: merging it says nothing was merged.
    let o = cli(&env, &["run", "--isolation", "worktree", "just say hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let ps = json_of(&cli(&env, &["ps", "--json", "--status", "idle"]));
    let id3 = ps["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let o = cli(&env, &["end", &id3, "--integrate", "merge"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stdout).contains("had no commits that `main` lacks, so nothing was merged")
            && !text(&o.stdout).contains("now at"),
        "{}",
        show(&o)
    );
    assert_eq!(git(&env.work, &["rev-parse", "HEAD"]), head);

    // prune: the ended sessions' turn logs and the merged sessions' branches go.
    let log = env.state.join("turns").join(format!("{id}.1.jsonl"));
    assert!(log.is_file());
    let o = cli(&env, &["prune", "--older-than", "1d"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stdout).starts_with("nothing to prune"),
        "{}",
        show(&o)
    );
    let o = cli(&env, &["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = text(&o.stdout);
    assert!(
        out.contains("removed the turn logs of 3 ended session(s)")
            && out.contains(&id[..8])
            && out.contains(&format!("removed branch {branch}"))
            && out.contains(&format!("removed branch zwarm/{}", &id3[..8])),
        "{}",
        show(&o)
    );
    assert!(!log.exists());
    assert!(
        git(&env.work, &["branch", "--list", "zwarm/*"])
            .trim()
            .is_empty(),
        "{}",
        show(&o)
    );
    let j = json_of(&cli(&env, &["show", &id, "--json"]));
    assert_eq!(j["status"], "completed", "the record stays: {j}");
    let o = cli(&env, &["prune"]);
    assert!(
        text(&o.stdout).starts_with("nothing to prune"),
        "{}",
        show(&o)
    );

    // Refusals: a bad base, and merging a session that has no worktree.
    let o = cli(
        &env,
        &[
            "run",
            "--isolation",
            "worktree",
            "--base",
            "no-such-branch",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("no-such-branch"), "{}", show(&o));
    let o = cli(&env, &["run", "--keep", "@@tools plain"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let ps = json_of(&cli(&env, &["ps", "--json", "--status", "idle"]));
    let plain = ps["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let o = cli(&env, &["end", &plain, "--integrate", "merge"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("worktree"), "{}", show(&o));
    let j = json_of(&cli(&env, &["show", &plain, "--json"]));
    assert_eq!(
        j["status"], "idle",
        "a refused end leaves the session as it was: {j}"
    );

    // keep (the default): the branch stays, the worktree goes, and both messages say so.
    let o = cli(&env, &["run", "--isolation", "worktree", "@@tools kept"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let ps = json_of(&cli(&env, &["ps", "--json", "--limit", "1"]));
    let id4 = ps["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let o = cli(&env, &["end", &id4]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stdout).contains("kept and its worktree removed"),
        "{}",
        show(&o)
    );
    let t = text(&cli(&env, &["show", &id4]).stdout);
    assert!(t.contains("branch kept; worktree removed"), "{t}");
    assert!(
        !git(
            &env.work,
            &["branch", "--list", &format!("zwarm/{}", &id4[..8])]
        )
        .trim()
        .is_empty()
    );
}

/// Read lines from a child's stdout on a thread, so a test can wait for one with a deadline.
fn line_reader(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let hit = l.contains(needle);
            seen.push(l);
            if hit {
                return;
            }
        }
    }
    panic!(
        "no line with {needle:?} within 30 s; saw:\n{}",
        seen.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_show_logs_end_work_on_a_state_a_running_server_writes() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let done = z.ok("delegate", json!({"task": "@@tools please"})).await;
    let idle = done["session_id"].as_str().expect("id").to_string();
    let stalled = z
        .ok("delegate", json!({"task": "@@stall", "mode": "async"}))
        .await;
    let running = stalled["session_id"].as_str().expect("id").to_string();
    assert_eq!(stalled["status"], "running");

    // `logs -f` follows from now on, while the server works.
    let state = env.state.display().to_string();
    let mut follow = KillOnDrop(
        zwarm(&env, &["logs", "-f", "-n", "0", "--state-dir", &state])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("logs -f"),
    );
    let lines = line_reader(&mut follow.0);

    // ps --json: both sessions, the running one with its live server.
    let ps = json_of(&cli(&env, &["ps", "--json"]));
    let find = |id: &str| {
        ps["sessions"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["session_id"] == id).cloned())
            .unwrap_or_else(|| panic!("{id} not listed: {ps}"))
    };
    assert_eq!(find(&idle)["status"], "idle");
    assert_eq!(find(&running)["status"], "running");
    assert_eq!(find(&running)["server_alive"], true);
    for key in [
        "session_id",
        "status",
        "adapter",
        "mode",
        "task",
        "turns",
        "usage",
        "cost_usd",
        "updated_at",
    ] {
        assert!(find(&idle).get(key).is_some(), "{key} missing: {ps}");
    }
    let table = cli(&env, &["ps"]);
    let table_text = text(&table.stdout);
    assert!(table_text.starts_with("ID "), "{}", show(&table));
    assert!(
        table_text.contains(&idle[..8]) && table_text.contains(&running[..8]),
        "{table_text}"
    );

    // show: the transcript of the finished session, by prefix.
    let o = cli(&env, &["show", &idle[..8]]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let t = text(&o.stdout);
    for want in [
        idle.as_str(),
        "@@tools please",
        "echo hello-from-shell > from_shell.txt",
        "(exit 0)",
        "+ ",
        "hello.py",
        "Done: ran a command and created hello.py",
        "in 30",
    ] {
        assert!(t.contains(want), "{want:?} missing:\n{t}");
    }
    let o = cli(&env, &["show", &running[..10]]);
    assert!(
        text(&o.stdout).contains("(turn in progress)"),
        "{}",
        show(&o)
    );
    let j = json_of(&cli(&env, &["show", &idle, "--json"]));
    assert_eq!(j["session_id"], idle.as_str());
    assert_eq!(j["turns"][0]["commands"][0]["exit_code"], 0, "{j}");
    let o = cli(&env, &["show", "0123"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("at least 8"), "{}", show(&o));

    // logs: the history as lines, one session's only with an id.
    let o = cli(&env, &["logs"]);
    let l = text(&o.stdout);
    assert!(
        l.contains("session_started") && l.contains("turn_finished"),
        "{l}"
    );
    let o = cli(&env, &["logs", &idle[..8]]);
    assert!(
        text(&o.stdout).contains("codex ran `echo hello-from-shell"),
        "{}",
        show(&o)
    );
    let o = cli(&env, &["logs", &running[..8]]);
    let l = text(&o.stdout);
    assert!(
        l.contains("session_started") && !l.contains(&idle[..8]),
        "{l}"
    );

    // (`end` of a session a live server owns asks that server: see
    // `end_and_continue_sessions_a_live_server_owns`.)

    // The server goes on working meanwhile, and `logs -f` shows it.
    let c = z
        .ok(
            "converse",
            json!({"session_id": idle, "message": "and now say hello"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}");
    let mut seen = Vec::new();
    wait_for_line(&lines, "message_sent", &mut seen);
    // What the executor does, as it does it, before the turn's end.
    wait_for_line(&lines, "codex says: Hello from mock model", &mut seen);
    wait_for_line(&lines, "turn_finished", &mut seen);
    assert!(seen.iter().any(|l| l.contains(&idle[..8])), "{seen:?}");
    drop(follow);

    // The server dies (SIGKILL) with a turn running: `end` adopts the session and ends it.
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
        .await;
    // (The kernel releases a killed process's lock as its last thread exits, a moment after
    // the process shows as gone.)
    let t = Instant::now();
    let ps = loop {
        let ps = json_of(&cli(&env, &["ps", "--json", "--status", "running"]));
        if ps["sessions"][0]["server_alive"] == false || t.elapsed() > Duration::from_secs(10) {
            break ps;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ps["sessions"][0]["server_alive"], false, "{ps}");
    let o = cli(
        &env,
        &[
            "end",
            &running,
            "--verdict",
            "cancelled",
            "--summary",
            "stopped from the terminal",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("as cancelled"), "{}", show(&o));
    let j = json_of(&cli(&env, &["show", &running, "--json"]));
    assert_eq!(j["status"], "cancelled", "{j}");
    assert_eq!(j["summary"], "stopped from the terminal");
    assert_eq!(j["turns"][0]["status"], "interrupted", "{j}");
    let o = cli(&env, &["end", &running]);
    assert_eq!(o.status.code(), Some(1), "ending twice: {}", show(&o));
    let o = cli(&env, &["diff", &idle]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("no worktree") && text(&o.stderr).contains("hello.py"),
        "{}",
        show(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_hold_up_a_busy_server() {
    // While the CLI polls the state (ps and logs in a loop), the server's tool calls answer
    // as usual.
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let first = z.ok("delegate", json!({"task": "warm up"})).await;
    assert_eq!(first["status"], "idle");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = env.state.display().to_string();
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let mut cmd = zwarm(
                &env,
                &[if i == 0 { "ps" } else { "logs" }, "--state-dir", &state],
            );
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let o = cmd.output().expect("run");
                    assert!(o.status.success(), "{}", text(&o.stderr));
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..3 {
        let r = z.ok("delegate", json!({"task": format!("task {i}")})).await;
        assert_eq!(r["status"], "idle", "{r}");
        let s = wait_done(&z, r["session_id"].as_str().expect("id")).await;
        assert_eq!(s["status"], "idle");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        let n = r.join().expect("reader");
        assert!(n > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// doctor

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn doctor(env: &Env, path: &str) -> Output {
    let state = env.state.display().to_string();
    zwarm(env, &["doctor", "--state-dir", &state])
        .env("PATH", path)
        .output()
        .expect("doctor")
}

#[test]
fn doctor_passes_with_the_pinned_clis() {
    let (_mock, env) = codex_env();
    let path = env
        .vars
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .expect("PATH");
    let t = Instant::now();
    let o = doctor(&env, &path);
    println!("{}\ndoctor took {:?}", show(&o), t.elapsed());
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = text(&o.stdout);
    for want in [
        "✓ codex found",
        "✓ codex version",
        "✓ codex flags",
        "✓ codex auth",
        "✓ codex sandbox",
        "✓ claude found",
        "✓ claude version",
        "✓ claude flags",
        "✓ claude auth",
        "✓ state dir",
        "✓ config layers",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    let state = env.state.display().to_string();
    let j = zwarm(&env, &["doctor", "--json", "--state-dir", &state])
        .env("PATH", &path)
        .output()
        .expect("doctor --json");
    let v = json_of(&j);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checks"].as_array().is_some_and(|c| c.len() >= 12), "{v}");
}

#[test]
fn doctor_warns_of_a_missing_cli_and_fails_when_one_lost_a_flag() {
    let (_mock, env) = codex_env();
    let bins = env.dir.path().join("bins");
    // Only codex on PATH (claude's directory left out).
    let only_codex = bins.join("only-codex");
    std::fs::create_dir_all(&only_codex).expect("mkdir");
    std::os::unix::fs::symlink(cli_dir("codex").join("codex"), only_codex.join("codex"))
        .expect("symlink");
    // A codex-only user: claude missing is a warning, not a failure, while codex works.
    let o = doctor(&env, &format!("{}:/usr/bin:/bin", only_codex.display()));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = text(&o.stdout);
    assert!(out.contains("✓ codex found"), "{out}");
    assert!(out.contains("! claude found"), "{out}");
    assert!(
        out.contains("npm install -g @anthropic-ai/claude-code"),
        "{out}"
    );

    // A codex whose `exec --help` no longer lists --json.
    let stub = bins.join("stub");
    std::fs::create_dir_all(&stub).expect("mkdir");
    write_script(
        &stub.join("codex"),
        r#"#!/bin/sh
case "$1" in
  --version) echo "codex-cli 0.169.0" ;;
  exec) cat <<'EOF'
Run Codex non-interactively

Usage: codex exec [OPTIONS] [PROMPT]

Options:
  -s, --sandbox <SANDBOX_MODE>
  -C, --cd <DIR>
      --skip-git-repo-check
  -o, --output-last-message <FILE>
      --json-schema <FILE>
EOF
  ;;
  login) echo "Logged in using an API key" ;;
  sandbox) while [ "$1" != "--" ]; do shift; done; shift; exec "$@" ;;
  *) exit 2 ;;
esac
"#,
    );
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        stub.display(),
        cli_dir("claude").display()
    );
    let o = doctor(&env, &path);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = text(&o.stdout);
    let flags = out
        .lines()
        .find(|l| l.contains("codex flags"))
        .unwrap_or_else(|| panic!("no flags line:\n{out}"));
    assert!(flags.contains('✗') && flags.contains("--json"), "{flags}");
    assert!(out.contains("✓ claude flags"), "{out}");
    let state = env.state.display().to_string();
    let j = zwarm(&env, &["doctor", "--json", "--state-dir", &state])
        .env("PATH", &path)
        .output()
        .expect("doctor --json");
    assert_eq!(j.status.code(), Some(1));
    let v = json_of(&j);
    assert_eq!(v["ok"], false);
    let check = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "codex flags").cloned())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["fix"]
            .as_str()
            .is_some_and(|f| f.contains("@openai/codex@0.169.0")),
        "{check}"
    );
}

// ---------------------------------------------------------------------------------------------
// setup

fn backups(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}.bak-")))
        })
        .collect();
    v.sort();
    v
}

fn exe() -> String {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_zwarm"))
        .expect("exe")
        .display()
        .to_string()
}

#[test]
fn setup_codex_twice_keeps_the_file_and_changes_nothing_the_second_time() {
    let env = Env::new(None, None);
    let home = PathBuf::from(
        env.vars
            .iter()
            .find(|(k, _)| k == "CODEX_HOME")
            .map(|(_, v)| v.clone())
            .expect("CODEX_HOME"),
    );
    let file = home.join("config.toml");
    let before = format!(
        "{}\n# my MCP servers\n[mcp_servers.docs]\ncommand = \"docs-server\" # keep me\nargs = [\"--port\", \"1\"]\n",
        std::fs::read_to_string(&file).expect("config")
    );
    std::fs::write(&file, &before).expect("write");
    let o = zwarm(&env, &["setup", "codex"]).output().expect("setup");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("updated"), "{}", show(&o));
    assert!(
        text(&o.stdout).contains("+ mcp_servers.zwarm.command"),
        "{}",
        show(&o)
    );
    let after = std::fs::read_to_string(&file).expect("config");
    assert!(
        after.starts_with(&before),
        "everything before is kept as it was:\n{after}"
    );
    let doc: toml::Table = after.parse().expect("valid TOML");
    let z = &doc["mcp_servers"]["zwarm"];
    assert_eq!(z["command"].as_str(), Some(exe().as_str()));
    assert_eq!(z["args"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(z["required"].as_bool(), Some(true));
    assert_eq!(z["default_tools_approval_mode"].as_str(), Some("approve"));
    assert_eq!(z["tool_timeout_sec"].as_integer(), Some(300));
    assert_eq!(z["supports_parallel_tool_calls"].as_bool(), Some(true));
    assert_eq!(doc["model_provider"].as_str(), Some("mock"));
    let b = backups(&home, "config.toml");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(std::fs::read_to_string(&b[0]).expect("backup"), before);

    let o = zwarm(&env, &["setup", "codex"]).output().expect("setup");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("nothing changed"), "{}", show(&o));
    assert_eq!(std::fs::read_to_string(&file).expect("config"), after);
    assert_eq!(backups(&home, "config.toml").len(), 1);
}

#[test]
fn setup_claude_desktop_twice_merges_and_keeps_the_rest() {
    let env = Env::new(None, None);
    let dir = env.dir.path().join("desktop");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("claude_desktop_config.json");
    let before = "{\n  \"mcpServers\": {\n    \"files\": {\n      \"command\": \"npx\",\n      \"args\": [\"-y\", \"files-server\"]\n    }\n  },\n  \"preferences\": {\"theme\": \"dark\", \"zoom\": 1.25}\n}\n";
    std::fs::write(&file, before).expect("write");
    let f = file.display().to_string();
    let o = zwarm(&env, &["setup", "claude-desktop", "--config-file", &f])
        .output()
        .expect("setup");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stdout).contains("+ mcpServers.zwarm"),
        "{}",
        show(&o)
    );
    let after = std::fs::read_to_string(&file).expect("config");
    let v: Value = serde_json::from_str(&after).expect("valid JSON");
    assert_eq!(v["mcpServers"]["files"]["args"][1], "files-server");
    assert_eq!(v["preferences"]["zoom"], 1.25);
    assert!(
        after.contains("\"preferences\": {\"theme\": \"dark\", \"zoom\": 1.25}"),
        "{after}"
    );
    let z = &v["mcpServers"]["zwarm"];
    assert_eq!(z["command"], exe().as_str());
    assert_eq!(z["args"][0], "serve");
    assert_eq!(z["args"][1], "--state-dir");
    assert!(
        z["args"][2].as_str().is_some_and(|d| d.starts_with('/')),
        "{z}"
    );
    let b = backups(&dir, "claude_desktop_config.json");
    assert_eq!(b.len(), 1);
    assert_eq!(std::fs::read_to_string(&b[0]).expect("backup"), before);

    let o = zwarm(&env, &["setup", "claude-desktop", "--config-file", &f])
        .output()
        .expect("setup");
    assert!(text(&o.stdout).contains("nothing changed"), "{}", show(&o));
    assert_eq!(std::fs::read_to_string(&file).expect("config"), after);
    assert_eq!(backups(&dir, "claude_desktop_config.json").len(), 1);
}

#[test]
fn setup_claude_code_runs_claude_mcp_add_once() {
    let env = Env::new(None, None);
    let config_dir = PathBuf::from(
        env.vars
            .iter()
            .find(|(k, _)| k == "CLAUDE_CONFIG_DIR")
            .map(|(_, v)| v.clone())
            .expect("CLAUDE_CONFIG_DIR"),
    );
    let file = config_dir.join(".claude.json");
    std::fs::write(&file, "{\"numStartups\": 4, \"theme\": \"dark\"}\n").expect("write");
    // A stub `claude` that records its argv and writes the entry as `claude mcp add` would.
    let bin = env.dir.path().join("stub-claude");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let log = env.dir.path().join("claude-argv.log");
    write_script(
        &bin.join("claude"),
        r#"#!/bin/sh
echo "$*" >> "$CLAUDE_ARGV_LOG"
if [ "$1 $2" = "mcp add" ]; then
  while [ "$1" != "--" ]; do shift; done; shift
  printf '{"numStartups": 4, "theme": "dark", "mcpServers": {"zwarm": {"type": "stdio", "command": "%s", "args": ["%s"], "env": {}}}}\n' "$1" "$2" > "$CLAUDE_CONFIG_DIR/.claude.json"
fi
"#,
    );
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let run = || {
        zwarm(&env, &["setup", "claude-code"])
            .env("PATH", &path)
            .env("CLAUDE_ARGV_LOG", &log)
            .output()
            .expect("setup")
    };
    let o = run();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let argv = std::fs::read_to_string(&log).expect("argv log");
    assert_eq!(
        argv.trim(),
        format!("mcp add zwarm --scope user -- {} serve", exe())
    );
    assert_eq!(backups(&config_dir, ".claude.json").len(), 1);
    let o = run();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("nothing changed"), "{}", show(&o));
    assert_eq!(
        std::fs::read_to_string(&log)
            .expect("argv log")
            .lines()
            .count(),
        1
    );
    assert_eq!(backups(&config_dir, ".claude.json").len(), 1);
}

#[test]
fn setup_claude_code_with_the_real_claude() {
    let env = Env::new(None, None);
    let config_dir = PathBuf::from(
        env.vars
            .iter()
            .find(|(k, _)| k == "CLAUDE_CONFIG_DIR")
            .map(|(_, v)| v.clone())
            .expect("CLAUDE_CONFIG_DIR"),
    );
    std::fs::write(config_dir.join(".claude.json"), "{\"numStartups\": 2}\n").expect("write");
    let o = zwarm(&env, &["setup", "claude-code"])
        .output()
        .expect("setup");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(config_dir.join(".claude.json")).expect("config"),
    )
    .expect("JSON");
    assert_eq!(v["mcpServers"]["zwarm"]["command"], exe().as_str(), "{v}");
    assert_eq!(v["mcpServers"]["zwarm"]["args"], json!(["serve"]));
    assert_eq!(v["numStartups"], 2);
    let o = zwarm(&env, &["setup", "claude-code"])
        .output()
        .expect("setup");
    assert!(text(&o.stdout).contains("nothing changed"), "{}", show(&o));
}

// ---------------------------------------------------------------------------------------------
// top in a real terminal

/// A shell script that runs `zwarm top` with the test's environment and records its exit code.
fn top_script(env: &Env, rc: &Path) -> PathBuf {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut sh = String::from("#!/bin/sh\n");
    for (k, _) in std::env::vars() {
        if k.starts_with("ZWARM_") {
            sh.push_str(&format!("unset {k}\n"));
        }
    }
    for (k, v) in &env.vars {
        sh.push_str(&format!("export {k}={}\n", q(v)));
    }
    sh.push_str("export ZWARM_LOG=warn TERM=xterm-256color\n");
    sh.push_str(&format!("cd {}\n", q(&env.work.display().to_string())));
    sh.push_str(&format!(
        "{} top --state-dir {}\necho $? > {}\n",
        q(env!("CARGO_BIN_EXE_zwarm")),
        q(&env.state.display().to_string()),
        q(&rc.display().to_string())
    ));
    let p = env
        .dir
        .path()
        .join(format!("top-{}.sh", std::process::id()));
    write_script(&p, &sh);
    p
}

fn wait_file(p: &Path, limit: Duration) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(s) = std::fs::read_to_string(p)
            && !s.is_empty()
        {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A tmux server of the test's own (its socket name), killed however the test ends.
struct TmuxServer(String);

impl TmuxServer {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux")
    }
}

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// A child process killed (and reaped) however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn top_draws_in_a_real_terminal_and_quits_on_q() {
    let (_mock, env) = codex_env();
    let o = cli(&env, &["run", "--keep", "@@tools", "please"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let id = json_of(&cli(&env, &["ps", "--json"]))["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut ran = 0;
    if Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        ran += 1;
        let rc = env.dir.path().join("top-tmux.rc");
        let script = top_script(&env, &rc);
        let server = TmuxServer(format!("zwarm-test-{}", std::process::id()));
        let tmux = |args: &[&str]| server.run(args);
        let o = tmux(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "30",
            &script.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", show(&o));
        let t = Instant::now();
        let mut screen = String::new();
        while t.elapsed() < Duration::from_secs(20) {
            screen = text(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout);
            if screen.contains("zwarm top") && screen.contains(&id[..8]) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("{screen}");
        assert!(
            screen.contains("zwarm top") && screen.contains("1 session ·"),
            "{screen}"
        );
        let line = screen
            .lines()
            .find(|l| l.contains(&id[..8]))
            .unwrap_or_else(|| panic!("{screen}"));
        assert!(line.contains("idle") && line.contains("codex"), "{line}");
        // Enter shows the transcript; Esc goes back.
        let wait_screen = |needle: &str| {
            let t = Instant::now();
            loop {
                let s = text(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout);
                if s.contains(needle) {
                    return s;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "no {needle:?} on screen:\n{s}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        tmux(&["send-keys", "-t", "top", "Enter"]);
        let screen = wait_screen("Done: ran a command and created hello.py");
        assert!(
            screen.contains(&format!("transcript {}", &id[..8])),
            "{screen}"
        );
        tmux(&["send-keys", "-t", "top", "Escape"]);
        wait_screen("LAST ACTIVITY");
        // e asks first; y ends the session (through `zwarm end`).
        tmux(&["send-keys", "-t", "top", "e"]);
        wait_screen("End session");
        tmux(&["send-keys", "-t", "top", "y"]);
        let screen = wait_screen(&format!("ended session {}", &id[..8]));
        assert!(screen.contains("as completed"), "{screen}");
        wait_screen("completed  codex");
        tmux(&["send-keys", "-t", "top", "q"]);
        let code = wait_file(&rc, Duration::from_secs(10));
        drop(server);
        assert_eq!(
            code.as_deref().map(str::trim),
            Some("0"),
            "top did not exit 0 on q"
        );
    }
    if Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        ran += 1;
        let rc = env.dir.path().join("top-script.rc");
        let script = top_script(&env, &rc);
        let mut child = KillOnDrop(
            Command::new("script")
                .args([
                    "-qfec",
                    &format!("stty rows 30 cols 120; {}", script.display()),
                    "/dev/null",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("script"),
        );
        let out = child.0.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut { out }, &mut buf);
            buf
        });
        std::thread::sleep(Duration::from_millis(1500));
        {
            use std::io::Write;
            let mut stdin = child.0.stdin.take().expect("stdin");
            let _ = stdin.write_all(b"q");
            let _ = stdin.flush();
            let code = wait_file(&rc, Duration::from_secs(10));
            drop(stdin);
            assert_eq!(
                code.as_deref().map(str::trim),
                Some("0"),
                "top under script did not exit 0 on q"
            );
        }
        let _ = child.0.wait();
        let drawn = text(&reader.join().unwrap_or_default());
        assert!(drawn.contains("zwarm top"), "{drawn}");
        assert!(drawn.contains(&id[..8]), "{drawn}");
    }
    assert!(
        ran > 0,
        "neither tmux nor script is available to give `zwarm top` a terminal"
    );
}

/// `sh -c SCRIPT` with the test's environment; `$ZW_BIN` is the binary, `$STATE` the state dir.
fn shell(env: &Env, script: &str) -> Output {
    let cmd = zwarm(env, &[]);
    let mut sh = Command::new("bash");
    sh.arg("-c")
        .arg(script)
        .current_dir(&env.work)
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.env("ZW_BIN", env!("CARGO_BIN_EXE_zwarm"))
        .env("STATE", &env.state);
    sh.output().expect("run bash")
}

/// `zwarm run … 2>&1 | head -c 1`: the reader goes away after one byte. `run` must not die
/// of it: the turn runs to its end, is recorded, and the session is ended.
#[test]
fn run_survives_a_closed_pipe_and_records_the_turn() {
    let (_mock, env) = codex_env();
    let o = shell(
        &env,
        r#""$ZW_BIN" run --state-dir "$STATE" "@@tools please" 2>&1 | head -c 1 >/dev/null; echo "rc=${PIPESTATUS[0]}""#,
    );
    assert_eq!(text(&o.stdout).trim(), "rc=0", "{}", show(&o));
    let ps = json_of(&cli(&env, &["ps", "--json"]));
    let s = &ps["sessions"][0];
    assert_eq!(s["status"], "completed", "{ps}");
    assert_eq!(s["turns"], 1, "{ps}");
    let id = s["session_id"].as_str().expect("id");
    let j = json_of(&cli(&env, &["show", id, "--json"]));
    assert_eq!(
        j["turns"][0]["response"], "Done: ran a command and created hello.py",
        "{j}"
    );
    // A closed stdout alone (the answer cannot be printed): the same.
    let o = shell(
        &env,
        r#""$ZW_BIN" run --state-dir "$STATE" hello 2>/dev/null | true; echo "rc=${PIPESTATUS[0]}""#,
    );
    assert!(
        matches!(text(&o.stdout).trim(), "rc=0" | "rc=141"),
        "{}",
        show(&o)
    );
    let ps = json_of(&cli(&env, &["ps", "--json", "--status", "completed"]));
    assert_eq!(ps["total"], 2, "{ps}");
}

/// What a person could not see: tool errors (in `run`'s summary and `show`), and a command
/// cut off by Ctrl-C (in `show`).
#[test]
fn tool_errors_and_cut_off_commands_are_shown() {
    let (_mock, env) = codex_env();
    let o = cli(
        &env,
        &["run", "--set", "codex.sandbox=read-only", "@@toolerrors"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let err = text(&o.stderr);
    assert!(err.contains("3 tool error(s)"), "{err}");
    assert!(
        err.contains("zwarm: apply_patch") && err.contains("failed: patch rejected"),
        "{err}"
    );
    let ps = json_of(&cli(&env, &["ps", "--json"]));
    let id = ps["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let o = cli(&env, &["show", &id]);
    let t = text(&o.stdout);
    assert!(t.contains("  tool errors\n    ✗ apply_patch"), "{t}");
    assert!(t.contains("nothere.py"), "{t}");

    // Ctrl-C while a command runs: the command shows as cut off.
    let state = env.state.display().to_string();
    let mut child = KillOnDrop(
        zwarm(&env, &["run", "@@slowcmd", "--state-dir", &state])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let errpipe = child.0.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(errpipe).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    wait_for_line(&rx, "runs `sleep 60", &mut seen);
    // SAFETY: signalling the child this test started.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGINT);
    }
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{seen:?}");
    // run's summary names it too.
    wait_for_line(
        &rx,
        "zwarm: cut off before it finished: sleep 60",
        &mut seen,
    );
    let ps = json_of(&cli(&env, &["ps", "--json", "--status", "cancelled"]));
    let id = ps["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let o = cli(&env, &["show", &id]);
    let t = text(&o.stdout);
    assert!(
        t.contains(
            "… sleep 60; echo finished > slow.txt  (cut off: the turn stopped before it finished)"
        ),
        "{t}"
    );
}

/// Every `zwarm` command README.md shows exists, with the options it shows.
#[test]
fn the_commands_readme_shows_exist_with_their_options() {
    let readme = include_str!("../README.md");
    let help = Command::new(env!("CARGO_BIN_EXE_zwarm"))
        .arg("--help")
        .output()
        .expect("zwarm --help");
    let help = text(&help.stdout);
    let mut checked = 0;
    let mut in_code = false;
    for line in readme.lines() {
        // Shell blocks only (a diagram may name commands too).
        if line.starts_with("```") {
            in_code = line.trim() == "```sh";
            continue;
        }
        let cmd = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = cmd.strip_prefix("zwarm ") else {
            continue;
        };
        if !in_code {
            continue;
        }
        // Words in quotes are the task, not options.
        let rest: String = rest.split('"').step_by(2).collect::<Vec<_>>().join(" ");
        let rest = rest.as_str();
        let sub = rest.split_whitespace().next().unwrap_or("");
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "README shows `{cmd}`, but `zwarm --help` has no `{sub}`:\n{help}"
        );
        let sub_help = Command::new(env!("CARGO_BIN_EXE_zwarm"))
            .args([sub, "--help"])
            .output()
            .expect("zwarm SUB --help");
        let sub_help = text(&sub_help.stdout);
        for flag in rest
            .split_whitespace()
            .filter(|w| w.starts_with("--"))
            .map(|w| w.split('=').next().unwrap_or(w))
        {
            assert!(
                sub_help.contains(flag),
                "README shows `{cmd}`, but `zwarm {sub} --help` has no {flag}:\n{sub_help}"
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "README shows {checked} zwarm commands in code blocks"
    );

    // The pages it links that this repository writes exist (architecture, executors,
    // configuration, hosts and security are written with their code).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for link in readme.split("](").skip(1) {
        let target = link.split(')').next().unwrap_or("");
        if target.starts_with("docs/") {
            assert!(
                root.join(target).is_file()
                    || [
                        "docs/architecture.md",
                        "docs/executors.md",
                        "docs/configuration.md",
                        "docs/hosts.md",
                        "docs/security.md"
                    ]
                    .contains(&target),
                "README links {target}, which does not exist"
            );
        }
    }
    // The test command README gives is the one CI runs.
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(readme.contains("\ncargo test ") && ci.contains("\ncargo test\n"));
}

/// The help texts say what the commands do (each was once wrong or silent).
#[test]
fn help_texts_match_what_the_commands_do() {
    let help = |sub: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_zwarm"))
            .args([sub, "--help"])
            .output()
            .expect("help");
        text(&o.stdout)
    };
    let end = help("end");
    assert!(
        end.contains("branch checked out in the project") && !end.contains("started from"),
        "{end}"
    );
    assert!(end.contains("remove its worktree"), "{end}");
    let ps = help("ps");
    assert!(
        ps.contains("\"total\"") && ps.contains("since created"),
        "{ps}"
    );
    let run = help("run");
    assert!(run.contains("--keep") && run.contains("none"), "{run}");
    assert!(run.contains("--session"), "{run}");
    assert!(
        end.contains("--wait") && end.contains("--accept-outside-symlinks"),
        "{end}"
    );
    let prune = help("prune");
    assert!(prune.contains("--older-than"), "{prune}");
}

/// Wait until `f` holds (up to 30 s), or fail with `what`.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "{what} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_and_continue_sessions_a_live_server_owns() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let by_server = format!("pid {}", z.pid);
    let done = z.ok("delegate", json!({"task": "@@tools please"})).await;
    let idle = done["session_id"].as_str().expect("id").to_string();

    // Continue it from the terminal: the server runs the turn, `run` follows it.
    let o = cli(&env, &["run", "--session", &idle[..8], "and now say hello"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", show(&o), z.stderr());
    assert_eq!(text(&o.stdout), "Hello from mock model\n", "{}", show(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("asking it to run the turn") && err.contains(&by_server),
        "{}",
        show(&o)
    );
    assert!(err.contains("stays open"), "{}", show(&o));
    let j = json_of(&cli(&env, &["show", &idle, "--json"]));
    assert_eq!(j["status"], "idle", "{j}");
    assert_eq!(j["turns"][1]["prompt"], "and now say hello", "{j}");
    assert_eq!(j["turns"][1]["response"], "Hello from mock model", "{j}");
    // The server holds the session still: a host continues it as usual.
    let c = z
        .ok(
            "converse",
            json!({"session_id": idle, "message": "once more"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}");

    // A session busy with a long command: `end` asks the server, which interrupts the turn
    // first, then ends the session; the cut-off command is shown.
    let slow = z
        .ok("delegate", json!({"task": "@@slowcmd", "mode": "async"}))
        .await;
    let slow = slow["session_id"].as_str().expect("id").to_string();
    let log = env.state.join("turns").join(format!("{slow}.1.jsonl"));
    wait_until("the slow command starts", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sleep 60"))
    });
    let o = cli(
        &env,
        &[
            "end",
            &slow[..8],
            "--verdict",
            "cancelled",
            "--summary",
            "stop it",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", show(&o), z.stderr());
    let out = text(&o.stdout);
    assert!(
        out.contains("as cancelled")
            && out.contains("its running turn was interrupted")
            && out.contains(&by_server),
        "{}",
        show(&o)
    );
    let j = json_of(&cli(&env, &["show", &slow, "--json"]));
    assert_eq!(j["status"], "cancelled", "{j}");
    assert_eq!(j["summary"], "stop it", "{j}");
    assert_eq!(j["turns"][0]["status"], "interrupted", "{j}");
    let o = cli(&env, &["show", &slow[..8]]);
    assert!(text(&o.stdout).contains("sleep 60"), "{}", show(&o));
    // The server recorded the end (its own event), and goes on serving.
    let o = cli(&env, &["logs", &slow[..8]]);
    assert!(text(&o.stdout).contains("session_ended"), "{}", show(&o));
    let l = z.ok("list_sessions", json!({})).await;
    assert!(l.to_string().contains(&slow), "{l}");

    // Ending it twice: the server's refusal, exit 1.
    let o = cli(&env, &["end", &slow]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("has ended"), "{}", show(&o));

    // A server that does not answer (stopped): the request is taken back, nothing changes.
    // SAFETY: signals to the server this test started.
    unsafe { libc::kill(z.pid as i32, libc::SIGSTOP) };
    let o = cli(&env, &["end", &idle]);
    unsafe { libc::kill(z.pid as i32, libc::SIGCONT) };
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("did not pick up") && text(&o.stderr).contains("nothing changed"),
        "{}",
        show(&o)
    );
    let j = json_of(&cli(&env, &["show", &idle, "--json"]));
    assert_eq!(j["status"], "idle", "withdrawn, never carried out: {j}");
    // Once it runs again, `end` works (and the withdrawn request was not carried out meanwhile:
    // this end is the first).
    let o = cli(&env, &["end", &idle]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", show(&o), z.stderr());
    assert!(
        text(&o.stdout).contains("as completed") && text(&o.stdout).contains(&by_server),
        "{}",
        show(&o)
    );
    let requests = env.state.join("requests");
    let left: Vec<_> = walk(&requests);
    assert!(left.is_empty(), "request files left behind: {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn run_continues_a_session_no_server_owns() {
    let (_mock, env) = codex_env();
    let o = cli(&env, &["run", "--keep", "@@tools", "please"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let ps = json_of(&cli(&env, &["ps", "--json"]));
    let id = ps["sessions"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    // That `run` has exited: this one adopts the session and runs the turn itself.
    let o = cli(&env, &["run", "--session", &id[..8], "and now say hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(text(&o.stdout), "Hello from mock model\n", "{}", show(&o));
    assert!(
        !text(&o.stderr).contains("asking it"),
        "no server was asked: {}",
        show(&o)
    );
    let j = json_of(&cli(&env, &["show", &id, "--json"]));
    assert_eq!(j["status"], "idle", "a continued session stays open: {j}");
    assert_eq!(j["turns"].as_array().map(Vec::len), Some(2), "{j}");
    // Options that only make sense for a new session are refused with --session.
    let o = cli(&env, &["run", "--session", &id, "--adapter", "codex", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    // An ended session cannot continue: the engine says so.
    assert_eq!(cli(&env, &["end", &id]).status.code(), Some(0));
    let o = cli(&env, &["run", "--session", &id, "more"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("has ended"), "{}", show(&o));
}

#[test]
fn end_stops_a_run_in_another_terminal() {
    let (_mock, env) = codex_env();
    let state = env.state.display().to_string();
    let mut run = KillOnDrop(
        zwarm(&env, &["run", "@@slowcmd", "--state-dir", &state])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("zwarm run"),
    );
    let run_pid = run.0.id();
    let mut id = String::new();
    wait_until("the run's slow command starts", || {
        if id.is_empty()
            && let Some(s) =
                json_of(&cli(&env, &["ps", "--json"]))["sessions"][0]["session_id"].as_str()
        {
            id = s.to_string();
        }
        !id.is_empty()
            && std::fs::read_to_string(env.state.join("turns").join(format!("{id}.1.jsonl")))
                .is_ok_and(|l| l.contains("sleep 60"))
    });
    // That `run` owns the session; `end` asks it, and it interrupts its own turn.
    let o = cli(&env, &["end", &id[..8], "--verdict", "cancelled"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stdout).contains("its running turn was interrupted")
            && text(&o.stdout).contains(&format!("pid {run_pid}")),
        "{}",
        show(&o)
    );
    let mut status = None;
    wait_until("the run exits", || {
        status = run.0.try_wait().expect("try_wait");
        status.is_some()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut run.0.stderr.take().expect("stderr"), &mut err).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(
        !err.contains("warning"),
        "it does not try to end it again: {err}"
    );
    let j = json_of(&cli(&env, &["show", &id, "--json"]));
    assert_eq!(j["status"], "cancelled", "{j}");
    assert_eq!(j["turns"][0]["status"], "interrupted", "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_merges_a_worktree_session_a_live_server_owns() {
    let (_mock, env) = codex_env();
    git(&env.work, &["init", "-q", "-b", "main"]);
    std::fs::write(env.work.join("README"), "project\n").expect("write");
    git(&env.work, &["add", "-A"]);
    git(&env.work, &["commit", "-q", "-m", "init"]);
    let z = Zwarm::start(&env, &[]).await;
    let done = z
        .ok(
            "delegate",
            json!({"task": "@@tools please", "isolation": "worktree"}),
        )
        .await;
    let id = done["session_id"].as_str().expect("id").to_string();
    assert!(!env.work.join("hello.py").exists());
    // A symlink out of the repository in the session's work: the merge is refused (by the
    // server, nothing changed) until accepted.
    let j = json_of(&cli(&env, &["show", &id, "--json"]));
    let wt = PathBuf::from(j["isolation"]["worktree"].as_str().expect("worktree"));
    std::os::unix::fs::symlink("/etc/hostname", wt.join("outside")).expect("symlink");
    let o = cli(&env, &["end", &id[..8], "--integrate", "merge"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("outside"), "{}", show(&o));
    let j = json_of(&cli(&env, &["show", &id, "--json"]));
    assert_eq!(j["status"], "idle", "refused, left open: {j}");
    assert!(!env.work.join("hello.py").exists());
    // The server merges (its engine, its git lock) and `end` reports what became of the branch.
    let o = cli(
        &env,
        &[
            "end",
            &id[..8],
            "--integrate",
            "merge",
            "--accept-outside-symlinks",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", show(&o), z.stderr());
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("branch `zwarm/{}` merged into `main`", &id[..8]))
            && out.contains("(now at ")
            && out.contains(&format!("pid {}", z.pid)),
        "{}",
        show(&o)
    );
    assert!(
        env.work.join("hello.py").exists(),
        "merged into the checkout"
    );
    let j = json_of(&cli(&env, &["show", &id, "--json"]));
    assert_eq!(j["status"], "completed", "{j}");
}
