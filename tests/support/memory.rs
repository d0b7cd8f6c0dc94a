//! The engine in-process on the in-memory runner ([`zwarm::runner::memory`]): no process, no
//! CLI. Scripted codex output, the engine's constructor, and time that moves only when a test
//! moves it ([`Frozen`]).
#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zwarm::config::Config;
use zwarm::model::Session;
use zwarm::runner::Launch;
use zwarm::runner::memory::{MemoryRunner, Script};
use zwarm::sessions::{DelegateRequest, Manager};

/// One codex turn's JSONL: its thread, the turn's start, an answer, its end.
pub fn codex_turn(thread: &str, message: &str) -> Vec<String> {
    vec![
        format!(r#"{{"type":"thread.started","thread_id":"{thread}"}}"#),
        r#"{"type":"turn.started"}"#.to_string(),
        format!(
            r#"{{"type":"item.completed","item":{{"id":"m","type":"agent_message","text":"{message}"}}}}"#
        ),
        r#"{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":0,"output_tokens":2,"reasoning_output_tokens":0}}"#.to_string(),
    ]
}

/// A codex command the executor ran (`item.completed` of a `command_execution`).
pub fn codex_command(n: u32) -> String {
    format!(
        r#"{{"type":"item.completed","item":{{"id":"c{n}","type":"command_execution","command":"echo cmd-{n}","aggregated_output":"cmd-{n}\n","exit_code":0,"status":"completed"}}}}"#
    )
}

/// A thread id for a turn's launch (stable per session: its label's session part).
pub fn thread_of(l: &Launch) -> String {
    let sid = l.label.split('.').next().unwrap_or_default();
    format!("0199a213-81c0-7800-8aa1-{}", &sid[sid.len() - 12..])
}

/// A turn that answers `done` at once.
pub fn quick(l: &Launch) -> Script {
    Script {
        stdout: codex_turn(&thread_of(l), "done"),
        ..Default::default()
    }
}

/// A turn that has started its thread and holds until it is stopped.
pub fn holding(l: &Launch) -> Script {
    Script {
        stdout: codex_turn(&thread_of(l), "never finished")[..2].to_vec(),
        hold: Some(CancellationToken::new()),
        ..Default::default()
    }
}

/// An engine's configuration on the temporary dir `d` (codex on the in-memory runner).
pub fn config(d: &Path) -> Config {
    let mut codex = Config::default().codex;
    // Only resolved, never run: the in-memory runner starts nothing.
    codex.binary = Some("/bin/sh".into());
    Config {
        state_dir: d.join("state"),
        allowed_roots: vec![d.to_path_buf()],
        default_adapter: "codex".into(),
        codex,
        ..Default::default()
    }
}

/// An async delegate of `t`.
pub fn task(t: &str) -> DelegateRequest {
    DelegateRequest {
        task: t.into(),
        adapter: None,
        mode: Some(zwarm::model::Mode::Async),
        model: None,
        working_dir: None,
        isolation: None,
        base: None,
    }
}

/// The engine on `dir` (its state in `dir/state`), [`config`] changed by `tune`, running its
/// turns on `runner`. Servers started on the same dir share the state, as `zwarm serve`s do.
pub async fn start_on(
    dir: &Path,
    tune: impl FnOnce(&mut Config),
    runner: &Arc<MemoryRunner>,
) -> Manager {
    let mut cfg = config(dir);
    tune(&mut cfg);
    Manager::start_with(cfg, dir.to_path_buf(), Arc::new(runner.clone()))
        .await
        .expect("engine starts")
}

/// An engine of its own: a temporary dir, a runner of `script`, the engine on them.
pub struct Engine {
    pub m: Manager,
    pub runner: Arc<MemoryRunner>,
    pub dir: tempfile::TempDir,
}

pub async fn engine(
    tune: impl FnOnce(&mut Config),
    script: impl Fn(&Launch) -> Script + Send + Sync + 'static,
) -> Engine {
    let dir = tempfile::tempdir().expect("tempdir");
    let runner = MemoryRunner::new(script);
    let m = start_on(dir.path(), tune, &runner).await;
    Engine { m, runner, dir }
}

/// Longest a test waits for the engine (a hang fails the test instead of the run).
pub const PATIENCE: Duration = Duration::from_secs(60);

impl Engine {
    /// The session once its turn has settled.
    pub async fn settled(&self, id: &str) -> Session {
        settled(&self.m, id).await
    }
}

/// The session once its turn has settled (not running, not queued).
pub async fn settled(m: &Manager, id: &str) -> Session {
    within(async {
        loop {
            // A wait that ends at its bound (only when time is moved past it) is waited again.
            let s = m
                .wait(id, Duration::from_secs(3600), &CancellationToken::new())
                .await
                .expect("wait");
            if !matches!(s.status.as_str(), "running" | "queued") {
                return s;
            }
        }
    })
    .await
}

/// `f`, failing the test when it takes longer than [`PATIENCE`] of real time (whatever the
/// engine's clock says: it may be [`Frozen`]).
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if stop_rx.recv_timeout(PATIENCE).is_err() {
            let _ = tx.send(());
        }
    });
    tokio::select! {
        v = f => {
            let _ = stop_tx.send(());
            v
        }
        _ = rx => panic!("the engine did not get there within {PATIENCE:?}"),
    }
}

/// Time that moves only when the test moves it: the runtime's clock is paused and does not
/// advance on its own while the runtime waits (for the store's writer thread, say), only by
/// [`Frozen::advance`]. Needs the current-thread runtime (`#[tokio::test]`).
///
/// Paused time alone advances to the next timer whenever the runtime is idle, which it is
/// while a commit is on the store's writer thread: a turn's timeout or a wait's bound could
/// then pass in the middle of a step. A blocking task held open keeps the clock from
/// advancing on its own (tokio does not advance it while a blocking task runs).
pub struct Frozen(Option<std::sync::mpsc::Sender<()>>);

impl Frozen {
    pub fn new() -> Frozen {
        tokio::time::pause();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        });
        Frozen(Some(tx))
    }

    /// Move the clock on by `d`: every timer due by then fires.
    pub async fn advance(&self, d: Duration) {
        tokio::time::advance(d).await;
        // Let what the timers woke run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
}

impl Default for Frozen {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // The blocking task ends, and the runtime can shut down.
        self.0.take();
    }
}
