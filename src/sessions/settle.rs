//! What happens to a session while its turn runs and when it ends: executor events applied
//! ([`apply`]), watcher firings recorded and enforced ([`record_firings`]), and the end of the
//! turn settled and committed ([`finish`]). Every change goes through the owner's commit path
//! ([`super::owner`]).

use std::sync::Arc;

use super::fold::{self, Outcome};
use super::registry::{Handle, Live, TurnControl};
use super::{Inner, Notice};
use crate::event::ExecutorEvent;
use crate::executor;
use crate::fleet::Stat;
use crate::log_event::LogEvent;
use crate::model::{Action, SessionStatus, now};
use crate::store::Write;
use crate::watch::{AbortScope, Firing};

/// Flush progress after this many events even before the flush interval passes.
pub const FLUSH_EVENTS: u32 = 256;

/// Events an executor reports on stderr ([`executor::parse_stderr_line`]), applied as the
/// lines arrive. Lines are bounded; a longer one is cut.
pub(crate) struct StderrEvents {
    inner: Arc<Inner>,
    h: Arc<Handle>,
    index: u32,
    adapter: crate::model::Adapter,
    line: Vec<u8>,
}

impl StderrEvents {
    const MAX_LINE: usize = 64 * 1024;

    pub fn new(
        inner: Arc<Inner>,
        h: Arc<Handle>,
        index: u32,
        adapter: crate::model::Adapter,
    ) -> Self {
        StderrEvents {
            inner,
            h,
            index,
            adapter,
            line: Vec::new(),
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            self.push(&bytes[..nl]);
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if let Some(ev) = executor::parse_stderr_line(self.adapter, &line) {
                // Tool errors only: nothing here decides how the turn ends.
                apply(
                    &self.inner,
                    &self.h,
                    self.index,
                    ev,
                    &mut Outcome::default(),
                );
            }
            bytes = &bytes[nl + 1..];
        }
        self.push(bytes);
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = Self::MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Apply one executor event: fold it into the session, run the per-event watchers, tell
/// listeners. Persisted by the flusher, not here — except the executor's thread id, which is
/// what makes the session resumable: that is staged at once, and readers report it only once
/// it is on disk.
pub(crate) fn apply(
    inner: &Arc<Inner>,
    h: &Handle,
    index: u32,
    ev: ExecutorEvent,
    outcome: &mut Outcome,
) {
    let resumable = matches!(ev, ExecutorEvent::SessionStarted { .. });
    let mut change = |l: &mut Live, w: &mut super::owner::Writes| {
        let message = ev.summary(l.session.adapter.as_str());
        let significant = fold::apply(&mut l.session, index, &ev, outcome);
        if let Some(line) = &message {
            l.session.push_progress(line.clone());
        }
        l.session.updated_at = now();
        if significant {
            l.unflushed += 1;
        }
        let flush_now = !resumable && l.unflushed >= FLUSH_EVENTS;
        if resumable {
            w.extend(l.images(&[index]));
        }
        // Per-event watchers are cheap (no I/O): they run on the session as it is.
        let firings = inner.watchers.on_event(&l.session, &ev);
        (message, firings, flush_now)
    };
    let (message, firings, flush_now) = if resumable {
        inner.stage_ok(h, change).value
    } else {
        let mut l = h.live.lock();
        change(&mut l, &mut Default::default())
    };
    inner.mark_dirty(&h.id, flush_now);
    if !firings.is_empty() {
        record_firings(inner, h, Some(index), &firings);
    }
    inner.publish(h);
    let _ = inner.notices.send(Notice {
        session_id: h.id.clone(),
        turn: index,
        event: ev,
        message,
    });
}

/// Keep watcher firings on the session (and in the log), and enforce an abort: a server-wide
/// one stops every turn; a session's stops that session's turn and its further turns.
pub(crate) fn record_firings(
    inner: &Arc<Inner>,
    h: &Handle,
    turn: Option<u32>,
    firings: &[Firing],
) {
    let stop = inner
        .stage_ok(h, |l, w| {
            let stop = note_firings(inner, l, w, turn, firings);
            if stop.is_some() {
                w.extend(l.images(&[]));
            }
            stop
        })
        .value;
    enforce(inner, &h.id, firings, stop);
}

type Stop = Option<(Option<TurnControl>, String)>;

/// Under the session lock: the notes and events for `firings`, and, for a session-scoped
/// abort, the session marked aborted and the running turn to stop. The caller adds a fresh
/// image when a turn is to stop, and then calls [`enforce`].
fn note_firings(
    inner: &Inner,
    l: &mut Live,
    w: &mut super::owner::Writes,
    turn: Option<u32>,
    firings: &[Firing],
) -> Stop {
    let id = l.session.id.clone();
    for f in firings {
        let note = f.note(turn);
        l.session.watcher_notes.push(note.clone());
        w.push(Write::Note {
            session_id: id.clone(),
            note,
        });
        w.push(inner.event(
            LogEvent::WatcherFired {
                turn,
                watcher: f.watcher.to_string(),
                action: f.action,
                message: f.message.clone(),
            },
            Some(&id),
        ));
    }
    let excess = l
        .session
        .watcher_notes
        .len()
        .saturating_sub(crate::store::NOTES_KEPT);
    l.session.watcher_notes.drain(..excess);
    let mut stop = None;
    if let Some(a) = crate::watch::winner(firings)
        && a.action == Action::Abort
        && a.scope == AbortScope::Session
    {
        let reason = format!("aborted by watcher {}: {}", a.watcher, a.message);
        l.session.aborted.get_or_insert(reason.clone());
        w.push(inner.event(
            LogEvent::SessionAborted {
                reason: reason.clone(),
            },
            Some(&id),
        ));
        stop = Some((l.control.clone(), reason));
    }
    stop
}

/// After the notes are submitted: log the firings and stop what an abort stops.
fn enforce(inner: &Arc<Inner>, id: &str, firings: &[Firing], stop: Stop) {
    for f in firings {
        crate::telemetry::watcher_fired(f);
        tracing::info!(session = %id, watcher = %f.watcher, action = ?f.action, message = %f.message, "watcher fired");
    }
    if let Some((Some(c), reason)) = stop {
        c.stop(&reason);
    }
    if let Some(a) = crate::watch::winner(firings)
        && a.action == Action::Abort
        && a.scope == AbortScope::Server
    {
        let reason = format!("aborted by watcher {}: {}", a.watcher, a.message);
        inner.interrupt_all(&reason);
        inner.log(LogEvent::WatchersAbort { reason }, Some(id));
    }
}

/// The end of a turn: settle it, let the after-turn watchers speak, commit the status change
/// (with `turn_finished` in the same commit), then wake waiters. Slow watcher checks run
/// afterwards, off the request path.
pub(crate) async fn finish(
    inner: &Arc<Inner>,
    h: &Arc<Handle>,
    index: u32,
    mut outcome: Outcome,
    last_message: Option<String>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    // A worktree session's turn is committed to its branch before the turn is reported; a
    // worktree redirected away from its own git dir fails the turn.
    if let Some(why) = super::isolation::commit_turn(inner, h, index).await
        && outcome.interrupted.is_none()
        && outcome.failed.is_none()
    {
        outcome.failed = Some((why, None));
    }
    let ended_at = now();
    // Settle a copy first, for the watchers; the live session is settled identically below.
    let mut copy = {
        let l = h.live.lock();
        if l.session.turn(index).is_some_and(|t| t.ended_at.is_some()) {
            return;
        }
        l.session.clone()
    };
    fold::settle(
        &mut copy,
        index,
        &outcome,
        last_message.as_deref(),
        &ended_at,
    );
    let firings = {
        let mut fleet = inner.fleet.lock().await;
        fleet.fleet.update(Stat::of(&copy));
        inner.watchers.after_turn(&copy, &fleet.fleet)
    };
    crate::telemetry::turn_finished(&copy, index);
    let staged = inner.stage_ok(h, |l, w| {
        let (status, error) = fold::settle(
            &mut l.session,
            index,
            &outcome,
            last_message.as_deref(),
            &ended_at,
        );
        // The watchers' notes go in the same commit as the turn's end.
        let mut notes = super::owner::Writes::default();
        let stop = note_firings(inner, l, &mut notes, Some(index), &firings);
        // Release this turn's control in the same critical section: once the status says the
        // turn is over, a converse may start the next turn and install its own.
        if l.control.as_ref().is_some_and(|c| c.index == index) {
            l.control = None;
        }
        w.extend(l.images(&[index]));
        // What the flusher would have written of this turn's progress is in this commit.
        inner.mark_clean(&h.id);
        w.push(inner.event(
            LogEvent::TurnFinished {
                turn: index,
                status,
                error: error.clone(),
            },
            Some(&h.id),
        ));
        w.extend(notes.w);
        (status, error, stop)
    });
    let ((status, error, stop), staged) = staged.split();
    // The running slot is handed on only now: a queued turn's start is then always logged
    // after this turn's end (the store keeps submission order).
    drop(slot);
    if !firings.is_empty() {
        enforce(inner, &h.id, &firings, stop);
    }
    let ((), r) = staged.committed().await;
    if let Err(e) = r {
        // Not on disk, so not reported as finished: say so, and keep trying (the flusher
        // writes the whole session again, and succeeds once the disk has room).
        tracing::error!(session = %h.id, turn = index, error = %e, "cannot record the end of a turn");
        {
            let mut l = h.live.lock();
            let was = match &error {
                Some(err) => format!("failed ({err})"),
                None => "finished".into(),
            };
            l.session.status = SessionStatus::Failed;
            l.session.error = Some(format!(
                "the turn {was}, but zwarm could not save that to its state ({e}). The executor's answer is shown, but a restart would report this turn as interrupted. Free disk space or fix the state dir; zwarm keeps retrying."
            ));
        }
        inner.mark_dirty(&h.id, false);
    }
    // A turn's end counts as a use: the session stays in memory for hold_idle_seconds.
    h.touch();
    inner.publish(h);
    tracing::info!(session = %h.id, turn = index, ?status, "turn finished");
    after_turn_in_background(inner, h, index, copy);
}

/// Slow checks (a bounded git scan) after the result is out, when a watcher has any for this
/// turn.
fn after_turn_in_background(
    inner: &Arc<Inner>,
    h: &Arc<Handle>,
    index: u32,
    copy: crate::model::Session,
) {
    if !inner.watchers.wants_background(&copy) {
        return;
    }
    let inner2 = inner.clone();
    let h2 = h.clone();
    let turn_trace = crate::telemetry::capture();
    inner.tasks.spawn(async move {
        let w = inner2.clone();
        let firings = tokio::task::spawn_blocking(move || w.watchers.after_turn_background(&copy))
            .await
            .unwrap_or_default();
        if !firings.is_empty() {
            let _trace = crate::telemetry::after_turn_span(&turn_trace).entered();
            record_firings(&inner2, &h2, Some(index), &firings);
            inner2.publish(&h2);
        }
    });
}
