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
    ///
    /// While waiting, a change re-checks only the session it names, and only its status (no
    /// copy of it): an orchestrator waiting on 50 sessions would otherwise copy all 50 at
    /// every change of any of them. Sessions of another server are re-read every 250 ms. The
    /// sessions are read in full, as committed, once the wait is over.
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
        let mut active = Vec::with_capacity(resolved.len());
        for id in &resolved {
            active.push(self.is_active(id).await?);
        }
        loop {
            let done = active.iter().filter(|a| !**a).count();
            let over = Instant::now() >= deadline || cancel.is_cancelled();
            if done >= need || over {
                let mut now = Vec::with_capacity(resolved.len());
                for id in &resolved {
                    now.push(self.get(id).await?);
                }
                // As committed: a session may have started again meanwhile.
                let done = now.iter().filter(|s| !s.status.is_active()).count();
                if done >= need || over {
                    return Ok(now);
                }
                active = now.iter().map(|s| s.status.is_active()).collect();
                continue;
            }
            // Woken by a change to one of them; sessions of another server are polled.
            let poll = tokio::time::sleep(Duration::from_millis(250));
            tokio::pin!(poll);
            let changed: Option<usize> = loop {
                tokio::select! {
                    r = changes.recv() => match r {
                        Ok(id) => if let Some(i) = resolved.iter().position(|r| *r == id) {
                            break Some(i);
                        },
                        Err(RecvError::Lagged(_)) => break None,
                        Err(RecvError::Closed) => { (&mut poll).await; break None; }
                    },
                    _ = &mut poll => break None,
                    _ = tokio::time::sleep_until(deadline) => break None,
                    _ = cancel.cancelled() => break None,
                }
            };
            match changed {
                Some(i) => active[i] = self.is_active(&resolved[i]).await?,
                None => {
                    for (id, a) in resolved.iter().zip(active.iter_mut()) {
                        *a = self.is_active(id).await?;
                    }
                }
            }
        }
    }

    /// Whether a session is queued or running: from memory when this server holds it,
    /// otherwise as stored (which may adopt it, as [`Manager::get`] does).
    async fn is_active(&self, id: &str) -> Result<bool, ManagerError> {
        match self.inner.registry.get(id) {
            Some(h) => Ok(h.is_active()),
            None => Ok(self.get(id).await?.status.is_active()),
        }
    }
}
