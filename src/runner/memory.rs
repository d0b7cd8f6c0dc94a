//! The in-memory runner: no process, scripted output. The engine runs on it in tests exactly
//! as it runs on the local runner: output streams, an end, a stop, files read back, and runs a
//! dead server left behind to re-attach to ([`MemoryRunner::leave_running`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Finished, Launch, Runner, RunnerError, RunningTurn, TurnProcess};

/// What one scripted run does.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Lines printed on stdout (a newline is added to each), in order.
    pub stdout: Vec<String>,
    /// Bytes printed on stderr.
    pub stderr: String,
    /// Exit code once the output is done.
    pub exit_code: i32,
    /// When set, stdout stays open after its lines until this is cancelled (or the run is
    /// stopped): a turn that is still working.
    pub hold: Option<CancellationToken>,
    /// Contents of the launch's files to read back, in the order of [`Launch::read_back`].
    pub files: Vec<String>,
    /// Fail the start with this message.
    pub fail_to_start: Option<String>,
    /// The runner's own reason for the end ([`Finished::cause`]), e.g. an out-of-memory kill.
    pub cause: Option<String>,
    /// The run ignores the polite stop: a stop ends it only once its grace period is over
    /// (or its deadline has come), as a process that needs the forced kill.
    pub ignores_interrupt: bool,
}

type ScriptFn = dyn Fn(&Launch) -> Script + Send + Sync;

/// Runs scripted turns in memory.
pub struct MemoryRunner {
    script: Box<ScriptFn>,
    launches: Mutex<Vec<Launch>>,
    launched: tokio::sync::watch::Sender<usize>,
    cleaned: Mutex<Vec<String>>,
    stops: Mutex<Vec<String>>,
    /// Runs a dead server left running, by label, for [`Runner::adopt`].
    left: Mutex<HashMap<String, Script>>,
    adopted: Mutex<Vec<(String, u64)>>,
}

impl MemoryRunner {
    /// A runner whose every run is `script(launch)`.
    pub fn new(script: impl Fn(&Launch) -> Script + Send + Sync + 'static) -> Arc<MemoryRunner> {
        Arc::new(MemoryRunner {
            script: Box::new(script),
            launches: Mutex::new(Vec::new()),
            launched: tokio::sync::watch::Sender::new(0),
            cleaned: Mutex::new(Vec::new()),
            stops: Mutex::new(Vec::new()),
            left: Mutex::new(HashMap::new()),
            adopted: Mutex::new(Vec::new()),
        })
    }

    /// Wait until at least `n` runs were started (or failed to start).
    pub async fn wait_launches(&self, n: usize) {
        let mut rx = self.launched.subscribe();
        let _ = rx.wait_for(|l| *l >= n).await;
    }

    /// A run labelled `label` that a dead server left running: [`Runner::adopt`] re-attaches
    /// to it (once), its stdout from the offset asked for.
    pub fn leave_running(&self, label: &str, script: Script) {
        self.left.lock().insert(label.to_string(), script);
    }

    /// Runs re-attached to, with the stdout offset each was asked for.
    pub fn adopted(&self) -> Vec<(String, u64)> {
        self.adopted.lock().clone()
    }

    /// Every launch so far, in order.
    pub fn launches(&self) -> Vec<Launch> {
        self.launches.lock().clone()
    }

    /// Labels passed to [`Runner::clean_up`].
    pub fn cleaned(&self) -> Vec<String> {
        self.cleaned.lock().clone()
    }

    /// Labels of runs that were stopped.
    pub fn stopped(&self) -> Vec<String> {
        self.stops.lock().clone()
    }
}

#[async_trait::async_trait]
impl Runner for Arc<MemoryRunner> {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn start(&self, launch: Launch) -> Result<RunningTurn, RunnerError> {
        let script = (self.script)(&launch);
        self.launches.lock().push(launch.clone());
        self.launched.send_modify(|n| *n += 1);
        if let Some(msg) = script.fail_to_start {
            return Err(RunnerError::Start(std::io::Error::other(msg)));
        }
        Ok(self.run(&launch.label, &launch.read_back, script, 0))
    }

    fn reattaches(&self) -> bool {
        true
    }

    async fn adopt(&self, label: &str, read_back: &[PathBuf], logged: u64) -> Option<RunningTurn> {
        let script = self.left.lock().remove(label)?;
        self.adopted.lock().push((label.to_string(), logged));
        Some(self.run(label, read_back, script, logged))
    }

    async fn clean_up(&self, label: &str) -> usize {
        self.cleaned.lock().push(label.to_string());
        0
    }
}

impl MemoryRunner {
    /// A started run of `script`, its stdout without its first `skip` bytes.
    fn run(
        self: &Arc<Self>,
        label: &str,
        read_back: &[PathBuf],
        script: Script,
        skip: u64,
    ) -> RunningTurn {
        let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
        let exited = CancellationToken::new();
        let stopped = CancellationToken::new();
        let (e2, s2) = (exited.clone(), stopped.clone());
        let lines = script.stdout.clone();
        let hold = script.hold.clone();
        let mut skip = usize::try_from(skip).unwrap_or(usize::MAX);
        tokio::spawn(async move {
            for l in lines {
                let mut b = l.into_bytes();
                b.push(b'\n');
                let cut = skip.min(b.len());
                skip -= cut;
                let b = &b[cut..];
                if b.is_empty() {
                    continue;
                }
                tokio::select! {
                    r = out_w.write_all(b) => if r.is_err() { break },
                    _ = s2.cancelled() => break,
                }
            }
            if let Some(h) = hold {
                tokio::select! {
                    _ = h.cancelled() => {}
                    _ = s2.cancelled() => {}
                }
            }
            drop(out_w);
            e2.cancel();
        });
        let files = read_back
            .iter()
            .cloned()
            .zip(
                script
                    .files
                    .iter()
                    .cloned()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            )
            .collect();
        RunningTurn {
            stdout: Some(Box::pin(out_r)),
            stderr: Some(Box::pin(std::io::Cursor::new(script.stderr.into_bytes()))),
            control: Box::new(MemoryTurn {
                label: label.to_string(),
                exit_code: script.exit_code,
                ignores_interrupt: script.ignores_interrupt,
                exited,
                stopped,
                files,
                cause: script.cause,
                runner: self.clone(),
            }),
        }
    }
}

struct MemoryTurn {
    label: String,
    exit_code: i32,
    ignores_interrupt: bool,
    exited: CancellationToken,
    stopped: CancellationToken,
    files: Vec<(PathBuf, Option<String>)>,
    cause: Option<String>,
    runner: Arc<MemoryRunner>,
}

#[async_trait::async_trait]
impl TurnProcess for MemoryTurn {
    async fn wait(&mut self) {
        self.exited.cancelled().await;
    }

    async fn stop(&mut self, grace: Duration, deadline: Option<Instant>) {
        if !self.exited.is_cancelled() {
            self.runner.stops.lock().push(self.label.clone());
        }
        if self.ignores_interrupt {
            // The polite stop is ignored: the run ends when the forced one comes.
            let by = deadline.map_or(Instant::now() + grace, |d| d.min(Instant::now() + grace));
            tokio::select! {
                _ = tokio::time::sleep_until(by) => {}
                _ = self.exited.cancelled() => {}
            }
        }
        self.stopped.cancel();
        self.exited.cancelled().await;
    }

    async fn finish(self: Box<Self>) -> Finished {
        use std::os::unix::process::ExitStatusExt;
        let raw = if self.stopped.is_cancelled() {
            libc::SIGINT
        } else {
            (self.exit_code & 0xff) << 8
        };
        Finished {
            exit: Some(std::process::ExitStatus::from_raw(raw)),
            files: self.files,
            cause: self.cause,
        }
    }
}
