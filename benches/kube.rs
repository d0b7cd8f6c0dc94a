//! What 200 concurrent turns on the Kubernetes runner cost zwarm, against the simulated
//! cluster of tests/support/mock_kube.rs.
//!
//! `cargo bench --bench kube` (set `ZWARM_KUBE_BENCH_TURNS` for another count).
//!
//! The cluster (API server and node) runs in a child process (this binary again), so what is
//! measured here is the runner alone: one runtime with two workers, as `zwarm serve` has. Each
//! turn is a Job whose pod checks out its session's branch from a bare remote, prints a line,
//! waits on a barrier (a shared `flock` this process holds until every turn's pod runs),
//! prints a second line and pushes its branch back; zwarm follows its log, fetches its branch
//! and deletes its Job. Reported: zwarm's CPU time over the whole run, its RSS with every turn
//! running and its peak, and the API requests per turn besides watches and log streams.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failed run

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use zwarm::kube::KubeRunner;
use zwarm::kube::api::Endpoint;
use zwarm::runner::config::KubeConfig;
use zwarm::runner::{Launch, Runner};

const NS: &str = "bench";
const IMAGE: &str = "zwarm-exec:bench";

fn main() {
    if std::env::var_os("ZWARM_KUBE_BENCH_CLUSTER").is_some() {
        return cluster();
    }
    let turns: usize = std::env::var("ZWARM_KUBE_BENCH_TURNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::Builder::new()
        .prefix("zwarm-kube-bench-")
        .tempdir()
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("ZWARM_KUBE_BENCH_CLUSTER", "1")
        .env("ZWARM_KUBE_BENCH_ROOT", dir.path().join("node"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut from_child = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    from_child.read_line(&mut url).unwrap();
    let url = url.trim().to_string();

    let remote = dir.path().join("remote.git");
    git(
        dir.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    let repos: Vec<PathBuf> = (0..turns)
        .map(|n| {
            let r = dir.path().join(format!("s{n}"));
            std::fs::create_dir_all(&r).unwrap();
            git(&r, &["init", "-q", "-b", &format!("zwarm/s{n}")]);
            std::fs::write(r.join("README"), "bench\n").unwrap();
            git(&r, &["add", "-A"]);
            git(&r, &["commit", "-q", "-m", "base"]);
            r
        })
        .collect();
    let barrier = dir.path().join("barrier");
    let lock = std::fs::File::create(&barrier).unwrap();
    // SAFETY: an exclusive lock on a file this process owns; released by LOCK_UN below.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cpu0 = cpu_seconds();
    let git0 = git_cpu_seconds();
    let t0 = Instant::now();
    let (rss_running, wall_running) = rt.block_on(async {
        let cfg = KubeConfig {
            namespace: NS.into(),
            image: IMAGE.into(),
            git_remote: Some(remote.display().to_string()),
            ..Default::default()
        };
        let ep = Endpoint {
            server: url.clone(),
            token: None,
            namespace: None,
        };
        let runner = KubeRunner::connect(cfg, ep).await.unwrap();
        let script = format!(
            "echo '{{\"type\":\"ready\"}}'; flock -s {} true; echo '{{\"type\":\"done\"}}' > done.json",
            barrier.display()
        );
        let mut ready = Vec::new();
        let mut ends = Vec::new();
        for (n, repo) in repos.iter().enumerate() {
            let launch = Launch {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.clone().into()],
                cwd: repo.clone(),
                label: format!("s{n}.1"),
                ..Default::default()
            };
            let r = runner.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            ends.push(tokio::spawn(async move {
                let mut t = r.start(launch).await.unwrap();
                let mut out = BufReader::new(t.stdout.take().unwrap());
                let mut line = String::new();
                out.read_line(&mut line).await.unwrap();
                assert!(line.contains("ready"), "{line:?}");
                let _ = tx.send(());
                let mut rest = Vec::new();
                out.read_to_end(&mut rest).await.unwrap();
                let mut err = Vec::new();
                t.stderr.take().unwrap().read_to_end(&mut err).await.unwrap();
                t.control.wait().await;
                let f = t.control.finish().await;
                assert_eq!(
                    f.exit.and_then(|e| e.code()),
                    Some(0),
                    "{:?} {}",
                    f.cause,
                    String::from_utf8_lossy(&err)
                );
            }));
        }
        for r in ready {
            r.await.unwrap();
        }
        let running = (rss_kib(), t0.elapsed());
        // SAFETY: releasing the lock taken above.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
        for e in ends {
            e.await.unwrap();
        }
        running
    });
    let wall = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let git_cpu = git_cpu_seconds() - git0;
    for r in &repos {
        assert!(
            r.join("done.json").exists(),
            "turn in {} came back",
            r.display()
        );
    }

    let mut to_child = child.stdin.take().unwrap();
    writeln!(to_child, "stats").unwrap();
    let mut stats = String::new();
    from_child.read_line(&mut stats).unwrap();
    drop(to_child);
    let _ = child.wait();
    let s: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let plain = s["plain"].as_u64().unwrap() as f64;
    println!(
        "{}",
        json!({
            "turns": turns,
            "wall_s_all_running": wall_running.as_secs_f64(),
            "wall_s_total": wall.as_secs_f64(),
            "zwarm_cpu_s": cpu,
            "zwarm_cpu_ms_per_turn": cpu * 1000.0 / turns as f64,
            "zwarm_git_cpu_s": git_cpu,
            "zwarm_rss_mib_all_running": rss_running as f64 / 1024.0,
            "zwarm_rss_mib_peak": peak_rss_kib() as f64 / 1024.0,
            "api_requests_total": s["total"],
            "api_watches": s["watches"],
            "api_log_streams": s["logs"],
            "api_requests_per_turn_besides_watch_and_logs": plain / turns as f64,
        })
    );
}

/// The child: the simulated cluster, until stdin closes.
fn cluster() {
    use support::mock_kube::{MockKube, Node, NodeOpts};
    let kube = MockKube::start();
    let _node = Node::start(
        &kube,
        NodeOpts {
            labels: Default::default(),
            images: vec![IMAGE.into()],
            path: std::env::var("PATH").unwrap_or_default(),
            root: std::env::var_os("ZWARM_KUBE_BENCH_ROOT").unwrap().into(),
            docker: None,
        },
    );
    println!("{}", kube.url());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "stats" {
            let r = kube.requests();
            let watches = r.iter().filter(|(_, t)| t.contains("watch=true")).count();
            let logs = r.iter().filter(|(_, t)| t.contains("/log")).count();
            println!(
                "{}",
                json!({"total": r.len(), "watches": watches, "logs": logs, "plain": r.len() - watches - logs})
            );
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@b")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@b")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn cpu_seconds() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

/// CPU time of the reaped children: zwarm's own git commands (push, fetch, read-tree).
fn git_cpu_seconds() -> f64 {
    rusage(libc::RUSAGE_CHILDREN)
}

fn rusage(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}
