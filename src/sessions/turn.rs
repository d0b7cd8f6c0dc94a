//! One supervisor task per turn: wait for a slot, spawn the executor, pump its output into the
//! session, stop it when asked, and settle the turn.
//!
//! The supervisor owns the child process, the parser and the turn's raw log. It is the only
//! code that changes the session while the turn runs, through one path ([`fold::apply`]); the
//! end of the turn is one committed status change ([`finish`]). Disk work happens elsewhere:
//! raw lines go to the log's blocking writer, progress reaches the database through the
//! engine's batched flusher, and `/proc` scans run on `spawn_blocking`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::fold::{self, Outcome};
use super::lines::{Line, LossyLines};
use super::registry::{Handle, TurnControl};
use super::{Inner, Notice};
use crate::executor::{self, Parser, TurnPlan};
use crate::fleet::Stat;
use crate::model::{Action, SessionStatus, TurnStatus, now};
use crate::process;
use crate::store::Ticket;
use crate::watch::{AbortScope, Firing};

/// Longest stdout line accepted from an executor (a 200 000-character answer is one line).
pub const MAX_LINE: usize = 32 * 1024 * 1024;
const STDERR_TAIL: usize = 8192;
/// Flush progress after this many events even before the flush interval passes.
pub const FLUSH_EVENTS: u32 = 256;

enum Step {
    Line(Option<std::io::Result<Line>>),
    Cancelled,
    TimedOut,
    Exited,
}

/// What a turn's supervisor is handed when the turn is started.
pub(crate) struct Start {
    pub control: TurnControl,
    /// A running slot, when one was free at once (otherwise the turn is queued).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The commit of the turn's start.
    pub ticket: Ticket,
    /// Learns whether that commit held.
    pub started: tokio::sync::oneshot::Sender<Result<(), crate::store::StoreError>>,
    /// How to put the session back if it did not.
    pub undo: super::Undo,
}

/// Run one turn to its end.
pub(crate) async fn run(inner: Arc<Inner>, h: Arc<Handle>, index: u32, start: Start) {
    let Start {
        control,
        permit,
        ticket,
        started,
        undo,
    } = start;
    if let Err(e) = ticket.committed().await {
        // Not recorded, so not started: put the session back as it was.
        {
            let mut l = h.live.lock();
            undo.apply(&mut l.session);
            if l.control.as_ref().is_some_and(|c| c.index == index) {
                l.control = None;
            }
        }
        h.bump();
        let _ = started.send(Err(e));
        return;
    }
    h.bump();
    let _ = started.send(Ok(()));
    let _ = inner.changes.send(h.id.clone());

    let interrupted_reason = |inner: &Inner| {
        control.reason.lock().clone().unwrap_or_else(|| {
            if inner.shutdown.is_cancelled() {
                "the zwarm server shut down while this turn was running. Call converse to resume the same thread.".to_string()
            } else {
                "interrupted".to_string()
            }
        })
    };
    let permit = match permit {
        Some(p) => Some(p),
        None => {
            let p = tokio::select! {
                p = inner.slots.clone().acquire_owned() => p.ok(),
                _ = control.cancel.cancelled() => None,
            };
            if p.is_some() && !control.cancel.is_cancelled() {
                // Queued until now: record that it runs.
                let ticket = {
                    let mut l = h.live.lock();
                    let ts = now();
                    if !l.session.status.is_final()
                        && l.session.turns.last().map(|t| t.index) == Some(index)
                    {
                        l.session.status = SessionStatus::Running;
                    }
                    if let Some(t) = l.session.turn_mut(index) {
                        t.status = TurnStatus::Running;
                        t.started_at = ts.clone();
                    }
                    l.session.updated_at = ts;
                    let resume = l.session.native_id.clone();
                    let mut w = l.images(&[index]);
                    w.push(inner.store.event(
                        "turn_started",
                        Some(&h.id),
                        serde_json::json!({"turn": index, "resume": resume}),
                    ));
                    let t = inner.store.submit(w);
                    l.pending = t.seq;
                    t
                };
                if let Err(e) = ticket.committed().await {
                    tracing::error!(session = %h.id, error = %e, "cannot record that a queued turn started");
                }
                h.bump();
                let _ = inner.changes.send(h.id.clone());
            }
            p
        }
    };
    let mut outcome = Outcome::default();
    if permit.is_none() || control.cancel.is_cancelled() {
        outcome.interrupted = Some(interrupted_reason(&inner));
        finish(&inner, &h, index, outcome, None).await;
        return;
    }
    let (id, adapter, plan, model, working_dir) = {
        let l = h.live.lock();
        let s = &l.session;
        let plan = TurnPlan {
            working_dir: PathBuf::from(&s.working_dir),
            prompt: s.turn(index).map(|t| t.prompt.clone()).unwrap_or_default(),
            resume_id: s.native_id.clone(),
        };
        (
            s.id.clone(),
            s.adapter,
            plan,
            s.model.clone(),
            s.working_dir.clone(),
        )
    };
    let isolation = h.live.lock().session.isolation.clone();
    // Prepare off the async workers: the working dir is checked again (it may have been
    // swapped for a symlink since delegate), the log files opened, the command line built.
    let prep = {
        let inner = inner.clone();
        let id = id.clone();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let dir = match &isolation {
                // A worktree session runs in its worktree, or not at all.
                Some(iso) => super::isolation::check_turn_dir(&inner, &id, iso, &working_dir)?,
                None => inner.check_dir(Some(&working_dir)).map_err(|e| {
                    format!("the session's working_dir can no longer be used: {e}")
                })?,
            };
            if dir.display().to_string() != working_dir {
                return Err(format!(
                    "the session's working_dir `{working_dir}` now resolves to `{}` (a symlink was put in its place?); zwarm does not follow it. Start a new session in the directory you mean.",
                    dir.display()
                ));
            }
            if let Some(n) = &plan.resume_id
                && !crate::model::valid_native_id(n)
            {
                return Err(format!(
                    "the session's stored executor thread id is not valid (`{}`); start a new session with delegate.",
                    crate::text::one_line(n, 60)
                ));
            }
            let log = inner
                .store
                .turn_log(&id, index)
                .map_err(|e| format!("could not open the turn logs: {e}"))?;
            let spec = executor::build_process(
                adapter,
                &inner.cfg,
                &plan,
                model.as_deref(),
                &log.last_message,
            )
            .map_err(|e| e.to_string())?;
            Ok((log, spec))
        })
        .await
    };
    let (log, spec) = match prep {
        Ok(Ok(x)) => x,
        Ok(Err(msg)) => {
            outcome.failed = Some((msg, None));
            finish(&inner, &h, index, outcome, None).await;
            return;
        }
        Err(e) => {
            outcome.failed = Some((format!("internal error preparing the turn: {e}"), None));
            finish(&inner, &h, index, outcome, None).await;
            return;
        }
    };
    let spec = crate::telemetry::with_trace_env(spec);
    let marker = format!("{id}.{index}");
    let mut child = match process::spawn(&spec, &marker).await {
        Ok(c) => c,
        Err(e) => {
            outcome.failed = Some((
                format!(
                    "could not start {} ({}): {e}",
                    adapter.as_str(),
                    spec.program.display()
                ),
                None,
            ));
            log.close().await;
            finish(&inner, &h, index, outcome, None).await;
            return;
        }
    };
    let pgid = child.id();
    let _registered = process::ExecutorGuard(pgid);
    tracing::info!(session = %id, turn = index, pid = ?pgid, program = %spec.program.display(), "executor started");
    let stderr_task = child.stderr.take().map(|mut err| {
        let sink = log.stderr_sink();
        let mut events = StderrEvents::new(inner.clone(), h.clone(), index, adapter);
        tokio::spawn(async move {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 8192];
            loop {
                match err.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sink.write(&buf[..n]);
                        events.feed(&buf[..n]);
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > STDERR_TAIL * 2 {
                            tail.drain(..tail.len() - STDERR_TAIL);
                        }
                    }
                }
            }
            String::from_utf8_lossy(&tail).into_owned()
        })
    });
    let Some(stdout) = child.stdout.take() else {
        outcome.failed = Some(("executor stdout was not captured".into(), None));
        process::terminate(&mut child, &marker, Duration::from_millis(100)).await;
        log.close().await;
        finish(&inner, &h, index, outcome, None).await;
        return;
    };
    let mut lines = FramedRead::new(stdout, LossyLines::new(MAX_LINE));
    let mut parser = Parser::new(adapter);
    let mut trace = crate::telemetry::TurnTrace::default();
    let deadline = Instant::now() + Duration::from_secs(inner.cfg.turn_timeout_seconds);
    let mut exited = false;
    let mut drain_until: Option<Instant> = None;
    let mut skipped_lines = 0u64;
    loop {
        let step = tokio::select! {
            biased;
            _ = control.cancel.cancelled(), if outcome.interrupted.is_none() => Step::Cancelled,
            _ = tokio::time::sleep_until(deadline), if outcome.interrupted.is_none() => Step::TimedOut,
            l = lines.next() => Step::Line(l),
            _ = child.wait(), if !exited => Step::Exited,
            _ = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => Step::Line(None),
        };
        match step {
            Step::Line(Some(Ok(Line::Text(line)))) => {
                log.out(line.as_bytes());
                for ev in parser.parse_line(&line) {
                    trace.event(&ev);
                    apply(&inner, &h, index, ev, &mut outcome);
                }
            }
            Step::Line(Some(Ok(Line::TooLong(n)))) => {
                skipped_lines += 1;
                tracing::warn!(session = %id, bytes = n, "executor line longer than {MAX_LINE} bytes skipped");
            }
            Step::Line(Some(Err(e))) => {
                tracing::warn!(session = %id, error = %e, "reading executor output failed");
                break;
            }
            Step::Line(None) => break,
            Step::Cancelled | Step::TimedOut => {
                let reason = if matches!(step, Step::TimedOut) {
                    format!(
                        "the turn ran longer than turn_timeout_seconds ({} s) and was stopped. Call converse to continue it in smaller steps, or raise turn_timeout_seconds.",
                        inner.cfg.turn_timeout_seconds
                    )
                } else {
                    interrupted_reason(&inner)
                };
                tracing::info!(session = %id, turn = index, %reason, "interrupting executor");
                outcome.interrupted = Some(reason);
                let stop_by = *inner.stop_by.lock();
                match stop_by.filter(|_| inner.shutdown.is_cancelled()) {
                    // Shutting down: everything must be stopped by the server's deadline.
                    Some(by) => {
                        process::stop_turn(&mut child, &marker, Duration::from_millis(400), by)
                            .await;
                    }
                    None => {
                        let grace = Duration::from_secs(inner.cfg.interrupt_grace_seconds);
                        process::terminate(&mut child, &marker, grace).await;
                    }
                }
                exited = true;
                // Read what the executor printed while stopping, briefly.
                let mut drain = Instant::now() + Duration::from_millis(300);
                if let Some(by) = stop_by {
                    drain = drain.min(by);
                }
                drain_until.get_or_insert(drain);
            }
            Step::Exited => {
                exited = true;
                // Output still in the pipe is read; a grandchild holding it open is not waited for.
                drain_until.get_or_insert(Instant::now() + Duration::from_secs(2));
            }
        }
    }
    if !exited
        && tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
    {
        process::terminate(&mut child, &marker, Duration::from_millis(500)).await;
    }
    let exit = child.try_wait().ok().flatten();
    crate::telemetry::turn_exit(exit.as_ref());
    {
        let marker = marker.clone();
        let _ =
            tokio::task::spawn_blocking(move || process::cleanup_after_exit(pgid, &marker)).await;
    }
    let stderr_tail = match stderr_task {
        Some(t) => tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default(),
        None => String::new(),
    };
    let last_path = log.last_message.clone();
    log.close().await;
    let last_message = tokio::task::spawn_blocking(move || {
        let m = std::fs::read_to_string(&last_path)
            .ok()
            .filter(|s| !s.trim().is_empty());
        let _ = std::fs::remove_file(&last_path);
        m
    })
    .await
    .ok()
    .flatten();
    drop(permit);
    if skipped_lines > 0 {
        // Committed before the turn's end is reported, like the end itself.
        let ev = inner.store.event(
            "lines_skipped",
            Some(&id),
            serde_json::json!({"turn": index, "lines": skipped_lines, "max_bytes": MAX_LINE}),
        );
        let _ = inner.store.submit(vec![ev]).committed().await;
    }
    if !outcome.completed && outcome.failed.is_none() && outcome.interrupted.is_none() {
        let s = h.live.lock().session.clone();
        outcome.failed = Some((
            fold::exit_failure(&s, exit, &stderr_tail, outcome.last_warning.as_deref()),
            None,
        ));
    }
    finish(&inner, &h, index, outcome, last_message).await;
}

/// Events an executor reports on stderr ([`executor::parse_stderr_line`]), applied as the
/// lines arrive. Lines are bounded; a longer one is cut.
struct StderrEvents {
    inner: Arc<Inner>,
    h: Arc<Handle>,
    index: u32,
    adapter: crate::model::Adapter,
    line: Vec<u8>,
}

impl StderrEvents {
    const MAX_LINE: usize = 64 * 1024;

    fn new(inner: Arc<Inner>, h: Arc<Handle>, index: u32, adapter: crate::model::Adapter) -> Self {
        StderrEvents {
            inner,
            h,
            index,
            adapter,
            line: Vec::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
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
/// listeners. Persisted by the flusher, not here.
fn apply(
    inner: &Arc<Inner>,
    h: &Handle,
    index: u32,
    ev: crate::event::ExecutorEvent,
    outcome: &mut Outcome,
) {
    let (message, firings, flush_now) = {
        let mut l = h.live.lock();
        let message = ev.summary(l.session.adapter.as_str());
        let significant = fold::apply(&mut l.session, index, &ev, outcome);
        if let Some(line) = &message {
            l.session.push_progress(line.clone());
        }
        l.session.updated_at = now();
        if significant {
            l.unflushed += 1;
        }
        let mut flush_now = l.unflushed >= FLUSH_EVENTS;
        if matches!(ev, crate::event::ExecutorEvent::SessionStarted { .. }) {
            // The executor's thread id is what makes the session resumable: commit it now,
            // and let readers report it only once it is on disk.
            let w = l.images(&[index]);
            let t = inner.store.submit(w);
            l.pending = t.seq;
            flush_now = false;
        }
        // Per-event watchers are cheap (no I/O): they run on the session as it is.
        let firings = inner.watchers.on_event(&l.session, &ev);
        (message, firings, flush_now)
    };
    inner.mark_dirty(&h.id, flush_now);
    if !firings.is_empty() {
        record_firings(inner, h, Some(index), &firings);
    }
    h.bump();
    let _ = inner.changes.send(h.id.clone());
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
    let stop = {
        let mut l = h.live.lock();
        let (mut w, stop) = note_firings(inner, &mut l, &h.id, turn, firings);
        if stop.is_some() {
            w.extend(l.images(&[]));
        }
        let t = inner.store.submit(w);
        l.pending = t.seq;
        stop
    };
    enforce(inner, &h.id, firings, stop);
}

/// Under the session lock: the notes and events for `firings`, and, for a session-scoped
/// abort, the session marked aborted and the running turn to stop. The caller submits the
/// writes (with a fresh image when a turn is to stop) and then calls [`enforce`].
fn note_firings(
    inner: &Inner,
    l: &mut super::registry::Live,
    id: &str,
    turn: Option<u32>,
    firings: &[Firing],
) -> (
    Vec<crate::store::Write>,
    Option<(Option<TurnControl>, String)>,
) {
    let mut w = Vec::new();
    for f in firings {
        let note = f.note(turn);
        l.session.watcher_notes.push(note.clone());
        w.push(crate::store::Write::Note {
            session_id: id.to_string(),
            note,
        });
        w.push(inner.store.event(
            "watcher_fired",
            Some(id),
            serde_json::json!({"turn": turn, "watcher": f.watcher, "action": f.action, "message": f.message}),
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
        w.push(inner.store.event(
            "session_aborted",
            Some(id),
            serde_json::json!({"reason": reason}),
        ));
        stop = Some((l.control.clone(), reason));
    }
    (w, stop)
}

/// After the notes are submitted: log the firings and stop what an abort stops.
fn enforce(
    inner: &Arc<Inner>,
    id: &str,
    firings: &[Firing],
    stop: Option<(Option<TurnControl>, String)>,
) {
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
        inner.store.log(
            "watchers_abort",
            Some(id),
            serde_json::json!({"reason": reason}),
        );
    }
}

/// The end of a turn: settle it, let the after-turn watchers speak, commit the status change
/// (with `turn_finished` in the same commit), then wake waiters. Slow watcher checks run
/// afterwards, off the request path.
pub(crate) async fn finish(
    inner: &Arc<Inner>,
    h: &Arc<Handle>,
    index: u32,
    outcome: Outcome,
    last_message: Option<String>,
) {
    // A worktree session's turn is committed to its branch before the turn is reported.
    super::isolation::commit_turn(inner, h, index).await;
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
    let (ticket, status, error, stop) = {
        let mut l = h.live.lock();
        let (status, error) = fold::settle(
            &mut l.session,
            index,
            &outcome,
            last_message.as_deref(),
            &ended_at,
        );
        // The watchers' notes go in the same commit as the turn's end.
        let (notes, stop) = note_firings(inner, &mut l, &h.id, Some(index), &firings);
        // Release this turn's control in the same critical section: once the status says the
        // turn is over, a converse may start the next turn and install its own.
        if l.control.as_ref().is_some_and(|c| c.index == index) {
            l.control = None;
        }
        let mut w = l.images(&[index]);
        w.push(inner.store.event(
            "turn_finished",
            Some(&h.id),
            serde_json::json!({"turn": index, "status": status, "error": error}),
        ));
        w.extend(notes);
        let t = inner.store.submit(w);
        l.pending = t.seq;
        (t, status, error, stop)
    };
    if !firings.is_empty() {
        enforce(inner, &h.id, &firings, stop);
    }
    if let Err(e) = ticket.committed().await {
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
    h.bump();
    let _ = inner.changes.send(h.id.clone());
    tracing::info!(session = %h.id, turn = index, ?status, "turn finished");
    // Slow checks (a bounded git scan) after the result is out.
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
            h2.bump();
            let _ = inner2.changes.send(h2.id.clone());
        }
    });
}
