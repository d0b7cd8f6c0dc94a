//! The agent process: started with stdin, stdout and stderr piped (ACP needs stdin), in a
//! process group of its own, and always reaped.
//!
//! Stopping: close stdin (an ACP agent ends when its input ends: gemini and its relaunched
//! child in about 0.1 s), wait `grace`, then SIGKILL the whole group. Signalling the leader
//! alone is not enough: `gemini` is a node wrapper that ignores SIGTERM, SIGINT and SIGHUP and
//! keeps a child. The group is killed once more after the leader is gone, for children that
//! outlived it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How many of the agent's last stderr lines are kept (for the reason of a failure).
const STDERR_LINES: usize = 40;
/// The longest stderr line kept.
const STDERR_LINE_MAX: usize = 500;

/// What to start: an ACP agent's command line and environment.
#[derive(Debug, Clone, Default)]
pub struct AgentCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env_set: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    /// Stay in the caller's process group instead of a group of its own: when the caller is
    /// itself a turn process that zwarm's runner contains and stops as a group (the bridge).
    pub share_group: bool,
}

/// A running agent process.
pub struct AgentProcess {
    child: Child,
    pid: Option<i32>,
    /// Its pid is its process group id.
    own_group: bool,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    exit: Option<ExitStatus>,
    /// Known to zwarm's orphan reaper as a child tokio waits for (`zwarm serve`'s pool).
    _waited: crate::process::ExecutorGuard,
}

impl AgentProcess {
    /// Start the agent. Its stdin and stdout are returned for the JSON-RPC connection.
    pub fn spawn(cmd: &AgentCommand) -> std::io::Result<(AgentProcess, ChildStdin, ChildStdout)> {
        Self::spawn_with(cmd, false)
    }

    /// [`AgentProcess::spawn`]; `die_with_parent`: the agent gets SIGKILL when the thread that
    /// starts it ends (`PR_SET_PDEATHSIG`): the pool starts its agents from a thread that
    /// lives as long as zwarm, so a zwarm killed outright does not leave them running (their
    /// children see their stdin end with it).
    pub fn spawn_with(
        cmd: &AgentCommand,
        die_with_parent: bool,
    ) -> std::io::Result<(AgentProcess, ChildStdin, ChildStdout)> {
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args)
            .current_dir(&cmd.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !cmd.share_group {
            c.process_group(0);
        }
        if die_with_parent {
            crate::process::die_with_parent(
                &mut c,
                libc::SIGKILL,
                None,
                "zwarm exited while starting the agent",
            );
        }
        for k in &cmd.env_remove {
            c.env_remove(k);
        }
        for (k, v) in &cmd.env_set {
            c.env(k, v);
        }
        let (mut child, waited) = crate::process::spawn_waited_child(&mut c)?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        let missing = || std::io::Error::other("the agent's stdio was not piped");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr_tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        if let Some(err) = child.stderr.take() {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "zwarm::acp::stderr", "{line}");
                    let mut t = tail.lock();
                    if t.len() == STDERR_LINES {
                        t.pop_front();
                    }
                    t.push_back(crate::text::truncate_chars(&line, STDERR_LINE_MAX));
                }
            });
        }
        Ok((
            AgentProcess {
                child,
                pid,
                own_group: !cmd.share_group,
                stderr_tail,
                exit: None,
                _waited: waited,
            },
            stdin,
            stdout,
        ))
    }

    /// The process id of the agent (its process group id too, unless it shares the caller's).
    pub fn id(&self) -> Option<u32> {
        self.pid.and_then(|p| u32::try_from(p).ok())
    }

    /// The last lines the agent wrote to stderr.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr_tail.lock().iter().cloned().collect()
    }

    /// Has it exited (and been reaped)? Returns the status if so.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Wait up to `d` for the agent to exit by itself.
    pub async fn wait_for(&mut self, d: Duration) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Ok(status)) = tokio::time::timeout(d, self.child.wait()).await
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Stop it: its stdin must already be closed (or about to be); wait `grace` for it to end,
    /// then kill the process group. Returns once the leader is reaped.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.wait_for(grace).await.is_none() {
            self.kill_group();
            if let Ok(status) = self.child.wait().await {
                self.exit = Some(status);
            }
        }
        // Children that outlived the leader (gemini's relaunched node) are in the same group.
        self.kill_group();
        self.exit
    }

    /// SIGKILL its process group, or only the agent when it shares the caller's group.
    fn kill_group(&self) {
        let Some(pid) = self.pid else { return };
        // SAFETY: kill/killpg have no memory effects; a group with no members is ESRCH.
        unsafe {
            if self.own_group {
                libc::killpg(pid, libc::SIGKILL);
            } else if self.exit.is_none() {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Not stopped (a panic, a dropped future): take the whole group down; tokio reaps the
        // leader (kill_on_drop).
        if self.exit.is_none() || self.child.try_wait().ok().flatten().is_none() {
            self.kill_group();
        }
    }
}

/// A readable account of how an agent ended: `exit status 1` / `killed by signal 9`, and its
/// last stderr lines.
pub fn describe_exit(status: Option<ExitStatus>, stderr: &[String]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("it exited with status {c}"),
            (None, Some(sig)) => format!("it was killed by signal {sig}"),
            _ => "it exited".to_string(),
        },
        None => "it closed its output".to_string(),
    };
    let tail: Vec<&str> = stderr
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let start = tail.len().saturating_sub(5);
    if tail.is_empty() {
        how
    } else {
        format!(
            "{how}; its last stderr lines: {}",
            tail[start..].join(" | ")
        )
    }
}
