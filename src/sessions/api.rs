//! What callers ask the engine to do: start a session ([`Manager::delegate`]), continue it
//! ([`Manager::converse`]), stop its turn ([`Manager::interrupt`]), end it ([`Manager::end`]),
//! and the watchers' say before each call ([`Manager::before_call`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::fold::Outcome;
use super::registry::{Handle, TurnControl};
use super::{DelegateRequest, Manager, ManagerError, Undo, blocking, committed, turn};
use crate::executor::{self, LaunchContext, TurnPlan};
use crate::log_event::LogEvent;
use crate::model::{Adapter, Mode, Session, SessionStatus, Turn, TurnStatus, WatcherNote, now};
use crate::store::Write;
use crate::text;
use crate::watch::Call;

impl Manager {
    /// Create a session and start its first turn. Returns the session id.
    pub async fn delegate(&self, req: DelegateRequest) -> Result<String, ManagerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        let task = req.task.trim().to_string();
        if task.is_empty() {
            return Err(ManagerError::EmptyTask);
        }
        let adapter_name = req
            .adapter
            .as_deref()
            .filter(|a| !a.trim().is_empty())
            .unwrap_or(&self.inner.cfg.default_adapter)
            .to_string();
        let adapter = executor::by_name(&adapter_name)
            .ok_or_else(|| ManagerError::UnknownAdapter(adapter_name.clone()))?
            .adapter();
        let mode = req.mode.unwrap_or(Mode::Sync);
        let model = req.model.filter(|m| !m.trim().is_empty());
        // Off the async workers: the directory check and a dry run of the command line, so a
        // missing CLI or a bad setting is reported now, not as a failed turn. A burst of
        // delegates of the same kind shares one ([`Checked`]); the task is checked every time.
        executor::check_prompt(&task, self.inner.cfg.max_task_bytes)?;
        let key = (req.working_dir.clone(), adapter, model.clone());
        let dir = match self.inner.checked.get(&key) {
            Some(dir) => dir,
            None => {
                let inner = self.inner.clone();
                let (wd, t, m) = (req.working_dir.clone(), task.clone(), model.clone());
                let dir = blocking(move || -> Result<PathBuf, ManagerError> {
                    let dir = inner.check_dir(wd.as_deref())?;
                    executor::build_launch(
                        adapter,
                        &inner.cfg,
                        &TurnPlan {
                            working_dir: dir.clone(),
                            prompt: t,
                            resume_id: None,
                        },
                        &LaunchContext {
                            model: m,
                            scratch: PathBuf::from("/dev/null"),
                            turn_dir: None,
                            session_id: None,
                            allowed_mcp_servers: inner.cfg.executors.mcp_servers.clone(),
                        },
                    )?;
                    Ok(dir)
                })
                .await
                .ok_or(ManagerError::ShuttingDown)??;
                self.inner.checked.put(key, dir.clone());
                dir
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        let (dir, isolation) = match self
            .isolate(&id, &dir, req.isolation.as_deref(), req.base.as_deref())
            .await?
        {
            Some((iso, wd)) => (wd, Some(iso)),
            None => (dir, None),
        };
        let ts = now();
        let s = Session {
            id: id.clone(),
            adapter,
            mode,
            status: SessionStatus::Queued,
            task: task.clone(),
            working_dir: dir.display().to_string(),
            model,
            native_id: None,
            created_at: ts.clone(),
            updated_at: ts,
            turns: vec![],
            error: None,
            summary: None,
            native_usage: Default::default(),
            owner: self.inner.owner(),
            recent: Default::default(),
            watcher_notes: vec![],
            aborted: None,
            isolation: isolation.clone(),
        };
        let h = self.inner.registry.insert(Handle::new(s, 0));
        let started = LogEvent::SessionStarted {
            adapter: adapter.as_str().to_string(),
            mode,
            working_dir: dir.display().to_string(),
            task: text::truncate_chars(&task, 500),
        };
        if let Err(e) = self.start_turn(&h, |_| Ok(task), |_| vec![started]).await {
            self.inner.registry.remove(&id);
            if let Some(iso) = isolation {
                self.unisolate(&id, iso).await;
            }
            self.inner.log(
                LogEvent::SessionFailedToStart {
                    error: e.to_string(),
                },
                Some(&id),
            );
            return Err(e);
        }
        Ok(id)
    }

    /// Continue a session with a new message. Returns (session id, turn number).
    pub async fn converse(&self, id: &str, message: &str) -> Result<(String, u32), ManagerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        let message = message.trim().to_string();
        if message.is_empty() {
            return Err(ManagerError::EmptyMessage);
        }
        let max = self.inner.cfg.max_task_bytes;
        executor::check_text("message", &message, max)?;
        let h = self.owned(id).await?;
        self.worktree_ready(&h).await?;
        let head = text::truncate_chars(&message, 500);
        let msg = message.clone();
        let (sid, n) = self
            .start_turn(
                &h,
                move |s| {
                    if s.status.is_active() {
                        return Err(ManagerError::Busy(s.id.clone()));
                    }
                    if s.status.is_final() {
                        return Err(ManagerError::Ended {
                            id: s.id.clone(),
                            status: s.status.as_str(),
                        });
                    }
                    if let Some(reason) = &s.aborted {
                        return Err(ManagerError::Aborted {
                            id: s.id.clone(),
                            reason: reason.clone(),
                        });
                    }
                    // Without a native thread (the first turn failed before the executor
                    // started one) there is nothing to resume: start over with the task.
                    let prompt = match &s.native_id {
                        Some(id) => {
                            executor::validate_native_id(id)?;
                            msg
                        }
                        None => format!("{}\n\n{}", s.task, msg),
                    };
                    executor::check_prompt(&prompt, max)?;
                    Ok(prompt)
                },
                |n| {
                    vec![LogEvent::MessageSent {
                        turn: n,
                        message: head,
                    }]
                },
            )
            .await?;
        Ok((sid, n))
    }

    /// Start the next turn of a session. `prepare` runs under the session lock and decides
    /// (checks the status, builds the prompt), so two calls can never both start a turn. The
    /// start is committed before this returns; the supervisor task is spawned at once, so a
    /// caller that gives up cannot leave a half-started turn.
    pub(super) async fn start_turn(
        &self,
        h: &Arc<Handle>,
        prepare: impl FnOnce(&Session) -> Result<String, ManagerError>,
        events: impl FnOnce(u32) -> Vec<LogEvent>,
    ) -> Result<(String, u32), ManagerError> {
        // Take a slot now if one is free, so the answer already says `running`; otherwise the
        // turn is `queued` and its supervisor waits for a slot.
        let permit = self.inner.slots.clone().try_acquire_owned().ok();
        let (turn_status, session_status) = if permit.is_some() {
            (TurnStatus::Running, SessionStatus::Running)
        } else {
            (TurnStatus::Queued, SessionStatus::Queued)
        };
        let inner = &self.inner;
        let staged = inner.stage(h, |l, w| {
            if l.ending {
                return Err(ManagerError::Ended {
                    id: h.id.clone(),
                    status: "being ended",
                });
            }
            let prompt = prepare(&l.session)?;
            let undo = Undo::of(&l.session);
            let index = l.session.turns.len() as u32 + 1;
            let control = TurnControl {
                index,
                cancel: inner.shutdown.child_token(),
                reason: Arc::new(parking_lot::Mutex::new(None)),
            };
            let ts = now();
            l.session.turns.push(Turn {
                index,
                prompt,
                status: turn_status,
                response: None,
                error: None,
                api_status: None,
                usage: Default::default(),
                cost_usd: None,
                started_at: ts.clone(),
                ended_at: None,
                commands: vec![],
                files_changed: vec![],
                permission_denials: vec![],
                messages: vec![],
                tool_errors: vec![],
            });
            l.session.status = session_status;
            l.session.error = None;
            l.session.updated_at = ts;
            l.session.owner = inner.owner();
            for ev in events(index) {
                w.push(inner.event(ev, Some(&h.id)));
            }
            w.extend(l.images(&[index]));
            if permit.is_some() {
                let resume = l.session.native_id.clone();
                w.push(inner.event(
                    LogEvent::TurnStarted {
                        turn: index,
                        resume,
                    },
                    Some(&h.id),
                ));
            }
            l.control = Some(control.clone());
            Ok((index, control, undo))
        })?;
        let ((index, control, undo), staged) = staged.split();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        let h2 = h.clone();
        let trace = crate::telemetry::turn_span(&h.id, index, || h.live.lock().session.adapter);
        self.inner.tasks.spawn(async move {
            use futures::FutureExt;
            let start = turn::Start {
                control,
                permit,
                staged,
                started: tx,
                undo,
            };
            let run = turn::run(inner.clone(), h2.clone(), index, start);
            let run = tracing::Instrument::instrument(run, trace);
            if std::panic::AssertUnwindSafe(run).catch_unwind().await.is_err() {
                tracing::error!(session = %h2.id, turn = index, "turn task panicked");
                inner.runner.clean_up(&format!("{}.{index}", h2.id)).await;
                let outcome = Outcome {
                    failed: Some((
                        "internal error in zwarm while running this turn (please report it with the turn's log under the state dir's turns/ folder). Call converse to retry.".into(),
                        None,
                    )),
                    ..Default::default()
                };
                turn::finish(&inner, &h2, index, outcome, None, None).await;
            }
        });
        match rx.await {
            Ok(Ok(())) => {
                tracing::info!(session = %h.id, turn = index, "turn started");
                Ok((h.id.clone(), index))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ManagerError::ShuttingDown),
        }
    }

    /// Interrupt the running turn of a session (if any) and wait until it has stopped.
    pub async fn interrupt(&self, id: &str, reason: &str) -> Result<bool, ManagerError> {
        self.interrupt_turn(id, None, reason).await
    }

    /// Interrupt the running turn — only if it is turn `turn`, when given — and wait until it
    /// has stopped. Ok(false): nothing to interrupt.
    pub async fn interrupt_turn(
        &self,
        id: &str,
        turn: Option<u32>,
        reason: &str,
    ) -> Result<bool, ManagerError> {
        let h = self.owned(id).await?;
        let control = {
            let l = h.live.lock();
            let current = l.session.turns.last().map(|t| t.index);
            l.control.clone().filter(|c| {
                l.session.status.is_active()
                    && Some(c.index) == current
                    && turn.is_none_or(|t| t == c.index)
            })
        };
        let Some(control) = control else {
            return Ok(false);
        };
        control.stop(reason);
        let mut rx = h.changed.subscribe();
        let limit =
            Instant::now() + Duration::from_secs(self.inner.cfg.interrupt_grace_seconds + 15);
        let ended = |h: &Handle| {
            h.live
                .lock()
                .session
                .turns
                .iter()
                .any(|t| t.index == control.index && t.ended_at.is_some())
        };
        while !ended(&h) {
            tokio::select! {
                r = rx.changed() => { if r.is_err() { break; } }
                _ = tokio::time::sleep_until(limit) => {
                    tracing::error!(session = %h.id, "turn did not stop after interrupt");
                    return Err(ManagerError::StillRunning(h.id.clone()));
                }
            }
        }
        let pending = h.live.lock().pending;
        committed(&self.inner.store, pending).await;
        Ok(true)
    }

    /// End a session with a verdict; a running turn is interrupted first.
    pub async fn end(
        &self,
        id: &str,
        verdict: SessionStatus,
        summary: Option<String>,
    ) -> Result<(Session, bool), ManagerError> {
        let h = self.owned(id).await?;
        {
            let mut l = h.live.lock();
            if l.session.status.is_final() {
                return Err(ManagerError::Ended {
                    id: h.id.clone(),
                    status: l.session.status.as_str(),
                });
            }
            // From here no new turn can start (start_turn checks this under the same lock),
            // and a second end_session is refused.
            if l.ending {
                return Err(ManagerError::Ended {
                    id: h.id.clone(),
                    status: "being ended",
                });
            }
            l.ending = true;
        }
        // If this call is dropped half-way, new turns are allowed again.
        let mut guard = EndingGuard {
            h: h.clone(),
            armed: true,
        };
        let interrupted = self
            .interrupt(
                &h.id,
                &format!("interrupted by end_session ({})", verdict.as_str()),
            )
            .await?;
        let inner = &self.inner;
        let (undo_summary, r) = inner
            .stage_ok(&h, |l, w| {
                let before = (
                    l.session.status,
                    l.session.summary.clone(),
                    l.session.updated_at.clone(),
                );
                l.session.status = verdict;
                l.session.summary = summary.filter(|x| !x.trim().is_empty());
                l.session.updated_at = now();
                w.extend(l.images(&[]));
                w.push(inner.event(
                    LogEvent::SessionEnded {
                        verdict,
                        summary: l.session.summary.clone(),
                        interrupted_turn: interrupted,
                    },
                    Some(&h.id),
                ));
                before
            })
            .committed()
            .await;
        if let Err(e) = r {
            let mut l = h.live.lock();
            (l.session.status, l.session.summary, l.session.updated_at) = undo_summary;
            return Err(e.into());
        }
        // Verdict `failed` is not final: converse may retry, so new turns are allowed again.
        guard.armed = !verdict.is_final();
        drop(guard);
        self.inner.publish(&h);
        let s = h.snapshot().0;
        Ok((s, interrupted))
    }

    /// Keep notes from pre-call watchers on the session they concern (shown by check_session).
    pub async fn attach_notes(&self, id: &str, turn: Option<u32>, notes: &[WatcherNote]) {
        if notes.is_empty() {
            return;
        }
        let Some(h) = self.inner.registry.get(id) else {
            // Not held here (an idle session let go, or one from an earlier run): the notes
            // go straight to the store, where check_session reads them.
            let w = notes
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    n.turn = n.turn.or(turn);
                    Write::Note {
                        session_id: id.to_string(),
                        note: n,
                    }
                })
                .collect();
            if let Err(e) = self.inner.commit_unheld(id, w).await {
                tracing::error!(error = %e, "cannot save watcher notes");
            }
            return;
        };
        let ((), r) = self
            .inner
            .commit(&h, |l, w| {
                for n in notes {
                    let mut n = n.clone();
                    n.turn = n.turn.or(turn);
                    l.session.watcher_notes.push(n.clone());
                    w.push(Write::Note {
                        session_id: id.to_string(),
                        note: n,
                    });
                }
                let excess = l
                    .session
                    .watcher_notes
                    .len()
                    .saturating_sub(crate::store::NOTES_KEPT);
                l.session.watcher_notes.drain(..excess);
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot save watcher notes");
            self.inner.publish(&h);
        }
    }

    /// [`Manager::check_call`] for a caller that has only a tool name and JSON arguments
    /// (the typed call is built from them with [`Call::from_json`]).
    pub async fn before_call(
        &self,
        tool: &str,
        args: &serde_json::Value,
        acknowledge: bool,
    ) -> Result<Vec<WatcherNote>, CallRefused> {
        self.check_call(&Call::from_json(tool, args), acknowledge)
            .await
    }

    /// Run the watchers before a call: `Err` is a refusal (its text says why and what to do);
    /// `Ok` carries notes to add to the result.
    pub async fn check_call(
        &self,
        call: &Call,
        acknowledge: bool,
    ) -> Result<Vec<WatcherNote>, CallRefused> {
        let tool = call.tool();
        let d = {
            let f = self.refresh_fleet().await;
            self.inner.watchers.check_call(call, &f.fleet, acknowledge)
        };
        for f in &d.firings {
            crate::telemetry::watcher_fired(f);
            self.inner.log(
                LogEvent::WatcherFiredOnCall {
                    watcher: f.watcher.clone(),
                    action: f.action,
                    message: f.message.clone(),
                    tool: tool.to_string(),
                },
                None,
            );
        }
        if let Some(reason) = &d.abort_now {
            self.inner
                .interrupt_all(&format!("aborted by watcher {reason}"));
            self.inner.log(
                LogEvent::WatchersAbort {
                    reason: reason.clone(),
                },
                None,
            );
        }
        if acknowledge && self.inner.watchers.gate().paused.is_none() && call.starts_work() {
            self.inner.log(
                LogEvent::PauseAcknowledged {
                    tool: tool.to_string(),
                },
                None,
            );
        }
        match d.refuse {
            Some(r) => {
                self.inner.log(
                    LogEvent::CallRefused {
                        tool: tool.to_string(),
                        reason: r.clone(),
                    },
                    None,
                );
                Err(CallRefused(r))
            }
            None => Ok(d.firings.iter().map(|f| f.note(None)).collect()),
        }
    }

    /// Names of the enabled watchers.
    pub fn watcher_names(&self) -> Vec<&'static str> {
        self.inner.watchers.names()
    }
}

/// A call the watchers refused: the text says which watcher, why, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CallRefused(pub String);

/// Clears `ending` unless disarmed, so a dropped end_session does not block the session.
pub(super) struct EndingGuard {
    pub(super) h: Arc<Handle>,
    pub(super) armed: bool,
}

impl Drop for EndingGuard {
    fn drop(&mut self) {
        if self.armed {
            self.h.live.lock().ending = false;
        }
    }
}

/// `delegate`'s up-front checks (the working dir, a dry run of the executor's command line)
/// that passed within the last [`Checked::FOR`], by (working dir asked for, executor, model):
/// a burst of delegates of one kind pays for one. Nothing is skipped for good: each turn checks
/// its directory again and builds its real command line when it starts, so a CLI removed or a
/// folder swapped within that second fails the turn, saying why.
#[derive(Default)]
pub(crate) struct Checked {
    passed: parking_lot::Mutex<HashMap<CheckKey, (PathBuf, Instant)>>,
}

type CheckKey = (Option<String>, Adapter, Option<String>);

impl Checked {
    const FOR: Duration = Duration::from_secs(1);
    /// Most remembered at once (older ones are dropped first).
    const MAX: usize = 64;

    fn get(&self, key: &CheckKey) -> Option<PathBuf> {
        let passed = self.passed.lock();
        passed
            .get(key)
            .filter(|(_, at)| at.elapsed() < Self::FOR)
            .map(|(dir, _)| dir.clone())
    }

    fn put(&self, key: CheckKey, dir: PathBuf) {
        let mut passed = self.passed.lock();
        passed.retain(|_, (_, at)| at.elapsed() < Self::FOR);
        if passed.len() >= Self::MAX {
            passed.clear();
        }
        passed.insert(key, (dir, Instant::now()));
    }
}
