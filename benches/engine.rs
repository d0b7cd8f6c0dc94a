//! zwarm's session-engine costs, measured through the real MCP interface.
//!
//! `cargo bench --bench engine` (no CLIs needed: the executor is a fake).
//!
//! Every measurement spawns `zwarm serve` over stdio and talks to it with rmcp's client. The
//! executor is a FAKE `codex`: a shell script (written into a temp dir) that ignores its
//! arguments, drains stdin, prints a `codex exec --json` transcript modelled on the captured
//! fixtures (and one line on stderr, as codex does on every turn) and exits 0. zwarm runs it through `--set codex.binary=<script>`.
//!
//! 1. One turn in a 2,000-file git repo: the fake run directly (baseline) vs a sync `delegate`;
//!    zwarm's own cost per turn is the difference of the medians. Each run measures the direct
//!    turn, then one `delegate` per binary (interleaved, like scenario 5).
//! 2. A 0.2-format state dir with 1,000 and 10,000 sessions (`sessions/<id>.json`,
//!    `events.jsonl`, `turns/`, `locks/`), written directly: `list_sessions` (default page) and
//!    `check_session` (full id) latency, start-up time (spawn → `initialize` reply; the first
//!    start, which may import the old format, is reported on its own), and peak RSS (VmHWM).
//! 3. A 2,000-event turn: the fake run directly vs a sync `delegate`.
//! 4. `check_session` latency (p50, max) while 4 paced 2,000-event turns stream (async).
//! 5. Throughput: 100 async `delegate`s of a trivial turn, until all have finished, against the
//!    same 100 runs of the fake started directly, 8 at a time (zwarm's default `max_running`),
//!    in rounds (direct, then zwarm twice per binary, the binaries interleaved, so a slow spell
//!    hits all of them; ratios within a round, median and min over the rounds). The calls are sent two ways: *sequential* (each
//!    reply awaited before the next call: a host calling one tool at a time) and *pipelined*
//!    (all 100 written back to back before any reply is read: parallel tool calls). Also: the
//!    time until all 100 were answered, and how long answering each took.
//!
//! Environment:
//! - `ZWARM_BENCH_BIN`: the binary under test (default: this crate's `zwarm`);
//! - `ZWARM_BENCH_BASELINE_BIN`: an optional second binary (e.g. the 0.2 release), measured with
//!   the same scenarios in the same run and shown side by side, with ratios this/baseline;
//! - `ZWARM_BENCH_QUICK=1`: fewer runs;
//! - `ZWARM_BENCH_ONLY=1,5`: only these scenarios;
//! - `ZWARM_BENCH_ROUNDS=n`: rounds of scenario 5 (default 5, 3 when quick);
//! - `ZWARM_BENCH_STRACE=1`: run each server under `strace -f -c` and report its fsync +
//!   fdatasync calls per turn in scenario 5 (a diagnostic: tracing slows the server's forks,
//!   so the times of such a run are not comparable);
//! - `ZWARM_BENCH_TIMING=1`: the servers log each turn's steps (`zwarm::timing` at debug level);
//!   scenario 5 prints the median time of each step per batch (where a turn's time goes).
//!
//! Slow scenarios have a time budget: a binary that needs far longer per run gets fewer runs
//! (at least one), shown as `n=…` next to its figure. The scenario itself never changes.
//!
//! The table goes to stdout (markdown); progress goes to stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde::Serialize;
use serde_json::{Value, json};

/// Events in the big turn (scenarios 3 and 4), not counting the framing lines.
const BIG_EVENTS: usize = 2_000;
/// Files in the git repo of scenario 1.
const REPO_FILES: usize = 2_000;
/// Concurrent big turns in scenario 4.
const STREAMS: usize = 4;

// ---------------------------------------------------------------------------------------------
// Plan and results

struct Plan {
    /// Turns in scenario 1 (direct and through zwarm, each).
    turn_runs: usize,
    /// Measured starts after the first one, per session count.
    starts_1k: usize,
    starts_10k: usize,
    /// Time budget for the measured starts of one session count.
    start_budget: Duration,
    /// list_sessions and check_session calls per session count.
    calls: usize,
    /// 2,000-event turns through zwarm (scenario 3), and their time budget.
    big_runs: usize,
    big_budget: Duration,
    /// Rounds of scenario 5 (each: direct, sequential, pipelined).
    throughput_rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                turn_runs: 5,
                starts_1k: 2,
                starts_10k: 1,
                start_budget: Duration::from_secs(15),
                calls: 3,
                big_runs: 1,
                big_budget: Duration::from_secs(30),
                throughput_rounds: 3,
            }
        } else {
            Plan {
                turn_runs: 15,
                starts_1k: 5,
                starts_10k: 3,
                start_budget: Duration::from_secs(30),
                calls: 10,
                big_runs: 5,
                big_budget: Duration::from_secs(90),
                throughput_rounds: 5,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Time,
    Mb,
    Ratio,
    Count,
}

#[derive(Clone)]
struct Cell {
    /// Seconds (Time) or kB (Mb).
    value: f64,
    unit: Unit,
    note: Option<String>,
}

impl Cell {
    fn time(d: Duration) -> Cell {
        Cell {
            value: d.as_secs_f64(),
            unit: Unit::Time,
            note: None,
        }
    }

    fn secs(s: f64) -> Cell {
        Cell {
            value: s,
            unit: Unit::Time,
            note: None,
        }
    }

    fn ratio(r: f64) -> Cell {
        Cell {
            value: r,
            unit: Unit::Ratio,
            note: None,
        }
    }

    fn kb(kb: u64) -> Cell {
        Cell {
            value: kb as f64,
            unit: Unit::Mb,
            note: None,
        }
    }

    fn note(mut self, n: impl Into<String>) -> Cell {
        self.note = Some(n.into());
        self
    }

    fn render(&self) -> String {
        let mut s = match self.unit {
            Unit::Time => {
                let v = self.value;
                let a = v.abs();
                if a >= 1.0 {
                    format!("{v:.2} s")
                } else if a >= 0.01 {
                    format!("{:.1} ms", v * 1e3)
                } else {
                    format!("{:.2} ms", v * 1e3)
                }
            }
            Unit::Mb => format!("{:.1} MB", self.value / 1024.0),
            Unit::Ratio => format!("{:.2}×", self.value),
            Unit::Count => format!("{:.2}", self.value),
        };
        if let Some(n) = &self.note {
            let _ = write!(s, " ({n})");
        }
        s
    }
}

/// One binary's results, in the order measured.
#[derive(Default)]
struct Results(Vec<(String, Cell)>);

impl Results {
    fn put(&mut self, name: impl Into<String>, cell: Cell) {
        let name = name.into();
        eprintln!("    {name}: {}", cell.render());
        self.0.push((name, cell));
    }

    fn get(&self, name: &str) -> Option<&Cell> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

struct Bin {
    label: &'static str,
    path: PathBuf,
    version: String,
}

impl Bin {
    fn new(label: &'static str, path: PathBuf) -> Bin {
        assert!(
            path.is_file(),
            "{label} binary {} does not exist (build it, or fix ZWARM_BENCH_BIN / ZWARM_BENCH_BASELINE_BIN)",
            path.display()
        );
        let out = std::process::Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {label} binary {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "`{} --version` failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Bin {
            label,
            path,
            version,
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    v[v.len() / 2]
}

fn n_note(n: usize, wanted: usize) -> Option<String> {
    (n < wanted).then(|| format!("n={n}, capped"))
}

// ---------------------------------------------------------------------------------------------
// The zwarm server under test

struct Server {
    client: Option<RunningService<RoleClient, ()>>,
    pid: u32,
    stderr_path: PathBuf,
    /// Where `strace -c` writes its syscall summary, when the server runs under it.
    strace: Option<PathBuf>,
}

impl Server {
    /// Spawn `zwarm serve` and wait for the `initialize` reply; returns the server and the time
    /// from spawn to that reply.
    async fn start(
        bin: &Bin,
        state: &Path,
        cwd: &Path,
        sets: &[String],
        scratch: &Path,
    ) -> (Server, Duration) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = scratch.join(format!("zwarm-{n}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        // `ZWARM_BENCH_STRACE=1`: count the server's fsync/fdatasync calls (a diagnostic run:
        // tracing slows the server's forks, so its times are not comparable).
        let strace = std::env::var("ZWARM_BENCH_STRACE")
            .is_ok_and(|v| !v.is_empty() && v != "0")
            .then(|| scratch.join(format!("strace-{n}.txt")));
        let mut cmd = match &strace {
            Some(out) => {
                let mut c = tokio::process::Command::new("strace");
                c.args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
                    .arg(out)
                    .arg(&bin.path);
                c
            }
            None => tokio::process::Command::new(&bin.path),
        };
        cmd.arg("serve").arg("--state-dir").arg(state);
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        cmd.current_dir(cwd);
        for (k, _) in std::env::vars() {
            if k.starts_with("ZWARM_") || k == "IS_SANDBOX" || k == "CLAUDECODE" || k == "RUST_LOG"
            {
                cmd.env_remove(k);
            }
        }
        if timing_on() {
            cmd.env("ZWARM_LOG", "info,zwarm::timing=debug");
        }
        // The user's own zwarm config and state never leak into a measurement.
        cmd.env("XDG_CONFIG_HOME", scratch.join("xdg-config"))
            .env("XDG_STATE_HOME", scratch.join("xdg-state"));
        let t0 = Instant::now();
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {} serve: {e}", bin.path.display()));
        let pid = transport.id().expect("zwarm pid");
        let mut server = Server {
            client: None,
            pid,
            stderr_path,
            strace,
        };
        match tokio::time::timeout(Duration::from_secs(300), ().serve(transport)).await {
            Ok(Ok(c)) => server.client = Some(c),
            Ok(Err(e)) => panic!(
                "{} serve: no initialize reply: {e}\n{}",
                bin.path.display(),
                server.stderr()
            ),
            Err(_) => panic!(
                "{} serve: no initialize reply within 300 s\n{}",
                bin.path.display(),
                server.stderr()
            ),
        }
        let took = t0.elapsed();
        (server, took)
    }

    fn client(&self) -> &RunningService<RoleClient, ()> {
        self.client.as_ref().expect("server already stopped")
    }

    /// Call a tool that must succeed and return its structuredContent.
    async fn ok(&self, tool: &str, args: Value, limit: Duration) -> Value {
        let Value::Object(map) = args.clone() else {
            panic!("args must be an object")
        };
        let fut = self
            .client()
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(map));
        let r = match tokio::time::timeout(limit, fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!(
                "{tool}({args}) failed at the protocol level: {e}\n{}",
                self.stderr()
            ),
            Err(_) => panic!(
                "{tool}({args}) did not answer within {limit:?}\n{}",
                self.stderr()
            ),
        };
        if r.is_error == Some(true) {
            let text: Vec<String> = r
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect();
            panic!(
                "{tool}({args}) returned an error: {}\n{}",
                text.join("\n"),
                self.stderr()
            );
        }
        r.structured_content.unwrap_or_else(|| {
            panic!(
                "{tool}({args}) returned no structuredContent\n{}",
                self.stderr()
            )
        })
    }

    /// Peak RSS (VmHWM) of the server process, in kB.
    fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("cannot read /proc/{}/status: {e}", self.pid));
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{}/status", self.pid))
    }

    fn stderr(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let start = s.len().saturating_sub(4000);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!(
            "--- zwarm stderr (tail of {}) ---\n{}",
            self.stderr_path.display(),
            &s[start..]
        )
    }

    /// Close stdin (the server then shuts down) and wait until the process is gone.
    async fn stop(mut self) {
        if let Some(mut c) = self.client.take() {
            let _ = c.close_with_timeout(Duration::from_secs(10)).await;
        }
        let t = Instant::now();
        while pid_exists(self.pid) {
            if t.elapsed() > Duration::from_secs(10) {
                eprintln!("zwarm pid {} did not exit; killing it", self.pid);
                kill(self.pid);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Not stopped cleanly (a panic): make sure no server outlives the bench.
        if self.client.is_some() {
            kill(self.pid);
        }
    }
}

/// The process exists and is not a zombie.
fn pid_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn kill(pid: u32) {
    // SAFETY: SIGKILL to a server process this bench spawned.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

// ---------------------------------------------------------------------------------------------
// The fake executor

/// A `codex exec --json` event line.
fn line(v: Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// One ordinary turn, modelled on `b_exec_command_apply_patch.jsonl`.
fn small_transcript(repo: &Path) -> String {
    let r = repo.display();
    let cmd = "/bin/bash -lc 'cargo test -q 2>&1 | tail -3'";
    let changes = json!([
        {"path": format!("{r}/src/m00/f0000.rs"), "kind": "update"},
        {"path": format!("{r}/tests/f0000_test.rs"), "kind": "add"},
    ]);
    [
        json!({"type":"thread.started","thread_id":"01a209fe-44cd-7e30-b747-e4f32a91ab6b"}),
        json!({"type":"turn.started"}),
        json!({"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"I will run the tests first."}}),
        json!({"type":"item.started","item":{"id":"item_1","type":"command_execution","command":cmd,"aggregated_output":"","exit_code":null,"status":"in_progress"}}),
        json!({"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":cmd,"aggregated_output":"running 12 tests\n............\ntest result: ok. 12 passed; 0 failed\n","exit_code":0,"status":"completed"}}),
        json!({"type":"item.started","item":{"id":"item_2","type":"file_change","changes":changes,"status":"in_progress"}}),
        json!({"type":"item.completed","item":{"id":"item_2","type":"file_change","changes":changes,"status":"completed"}}),
        json!({"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"Done: updated f0000.rs and added a test; cargo test passes."}}),
        json!({"type":"turn.completed","usage":{"input_tokens":30,"cached_input_tokens":0,"cache_write_input_tokens":0,"output_tokens":15,"reasoning_output_tokens":0}}),
    ]
    .into_iter()
    .map(line)
    .collect()
}

/// What `sed -n '1,80p' src/handlers/h<k>.rs` prints: about 2.5 KB, more than zwarm 0.2 keeps
/// of a command's output (2,000 bytes), as most real file views and test runs are.
fn file_view(k: usize) -> String {
    let mut s = format!(
        "//! Handler {k}: validates the request, loads the record and renders it.\n\nuse crate::db::{{Pool, Record}};\nuse crate::http::{{Request, Response, Status}};\n\n"
    );
    for f in 0..7 {
        let _ = write!(
            s,
            "/// Step {f} of handler {k}.\npub fn handler_{k}_step_{f}(req: &Request, pool: &Pool) -> Result<Response, Status> {{\n    let id = req.param(\"id\").ok_or(Status::BadRequest)?;\n    let rec: Record = pool.get(id).map_err(|_| Status::NotFound)?;\n    if rec.version < {f} {{\n        return Err(Status::Conflict);\n    }}\n    Ok(Response::json(&rec))\n}}\n\n"
        );
    }
    s
}

/// A turn of `events` item events (command_execution started/completed pairs whose output is a
/// file view, every tenth pair a reasoning + agent_message pair), framed by thread.started,
/// turn.started, the final agent_message and turn.completed.
fn big_transcript(events: usize) -> Vec<String> {
    let mut v = vec![
        line(json!({"type":"thread.started","thread_id":"01a20a13-36ab-7f21-927a-e78e72cc74d0"})),
        line(json!({"type":"turn.started"})),
    ];
    let mut item = 0;
    for k in 0..events / 2 {
        if k % 10 == 9 {
            v.push(line(json!({"type":"item.completed","item":{"id":format!("item_{item}"),"type":"reasoning","text":format!("Handlers up to {k} look fine; continuing with the next module.")}})));
            v.push(line(json!({"type":"item.completed","item":{"id":format!("item_{}", item + 1),"type":"agent_message","text":format!("Checked {k} handlers so far; no change needed yet.")}})));
            item += 2;
        } else {
            let cmd = format!("/bin/bash -lc \"sed -n '1,80p' src/handlers/h{k}.rs\"");
            let id = format!("item_{item}");
            v.push(line(json!({"type":"item.started","item":{"id":id,"type":"command_execution","command":cmd,"aggregated_output":"","exit_code":null,"status":"in_progress"}})));
            v.push(line(json!({"type":"item.completed","item":{"id":id,"type":"command_execution","command":cmd,"aggregated_output":file_view(k),"exit_code":0,"status":"completed"}})));
            item += 1;
        }
    }
    v.push(line(json!({"type":"item.completed","item":{"id":format!("item_{item}"),"type":"agent_message","text":"All handlers checked; nothing to change."}})));
    v.push(line(json!({"type":"turn.completed","usage":{"input_tokens":48210,"cached_input_tokens":40960,"cache_write_input_tokens":0,"output_tokens":3120,"reasoning_output_tokens":512}})));
    v
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write fake executor");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn sh_quote(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(!s.contains('\''), "path with a quote: {s}");
    format!("'{s}'")
}

/// A fake codex that prints `transcript` at once. It accepts any arguments and drains stdin
/// (a zwarm may pass the prompt there) but needs nothing from it.
fn fake_codex(dir: &Path, name: &str, transcript: &str) -> PathBuf {
    let data = dir.join(format!("{name}.jsonl"));
    std::fs::write(&data, transcript).expect("write transcript");
    let script = dir.join(name);
    write_executable(
        &script,
        &format!(
            "#!/bin/sh\n# fake `codex exec --json`: ignores its arguments, drains stdin, prints a transcript\n# (and, as codex does on every turn, a line on stderr)\necho 'Reading prompt from stdin...' >&2\ncat >/dev/null\nexec cat {}\n",
            sh_quote(&data)
        ),
    );
    script
}

/// A fake codex that prints `lines` in `bursts` bursts with `pause` between them.
fn paced_fake_codex(
    dir: &Path,
    name: &str,
    lines: &[String],
    bursts: usize,
    pause: &str,
) -> PathBuf {
    let chunks = dir.join(format!("{name}.chunks"));
    std::fs::create_dir_all(&chunks).expect("mkdir chunks");
    let per = lines.len().div_ceil(bursts);
    for (i, c) in lines.chunks(per).enumerate() {
        std::fs::write(chunks.join(format!("chunk-{i:04}.jsonl")), c.concat()).expect("chunk");
    }
    let script = dir.join(name);
    write_executable(
        &script,
        &format!(
            "#!/bin/sh\n# fake `codex exec --json`, paced: ignores its arguments, drains stdin, prints a transcript in bursts\necho 'Reading prompt from stdin...' >&2\ncat >/dev/null\nfor f in {}/chunk-*.jsonl; do\n  cat \"$f\"\n  sleep {pause}\ndone\n",
            sh_quote(&chunks)
        ),
    );
    script
}

/// Run the fake directly, as zwarm would (arguments, cwd), reading all of its output.
fn run_direct(script: &Path, cwd: &Path, expect_lines: usize) -> Duration {
    let t = Instant::now();
    let o = std::process::Command::new(script)
        .args([
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-s",
            "workspace-write",
            "--",
            "say hello",
        ])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let took = t.elapsed();
    assert!(o.status.success(), "{} failed", script.display());
    let n = o.stdout.iter().filter(|b| **b == b'\n').count();
    assert_eq!(n, expect_lines, "{} printed {n} lines", script.display());
    took
}

// ---------------------------------------------------------------------------------------------
// Fixtures: the git repo and the 0.2-format state dir

fn git(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=zwarm bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git (is git installed?)");
    assert!(
        o.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn make_repo(dir: &Path, files: usize) {
    for i in 0..files {
        let sub = dir.join("src").join(format!("m{:02}", i / 50));
        if i % 50 == 0 {
            std::fs::create_dir_all(&sub).expect("mkdir");
        }
        std::fs::write(
            sub.join(format!("f{i:04}.rs")),
            format!(
                "//! Module {i}.\n\npub fn value_{i}() -> u32 {{\n    {i}\n}}\n\n#[cfg(test)]\nmod tests {{\n    #[test]\n    fn value() {{\n        assert_eq!(super::value_{i}(), {i});\n    }}\n}}\n"
            ),
        )
        .expect("write repo file");
    }
    std::fs::create_dir_all(dir.join("tests")).expect("mkdir tests");
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "2,000 files"]);
}

/// splitmix64: a small deterministic generator for realistic variety.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ts(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

// zwarm 0.2's on-disk session (`src/session.rs` at 52a3398; `src/model.rs` since), frozen here
// field for field and in the same order, so the files are byte-for-byte what 0.2 wrote with
// `serde_json::to_vec_pretty`, whatever the crate's own types become.

#[derive(Serialize, Clone, Copy, Default)]
struct V02Usage {
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
    reasoning_output_tokens: u64,
}

impl V02Usage {
    fn add(&mut self, u: &V02Usage) {
        self.input_tokens += u.input_tokens;
        self.cached_input_tokens += u.cached_input_tokens;
        self.output_tokens += u.output_tokens;
        self.reasoning_output_tokens += u.reasoning_output_tokens;
    }
}

#[derive(Serialize)]
struct V02Command {
    command: String,
    exit_code: Option<i64>,
    ok: bool,
    output_tail: String,
}

#[derive(Serialize)]
struct V02FileChange {
    path: String,
    kind: &'static str,
}

#[derive(Serialize)]
struct V02Turn {
    index: u32,
    prompt: String,
    status: &'static str,
    response: Option<String>,
    error: Option<String>,
    api_status: Option<u16>,
    usage: V02Usage,
    cost_usd: Option<f64>,
    started_at: String,
    ended_at: Option<String>,
    commands: Vec<V02Command>,
    files_changed: Vec<V02FileChange>,
    permission_denials: Vec<Value>,
    messages: Vec<String>,
}

#[derive(Serialize)]
struct V02Owner {
    pid: u32,
    instance: String,
}

#[derive(Serialize)]
struct V02Session {
    id: String,
    adapter: &'static str,
    mode: &'static str,
    status: &'static str,
    task: String,
    working_dir: String,
    model: Option<String>,
    native_id: Option<String>,
    created_at: String,
    updated_at: String,
    turns: Vec<V02Turn>,
    error: Option<String>,
    summary: Option<String>,
    native_usage: V02Usage,
    owner: V02Owner,
    recent: Vec<String>,
    watcher_notes: Vec<Value>,
}

fn usage(rng: &mut Rng) -> V02Usage {
    let input = 2_000 + rng.below(30_000);
    V02Usage {
        input_tokens: input,
        cached_input_tokens: input / 2,
        output_tokens: 200 + rng.below(3_000),
        reasoning_output_tokens: rng.below(800),
    }
}

const AREAS: [&str; 8] = [
    "auth", "billing", "search", "cli", "storage", "http", "parser", "metrics",
];

/// One idle session of 1-3 finished codex turns, as zwarm 0.2 wrote it, and its lines of
/// `events.jsonl` (appended to `events`).
fn session_v02(
    i: usize,
    id: &str,
    rng: &mut Rng,
    work: &str,
    owner: &(u32, String),
    created_ms: u64,
    events: &mut String,
) -> V02Session {
    let area = AREAS[i % AREAS.len()];
    let mode = if i.is_multiple_of(4) { "async" } else { "sync" };
    let task = format!(
        "In src/{area}/mod.rs, make `{area}::handle_{i}` return a typed error instead of panicking on empty input. Add a unit test for the empty case. Acceptance: cargo test passes and no unwrap() remains in that function."
    );
    let thread = uuid::Uuid::new_v4().to_string();
    let n_turns = 1 + i % 3;
    let mut turns = Vec::new();
    let mut native_usage = V02Usage::default();
    let mut recent: Vec<String> = Vec::new();
    let mut t = created_ms;
    // 0.2's event lines: {ts, server, pid, event, session_id} plus the event's own fields
    // (serde_json objects, so the keys come out sorted, as 0.2 wrote them).
    let push_event = |events: &mut String, at: u64, kind: &str, extra: Value| {
        let mut l = json!({"ts": ts(at), "server": owner.1, "pid": owner.0, "event": kind, "session_id": id});
        if let (Value::Object(dst), Value::Object(src)) = (&mut l, extra) {
            dst.extend(src);
        }
        events.push_str(&line(l));
    };
    push_event(
        events,
        t,
        "session_started",
        json!({"adapter": "codex", "mode": mode, "working_dir": work, "task": task}),
    );
    for n in 1..=n_turns as u32 {
        let prompt = if n == 1 {
            task.clone()
        } else {
            format!(
                "Also cover the whitespace-only input in handle_{i}, and run cargo clippy (turn {n})."
            )
        };
        if n > 1 {
            push_event(
                events,
                t,
                "message_sent",
                json!({"turn": n, "message": prompt}),
            );
        }
        let started = t + 3;
        push_event(
            events,
            started,
            "turn_started",
            json!({"turn": n, "resume": if n > 1 { Some(&thread) } else { None }}),
        );
        let ended = started + 20_000 + rng.below(160_000);
        let u = usage(rng);
        native_usage.add(&u);
        recent.push("codex: session started".into());
        let commands: Vec<V02Command> = (0..1 + rng.below(3))
            .map(|c| {
                let (command, output_tail) = match c {
                    0 => (
                        format!("/bin/bash -lc 'rg -n \"handle_{i}\" src/{area}'"),
                        format!("src/{area}/mod.rs:{}:pub fn handle_{i}(input: &str) -> Result<Out, Error> {{\n", 40 + i % 200),
                    ),
                    1 => (
                        "/bin/bash -lc 'cargo test -q'".to_string(),
                        "running 48 tests\n................................................\ntest result: ok. 48 passed; 0 failed; 0 ignored\n".to_string(),
                    ),
                    _ => (
                        "/bin/bash -lc 'cargo clippy -q -- -D warnings'".to_string(),
                        String::new(),
                    ),
                };
                recent.push(format!("codex runs `{command}`"));
                recent.push(format!("codex ran `{command}` — exit 0"));
                V02Command {
                    command,
                    exit_code: Some(0),
                    ok: true,
                    output_tail,
                }
            })
            .collect();
        let files_changed = vec![
            V02FileChange {
                path: format!("{work}/src/{area}/mod.rs"),
                kind: "update",
            },
            V02FileChange {
                path: format!("{work}/tests/{area}_{i}_test.rs"),
                kind: if n == 1 { "add" } else { "update" },
            },
        ];
        recent.push(format!(
            "codex edited {work}/src/{area}/mod.rs, created {work}/tests/{area}_{i}_test.rs"
        ));
        let response = format!(
            "Done. `{area}::handle_{i}` now returns `Err(Error::EmptyInput)` for empty input instead of panicking, and the unwrap() calls are gone. Added tests/{area}_{i}_test.rs covering the empty case{}. `cargo test` passes (48 tests).",
            if n > 1 {
                " and whitespace-only input; clippy is clean"
            } else {
                ""
            }
        );
        let messages = if n == 1 {
            vec![format!(
                "I'll look at handle_{i} in src/{area}/mod.rs first."
            )]
        } else {
            vec![]
        };
        for m in &messages {
            recent.push(format!("codex says: {m}"));
        }
        recent.push(format!("codex says: {response}"));
        recent.push("codex: turn finished".into());
        turns.push(V02Turn {
            index: n,
            prompt,
            status: "completed",
            response: Some(response),
            error: None,
            api_status: None,
            usage: u,
            cost_usd: None,
            started_at: ts(started),
            ended_at: Some(ts(ended)),
            commands,
            files_changed,
            permission_denials: vec![],
            messages,
        });
        push_event(
            events,
            ended,
            "turn_finished",
            json!({"turn": n, "status": "completed", "error": null}),
        );
        t = ended + 5_000 + rng.below(600_000);
    }
    let updated_at = turns
        .last()
        .and_then(|t| t.ended_at.clone())
        .expect("ended_at");
    let keep = recent.len().saturating_sub(20);
    V02Session {
        id: id.to_string(),
        adapter: "codex",
        mode,
        status: "idle",
        task,
        working_dir: work.to_string(),
        model: i.is_multiple_of(2).then(|| "gpt-5.5".to_string()),
        native_id: Some(thread),
        created_at: ts(created_ms),
        updated_at,
        turns,
        error: None,
        summary: None,
        native_usage,
        owner: V02Owner {
            pid: owner.0,
            instance: owner.1.clone(),
        },
        recent: recent.split_off(keep),
        watcher_notes: vec![],
    }
}

/// Write a zwarm 0.2 state dir with `n` idle sessions owned by dead servers; returns the ids.
fn write_v02_state(dir: &Path, n: usize, work: &Path) -> Vec<String> {
    for sub in ["sessions", "turns", "locks"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir state");
    }
    let mut rng = Rng(0x5EED ^ n as u64);
    // A few past servers, none alive (their lock files do not exist).
    let owners: Vec<(u32, String)> = (0..6)
        .map(|k| (40_000 + k * 977, uuid::Uuid::new_v4().to_string()))
        .collect();
    let base = humantime::parse_rfc3339("2026-09-01T08:00:00Z")
        .expect("base time")
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch")
        .as_millis() as u64;
    let work = work.display().to_string();
    let mut events = String::new();
    let mut ids = Vec::with_capacity(n);
    let mut total = 0;
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let owner = &owners[i * owners.len() / n];
        let created = base + i as u64 * 317_000 + rng.below(1_000);
        let s = session_v02(i, &id, &mut rng, &work, owner, created, &mut events);
        let bytes = serde_json::to_vec_pretty(&s).expect("serialize");
        total += bytes.len();
        std::fs::write(dir.join("sessions").join(format!("{id}.json")), bytes)
            .expect("write session");
        ids.push(id);
    }
    let mut f = std::fs::File::create(dir.join("events.jsonl")).expect("events.jsonl");
    f.write_all(events.as_bytes()).expect("write events");
    eprintln!(
        "  wrote {n} 0.2-format sessions ({:.1} KB each on average; events.jsonl {} KB)",
        total as f64 / n as f64 / 1024.0,
        events.len() / 1024
    );
    ids
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Ctx {
    plan: Plan,
    root: PathBuf,
    repo: PathBuf,
    plain: PathBuf,
    small_fake: PathBuf,
    small_lines: usize,
    big_fake: PathBuf,
    big_lines: usize,
    paced_fake: PathBuf,
    /// (sessions, template state dir, session ids)
    states: Vec<(usize, PathBuf, Vec<String>)>,
}

impl Ctx {
    fn state_dir(&self, bin: &Bin, name: &str) -> PathBuf {
        self.root.join(format!("state-{}-{name}", bin.label))
    }

    fn scratch(&self, bin: &Bin) -> PathBuf {
        let p = self.root.join(format!("scratch-{}", bin.label));
        std::fs::create_dir_all(&p).expect("mkdir scratch");
        p
    }
}

fn codex_set(fake: &Path) -> Vec<String> {
    vec![format!("codex.binary={}", fake.display())]
}

/// One sync `delegate` of the scenario-1 turn; how long it took.
async fn repo_delegate(srv: &Server, i: usize) -> Duration {
    let t = Instant::now();
    let r = srv
        .ok(
            "delegate",
            json!({"task": format!("bench turn {i}: update f0000.rs and its test"), "wait_seconds": 120}),
            Duration::from_secs(180),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(r["status"], "idle", "delegate did not finish: {r}");
    took
}

/// Scenario 1: one turn in a 2,000-file git repo.
async fn turn_in_repo(ctx: &Ctx, bins: &[Bin], outs: &mut [Results]) {
    let runs = ctx.plan.turn_runs;
    let mut servers = Vec::new();
    for bin in bins {
        let state = ctx.state_dir(bin, "repo");
        let (srv, _) = Server::start(
            bin,
            &state,
            &ctx.repo,
            &codex_set(&ctx.small_fake),
            &ctx.scratch(bin),
        )
        .await;
        servers.push(srv);
    }
    for srv in &servers {
        repo_delegate(srv, 0).await; // warm-up
    }
    // Interleaved: each run measures the direct turn, then one sync `delegate` per binary, so a
    // slow spell (or slow syncs) hits all of them.
    let mut direct = Vec::new();
    let mut via: Vec<Vec<Duration>> = bins.iter().map(|_| Vec::new()).collect();
    for i in 1..=runs {
        direct.push(run_direct(&ctx.small_fake, &ctx.repo, ctx.small_lines));
        for (srv, v) in servers.iter().zip(via.iter_mut()) {
            v.push(repo_delegate(srv, i).await);
        }
    }
    let direct = median(direct);
    for ((srv, v), (bin, out)) in servers
        .into_iter()
        .zip(via)
        .zip(bins.iter().zip(outs.iter_mut()))
    {
        let stderr_path = srv.stderr_path.clone();
        srv.stop().await;
        if timing_on() {
            eprintln!(
                "  [{}] steps (median ms): {}",
                bin.label,
                step_medians(&stderr_path)
            );
        }
        let via = median(v);
        out.put(
            "2,000-file git repo: one turn, fake executor run directly",
            Cell::time(direct),
        );
        out.put(
            "2,000-file git repo: one turn as a sync `delegate`",
            Cell::time(via),
        );
        out.put(
            "2,000-file git repo: **zwarm's own cost per turn**",
            Cell::secs(via.as_secs_f64() - direct.as_secs_f64()),
        );
    }
}

/// Scenario 2: list/check latency, start-up and RSS with many sessions.
async fn many_sessions(ctx: &Ctx, bin: &Bin, out: &mut Results) {
    for (n, template, ids) in &ctx.states {
        let k = format!("{}k", n / 1000);
        let state = ctx.state_dir(bin, &format!("{k}-sessions"));
        copy_dir(template, &state);
        let sets = codex_set(&ctx.small_fake);
        let scratch = ctx.scratch(bin);
        let (srv, first) = Server::start(bin, &state, &ctx.plain, &sets, &scratch).await;
        srv.stop().await;
        let starts = if *n >= 10_000 {
            ctx.plan.starts_10k
        } else {
            ctx.plan.starts_1k
        };
        // Another start only if it fits the budget (judged by the last one); the last server
        // started stays up for the list/check calls.
        let began = Instant::now();
        let mut times = Vec::new();
        let srv = loop {
            let (s, took) = Server::start(bin, &state, &ctx.plain, &sets, &scratch).await;
            times.push(took);
            if times.len() >= starts || began.elapsed() + took > ctx.plan.start_budget {
                break s;
            }
            s.stop().await;
        };
        let start_note = n_note(times.len(), starts);
        let limit = Duration::from_secs(120);
        let mut list = Vec::new();
        for _ in 0..ctx.plan.calls {
            let t = Instant::now();
            let r = srv.ok("list_sessions", json!({}), limit).await;
            list.push(t.elapsed());
            assert_eq!(
                r["total"].as_u64(),
                Some(*n as u64),
                "list_sessions total is not {n} (were the 0.2 sessions read/imported?): {}\n{}",
                r["total"],
                srv.stderr()
            );
            let page = r["sessions"].as_array().map(Vec::len).unwrap_or(0);
            assert!(page > 0, "list_sessions returned an empty page");
        }
        let mut rng = Rng(0xC0FFEE ^ *n as u64);
        let mut check = Vec::new();
        for _ in 0..ctx.plan.calls {
            let id = &ids[rng.below(ids.len() as u64) as usize];
            let t = Instant::now();
            let r = srv
                .ok("check_session", json!({"session_id": id}), limit)
                .await;
            check.push(t.elapsed());
            assert_eq!(
                r["session_id"].as_str(),
                Some(id.as_str()),
                "check_session: {r}"
            );
            assert!(
                r["turns"].as_array().is_some_and(|t| !t.is_empty()),
                "check_session shows no turns: {r}"
            );
        }
        let rss = srv.peak_rss_kb();
        srv.stop().await;
        out.put(
            format!("{k} sessions: `list_sessions` default page"),
            Cell::time(median(list)),
        );
        out.put(
            format!("{k} sessions: `check_session` by full id"),
            Cell::time(median(check)),
        );
        out.put(
            format!("{k} sessions: first start (import), spawn → `initialize` reply"),
            Cell::time(first),
        );
        let mut cell = Cell::time(median(times));
        if let Some(nt) = start_note {
            cell = cell.note(nt);
        }
        out.put(
            format!("{k} sessions: start-up, spawn → `initialize` reply"),
            cell,
        );
        out.put(
            format!("{k} sessions: peak RSS after the list/check calls"),
            Cell::kb(rss),
        );
    }
}

/// Scenario 3: one 2,000-event turn.
async fn big_turn(ctx: &Ctx, bin: &Bin, out: &mut Results) {
    let direct = median(
        (0..ctx.plan.turn_runs)
            .map(|_| run_direct(&ctx.big_fake, &ctx.plain, ctx.big_lines))
            .collect(),
    );
    let state = ctx.state_dir(bin, "big");
    let (srv, _) = Server::start(
        bin,
        &state,
        &ctx.plain,
        &codex_set(&ctx.big_fake),
        &ctx.scratch(bin),
    )
    .await;
    let began = Instant::now();
    let mut via = Vec::new();
    while via.len() < ctx.plan.big_runs {
        // Another run only if it fits the budget (judged by the runs so far).
        if let Some(last) = via.last()
            && began.elapsed() + *last > ctx.plan.big_budget
        {
            break;
        }
        let t = Instant::now();
        let r = srv
            .ok(
                "delegate",
                json!({"task": format!("bench big turn {}: check every handler", via.len()), "wait_seconds": 1800}),
                Duration::from_secs(1900),
            )
            .await;
        via.push(t.elapsed());
        assert_eq!(
            r["status"], "idle",
            "2,000-event delegate did not finish: {r}"
        );
        eprintln!("    (2,000-event turn {}: {:.2?})", via.len(), t.elapsed());
    }
    srv.stop().await;
    let n = via.len();
    let via = median(via);
    out.put(
        "2,000-event turn: fake executor run directly",
        Cell::time(direct),
    );
    let note = n_note(n, ctx.plan.big_runs);
    let mut cell = Cell::time(via);
    if let Some(nt) = note.clone() {
        cell = cell.note(nt);
    }
    out.put("2,000-event turn: as a sync `delegate`", cell);
    let mut cost = Cell::secs(via.as_secs_f64() - direct.as_secs_f64());
    if let Some(nt) = note {
        cost = cost.note(nt);
    }
    out.put(
        "2,000-event turn: **zwarm's cost beyond the executor**",
        cost,
    );
}

/// Scenario 4: check_session latency while 4 paced 2,000-event turns stream.
async fn check_while_streaming(ctx: &Ctx, bin: &Bin, out: &mut Results) {
    let state = ctx.state_dir(bin, "streams");
    let (srv, _) = Server::start(
        bin,
        &state,
        &ctx.plain,
        &codex_set(&ctx.paced_fake),
        &ctx.scratch(bin),
    )
    .await;
    let limit = Duration::from_secs(120);
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for i in 0..STREAMS {
        let r = srv
            .ok(
                "delegate",
                json!({"task": format!("bench stream {i}: check every handler"), "mode": "async"}),
                limit,
            )
            .await;
        let id = r["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("async delegate returned no session_id: {r}"))
            .to_string();
        ids.push(id);
    }
    let done = |r: &Value| !matches!(r["status"].as_str(), Some("running" | "queued"));
    let mut lat = Vec::new();
    let mut others_done = false;
    loop {
        let t = Instant::now();
        let r = srv
            .ok("check_session", json!({"session_id": ids[0]}), limit)
            .await;
        lat.push(t.elapsed());
        let target_done = done(&r);
        if target_done && (others_done || lat.len() % 5 == 0) {
            // The other turns, checked now and then (not timed).
            let mut all = true;
            for id in &ids[1..] {
                let o = srv
                    .ok("check_session", json!({"session_id": id}), limit)
                    .await;
                all &= done(&o);
            }
            others_done = all;
            if all {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "the {STREAMS} streaming turns did not finish within 30 min\n{}",
            srv.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = t0.elapsed();
    for id in &ids {
        let r = srv
            .ok("check_session", json!({"session_id": id}), limit)
            .await;
        assert_eq!(
            r["status"], "idle",
            "streaming turn did not finish well: {r}"
        );
    }
    srv.stop().await;
    let checks = lat.len();
    let max = *lat.iter().max().expect("checks");
    let p50 = median(lat);
    out.put(
        format!("{STREAMS} × 2,000-event turns streaming: `check_session` p50"),
        Cell::time(p50).note(format!("{checks} checks")),
    );
    out.put(
        format!("{STREAMS} × 2,000-event turns streaming: `check_session` max"),
        Cell::time(max),
    );
    out.put(
        format!("{STREAMS} × 2,000-event turns streaming: wall time until all finished"),
        Cell::time(wall),
    );
}

// ---------------------------------------------------------------------------------------------

/// Turns in scenario 5, and how many run at once (zwarm's default `max_running`).
const THROUGHPUT_TURNS: usize = 100;
const THROUGHPUT_CONCURRENCY: usize = 8;

/// How a batch of scenario 5 sends its 100 async `delegate`s.
#[derive(Clone, Copy, PartialEq)]
enum Calls {
    /// Each call's reply awaited before the next is sent (a host that calls one tool at a time).
    Sequential,
    /// All 100 sent back to back without waiting (a host with parallel tool calls, or any
    /// client that does not wait for each reply); the replies come in any order.
    Pipelined,
}

/// One batch of scenario 5 through zwarm.
struct Batch {
    /// From the first call sent to the last `delegate` answered.
    accepted: Duration,
    /// From the first call sent to every turn finished.
    total: Duration,
    /// How long each `delegate` took to answer (from when it was sent).
    accept: Vec<Duration>,
    /// fsync + fdatasync calls of the server during the whole batch (`ZWARM_BENCH_STRACE`).
    syncs: Option<u64>,
    /// CPU time of the server itself during the batch (user + system, all its threads).
    cpu: Duration,
}

/// CPU time (user + system) a process has used so far, from /proc/<pid>/stat.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name: state is 0, utime 11, stime 12 (clock ticks).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// The same 100 runs of the fake started directly, 8 at a time.
fn throughput_direct(ctx: &Ctx) -> Duration {
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..THROUGHPUT_CONCURRENCY {
            s.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < THROUGHPUT_TURNS {
                    run_direct(&ctx.small_fake, &ctx.plain, ctx.small_lines);
                }
            });
        }
    });
    t.elapsed()
}

/// 100 async `delegate`s through a fresh server (one warm-up turn first), until all finished.
async fn throughput_batch(ctx: &Ctx, bin: &Bin, name: &str, how: Calls) -> Batch {
    let state = ctx.state_dir(bin, name);
    let (srv, _) = Server::start(
        bin,
        &state,
        &ctx.plain,
        &codex_set(&ctx.small_fake),
        &ctx.scratch(bin),
    )
    .await;
    // Warm-up: one turn to the end.
    let r = srv
        .ok(
            "delegate",
            json!({"task": "warm-up", "wait_seconds": 120}),
            Duration::from_secs(180),
        )
        .await;
    assert_eq!(r["status"], "idle", "warm-up did not finish: {r}");
    let one = |i: usize| {
        let srv = &srv;
        async move {
            let a = Instant::now();
            let r = srv
                .ok(
                    "delegate",
                    json!({"task": format!("trivial turn {i}"), "mode": "async"}),
                    Duration::from_secs(120),
                )
                .await;
            let id = r["session_id"].as_str().expect("session_id").to_string();
            (a.elapsed(), id)
        }
    };
    let cpu0 = cpu_of(srv.pid);
    let t = Instant::now();
    let answers = match how {
        Calls::Sequential => {
            let mut v = Vec::with_capacity(THROUGHPUT_TURNS);
            for i in 0..THROUGHPUT_TURNS {
                v.push(one(i).await);
            }
            v
        }
        // One task polls all 100 calls: each is written to the server's stdin when first
        // polled, i.e. all back to back, before any reply is read.
        Calls::Pipelined => futures::future::join_all((0..THROUGHPUT_TURNS).map(one)).await,
    };
    let accepted = t.elapsed();
    let (accept, ids): (Vec<Duration>, Vec<String>) = answers.into_iter().unzip();
    for chunk in ids.chunks(50) {
        let r = srv
            .ok(
                "check_session",
                json!({"session_ids": chunk, "wait": "all", "wait_seconds": 300}),
                Duration::from_secs(320),
            )
            .await;
        let sessions = r["sessions"].as_array().cloned().unwrap_or_default();
        assert_eq!(sessions.len(), chunk.len(), "{r}");
        for s in &sessions {
            assert_eq!(s["status"], "idle", "a turn did not finish: {s}");
        }
    }
    let total = t.elapsed();
    let cpu = cpu_of(srv.pid).saturating_sub(cpu0);
    let strace = srv.strace.clone();
    let stderr_path = srv.stderr_path.clone();
    srv.stop().await;
    if timing_on() {
        eprintln!("      steps (median ms): {}", step_medians(&stderr_path));
    }
    Batch {
        accepted,
        total,
        accept,
        syncs: strace.map(|p| strace_syncs(&p)),
        cpu,
    }
}

fn timing_on() -> bool {
    std::env::var("ZWARM_BENCH_TIMING").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The median of each step in the server's `timing:` lines (one per turn), in the order the
/// steps first appear, and how many turns logged them.
fn step_medians(stderr: &Path) -> String {
    let text = std::fs::read_to_string(stderr).unwrap_or_default();
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    for line in text.lines() {
        let Some((_, rest)) = line.split_once("timing:") else {
            continue;
        };
        for kv in rest.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            match steps.iter_mut().find(|(n, _)| n == k) {
                Some((_, vs)) => vs.push(v),
                None => steps.push((k.to_string(), vec![v])),
            }
        }
    }
    steps
        .into_iter()
        .map(|(k, mut vs)| {
            vs.sort_by(f64::total_cmp);
            format!("{k} {:.2} (n={})", vs[vs.len() / 2], vs.len())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// fsync + fdatasync calls in a `strace -c` summary.
fn strace_syncs(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.last() {
                Some(&"fsync") | Some(&"fdatasync") => f.get(3)?.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum()
}

fn min_med(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

/// Scenario 5: throughput of many small async turns, against the same runs started directly,
/// in rounds: each round measures the direct runs, then, for each binary in turn (the
/// baseline first, when there is one), zwarm with the calls sent one at a time and zwarm with
/// the calls pipelined, so a slow spell of the (shared) machine hits all of them; ratios are
/// taken within a round. Figures: median over the rounds, min noted.
async fn throughput(ctx: &Ctx, bins: &[Bin], outs: &mut [Results]) {
    let rounds = ctx.plan.throughput_rounds;
    let mut direct = Vec::new();
    let new_per = || -> Vec<(Calls, &str, Vec<Batch>)> {
        vec![
            (Calls::Sequential, "sequential", Vec::new()),
            (Calls::Pipelined, "pipelined", Vec::new()),
        ]
    };
    let mut per: Vec<Vec<(Calls, &str, Vec<Batch>)>> = bins.iter().map(|_| new_per()).collect();
    for round in 0..rounds {
        let disk = fsync_probe(&ctx.root);
        let d = throughput_direct(ctx);
        eprintln!(
            "    round {round}: direct {:.0} ms (disk before it: fdatasync {disk})",
            d.as_secs_f64() * 1e3
        );
        direct.push(d);
        for (bin, per) in bins.iter().zip(per.iter_mut()) {
            for (how, name, batches) in per.iter_mut() {
                let dir = format!("throughput-{name}-{round}");
                let b = throughput_batch(ctx, bin, &dir, *how).await;
                eprintln!(
                    "    round {round}: [{}] {name}: all answered {:.0} ms, all finished {:.0} ms ({:.2}× direct), server CPU {:.2} ms per turn{}",
                    bin.label,
                    b.accepted.as_secs_f64() * 1e3,
                    b.total.as_secs_f64() * 1e3,
                    b.total.as_secs_f64() / d.as_secs_f64(),
                    b.cpu.as_secs_f64() * 1e3 / THROUGHPUT_TURNS as f64,
                    b.syncs.map(|n| format!(", {n} fsyncs")).unwrap_or_default()
                );
                batches.push(b);
            }
        }
    }
    for (per, out) in per.iter().zip(outs.iter_mut()) {
        throughput_figures(&direct, per, out);
    }
}

fn throughput_figures(direct: &[Duration], per: &[(Calls, &str, Vec<Batch>)], out: &mut Results) {
    let secs = |v: Vec<f64>| {
        let n = v.len();
        let (min, med) = min_med(v);
        Cell::secs(med).note(format!("min {}, n={n}", Cell::secs(min).render()))
    };
    let ratio = |v: Vec<f64>| {
        let n = v.len();
        let (min, med) = min_med(v);
        Cell::ratio(med).note(format!("min {min:.2}×, n={n}"))
    };
    out.put(
        "throughput: 100 trivial runs started directly, 8 at a time",
        secs(direct.iter().map(Duration::as_secs_f64).collect()),
    );
    for (_, name, batches) in per {
        out.put(
            format!("throughput, {name}: all 100 async `delegate`s answered"),
            secs(batches.iter().map(|b| b.accepted.as_secs_f64()).collect()),
        );
        out.put(
            format!("throughput, {name}: 100 async `delegate`s, all finished"),
            secs(batches.iter().map(|b| b.total.as_secs_f64()).collect()),
        );
        out.put(
            format!("throughput, {name}: **zwarm / direct**"),
            ratio(
                batches
                    .iter()
                    .zip(direct)
                    .map(|(b, d)| b.total.as_secs_f64() / d.as_secs_f64().max(1e-9))
                    .collect(),
            ),
        );
        out.put(
            format!("throughput, {name}: the server's CPU time per turn"),
            secs(
                batches
                    .iter()
                    .map(|b| b.cpu.as_secs_f64() / THROUGHPUT_TURNS as f64)
                    .collect(),
            ),
        );
        let all: Vec<Duration> = batches.iter().flat_map(|b| b.accept.clone()).collect();
        let max = all.iter().copied().max().unwrap_or_default();
        out.put(
            format!("throughput, {name}: answering one async `delegate` (p50, all rounds)"),
            Cell::time(median(all)),
        );
        out.put(
            format!("throughput, {name}: answering one async `delegate` (max, all rounds)"),
            Cell::time(max),
        );
        let syncs: Vec<f64> = batches
            .iter()
            .filter_map(|b| b.syncs)
            .map(|n| n as f64 / (THROUGHPUT_TURNS + 1) as f64)
            .collect();
        if !syncs.is_empty() {
            let n = syncs.len();
            let (min, med) = min_med(syncs);
            out.put(
                format!("throughput, {name}: fsyncs per turn (strace)"),
                Cell {
                    value: med,
                    unit: Unit::Count,
                    note: Some(format!("min {min:.2}, n={n}")),
                },
            );
        }
    }
}

/// Median and 90th percentile of a small atomic file replacement (write 4 KB, fdatasync,
/// rename) in `dir`: what zwarm 0.2 does for every session save, and what other disk traffic on
/// the machine slows down most; and the median creation of a new empty file.
fn fsync_probe(dir: &Path) -> String {
    let tmp = dir.join(".fsync-probe.tmp");
    let dst = dir.join(".fsync-probe");
    let mut v = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        let mut f = std::fs::File::create(&tmp).expect("fsync probe");
        f.write_all(&[b'x'; 4096]).expect("fsync probe write");
        f.sync_data().expect("fdatasync");
        drop(f);
        std::fs::rename(&tmp, &dst).expect("fsync probe rename");
        v.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&dst);
    v.sort();
    // File creation: on an ext4 without a journal (this machine's root) a new inode is checked
    // against every recently deleted one of its block group, so after heavy churn a creation
    // can cost a millisecond instead of 20 µs, and a turn creates three or four. The probe's
    // files stay until the temp dir is removed (a deletion now would slow what follows).
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cdir = dir.join(format!(".create-probe-{n}"));
    let _ = std::fs::create_dir(&cdir);
    let mut c = Vec::new();
    for i in 0..40 {
        let t = Instant::now();
        drop(std::fs::File::create(cdir.join(i.to_string())).expect("create probe"));
        c.push(t.elapsed());
    }
    c.sort();
    format!(
        "p50 {:.2} ms, p90 {:.2} ms; new empty file p50 {:.3} ms",
        v[v.len() / 2].as_secs_f64() * 1e3,
        v[v.len() * 9 / 10].as_secs_f64() * 1e3,
        c[c.len() / 2].as_secs_f64() * 1e3
    )
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews every figure).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn print_table(
    bins: &[Bin],
    results: &[Results],
    total: Duration,
    plan: &Plan,
    quick: bool,
    load: (String, String),
    fsync: (String, String),
) {
    let this = results.last().expect("results");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nzwarm session-engine benchmark{} — medians; turn runs {}, list/check calls {}, starts {}/{} (1k/10k) after the first; total {:.0} s",
        if quick { " (QUICK)" } else { "" },
        plan.turn_runs,
        plan.calls,
        plan.starts_1k,
        plan.starts_10k,
        total.as_secs_f64()
    );
    for b in bins {
        let _ = writeln!(s, "- {}: `{}` ({})", b.label, b.path.display(), b.version);
    }
    let _ = writeln!(
        s,
        "- machine: {} CPUs; load average at start {}, at end {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.0,
        load.1
    );
    let _ = writeln!(
        s,
        "- disk, in the temp dir: small-file replace with fdatasync {} at start, {} at end",
        fsync.0, fsync.1
    );
    let _ = writeln!(s);
    if bins.len() == 2 {
        let _ = writeln!(
            s,
            "| measurement | baseline ({}) | this binary ({}) | ratio this/baseline |",
            bins[0].version, bins[1].version
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for (name, cell) in &this.0 {
            let base = results[0].get(name);
            let ratio = match base {
                Some(b) if b.value > 0.0 && cell.value > 0.0 => {
                    format!("{:.2}×", cell.value / b.value)
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {ratio} |",
                base.map(Cell::render).unwrap_or_else(|| "—".into()),
                cell.render()
            );
        }
    } else {
        let _ = writeln!(s, "| measurement | this binary ({}) |", bins[0].version);
        let _ = writeln!(s, "|---|---|");
        for (name, cell) in &this.0 {
            let _ = writeln!(s, "| {name} | {} |", cell.render());
        }
    }
    print!("{s}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = Instant::now();
    let load_at_start = loadavg();
    let quick = std::env::var("ZWARM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut plan = Plan::new(quick);
    if let Some(n) = std::env::var("ZWARM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        plan.throughput_rounds = n;
    }
    let this = std::env::var_os("ZWARM_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_zwarm")));
    let mut bins = Vec::new();
    if let Some(b) = std::env::var_os("ZWARM_BENCH_BASELINE_BIN") {
        bins.push(Bin::new("baseline", PathBuf::from(b)));
    }
    bins.push(Bin::new("this", this));

    let dir = tempfile::Builder::new()
        .prefix("zwarm-bench-")
        .tempdir()
        .expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
    let repo = root.join("repo");
    let plain = root.join("work");
    let fakes = root.join("fakes");
    for d in [&repo, &plain, &fakes] {
        std::fs::create_dir_all(d).expect("mkdir");
    }

    let fsync_at_start = fsync_probe(&root);
    eprintln!("setting up: a {REPO_FILES}-file git repo, fake executors, 0.2-format state dirs");
    make_repo(&repo, REPO_FILES);
    let small = small_transcript(&repo);
    let small_lines = small.lines().count();
    let small_fake = fake_codex(&fakes, "codex-turn", &small);
    let big = big_transcript(BIG_EVENTS);
    let big_lines = big.len();
    let big_fake = fake_codex(&fakes, "codex-2000", &big.concat());
    eprintln!(
        "  2,000-event transcript: {} lines, {} KB",
        big.len(),
        big.iter().map(String::len).sum::<usize>() / 1024
    );
    // ~50 bursts of ~40 lines, 60 ms apart: about 3 s per turn on its own.
    let paced_fake = paced_fake_codex(&fakes, "codex-2000-paced", &big, 50, "0.06");
    let mut states = Vec::new();
    for n in [1_000, 10_000] {
        let template = root.join(format!("template-{n}"));
        let ids = write_v02_state(&template, n, &plain);
        states.push((n, template, ids));
    }
    let ctx = Ctx {
        plan,
        root,
        repo,
        plain,
        small_fake,
        small_lines,
        big_fake,
        big_lines,
        paced_fake,
        states,
    };

    let mut results: Vec<Results> = bins.iter().map(|_| Results::default()).collect();
    let mut conditions = Vec::new();
    let only: Option<Vec<String>> = std::env::var("ZWARM_BENCH_ONLY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|x| x.trim().to_string()).collect());
    macro_rules! scenario {
        ($title:expr, $f:ident) => {
            let number = $title.split('.').next().unwrap_or_default().to_string();
            let skip = only.as_ref().is_some_and(|o| !o.contains(&number));
            for (b, r) in bins.iter().zip(results.iter_mut()).filter(|_| !skip) {
                eprintln!("{} [{}: {}]", $title, b.label, b.version);
                let (load, fsync) = (loadavg(), fsync_probe(&ctx.root));
                let t = Instant::now();
                $f(&ctx, b, r).await;
                let took = t.elapsed().as_secs_f64();
                eprintln!("  ({took:.1} s)");
                conditions.push(format!(
                    "{} [{}]: {took:.1} s; before it: load {load}, small-file fdatasync {fsync}",
                    $title, b.label
                ));
            }
        };
    }
    // Scenarios 1 and 5 interleave the binaries (see `turn_in_repo` and `throughput`).
    let title = "1. one turn in a 2,000-file git repo";
    if only.as_ref().is_none_or(|o| o.iter().any(|x| x == "1")) {
        let labels: Vec<&str> = bins.iter().map(|b| b.label).collect();
        eprintln!("{title} [{}]", labels.join(", "));
        let (load, fsync) = (loadavg(), fsync_probe(&ctx.root));
        let t = Instant::now();
        turn_in_repo(&ctx, &bins, &mut results).await;
        let took = t.elapsed().as_secs_f64();
        eprintln!("  ({took:.1} s)");
        conditions.push(format!(
            "{title} [{}]: {took:.1} s; before it: load {load}, small-file fdatasync {fsync}",
            labels.join(", ")
        ));
    }
    scenario!("2. 1k and 10k sessions", many_sessions);
    scenario!("3. a 2,000-event turn", big_turn);
    scenario!(
        "4. check_session while 4 × 2,000-event turns stream",
        check_while_streaming
    );
    // Scenario 5 interleaves the binaries within each round (see `throughput`).
    let title = "5. 100 async delegates vs 100 direct runs, 8 at a time";
    if only.as_ref().is_none_or(|o| o.iter().any(|x| x == "5")) {
        let labels: Vec<&str> = bins.iter().map(|b| b.label).collect();
        eprintln!("{title} [{}]", labels.join(", "));
        let (load, fsync) = (loadavg(), fsync_probe(&ctx.root));
        let t = Instant::now();
        throughput(&ctx, &bins, &mut results).await;
        let took = t.elapsed().as_secs_f64();
        eprintln!("  ({took:.1} s)");
        conditions.push(format!(
            "{title} [{}]: {took:.1} s; before it: load {load}, small-file fdatasync {fsync}",
            labels.join(", ")
        ));
    }

    let load = (load_at_start, loadavg());
    let fsync = (fsync_at_start, fsync_probe(&ctx.root));
    print_table(
        &bins,
        &results,
        started.elapsed(),
        &ctx.plan,
        quick,
        load,
        fsync,
    );
    println!(
        "\nPer scenario: time taken, and the machine just before it (other work on the machine, and slow disk syncs in particular, skew the figures):"
    );
    for c in &conditions {
        println!("- {c}");
    }
}
