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
//!   sessions in batches, at most every [`FLUSH_INTERVAL`] or [`settle::FLUSH_EVENTS`] events.
//! - **Questions** (list, check, prefix resolution, the event log, watcher totals) are indexed
//!   queries or running totals ([`crate::fleet`]); nothing reads every session.
//! - **Start-up** opens the database and touches only sessions that were running (adopted in
//!   the background); a 0.2 state dir is imported once.

mod api;
mod fold;
mod integrate;
pub mod isolation;
mod lines;
mod multi;
mod owner;
mod query;
mod recovery;
mod registry;
mod settle;
mod steer;
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
use crate::executor::ExecutorError;
use crate::fleet::Fleet;
use crate::log_event::LogEvent;
use crate::model::{Owner, Session, SessionStatus};
use crate::runner::Runner;
use crate::store::{SessionRow, Store, StoreError};
use crate::watch::Watchers;

use registry::Registry;

pub use api::CallRefused;
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
    #[error(
        "unknown adapter `{0}`: use {names}.",
        names = crate::executor::names_for_humans(true)
    )]
    UnknownAdapter(String),
    #[error(
        "unknown mode `{0}`: use `sync` (wait for the turn) or `async` (return at once, then ask for the session's state)."
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
        "no session matches `{0}` (any unique prefix of 8 or more characters of a session id works)."
    )]
    UnknownSession(String),
    #[error(
        "session id `{0}` is too short: give the full id or a unique prefix of at least 8 characters."
    )]
    ShortPrefix(String),
    #[error(
        "session id prefix `{prefix}` is ambiguous: it matches {candidates}. Give more characters."
    )]
    Ambiguous { prefix: String, candidates: String },
    #[error(
        "session {0} is busy: a turn is still running. Wait for it to finish, or end the session to stop it."
    )]
    Busy(String),
    #[error("session {id} has ended ({status}); it cannot continue. Start a new session.")]
    Ended { id: String, status: &'static str },
    #[error(
        "session {id} was stopped by a watcher ({reason}); it takes no more turns. Review what it did, then end it, and start a new session if the work should go on."
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
        "session {0}: the running turn did not stop after the interrupt (its processes may be stuck). Try ending it again, or restart zwarm, which stops every executor."
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
        "{n} session worktrees exist already (max_worktrees is {max}). End sessions you are done with (ending one with integrate merge, keep or discard removes its worktree), or raise max_worktrees in the zwarm config."
    )]
    TooManyWorktrees { n: usize, max: usize },
    #[error("git: {0}")]
    Git(String),
    #[error(
        "session {id}'s worktree `{path}` no longer exists (it was removed outside zwarm); zwarm will not run the session anywhere else. Its branch `{branch}` holds every committed turn: end the session, then start a new session with isolation \"worktree\" and base `{branch}` to go on."
    )]
    WorktreeGone {
        id: String,
        path: String,
        branch: String,
    },
    #[error(
        "session {id}'s worktree was removed when the session ended ({state}); zwarm will not run the session anywhere else. Its branch `{branch}` holds its work (unless discarded): start a new session with isolation \"worktree\" and base `{branch}` to go on."
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
        "session {0} is busy: a turn is still running. Wait for it, review its diff, then end the session with integrate merge."
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
    /// Default: sync.
    pub mode: Option<crate::model::Mode>,
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
    /// When the last store read for `fleet` started: a call that arrived before it needs no
    /// read of its own (that read saw everything committed before the call).
    pub read_at: Option<std::time::Instant>,
    /// Store reads made so far (for tests).
    pub reads: u64,
}

pub(crate) struct Inner {
    cfg: Config,
    store: Store,
    instance: String,
    cwd: PathBuf,
    roots: Vec<PathBuf>,
    registry: Registry,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    notices: broadcast::Sender<Notice>,
    changes: broadcast::Sender<String>,
    watchers: Watchers,
    /// Where turns run.
    runner: Arc<dyn Runner>,
    fleet: tokio::sync::Mutex<FleetView>,
    /// Held sessions with unflushed progress.
    dirty: parking_lot::Mutex<HashSet<String>>,
    flush_now: tokio::sync::Notify,
    /// Serialises adoptions within this server (the store's compare-and-set does it between
    /// servers).
    adopting: tokio::sync::Mutex<()>,
    /// Set at shutdown: every running turn's executor must be stopped by then.
    stop_by: parking_lot::Mutex<Option<Instant>>,
    /// The start-up recovery has run (lists wait for it, so they never show a dead server's
    /// turn as running).
    recovered_once: std::sync::atomic::AtomicBool,
    recovered: tokio::sync::Notify,
    /// `delegate`'s up-front checks that passed a moment ago ([`api::Checked`]).
    checked: api::Checked,
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
    /// Interrupt every running or queued turn of this server (a server-wide abort).
    pub(crate) fn interrupt_all(&self, reason: &str) {
        for h in self.registry.all() {
            let control = h.live.lock().control.clone();
            if let Some(c) = control {
                c.stop(reason);
            }
        }
    }

    /// Resolve and check a working directory: it exists, and lies inside the allowed roots.
    /// Blocking (filesystem): call off the async workers.
    pub(crate) fn check_dir(&self, dir: Option<&str>) -> Result<PathBuf, ManagerError> {
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
    /// Sessions that dead servers left running are adopted in the background. A loaded
    /// configuration says where zwarm works (`cfg.cwd`: the default working dir;
    /// `cfg.project_dir`: the default allowed root); `cwd` stands in for both only when the
    /// configuration was not loaded (built in code).
    pub async fn start(cfg: Config, cwd: PathBuf) -> Result<Manager, ManagerError> {
        Manager::start_with(cfg, cwd, Arc::new(crate::runner::local::LocalRunner::new())).await
    }

    /// [`Manager::start`] with turns run by `runner` (the in-memory runner in tests).
    pub async fn start_with(
        cfg: Config,
        cwd: PathBuf,
        runner: Arc<dyn Runner>,
    ) -> Result<Manager, ManagerError> {
        let instance = uuid::Uuid::new_v4().to_string();
        let cwd = if cfg.cwd.as_os_str().is_empty() {
            cwd
        } else {
            cfg.cwd.clone()
        };
        let project = if cfg.project_dir.as_os_str().is_empty() {
            cwd.clone()
        } else {
            cfg.project_dir.clone()
        };
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
                vec![project]
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
            runner,
            fleet: tokio::sync::Mutex::new(FleetView {
                fleet: Fleet::default(),
                rev: 0,
                read_at: None,
                reads: 0,
            }),
            dirty: parking_lot::Mutex::new(HashSet::new()),
            flush_now: tokio::sync::Notify::new(),
            adopting: tokio::sync::Mutex::new(()),
            stop_by: parking_lot::Mutex::new(None),
            recovered_once: std::sync::atomic::AtomicBool::new(false),
            recovered: tokio::sync::Notify::new(),
            checked: api::Checked::default(),
        });
        let m = Manager { inner };
        for r in &imports {
            tracing::info!(from = %r.from, sessions = r.sessions, events = r.events, skipped = r.skipped.len(), moved_to = %r.moved_to, "imported a zwarm 0.2 state");
            m.inner.log(
                LogEvent::StateImported(serde_json::to_value(r).unwrap_or_default()),
                None,
            );
        }
        for k in &m.inner.cfg.ignored {
            m.inner.log(
                LogEvent::ConfigIgnored(serde_json::to_value(k).unwrap_or_default()),
                None,
            );
        }
        for w in &m.inner.cfg.warnings {
            m.inner
                .log(LogEvent::ConfigWarning { message: w.clone() }, None);
        }
        m.inner.log(
            LogEvent::ServerStarted {
                version: env!("CARGO_PKG_VERSION").to_string(),
                cwd: m.inner.cwd.display().to_string(),
            },
            None,
        );
        m.spawn_background();
        m.spawn_worktree_cleanup();
        steer::spawn(&m);
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
        // The runner's housekeeping (the local runner reaps orphans: zwarm is a subreaper).
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = inner.shutdown.cancelled() => break,
                }
                inner.runner.housekeeping().await;
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
            // Read-back files of servers that crashed (the live ones' pools stay).
            let store = m.inner.store.clone();
            if let Some(n) = blocking(move || store.sweep_scratch())
                .await
                .filter(|n| *n > 0)
            {
                tracing::info!(
                    files = n,
                    "removed read-back files of servers that are gone"
                );
            }
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
        self.inner.log(LogEvent::ServerStopped {}, None);
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        self.inner.store.close(left).await;
    }
}
