//! Waiting on several sessions at once (check_session with `session_ids`).

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{MAX_WAIT, Manager, ManagerError};
use crate::model::Session;

/// Most sessions one call may wait on.
pub const MAX_IDS: usize = 50;

impl Manager {
    /// Wait until `need` of the sessions have left queued/running (sessions already finished
    /// count), `timeout` passes, or `cancel` fires. Returns every session as it is then, in the
    /// order given (duplicates dropped).
    pub async fn wait_many(
        &self,
        ids: &[String],
        all: bool,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Session>, ManagerError> {
        let mut resolved: Vec<String> = Vec::new();
        for id in ids {
            let full = self.resolve(id).await?;
            if !resolved.contains(&full) {
                resolved.push(full);
            }
        }
        let need = if all { resolved.len() } else { 1 };
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        let mut changes = self.subscribe_changes();
        loop {
            let mut now = Vec::with_capacity(resolved.len());
            for id in &resolved {
                now.push(self.get(id).await?);
            }
            let done = now.iter().filter(|s| !s.status.is_active()).count();
            if done >= need || Instant::now() >= deadline || cancel.is_cancelled() {
                return Ok(now);
            }
            // Woken by a change to one of them; sessions of another server are polled.
            let poll = tokio::time::sleep(Duration::from_millis(250));
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    r = changes.recv() => match r {
                        Ok(id) if resolved.contains(&id) => break,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => { (&mut poll).await; break; }
                    },
                    _ = &mut poll => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = cancel.cancelled() => break,
                }
            }
        }
    }
}
