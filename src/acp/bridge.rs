//! The turn bridge: one ACP turn as one process, so an ACP agent fits zwarm's executor seam
//! (a launch whose stdin carries the input and whose stdout lines are parsed into events).
//!
//! zwarm's runner starts the bridge (`zwarm-acp`) like any executor CLI: in its own process
//! group and containment, input on stdin. The bridge reads a [`BridgeJob`] (JSON) from stdin,
//! starts the agent **in the bridge's process group** (so the runner's stop and containment
//! reach it), opens the session (`session/new`, or `session/load` of the earlier one, or a new
//! one with a summary), sends one `session/prompt`, answers permission requests with the
//! job's policy, and writes one `ExecutorEvent` per line (JSON) to stdout:
//! `session_started` (the agent's session id, stored as the native id for the next turn),
//! the turn's events, then `turn_completed` or `turn_failed`. SIGINT or SIGTERM (the runner's
//! stop) sends `session/cancel`; the bridge then ends the agent (stdin closed, then SIGKILL)
//! and exits.
//!
//! When the job names the agent pool of `zwarm serve` ([`BridgeJob::pool`]) and its socket
//! answers, the bridge does not start the agent: it hands the job to the pool, which runs the
//! turn on the session's long-lived agent, and relays the pool's event lines to stdout as they
//! come ([`super::pool::remote`]). SIGINT or SIGTERM then asks the pool to cancel the turn.
//! Where the socket is absent or does not answer (a container, `acp.agent_idle_seconds = 0`),
//! the bridge runs the agent itself as above.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::agent::AgentCommand;
use super::client::AcpAgent;
use super::policy::{Level, Rule};
use super::turn::{Emit, emit_to, failed, policy_of, run_on, stdout_emit};

/// What the bridge is told on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeJob {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env_set: Vec<(String, String)>,
    #[serde(default)]
    pub env_remove: Vec<String>,
    pub cwd: PathBuf,
    pub prompt: String,
    /// The agent session of the previous turn.
    #[serde(default)]
    pub resume_id: Option<String>,
    /// The earlier turns, for the summary when the session cannot be loaded.
    #[serde(default)]
    pub earlier: Vec<BridgeTurn>,
    /// A file the bridge keeps the session's turns in (one JSON [`BridgeTurn`] a line),
    /// appended after each completed turn, read for the summary when `earlier` is empty. The
    /// executor puts it in the zwarm session's turn directory, so it outlives a restart.
    #[serde(default)]
    pub transcript: Option<PathBuf>,
    /// The permission level: `read-only`, `workspace-write`, `full-access`.
    pub level: Level,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default = "default_init_timeout")]
    pub init_timeout_secs: u64,
    #[serde(default = "default_cancel_grace")]
    pub cancel_grace_secs: u64,
    /// How long an `ask` waits for an answer; 0: no one is asked (an ask is a denial).
    #[serde(default)]
    pub ask_timeout_secs: u64,
    /// The session's turn directory, where asks wait for their answers
    /// ([`super::approval`]). None: no one is asked.
    #[serde(default)]
    pub approvals: Option<PathBuf>,
    /// The zwarm session this turn belongs to (the pool keeps one agent per session).
    #[serde(default)]
    pub session: Option<String>,
    /// The unix socket of `zwarm serve`'s agent pool ([`super::pool`]); None, or a socket that
    /// does not answer: the bridge runs the agent itself.
    #[serde(default)]
    pub pool: Option<PathBuf>,
    /// The pool's secret: it takes jobs only from zwarm's own executor (the socket is
    /// reachable by every process of the user, turns' executors included).
    #[serde(default)]
    pub pool_token: Option<String>,
    /// How long the pool keeps the agent after this turn, waiting for the next one.
    #[serde(default)]
    pub agent_idle_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeTurn {
    pub prompt: String,
    pub response: Option<String>,
}

fn default_init_timeout() -> u64 {
    60
}
fn default_cancel_grace() -> u64 {
    5
}

/// How long the agent gets to end after its stdin is closed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

impl BridgeJob {
    /// The agent's command line; `own_group`: in a process group of its own (the pool's
    /// agents) rather than the caller's (the bridge's, which the runner stops as a group).
    pub fn agent_command(&self, own_group: bool) -> AgentCommand {
        AgentCommand {
            program: self.program.clone(),
            args: self.args.iter().map(Into::into).collect(),
            cwd: self.cwd.clone(),
            env_set: self.env_set.clone(),
            env_remove: self.env_remove.clone(),
            share_group: !own_group,
        }
    }
}

/// Run one turn with an agent of its own. Returns the process exit status: 0 when the turn
/// completed.
pub async fn run(job: BridgeJob, emit: &Emit, cancel: CancellationToken) -> i32 {
    let policy = match policy_of(&job) {
        Ok(p) => p,
        Err(ev) => {
            emit(&ev);
            return 2;
        }
    };
    let init = Duration::from_secs(job.init_timeout_secs);
    let mut agent = match AcpAgent::start(&job.agent_command(false), init).await {
        Ok(a) => a,
        Err(e) => {
            emit(&failed(format!("the ACP agent did not start: {e}")));
            return 1;
        }
    };
    let out = run_on(&mut agent, None, &job, &policy, emit, cancel).await;
    agent.stop(STOP_GRACE).await;
    out.code
}

/// The bridge process: the job from stdin, events to stdout, SIGINT/SIGTERM cancel the turn.
pub fn main() -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
        emit_to(
            &mut std::io::stdout(),
            &failed(format!("zwarm-acp: cannot read the job: {e}")),
        );
        return 2;
    }
    let job: BridgeJob = match serde_json::from_str(&input) {
        Ok(j) => j,
        Err(e) => {
            emit_to(
                &mut std::io::stdout(),
                &failed(format!("zwarm-acp: the job is not valid: {e}")),
            );
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit_to(
                &mut std::io::stdout(),
                &failed(format!("zwarm-acp: no runtime: {e}")),
            );
            return 2;
        }
    };
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            c.cancel();
        });
        if let Some(code) = super::pool::remote::forward(&job, cancel.clone()).await {
            return code;
        }
        run(job, &stdout_emit(), cancel).await
    })
}
