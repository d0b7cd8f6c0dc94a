//! Questions about sessions: prefix resolution, one session, a page of them, waiting for one,
//! the watchers' totals, the event log. Held sessions answer from memory (once their last
//! change is committed), others from indexed reads of the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::registry::{Handle, owner_alive};
use super::{FleetView, MAX_WAIT, Manager, ManagerError, Page, committed};
use crate::fleet::Stat;
use crate::model::{Session, SessionStatus};

impl Manager {
    /// Resolve an id or unique prefix (8+ characters) among every session on the state dir.
    pub async fn resolve(&self, prefix: &str) -> Result<String, ManagerError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() {
            return Err(ManagerError::UnknownSession(String::new()));
        }
        if self.inner.registry.get(&prefix).is_some() {
            return Ok(prefix);
        }
        if prefix.len() < 8 && !crate::model::valid_id(&prefix) {
            return Err(ManagerError::ShortPrefix(prefix));
        }
        let mut ids = self.inner.store.ids_with_prefix(&prefix, 6).await?;
        ids.extend(self.inner.registry.ids_with_prefix(&prefix));
        ids.sort();
        ids.dedup();
        if ids.contains(&prefix) {
            return Ok(prefix);
        }
        match ids.as_slice() {
            [] => Err(ManagerError::UnknownSession(prefix)),
            [one] => Ok(one.clone()),
            many => Err(ManagerError::Ambiguous {
                prefix,
                candidates: many
                    .iter()
                    .take(5)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The executor of a session this server holds in memory (`None` for any other: ask
    /// [`Manager::get`]). Does not wait for a pending commit.
    pub fn adapter_of(&self, id: &str) -> Option<crate::model::Adapter> {
        self.inner
            .registry
            .get(id)
            .map(|h| h.live.lock().session.adapter)
    }

    /// A session's current state: held ones from memory (once their last status change is
    /// committed), others from the store. A session a dead server left running is adopted.
    pub async fn get(&self, id: &str) -> Result<Session, ManagerError> {
        let id = self.resolve(id).await?;
        if let Some(h) = self.inner.registry.used(&id) {
            return Ok(self.snapshot(&h).await);
        }
        let (s, _) = self.load(&id).await?;
        if s.status.is_active()
            && s.owner.instance != self.inner.instance
            && !owner_alive(&self.inner.store, &s.owner.instance).await
        {
            return match self.adopt(&id).await {
                Ok(h) => Ok(self.snapshot(&h).await),
                // Adopted by another live server meanwhile: read it as it is.
                Err(ManagerError::ForeignOwner { .. } | ManagerError::Store(_)) => {
                    Ok(self.load(&id).await?.0)
                }
                Err(e) => Err(e),
            };
        }
        Ok(s)
    }

    /// The held session as last committed: if a change is still being committed, wait for
    /// it (and for any change made meanwhile), so nothing is reported before it is on disk.
    pub(super) async fn snapshot(&self, h: &Handle) -> Session {
        loop {
            let (s, pending) = h.snapshot();
            if pending == 0 || *self.inner.store.applied().borrow() >= pending {
                return s;
            }
            committed(&self.inner.store, pending).await;
        }
    }

    /// The handle of a session this server may run turns for (adopting it if its owner died).
    pub(super) async fn owned(&self, id: &str) -> Result<Arc<Handle>, ManagerError> {
        let id = self.resolve(id).await?;
        if let Some(h) = self.inner.registry.used(&id) {
            return Ok(h);
        }
        self.adopt(&id).await
    }

    /// One page of sessions, newest first (held sessions as they are in memory).
    pub async fn list(
        &self,
        status: Option<SessionStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<Page, ManagerError> {
        self.await_recovery().await;
        let (mut rows, total) = self.inner.store.page(status, limit, offset).await?;
        // A running row of a server that has died since: adopt it now (it shows as failed),
        // rather than list it as running.
        let mut adopted = false;
        for r in &rows {
            if r.status.is_active() && self.inner.registry.get(&r.session_id).is_none() {
                let owner = self
                    .load(&r.session_id)
                    .await
                    .map(|(s, _)| s.owner.instance);
                if let Ok(owner) = owner
                    && owner != self.inner.instance
                    && !owner_alive(&self.inner.store, &owner).await
                    && self.adopt(&r.session_id).await.is_ok()
                {
                    adopted = true;
                }
            }
        }
        if adopted {
            (rows, _) = self.inner.store.page(status, limit, offset).await?;
        }
        for r in &mut rows {
            if let Some(h) = self.inner.registry.get(&r.session_id) {
                let l = h.live.lock();
                let s = &l.session;
                r.status = s.status;
                r.turns = s.turns.len() as u32;
                r.usage = s.total_usage();
                r.cost_usd = s.total_cost();
                r.updated_at = s.updated_at.clone();
            }
        }
        Ok(Page {
            sessions: rows,
            total,
        })
    }

    /// Bring the watchers' totals up to date with the store (only rows changed since the last
    /// look are read). Calls that arrive together share one read: a read that started after
    /// a call arrived has seen everything committed before it, so that call makes none (100
    /// pipelined `delegate`s no longer queue behind 100 reads).
    pub(super) async fn refresh_fleet(&self) -> tokio::sync::MutexGuard<'_, FleetView> {
        let called = std::time::Instant::now();
        let mut f = self.inner.fleet.lock().await;
        if f.read_at.is_none_or(|at| at < called) {
            f.read_at = Some(std::time::Instant::now());
            f.reads += 1;
            match self.inner.store.stats_since(f.rev).await {
                Ok((stats, rev)) => {
                    for s in stats {
                        f.fleet.update(s);
                    }
                    f.rev = rev;
                }
                Err(e) => {
                    // Not read: the next call tries again.
                    f.read_at = None;
                    tracing::error!(error = %e, "cannot read session totals");
                }
            }
        }
        // Running turns as they are in memory (ahead of their next flush).
        for h in self.inner.registry.all() {
            let l = h.live.lock();
            if l.control.is_some() {
                let st = Stat::of(&l.session);
                drop(l);
                f.fleet.update(st);
            }
        }
        f
    }

    /// Store reads the watchers' totals have taken so far (for tests).
    #[doc(hidden)]
    pub async fn fleet_reads(&self) -> u64 {
        self.inner.fleet.lock().await.reads
    }

    /// Wait until the session's turn is no longer queued/running, `timeout` passes, or `cancel`
    /// fires. Returns the session as it is then.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Session, ManagerError> {
        let id = self.resolve(id).await?;
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        match self.inner.registry.used(&id) {
            Some(h) => {
                let mut rx = h.changed.subscribe();
                loop {
                    let s = self.snapshot(&h).await;
                    if !s.status.is_active() {
                        return Ok(s);
                    }
                    tokio::select! {
                        r = rx.changed() => { if r.is_err() { return Ok(self.snapshot(&h).await); } }
                        _ = tokio::time::sleep_until(deadline) => return Ok(self.snapshot(&h).await),
                        _ = cancel.cancelled() => return Ok(self.snapshot(&h).await),
                    }
                }
            }
            None => loop {
                // Another server's session: poll the store (an indexed read).
                let s = self.get(&id).await?;
                if !s.status.is_active() || Instant::now() >= deadline || cancel.is_cancelled() {
                    return Ok(s);
                }
                if let Some(h) = self.inner.registry.get(&id) {
                    // Adopted meanwhile: wait on it directly.
                    let left = deadline.saturating_duration_since(Instant::now());
                    return Box::pin(self.wait(&h.id, left, cancel)).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = cancel.cancelled() => {}
                }
            },
        }
    }

    /// The last `limit` events of every server on the state dir.
    pub async fn recent_events(
        &self,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, ManagerError> {
        Ok(self.inner.store.recent_events(limit).await?)
    }
}
