//! The bridge's side of the pool: hand the job to `zwarm serve`'s agent pool and relay its
//! event lines to stdout, so the runner and the parser see what a bridge running its own
//! agent would print.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::{End, Request};
use crate::acp::job::BridgeJob;
use crate::acp::turn::{emit_to, failed};

/// How long the bridge waits for the pool to take the connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Run the job's turn through the pool the job names. `None`: no pool named, or it did not
/// take the job (nothing was reported): the caller runs the agent itself. Otherwise the exit
/// status. `cancel` (SIGINT, SIGTERM) asks the pool to cancel the turn.
pub async fn forward(job: &BridgeJob, cancel: CancellationToken) -> Option<i32> {
    let path = job.pool.as_ref()?;
    if job.session.is_none() || job.agent_idle_secs == 0 {
        return None;
    }
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(socket = %path.display(), error = %e, "acp pool not reachable; running the agent here");
            return None;
        }
        Err(_) => return None,
    };
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_string(&Request { job: job.clone() }).ok()?;
    line.push('\n');
    if wr.write_all(line.as_bytes()).await.is_err() {
        return None;
    }
    let mut lines = BufReader::new(rd).lines();
    let mut relayed = false;
    let mut cancelled = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                if wr.write_all(b"{\"cancel\":true}\n").await.is_err() {
                    tracing::debug!("acp pool: the cancel could not be sent");
                }
            }
            l = lines.next_line() => match l {
                Ok(Some(l)) => {
                    if let Ok(end) = serde_json::from_str::<End>(&l) {
                        return Some(end.pool_exit);
                    }
                    relayed = true;
                    let mut out = std::io::stdout().lock();
                    let _ = std::io::Write::write_all(&mut out, l.as_bytes());
                    let _ = std::io::Write::write_all(&mut out, b"\n");
                    let _ = std::io::Write::flush(&mut out);
                }
                Ok(None) | Err(_) => {
                    // Nothing reported yet: the turn never started there (the pool is
                    // stopping); the bridge can still run it.
                    if !relayed && !cancelled {
                        return None;
                    }
                    emit_to(
                        &mut std::io::stdout(),
                        &failed("the ACP agent pool of zwarm serve ended during the turn".into()),
                    );
                    return Some(if cancelled { 130 } else { 1 });
                }
            }
        }
    }
}
