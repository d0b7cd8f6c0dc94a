//! Sessions a dead server left running are adopted ([`Manager::adopt`]: a compare-and-set on
//! the owner; a turn the runner still has ([`crate::runner::Runner::adopt`], a Job on a
//! cluster) is followed to its end, from where its raw log ends and holding a running slot,
//! any other is recorded as interrupted and what it left running is cleaned up by the runner);
//! held sessions at rest are let go ([`Manager::evict_idle`]) and read back when needed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::registry::{Handle, owner_alive};
use super::{Manager, ManagerError};
use crate::event::ExecutorEvent;
use crate::log_event::LogEvent;
use crate::model::{Adapter, Session, SessionStatus, TurnStatus, now};
use crate::store::{SessionImage, StoreError, Write};

impl Manager {
    /// Adopt every session left running by a server that is gone.
    pub(super) async fn recover(&self) {
        let active = match self.inner.store.active().await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list running sessions");
                return;
            }
        };
        for (id, owner, _pid) in active {
            if owner == self.inner.instance || owner_alive(&self.inner.store, &owner).await {
                continue;
            }
            match self.adopt(&id).await {
                Ok(_) | Err(ManagerError::ForeignOwner { .. }) => {}
                Err(e) => tracing::error!(session = %id, error = %e, "cannot adopt session"),
            }
        }
    }

    /// Take ownership of a session whose server died (or hold one of ours again), and return
    /// its handle. A turn a dead server left running is recorded as failed, with the reason,
    /// and what it left running is killed.
    pub(super) async fn adopt(&self, id: &str) -> Result<Arc<Handle>, ManagerError> {
        if let Some(h) = self.inner.registry.get(id) {
            return Ok(h);
        }
        let _one_at_a_time = self.inner.adopting.lock().await;
        if let Some(h) = self.inner.registry.get(id) {
            return Ok(h);
        }
        // Writes submitted before now (e.g. a watcher's notes on a session just let go) are
        // committed before it is read back.
        self.inner.store.sync().await;
        let (mut s, version) = self.load(id).await?;
        let old_owner = s.owner.instance.clone();
        if old_owner == self.inner.instance && !s.status.is_active() {
            // Ours, let go while at rest: read back as it was, nothing to record.
            let h = self.inner.registry.insert(Handle::new(s, version));
            return Ok(h);
        }
        if old_owner != self.inner.instance && owner_alive(&self.inner.store, &old_owner).await {
            return Err(ManagerError::ForeignOwner {
                id: id.to_string(),
                pid: s.owner.pid,
            });
        }
        let mut recovered = None;
        let mut reattached = None;
        let running_turn = s
            .last_turn()
            .filter(|t| s.status.is_active() && t.status == TurnStatus::Running)
            .map(|t| t.index);
        if let Some(index) = running_turn.filter(|_| self.inner.runner.reattaches()) {
            // What the turn's raw log holds is not asked of the runner again: the turn's
            // progress is rebuilt from it, and the run's output is followed from there on.
            let logged = self.logged_output(id, index, s.adapter).await;
            if let Some(running) = self
                .inner
                .runner
                .adopt(&format!("{id}.{index}"), &[], logged.bytes)
                .await
            {
                logged.rebuild(&mut s, index);
                reattached = Some((index, running, logged));
            }
        }
        if s.status.is_active() && reattached.is_none() {
            let next = if s.native_id.is_some() {
                format!(
                    "Call converse to resume the same {} thread.",
                    s.adapter.as_str()
                )
            } else {
                "The executor had not started a thread yet: converse starts over with the task and your message.".to_string()
            };
            let reason = format!(
                "the zwarm server running this turn (pid {}) stopped before it finished; the executor was stopped with it. {next}",
                s.owner.pid
            );
            let ts = now();
            if let Some(t) = s.last_turn_mut()
                && matches!(t.status, TurnStatus::Running | TurnStatus::Queued)
            {
                t.status = TurnStatus::Interrupted;
                t.error = Some(reason.clone());
                t.ended_at = Some(ts.clone());
                recovered = Some((reason.clone(), t.index));
            }
            if !s.status.is_final() {
                s.status = SessionStatus::Failed;
                s.error = Some(reason.clone());
            }
            s.updated_at = ts;
            if recovered.is_none() {
                recovered = Some((reason, 0));
            }
        }
        s.owner = self.inner.owner();
        let version = version + 1;
        let mut writes = vec![Write::Session {
            session: SessionImage::of(&s, version),
            expect_owner: Some(old_owner),
        }];
        if let Some((reason, turn)) = &recovered {
            if let Some(t) = s.turn(*turn) {
                writes.push(Write::Turn {
                    session_id: s.id.clone(),
                    version,
                    turn: Box::new(t.clone()),
                });
            }
            writes.push(self.inner.event(
                LogEvent::SessionRecovered {
                    status: "failed".into(),
                    turn: *turn,
                    reason: reason.clone(),
                },
                Some(id),
            ));
        }
        // The owner's compare-and-set: committed before the session is held (and published).
        let committed = self.inner.store.submit(writes).committed().await;
        if committed.is_err()
            && let Some((_, running, _)) = reattached.take()
        {
            // Not ours: the run goes on (another server follows it, or a later adoption).
            running.control.detach();
        }
        match committed {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                // Another server adopted it first: name it.
                let pid = self.load(id).await.map(|(s, _)| s.owner.pid).unwrap_or(0);
                return Err(ManagerError::ForeignOwner {
                    id: id.to_string(),
                    pid,
                });
            }
            Err(e) => return Err(e.into()),
        }
        if let Some((_, turn)) = &recovered {
            tracing::info!(session = %id, "marked a session left running by a stopped server as failed");
            // Whatever the dead server's executor left running for this turn goes now.
            self.inner.runner.clean_up(&format!("{id}.{turn}")).await;
        }
        if let Some((_, _, logged)) = &reattached {
            logged.cut().await;
        }
        let h = self.inner.registry.insert(Handle::new(s, version));
        if let Some((index, running, _)) = reattached {
            tracing::info!(session = %id, turn = index, "re-attached to a turn a stopped server left running");
            let control = super::registry::TurnControl {
                index,
                cancel: self.inner.shutdown.child_token(),
                reason: Arc::new(parking_lot::Mutex::new(None)),
            };
            h.live.lock().control = Some(control.clone());
            // The turn counts against max_running like one this server started: it takes a
            // running slot now, or when none is free the first one that frees (it is in line
            // from now on, before any turn queued later; it runs already, so it does not wait
            // for one), and holds it until its end is recorded.
            let mut take = Box::pin(self.inner.slots.clone().acquire_owned());
            let mut slot = match futures::poll!(take.as_mut()) {
                std::task::Poll::Ready(p) => Some(p),
                std::task::Poll::Pending => None,
            };
            let (inner, h2) = (self.inner.clone(), h.clone());
            self.inner.tasks.spawn(async move {
                let follow = super::turn::follow(inner, h2, index, control, running);
                tokio::pin!(follow);
                loop {
                    tokio::select! {
                        () = &mut follow => break,
                        p = &mut take, if slot.is_none() => slot = Some(p),
                    }
                }
                drop(slot);
            });
        }
        let _ = self.inner.changes.send(id.to_string());
        Ok(h)
    }

    /// What the raw log of a running turn a dead server left holds of its stdout (see
    /// [`Logged`]).
    async fn logged_output(&self, id: &str, index: u32, adapter: Adapter) -> Logged {
        let (path, _) = self.inner.store.turn_log_files(id, index);
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = read_nofollow(&p).unwrap_or_default();
            Logged::parse(p, &bytes, adapter)
        })
        .await
        .unwrap_or_else(|_| Logged::parse(path, &[], adapter))
    }

    /// Read one whole session from the store, with its stored version.
    pub(super) async fn load(&self, id: &str) -> Result<(Session, u64), ManagerError> {
        let sid = id.to_string();
        let r = self
            .inner
            .store
            .read(move |c| {
                let s = crate::store::load_session_with(c, &sid)?;
                let v = crate::store::version_with(c, &sid)?;
                Ok((s, v))
            })
            .await;
        match r {
            Ok((Some(s), v)) => Ok((s, v)),
            Ok((None, _)) => Err(ManagerError::UnknownSession(id.to_string())),
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Db { .. })) => {
                Err(ManagerError::Unreadable {
                    id: id.to_string(),
                    reason: e.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Let go of held sessions that are at rest and unused for `idle`: each one's whole
    /// record (session row and every turn) is written and committed first, so nothing of it
    /// exists only in memory; it is let go only if nothing changed meanwhile. The next call
    /// that needs it adopts it again from the store.
    pub(super) async fn evict_idle(&self, idle: Duration) -> usize {
        let mut saved = Vec::new();
        for id in self.inner.registry.idle_candidates(idle) {
            let Some(h) = self.inner.registry.get(&id) else {
                continue;
            };
            let (ticket, version) = {
                let mut l = h.live.lock();
                if !l.at_rest() {
                    continue;
                }
                let turns: Vec<u32> = l.session.turns.iter().map(|t| t.index).collect();
                let w = l.images(&turns);
                (self.inner.store.submit(w), l.version)
            };
            drop(h);
            match ticket.committed().await {
                Ok(()) => saved.push((id, version)),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot save an idle session; it stays in memory")
                }
            }
        }
        if saved.is_empty() {
            return 0;
        }
        let n = self.inner.registry.evict(&saved, idle);
        if n > 0 {
            tracing::debug!(
                sessions = n,
                held = self.inner.registry.len(),
                "let go of idle sessions (they are read back from the store when needed)"
            );
        }
        n
    }

    /// Wait (briefly) for the start-up recovery, so nothing a dead server left running is
    /// reported as running.
    pub(super) async fn await_recovery(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.recovered_once.load(Ordering::SeqCst) {
            return;
        }
        let notified = self.inner.recovered.notified();
        if self.inner.recovered_once.load(Ordering::SeqCst) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), notified).await;
    }
}

/// What a turn's raw stdout log holds, read back to re-attach to the turn: the events of its
/// whole lines (through the executor's parser, as the dead server saw them) and how many bytes
/// they take. A line that ends the turn is left out, with whatever follows it, and so is a
/// line cut short by the crash: the re-attached run hands them back again.
struct Logged {
    path: PathBuf,
    /// The log's size on disk.
    size: u64,
    /// Bytes of whole lines before the turn's end.
    bytes: u64,
    events: Vec<ExecutorEvent>,
}

impl Logged {
    fn parse(path: PathBuf, log: &[u8], adapter: Adapter) -> Logged {
        let mut parser = crate::executor::Parser::new(adapter);
        let (mut bytes, mut events) = (0usize, Vec::new());
        while let Some(n) = log[bytes..].iter().position(|b| *b == b'\n') {
            let mut line = &log[bytes..bytes + n];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let evs = parser.parse_line(&String::from_utf8_lossy(line));
            if evs.iter().any(|e| {
                matches!(
                    e,
                    ExecutorEvent::TurnCompleted { .. } | ExecutorEvent::TurnFailed { .. }
                )
            }) {
                break;
            }
            events.extend(evs);
            bytes += n + 1;
        }
        Logged {
            path,
            size: log.len() as u64,
            bytes: bytes as u64,
            events,
        }
    }

    /// The turn's progress as the log shows it, in place of what the dead server had flushed
    /// (which may be behind its log). The session's recent progress lines are kept as they
    /// were stored (they are the whole session's, not the turn's).
    fn rebuild(&self, s: &mut Session, index: u32) {
        if let Some(t) = s.turn_mut(index) {
            t.commands.clear();
            t.files_changed.clear();
            t.permission_denials.clear();
            t.messages.clear();
            t.tool_errors.clear();
        }
        let mut outcome = super::fold::Outcome::default();
        for ev in &self.events {
            super::fold::apply(s, index, ev, &mut outcome);
        }
    }

    /// Cut the log after its whole lines before the turn's end: the rest comes again from the
    /// re-attached run and is logged then, once.
    async fn cut(&self) {
        if self.size <= self.bytes {
            return;
        }
        let (path, len) = (self.path.clone(), self.bytes);
        let r = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .and_then(|f| f.set_len(len))
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot cut a re-attached turn's log to its whole lines");
        }
    }
}

/// A file's contents (`None` when it is missing, a symlink, or unreadable).
fn read_nofollow(p: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_log_is_read_back_up_to_its_whole_lines_before_the_turns_end() {
        let start = "{\"type\":\"thread.started\",\"thread_id\":\"t\"}\n";
        let cmd = "{\"type\":\"item.completed\",\"item\":{\"id\":\"c\",\"type\":\"command_execution\",\"command\":\"ls\",\"aggregated_output\":\"\",\"exit_code\":0,\"status\":\"completed\"}}\r\n";
        let end = "{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":1,\"cached_input_tokens\":0,\"output_tokens\":1}}\n";
        let parse = |log: &str| Logged::parse(PathBuf::new(), log.as_bytes(), Adapter::Codex);
        // A line the crash cut short is left for the run to hand back.
        let l = parse(&format!("{start}{cmd}{}", &end[..10]));
        assert_eq!(l.bytes as usize, start.len() + cmd.len());
        assert_eq!(l.size as usize, start.len() + cmd.len() + 10);
        assert!(matches!(l.events[0], ExecutorEvent::SessionStarted { .. }));
        assert!(
            l.events
                .iter()
                .any(|e| matches!(e, ExecutorEvent::CommandFinished { .. }))
        );
        // So is a logged end of the turn, with what follows it.
        let l = parse(&format!("{start}{end}{cmd}"));
        assert_eq!(l.bytes as usize, start.len());
        assert_eq!(l.events.len(), 1);
        // Nothing logged: the whole run is handed back.
        assert_eq!(parse("").bytes, 0);
    }
}
