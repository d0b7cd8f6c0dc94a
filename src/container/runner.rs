//! The container runner on the engine's [`Runner`] seam: the same launch as a local turn, run
//! in a container; the engine sees the same streams, end, stop and read-back files.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{ContainerError, ContainerRunner, ContainerTurn, TurnSpec};
use crate::runner::{Finished, Launch, Runner, RunnerError, RunningTurn, TurnProcess};

/// How often housekeeping looks for containers of dead servers.
const DEAD_SERVER_SCAN: Duration = Duration::from_secs(60);

/// [`ContainerRunner`] as a [`Runner`].
pub struct ContainerRuns {
    inner: ContainerRunner,
    last_scan: Mutex<Option<Instant>>,
}

impl ContainerRuns {
    pub fn new(inner: ContainerRunner) -> Arc<ContainerRuns> {
        Arc::new(ContainerRuns {
            inner,
            last_scan: Mutex::new(None),
        })
    }

    pub fn containers(&self) -> &ContainerRunner {
        &self.inner
    }
}

/// Containers on the configured daemon, ready for turns (an error says why the daemon or
/// image cannot be used). `state_dir` is zwarm's state dir; the per-session container state
/// goes under `<state_dir>/containers/`. What servers that died on this node left is removed
/// first.
pub async fn from_config(
    cfg: &super::ContainerConfig,
    state_dir: &std::path::Path,
) -> Result<Arc<dyn Runner>, ContainerError> {
    let r = ContainerRunner::connect(cfg.clone(), state_dir.join("containers")).await?;
    let n = r.clean_dead_servers().await;
    if n > 0 {
        tracing::info!("removed {n} containers of stopped zwarm servers");
    }
    Ok(ContainerRuns::new(r))
}

fn runner_error(e: ContainerError) -> RunnerError {
    match e {
        ContainerError::Daemon { .. } | ContainerError::NoImage(_) => {
            RunnerError::Unavailable(e.to_string())
        }
        other => RunnerError::Start(std::io::Error::other(other.to_string())),
    }
}

#[async_trait::async_trait]
impl Runner for ContainerRuns {
    fn name(&self) -> &'static str {
        "container"
    }

    async fn start(&self, launch: Launch) -> Result<RunningTurn, RunnerError> {
        let Launch {
            program,
            args,
            cwd,
            env_set,
            env_remove,
            stdin,
            read_back,
            label,
        } = launch;
        let spec = TurnSpec {
            program,
            args,
            cwd,
            env_set,
            env_remove,
            stdin,
            read_back,
            label,
        };
        let mut turn = self.inner.start_turn(spec).await.map_err(runner_error)?;
        Ok(RunningTurn {
            stdout: turn.take_stdout(),
            stderr: turn.take_stderr(),
            control: Box::new(Control(Some(turn))),
        })
    }

    async fn clean_up(&self, label: &str) -> usize {
        self.inner.remove_turn(label).await
    }

    async fn housekeeping(&self) {
        {
            let mut last = self.last_scan.lock();
            if last.is_some_and(|t| t.elapsed() < DEAD_SERVER_SCAN) {
                return;
            }
            *last = Some(Instant::now());
        }
        let n = self.inner.clean_dead_servers().await;
        if n > 0 {
            tracing::info!("removed {n} containers of stopped zwarm servers");
        }
    }
}

struct Control(Option<ContainerTurn>);

#[async_trait::async_trait]
impl TurnProcess for Control {
    async fn wait(&mut self) {
        if let Some(t) = self.0.as_mut() {
            t.wait().await;
        }
    }

    async fn stop(&mut self, grace: Duration, deadline: Option<Instant>) {
        if let Some(t) = self.0.as_mut() {
            t.stop(grace, deadline).await;
        }
    }

    async fn finish(mut self: Box<Self>) -> Finished {
        let Some(t) = self.0.take() else {
            return Finished::default();
        };
        let f = t.finish().await;
        let cause = f.oom_killed.then(|| {
            tracing::warn!("a turn's container ran out of memory");
            "the turn's container ran out of memory and was killed (raise \
             runner.container.memory, or make the task smaller)"
                .to_string()
        });
        Finished {
            exit: f.exit,
            files: f.files,
            cause,
        }
    }
}
