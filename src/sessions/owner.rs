//! The one path every change of a held session takes.
//!
//! A change is applied to the held session under its lock, and its store writes are submitted
//! in the same critical section (so the store sees changes in the order they happened); the
//! session's `pending` sequence is set to that submission, so readers report it only once it
//! is committed. Then the change is published: the session's version is bumped (waking
//! waiters) and its id is sent to listeners. Always in that order:
//!
//! 1. [`Inner::stage`]: apply + submit (+ `pending`), under the lock;
//! 2. the commit is awaited ([`Staged::committed`]), where the caller must know it held;
//! 3. [`Inner::publish`]: bump, then notify.
//!
//! [`Inner::commit`] does all three. Progress (each executor event) is the one exception by
//! design: it changes memory only, and the batched flusher ([`Inner::flush`]) writes it.

use super::Inner;
use super::registry::{Handle, Live};
use crate::log_event::LogEvent;
use crate::store::{StoreError, Ticket, Write};

/// A change applied and submitted, not yet known to be committed.
pub(crate) struct Staged<T> {
    pub value: T,
    ticket: Ticket,
}

impl<T> Staged<T> {
    /// Wait for the store to commit the change.
    pub async fn committed(self) -> (T, Result<(), StoreError>) {
        let r = self.ticket.committed().await;
        (self.value, r)
    }

    /// The value now, and the commit to wait for.
    pub fn split(self) -> (T, Staged<()>) {
        (
            self.value,
            Staged {
                value: (),
                ticket: self.ticket,
            },
        )
    }
}

/// The writes a change adds to its commit.
#[derive(Default)]
pub(crate) struct Writes {
    pub w: Vec<Write>,
}

impl Writes {
    pub fn push(&mut self, w: Write) {
        self.w.push(w);
    }

    pub fn extend(&mut self, w: impl IntoIterator<Item = Write>) {
        self.w.extend(w);
    }
}

impl Inner {
    /// Apply `change` to the held session and submit what it writes, under the session's lock.
    /// `Err` from `change` submits nothing (the change must then have left the session as it
    /// was).
    pub(crate) fn stage<T, E>(
        &self,
        h: &Handle,
        change: impl FnOnce(&mut Live, &mut Writes) -> Result<T, E>,
    ) -> Result<Staged<T>, E> {
        self.stage_as(h, false, change)
    }

    fn stage_as<T, E>(
        &self,
        h: &Handle,
        lazy: bool,
        change: impl FnOnce(&mut Live, &mut Writes) -> Result<T, E>,
    ) -> Result<Staged<T>, E> {
        let mut l = h.live.lock();
        let mut w = Writes::default();
        let value = change(&mut l, &mut w)?;
        let ticket = if lazy {
            self.store.submit_lazy(w.w)
        } else {
            self.store.submit(w.w)
        };
        l.pending = ticket.seq;
        Ok(Staged { value, ticket })
    }

    /// [`Inner::stage_ok`] for a change nobody waits for at once: its commit may wait a few
    /// milliseconds to share the next commit's sync ([`crate::store::Store::submit_lazy`]).
    /// Readers of the session still wait for it (`pending`), as for any change.
    pub(crate) fn stage_lazy<T>(
        &self,
        h: &Handle,
        change: impl FnOnce(&mut Live, &mut Writes) -> T,
    ) -> Staged<T> {
        self.stage_ok_as(h, true, change)
    }

    /// [`Inner::stage`] for a change that cannot be refused.
    pub(crate) fn stage_ok<T>(
        &self,
        h: &Handle,
        change: impl FnOnce(&mut Live, &mut Writes) -> T,
    ) -> Staged<T> {
        self.stage_ok_as(h, false, change)
    }

    fn stage_ok_as<T>(
        &self,
        h: &Handle,
        lazy: bool,
        change: impl FnOnce(&mut Live, &mut Writes) -> T,
    ) -> Staged<T> {
        match self.stage_as::<T, std::convert::Infallible>(h, lazy, |l, w| Ok(change(l, w))) {
            Ok(s) => s,
            Err(never) => match never {},
        }
    }

    /// Tell everyone the session changed: bump its version (waiters), then its id (listeners).
    pub(crate) fn publish(&self, h: &Handle) {
        h.bump();
        let _ = self.changes.send(h.id.clone());
    }

    /// Stage, await the commit, publish (only once committed: on `Err` the caller puts the
    /// session back, then publishes if anything was visible).
    pub(crate) async fn commit<T>(
        &self,
        h: &Handle,
        change: impl FnOnce(&mut Live, &mut Writes) -> T,
    ) -> (T, Result<(), StoreError>) {
        let (v, r) = self.stage_ok(h, change).committed().await;
        if r.is_ok() {
            self.publish(h);
        }
        (v, r)
    }

    /// Commit writes about a session this server does not hold (notes on a session let go),
    /// then tell listeners.
    pub(crate) async fn commit_unheld(&self, id: &str, w: Vec<Write>) -> Result<(), StoreError> {
        let r = self.store.submit(w).committed().await;
        let _ = self.changes.send(id.to_string());
        r
    }

    /// A log event of `session` (or of the server), to add to a commit.
    pub(crate) fn event(&self, ev: LogEvent, session: Option<&str>) -> Write {
        self.store.record(ev, session)
    }

    /// Append a log event without waiting for it.
    pub(crate) fn log(&self, ev: LogEvent, session: Option<&str>) {
        self.store.log_event(ev, session);
    }

    /// Write the progress of every changed held session (one batch, not awaited).
    pub(crate) fn flush(&self) {
        let ids: Vec<String> = self.dirty.lock().drain().collect();
        if ids.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        for id in ids {
            let Some(h) = self.registry.get(&id) else {
                continue;
            };
            let mut l = h.live.lock();
            match l.session.turns.last() {
                // A turn in progress: only what is new.
                Some(t) if t.ended_at.is_none() => writes.extend(l.progress_images()),
                // The last turn has ended (its end may still need writing, after a failed
                // commit): the whole record.
                Some(t) => {
                    let i = t.index;
                    writes.extend(l.images(&[i]));
                }
                None => writes.extend(l.images(&[])),
            }
        }
        // Nobody waits for progress: it may share the next commit's sync.
        let _ = self.store.submit_lazy(writes);
    }

    /// The session's whole record is in a commit just staged: the flusher need not write it
    /// again (the commit's failure marks it dirty again). Call it in the staging critical
    /// section, so a change made after it marks it dirty anew.
    pub(crate) fn mark_clean(&self, id: &str) {
        self.dirty.lock().remove(id);
    }

    pub(crate) fn mark_dirty(&self, id: &str, now: bool) {
        self.dirty.lock().insert(id.to_string());
        if now {
            self.flush_now.notify_one();
        }
    }
}
