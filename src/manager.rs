//! The session manager: sessions, their turns, and the executor processes behind them.
//!
//! Every turn runs in a background task owned by the manager, whatever the tool call's mode:
//! a sync call simply waits on the session for a while, an async call does not. So a host
//! that gives up on a call never loses the turn, and the MCP handlers stay thin. The manager
//! knows nothing about MCP; a future human CLI can drive it directly.
//!
//! Ownership: the server instance that runs a session's turns owns it and is the only writer
//! of its file. Sessions of another live server on the same state dir are read from disk;
//! sessions of a dead server are adopted, and a turn it left running is marked failed (its
//! native id kept, so `converse` resumes the executor's thread).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::event::{ExecutorEvent, UsageScope};
use crate::executor::{self, Adapter, ExecutorError, Parser, TurnPlan};
use crate::model::{CommandRecord, Mode, Owner, Session, SessionStatus, Turn, TurnStatus, now};
use crate::process;
use crate::store::{Store, StoreError};
use crate::text;
use crate::watch::{Action, CallInfo, Firing, WatcherNote, Watchers};

/// Longest stdout line accepted from an executor (a 200 000-character answer is one line).
const MAX_LINE: usize = 32 * 1024 * 1024;
const OUTPUT_TAIL: usize = 2000;
const MESSAGE_CAP: usize = 4000;
const STDERR_TAIL: usize = 8192;
/// Run short blocking work (scanning /proc, git) without stalling the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Longest any wait may be (a day): larger requests are clamped, never overflow.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(
        "`task` is empty: describe what the executor should do, ideally with acceptance criteria."
    )]
    EmptyTask,
    #[error("`message` is empty: say what the executor should do next.")]
    EmptyMessage,
    #[error("unknown adapter `{0}`: use `codex` or `claude` (aliases `codex_mcp`, `claude_code`).")]
    UnknownAdapter(String),
    #[error(
        "unknown mode `{0}`: use `sync` (wait for the turn) or `async` (return at once, then poll check_session)."
    )]
    UnknownMode(String),
    #[error(
        "working_dir `{0}` does not exist or is not a directory: create it first, or pass an existing directory."
    )]
    NoSuchDir(String),
    #[error(
        "working_dir `{dir}` is outside the allowed roots ({roots}). Use a directory inside them, or add a root to `allowed_roots` in the zwarm config."
    )]
    OutsideRoots { dir: String, roots: String },
    #[error(
        "no session matches `{0}`. Call list_sessions to see session ids (any unique prefix of 8 or more characters works)."
    )]
    UnknownSession(String),
    #[error(
        "session id `{0}` is too short: give the full id or a unique prefix of at least 8 characters (see list_sessions)."
    )]
    ShortPrefix(String),
    #[error(
        "session id prefix `{prefix}` is ambiguous: it matches {candidates}. Give more characters."
    )]
    Ambiguous { prefix: String, candidates: String },
    #[error(
        "session {0} is busy: a turn is still running. Call check_session with wait_seconds to wait for it, or end_session to stop it."
    )]
    Busy(String),
    #[error(
        "session {id} has ended ({status}); it cannot continue. Start a new session with delegate."
    )]
    Ended { id: String, status: &'static str },
    #[error(
        "session {id} belongs to another zwarm server that is still running (pid {pid}). Continue it from that host, or after that server exits."
    )]
    ForeignOwner { id: String, pid: u32 },
    #[error("zwarm is shutting down; no new turns are started.")]
    ShuttingDown,
    #[error("watcher configuration: {0}")]
    Watchers(String),
    #[error(
        "session {0}: the running turn did not stop after the interrupt (its processes may be stuck). Try end_session again, or restart zwarm, which stops every executor."
    )]
    StillRunning(String),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(
        "could not save state: {0}. Check that the state dir is writable and the disk is not full."
    )]
    Store(#[from] StoreError),
}

/// A change other parts of zwarm may want to hear about (progress, resource updates).
#[derive(Debug, Clone)]
pub struct Notice {
    pub session_id: String,
    pub turn: u32,
    pub event: ExecutorEvent,
    pub message: Option<String>,
}

pub struct DelegateRequest {
    pub task: String,
    pub adapter: Option<String>,
    pub mode: Option<String>,
    pub model: Option<String>,
    pub working_dir: Option<String>,
}

#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    store: Store,
    instance: String,
    cwd: PathBuf,
    roots: Vec<PathBuf>,
    cells: Mutex<HashMap<String, Arc<Cell>>>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    notices: broadcast::Sender<Notice>,
    changes: broadcast::Sender<String>,
    watchers: Watchers,
}

struct Cell {
    session: Mutex<Session>,
    version: watch::Sender<u64>,
    turn: Mutex<Option<TurnControl>>,
    /// Where to announce that this session changed (resource-updated notifications).
    changes: broadcast::Sender<String>,
    /// end_session is in progress: no new turn may start.
    ending: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct TurnControl {
    /// The turn this control belongs to.
    index: u32,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a session lock must not wedge the server; the data is still valid
    // (every mutation is a plain field update).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cell {
    fn new(s: Session, changes: broadcast::Sender<String>) -> Arc<Cell> {
        Arc::new(Cell {
            session: Mutex::new(s),
            version: watch::channel(0).0,
            turn: Mutex::new(None),
            changes,
            ending: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn snapshot(&self) -> Session {
        lock(&self.session).clone()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
        let id = lock(&self.session).id.clone();
        let _ = self.changes.send(id);
    }
}

impl Manager {
    /// Open the state dir, take over sessions of dead servers, and be ready for tool calls.
    pub fn start(cfg: Config, cwd: PathBuf) -> Result<Manager, ManagerError> {
        let instance = uuid::Uuid::new_v4().to_string();
        let state_dir = if cfg.state_dir.is_absolute() {
            cfg.state_dir.clone()
        } else {
            cwd.join(&cfg.state_dir)
        };
        let store = Store::open(&state_dir, &instance)?;
        let roots = if cfg.allowed_roots.is_empty() {
            vec![cwd.clone()]
        } else {
            cfg.allowed_roots
                .iter()
                .map(|r| {
                    if r.is_absolute() {
                        r.clone()
                    } else {
                        cwd.join(r)
                    }
                })
                .collect()
        };
        let roots = roots
            .into_iter()
            .map(|r| std::fs::canonicalize(&r).unwrap_or(r))
            .collect();
        let slots = Arc::new(Semaphore::new(cfg.max_running));
        let watchers = Watchers::from_config(&cfg.watchers).map_err(ManagerError::Watchers)?;
        let inner = Arc::new(Inner {
            cfg,
            store,
            instance,
            cwd,
            roots,
            cells: Mutex::new(HashMap::new()),
            slots,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            notices: broadcast::channel(1024).0,
            changes: broadcast::channel(1024).0,
            watchers,
        });
        let m = Manager { inner };
        m.recover();
        // Orphans that exit on their own become zombies of zwarm (a subreaper): reap them.
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let stop = m.inner.shutdown.clone();
            h.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.cancelled() => break,
                    }
                    blocking(process::reap_orphan_zombies);
                }
            });
        }
        m.inner.store.append_event(
            "server_started",
            None,
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "cwd": m.inner.cwd.display().to_string()}),
        );
        Ok(m)
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn state_dir(&self) -> &Path {
        self.inner.store.root()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    /// Ids of sessions as they change (any field, any turn).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<String> {
        self.inner.changes.subscribe()
    }

    /// Adopt every session whose server is gone; fail the turns it left running.
    fn recover(&self) {
        for id in self.inner.store.session_ids().unwrap_or_default() {
            match self.adopt(&id) {
                Ok(_) | Err(ManagerError::ForeignOwner { .. }) => {}
                Err(e) => tracing::error!(session = %id, error = %e, "cannot adopt session"),
            }
        }
    }

    /// Take ownership of a session whose server died, and return its cell. Adoption is
    /// serialised by a lock on the state dir, and the owner is re-read under it, so two
    /// servers (or two calls) can never both adopt one session.
    fn adopt(&self, id: &str) -> Result<Arc<Cell>, ManagerError> {
        let _guard = self.inner.store.lock_adoption()?;
        if let Some(c) = lock(&self.inner.cells).get(id) {
            return Ok(c.clone());
        }
        let mut s = self
            .inner
            .store
            .load_session(id)?
            .ok_or_else(|| ManagerError::UnknownSession(id.to_string()))?;
        if s.owner.instance != self.inner.instance
            && self.inner.store.owner_alive(&s.owner.instance)
        {
            return Err(ManagerError::ForeignOwner {
                id: id.to_string(),
                pid: s.owner.pid,
            });
        }
        let mut recovered = None;
        if s.status.is_active() {
            let reason = format!(
                "the zwarm server running this turn (pid {}) stopped before it finished; the executor was stopped with it. Call converse to resume the same {} thread.",
                s.owner.pid,
                s.adapter.as_str()
            );
            if let Some(t) = s.last_turn_mut()
                && matches!(t.status, TurnStatus::Running | TurnStatus::Queued)
            {
                // Whatever the dead server's executor left running for this turn goes now.
                process::kill_marked(&format!("{id}.{}", t.index), None);
                t.status = TurnStatus::Interrupted;
                t.error = Some(reason.clone());
                t.ended_at = Some(now());
            }
            s.status = SessionStatus::Failed;
            s.error = Some(reason.clone());
            s.updated_at = now();
            recovered = Some(reason);
        }
        s.owner = self.owner();
        if let Err(e) = self.inner.store.save_session(&s) {
            // Not recorded, so not adopted: another server could claim it too. Readers fall
            // back to the file (see `get`); the next call retries.
            tracing::error!(session = %id, error = %e, "cannot record adoption");
            return Err(e.into());
        }
        if let Some(reason) = recovered {
            tracing::info!(session = %id, "marked a session left running by a stopped server as failed");
            self.inner.store.append_event(
                "session_recovered",
                Some(id),
                serde_json::json!({"status": "failed", "reason": reason}),
            );
        }
        let cell = Cell::new(s, self.inner.changes.clone());
        Ok(lock(&self.inner.cells)
            .entry(id.to_string())
            .or_insert(cell)
            .clone())
    }

    fn owner(&self) -> Owner {
        Owner {
            pid: std::process::id(),
            instance: self.inner.instance.clone(),
        }
    }

    fn check_dir(&self, dir: Option<&str>) -> Result<PathBuf, ManagerError> {
        let raw = match dir {
            Some(d) if !d.trim().is_empty() => PathBuf::from(d.trim()),
            _ => self.inner.cwd.clone(),
        };
        let abs = if raw.is_absolute() {
            raw.clone()
        } else {
            self.inner.cwd.join(&raw)
        };
        let canon = std::fs::canonicalize(&abs)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| ManagerError::NoSuchDir(raw.display().to_string()))?;
        if !self.inner.roots.iter().any(|r| canon.starts_with(r)) {
            return Err(ManagerError::OutsideRoots {
                dir: canon.display().to_string(),
                roots: self
                    .inner
                    .roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(canon)
    }

    /// Create a session and start its first turn. Returns the session id.
    pub fn delegate(&self, req: DelegateRequest) -> Result<String, ManagerError> {
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
            .unwrap_or(&self.inner.cfg.default_adapter);
        let adapter = Adapter::parse(adapter_name)
            .ok_or_else(|| ManagerError::UnknownAdapter(adapter_name.to_string()))?;
        let mode = match req.mode.as_deref().filter(|m| !m.trim().is_empty()) {
            None => Mode::Sync,
            Some(m) => Mode::parse(m).ok_or_else(|| ManagerError::UnknownMode(m.to_string()))?,
        };
        let dir = self.check_dir(req.working_dir.as_deref())?;
        let model = req.model.filter(|m| !m.trim().is_empty());
        // Dry run: a missing CLI or a bad setting is reported now, not as a failed turn.
        executor::build_process(
            adapter,
            &self.inner.cfg,
            &TurnPlan {
                working_dir: dir.clone(),
                prompt: task.clone(),
                resume_id: None,
            },
            model.as_deref(),
            Path::new("/dev/null"),
        )?;
        let id = uuid::Uuid::new_v4().to_string();
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
            owner: self.owner(),
            recent: Default::default(),
            watcher_notes: vec![],
        };
        let cell = Cell::new(s, self.inner.changes.clone());
        lock(&self.inner.cells).insert(id.clone(), cell.clone());
        self.inner.store.append_event(
            "session_started",
            Some(&id),
            serde_json::json!({"adapter": adapter.as_str(), "mode": mode, "working_dir": dir.display().to_string(), "task": text::truncate_chars(&task, 500)}),
        );
        if let Err(e) = self.start_turn(&cell, |_| Ok(task)) {
            lock(&self.inner.cells).remove(&id);
            self.inner.store.append_event(
                "session_failed_to_start",
                Some(&id),
                serde_json::json!({"error": e.to_string()}),
            );
            return Err(e);
        }
        Ok(id)
    }

    /// Continue a session with a new message. Returns (session id, turn number).
    pub fn converse(&self, id: &str, message: &str) -> Result<(String, u32), ManagerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        let message = message.trim();
        if message.is_empty() {
            return Err(ManagerError::EmptyMessage);
        }
        let cell = self.owned_cell(id)?;
        let (sid, n) = self.start_turn(&cell, |s| {
            if s.status.is_active() {
                return Err(ManagerError::Busy(s.id.clone()));
            }
            if s.status.is_final() {
                return Err(ManagerError::Ended {
                    id: s.id.clone(),
                    status: s.status.as_str(),
                });
            }
            // Without a native thread (the first turn failed before the executor started one)
            // there is nothing to resume: start over with the task and the new message.
            Ok(if s.native_id.is_some() {
                message.to_string()
            } else {
                format!("{}\n\n{}", s.task, message)
            })
        })?;
        self.inner.store.append_event(
            "message_sent",
            Some(&sid),
            serde_json::json!({"turn": n, "message": text::truncate_chars(message, 500)}),
        );
        Ok((sid, n))
    }

    /// Start the next turn of a session. `prepare` runs under the session lock and decides
    /// (checks the status, builds the prompt), so two calls can never both start a turn.
    fn start_turn(
        &self,
        cell: &Arc<Cell>,
        prepare: impl FnOnce(&Session) -> Result<String, ManagerError>,
    ) -> Result<(String, u32), ManagerError> {
        // Take a slot now if one is free, so the answer already says `running`; otherwise the
        // turn is `queued` and its task waits for a slot.
        let permit = self.inner.slots.clone().try_acquire_owned().ok();
        let initial = if permit.is_some() {
            (TurnStatus::Running, SessionStatus::Running)
        } else {
            (TurnStatus::Queued, SessionStatus::Queued)
        };
        let (id, index, control) = {
            let mut s = lock(&cell.session);
            if cell.ending.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ManagerError::Ended {
                    id: s.id.clone(),
                    status: "being ended",
                });
            }
            let prompt = prepare(&s)?;
            let before = (s.status, s.error.clone(), s.updated_at.clone());
            let index = s.turns.len() as u32 + 1;
            let control = TurnControl {
                index,
                cancel: self.inner.shutdown.child_token(),
                reason: Arc::new(Mutex::new(None)),
            };
            s.turns.push(Turn {
                index,
                prompt,
                status: initial.0,
                response: None,
                error: None,
                api_status: None,
                usage: Default::default(),
                cost_usd: None,
                started_at: now(),
                ended_at: None,
                commands: vec![],
                files_changed: vec![],
                permission_denials: vec![],
                messages: vec![],
            });
            s.status = initial.1;
            s.error = None;
            s.updated_at = now();
            s.owner = self.owner();
            if let Err(e) = self.inner.store.save_session(&s) {
                // Not acknowledged: undo, so memory matches disk.
                s.turns.pop();
                (s.status, s.error, s.updated_at) = before;
                return Err(e.into());
            }
            *lock(&cell.turn) = Some(control.clone());
            (s.id.clone(), index, control)
        };
        cell.bump();
        let inner = self.inner.clone();
        let cell = cell.clone();
        let sid = id.clone();
        self.inner.tasks.spawn(async move {
            use futures::FutureExt;
            let run = run_turn(inner.clone(), cell.clone(), index, control, permit);
            if std::panic::AssertUnwindSafe(run).catch_unwind().await.is_err() {
                tracing::error!(session = %sid, turn = index, "turn task panicked");
                blocking(|| process::kill_marked(&format!("{sid}.{index}"), None));
                let outcome = Outcome {
                    failed: Some((
                        "internal error in zwarm while running this turn (please report it with the turn's log under the state dir's turns/ folder). Call converse to retry.".into(),
                        None,
                    )),
                    ..Default::default()
                };
                finish(&inner, &cell, index, outcome, None);
            }
        });
        tracing::info!(session = %id, turn = index, "turn started");
        Ok((id, index))
    }

    /// Resolve an id or unique prefix (8+ characters) among this server's and on-disk sessions.
    pub fn resolve(&self, prefix: &str) -> Result<String, ManagerError> {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            return Err(ManagerError::UnknownSession(String::new()));
        }
        let mut ids: Vec<String> = lock(&self.inner.cells).keys().cloned().collect();
        ids.extend(self.inner.store.session_ids().unwrap_or_default());
        ids.sort();
        ids.dedup();
        if ids.iter().any(|i| i == prefix) {
            return Ok(prefix.to_string());
        }
        if prefix.len() < 8 {
            return Err(ManagerError::ShortPrefix(prefix.to_string()));
        }
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(prefix)).collect();
        match matches.as_slice() {
            [] => Err(ManagerError::UnknownSession(prefix.to_string())),
            [one] => Ok((*one).clone()),
            many => Err(ManagerError::Ambiguous {
                prefix: prefix.to_string(),
                candidates: many
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// A session's current state (this server's in memory, others' from disk).
    pub fn get(&self, id: &str) -> Result<Session, ManagerError> {
        let id = self.resolve(id)?;
        if let Some(c) = lock(&self.inner.cells).get(&id) {
            return Ok(c.snapshot());
        }
        match self.inner.store.load_session(&id)? {
            Some(s) if self.inner.store.owner_alive(&s.owner.instance) => Ok(s),
            Some(_) => match self.adopt(&id) {
                Ok(c) => Ok(c.snapshot()),
                // Adopted by another live server in the meantime, or the adoption could not be
                // recorded: read the file as it is.
                Err(ManagerError::ForeignOwner { .. } | ManagerError::Store(_)) => self
                    .inner
                    .store
                    .load_session(&id)?
                    .ok_or(ManagerError::UnknownSession(id)),
                Err(e) => Err(e),
            },
            None => Err(ManagerError::UnknownSession(id)),
        }
    }

    /// The cell of a session this server may run turns for (adopting it if its owner died).
    fn owned_cell(&self, id: &str) -> Result<Arc<Cell>, ManagerError> {
        let id = self.resolve(id)?;
        if let Some(c) = lock(&self.inner.cells).get(&id) {
            return Ok(c.clone());
        }
        self.adopt(&id)
    }

    /// Every session (this server's and others' on the same state dir), newest first.
    pub fn list(&self, status: Option<SessionStatus>) -> Vec<Session> {
        all_sessions(&self.inner)
            .into_iter()
            .filter(|s| status.is_none_or(|st| s.status == st))
            .collect()
    }

    /// Keep notes from pre-call watchers on the session they concern (shown by check_session).
    pub fn attach_notes(&self, id: &str, turn: Option<u32>, notes: &[WatcherNote]) {
        if notes.is_empty() {
            return;
        }
        let Some(cell) = lock(&self.inner.cells).get(id).cloned() else {
            return;
        };
        {
            let mut s = lock(&cell.session);
            for n in notes {
                let mut n = n.clone();
                n.turn = n.turn.or(turn);
                s.watcher_notes.push(n);
            }
            let excess = s.watcher_notes.len().saturating_sub(100);
            s.watcher_notes.drain(..excess);
            if let Err(e) = self.inner.store.save_session(&s) {
                tracing::error!(error = %e, "cannot save session");
            }
        }
        cell.bump();
    }

    /// Names of the enabled watchers.
    pub fn watcher_names(&self) -> Vec<&'static str> {
        self.inner.watchers.names()
    }

    /// Run the watchers before a tool call. `Err` is a refusal with the text to show;
    /// `Ok` carries notes to add to the result.
    pub fn before_call(
        &self,
        tool: &str,
        args: &serde_json::Value,
        acknowledge: bool,
    ) -> Result<Vec<WatcherNote>, String> {
        let sessions = self.list(None);
        let d = self
            .inner
            .watchers
            .before_call(&CallInfo { tool, args }, &sessions, acknowledge);
        for f in &d.firings {
            self.inner.store.append_event(
                "watcher_fired",
                None,
                serde_json::json!({"watcher": f.watcher, "action": f.action, "message": f.message, "tool": tool}),
            );
        }
        if let Some(reason) = &d.abort_now {
            interrupt_all(&self.inner, &format!("aborted by watcher {reason}"));
            self.inner.store.append_event(
                "watchers_abort",
                None,
                serde_json::json!({"reason": reason}),
            );
        }
        if acknowledge && self.inner.watchers.gate().paused.is_none() && starts_work(tool) {
            self.inner.store.append_event(
                "pause_acknowledged",
                None,
                serde_json::json!({"tool": tool}),
            );
        }
        match d.refuse {
            Some(r) => {
                self.inner.store.append_event(
                    "call_refused",
                    None,
                    serde_json::json!({"tool": tool, "reason": r}),
                );
                Err(r)
            }
            None => Ok(d.firings.iter().map(|f| f.note(None)).collect()),
        }
    }
}

fn starts_work(tool: &str) -> bool {
    matches!(tool, "delegate" | "converse")
}

/// Every session on the state dir: this server's from memory, others' from disk.
fn all_sessions(inner: &Inner) -> Vec<Session> {
    let cells: Vec<Arc<Cell>> = lock(&inner.cells).values().cloned().collect();
    let mut v: Vec<Session> = cells.iter().map(|c| c.snapshot()).collect();
    // Only files of sessions this server does not hold are read (watchers call this before
    // every tool call).
    let held: std::collections::HashSet<&str> = v.iter().map(|s| s.id.as_str()).collect();
    let others: Vec<String> = inner
        .store
        .session_ids()
        .unwrap_or_default()
        .into_iter()
        .filter(|id| !held.contains(id.as_str()))
        .collect();
    for id in others {
        match inner.store.load_session(&id) {
            Ok(Some(s)) => v.push(s),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "skipping unreadable session file"),
        }
    }
    v.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.id.cmp(&b.id)));
    v
}

/// Interrupt every running or queued turn of this server (a watcher aborted).
fn interrupt_all(inner: &Inner, reason: &str) {
    let cells: Vec<Arc<Cell>> = lock(&inner.cells).values().cloned().collect();
    for c in cells {
        if !c.snapshot().status.is_active() {
            continue;
        }
        if let Some(control) = lock(&c.turn).clone() {
            lock(&control.reason).get_or_insert_with(|| reason.to_string());
            control.cancel.cancel();
        }
    }
}

/// Record watcher firings about a session's turn, and enforce an abort.
fn record_firings(inner: &Inner, cell: &Cell, turn: u32, firings: &[Firing]) {
    if firings.is_empty() {
        return;
    }
    let id = {
        let mut s = lock(&cell.session);
        for f in firings {
            s.watcher_notes.push(f.note(Some(turn)));
        }
        let excess = s.watcher_notes.len().saturating_sub(100);
        s.watcher_notes.drain(..excess);
        if let Err(e) = inner.store.save_session(&s) {
            tracing::error!(error = %e, "cannot save session");
        }
        s.id.clone()
    };
    for f in firings {
        tracing::info!(session = %id, watcher = %f.watcher, action = ?f.action, message = %f.message, "watcher fired");
        inner.store.append_event(
            "watcher_fired",
            Some(&id),
            serde_json::json!({"turn": turn, "watcher": f.watcher, "action": f.action, "message": f.message}),
        );
    }
    if let Some(w) = crate::watch::winner(firings)
        && w.action == Action::Abort
    {
        let reason = format!("aborted by watcher {}: {}", w.watcher, w.message);
        interrupt_all(inner, &reason);
        inner.store.append_event(
            "watchers_abort",
            Some(&id),
            serde_json::json!({"reason": reason}),
        );
    }
}

impl Manager {
    /// Wait until the session's turn is no longer queued/running, `timeout` passes, or `cancel`
    /// fires. Returns the session as it is then.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Session, ManagerError> {
        let id = self.resolve(id)?;
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        let cell = lock(&self.inner.cells).get(&id).cloned();
        match cell {
            Some(cell) => {
                let mut rx = cell.version.subscribe();
                loop {
                    let s = cell.snapshot();
                    if !s.status.is_active() {
                        return Ok(s);
                    }
                    tokio::select! {
                        r = rx.changed() => { if r.is_err() { return Ok(cell.snapshot()); } }
                        _ = tokio::time::sleep_until(deadline) => return Ok(cell.snapshot()),
                        _ = cancel.cancelled() => return Ok(cell.snapshot()),
                    }
                }
            }
            None => loop {
                // Another server's session: poll its file.
                let s = self.get(&id)?;
                if !s.status.is_active() || Instant::now() >= deadline || cancel.is_cancelled() {
                    return Ok(s);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = cancel.cancelled() => {}
                }
            },
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
        let cell = self.owned_cell(id)?;
        // Read the status and the control under the session lock, so they belong together.
        let control = {
            let s = lock(&cell.session);
            let control = lock(&cell.turn).clone();
            let current = s.turns.last().map(|t| t.index);
            control.filter(|c| {
                s.status.is_active()
                    && Some(c.index) == current
                    && turn.is_none_or(|t| t == c.index)
            })
        };
        let Some(control) = control else {
            return Ok(false);
        };
        lock(&control.reason).get_or_insert_with(|| reason.to_string());
        control.cancel.cancel();
        let mut rx = cell.version.subscribe();
        let limit =
            Instant::now() + Duration::from_secs(self.inner.cfg.interrupt_grace_seconds + 15);
        let ended = |c: &Cell| {
            lock(&c.session)
                .turns
                .iter()
                .any(|t| t.index == control.index && t.ended_at.is_some())
        };
        while !ended(&cell) {
            tokio::select! {
                r = rx.changed() => { if r.is_err() { break; } }
                _ = tokio::time::sleep_until(limit) => {
                    tracing::error!(session = %cell.snapshot().id, "turn did not stop after interrupt");
                    return Err(ManagerError::StillRunning(cell.snapshot().id));
                }
            }
        }
        Ok(true)
    }

    /// End a session with a verdict; a running turn is interrupted first.
    pub async fn end(
        &self,
        id: &str,
        verdict: SessionStatus,
        summary: Option<String>,
    ) -> Result<(Session, bool), ManagerError> {
        let cell = self.owned_cell(id)?;
        let sid = {
            let s = lock(&cell.session);
            if s.status.is_final() {
                return Err(ManagerError::Ended {
                    id: s.id.clone(),
                    status: s.status.as_str(),
                });
            }
            // From here no new turn can start (start_turn checks this under the same lock),
            // and a second end_session is refused.
            if cell
                .ending
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return Err(ManagerError::Ended {
                    id: s.id.clone(),
                    status: "being ended",
                });
            }
            s.id.clone()
        };
        let interrupted = match self
            .interrupt(
                &sid,
                &format!("interrupted by end_session ({})", verdict.as_str()),
            )
            .await
        {
            Ok(i) => i,
            Err(e) => {
                cell.ending.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let s = {
            let mut s = lock(&cell.session);
            let before = (s.status, s.summary.clone(), s.updated_at.clone());
            s.status = verdict;
            s.summary = summary.filter(|x| !x.trim().is_empty());
            s.updated_at = now();
            if let Err(e) = self.inner.store.save_session(&s) {
                (s.status, s.summary, s.updated_at) = before;
                cell.ending.store(false, Ordering::SeqCst);
                return Err(e.into());
            }
            // Verdict `failed` is not final: converse may retry, so new turns are allowed again.
            if !verdict.is_final() {
                cell.ending.store(false, Ordering::SeqCst);
            }
            s.clone()
        };
        cell.bump();
        self.inner.store.append_event(
            "session_ended",
            Some(&sid),
            serde_json::json!({"verdict": verdict, "summary": s.summary, "interrupted_turn": interrupted}),
        );
        Ok((s, interrupted))
    }

    /// Interrupt every running turn, record them, and return once all turn tasks have ended
    /// (or `limit` passed).
    pub async fn shutdown(&self, limit: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(limit, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("turns still running at shutdown deadline");
        }
        self.inner
            .store
            .append_event("server_stopped", None, serde_json::json!({}));
    }

    pub fn recent_events(&self, limit: usize) -> Vec<serde_json::Value> {
        self.inner.store.recent_events(limit)
    }
}

#[derive(Default)]
struct Outcome {
    completed: bool,
    failed: Option<(String, Option<u16>)>,
    interrupted: Option<String>,
    last_warning: Option<String>,
}

enum Step {
    Line(Option<Result<String, LinesCodecError>>),
    Cancelled,
    TimedOut,
    Exited,
}

async fn run_turn(
    inner: Arc<Inner>,
    cell: Arc<Cell>,
    index: u32,
    control: TurnControl,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let interrupted_reason = |inner: &Inner| {
        lock(&control.reason).clone().unwrap_or_else(|| {
            if inner.shutdown.is_cancelled() {
                "the zwarm server shut down while this turn was running. Call converse to resume the same thread.".to_string()
            } else {
                "interrupted".to_string()
            }
        })
    };
    let permit = match permit {
        Some(p) => Some(p),
        None => tokio::select! {
            p = inner.slots.clone().acquire_owned() => p.ok(),
            _ = control.cancel.cancelled() => None,
        },
    };
    let mut outcome = Outcome::default();
    if permit.is_none() || control.cancel.is_cancelled() {
        outcome.interrupted = Some(interrupted_reason(&inner));
        finish(&inner, &cell, index, outcome, None);
        return;
    }
    let (id, adapter, plan, model) = {
        let mut s = lock(&cell.session);
        if !s.status.is_final() && s.turns.last().map(|t| t.index) == Some(index) {
            s.status = SessionStatus::Running;
        }
        if let Some(t) = s.turn_mut(index) {
            t.status = TurnStatus::Running;
            t.started_at = now();
        }
        s.updated_at = now();
        if let Err(e) = inner.store.save_session(&s) {
            tracing::error!(error = %e, "cannot save session");
        }
        let plan = TurnPlan {
            working_dir: PathBuf::from(&s.working_dir),
            prompt: s.turn(index).map(|t| t.prompt.clone()).unwrap_or_default(),
            resume_id: s.native_id.clone(),
        };
        (s.id.clone(), s.adapter, plan, s.model.clone())
    };
    cell.bump();
    inner.store.append_event(
        "turn_started",
        Some(&id),
        serde_json::json!({"turn": index, "resume": plan.resume_id}),
    );

    let (mut raw, mut errlog, last_path) = match inner.store.open_turn_logs(&id, index) {
        Ok(x) => x,
        Err(e) => {
            outcome.failed = Some((format!("could not open turn logs: {e}"), None));
            finish(&inner, &cell, index, outcome, None);
            return;
        }
    };
    let spec =
        match executor::build_process(adapter, &inner.cfg, &plan, model.as_deref(), &last_path) {
            Ok(s) => s,
            Err(e) => {
                outcome.failed = Some((e.to_string(), None));
                finish(&inner, &cell, index, outcome, None);
                return;
            }
        };
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
            finish(&inner, &cell, index, outcome, None);
            return;
        }
    };
    let pgid = child.id();
    let _registered = process::ExecutorGuard(pgid);
    tracing::info!(session = %id, turn = index, pid = ?pgid, program = %spec.program.display(), "executor started");
    let stderr_task = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            use std::io::Write;
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 8192];
            loop {
                match err.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let _ = errlog.write_all(&buf[..n]);
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
        finish(&inner, &cell, index, outcome, None);
        return;
    };
    let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE));
    let mut parser = Parser::new(adapter);
    let deadline = Instant::now() + Duration::from_secs(inner.cfg.turn_timeout_seconds);
    let mut exited = false;
    let mut drain_until: Option<Instant> = None;
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
            Step::Line(Some(Ok(line))) => {
                use std::io::Write;
                let _ = raw
                    .write_all(line.as_bytes())
                    .and_then(|_| raw.write_all(b"\n"));
                for ev in parser.parse_line(&line) {
                    apply(&inner, &cell, index, ev, &mut outcome);
                }
            }
            Step::Line(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                tracing::warn!(session = %id, "executor line longer than {MAX_LINE} bytes skipped");
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
                let grace = if inner.shutdown.is_cancelled() {
                    Duration::from_millis(600)
                } else {
                    Duration::from_secs(inner.cfg.interrupt_grace_seconds)
                };
                process::terminate(&mut child, &marker, grace).await;
                exited = true;
                // Read what the executor printed while stopping, briefly.
                drain_until.get_or_insert(Instant::now() + Duration::from_millis(300));
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
    blocking(|| process::cleanup_after_exit(pgid, &marker));
    let stderr_tail = match stderr_task {
        Some(t) => tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default(),
        None => String::new(),
    };
    let last_message = std::fs::read_to_string(&last_path)
        .ok()
        .filter(|s| !s.trim().is_empty());
    let _ = std::fs::remove_file(&last_path);
    drop(permit);
    finish_with_exit(
        &inner,
        &cell,
        index,
        outcome,
        exit,
        last_message,
        stderr_tail,
    );
}

fn apply(inner: &Inner, cell: &Cell, index: u32, ev: ExecutorEvent, outcome: &mut Outcome) {
    let mut significant = true;
    let message = ev.summary(lock(&cell.session).adapter.as_str());
    let (id, firings) = {
        let mut s = lock(&cell.session);
        match &ev {
            ExecutorEvent::SessionStarted { native_id, model } => {
                s.native_id = Some(native_id.clone());
                if s.model.is_none() {
                    s.model = model.clone();
                }
            }
            ExecutorEvent::TurnCompleted {
                usage,
                scope,
                cost_usd,
                final_text,
            } => {
                outcome.completed = true;
                record_usage(&mut s, index, *usage, *scope, *cost_usd);
                if let (Some(t), Some(text)) = (s.turn_mut(index), final_text) {
                    t.response = Some(text.clone());
                }
            }
            ExecutorEvent::TurnFailed {
                message,
                api_status,
                usage,
                scope,
                cost_usd,
            } => {
                outcome.failed = Some((message.clone(), *api_status));
                record_usage(&mut s, index, *usage, *scope, *cost_usd);
            }
            ExecutorEvent::Warning { message } => {
                outcome.last_warning = Some(message.clone());
            }
            _ => {}
        }
        if let Some(t) = s.turn_mut(index) {
            match &ev {
                ExecutorEvent::AgentMessage { text } => {
                    if let Some(prev) = t.response.take() {
                        t.messages.push(text::truncate_chars(&prev, MESSAGE_CAP));
                    }
                    t.response = Some(text.clone());
                }
                ExecutorEvent::CommandFinished {
                    command,
                    exit_code,
                    output,
                    ok,
                    ..
                } => t.commands.push(CommandRecord {
                    command: command.clone(),
                    exit_code: *exit_code,
                    ok: *ok,
                    output_tail: text::tail_bytes(output, OUTPUT_TAIL).to_string(),
                }),
                ExecutorEvent::FilesChanged { changes } => {
                    for c in changes {
                        t.files_changed.retain(|f| f.path != c.path);
                        t.files_changed.push(c.clone());
                    }
                }
                ExecutorEvent::PermissionDenied(d) => t.permission_denials.push(d.clone()),
                ExecutorEvent::Other { .. }
                | ExecutorEvent::TurnStarted
                | ExecutorEvent::Reasoning { .. } => {
                    significant = false;
                }
                _ => {}
            }
        }
        if let Some(line) = &message {
            s.push_progress(line.clone());
        }
        s.updated_at = now();
        if significant && let Err(e) = inner.store.save_session(&s) {
            tracing::error!(error = %e, "cannot save session");
        }
        // Per-event watchers are cheap (no I/O): run them on the session as it is, without
        // copying it; their firings are recorded once the lock is released.
        (s.id.clone(), inner.watchers.on_event(&s, &ev))
    };
    record_firings(inner, cell, index, &firings);
    cell.bump();
    let _ = inner.notices.send(Notice {
        session_id: id,
        turn: index,
        event: ev,
        message,
    });
}

fn record_usage(
    s: &mut Session,
    index: u32,
    usage: Option<crate::event::Usage>,
    scope: UsageScope,
    cost: Option<f64>,
) {
    let Some(u) = usage else { return };
    let per_turn = match scope {
        UsageScope::Thread => {
            let d = u.delta_since(&s.native_usage);
            s.native_usage = u;
            d
        }
        UsageScope::Invocation => u,
    };
    if let Some(t) = s.turn_mut(index) {
        t.usage = per_turn;
        if cost.is_some() {
            t.cost_usd = cost;
        }
    }
}

fn finish_with_exit(
    inner: &Inner,
    cell: &Cell,
    index: u32,
    mut outcome: Outcome,
    exit: Option<std::process::ExitStatus>,
    last_message: Option<String>,
    stderr_tail: String,
) {
    if !outcome.completed && outcome.failed.is_none() && outcome.interrupted.is_none() {
        let adapter = lock(&cell.session).adapter;
        let status = match exit {
            Some(e) => describe_exit(e),
            None => "an unknown status".into(),
        };
        let hint = explain_failure(adapter, &stderr_tail, &lock(&cell.session));
        let detail = hint.unwrap_or_else(|| {
            let tail = text::tail_bytes(stderr_tail.trim(), 1500)
                .trim()
                .to_string();
            let tail = if tail.is_empty() {
                outcome.last_warning.clone().unwrap_or_default()
            } else {
                tail
            };
            if tail.is_empty() {
                String::new()
            } else {
                format!(" Its last output: {tail}")
            }
        });
        outcome.failed = Some((
            format!(
                "{} exited with {status} without finishing the turn.{detail}",
                adapter.as_str()
            ),
            None,
        ));
    }
    finish(inner, cell, index, outcome, last_message);
}

fn describe_exit(e: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (e.code(), e.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "an unknown status".into(),
    }
}

/// Turn well-known executor failures into advice (they arrive in stderr or in the stream).
fn explain_failure(adapter: Adapter, text: &str, s: &Session) -> Option<String> {
    let native = s.native_id.clone().unwrap_or_default();
    if adapter == Adapter::Claude && text.contains("No conversation found") {
        return Some(format!(
            " claude could not resume its session {native}: it finds conversations only from the directory they started in ({}), and the transcript may have been removed. Start a new session with delegate.",
            s.working_dir
        ));
    }
    if adapter == Adapter::Codex && text.contains("no rollout found") {
        return Some(format!(
            " codex could not resume thread {native}: its rollout is gone from CODEX_HOME. Start a new session with delegate."
        ));
    }
    if text.contains("cannot be used with root/sudo privileges") {
        return Some(
            " claude refuses bypassPermissions as root unless IS_SANDBOX=1 is set for zwarm."
                .into(),
        );
    }
    None
}

fn finish(inner: &Inner, cell: &Cell, index: u32, outcome: Outcome, last_message: Option<String>) {
    let (id, status, error, snapshot) = {
        let mut s = lock(&cell.session);
        let (turn_status, session_status, error, api_status) =
            if let Some(reason) = outcome.interrupted {
                (
                    TurnStatus::Interrupted,
                    SessionStatus::Failed,
                    Some(reason),
                    None,
                )
            } else if let Some((msg, api)) = outcome.failed {
                let msg = match explain_failure(s.adapter, &msg, &s) {
                    Some(hint) if !msg.contains(hint.trim()) => format!("{msg}.{hint}"),
                    _ => msg,
                };
                (TurnStatus::Failed, SessionStatus::Failed, Some(msg), api)
            } else {
                (TurnStatus::Completed, SessionStatus::Idle, None, None)
            };
        let codex = s.adapter == Adapter::Codex;
        let latest = s.turns.last().map(|t| t.index) == Some(index);
        if s.turn(index).is_some_and(|t| t.ended_at.is_some()) {
            // Already finished (a panic after finishing re-enters here): keep the record.
            return;
        }
        if let Some(t) = s.turn_mut(index) {
            // codex's -o file holds the final message even when the JSONL stream lost it
            // (openai/codex#19689); for other executors it is only a fallback.
            match last_message {
                Some(m) if codex || t.response.is_none() => t.response = Some(m),
                _ => {}
            }
            t.status = turn_status;
            t.error = error.clone();
            t.api_status = api_status;
            t.ended_at = Some(now());
        }
        // end_session may have closed the session meanwhile: its verdict stands. And only the
        // latest turn speaks for the session's status.
        if !s.status.is_final() && latest {
            s.status = session_status;
            s.error = error.clone();
        }
        s.updated_at = now();
        if let Err(e) = inner.store.save_session(&s) {
            tracing::error!(error = %e, "cannot save session");
        }
        // Release this turn's control in the same critical section: once the status says the
        // turn is over, a converse may start the next turn and install its own control.
        let mut control = lock(&cell.turn);
        if control.as_ref().is_some_and(|c| c.index == index) {
            *control = None;
        }
        drop(control);
        (s.id.clone(), turn_status, error, s.clone())
    };
    let firings = blocking(|| inner.watchers.after_turn(&snapshot, &all_sessions(inner)));
    record_firings(inner, cell, index, &firings);
    cell.bump();
    inner.store.append_event(
        "turn_finished",
        Some(&id),
        serde_json::json!({"turn": index, "status": status, "error": error}),
    );
    tracing::info!(session = %id, turn = index, ?status, "turn finished");
}
