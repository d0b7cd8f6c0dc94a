//! One supervisor task per turn, in steps: [`begin`] (the start is committed), [`take_slot`]
//! (a queued turn waits for a running slot), [`prepare`] (checks and the launch, off the async
//! workers; a turn that got its slot at once prepares while its start commits), [`execute`] (the runner starts the executor; its output is pumped into the
//! session until it ends or is stopped), then [`super::settle::finish`] (one committed status
//! change).
//!
//! The supervisor owns the running turn (through the [`Runner`](crate::runner::Runner)'s
//! handle), the parser and the turn's raw log. It is the only code that changes the session
//! while the turn runs, through one path ([`super::settle::apply`]). Disk work happens
//! elsewhere: raw lines go to the log's blocking writer, progress reaches the database through
//! the engine's batched flusher.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::fold::Outcome;
use super::lines::{Line, LossyLines, SkipBanner};
use super::registry::{Handle, TurnControl};
pub(crate) use super::settle::finish;
use super::settle::{StderrEvents, apply};
use super::{Inner, ManagerError};
use crate::executor::{self, ExecutorError, LaunchContext, Parser, TurnPlan};
use crate::log_event::LogEvent;
use crate::model::{Adapter, SessionStatus, TurnStatus, now};
use crate::runner::{Finished, Launch, Leftovers, RunningTurn, TurnProcess};
use crate::store::scratch::Scratch;
use crate::store::{StoreError, TurnLog};

/// Longest stdout line accepted from an executor (a 200 000-character answer is one line).
pub const MAX_LINE: usize = 32 * 1024 * 1024;
const STDERR_TAIL: usize = 8192;

/// Why a turn could not be started (each is recorded as the turn's failure).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TurnError {
    #[error("the session's working_dir can no longer be used: {0}")]
    Dir(ManagerError),
    #[error("{0}")]
    Worktree(super::isolation::WorktreeCheck),
    #[error(
        "the session's working_dir `{was}` now resolves to `{now}` (a symlink was put in its place?); zwarm does not follow it. Start a new session in the directory you mean."
    )]
    Moved { was: String, now: String },
    #[error(
        "the session's stored executor thread id is not valid (`{0}`); start a new session with delegate."
    )]
    BadNativeId(String),
    #[error("could not open the turn logs: {0}")]
    Logs(StoreError),
    #[error("{0}")]
    Launch(ExecutorError),
    #[error("internal error preparing the turn: {0}")]
    Internal(String),
    #[error("could not start {adapter} ({program}): {err}")]
    Start {
        adapter: &'static str,
        program: String,
        err: crate::runner::RunnerError,
    },
    #[error("executor stdout was not captured")]
    NoStdout,
}

enum Step {
    Line(Option<std::io::Result<Line>>),
    Cancelled,
    TimedOut,
    Exited,
    /// Nothing else is ready: the lines gathered for the raw log are handed over.
    Idle,
}

/// What a turn's supervisor is handed when the turn is started.
pub(crate) struct Start {
    pub control: TurnControl,
    /// A running slot, when one was free at once (otherwise the turn is queued).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The commit of the turn's start.
    pub staged: super::owner::Staged<()>,
    /// Learns whether that commit held.
    pub started: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    /// How to put the session back if it did not.
    pub undo: super::Undo,
}

/// Where a turn's time went, step by step: logged at debug level on the `zwarm::timing`
/// target when the turn ends (`ZWARM_LOG=zwarm::timing=debug`), one line per turn,
/// `timing: step=ms ...`. The engine bench reads it to say where the time of a turn goes.
pub(crate) struct Timing {
    last: std::time::Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Timing {
    fn new() -> Timing {
        Timing {
            last: std::time::Instant::now(),
            steps: Vec::with_capacity(10),
        }
    }

    /// The time since the previous mark goes to `step`.
    pub(crate) fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }

    fn log(&self, h: &Handle, index: u32) {
        if !tracing::enabled!(target: "zwarm::timing", tracing::Level::DEBUG) {
            return;
        }
        let mut line = String::new();
        for (step, d) in &self.steps {
            line.push_str(&format!(" {step}={:.3}", d.as_secs_f64() * 1e3));
        }
        tracing::debug!(target: "zwarm::timing", session = %h.id, turn = index, "timing:{line}");
    }
}

/// Run one turn to its end.
pub(crate) async fn run(inner: Arc<Inner>, h: Arc<Handle>, index: u32, start: Start) {
    let Start {
        control,
        permit,
        staged,
        started,
        undo,
    } = start;
    let mut timing = Timing::new();
    // A turn that already has its running slot prepares while its start is being committed:
    // the checks, its log files and the command line are nothing the executor sees, and the
    // executor itself starts only once the start holds. (A queued turn prepares when it gets
    // its slot: a hundred queued turns do not hold a hundred turns' log files open.)
    let (began, early) = if permit.is_some() {
        let (began, prepared) = tokio::join!(
            begin(&inner, &h, index, staged, started, undo),
            prepare(&inner, &h, index)
        );
        (began, Some(prepared))
    } else {
        (begin(&inner, &h, index, staged, started, undo).await, None)
    };
    if !began {
        // Not recorded, so not started; a log opened meanwhile is closed as it is dropped.
        return;
    }
    timing.mark("begin");
    let permit = take_slot(&inner, &h, index, &control, permit, &mut timing).await;
    let mut outcome = Outcome::default();
    if permit.is_none() || control.cancel.is_cancelled() {
        outcome.interrupted = Some(interrupted_reason(&inner, &control));
        finish(&inner, &h, index, outcome, None, None).await;
        return;
    }
    let adapter = h.live.lock().session.adapter;
    let prepared = match early {
        Some(p) => p,
        None => prepare(&inner, &h, index).await,
    };
    timing.mark("prepare");
    let mut leftovers = None;
    // The read-back file goes back to the store's pool only once the executor's leftovers are
    // gone: nothing of this turn can write into a later turn's file.
    let mut lent = None;
    let last_message = match prepared {
        Ok((log, launch, scratch)) => {
            lent = Some(scratch);
            let last = launch.read_back.first().cloned();
            let r = execute(
                &inner,
                &h,
                index,
                adapter,
                &control,
                &log,
                launch,
                &mut outcome,
                &mut timing,
            )
            .await;
            log.close().await;
            timing.mark("close_log");
            match r {
                Ok((finished, left)) => {
                    leftovers = left;
                    last.and_then(|p| finished.file(&p).map(str::to_string))
                }
                Err(e) => {
                    outcome.failed = Some((e.to_string(), None));
                    None
                }
            }
        }
        Err(e) => {
            outcome.failed = Some((e.to_string(), None));
            None
        }
    };
    // What the executor left is cleaned up before the turn's end is recorded (and so
    // reported); the slot is handed on once that end is submitted (see `finish`).
    if let Some(clean_up) = leftovers {
        clean_up.await;
        timing.mark("leftovers");
    }
    drop(lent);
    finish(&inner, &h, index, outcome, last_message, permit).await;
    timing.mark("finish");
    timing.log(&h, index);
}

fn interrupted_reason(inner: &Inner, control: &TurnControl) -> String {
    control.reason.lock().clone().unwrap_or_else(|| {
        if inner.shutdown.is_cancelled() {
            "the zwarm server shut down while this turn was running. Call converse to resume the same thread.".to_string()
        } else {
            "interrupted".to_string()
        }
    })
}

/// Wait for the turn's start to be committed. Not recorded means not started: the session is
/// put back as it was, and `false` returned.
async fn begin(
    inner: &Inner,
    h: &Handle,
    index: u32,
    staged: super::owner::Staged<()>,
    started: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    undo: super::Undo,
) -> bool {
    if let ((), Err(e)) = staged.committed().await {
        {
            let mut l = h.live.lock();
            undo.apply(&mut l.session);
            if l.control.as_ref().is_some_and(|c| c.index == index) {
                l.control = None;
            }
        }
        h.bump();
        let _ = started.send(Err(e));
        return false;
    }
    h.bump();
    let _ = started.send(Ok(()));
    let _ = inner.changes.send(h.id.clone());
    true
}

/// A running slot: the one taken at the start, or (for a queued turn) the next free one, with
/// the turn then recorded as running (committed in the background). `None`: the turn was
/// stopped while it waited.
async fn take_slot(
    inner: &Arc<Inner>,
    h: &Arc<Handle>,
    index: u32,
    control: &TurnControl,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    timing: &mut Timing,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if permit.is_some() {
        return permit;
    }
    let p = tokio::select! {
        p = inner.slots.clone().acquire_owned() => p.ok(),
        _ = control.cancel.cancelled() => None,
    };
    timing.mark("queued");
    if p.is_some() && !control.cancel.is_cancelled() {
        // Recorded as running without waiting for the commit: the executor starts at once.
        // Nothing reports the change before it is committed: readers wait for the session's
        // pending commit, waiters are woken (published) only once it holds, and the turn's
        // end commits after it (the store keeps submission order). Lazy: under load it shares
        // a commit's sync (the previous turn's end, when still queued, or the next one).
        let ((), staged) = inner
            .stage_lazy(h, |l, w| {
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
                w.extend(l.images(&[index]));
                w.push(inner.event(
                    LogEvent::TurnStarted {
                        turn: index,
                        resume,
                    },
                    Some(&h.id),
                ));
            })
            .split();
        let (inner2, h2) = (inner.clone(), h.clone());
        inner.tasks.spawn(async move {
            let ((), r) = staged.committed().await;
            if let Err(e) = r {
                tracing::error!(session = %h2.id, error = %e, "cannot record that a queued turn started");
            }
            inner2.publish(&h2);
        });
        timing.mark("record_running");
    }
    p
}

/// Off the async workers: the working dir is checked again (it may have been swapped for a
/// symlink since delegate), the log files opened, the launch built.
async fn prepare(
    inner: &Arc<Inner>,
    h: &Handle,
    index: u32,
) -> Result<(TurnLog, Launch, Scratch), TurnError> {
    let (id, adapter, plan, model, working_dir, isolation) = {
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
            s.isolation.clone(),
        )
    };
    let inner = inner.clone();
    // The turn's span, so the launch carries its trace context (TRACEPARENT) from the blocking
    // thread too.
    let span = tracing::Span::current();
    let r = tokio::task::spawn_blocking(move || -> Result<_, TurnError> {
        let _span = span.enter();
        let dir = match &isolation {
            // A worktree session runs in its worktree, or not at all.
            Some(iso) => super::isolation::check_turn_dir(&inner, &id, iso, &working_dir)
                .map_err(TurnError::Worktree)?,
            None => inner
                .check_dir(Some(&working_dir))
                .map_err(TurnError::Dir)?,
        };
        if dir.display().to_string() != working_dir {
            return Err(TurnError::Moved {
                was: working_dir,
                now: dir.display().to_string(),
            });
        }
        if let Some(n) = &plan.resume_id
            && !crate::model::valid_native_id(n)
        {
            return Err(TurnError::BadNativeId(crate::text::one_line(n, 60)));
        }
        let log = inner.store.turn_log(&id, index).map_err(TurnError::Logs)?;
        let scratch = inner.store.scratch().map_err(TurnError::Logs)?;
        let turn_dir = if executor::get(adapter).keeps_session_files() {
            Some(inner.store.session_dir(&id).map_err(TurnError::Logs)?)
        } else {
            None
        };
        let ctx = LaunchContext {
            model,
            scratch: scratch.path().to_path_buf(),
            turn_dir,
            session_id: Some(id.clone()),
            allowed_mcp_servers: inner.cfg.executors.mcp_servers.clone(),
        };
        let mut launch =
            executor::build_launch(adapter, &inner.cfg, &plan, &ctx).map_err(TurnError::Launch)?;
        launch.label = format!("{id}.{index}");
        let launch = crate::telemetry::with_trace_env(launch);
        Ok((log, launch, scratch))
    })
    .await;
    match r {
        Ok(r) => r,
        Err(e) => Err(TurnError::Internal(e.to_string())),
    }
}

/// Start the executor on the runner, pump its output into the session until it ends (or is
/// stopped), and collect what it leaves: exit status and files read back.
#[allow(clippy::too_many_arguments)]
async fn execute(
    inner: &Arc<Inner>,
    h: &Arc<Handle>,
    index: u32,
    adapter: Adapter,
    control: &TurnControl,
    log: &TurnLog,
    launch: Launch,
    outcome: &mut Outcome,
    timing: &mut Timing,
) -> Result<(Finished, Option<Leftovers>), TurnError> {
    let program = launch.program.display().to_string();
    let running = inner
        .runner
        .start_timed(
            launch,
            Some(Duration::from_secs(inner.cfg.turn_timeout_seconds)),
        )
        .await
        .map_err(|err| TurnError::Start {
            adapter: adapter.as_str(),
            program: program.clone(),
            err,
        })?;
    timing.mark("start");
    supervise(
        inner, h, index, adapter, control, log, running, program, outcome, timing,
    )
    .await
}

/// Follow a turn a dead server left running, which the runner re-attached to
/// ([`crate::runner::Runner::adopt`]): its output (from its start) is pumped into the session
/// and its end recorded as for a turn this server started. Its running slot is taken by
/// recovery (`recovery.rs`) and held until it returns.
pub(crate) async fn follow(
    inner: Arc<Inner>,
    h: Arc<Handle>,
    index: u32,
    control: TurnControl,
    running: RunningTurn,
) {
    let mut timing = Timing::new();
    let mut outcome = Outcome::default();
    let adapter = h.live.lock().session.adapter;
    match inner.store.turn_log_to_go_on(&h.id, index) {
        Ok(log) => {
            let r = supervise(
                &inner,
                &h,
                index,
                adapter,
                &control,
                &log,
                running,
                adapter.as_str().to_string(),
                &mut outcome,
                &mut timing,
            )
            .await;
            log.close().await;
            match r {
                Ok((_, Some(clean_up))) => clean_up.await,
                Ok((_, None)) => {}
                Err(e) => outcome.failed = Some((e.to_string(), None)),
            }
        }
        Err(e) => {
            drop(running);
            outcome.failed = Some((TurnError::Logs(e).to_string(), None));
        }
    }
    finish(&inner, &h, index, outcome, None, None).await;
    timing.log(&h, index);
}

/// Pump a running turn's output into the session until it ends (or is stopped), and collect
/// what it leaves.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    inner: &Arc<Inner>,
    h: &Arc<Handle>,
    index: u32,
    adapter: Adapter,
    control: &TurnControl,
    log: &TurnLog,
    running: RunningTurn,
    program: String,
    outcome: &mut Outcome,
    timing: &mut Timing,
) -> Result<(Finished, Option<Leftovers>), TurnError> {
    let RunningTurn {
        stdout,
        stderr,
        control: mut proc,
    } = running;
    tracing::info!(session = %h.id, turn = index, pid = ?proc.id(), %program, runner = inner.runner.name(), "executor started");
    let stderr_task = stderr.map(|err| {
        let events = StderrEvents::new(inner.clone(), h.clone(), index, adapter);
        let banner = SkipBanner::new(executor::get(adapter).stderr_banner());
        tokio::spawn(read_stderr(err, log.stderr_sink(), banner, events))
    });
    let Some(stdout) = stdout else {
        proc.stop(Duration::from_millis(100), None).await;
        let _ = proc.finish().await;
        return Err(TurnError::NoStdout);
    };
    let pumped = pump(
        inner, h, index, adapter, control, log, stdout, &mut *proc, outcome,
    )
    .await;
    timing.mark("pump");
    if !pumped.exited
        && tokio::time::timeout(Duration::from_secs(5), proc.wait())
            .await
            .is_err()
    {
        proc.stop(Duration::from_millis(500), None).await;
    }
    timing.mark("exit");
    let (finished, leftovers) = proc.finish_deferred().await;
    timing.mark("runner_finish");
    crate::telemetry::turn_exit(finished.exit.as_ref());
    let stderr_tail = match stderr_task {
        Some(t) => tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default(),
        None => String::new(),
    };
    timing.mark("stderr");
    if pumped.skipped_lines > 0 {
        // Committed before the turn's end is reported, like the end itself.
        let ev = inner.event(
            LogEvent::LinesSkipped {
                turn: index,
                lines: pumped.skipped_lines,
                max_bytes: MAX_LINE,
            },
            Some(&h.id),
        );
        let _ = inner.store.submit(vec![ev]).committed().await;
    }
    if let Some(cause) = finished.cause.as_ref().filter(|_| !outcome.completed)
        && outcome.interrupted.is_none()
    {
        // What the runner saw (an out-of-memory kill, a pod that never ran) explains the end
        // better than the exit status or the stream's last error.
        outcome.failed = Some((cause.clone(), None));
    }
    if !outcome.completed && outcome.failed.is_none() && outcome.interrupted.is_none() {
        let s = h.live.lock().session.clone();
        outcome.failed = Some((
            super::fold::exit_failure(
                &s,
                finished.exit,
                &stderr_tail,
                outcome.last_warning.as_deref(),
            ),
            None,
        ));
    }
    Ok((finished, leftovers))
}

/// Read the executor's stderr into the log and the stderr events; returns its tail.
async fn read_stderr(
    mut err: crate::runner::Output,
    sink: crate::store::logs::StderrSink,
    mut banner: SkipBanner,
    mut events: StderrEvents,
) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match err.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                sink.write(&banner.pass(&buf[..n]));
                events.feed(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL * 2 {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
    }
    sink.write(banner.end());
    String::from_utf8_lossy(&tail).into_owned()
}

struct Pumped {
    exited: bool,
    skipped_lines: u64,
}

/// Feed stdout lines through the parser into the session until the output ends; stop the
/// executor when the turn is cancelled or times out.
#[allow(clippy::too_many_arguments)]
async fn pump(
    inner: &Arc<Inner>,
    h: &Arc<Handle>,
    index: u32,
    adapter: Adapter,
    control: &TurnControl,
    log: &TurnLog,
    stdout: crate::runner::Output,
    proc: &mut dyn TurnProcess,
    outcome: &mut Outcome,
) -> Pumped {
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
            _ = proc.wait(), if !exited => Step::Exited,
            _ = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => Step::Line(None),
            // Last (the select is biased): only when no line is ready at once.
            () = std::future::ready(()), if log.has_pending() => Step::Idle,
        };
        match step {
            Step::Line(Some(Ok(Line::Text(line)))) => {
                log.out(line.as_bytes());
                for ev in parser.parse_line(&line) {
                    trace.event(&ev);
                    apply(inner, h, index, ev, outcome);
                }
            }
            Step::Line(Some(Ok(Line::TooLong(n)))) => {
                skipped_lines += 1;
                tracing::warn!(session = %h.id, bytes = n, "executor line longer than {MAX_LINE} bytes skipped");
            }
            Step::Line(Some(Err(e))) => {
                tracing::warn!(session = %h.id, error = %e, "reading executor output failed");
                break;
            }
            Step::Line(None) => break,
            Step::Idle => log.flush(),
            Step::Cancelled | Step::TimedOut => {
                let reason = if matches!(step, Step::TimedOut) {
                    format!(
                        "the turn ran longer than turn_timeout_seconds ({} s) and was stopped. Call converse to continue it in smaller steps, or raise turn_timeout_seconds.",
                        inner.cfg.turn_timeout_seconds
                    )
                } else {
                    interrupted_reason(inner, control)
                };
                tracing::info!(session = %h.id, turn = index, %reason, "interrupting executor");
                outcome.interrupted = Some(reason);
                let stop_by = *inner.stop_by.lock();
                match stop_by.filter(|_| inner.shutdown.is_cancelled()) {
                    // Shutting down: everything must be stopped by the server's deadline.
                    Some(by) => proc.stop(Duration::from_millis(400), Some(by)).await,
                    None => {
                        let grace = Duration::from_secs(inner.cfg.interrupt_grace_seconds);
                        proc.stop(grace, None).await;
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
    Pumped {
        exited,
        skipped_lines,
    }
}
