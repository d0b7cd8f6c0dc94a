//! What trace export costs a turn: sync `delegate` round trips through `zwarm serve` with a
//! fake executor (it reads the prompt, then replays a captured codex transcript: a command, a
//! file change, an answer), with export off, on (to an OTLP/HTTP receiver that answers), and
//! on towards a collector that never answers. Three servers, called in turn (each round starts
//! with another one), so that a change in the machine's load hits all three alike. Medians and
//! ratios against "off".
//!
//! `cargo bench --bench telemetry` (no CLI or network needed). `ZWARM_BENCH_RUNS` sets the
//! number of calls per server (default 100).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

#[path = "../tests/support/otlp.rs"]
mod otlp;
#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::harness::{Env, Zwarm};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time the process has used so far, all its threads (the exporter's included).
fn cpu(pid: u32) -> Duration {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A hermetic environment running the fake executor as codex.
fn env(fake: &Path) -> (Env, String) {
    let dir = tempfile::Builder::new()
        .prefix("zwarm-bench-otel-")
        .tempdir()
        .expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let work = std::fs::canonicalize(&work).expect("canonicalize");
    let p = |s: &str| dir.path().join(s).display().to_string();
    let vars = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        ),
        ("HOME".to_string(), p("home")),
        ("XDG_CONFIG_HOME".to_string(), p("xdg-config")),
        ("XDG_STATE_HOME".to_string(), p("xdg-state")),
        ("ZWARM_LOG".to_string(), "warn".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), String::new()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_string(),
            String::new(),
        ),
    ];
    let state = dir.path().join("state");
    (
        Env {
            dir,
            work,
            state,
            vars,
        },
        format!("codex.binary={}", fake.display()),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("ZWARM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .max(3);
    let scratch = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/codex/b_exec_command_apply_patch.jsonl");
    let fake = scratch.path().join("fake-codex");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncat >/dev/null\nexec cat '{}'\n",
            fixture.display()
        ),
    )
    .expect("write the fake");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let answering = otlp::Receiver::start();
    let hanging = otlp::Receiver::silent();
    let (off_env, bin) = env(&fake);
    let (mut on_env, _) = env(&fake);
    let (mut hang_env, _) = env(&fake);
    // Export every 200 ms (default 5 s), so that the runs pay for encoding and sending too.
    on_env.set("OTEL_BSP_SCHEDULE_DELAY", "200");
    hang_env.set("OTEL_BSP_SCHEDULE_DELAY", "200");
    let on_endpoint = format!("telemetry.endpoint={}", answering.endpoint());
    let hang_endpoint = format!("telemetry.endpoint={}", hanging.endpoint());
    let servers = [
        ("off", Zwarm::start(&off_env, &["--set", &bin]).await),
        (
            "on",
            Zwarm::start(&on_env, &["--set", &bin, "--set", &on_endpoint]).await,
        ),
        (
            "on, collector hangs",
            Zwarm::start(&hang_env, &["--set", &bin, "--set", &hang_endpoint]).await,
        ),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); servers.len()];
    // Warm-up: one call each (first spawn, state dir creation).
    for (_, z) in &servers {
        z.ok("delegate", json!({"task": "warm up"})).await;
    }
    let cpu_before: Vec<Duration> = servers.iter().map(|(_, z)| cpu(z.pid)).collect();
    for i in 0..runs {
        // A different server goes first in each round: no server always follows the same one.
        for j in 0..servers.len() {
            let k = (i + j) % servers.len();
            let z = &servers[k].1;
            let t = Instant::now();
            let r = z
                .ok("delegate", json!({"task": format!("replay {i}")}))
                .await;
            times[k].push(t.elapsed());
            assert_eq!(r["status"], "idle", "{r}");
        }
    }
    let cpu_per_turn: Vec<Duration> = servers
        .iter()
        .zip(&cpu_before)
        .map(|((_, z), b)| cpu(z.pid).saturating_sub(*b) / runs as u32)
        .collect();
    let mut exits = Vec::new();
    for (name, z) in &servers {
        let took = z
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
            .await;
        exits.push((*name, took));
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let base = medians[0];
    println!(
        "trace export cost per turn ({runs} sync delegates per server, fake executor, medians)"
    );
    println!("  round trip (wall clock):");
    for ((name, _), m) in servers.iter().zip(&medians) {
        println!(
            "    export {name:<20} {:>7.2} ms   ratio {:.3}x   {:+.2} ms/turn",
            ms(*m),
            m.as_secs_f64() / base.as_secs_f64(),
            ms(*m) - ms(base)
        );
    }
    println!("  zwarm's CPU time per turn (all threads, the exporter's included):");
    let cpu_base = cpu_per_turn[0];
    for ((name, _), c) in servers.iter().zip(&cpu_per_turn) {
        println!(
            "    export {name:<20} {:>7.3} ms   ratio {:.3}x   {:+.3} ms/turn",
            ms(*c),
            c.as_secs_f64() / cpu_base.as_secs_f64(),
            ms(*c) - ms(cpu_base)
        );
    }
    println!(
        "  spans received by the answering collector: {} in {} requests",
        answering.spans().len(),
        answering.requests().len()
    );
    for (name, took) in exits {
        println!(
            "  shutdown (SIGTERM to exit), export {name:<20} {:>7.1} ms",
            ms(took)
        );
    }
}
