//! The sessions this server holds in memory, and how a session comes to be held.
//!
//! A session is held by the server that runs its turns: the one that created it, or the one
//! that adopted it after its server died. Each held session is one [`Handle`]: the live
//! session and everything about its running turn under ONE lock ([`Live`]), plus a version
//! channel that wakes waiters. Sessions not held (idle ones from earlier runs, another live
//! server's) are read from the store when asked about; nothing loads them all.
//!
//! Adoption is a compare-and-set on the owner column in the store, so two servers (or two
//! calls) can never both adopt one session.
//!
//! A held session that is at rest (no turn queued or running, not being ended, nothing waiting
//! to be flushed) and unused for `hold_idle_seconds` is let go (`Manager::evict_idle`): its
//! whole record is written and committed first, and the next call that needs it adopts it
//! again (this server still owns it, so that is a reload). A long-lived server's memory
//! follows what it runs, not everything it ever ran.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::Session;
use crate::store::{SessionImage, Store, Write};

/// Control over a running (or queued) turn: how to stop it and why.
#[derive(Clone)]
pub(crate) struct TurnControl {
    /// The turn this control belongs to.
    pub index: u32,
    pub cancel: CancellationToken,
    pub reason: Arc<Mutex<Option<String>>>,
}

impl TurnControl {
    /// Ask the turn to stop; the first reason given is the one recorded.
    pub fn stop(&self, reason: &str) {
        self.reason.lock().get_or_insert_with(|| reason.to_string());
        self.cancel.cancel();
    }
}

/// Everything about one held session, under one lock. Held only for short, non-blocking
/// sections: no I/O and no `.await` while it is locked.
pub(crate) struct Live {
    pub session: Session,
    /// Bumped at every image taken for the store; the store never lets an older image
    /// replace a newer one.
    pub version: u64,
    /// The running or queued turn, if any.
    pub control: Option<TurnControl>,
    /// end_session is in progress: no new turn may start.
    pub ending: bool,
    /// Store sequence number of the last status change submitted for this session: readers
    /// wait until it is committed before they report the session.
    pub pending: u64,
    /// Executor events applied since the last flush.
    pub unflushed: u32,
    /// Commands of the running turn already written as progress: (turn, count).
    pub commands_flushed: (u32, usize),
}

impl Live {
    /// Images of the session row and of the given turns, at a new version.
    pub fn images(&mut self, turns: &[u32]) -> Vec<Write> {
        let mut w = self.next_version();
        for &i in turns {
            if let Some(t) = self.session.turn(i) {
                w.push(Write::Turn {
                    session_id: self.session.id.clone(),
                    version: self.version,
                    turn: Box::new(t.clone()),
                });
            }
        }
        w
    }

    /// Progress of the running turn: the session row, the turn's row without its commands,
    /// and only the commands that are new since the last flush. What a turn has already
    /// written is not written again, so a long turn's flushes do not grow with it.
    pub fn progress_images(&mut self) -> Vec<Write> {
        let mut w = self.next_version();
        let version = self.version;
        let id = self.session.id.clone();
        let flushed = self.commands_flushed;
        let Some(t) = self
            .session
            .turns
            .iter_mut()
            .rev()
            .find(|t| t.ended_at.is_none())
        else {
            return w;
        };
        let from = match flushed {
            (i, n) if i == t.index => n.min(t.commands.len()),
            _ => 0,
        };
        if from < t.commands.len() {
            w.push(Write::Commands {
                session_id: id.clone(),
                turn: t.index,
                start: from,
                commands: t.commands[from..].to_vec(),
            });
        }
        // The turn's row without its commands (they are rows of their own while it runs):
        // set them aside for the clone rather than copying them.
        let commands = std::mem::take(&mut t.commands);
        let lite = t.clone();
        t.commands = commands;
        self.commands_flushed = (t.index, t.commands.len());
        w.push(Write::Turn {
            session_id: id,
            version,
            turn: Box::new(lite),
        });
        w
    }

    /// Nothing under way: no turn queued or running, no end in progress, no progress waiting
    /// for the flusher.
    pub fn at_rest(&self) -> bool {
        self.control.is_none()
            && !self.ending
            && self.unflushed == 0
            && !self.session.status.is_active()
    }

    /// Start a new version of the session: bump it, and the write of its row.
    fn next_version(&mut self) -> Vec<Write> {
        self.version += 1;
        self.unflushed = 0;
        vec![Write::Session {
            session: SessionImage::of(&self.session, self.version),
            expect_owner: None,
        }]
    }
}

pub(crate) struct Handle {
    pub live: Mutex<Live>,
    /// Bumped whenever the session changes (after status changes are committed).
    pub changed: watch::Sender<u64>,
    pub id: String,
    /// When the registry last handed this handle out ([`clock`] milliseconds).
    last_used: AtomicU64,
}

/// Milliseconds since this process's first call: a cheap, monotonic clock for `last_used`.
/// tokio's clock, so an engine test with paused time sees `last_used` move as it advances.
fn clock() -> u64 {
    use tokio::time::Instant;
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    millis(START.get_or_init(Instant::now).elapsed())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Handle {
    pub fn new(session: Session, version: u64) -> Arc<Handle> {
        Arc::new(Handle {
            id: session.id.clone(),
            live: Mutex::new(Live {
                session,
                version,
                control: None,
                ending: false,
                pending: 0,
                unflushed: 0,
                commands_flushed: (0, 0),
            }),
            changed: watch::channel(0).0,
            last_used: AtomicU64::new(clock()),
        })
    }

    /// Count the session as used now (a call asked for it, or its turn ended).
    pub fn touch(&self) {
        self.last_used.store(clock(), Ordering::Relaxed);
    }

    /// Whether nothing is under way (see [`Live::at_rest`]); `false` while someone holds
    /// the lock.
    fn at_rest(&self) -> bool {
        self.live.try_lock().is_some_and(|l| l.at_rest())
    }

    pub fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the session is queued or running now (in memory; its change may still be
    /// committing). Cheap: no copy of the session.
    pub fn is_active(&self) -> bool {
        self.live.lock().session.status.is_active()
    }

    /// A copy of the session and the store sequence it depends on.
    pub fn snapshot(&self) -> (Session, u64) {
        let l = self.live.lock();
        (l.session.clone(), l.pending)
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    held: Mutex<BTreeMap<String, Arc<Handle>>>,
}

impl Registry {
    /// The handle, if held (not counted as a use: listings and the flusher look too).
    pub fn get(&self, id: &str) -> Option<Arc<Handle>> {
        self.held.lock().get(id).cloned()
    }

    /// The handle, if held, for a call that uses the session (it stays in memory longer).
    pub fn used(&self, id: &str) -> Option<Arc<Handle>> {
        let h = self.get(id)?;
        h.touch();
        Some(h)
    }

    /// Insert, or return the handle already held for that id.
    pub fn insert(&self, h: Arc<Handle>) -> Arc<Handle> {
        let h = self.held.lock().entry(h.id.clone()).or_insert(h).clone();
        h.touch();
        h
    }

    /// Held sessions that may be let go: at rest, unused for `idle`, and held by no one but
    /// the registry.
    pub fn idle_candidates(&self, idle: Duration) -> Vec<String> {
        let before = clock().saturating_sub(millis(idle));
        let held = self.held.lock();
        held.values()
            .filter(|h| Self::evictable(h, before))
            .map(|h| h.id.clone())
            .collect()
    }

    /// Let go of `saved`: sessions whose whole record was committed at the version given, if
    /// they are still at that version (nothing changed since), at rest and unused; each is
    /// checked under the registry's lock. Returns how many were let go.
    ///
    /// A handle anyone else holds (a call or a turn task has a clone) is kept: clones are only
    /// made from the map under its lock, so a count of one under that lock means no one is
    /// using it, and no one can start to until it is gone from the map.
    pub fn evict(&self, saved: &[(String, u64)], idle: Duration) -> usize {
        let before = clock().saturating_sub(millis(idle));
        let mut held = self.held.lock();
        let mut n = 0;
        for (id, stored) in saved {
            let Some(h) = held.get(id) else { continue };
            let same = h.live.try_lock().is_some_and(|l| l.version == *stored);
            if same && Self::evictable(h, before) {
                held.remove(id);
                n += 1;
            }
        }
        n
    }

    fn evictable(h: &Arc<Handle>, used_before: u64) -> bool {
        Arc::strong_count(h) == 1
            && h.last_used.load(Ordering::Relaxed) <= used_before
            && h.at_rest()
    }

    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    pub fn remove(&self, id: &str) {
        self.held.lock().remove(id);
    }

    pub fn all(&self) -> Vec<Arc<Handle>> {
        self.held.lock().values().cloned().collect()
    }

    /// Held ids starting with `prefix`.
    pub fn ids_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.held
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Whether a server instance is alive, probed off the async workers.
pub(crate) async fn owner_alive(store: &Store, instance: &str) -> bool {
    let store = store.clone();
    let instance = instance.to_string();
    tokio::task::spawn_blocking(move || store.owner_alive(&instance))
        .await
        .unwrap_or(true)
}
