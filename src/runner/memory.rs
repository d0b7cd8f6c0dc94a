//! The in-memory runner: no process, scripted output. The engine runs on it in tests exactly
//! as it runs on the local runner: output streams, an end, a stop, files read back.

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
}

type ScriptFn = dyn Fn(&Launch) -> Script + Send + Sync;

/// Runs scripted turns in memory.
pub struct MemoryRunner {
    script: Box<ScriptFn>,
    launches: Mutex<Vec<Launch>>,
    cleaned: Mutex<Vec<String>>,
    stops: Mutex<Vec<String>>,
}

impl MemoryRunner {
    /// A runner whose every run is `script(launch)`.
    pub fn new(script: impl Fn(&Launch) -> Script + Send + Sync + 'static) -> Arc<MemoryRunner> {
        Arc::new(MemoryRunner {
            script: Box::new(script),
            launches: Mutex::new(Vec::new()),
            cleaned: Mutex::new(Vec::new()),
            stops: Mutex::new(Vec::new()),
        })
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
        if let Some(msg) = script.fail_to_start {
            return Err(RunnerError::Start(std::io::Error::other(msg)));
        }
        let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
        let exited = CancellationToken::new();
        let stopped = CancellationToken::new();
        let (e2, s2) = (exited.clone(), stopped.clone());
        let lines = script.stdout.clone();
        let hold = script.hold.clone();
        tokio::spawn(async move {
            for l in lines {
                let mut b = l.into_bytes();
                b.push(b'\n');
                tokio::select! {
                    r = out_w.write_all(&b) => if r.is_err() { break },
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
        let files = launch
            .read_back
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
        Ok(RunningTurn {
            stdout: Some(Box::pin(out_r)),
            stderr: Some(Box::pin(std::io::Cursor::new(script.stderr.into_bytes()))),
            control: Box::new(MemoryTurn {
                label: launch.label,
                exit_code: script.exit_code,
                exited,
                stopped,
                files,
                cause: script.cause,
                runner: self.clone(),
            }),
        })
    }

    async fn clean_up(&self, label: &str) -> usize {
        self.cleaned.lock().push(label.to_string());
        0
    }
}

struct MemoryTurn {
    label: String,
    exit_code: i32,
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

    async fn stop(&mut self, _grace: Duration, _deadline: Option<Instant>) {
        if !self.exited.is_cancelled() {
            self.runner.stops.lock().push(self.label.clone());
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
