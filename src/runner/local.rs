//! The local runner: each turn is a child process of zwarm, in its own process group (and its
//! own cgroup where cgroup v2 is writable), marked with the turn's label (see
//! [`crate::process`] for how processes are started, contained and stopped).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::process::ExecChild as Child;
use tokio::time::Instant;

use super::{Finished, Launch, Runner, RunnerError, RunningTurn, TurnProcess};
use crate::process;

/// How long [`LocalTurn::stop`] may take without a deadline, after the grace period.
const STOP_BOUND: Duration = Duration::from_secs(8);

/// Runs turns as local child processes. Its state (the containment mode, the turn cgroups
/// it made, the thread executors are started from) is its [`process::Containment`].
#[derive(Debug, Clone)]
pub struct LocalRunner {
    containment: Arc<process::Containment>,
}

impl Default for LocalRunner {
    fn default() -> Self {
        LocalRunner::new()
    }
}

impl LocalRunner {
    /// On a containment of its own with the default preference (cgroups where writable) and
    /// no reaper. zwarm's own start-up uses [`LocalRunner::with`].
    pub fn new() -> LocalRunner {
        LocalRunner::with(process::Containment::new(
            process::ContainmentPreference::default(),
        ))
    }

    /// On `containment` (configured by the caller: preference, reaper).
    pub fn with(containment: Arc<process::Containment>) -> LocalRunner {
        LocalRunner { containment }
    }

    /// The containment its turns run in.
    pub fn containment(&self) -> &Arc<process::Containment> {
        &self.containment
    }

    /// `"cgroup"` or `"process-group"`. The first call probes the system (blocking, a few
    /// milliseconds).
    pub fn mode_name(&self) -> &'static str {
        self.containment.mode_name()
    }

    /// One line for diagnostics: the mode, and where the cgroups are or why there are none.
    pub fn detail(&self) -> String {
        self.containment.detail()
    }
}

#[async_trait::async_trait]
impl Runner for LocalRunner {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn start(&self, launch: Launch) -> Result<RunningTurn, RunnerError> {
        let mut child = self
            .containment
            .spawn(&launch.process_launch(), &launch.label)
            .await?;
        let pid = child.id();
        let stdout = child.stdout.take().map(|s| Box::pin(s) as super::Output);
        let stderr = child.stderr.take().map(|s| Box::pin(s) as super::Output);
        Ok(RunningTurn {
            stdout,
            stderr,
            control: Box::new(LocalTurn {
                child,
                pid,
                label: launch.label,
                read_back: launch.read_back,
                exited: false,
                _registered: process::ExecutorGuard(pid),
                containment: self.containment.clone(),
            }),
        })
    }

    async fn clean_up(&self, label: &str) -> usize {
        let (label, c) = (label.to_string(), self.containment.clone());
        tokio::task::spawn_blocking(move || c.kill_marked(&label, None))
            .await
            .unwrap_or(0)
    }

    async fn housekeeping(&self) {
        let c = self.containment.clone();
        let _ = tokio::task::spawn_blocking(move || {
            c.reap_orphan_zombies();
            // A reaper found dead is replaced (and told the running turns).
            if let Some(r) = c.reaper() {
                r.check();
            }
        })
        .await;
    }
}

struct LocalTurn {
    child: Child,
    pid: Option<u32>,
    label: String,
    read_back: Vec<PathBuf>,
    exited: bool,
    /// Forgets the executor (for the orphan reaper) on every path out, panics included.
    _registered: process::ExecutorGuard,
    containment: Arc<process::Containment>,
}

#[async_trait::async_trait]
impl TurnProcess for LocalTurn {
    async fn wait(&mut self) {
        if self.exited {
            return;
        }
        let _ = self.child.wait().await;
        self.exited = true;
    }

    async fn stop(&mut self, grace: Duration, deadline: Option<Instant>) {
        let by = deadline.unwrap_or_else(|| Instant::now() + grace + STOP_BOUND);
        self.containment
            .stop_turn(&mut self.child, &self.label, grace, by)
            .await;
        self.exited = true;
    }

    async fn finish(self: Box<Self>) -> Finished {
        let (finished, leftovers) = self.finish_deferred().await;
        if let Some(clean_up) = leftovers {
            clean_up.await;
        }
        finished
    }

    async fn finish_deferred(mut self: Box<Self>) -> (Finished, Option<super::Leftovers>) {
        let exit = self.child.try_wait().ok().flatten();
        let (pid, label, paths) = (self.pid, self.label.clone(), self.read_back.clone());
        let c = self.containment.clone();
        // The files the executor wrote are read back now (never through a link, and emptied,
        // not removed); its leftovers are killed right after, on the same blocking thread (one
        // hand-off for both), and the returned future waits for that.
        let (files_tx, files_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let files: Vec<_> = paths
                .into_iter()
                .map(|p| {
                    let c = crate::executor::take_read_back(&p, super::READ_BACK_MAX);
                    (p, c)
                })
                .collect();
            let _ = files_tx.send(files);
            c.cleanup_after_exit(pid, &label);
            let _ = done_tx.send(());
        });
        let files = files_rx.await.unwrap_or_default();
        let clean_up = async move {
            let _ = done_rx.await;
        };
        (
            Finished {
                exit,
                files,
                cause: None,
            },
            Some(Box::pin(clean_up) as super::Leftovers),
        )
    }

    fn id(&self) -> Option<u32> {
        self.pid
    }
}
