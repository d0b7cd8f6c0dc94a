//! One turn's container: its demultiplexed output streams, its end, its stop, and what is left
//! of it (exit status, out-of-memory kill, files read back) once it is removed.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::query_parameters::{KillContainerOptions, WaitContainerOptions};
use futures::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Output;

/// How long [`ContainerTurn::stop`] may take without a deadline, after the grace period.
const STOP_BOUND: Duration = Duration::from_secs(8);
/// Buffer between the daemon's stream and the engine's reader, per stream.
const PIPE: usize = 256 * 1024;

/// What is left of a container turn once it has ended and its container is gone.
#[derive(Debug, Default)]
pub struct ContainerFinished {
    /// The container's exit status (`128 + n` is reported as signal `n`); `None` if unknown.
    pub exit: Option<ExitStatus>,
    /// The kernel's OOM killer killed a process of the turn (its memory limit was reached).
    pub oom_killed: bool,
    /// Each read-back file under the name the executor was told, with its contents.
    pub files: Vec<(PathBuf, Option<String>)>,
}

pub struct ContainerTurn {
    docker: Docker,
    id: String,
    stdout: Option<Output>,
    stderr: Option<Output>,
    /// Ends with the container's stream; then its state once it stopped (see [`pump`]).
    pump: Option<JoinHandle<Option<Stopped>>>,
    read_back: Vec<(PathBuf, PathBuf)>,
    exited: bool,
    removed: bool,
}

impl ContainerTurn {
    pub(crate) fn new(
        docker: Docker,
        id: String,
        attached: AttachContainerResults,
        stdin: Option<Vec<u8>>,
        read_back: Vec<(PathBuf, PathBuf)>,
        memory: Option<String>,
    ) -> ContainerTurn {
        let (out_w, out_r) = tokio::io::duplex(PIPE);
        let (err_w, err_r) = tokio::io::duplex(PIPE);
        let AttachContainerResults { output, mut input } = attached;
        if let Some(bytes) = stdin {
            tokio::spawn(async move {
                let _ = input.write_all(&bytes).await;
                let _ = input.shutdown().await;
            });
        } else {
            drop(input);
        }
        let pump = tokio::spawn(pump(
            output,
            out_w,
            err_w,
            docker.clone(),
            id.clone(),
            memory,
        ));
        ContainerTurn {
            docker,
            id,
            stdout: Some(Box::pin(out_r)),
            stderr: Some(Box::pin(err_r)),
            pump: Some(pump),
            read_back,
            exited: false,
            removed: false,
        }
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn take_stdout(&mut self) -> Option<Output> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<Output> {
        self.stderr.take()
    }

    /// Resolves once the container has stopped. Cancel-safe.
    pub async fn wait(&mut self) {
        if self.exited {
            return;
        }
        wait_exit(&self.docker, &self.id).await;
        self.exited = true;
    }

    /// SIGINT (both CLIs then stop their tool processes), `grace`, then SIGKILL to the whole
    /// container; returns once it has stopped, or at `deadline`.
    pub async fn stop(&mut self, grace: Duration, deadline: Option<Instant>) {
        if self.exited {
            return;
        }
        let by = deadline.unwrap_or_else(|| Instant::now() + grace + STOP_BOUND);
        let _ = tokio::time::timeout_at(by, kill(&self.docker, &self.id, "SIGINT")).await;
        let soft = (Instant::now() + grace).min(by);
        if tokio::time::timeout_at(soft, self.wait()).await.is_err() {
            let _ = tokio::time::timeout_at(by, kill(&self.docker, &self.id, "SIGKILL")).await;
            let _ = tokio::time::timeout_at(by, self.wait()).await;
        }
        // `exited` is set by `wait` only when the container really stopped: `finish` removes
        // one that did not by force, without waiting for its stream.
    }

    /// After the end: the exit status and OOM flag, the files read back; the container is
    /// removed (killed first if it still runs).
    pub async fn finish(mut self) -> ContainerFinished {
        // A container that stopped: the pump has (or soon has) its state, after reporting an
        // OOM kill on stderr, which needs the container still there. A stuck connection is
        // not waited on; then the daemon is asked.
        let mut stopped = None;
        if self.exited
            && let Some(p) = self.pump.take()
        {
            stopped = tokio::time::timeout(Duration::from_secs(2), p)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
        }
        let (exit, oom_killed) = match stopped {
            Some(s) => (s.exit_code.map(exit_status), s.oom_killed),
            None => {
                let state = self
                    .docker
                    .inspect_container(&self.id, None)
                    .await
                    .ok()
                    .and_then(|i| i.state);
                let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
                if !running && let Some(p) = self.pump.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
                }
                match &state {
                    Some(s) if !running => {
                        (s.exit_code.map(exit_status), s.oom_killed.unwrap_or(false))
                    }
                    Some(s) => (None, s.oom_killed.unwrap_or(false)),
                    None => (None, false),
                }
            }
        };
        super::remove_container(&self.docker, &self.id).await;
        self.removed = true;
        if let Some(p) = self.pump.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        let pairs = std::mem::take(&mut self.read_back);
        let files = tokio::task::spawn_blocking(move || {
            pairs
                .into_iter()
                .map(|(want, inside)| {
                    (
                        want,
                        super::state::read_back(&inside, crate::runner::READ_BACK_MAX as u64),
                    )
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        ContainerFinished {
            exit,
            oom_killed,
            files,
        }
    }
}

impl Drop for ContainerTurn {
    // A turn dropped without `finish` (its supervisor panicked or was cancelled) leaves no
    // container behind.
    fn drop(&mut self) {
        if let Some(p) = self.pump.take() {
            p.abort();
        }
        if self.removed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (docker, id) = (self.docker.clone(), self.id.clone());
            rt.spawn(async move { super::remove_container(&docker, &id).await });
        }
    }
}

async fn kill(docker: &Docker, id: &str, signal: &str) {
    let _ = docker
        .kill_container(
            id,
            Some(KillContainerOptions {
                signal: signal.into(),
            }),
        )
        .await;
}

/// Wait for the container to stop: the daemon answers when it is not running (at once if it
/// has already stopped, or is gone).
pub(crate) async fn wait_exit(docker: &Docker, id: &str) {
    // Waits are long: not bounded by the client's request timeout.
    let docker = docker
        .clone()
        .with_timeout(Duration::from_secs(365 * 24 * 3600));
    let mut s = docker.wait_container(
        id,
        Some(WaitContainerOptions {
            condition: "not-running".into(),
        }),
    );
    // Ok, or an error carrying a non-zero exit code, or the container is gone: all mean ended.
    let _ = s.next().await;
}

/// A stopped container's state, as the daemon reported it.
#[derive(Debug, Clone, Copy)]
struct Stopped {
    exit_code: Option<i64>,
    oom_killed: bool,
}

/// Copy the daemon's multiplexed stream to the two pipes; when it ends, report an OOM kill on
/// stderr (so it reaches the turn's error like any executor message), then close both.
/// Returns the container's state once it has stopped (`None`: unknown).
async fn pump(
    mut output: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    mut out: DuplexStream,
    mut err: DuplexStream,
    docker: Docker,
    id: String,
    memory: Option<String>,
) -> Option<Stopped> {
    let (mut out_open, mut err_open) = (true, true);
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                // A reader that went away is not a reason to stop draining the container.
                if out_open && out.write_all(&message).await.is_err() {
                    out_open = false;
                }
            }
            Ok(LogOutput::StdErr { message }) => {
                if err_open && err.write_all(&message).await.is_err() {
                    err_open = false;
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::debug!(container = %id, "container output stream ended: {e}");
                break;
            }
        }
    }
    let _ = out.shutdown().await;
    wait_exit(&docker, &id).await;
    let state = docker
        .inspect_container(&id, None)
        .await
        .ok()
        .and_then(|i| i.state);
    let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
    if oom && err_open {
        let limit = memory
            .map(|m| format!(" (runner.container.memory = {m})"))
            .unwrap_or_default();
        let _ = err
            .write_all(
                format!("\nzwarm: the turn's container ran out of memory{limit}: the kernel killed a process in it (OOM)\n").as_bytes(),
            )
            .await;
    }
    let _ = err.shutdown().await;
    state.filter(|s| s.running == Some(false)).map(|s| Stopped {
        exit_code: s.exit_code,
        oom_killed: oom,
    })
}

/// Docker's exit code as a process status: `128 + n` (n a signal number) is death by signal
/// `n`, as a shell reports it; anything else is an exit code.
pub fn exit_status(code: i64) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    if (129..=128 + 31).contains(&code) {
        ExitStatus::from_raw((code - 128) as i32)
    } else {
        ExitStatus::from_raw(((code & 0xff) as i32) << 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_status(0).code(), Some(0));
        assert_eq!(exit_status(3).code(), Some(3));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_status(137).signal(), Some(9));
        assert_eq!(exit_status(130).signal(), Some(2));
        assert_eq!(exit_status(255).code(), Some(255));
    }
}
