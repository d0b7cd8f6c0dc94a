//! Where a turn runs: the [`Runner`] seam.
//!
//! The executor decides *what* runs (a [`Launch`]: program, arguments, environment, working
//! dir, stdin, and the files to read back when it ends); a runner decides *where*. The engine
//! only sees what a runner hands back: the output streams, a way to wait for the end, a way to
//! stop it within a deadline, and, at the end, the exit status and the files read back. It
//! never touches a child process, a process group or the filesystem of the turn itself.
//!
//! - [`local::LocalRunner`]: a child process of zwarm in its own process group (and cgroup
//!   where cgroup v2 is writable), marked with `ZWARM_TURN=<label>` (see [`crate::process`]).
//! - [`memory::MemoryRunner`]: no process at all; scripted output, for in-process tests.
//!
//! What a turn leaves behind after a restart is named by its **label** (`<session>.<turn>`):
//! [`Runner::clean_up`] stops whatever still runs under it (a dead server's executor, or a
//! turn whose supervisor panicked).

pub mod config;
pub mod local;
pub mod memory;

use std::ffi::OsString;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::time::Instant;

/// The most a runner reads back of a file the executor wrote for zwarm
/// ([`Launch::read_back`]: codex's last message).
pub const READ_BACK_MAX: usize = 16 << 20;

/// One executor run, described without saying where it runs. The executor builds it
/// ([`crate::executor::build_launch`]); the engine sets `label`; a runner starts it.
#[derive(Clone, Default)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env_set: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    /// Written to the executor's stdin, which is then closed; `None`: stdin is empty.
    pub stdin: Option<Vec<u8>>,
    /// Files the executor writes (paths as it was told them in `args`) that the runner hands
    /// back in [`Finished::files`] when the turn ends (codex's `-o` last message).
    pub read_back: Vec<PathBuf>,
    /// Names everything this run starts, so it can be found and stopped after a restart.
    pub label: String,
}

impl std::fmt::Debug for Launch {
    // The input is a prompt: its size, never its text, goes into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("label", &self.label)
            .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .field("read_back", &self.read_back)
            .finish()
    }
}

impl Launch {
    /// The process part, for the local runner.
    pub fn process_launch(&self) -> crate::process::Launch {
        crate::process::Launch {
            spec: crate::process::ProcessSpec {
                program: self.program.clone(),
                args: self.args.clone(),
                cwd: self.cwd.clone(),
                env_set: self.env_set.clone(),
                env_remove: self.env_remove.clone(),
            },
            stdin: self.stdin.clone(),
        }
    }
}

/// An output stream of a running turn.
pub type Output = Pin<Box<dyn AsyncRead + Send>>;

/// The clean-up of what a turn left behind ([`TurnProcess::finish_deferred`]).
pub type Leftovers = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The executor could not be started.
    #[error("{0}")]
    Start(#[from] std::io::Error),
    /// The runner is not available (e.g. it has shut down).
    #[error("{0}")]
    Unavailable(String),
}

/// What a runner hands back for a started turn.
pub struct RunningTurn {
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    pub control: Box<dyn TurnProcess>,
}

/// What is left of a turn once it has ended.
#[derive(Debug, Default)]
pub struct Finished {
    /// `None` when the status is unknown.
    pub exit: Option<ExitStatus>,
    /// Each of [`Launch::read_back`], with its contents when it was written and not empty.
    pub files: Vec<(PathBuf, Option<String>)>,
    /// Why the runner itself ended the turn, in words for the turn's result, when it did
    /// ("the container ran out of memory (limit 512m) and was killed", "the pod was never
    /// scheduled: ..."). `None` when the executor ended on its own or was stopped by zwarm.
    pub cause: Option<String>,
}

impl Finished {
    /// The contents read back for `path`.
    pub fn file(&self, path: &std::path::Path) -> Option<&str> {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, c)| c.as_deref())
    }
}

/// Control over one running turn.
#[async_trait::async_trait]
pub trait TurnProcess: Send {
    /// Resolves once the executor has exited. Cancel-safe; resolves at once when called again
    /// after an exit.
    async fn wait(&mut self);

    /// Stop the executor: ask it to stop, give it `grace`, then force it, everything finished
    /// by `deadline` when given (else within the runner's own bounds). Returns once it is gone.
    async fn stop(&mut self, grace: Duration, deadline: Option<Instant>);

    /// After the end: the exit status, the files read back, and everything the turn left
    /// cleaned up.
    async fn finish(self: Box<Self>) -> Finished;

    /// [`TurnProcess::finish`] in two parts: the exit status and files read back now, and the
    /// clean-up of what the turn left as a future, which the engine awaits before the turn's
    /// end is recorded (the local runner starts it at once, beside the read-back). The default
    /// cleans up in `finish` and returns no future.
    async fn finish_deferred(self: Box<Self>) -> (Finished, Option<Leftovers>) {
        (self.finish().await, None)
    }

    /// An id for logs (the process id of a local run).
    fn id(&self) -> Option<u32> {
        None
    }

    /// Let go of a re-attached run ([`Runner::adopt`]) without stopping it: another server
    /// adopted the session first and follows the run. The default drops it.
    fn detach(self: Box<Self>) {}
}

/// Where turns run.
#[async_trait::async_trait]
pub trait Runner: Send + Sync + 'static {
    /// A short name for logs and diagnostics (`local`, `memory`).
    fn name(&self) -> &'static str;

    /// Start one executor run.
    async fn start(&self, launch: Launch) -> Result<RunningTurn, RunnerError>;

    /// [`Runner::start`] for a turn the engine stops after `timeout` (`turn_timeout_seconds`):
    /// a runner whose turns outlive zwarm (a Kubernetes Job) bounds them by it too. The
    /// default ignores it: the engine's own deadline stops the turn.
    async fn start_timed(
        &self,
        launch: Launch,
        timeout: Option<Duration>,
    ) -> Result<RunningTurn, RunnerError> {
        let _ = timeout;
        self.start(launch).await
    }

    /// Whether this runner's runs outlive zwarm, so that [`Runner::adopt`] may find one (the
    /// engine reads a turn's raw log back only then).
    fn reattaches(&self) -> bool {
        false
    }

    /// Re-attach to a run labelled `label` that a dead server left running, when this runner's
    /// runs outlive zwarm (a Kubernetes Job): its output and its end, as for a run this server
    /// started. `read_back` are the files its launch named ([`Launch::read_back`]). `logged`
    /// is how many bytes of the run's stdout the turn's raw log already holds (whole lines,
    /// as the dead server wrote them; the engine has rebuilt the turn's progress from them):
    /// the stdout handed back starts after them, so nothing is logged or parsed twice.
    /// `None` (the default): nothing to re-attach to; the engine fails the turn and calls
    /// [`Runner::clean_up`].
    async fn adopt(&self, label: &str, read_back: &[PathBuf], logged: u64) -> Option<RunningTurn> {
        let _ = (label, read_back, logged);
        None
    }

    /// Stop whatever a run labelled `label` left behind (its server died, or its supervisor
    /// failed). Returns how many processes (or equivalent) were stopped.
    async fn clean_up(&self, label: &str) -> usize;

    /// Periodic housekeeping (the local runner reaps orphans here).
    async fn housekeeping(&self) {}
}
