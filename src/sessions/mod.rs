//! The session engine: the facade the MCP server (and any other front end) drives.
//!
//! Every turn runs in a supervisor task owned by the engine ([`turn`]), whatever the tool
//! call's mode: a sync call simply waits on the session for a while, an async call does not.
//! So a host that gives up on a call never loses the turn, and the MCP handlers stay thin.
//! The engine knows nothing about MCP.
//!
//! How state flows:
//! - **Status changes** (session created, turn started, turn finished, session ended,
//!   adopted, watcher abort) are applied to the held session under its lock, submitted to the
//!   store in the same critical section (so their order is the order they happened), and
//!   committed before anything reports them: the caller awaits the commit, and readers wait
//!   for the last status change of a session to be committed before they show it.
//! - **Progress** (each executor event) changes only memory; a flusher writes changed
//!   sessions in batches, at most every [`FLUSH_INTERVAL`] or [`turn::FLUSH_EVENTS`] events.
//! - **Questions** (list, check, prefix resolution, the event log, watcher totals) are indexed
//!   queries or running totals ([`crate::fleet`]); nothing reads every session.
//! - **Start-up** opens the database and touches only sessions that were running (adopted in
//!   the background); a 0.2 state dir is imported once.

mod fold;
pub mod isolation;
mod lines;
mod multi;
mod registry;
mod turn;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::event::ExecutorEvent;
use crate::executor::{self, Adapter, ExecutorError, TurnPlan};
use crate::fleet::{Fleet, Stat};
use crate::model::{Mode, Owner, Session, SessionStatus, Turn, TurnStatus, WatcherNote, now};
use crate::process;
use crate::store::{SessionImage, SessionRow, Store, StoreError, Write};
use crate::text;
use crate::watch::{CallInfo, Watchers};

use registry::{Handle, Registry, TurnControl, owner_alive};

pub use fold::Outcome;
pub use lines::{Line, LossyLines};
pub use multi::MAX_IDS as MAX_WAIT_IDS;

/// Longest any wait may be (a day): larger requests are clamped, never overflow.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);
/// Progress of running turns reaches the database at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How often a server looks for turns left running by servers that died.
pub const RECOVER_INTERVAL: Duration = Duration::from_secs(3);

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
        "session {id} was stopped by a watcher ({reason}); it takes no more turns. Review what it did (check_session), then end it, and delegate a new session if the work should go on."
    )]
    Aborted { id: String, reason: String },
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
    #[error("session {id} could not be read from the state database: {reason}")]
    Unreadable { id: String, reason: String },
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(
        "could not save state: {0}. Nothing was started or changed. Check that the state dir is writable and the disk is not full."
    )]
    Store(StoreError),
    #[error(
        "could not read state: {0}. Check that the state dir is readable; `zwarm doctor` checks it."
    )]
    StoreRead(StoreError),
    #[error(
        "unknown isolation `{0}`: use `none` (the session works in the project directory) or `worktree` (a git worktree and branch of its own)."
    )]
    BadIsolation(String),
    #[error(
        "`base` (`{0}`) applies only with isolation \"worktree\": add isolation: \"worktree\", or omit base."
    )]
    BaseWithoutWorktree(String),
    #[error(
        "base `{base}` cannot be used: {reason}. Give a branch, tag or commit of the project's repository, or omit base to start from its current HEAD."
    )]
    BadBase { base: String, reason: String },
    #[error(
        "working_dir `{0}` is not in a git repository, so isolation \"worktree\" cannot be used there. Use isolation \"none\", or make it a git repository with at least one commit (`git init && git add -A && git commit -m init`)."
    )]
    NotGitRepo(String),
    #[error(
        "{n} session worktrees exist already (max_worktrees is {max}). End sessions you are done with (end_session with integrate merge, keep or discard removes their worktree), or raise max_worktrees in the zwarm config."
    )]
    TooManyWorktrees { n: usize, max: usize },
    #[error("git: {0}")]
    Git(String),
    #[error(
        "session {id}'s worktree `{path}` no longer exists (it was removed outside zwarm); zwarm will not run the session anywhere else. Its branch `{branch}` holds every committed turn: end_session, then delegate a new session with isolation \"worktree\" and base `{branch}` to go on."
    )]
    WorktreeGone {
        id: String,
        path: String,
        branch: String,
    },
    #[error(
        "session {id}'s worktree was removed at end_session ({state}); zwarm will not run the session anywhere else. Its branch `{branch}` holds its work (unless discarded): delegate a new session with isolation \"worktree\" and base `{branch}` to go on."
    )]
    WorktreeRemoved {
        id: String,
        state: &'static str,
        branch: String,
    },
    #[error(
        "unknown integrate `{0}`: use `merge` (merge the session's branch into the project's checked-out branch), `keep` (remove the worktree, keep the branch; the default) or `discard` (remove both)."
    )]
    BadIntegrate(String),
    #[error(
        "session {id} has no worktree (isolation none): it worked in the project directly, so `{integrate}` does not apply. Omit it."
    )]
    NotIsolated { id: String, integrate: &'static str },
    #[error(
        "session {0} is busy: a turn is still running. Wait for it (check_session with wait_seconds), review its diff, then call end_session with integrate merge."
    )]
    MergeBusy(String),
    #[error("{0}")]
    MergeRefused(String),
}

/// Write failures and read failures say different things (and suggest different fixes).
impl From<StoreError> for ManagerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Commit(_) | StoreError::Conflict(_) | StoreError::Closed => {
                ManagerError::Store(e)
            }
            StoreError::Io { .. } | StoreError::Db { .. } | StoreError::Corrupt { .. } => {
                ManagerError::StoreRead(e)
            }
        }
    }
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
    /// `none` or `worktree` (default: the config's `isolation`).
    pub isolation: Option<String>,
    /// The git ref a worktree session's branch starts from (default: the project's HEAD).
    pub base: Option<String>,
}

/// A page of `list_sessions`.
pub struct Page {
    pub sessions: Vec<SessionRow>,
    pub total: usize,
}

#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

pub(crate) struct FleetView {
    pub fleet: Fleet,
    /// Highest store revision folded into `fleet`.
    pub rev: i64,
}

pub(crate) struct Inner {
    pub cfg: Config,
    pub store: Store,
    instance: String,
    cwd: PathBuf,
    roots: Vec<PathBuf>,
    registry: Registry,
    pub slots: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub notices: broadcast::Sender<Notice>,
    pub changes: broadcast::Sender<String>,
    pub watchers: Watchers,
    pub fleet: tokio::sync::Mutex<FleetView>,
    /// Held sessions with unflushed progress.
    dirty: parking_lot::Mutex<HashSet<String>>,
    flush_now: tokio::sync::Notify,
    /// Serialises adoptions within this server (the store's compare-and-set does it between
    /// servers).
    adopting: tokio::sync::Mutex<()>,
    /// Set at shutdown: every running turn's executor must be stopped by then.
    pub stop_by: parking_lot::Mutex<Option<Instant>>,
    /// The start-up recovery has run (lists wait for it, so they never show a dead server's
    /// turn as running).
    recovered_once: std::sync::atomic::AtomicBool,
    recovered: tokio::sync::Notify,
}

/// How to undo a turn's start whose commit failed.
pub(crate) struct Undo {
    status: SessionStatus,
    error: Option<String>,
    updated_at: String,
    turns: usize,
}

impl Undo {
    fn of(s: &Session) -> Undo {
        Undo {
            status: s.status,
            error: s.error.clone(),
            updated_at: s.updated_at.clone(),
            turns: s.turns.len(),
        }
    }

    pub fn apply(&self, s: &mut Session) {
        s.turns.truncate(self.turns);
        s.status = self.status;
        s.error = self.error.clone();
        s.updated_at = self.updated_at.clone();
    }
}

impl Inner {
    pub fn mark_dirty(&self, id: &str, now: bool) {
        self.dirty.lock().insert(id.to_string());
        if now {
            self.flush_now.notify_one();
        }
    }

    /// Write the progress of every changed held session (one batch, not awaited).
    fn flush(&self) {
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
        let _ = self.store.submit(writes);
    }

    /// Interrupt every running or queued turn of this server (a server-wide abort).
    pub fn interrupt_all(&self, reason: &str) {
        for h in self.registry.all() {
            let control = h.live.lock().control.clone();
            if let Some(c) = control {
                c.stop(reason);
            }
        }
    }

    /// Resolve and check a working directory: it exists, and lies inside the allowed roots.
    /// Blocking (filesystem): call off the async workers.
    pub fn check_dir(&self, dir: Option<&str>) -> Result<PathBuf, ManagerError> {
        let raw = match dir {
            Some(d) if !d.trim().is_empty() => PathBuf::from(d.trim()),
            _ => self.cwd.clone(),
        };
        let abs = if raw.is_absolute() {
            raw.clone()
        } else {
            self.cwd.join(&raw)
        };
        let canon = std::fs::canonicalize(&abs)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| ManagerError::NoSuchDir(raw.display().to_string()))?;
        if !self.roots.iter().any(|r| canon.starts_with(r)) {
            return Err(ManagerError::OutsideRoots {
                dir: canon.display().to_string(),
                roots: self
                    .roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(canon)
    }

    fn owner(&self) -> Owner {
        Owner {
            pid: std::process::id(),
            instance: self.instance.clone(),
        }
    }
}

/// Wait until the store has applied group `seq`.
async fn committed(store: &Store, seq: u64) {
    if seq == 0 {
        return;
    }
    let mut rx = store.applied();
    let _ = rx.wait_for(|v| *v >= seq).await;
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl Manager {
    /// Open the state dir, import a 0.2 state if one is found, and be ready for tool calls.
    /// Sessions that dead servers left running are adopted in the background.
    pub async fn start(cfg: Config, cwd: PathBuf) -> Result<Manager, ManagerError> {
        let instance = uuid::Uuid::new_v4().to_string();
        let state_dir = if cfg.state_dir.is_absolute() {
            cfg.state_dir.clone()
        } else {
            cwd.join(&cfg.state_dir)
        };
        // A 0.2 state: in the project's `.zwarm/` (found by the config), or in a state dir
        // chosen explicitly that still has the old layout.
        let mut legacy: Vec<PathBuf> = vec![state_dir.clone()];
        legacy.extend(cfg.legacy_state_dir.iter().cloned());
        let roots_cfg = cfg.allowed_roots.clone();
        let cwd2 = cwd.clone();
        let inst = instance.clone();
        let (store, imports, roots) = blocking(move || -> Result<_, ManagerError> {
            let store = Store::open(&state_dir, &inst)?;
            let mut imports = Vec::new();
            for dir in legacy {
                match store.import_legacy(&dir) {
                    Ok(Some(r)) => imports.push(r),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(from = %dir.display(), error = %e, "cannot import the 0.2 state")
                    }
                }
            }
            store.prune_locks();
            let roots: Vec<PathBuf> = if roots_cfg.is_empty() {
                vec![cwd2.clone()]
            } else {
                roots_cfg
                    .iter()
                    .map(|r| if r.is_absolute() { r.clone() } else { cwd2.join(r) })
                    .collect()
            };
            let roots = roots
                .into_iter()
                .map(|r| std::fs::canonicalize(&r).unwrap_or(r))
                .collect();
            Ok((store, imports, roots))
        })
        .await
        .ok_or_else(|| ManagerError::Watchers("start-up task failed".into()))??;
        let watchers = Watchers::from_config(&cfg.watchers).map_err(ManagerError::Watchers)?;
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(cfg.max_running)),
            cfg,
            store,
            instance,
            cwd,
            roots,
            registry: Registry::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            notices: broadcast::channel(1024).0,
            changes: broadcast::channel(1024).0,
            watchers,
            fleet: tokio::sync::Mutex::new(FleetView {
                fleet: Fleet::default(),
                rev: 0,
            }),
            dirty: parking_lot::Mutex::new(HashSet::new()),
            flush_now: tokio::sync::Notify::new(),
            adopting: tokio::sync::Mutex::new(()),
            stop_by: parking_lot::Mutex::new(None),
            recovered_once: std::sync::atomic::AtomicBool::new(false),
            recovered: tokio::sync::Notify::new(),
        });
        let m = Manager { inner };
        for r in &imports {
            tracing::info!(from = %r.from, sessions = r.sessions, events = r.events, skipped = r.skipped.len(), moved_to = %r.moved_to, "imported a zwarm 0.2 state");
            m.inner.store.log(
                "state_imported",
                None,
                serde_json::to_value(r).unwrap_or_default(),
            );
        }
        for k in &m.inner.cfg.ignored {
            m.inner.store.log(
                "config_ignored",
                None,
                serde_json::to_value(k).unwrap_or_default(),
            );
        }
        for w in &m.inner.cfg.warnings {
            m.inner
                .store
                .log("config_warning", None, serde_json::json!({"message": w}));
        }
        m.inner.store.log(
            "server_started",
            None,
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "cwd": m.inner.cwd.display().to_string()}),
        );
        m.spawn_background();
        m.spawn_worktree_cleanup();
        Ok(m)
    }

    fn spawn_background(&self) {
        // The flusher: progress of running turns, in batches.
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
                    _ = inner.flush_now.notified() => {}
                    _ = inner.shutdown.cancelled() => { inner.flush(); break; }
                }
                inner.flush();
            }
        });
        // Orphans that exit on their own become zombies of zwarm (a subreaper): reap them.
        let stop = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.cancelled() => break,
                }
                blocking(process::reap_orphan_zombies).await;
            }
        });
        // Let go of sessions at rest and unused for `hold_idle_seconds`.
        let m = self.clone();
        tokio::spawn(async move {
            let idle = Duration::from_secs(m.inner.cfg.hold_idle_seconds);
            let every = idle.min(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = m.inner.shutdown.cancelled() => break,
                }
                m.evict_idle(idle).await;
            }
        });
        // Adopt what dead servers left running (now, then every few seconds: a server
        // sharing this state dir may die while this one runs), and warm the watchers' totals.
        let m = self.clone();
        tokio::spawn(async move {
            m.recover().await;
            m.inner
                .recovered_once
                .store(true, std::sync::atomic::Ordering::SeqCst);
            m.inner.recovered.notify_waiters();
            // Warm the watchers' totals (one read of every session's figures) after the
            // host's `initialize` has been answered, not in its way.
            tokio::time::sleep(Duration::from_millis(250)).await;
            drop(m.refresh_fleet().await);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RECOVER_INTERVAL) => {}
                    _ = m.inner.shutdown.cancelled() => break,
                }
                m.recover().await;
            }
        });
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

    /// Adopt every session left running by a server that is gone.
    async fn recover(&self) {
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
    async fn adopt(&self, id: &str) -> Result<Arc<Handle>, ManagerError> {
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
        if s.status.is_active() {
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
            writes.push(self.inner.store.event(
                "session_recovered",
                Some(id),
                serde_json::json!({"status": "failed", "turn": turn, "reason": reason}),
            ));
        }
        match self.inner.store.submit(writes).committed().await {
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
            let marker = format!("{id}.{turn}");
            blocking(move || process::kill_marked(&marker, None)).await;
        }
        let h = self.inner.registry.insert(Handle::new(s, version));
        let _ = self.inner.changes.send(id.to_string());
        Ok(h)
    }

    /// Read one whole session from the store, with its stored version.
    async fn load(&self, id: &str) -> Result<(Session, u64), ManagerError> {
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
        let adapter = Adapter::parse(&adapter_name)
            .ok_or_else(|| ManagerError::UnknownAdapter(adapter_name.clone()))?;
        let mode = match req.mode.as_deref().filter(|m| !m.trim().is_empty()) {
            None => Mode::Sync,
            Some(m) => Mode::parse(m).ok_or_else(|| ManagerError::UnknownMode(m.to_string()))?,
        };
        let model = req.model.filter(|m| !m.trim().is_empty());
        // Off the async workers: the directory check and a dry run of the command line, so a
        // missing CLI or a bad setting is reported now, not as a failed turn.
        let inner = self.inner.clone();
        let (wd, t, m) = (req.working_dir.clone(), task.clone(), model.clone());
        let dir = blocking(move || -> Result<PathBuf, ManagerError> {
            let dir = inner.check_dir(wd.as_deref())?;
            executor::build_process(
                adapter,
                &inner.cfg,
                &TurnPlan {
                    working_dir: dir.clone(),
                    prompt: t,
                    resume_id: None,
                },
                m.as_deref(),
                Path::new("/dev/null"),
            )?;
            Ok(dir)
        })
        .await
        .ok_or(ManagerError::ShuttingDown)??;
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
        let started = self.inner.store.event(
            "session_started",
            Some(&id),
            serde_json::json!({"adapter": adapter.as_str(), "mode": mode, "working_dir": dir.display().to_string(), "task": text::truncate_chars(&task, 500)}),
        );
        if let Err(e) = self.start_turn(&h, |_| Ok(task), vec![started]).await {
            self.inner.registry.remove(&id);
            if let Some(iso) = isolation {
                self.unisolate(&id, iso).await;
            }
            self.inner.store.log(
                "session_failed_to_start",
                Some(&id),
                serde_json::json!({"error": e.to_string()}),
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
        let sent = move |sid: &str, n: u32| serde_json::json!({"session": sid, "turn": n, "message": head});
        let msg = message.clone();
        let (sid, n) = self
            .start_turn_with(
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
                |sid, n| {
                    let mut v = sent(sid, n);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("session");
                    }
                    vec![("message_sent", v)]
                },
            )
            .await?;
        Ok((sid, n))
    }

    async fn start_turn(
        &self,
        h: &Arc<Handle>,
        prepare: impl FnOnce(&Session) -> Result<String, ManagerError>,
        before: Vec<Write>,
    ) -> Result<(String, u32), ManagerError> {
        self.start_turn_inner(h, prepare, before, |_, _| vec![])
            .await
    }

    async fn start_turn_with(
        &self,
        h: &Arc<Handle>,
        prepare: impl FnOnce(&Session) -> Result<String, ManagerError>,
        events: impl FnOnce(&str, u32) -> Vec<(&'static str, serde_json::Value)>,
    ) -> Result<(String, u32), ManagerError> {
        self.start_turn_inner(h, prepare, vec![], events).await
    }

    /// Start the next turn of a session. `prepare` runs under the session lock and decides
    /// (checks the status, builds the prompt), so two calls can never both start a turn. The
    /// start is committed before this returns; the supervisor task is spawned at once, so a
    /// caller that gives up cannot leave a half-started turn.
    async fn start_turn_inner(
        &self,
        h: &Arc<Handle>,
        prepare: impl FnOnce(&Session) -> Result<String, ManagerError>,
        before: Vec<Write>,
        events: impl FnOnce(&str, u32) -> Vec<(&'static str, serde_json::Value)>,
    ) -> Result<(String, u32), ManagerError> {
        // Take a slot now if one is free, so the answer already says `running`; otherwise the
        // turn is `queued` and its supervisor waits for a slot.
        let permit = self.inner.slots.clone().try_acquire_owned().ok();
        let (turn_status, session_status) = if permit.is_some() {
            (TurnStatus::Running, SessionStatus::Running)
        } else {
            (TurnStatus::Queued, SessionStatus::Queued)
        };
        let (index, control, ticket, undo) = {
            let mut l = h.live.lock();
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
                cancel: self.inner.shutdown.child_token(),
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
            l.session.owner = self.inner.owner();
            let mut w = before;
            w.extend(l.images(&[index]));
            for (kind, data) in events(&h.id, index) {
                w.push(self.inner.store.event(kind, Some(&h.id), data));
            }
            if permit.is_some() {
                let resume = l.session.native_id.clone();
                w.push(self.inner.store.event(
                    "turn_started",
                    Some(&h.id),
                    serde_json::json!({"turn": index, "resume": resume}),
                ));
            }
            let ticket = self.inner.store.submit(w);
            l.pending = ticket.seq;
            l.control = Some(control.clone());
            (index, control, ticket, undo)
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        let h2 = h.clone();
        let trace = crate::telemetry::turn_span(&h.id, index, || h.live.lock().session.adapter);
        self.inner.tasks.spawn(async move {
            use futures::FutureExt;
            let start = turn::Start {
                control,
                permit,
                ticket,
                started: tx,
                undo,
            };
            let run = turn::run(inner.clone(), h2.clone(), index, start);
            let run = tracing::Instrument::instrument(run, trace);
            if std::panic::AssertUnwindSafe(run).catch_unwind().await.is_err() {
                tracing::error!(session = %h2.id, turn = index, "turn task panicked");
                let marker = format!("{}.{index}", h2.id);
                blocking(move || process::kill_marked(&marker, None)).await;
                let outcome = Outcome {
                    failed: Some((
                        "internal error in zwarm while running this turn (please report it with the turn's log under the state dir's turns/ folder). Call converse to retry.".into(),
                        None,
                    )),
                    ..Default::default()
                };
                turn::finish(&inner, &h2, index, outcome, None).await;
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

    /// Resolve an id or unique prefix (8+ characters) among every session on the state dir.
    pub async fn resolve(&self, prefix: &str) -> Result<String, ManagerError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() {
            return Err(ManagerError::UnknownSession(String::new()));
        }
        if self.inner.registry.get(&prefix).is_some() {
            return Ok(prefix);
        }
        if prefix.len() < 8 && !crate::model::valid_id(&prefix) {
            return Err(ManagerError::ShortPrefix(prefix));
        }
        let mut ids = self.inner.store.ids_with_prefix(&prefix, 6).await?;
        ids.extend(self.inner.registry.ids_with_prefix(&prefix));
        ids.sort();
        ids.dedup();
        if ids.contains(&prefix) {
            return Ok(prefix);
        }
        match ids.as_slice() {
            [] => Err(ManagerError::UnknownSession(prefix)),
            [one] => Ok(one.clone()),
            many => Err(ManagerError::Ambiguous {
                prefix,
                candidates: many
                    .iter()
                    .take(5)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// A session's current state: held ones from memory (once their last status change is
    /// committed), others from the store. A session a dead server left running is adopted.
    pub async fn get(&self, id: &str) -> Result<Session, ManagerError> {
        let id = self.resolve(id).await?;
        if let Some(h) = self.inner.registry.used(&id) {
            return Ok(self.snapshot(&h).await);
        }
        let (s, _) = self.load(&id).await?;
        if s.status.is_active()
            && s.owner.instance != self.inner.instance
            && !owner_alive(&self.inner.store, &s.owner.instance).await
        {
            return match self.adopt(&id).await {
                Ok(h) => Ok(self.snapshot(&h).await),
                // Adopted by another live server meanwhile: read it as it is.
                Err(ManagerError::ForeignOwner { .. } | ManagerError::Store(_)) => {
                    Ok(self.load(&id).await?.0)
                }
                Err(e) => Err(e),
            };
        }
        Ok(s)
    }

    async fn snapshot(&self, h: &Handle) -> Session {
        let (s, pending) = h.snapshot();
        if pending == 0 || *self.inner.store.applied().borrow() >= pending {
            return s;
        }
        committed(&self.inner.store, pending).await;
        h.snapshot().0
    }

    /// The handle of a session this server may run turns for (adopting it if its owner died).
    async fn owned(&self, id: &str) -> Result<Arc<Handle>, ManagerError> {
        let id = self.resolve(id).await?;
        if let Some(h) = self.inner.registry.used(&id) {
            return Ok(h);
        }
        self.adopt(&id).await
    }

    /// One page of sessions, newest first (held sessions as they are in memory).
    pub async fn list(
        &self,
        status: Option<SessionStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<Page, ManagerError> {
        self.await_recovery().await;
        let (mut rows, total) = self.inner.store.page(status, limit, offset).await?;
        // A running row of a server that has died since: adopt it now (it shows as failed),
        // rather than list it as running.
        let mut adopted = false;
        for r in &rows {
            if r.status.is_active() && self.inner.registry.get(&r.session_id).is_none() {
                let owner = self
                    .load(&r.session_id)
                    .await
                    .map(|(s, _)| s.owner.instance);
                if let Ok(owner) = owner
                    && owner != self.inner.instance
                    && !owner_alive(&self.inner.store, &owner).await
                    && self.adopt(&r.session_id).await.is_ok()
                {
                    adopted = true;
                }
            }
        }
        if adopted {
            (rows, _) = self.inner.store.page(status, limit, offset).await?;
        }
        for r in &mut rows {
            if let Some(h) = self.inner.registry.get(&r.session_id) {
                let l = h.live.lock();
                let s = &l.session;
                r.status = s.status;
                r.turns = s.turns.len() as u32;
                r.usage = s.total_usage();
                r.cost_usd = s.total_cost();
                r.updated_at = s.updated_at.clone();
            }
        }
        Ok(Page {
            sessions: rows,
            total,
        })
    }

    /// Let go of held sessions that are at rest and unused for `idle`: each one's whole
    /// record (session row and every turn) is written and committed first, so nothing of it
    /// exists only in memory; it is let go only if nothing changed meanwhile. The next call
    /// that needs it adopts it again from the store.
    async fn evict_idle(&self, idle: Duration) -> usize {
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
    async fn await_recovery(&self) {
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
            if let Err(e) = self.inner.store.submit(w).committed().await {
                tracing::error!(error = %e, "cannot save watcher notes");
            }
            let _ = self.inner.changes.send(id.to_string());
            return;
        };
        let ticket = {
            let mut l = h.live.lock();
            let mut w = Vec::new();
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
            let t = self.inner.store.submit(w);
            l.pending = t.seq;
            t
        };
        if let Err(e) = ticket.committed().await {
            tracing::error!(error = %e, "cannot save watcher notes");
        }
        h.bump();
        let _ = self.inner.changes.send(id.to_string());
    }

    /// Names of the enabled watchers.
    pub fn watcher_names(&self) -> Vec<&'static str> {
        self.inner.watchers.names()
    }

    /// Bring the watchers' totals up to date with the store (only rows changed since the last
    /// look are read).
    async fn refresh_fleet(&self) -> tokio::sync::MutexGuard<'_, FleetView> {
        let mut f = self.inner.fleet.lock().await;
        match self.inner.store.stats_since(f.rev).await {
            Ok((stats, rev)) => {
                for s in stats {
                    f.fleet.update(s);
                }
                f.rev = rev;
            }
            Err(e) => tracing::error!(error = %e, "cannot read session totals"),
        }
        // Running turns as they are in memory (ahead of their next flush).
        for h in self.inner.registry.all() {
            let l = h.live.lock();
            if l.control.is_some() {
                let st = Stat::of(&l.session);
                drop(l);
                f.fleet.update(st);
            }
        }
        f
    }

    /// Run the watchers before a tool call. `Err` is a refusal with the text to show;
    /// `Ok` carries notes to add to the result.
    pub async fn before_call(
        &self,
        tool: &str,
        args: &serde_json::Value,
        acknowledge: bool,
    ) -> Result<Vec<WatcherNote>, String> {
        let d = {
            let f = self.refresh_fleet().await;
            self.inner
                .watchers
                .before_call(&CallInfo { tool, args }, &f.fleet, acknowledge)
        };
        for f in &d.firings {
            crate::telemetry::watcher_fired(f);
            self.inner.store.log(
                "watcher_fired",
                None,
                serde_json::json!({"watcher": f.watcher, "action": f.action, "message": f.message, "tool": tool}),
            );
        }
        if let Some(reason) = &d.abort_now {
            self.inner
                .interrupt_all(&format!("aborted by watcher {reason}"));
            self.inner.store.log(
                "watchers_abort",
                None,
                serde_json::json!({"reason": reason}),
            );
        }
        if acknowledge
            && self.inner.watchers.gate().paused.is_none()
            && matches!(tool, "delegate" | "converse")
        {
            self.inner.store.log(
                "pause_acknowledged",
                None,
                serde_json::json!({"tool": tool}),
            );
        }
        match d.refuse {
            Some(r) => {
                self.inner.store.log(
                    "call_refused",
                    None,
                    serde_json::json!({"tool": tool, "reason": r}),
                );
                Err(r)
            }
            None => Ok(d.firings.iter().map(|f| f.note(None)).collect()),
        }
    }

    /// Wait until the session's turn is no longer queued/running, `timeout` passes, or `cancel`
    /// fires. Returns the session as it is then.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Session, ManagerError> {
        let id = self.resolve(id).await?;
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        match self.inner.registry.used(&id) {
            Some(h) => {
                let mut rx = h.changed.subscribe();
                loop {
                    let s = self.snapshot(&h).await;
                    if !s.status.is_active() {
                        return Ok(s);
                    }
                    tokio::select! {
                        r = rx.changed() => { if r.is_err() { return Ok(self.snapshot(&h).await); } }
                        _ = tokio::time::sleep_until(deadline) => return Ok(self.snapshot(&h).await),
                        _ = cancel.cancelled() => return Ok(self.snapshot(&h).await),
                    }
                }
            }
            None => loop {
                // Another server's session: poll the store (an indexed read).
                let s = self.get(&id).await?;
                if !s.status.is_active() || Instant::now() >= deadline || cancel.is_cancelled() {
                    return Ok(s);
                }
                if let Some(h) = self.inner.registry.get(&id) {
                    // Adopted meanwhile: wait on it directly.
                    let left = deadline.saturating_duration_since(Instant::now());
                    return Box::pin(self.wait(&h.id, left, cancel)).await;
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
        let (ticket, undo_summary) = {
            let mut l = h.live.lock();
            let before = (
                l.session.status,
                l.session.summary.clone(),
                l.session.updated_at.clone(),
            );
            l.session.status = verdict;
            l.session.summary = summary.filter(|x| !x.trim().is_empty());
            l.session.updated_at = now();
            let mut w = l.images(&[]);
            w.push(self.inner.store.event(
                "session_ended",
                Some(&h.id),
                serde_json::json!({"verdict": verdict, "summary": l.session.summary, "interrupted_turn": interrupted}),
            ));
            let t = self.inner.store.submit(w);
            l.pending = t.seq;
            (t, before)
        };
        if let Err(e) = ticket.committed().await {
            let mut l = h.live.lock();
            (l.session.status, l.session.summary, l.session.updated_at) = undo_summary;
            return Err(e.into());
        }
        // Verdict `failed` is not final: converse may retry, so new turns are allowed again.
        guard.armed = !verdict.is_final();
        drop(guard);
        h.bump();
        let _ = self.inner.changes.send(h.id.clone());
        let s = h.snapshot().0;
        Ok((s, interrupted))
    }

    /// Interrupt every running turn, record them, and return once all turn tasks have ended
    /// (or `limit` passed); everything recorded is committed before this returns.
    pub async fn shutdown(&self, limit: Duration) {
        let until = Instant::now() + limit;
        // Executors get most of the budget to stop (SIGINT, a short grace, SIGKILL); the
        // rest is for recording them interrupted.
        *self.inner.stop_by.lock() =
            Some(until - (limit / 4).clamp(Duration::from_millis(100), Duration::from_millis(500)));
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout_at(until, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("turns still running at shutdown deadline");
        }
        self.inner.flush();
        self.inner
            .store
            .log("server_stopped", None, serde_json::json!({}));
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        self.inner.store.close(left).await;
    }

    /// The last `limit` events of every server on the state dir.
    pub async fn recent_events(
        &self,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, ManagerError> {
        Ok(self.inner.store.recent_events(limit).await?)
    }
}

/// Clears `ending` unless disarmed, so a dropped end_session does not block the session.
struct EndingGuard {
    h: Arc<Handle>,
    armed: bool,
}

impl Drop for EndingGuard {
    fn drop(&mut self) {
        if self.armed {
            self.h.live.lock().ending = false;
        }
    }
}
