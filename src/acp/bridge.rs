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

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::AcpAgent;
pub use super::job::{BridgeJob, BridgeTurn, STOP_GRACE};
use super::turn::{Emit, emit_to, failed, policy_of, run_on, stdout_emit};

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
