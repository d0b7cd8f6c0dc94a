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
//! transaction holding it is committed, so nothing is reported before it is on disk. The
//! thread never waits for more groups to arrive: a caller that waits for its commit before
//! submitting the next pays one sync per call, and nothing here can make that cheaper
//! without acknowledging a change before it is durable.

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

struct Group {
    seq: u64,
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

pub(super) struct Handle {
    tx: parking_lot::Mutex<mpsc::Sender<Group>>,
    next: AtomicU64,
    applied: watch::Receiver<u64>,
    crash: Arc<Crash>,
}

/// A test's simulated crash: groups after `at` are never written, and the writer stops.
struct Crash {
    at: AtomicU64,
    halted: CancellationToken,
}

impl Handle {
    pub(super) fn submit(&self, writes: Vec<Write>) -> Ticket {
        let (reply, rx) = oneshot::channel();
        // Sequence numbers and channel order agree: both are taken under the same lock.
        let tx = self.tx.lock();
        let seq = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(mpsc::SendError(g)) = tx.send(Group { seq, writes, reply }) {
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
    std::thread::Builder::new()
        .name("zwarm-store".into())
        .spawn(move || run(conn, path, rx, applied_tx, &c))
        .map_err(|err| StoreError::Io {
            path: "store writer thread".into(),
            err,
        })?;
    Ok(Handle {
        tx: parking_lot::Mutex::new(tx),
        next: AtomicU64::new(0),
        applied,
        crash,
    })
}

fn run(
    mut conn: Connection,
    path: PathBuf,
    rx: mpsc::Receiver<Group>,
    applied: watch::Sender<u64>,
    crash: &Crash,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(g) => batch.push(g),
                Err(_) => break,
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
            apply_batch(&mut conn, &batch)
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
fn apply_batch(conn: &mut Connection, batch: &[Group]) -> Vec<Result<(), StoreError>> {
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
    results
}
