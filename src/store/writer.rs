//! The one thread that writes the database.
//!
//! Groups of writes arrive on a channel in the order they were submitted. The thread takes
//! everything queued at each wake-up, applies it in one transaction (one fsync), each group in
//! a savepoint of its own, then answers every group's ticket. So ordering is submission order,
//! a burst of progress costs one commit, and no async worker ever waits on the disk.
//!
//! **Group commit.** While one transaction is being synced, the groups submitted meanwhile
//! queue up and go into the next one together: many sessions' status changes (100 `delegate`s
//! sent back to back) share one fsync (measured: 100 pipelined async `delegate`s all answered
//! in about 3 syncs' time; docs/benchmarks.md). A group is answered only after the
//! transaction holding it is committed, so nothing is reported before it is on disk. A caller
//! that waits for its commit before submitting the next pays one sync per call, and nothing
//! here can make that cheaper without acknowledging a change before it is durable.
//!
//! **Lazy groups.** A group nobody waits for at once (a queued turn recorded as running, the
//! flusher's progress) may be submitted lazy ([`Handle::submit_lazy`]): when everything queued
//! is lazy, the thread waits up to [`LAZY_WAIT`] for another group and commits them together.
//! Under load each turn's end commit then carries the next turn's "running" record, instead of
//! each paying a sync of its own (one fsync per turn fewer; docs/benchmarks.md). Otherwise the
//! thread never waits for more groups to arrive.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{StoreError, Ticket, Write, db};

/// Most groups in one transaction.
const MAX_BATCH: usize = 512;

/// Longest a lazy group waits for company before it is committed alone.
pub(super) const LAZY_WAIT: std::time::Duration = std::time::Duration::from_millis(3);

struct Group {
    seq: u64,
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<(), StoreError>>,
    /// May wait (up to [`LAZY_WAIT`]) to share a transaction with a later group.
    lazy: bool,
}

pub(super) struct Handle {
    tx: parking_lot::Mutex<mpsc::Sender<Group>>,
    next: AtomicU64,
    applied: watch::Receiver<u64>,
    crash: Arc<Crash>,
    /// Transactions committed so far (for tests).
    transactions: Arc<AtomicU64>,
}

/// A test's simulated crash: groups after `at` are never written, and the writer stops.
struct Crash {
    at: AtomicU64,
    halted: CancellationToken,
}

impl Handle {
    pub(super) fn submit(&self, writes: Vec<Write>) -> Ticket {
        self.send(writes, false)
    }

    /// [`Handle::submit`] for a group nobody waits for at once: it may wait up to
    /// [`LAZY_WAIT`] to be committed together with the next group.
    pub(super) fn submit_lazy(&self, writes: Vec<Write>) -> Ticket {
        self.send(writes, true)
    }

    /// Transactions committed so far.
    pub(super) fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::SeqCst)
    }

    fn send(&self, writes: Vec<Write>, lazy: bool) -> Ticket {
        let (reply, rx) = oneshot::channel();
        // Sequence numbers and channel order agree: both are taken under the same lock.
        let tx = self.tx.lock();
        let seq = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(mpsc::SendError(g)) = tx.send(Group {
            seq,
            writes,
            reply,
            lazy,
        }) {
            let _ = g.reply.send(Err(StoreError::Closed));
        }
        Ticket { seq, rx }
    }

    pub(super) fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Commit at most `groups` more groups (counting those submitted and not yet committed),
    /// then stop as a crash would: nothing later is written, and every later group fails.
    /// The token is cancelled when the writer has stopped.
    pub(super) fn crash_after(&self, groups: u64) -> CancellationToken {
        let _tx = self.tx.lock();
        let at = self.next.load(Ordering::SeqCst).saturating_add(groups);
        self.crash.at.store(at, Ordering::SeqCst);
        self.crash.halted.clone()
    }
}

pub(super) fn start(conn: Connection, path: PathBuf) -> Result<Handle, StoreError> {
    let (tx, rx) = mpsc::channel::<Group>();
    let (applied_tx, applied) = watch::channel(0u64);
    let crash = Arc::new(Crash {
        at: AtomicU64::new(u64::MAX),
        halted: CancellationToken::new(),
    });
    let c = crash.clone();
    let transactions = Arc::new(AtomicU64::new(0));
    let t = transactions.clone();
    std::thread::Builder::new()
        .name("zwarm-store".into())
        .spawn(move || run(conn, path, rx, applied_tx, &c, &t))
        .map_err(|err| StoreError::Io {
            path: "store writer thread".into(),
            err,
        })?;
    Ok(Handle {
        tx: parking_lot::Mutex::new(tx),
        next: AtomicU64::new(0),
        applied,
        crash,
        transactions,
    })
}

fn run(
    mut conn: Connection,
    path: PathBuf,
    rx: mpsc::Receiver<Group>,
    applied: watch::Sender<u64>,
    crash: &Crash,
    transactions: &AtomicU64,
) {
    // Everything queued now, up to MAX_BATCH.
    let take_queued = |batch: &mut Vec<Group>| {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(g) => batch.push(g),
                Err(_) => break,
            }
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        take_queued(&mut batch);
        if batch.iter().all(|g| g.lazy) {
            // Nobody waits for these at once: give the next group a moment to join them.
            let until = std::time::Instant::now() + LAZY_WAIT;
            while batch.len() < MAX_BATCH {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(g) => {
                        batch.push(g);
                        take_queued(&mut batch);
                        if batch.iter().any(|g| !g.lazy) {
                            break;
                        }
                    }
                    // Waited long enough, or the store is closing: commit what there is.
                    Err(_) => break,
                }
            }
        }
        let at = crash.at.load(Ordering::SeqCst);
        let crashed = batch.iter().any(|g| g.seq > at);
        if crashed {
            // Dropped unanswered: their tickets fail, as after a crash.
            batch.retain(|g| g.seq <= at);
        }
        let last = batch.last().map(|g| g.seq);
        let results = if batch.is_empty() {
            Vec::new()
        } else {
            apply_batch(&mut conn, &batch, transactions)
        };
        for (g, r) in batch.into_iter().zip(results) {
            if let Err(e) = &r {
                tracing::error!(path = %path.display(), error = %e, "state write failed");
            }
            let _ = g.reply.send(r);
        }
        if let Some(last) = last {
            applied.send_replace(last);
        }
        if crashed {
            crash.halted.cancel();
            return;
        }
    }
}

/// Apply a batch in one transaction; a group that fails is rolled back alone.
fn apply_batch(
    conn: &mut Connection,
    batch: &[Group],
    transactions: &AtomicU64,
) -> Vec<Result<(), StoreError>> {
    let db_err = |err: rusqlite::Error| StoreError::Db {
        path: "zwarm.db".into(),
        err,
    };
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            return batch
                .iter()
                .map(|_| {
                    Err(StoreError::Commit(format!(
                        "cannot begin a transaction: {msg}"
                    )))
                })
                .collect();
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut tx = tx;
    for g in batch {
        let r = (|| -> Result<(), StoreError> {
            let mut sp = tx.savepoint().map_err(db_err)?;
            for w in &g.writes {
                if !db::apply(&sp, w).map_err(db_err)? {
                    let id = match w {
                        Write::Session { session, .. } => session.row.id.clone(),
                        _ => String::new(),
                    };
                    sp.rollback().map_err(db_err)?;
                    return Err(StoreError::Conflict(id));
                }
            }
            sp.commit().map_err(db_err)
        })();
        results.push(r);
    }
    if let Err(e) = tx.commit() {
        let msg = e.to_string();
        return batch
            .iter()
            .map(|_| Err(StoreError::Commit(msg.clone())))
            .collect();
    }
    transactions.fetch_add(1, Ordering::SeqCst);
    results
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test
    use super::super::Store;

    fn event(store: &Store, n: u32) -> super::Write {
        store.event("test", None, serde_json::json!({ "n": n }))
    }

    /// A lazy group alone is still committed (after its short wait), and an urgent group
    /// submitted while it waits takes it along: one transaction, one sync, for both.
    #[tokio::test]
    async fn a_lazy_group_shares_the_next_commit_and_never_waits_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("store");
        store.sync().await;
        let before = store.transactions();
        let alone = store.submit_lazy(vec![event(&store, 1)]);
        tokio::time::timeout(std::time::Duration::from_secs(10), alone.committed())
            .await
            .expect("a lazy group alone is committed")
            .expect("committed");
        assert_eq!(store.transactions(), before + 1);
        // Lazy, then urgent 1 ms later (by then the writer has taken the lazy group alone,
        // and without the wait would have committed it): one transaction. Tried a few times,
        // in case this thread was descheduled for longer than the lazy wait in between.
        let mut shared = false;
        for n in 0..5 {
            let t0 = store.transactions();
            let lazy = store.submit_lazy(vec![event(&store, 10 + n)]);
            std::thread::sleep(super::LAZY_WAIT / 3);
            let urgent = store.submit(vec![event(&store, 20 + n)]);
            urgent.committed().await.expect("urgent committed");
            lazy.committed().await.expect("lazy committed");
            if store.transactions() == t0 + 1 {
                shared = true;
                break;
            }
        }
        assert!(
            shared,
            "a lazy group and the urgent one after it never shared a commit"
        );
        let events = store.recent_events(100).await.expect("events");
        let ns: Vec<u64> = events
            .iter()
            .filter_map(|e| e["data"]["n"].as_u64().or_else(|| e["n"].as_u64()))
            .collect();
        assert!(
            ns.contains(&1),
            "the lone lazy event was written: {events:?}"
        );
    }
}
