//! Child processes that never leak.
//!
//! Every executor runs in its own process group with stdin from `/dev/null` (an open stdin
//! makes `codex exec` wait for EOF and `claude -p` stall) and piped stdout/stderr (zwarm's own
//! stdout is the MCP channel). Stopping one is an escalation — SIGINT (both CLIs then kill the
//! tool command they are running), a grace period, SIGTERM, SIGKILL — because SIGTERM alone
//! orphans the command a CLI was running (EXECUTORS.md §A.8, §B.6).
//!
//! Commands that escape the group (codex runs them in their own session) are found by a marker
//! in their environment: each turn's executor gets `ZWARM_TURN=<id>`, which its commands
//! inherit. When a turn ends, every process still carrying its marker is killed. zwarm is a
//! child subreaper, so those orphans are re-parented to zwarm rather than to PID 1, and are
//! reaped here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Environment variable that marks every process belonging to one turn.
pub const TURN_MARKER: &str = "ZWARM_TURN";

#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env_set: Vec<(String, String)>,
    pub env_remove: Vec<String>,
}

/// Make orphaned descendants re-parent to this process (Linux), so they can be found and reaped.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Pids of live executor processes (tokio reaps those; the orphan reaper must not).
static EXECUTORS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

fn executors() -> std::sync::MutexGuard<'static, Vec<i32>> {
    EXECUTORS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forget an executor once tokio has reaped it.
pub fn forget_executor(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        executors().retain(|p| *p != pid);
    }
}

/// Forgets an executor when dropped, on every path out of a turn (including panics).
pub struct ExecutorGuard(pub Option<u32>);

impl Drop for ExecutorGuard {
    fn drop(&mut self) {
        forget_executor(self.0);
    }
}

/// Reap orphans that were re-parented to zwarm (a subreaper) and exited on their own: zombies
/// whose parent is zwarm, outside zwarm's own process group, that are not executors.
pub fn reap_orphan_zombies() -> usize {
    let me = std::process::id() as i32;
    // SAFETY: getpgrp has no preconditions.
    let my_pgid = unsafe { libc::getpgrp() };
    let live = executors();
    let mut n = 0;
    for pid in proc_pids() {
        if live.contains(&pid) {
            continue;
        }
        let Some(st) = proc_stat(pid) else { continue };
        if st.state == 'Z' && st.ppid == me && st.pgrp != my_pgid {
            let mut status = 0;
            // SAFETY: waitpid on a specific zombie child with WNOHANG.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                n += 1;
            }
        }
    }
    n
}

/// Every process id in /proc (empty when /proc is unreadable).
fn proc_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// The fields of /proc/<pid>/stat that zwarm uses.
struct ProcStat {
    state: char,
    ppid: i32,
    pgrp: i32,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    Some(ProcStat {
        state: f.next()?.chars().next()?,
        ppid: f.next()?.parse().ok()?,
        pgrp: f.next()?.parse().ok()?,
    })
}

/// A request to the spawner thread.
struct SpawnRequest {
    spec: ProcessSpec,
    marker: String,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
}

/// The thread every executor is forked from. `PR_SET_PDEATHSIG` fires when the *thread* that
/// forked a child exits, and tokio retires worker threads (e.g. after `block_in_place`); a
/// dedicated thread that lives as long as zwarm makes the signal mean "zwarm died".
fn spawner() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<SpawnRequest>> {
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("zwarm-spawner".into())
            .spawn(move || {
                while let Ok(req) = rx.recv() {
                    let _rt = req.runtime.enter();
                    let _ = req.reply.send(spawn_here(&req.spec, &req.marker));
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        std::sync::Mutex::new(tx)
    })
}

/// Start an executor process (see the module docs for how it is set up).
pub async fn spawn(spec: &ProcessSpec, marker: &str) -> std::io::Result<Child> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let req = SpawnRequest {
        spec: spec.clone(),
        marker: marker.to_string(),
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    let sent = spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(req);
    if sent.is_err() {
        return Err(std::io::Error::other("the spawner thread is not running"));
    }
    rx.await
        .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
}

fn spawn_here(spec: &ProcessSpec, marker: &str) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env_set {
        cmd.env(k, v);
    }
    cmd.env(TURN_MARKER, marker);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe. If zwarm dies (even by SIGKILL), the executor gets SIGTERM instead of
    // running on unsupervised; whatever it leaves is killed by marker on the next start.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            // zwarm may have died between fork and prctl: then the signal never comes.
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "zwarm exited while starting the executor",
                ));
            }
            Ok(())
        });
    }
    // Registered under the lock the reaper holds while it scans, so a fast-exiting executor
    // is never mistaken for an orphan.
    let mut reg = executors();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        reg.push(pid);
    }
    Ok(child)
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: killpg only sends a signal; a stale group id yields ESRCH, which we ignore.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// Stop a running executor: SIGINT, `grace`, SIGTERM, 2 s, SIGKILL — each to its whole process
/// group — then kill whatever still carries the turn marker. Returns once the child is reaped.
pub async fn terminate(child: &mut Child, marker: &str, grace: Duration) {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        // Already reaped.
        kill_marked(marker, None);
        return;
    };
    for (sig, wait) in [
        (libc::SIGINT, grace),
        (libc::SIGTERM, Duration::from_secs(2)),
        (libc::SIGKILL, Duration::from_secs(5)),
    ] {
        signal_group(pid, sig);
        if tokio::time::timeout(wait, child.wait()).await.is_ok() {
            break;
        }
    }
    // The group may still hold tool processes after the leader exited.
    signal_group(pid, libc::SIGKILL);
    kill_marked(marker, Some(pid));
}

/// After a normal exit: kill leftovers of the turn (its group and anything carrying the marker).
pub fn cleanup_after_exit(pgid: Option<u32>, marker: &str) {
    if let Some(pg) = pgid.and_then(|p| i32::try_from(p).ok()) {
        signal_group(pg, libc::SIGKILL);
    }
    kill_marked(marker, pgid.and_then(|p| i32::try_from(p).ok()));
}

/// SIGKILL every process whose environment holds `ZWARM_TURN=<marker>` (except `exclude`, the
/// executor itself, which tokio reaps), then reap those that are our children. Returns how many
/// were killed.
pub fn kill_marked(marker: &str, exclude: Option<i32>) -> usize {
    let needle = format!("{TURN_MARKER}={marker}");
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    // Several passes: a process may fork between our scan and its death.
    for _ in 0..3 {
        let found = find_marked(&needle, me, exclude);
        if found.is_empty() {
            break;
        }
        for pid in &found {
            // SAFETY: sending a signal has no memory effects; ESRCH is ignored.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        killed.extend(found);
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(&killed);
    reap_orphan_zombies();
    if !killed.is_empty() {
        tracing::info!(
            marker,
            count = killed.len(),
            "killed leftover executor processes"
        );
    }
    killed.len()
}

fn find_marked(needle: &str, me: i32, exclude: Option<i32>) -> Vec<i32> {
    let mut out = Vec::new();
    for pid in proc_pids() {
        if pid == me || Some(pid) == exclude {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && !is_zombie(pid) {
            out.push(pid);
        }
    }
    out
}

fn is_zombie(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|st| st.state == 'Z')
}

/// Reap killed processes that were re-parented to us (we are a subreaper). Only the given pids
/// are waited for, so tokio's own children are never touched.
fn reap(pids: &[i32]) {
    for _ in 0..50 {
        let mut pending = false;
        for pid in pids {
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with WNOHANG; ECHILD (not our child) is fine.
            let r = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
            if r == 0 {
                pending = true;
            }
        }
        if !pending {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process id is alive (not a zombie). Used by tests and diagnostics.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists && !is_zombie(pid)
}
