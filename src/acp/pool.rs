//! The agent pool of `zwarm serve`: one long-lived ACP agent per zwarm session in use.
//!
//! Why: starting an agent costs seconds (node start-up, `initialize`, `session/load` and its
//! replay), and an agent that lives through the session keeps its context without a reload
//! (gemini cannot reload a session within the minute it was saved). zwarm's executor seam
//! still starts one process per turn, so the turn's bridge (`zwarm-acp`) stays the unit the
//! runner starts, stops and contains; only the agent behind it is kept.
//!
//! How: the pool listens on a unix socket in a private directory (mode 0700, the socket 0600)
//! and the executor names it in the bridge's job ([`super::bridge::BridgeJob::pool`]), for the
//! local runner only. The bridge sends the job as one JSON line and relays the event lines the
//! pool sends back ([`remote`]); a `{"cancel":true}` line, or the bridge's end, cancels the
//! turn (`session/cancel`, then the agent is ended if it does not answer in `cancel_grace`).
//!
//! Agents are keyed by the zwarm session and everything that makes up the agent (program,
//! arguments, environment, working dir, level), so a changed config never reuses a stale
//! one. One turn at a time per agent. An agent is kept after a completed turn whose session
//! it keeps open, and stopped after `agent_idle_secs` with no turn; an agent that died,
//! failed or was interrupted is stopped, and the next turn starts a new one that
//! `session/load`s (or starts anew with a summary, said in the result). On shutdown every
//! agent is stopped; agents are started from a thread that lives as long as zwarm with
//! `PR_SET_PDEATHSIG`, and get end of input when zwarm dies; a [`crate::process::Reaper`] of
//! the pool's own kills their process groups and what carries their `ZWARM_TURN` marker when
//! zwarm dies, so neither they nor the commands they run outlive it.

pub mod remote;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::agent::{AgentCommand, AgentProcess};
use super::client::AcpAgent;
use super::job::{BridgeJob, STOP_GRACE};
use super::turn::{Emit, failed, policy_of, run_on};

/// Set in a pooled agent's environment: the zwarm session it serves (for `ps` and tests).
pub const SESSION_ENV: &str = "ZWARM_ACP_SESSION";

/// The first line a bridge sends.
#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    pub job: BridgeJob,
}

/// The last line the pool sends: the bridge's exit status.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct End {
    pub pool_exit: i32,
}

/// The socket and secret of this process's running pool, for the executor's jobs.
static SOCKET: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);
/// The running pool, for [`release`].
static RUNNING: Mutex<Option<std::sync::Weak<Inner>>> = Mutex::new(None);

/// Stop the agents kept for zwarm session `session` (it ended: no turn will come). A turn
/// still running keeps its agent until it ends (an ended session's turn is interrupted, and
/// an interrupted turn's agent is stopped).
pub async fn release(session: &str) {
    let Some(inner) = running() else {
        return;
    };
    let prefix = session_prefix(session);
    let slots: Vec<Slot> = {
        let mut all = inner.slots.lock();
        let keys: Vec<String> = all
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        keys.iter().filter_map(|k| all.remove(k)).collect()
    };
    for slot in slots {
        let taken = slot.try_lock().ok().and_then(|mut g| g.take());
        if let Some(p) = taken {
            retire(inner.clone(), p.agent, STOP_GRACE).await;
        }
    }
}

/// Whether the pool running in this process keeps an agent for zwarm session `session`.
pub fn holds(session: &str) -> bool {
    let Some(inner) = running() else {
        return false;
    };
    let prefix = session_prefix(session);
    inner.slots.lock().keys().any(|k| k.starts_with(&prefix))
}

/// The pool running in this process, if any.
fn running() -> Option<Arc<Inner>> {
    RUNNING.lock().as_ref().and_then(std::sync::Weak::upgrade)
}

/// How every key of zwarm session `session`'s agents starts ([`key_of`]).
fn session_prefix(session: &str) -> String {
    format!("{session}\n")
}

/// The socket of the pool running in this process, if any, and the token its jobs carry.
pub fn socket() -> Option<(PathBuf, String)> {
    SOCKET.lock().clone()
}

/// 128 random bits, hex.
fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// An agent kept between turns.
struct Pooled {
    agent: AcpAgent,
    /// The agent session it has open (the zwarm session's native id).
    session_id: String,
    last_used: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// A request to the spawner thread.
type SpawnReply = std::io::Result<(
    AgentProcess,
    tokio::process::ChildStdin,
    tokio::process::ChildStdout,
)>;
struct SpawnRequest {
    cmd: AgentCommand,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<SpawnReply>,
}

struct Inner {
    slots: Mutex<HashMap<String, Slot>>,
    /// Process groups of the agents alive (killed on shutdown, whatever they are doing), and
    /// the marker each agent carries in `ZWARM_TURN`.
    groups: Mutex<HashMap<i32, String>>,
    /// Kills the agents' process groups and marked processes if zwarm dies. Started with the
    /// first agent (a server that runs no ACP turn has no second helper process).
    reaper: std::sync::OnceLock<Option<crate::process::Reaper>>,
    with_reaper: bool,
    /// Numbers the agents' markers.
    started: std::sync::atomic::AtomicU64,
    spawner: Mutex<std::sync::mpsc::Sender<SpawnRequest>>,
    closing: CancellationToken,
    /// Jobs must carry it ([`BridgeJob::pool_token`]).
    token: String,
}

/// The pool; [`Pool::shutdown`] stops every agent.
pub struct Pool {
    inner: Arc<Inner>,
    dir: PathBuf,
    accept: tokio::task::JoinHandle<()>,
}

impl Pool {
    /// Listen on a new private socket and make it the one jobs name. Call within a runtime.
    /// `with_reaper`: start a [`crate::process::Reaper`] (this executable must be zwarm's) that
    /// kills the agents (their process groups, and whatever carries their `ZWARM_TURN`
    /// marker) if zwarm dies; without it, agents still get SIGKILL from `PR_SET_PDEATHSIG`
    /// and end of input, but what they run may outlive a killed zwarm.
    pub fn start(with_reaper: bool) -> std::io::Result<Pool> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = std::env::temp_dir();
        let dir = tmp.join(format!("zwarm-acp-{}-{nanos:08x}", std::process::id()));
        // What servers killed before their shutdown left (their socket folders), in the
        // background: it does not delay start-up.
        tokio::task::spawn_blocking(move || sweep_stale(&tmp));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("pool.sock");
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let inner = Arc::new(Inner {
            slots: Mutex::default(),
            groups: Mutex::default(),
            reaper: std::sync::OnceLock::new(),
            with_reaper,
            started: std::sync::atomic::AtomicU64::new(0),
            spawner: Mutex::new(spawner_thread()?),
            closing: CancellationToken::new(),
            token: new_token()?,
        });
        let i = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = i.closing.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((stream, _)) => {
                            tokio::spawn(serve_conn(i.clone(), stream));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "acp pool: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        });
        tracing::info!(socket = %path.display(), "acp pool: listening");
        *SOCKET.lock() = Some((path, inner.token.clone()));
        *RUNNING.lock() = Some(Arc::downgrade(&inner));
        Ok(Pool { inner, dir, accept })
    }

    /// How many agents are alive.
    pub fn agents(&self) -> usize {
        self.inner.groups.lock().len()
    }

    /// Stop listening and stop every agent: idle ones by closing their input (a short grace),
    /// then the process group of every agent still alive is killed, busy ones included.
    pub async fn shutdown(self) {
        *SOCKET.lock() = None;
        *RUNNING.lock() = None;
        self.inner.closing.cancel();
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
        let slots: Vec<Slot> = self.inner.slots.lock().drain().map(|(_, s)| s).collect();
        let mut stops = Vec::new();
        for slot in slots {
            if let Ok(mut g) = slot.try_lock()
                && let Some(p) = g.take()
            {
                stops.push(retire(
                    self.inner.clone(),
                    p.agent,
                    Duration::from_millis(500),
                ));
            }
        }
        futures::future::join_all(stops).await;
        let left: Vec<(i32, String)> = self.inner.groups.lock().drain().collect();
        for (pgid, marker) in left {
            // SAFETY: killpg has no memory effects; a group with no members is ESRCH.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            if let Some(r) = self.inner.reaper() {
                r.release(&marker);
            }
        }
    }
}

/// Remove the socket folders (`zwarm-acp-<pid>-<n>` in `tmp`) of pools whose server died
/// without its shutdown (a SIGKILL): a folder of this user, not a link, whose server pid is
/// gone and whose socket refuses connections. Only the socket and the then empty folder are
/// removed; anything else in it is left as it is. Returns how many were removed.
pub fn sweep_stale(tmp: &std::path::Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let pool_pid = |n: &str| {
        let (pid, _) = n.strip_prefix("zwarm-acp-")?.split_once('-')?;
        pid.parse().ok()
    };
    let mut removed = 0;
    for dir in crate::process::left_by_dead(tmp, pool_pid) {
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == uid) {
            continue;
        }
        // A pid from another pid namespace can look dead: a live pool still answers.
        let sock = dir.join("pool.sock");
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            continue;
        }
        let _ = std::fs::remove_file(&sock);
        if std::fs::remove_dir(&dir).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "acp pool: removed the socket folders of servers that were killed"
        );
    }
    removed
}

/// The thread agents are forked from: `PR_SET_PDEATHSIG` fires when the forking *thread*
/// ends, and tokio retires its threads; this one lives as long as the pool's sender.
fn spawner_thread() -> std::io::Result<std::sync::mpsc::Sender<SpawnRequest>> {
    let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("zwarm-acp-pool".into())
        .spawn(move || {
            while let Ok(req) = rx.recv() {
                let _rt = req.runtime.enter();
                let _ = req.reply.send(AgentProcess::spawn_with(&req.cmd, true));
            }
        })?;
    Ok(tx)
}

/// What identifies an agent: the zwarm session (first, then a newline: session ids have
/// none) and everything the agent is started with.
fn key_of(job: &BridgeJob) -> String {
    let rest = serde_json::to_string(&(
        &job.program,
        &job.args,
        &job.env_set,
        &job.env_remove,
        &job.cwd,
        job.level,
    ))
    .unwrap_or_default();
    format!(
        "{}{rest}",
        session_prefix(job.session.as_deref().unwrap_or_default())
    )
}

/// End an agent (input closed, then its group killed after `grace`) and forget its group.
async fn retire(inner: Arc<Inner>, agent: AcpAgent, grace: Duration) {
    let pid = agent.pid().and_then(|p| i32::try_from(p).ok());
    agent.stop(grace).await;
    if let Some(p) = pid {
        let marker = inner.groups.lock().remove(&p);
        if let (Some(r), Some(m)) = (inner.reaper(), marker) {
            r.release(&m);
        }
    }
}

impl Inner {
    /// The reaper, if it was started.
    fn reaper(&self) -> Option<&crate::process::Reaper> {
        self.reaper.get().and_then(Option::as_ref)
    }

    /// The reaper, started now if it was not (and is wanted).
    fn reaper_started(&self) -> Option<&crate::process::Reaper> {
        self.reaper
            .get_or_init(|| {
                self.with_reaper
                    .then(|| {
                        crate::process::Reaper::start()
                            .map_err(|e| tracing::warn!(error = %e, "the ACP pool has no reaper"))
                            .ok()
                    })
                    .flatten()
            })
            .as_ref()
    }

    async fn start_agent(&self, job: &BridgeJob) -> Result<AcpAgent, String> {
        let mut cmd = job.agent_command(true);
        let n = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("acp-pool-{}-{n}", std::process::id());
        cmd.env_set
            .push((crate::process::TURN_MARKER.into(), marker.clone()));
        if let Some(s) = &job.session {
            cmd.env_set.push((SESSION_ENV.into(), s.clone()));
            // What the bridge's agent inherits from the turn: a `zwarm serve` started by the
            // agent knows it runs inside a turn.
            cmd.env_set
                .push((crate::executor::TURN_ENV.into(), s.clone()));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let req = SpawnRequest {
            cmd,
            runtime: tokio::runtime::Handle::current(),
            reply,
        };
        if self.spawner.lock().send(req).is_err() {
            return Err("the pool's spawner thread is gone".into());
        }
        let (proc, stdin, stdout) = rx
            .await
            .map_err(|_| "the pool's spawner thread dropped the request".to_string())?
            .map_err(|e| format!("could not start the agent `{}`: {e}", job.program.display()))?;
        let pid = proc.id().and_then(|p| i32::try_from(p).ok());
        if let Some(p) = pid {
            self.groups.lock().insert(p, marker.clone());
            if let Some(r) = self.reaper_started() {
                r.watch(&marker, p, None);
            }
        }
        let init = Duration::from_secs(job.init_timeout_secs);
        AcpAgent::initialize(proc, stdin, stdout, init)
            .await
            .map_err(|e| {
                // The agent was dropped, and its group killed, with the error.
                if let Some(p) = pid {
                    self.groups.lock().remove(&p);
                    if let Some(r) = self.reaper() {
                        r.release(&marker);
                    }
                }
                e.to_string()
            })
    }

    /// One turn of `job` on the session's agent (kept, or started now).
    async fn turn(self: &Arc<Self>, job: BridgeJob, emit: &Emit, cancel: CancellationToken) -> i32 {
        let policy = match policy_of(&job) {
            Ok(p) => p,
            Err(ev) => {
                emit(&ev);
                return 2;
            }
        };
        let key = key_of(&job);
        let slot = self.slots.lock().entry(key.clone()).or_default().clone();
        // One turn at a time per agent.
        let mut held = slot.lock().await;
        let mut open = None;
        let mut kept = None;
        if let Some(mut p) = held.take() {
            if !p.agent.exited() && job.resume_id.as_deref() == Some(p.session_id.as_str()) {
                open = Some(p.session_id.clone());
                tracing::debug!(pid = ?p.agent.pid(), session = ?job.session, "acp pool: the session's agent is kept");
                kept = Some(p.agent);
            } else {
                tokio::spawn(retire(self.clone(), p.agent, STOP_GRACE));
            }
        }
        let mut agent = match kept {
            Some(a) => a,
            None => match self.start_agent(&job).await {
                Ok(a) => {
                    tracing::info!(pid = ?a.pid(), session = ?job.session, "acp pool: agent started");
                    a
                }
                Err(e) => {
                    emit(&failed(format!("the ACP agent did not start: {e}")));
                    return 1;
                }
            },
        };
        let out = run_on(&mut agent, open, &job, &policy, emit, cancel).await;
        match out.session_id {
            Some(session_id)
                if out.reusable && job.agent_idle_secs > 0 && !self.closing.is_cancelled() =>
            {
                *held = Some(Pooled {
                    agent,
                    session_id,
                    last_used: Instant::now(),
                });
                drop(held);
                self.stop_when_idle(key, slot, Duration::from_secs(job.agent_idle_secs));
            }
            _ => {
                drop(held);
                tokio::spawn(retire(self.clone(), agent, STOP_GRACE));
            }
        }
        out.code
    }

    /// After `idle` with no turn, stop the slot's agent.
    fn stop_when_idle(self: &Arc<Self>, key: String, slot: Slot, idle: Duration) {
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(idle).await;
            // A turn holds the slot: it schedules the next check when it ends.
            let Ok(mut held) = slot.try_lock() else {
                return;
            };
            if held.as_ref().is_none_or(|p| p.last_used.elapsed() < idle) {
                return;
            }
            let Some(p) = held.take() else { return };
            drop(held);
            tracing::info!(pid = ?p.agent.pid(), "acp pool: agent idle, stopped");
            retire(inner.clone(), p.agent, STOP_GRACE).await;
            let mut slots = inner.slots.lock();
            if slots
                .get(&key)
                .is_some_and(|s| Arc::ptr_eq(s, &slot) && s.try_lock().is_ok_and(|g| g.is_none()))
            {
                slots.remove(&key);
            }
        });
    }
}

/// One bridge's connection: its job, the events back, its cancel.
async fn serve_conn(inner: Arc<Inner>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    let Ok(Some(first)) = lines.next_line().await else {
        return;
    };
    let req = match serde_json::from_str::<Request>(&first) {
        Ok(r) if r.job.pool_token.as_deref() == Some(inner.token.as_str()) => r,
        // Not zwarm's own executor: nothing is run, nothing is said (a bridge that gets no
        // answer runs the agent itself).
        _ => {
            tracing::warn!(
                "acp pool: a job that is not valid or lacks the pool's token was refused"
            );
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            if wr.write_all(l.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let send = tx.clone();
    let emit: Emit = Arc::new(move |ev| {
        if let Ok(mut l) = serde_json::to_string(ev) {
            l.push('\n');
            let _ = send.send(l);
        }
    });
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    // A cancel line, or the bridge gone (its end of the socket closed), cancels.
    let watch = tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("cancel") {
                break;
            }
        }
        c.cancel();
    });
    let code = inner.turn(req.job, &emit, cancel).await;
    watch.abort();
    drop(emit);
    if let Ok(mut l) = serde_json::to_string(&End { pool_exit: code }) {
        l.push('\n');
        let _ = tx.send(l);
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_socket_folders_of_dead_servers_are_swept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A server that is gone: a child started and reaped.
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let dead = child.id();
        child.wait().expect("wait");
        let stale = tmp.path().join(format!("zwarm-acp-{dead}-0000abcd"));
        std::fs::create_dir(&stale).expect("mkdir");
        drop(std::os::unix::net::UnixListener::bind(stale.join("pool.sock")).expect("bind"));
        // Ours (this pid), a live one (pid 1), something else in a dead one's folder, and a
        // name that only looks alike.
        let mine = tmp
            .path()
            .join(format!("zwarm-acp-{}-1", std::process::id()));
        let live = tmp.path().join("zwarm-acp-1-2");
        let other = tmp.path().join(format!("zwarm-acp-{dead}-3"));
        let unrelated = tmp.path().join("zwarm-acp-x-4");
        for d in [&mine, &live, &other, &unrelated] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::write(other.join("notes"), "keep").expect("write");
        // A dead pid whose socket still answers (a server in another pid namespace).
        let answering = tmp.path().join(format!("zwarm-acp-{dead}-5"));
        std::fs::create_dir(&answering).expect("mkdir");
        let _listener =
            std::os::unix::net::UnixListener::bind(answering.join("pool.sock")).expect("bind");
        assert_eq!(sweep_stale(tmp.path()), 1);
        assert!(!stale.exists());
        for d in [&mine, &live, &other, &unrelated, &answering] {
            assert!(d.exists(), "{} kept", d.display());
        }
        assert!(other.join("notes").exists());
    }

    fn job(token: Option<String>) -> BridgeJob {
        serde_json::from_value(serde_json::json!({
            "program": "/nonexistent/agent",
            "cwd": "/",
            "prompt": "hi",
            "level": "read-only",
            "session": "s1",
            "agent_idle_secs": 5,
            "pool_token": token,
        }))
        .expect("job")
    }

    async fn exchange(path: &std::path::Path, job: &BridgeJob) -> Vec<String> {
        let s = UnixStream::connect(path).await.expect("connect");
        let (rd, mut wr) = s.into_split();
        let mut l = serde_json::to_string(&Request { job: job.clone() }).expect("json");
        l.push('\n');
        wr.write_all(l.as_bytes()).await.expect("send");
        let mut lines = BufReader::new(rd).lines();
        let mut out = vec![];
        while let Ok(Some(l)) = lines.next_line().await {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn jobs_need_the_token_and_a_failed_start_is_reported() {
        let pool = Pool::start(false).expect("pool");
        let (path, token) = socket().expect("socket");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert!(exchange(&path, &job(None)).await.is_empty());
        assert!(exchange(&path, &job(Some("nope".into()))).await.is_empty());
        let got = exchange(&path, &job(Some(token))).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("did not start"), "{got:?}");
        assert_eq!(got[1], r#"{"pool_exit":1}"#);
        assert_eq!(pool.agents(), 0);
        pool.shutdown().await;
        assert!(socket().is_none());
        assert!(!path.exists());
    }
}
