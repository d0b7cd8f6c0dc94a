//! zwarm's overhead per turn, as ratios against a baseline measured in the same run.
//!
//! `cargo bench --bench overhead` (needs the pinned CLIs: `bash .ci/install-clis`).
//!
//! 1. real codex: `codex exec --json` run directly against the scripted model server (baseline)
//!    vs the same turn as a sync `delegate` through `zwarm serve` (spawn, parse, state writes,
//!    MCP round trip);
//! 2. fake executor (a shell script that prints a captured transcript): isolates zwarm's own
//!    cost from codex's start-up;
//! 3. zwarm's peak RSS after the runs vs the codex process's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::harness::{Env, Zwarm, cli_dir, keyed_script};
use support::mock_openai::OpenAiMock;

const RUNS: usize = 15;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The binary zwarm itself runs: the native codex behind npm's Node wrapper.
fn native_codex() -> std::path::PathBuf {
    let wrapper = cli_dir("codex").join("codex");
    zwarm::executor::native_codex_for(&wrapper).unwrap_or(wrapper)
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    let codex = native_codex();

    // 1a. Baseline: codex directly.
    let mut direct = Vec::new();
    let mut codex_rss = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut cmd = std::process::Command::new(&codex);
        cmd.args([
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-s",
            "workspace-write",
            "--",
            "say hello",
        ])
        .current_dir(&env.work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        for (k, v) in &env.vars {
            cmd.env(k, v);
        }
        let status = cmd.status().unwrap();
        assert!(status.success());
        direct.push(t.elapsed());
    }
    // codex's own peak RSS, measured once with /usr/bin/time when available.
    if let Ok(o) = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(&codex)
        .args(["exec", "--json", "--skip-git-repo-check", "--", "say hello"])
        .current_dir(&env.work)
        .envs(env.vars.iter().cloned())
        .stdin(std::process::Stdio::null())
        .output()
    {
        let err = String::from_utf8_lossy(&o.stderr);
        codex_rss = err
            .lines()
            .find(|l| l.contains("Maximum resident set size"))
            .and_then(|l| l.rsplit(':').next()?.trim().parse().ok())
            .unwrap_or(0);
    }

    // 1b. Through zwarm.
    let z = Zwarm::start(&env, &[]).await;
    let mut via = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = z.ok("delegate", json!({"task": "say hello"})).await;
        assert_eq!(r["status"], "idle");
        via.push(t.elapsed());
    }
    let zwarm_rss = peak_rss_kb(z.pid);
    drop(z);

    // 2. Fake executor: print a captured transcript, nothing else.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/codex/b_exec_command_apply_patch.jsonl");
    let fake = env.dir.path().join("fake-codex");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nexec cat '{}'\n", fixture.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .unwrap();
    let mut fake_direct = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let o = std::process::Command::new(&fake)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success());
        fake_direct.push(t.elapsed());
    }
    let mut fenv = Env::new(Some(&mock), None);
    fenv.set("ZWARM_CODEX_BIN", fake.to_str().unwrap());
    let z = Zwarm::start(&fenv, &[]).await;
    let mut fake_via = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = z.ok("delegate", json!({"task": "replay"})).await;
        assert_eq!(r["status"], "idle");
        fake_via.push(t.elapsed());
    }
    drop(z);

    let (d, v, fd, fv) = (
        median(direct),
        median(via),
        median(fake_direct),
        median(fake_via),
    );
    println!("zwarm overhead benchmark ({RUNS} runs each, medians)");
    println!(
        "  codex exec direct (baseline)        {:>8.1} ms",
        d.as_secs_f64() * 1e3
    );
    println!(
        "  same turn via zwarm delegate        {:>8.1} ms   ratio {:.2}x",
        v.as_secs_f64() * 1e3,
        v.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "  fake executor direct (baseline)     {:>8.1} ms",
        fd.as_secs_f64() * 1e3
    );
    println!(
        "  fake executor via zwarm delegate    {:>8.1} ms   ratio {:.2}x   zwarm's own cost {:.1} ms/turn",
        fv.as_secs_f64() * 1e3,
        fv.as_secs_f64() / fd.as_secs_f64(),
        (fv - fd).as_secs_f64() * 1e3
    );
    if codex_rss > 0 {
        println!(
            "  peak RSS: zwarm server {} MB vs one codex turn {} MB   ratio {:.2}",
            zwarm_rss / 1024,
            codex_rss / 1024,
            zwarm_rss as f64 / codex_rss as f64
        );
    } else {
        println!("  peak RSS: zwarm server {} MB", zwarm_rss / 1024);
    }
}
