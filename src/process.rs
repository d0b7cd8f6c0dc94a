//! Child processes that never leak.
//!
//! Every executor runs in its own process group with piped stdout/stderr (zwarm's own stdout is
//! the MCP channel). Its stdin is either `/dev/null` (an open, silent stdin makes `codex exec`
//! wait for EOF and `claude -p` stall) or, for a [`Launch`] that carries input (the prompt), a
//! pipe that zwarm writes and then closes. Prompts go through stdin rather than argv: argv has
//! a size limit (a task over 128 KiB failed with E2BIG) and is readable by every user in
//! `/proc/<pid>/cmdline`.
//!
//! **Containment.** Where cgroup v2 is writable (root, or a delegated subtree), every turn's
//! executor is moved into its own cgroup before it execs (`<own cgroup>/zwarm/turn-<marker>`,
//! or under a parent set with [`configure_containment`]). Nothing a turn starts can leave that
//! cgroup — not even `setsid env -i …` — and `cgroup.kill` stops all of it at once. Otherwise
//! zwarm falls back to the process group plus a marker: each turn's executor gets
//! `ZWARM_TURN=<id>`, which its commands inherit, and when the turn ends every process still
//! carrying the marker is killed. In that mode a command that both leaves the group (`setsid`)
//! and clears its environment (`env -i`) escapes; that is the fallback's known limit.
//! [`containment_mode`] says which mode is in use; the reason for a fallback is logged.
//!
//! **Stopping** is an escalation — SIGINT (both CLIs then kill the tool command they are
//! running), a grace period, SIGTERM, then SIGKILL of the group and `cgroup.kill` — because
//! SIGTERM alone orphans the command a CLI was running (EXECUTORS.md §A.8, §B.6).
//! [`stop_turn`] fits the whole sequence into a deadline, using only tokio timers on the async
//! side; /proc scans and waits for the kernel run on the blocking pool.
//!
//! zwarm is a child subreaper, so orphans are re-parented to zwarm rather than to PID 1, and
//! are reaped here.

mod bounded;
pub use bounded::{Bounded, run_bounded};

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Environment variable that marks every process belonging to one turn.
pub const TURN_MARKER: &str = "ZWARM_TURN";

/// How to start a process (program, arguments, working dir, environment changes).
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env_set: Vec<(String, String)>,
    pub env_remove: Vec<String>,
}

/// A [`ProcessSpec`] plus the bytes to write to the process's stdin (then closed). Without
/// input, stdin is `/dev/null`. Derefs to the spec, so `launch.program` etc. read through.
#[derive(Clone, Default)]
pub struct Launch {
    pub spec: ProcessSpec,
    pub stdin: Option<Vec<u8>>,
}

impl std::fmt::Debug for Launch {
    // The input is a prompt: its size, never its text, goes into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("spec", &self.spec)
            .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .finish()
    }
}

impl std::ops::Deref for Launch {
    type Target = ProcessSpec;
    fn deref(&self) -> &ProcessSpec {
        &self.spec
    }
}

/// What [`spawn`] accepts: a bare [`ProcessSpec`] (stdin `/dev/null`) or a [`Launch`].
pub trait Spawnable {
    fn process_spec(&self) -> &ProcessSpec;
    fn stdin_bytes(&self) -> Option<&[u8]> {
        None
    }
}

impl Spawnable for ProcessSpec {
    fn process_spec(&self) -> &ProcessSpec {
        self
    }
}

impl Spawnable for Launch {
    fn process_spec(&self) -> &ProcessSpec {
        &self.spec
    }
    fn stdin_bytes(&self) -> Option<&[u8]> {
        self.stdin.as_deref()
    }
}

/// Make orphaned descendants re-parent to this process (Linux), so they can be found and reaped.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pids of live executor processes (tokio reaps those; the orphan reaper must not).
static EXECUTORS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn executors() -> MutexGuard<'static, Vec<i32>> {
    lock(&EXECUTORS)
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
/// whose parent is zwarm, outside zwarm's own process group, that are not executors. Also
/// removes turn cgroups that could not be removed earlier. Blocking (reads /proc): call it
/// from a blocking context.
pub fn reap_orphan_zombies() -> usize {
    let n = reap_zombies_now();
    cgroup::retry_removals();
    n
}

fn reap_zombies_now() -> usize {
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

// ---------------------------------------------------------------------------------------------
// Containment mode

/// How turns should be contained; set once at start-up with [`configure_containment`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ContainmentPreference {
    /// cgroup v2 under `<zwarm's own cgroup>/zwarm` when writable, else process groups.
    #[default]
    Auto,
    /// cgroup v2 under this directory (created if missing; must be on a cgroup2 mount and
    /// writable), else process groups.
    CgroupParent(PathBuf),
    /// Process groups and the `ZWARM_TURN` marker only.
    ProcessGroup,
}

/// The mode in use.
#[derive(Debug, Clone)]
enum Mode {
    /// Each turn in `<parent>/turn-<marker>`.
    Cgroup { parent: PathBuf },
    /// Process group + marker; `reason` says why not cgroups.
    Group { reason: String },
}

struct ContainmentState {
    pref: ContainmentPreference,
    mode: Option<Mode>,
}

static CONTAINMENT: Mutex<ContainmentState> = Mutex::new(ContainmentState {
    pref: ContainmentPreference::Auto,
    mode: None,
});

/// Choose how turns are contained and probe it now (blocking, a few milliseconds). Returns
/// the resulting mode, as [`containment_mode`]. Call it once at start-up, before the first
/// turn; without it the first use probes with [`ContainmentPreference::Auto`].
pub fn configure_containment(pref: ContainmentPreference) -> &'static str {
    let mut st = lock(&CONTAINMENT);
    st.pref = pref;
    let mode = cgroup::probe(&st.pref);
    log_mode(&mode);
    st.mode = Some(mode);
    mode_name(st.mode.as_ref())
}

/// `"cgroup"` when each turn runs in its own cgroup v2, `"process-group"` otherwise (see the
/// module docs). The first call probes the system (blocking, a few milliseconds).
pub fn containment_mode() -> &'static str {
    mode_name(Some(&current_mode()))
}

/// One line for diagnostics: the mode, and where the cgroups are or why there are none.
pub fn containment_detail() -> String {
    match current_mode() {
        Mode::Cgroup { parent } => format!(
            "cgroup: each turn runs in its own cgroup v2 under {} and is stopped with cgroup.kill",
            parent.display()
        ),
        Mode::Group { reason } => format!(
            "process-group: each turn runs in its own process group and its processes are marked with {TURN_MARKER} (a command that calls setsid and clears its environment escapes); cgroups are not used because {reason}"
        ),
    }
}

fn mode_name(m: Option<&Mode>) -> &'static str {
    match m {
        Some(Mode::Cgroup { .. }) => "cgroup",
        _ => "process-group",
    }
}

fn log_mode(m: &Mode) {
    match m {
        Mode::Cgroup { parent } => {
            tracing::info!(parent = %parent.display(), "containment: one cgroup v2 per turn")
        }
        Mode::Group { reason } => tracing::info!(
            %reason,
            "containment: process groups and the ZWARM_TURN marker (no cgroups)"
        ),
    }
}

fn current_mode() -> Mode {
    let mut st = lock(&CONTAINMENT);
    if st.mode.is_none() {
        let mode = cgroup::probe(&st.pref);
        log_mode(&mode);
        st.mode = Some(mode);
    }
    st.mode.clone().unwrap_or(Mode::Group {
        reason: "not probed".into(),
    })
}

/// Give up on cgroups for the rest of this server's life.
fn fall_back_to_groups(reason: String) {
    tracing::warn!(%reason, "containment: falling back to process groups and the ZWARM_TURN marker");
    lock(&CONTAINMENT).mode = Some(Mode::Group { reason });
}

mod cgroup {
    //! cgroup v2 plumbing. Everything here is blocking file I/O on cgroupfs (fast, no sleeps
    //! except where noted).

    use super::*;

    /// statfs magic of cgroup2.
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

    /// Turn cgroups created by this process (marker → dir), and dirs whose removal failed.
    struct Registry {
        turns: HashMap<String, PathBuf>,
        pending_removal: Vec<PathBuf>,
        /// The parent of turn cgroups, kept after a fallback so earlier turns can still be
        /// found by marker (e.g. when adopting a dead server's session).
        parent: Option<PathBuf>,
    }

    static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

    fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut g = lock(&REGISTRY);
        let r = g.get_or_insert_with(|| Registry {
            turns: HashMap::new(),
            pending_removal: Vec::new(),
            parent: None,
        });
        f(r)
    }

    pub(super) fn probe(pref: &ContainmentPreference) -> Mode {
        let parent = match pref {
            ContainmentPreference::ProcessGroup => {
                // Turn cgroups an earlier server left behind are still found by marker.
                remember_existing_parent(own_cgroup_dir().ok().map(|d| d.join("zwarm")));
                return Mode::Group {
                    reason: "the configuration asks for process groups".into(),
                };
            }
            ContainmentPreference::CgroupParent(p) => p.clone(),
            ContainmentPreference::Auto => match own_cgroup_dir() {
                Ok(own) => own.join("zwarm"),
                Err(reason) => return Mode::Group { reason },
            },
        };
        match check_parent(
            &parent,
            matches!(pref, ContainmentPreference::CgroupParent(_)),
        ) {
            Ok(()) => {
                with_registry(|r| r.parent = Some(parent.clone()));
                Mode::Cgroup { parent }
            }
            Err(reason) => {
                remember_existing_parent(Some(parent.clone()));
                Mode::Group {
                    reason: format!("{}: {reason}", parent.display()),
                }
            }
        }
    }

    fn remember_existing_parent(parent: Option<PathBuf>) {
        if let Some(p) = parent.filter(|p| p.join("cgroup.procs").exists()) {
            with_registry(|r| r.parent = Some(p));
        }
    }

    /// This process's cgroup v2 directory, from /proc/self/cgroup and /proc/self/mountinfo.
    pub(super) fn own_cgroup_dir() -> Result<PathBuf, String> {
        if !cfg!(target_os = "linux") {
            return Err("cgroups exist only on Linux".into());
        }
        let cg = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup is unreadable ({e})"))?;
        let path = cg
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim_end_matches(" (deleted)").to_string())
            .ok_or(
                "this process is in no cgroup v2 hierarchy (no `0::` line in /proc/self/cgroup)",
            )?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo is unreadable ({e})"))?;
        for line in mounts.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if right.split_whitespace().next() != Some("cgroup2") {
                continue;
            }
            let f: Vec<&str> = left.split_whitespace().collect();
            let (Some(root), Some(mountpoint)) = (f.get(3), f.get(4)) else {
                continue;
            };
            let root = unescape_mount(root);
            let Some(rel) = strip_cgroup_prefix(&path, &root) else {
                continue;
            };
            return Ok(PathBuf::from(unescape_mount(mountpoint)).join(rel));
        }
        Err(format!(
            "no cgroup2 mount shows this process's cgroup `{path}` (is cgroup v2 mounted?)"
        ))
    }

    /// `path` relative to the mount's `root`, if it is inside it.
    fn strip_cgroup_prefix<'a>(path: &'a str, root: &str) -> Option<&'a str> {
        let root = root.trim_end_matches('/');
        let rest = path.strip_prefix(root)?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        Some(rest.trim_start_matches('/'))
    }

    /// mountinfo escapes space, tab, newline and backslash as `\ooo`.
    fn unescape_mount(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn is_cgroup2(dir: &Path) -> bool {
        let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        else {
            return false;
        };
        // SAFETY: statfs writes into the zeroed struct we pass; the path is a valid C string.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
        }
    }

    /// Can turn cgroups be made under `parent`? Creates it, then a probe cgroup into which a
    /// forked child moves itself; both the move and `cgroup.kill` must work.
    fn check_parent(parent: &Path, configured: bool) -> Result<(), String> {
        let made = if configured {
            std::fs::create_dir_all(parent)
        } else {
            std::fs::create_dir(parent)
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create it ({e})")),
        }
        if !is_cgroup2(parent) {
            return Err("it is not on a cgroup v2 filesystem".into());
        }
        let probe = parent.join(format!("probe-{}", std::process::id()));
        let _ = std::fs::remove_dir(&probe);
        std::fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup in it ({e})"))?;
        let r = if probe.join("cgroup.kill").exists() {
            move_probe(&probe)
        } else {
            Err("the kernel has no cgroup.kill (Linux 5.14 or newer is needed)".into())
        };
        let _ = std::fs::remove_dir(&probe);
        r
    }

    /// Fork a child that moves itself into `dir` and exits; report whether the move worked.
    fn move_probe(dir: &Path) -> Result<(), String> {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot open cgroup.procs ({e})"))?;
        let fd = procs.as_raw_fd();
        // SAFETY: the child only calls write and _exit, both async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork failed ({})", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: in the forked child: write to an inherited fd, then _exit.
            unsafe {
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let code = if ok {
                    0
                } else {
                    (*libc::__errno_location()).clamp(1, 255)
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        loop {
            // SAFETY: waiting for the child we just forked.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err("lost the probe process".into());
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else if libc::WIFEXITED(status) {
            Err(format!(
                "moving a process into a cgroup under it failed ({})",
                std::io::Error::from_raw_os_error(libc::WEXITSTATUS(status))
            ))
        } else {
            Err("the probe process died".into())
        }
    }

    /// The directory name of a turn's cgroup.
    pub(super) fn turn_dir_name(marker: &str) -> String {
        let clean: String = marker
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("turn-{clean}")
    }

    /// Create the turn's cgroup and open its cgroup.procs for the child to write itself into.
    pub(super) fn prepare(parent: &Path, marker: &str) -> Result<(PathBuf, std::fs::File), String> {
        let dir = parent.join(turn_dir_name(marker));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {} ({e})", dir.display())),
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot open {}/cgroup.procs ({e})", dir.display()))?;
        Ok((dir, f))
    }

    pub(super) fn register(marker: &str, dir: PathBuf) {
        with_registry(|r| {
            r.turns.insert(marker.to_string(), dir);
        });
    }

    /// The cgroup of a turn, if it exists: one this process made, or one under the parent
    /// (made by an earlier server on the same machine).
    pub(super) fn find(marker: &str) -> Option<PathBuf> {
        with_registry(|r| {
            r.turns.get(marker).cloned().or_else(|| {
                r.parent
                    .as_ref()
                    .map(|p| p.join(turn_dir_name(marker)))
                    .filter(|d| d.join("cgroup.procs").exists())
            })
        })
    }

    pub(super) fn forget(marker: &str) {
        with_registry(|r| {
            r.turns.remove(marker);
        });
    }

    /// Every process in the cgroup (and below it).
    pub(super) fn pids(dir: &Path) -> Vec<i32> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out
    }

    /// SIGKILL every process in the cgroup and its descendants (`cgroup.kill`). Fast.
    pub(super) fn kill(dir: &Path) -> bool {
        match std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
        {
            Ok(mut f) => f.write_all(b"1").is_ok(),
            Err(_) => false,
        }
    }

    pub(super) fn populated(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// Remove an empty turn cgroup (and empty sub-cgroups the executor may have made). Leaves
    /// it for a later retry when it is still busy.
    pub(super) fn remove(dir: &Path) {
        if remove_tree(dir) {
            return;
        }
        with_registry(|r| {
            if !r.pending_removal.iter().any(|d| d == dir) {
                r.pending_removal.push(dir.to_path_buf());
            }
        });
    }

    fn remove_tree(dir: &Path) -> bool {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Retry removals that failed, and remove turn cgroups left empty for over a minute (by a
    /// server that died, or a test that never cleaned up). A populated cgroup is never touched.
    pub(super) fn retry_removals() {
        let (pending, parent, live): (Vec<PathBuf>, Option<PathBuf>, Vec<PathBuf>) =
            with_registry(|r| {
                (
                    std::mem::take(&mut r.pending_removal),
                    r.parent.clone(),
                    r.turns.values().cloned().collect(),
                )
            });
        for d in pending {
            if populated(&d) {
                kill(&d);
            }
            remove(&d);
        }
        let Some(parent) = parent else { return };
        for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let path = e.path();
            let is_turn = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("turn-"));
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if is_turn && old && !live.contains(&path) && !populated(&path) {
                let _ = remove_tree(&path);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning

/// A request to the spawner thread.
struct SpawnRequest {
    spec: ProcessSpec,
    stdin: bool,
    marker: String,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
}

/// The thread every executor is forked from. `PR_SET_PDEATHSIG` fires when the *thread* that
/// forked a child exits, and tokio retires worker threads (e.g. after `block_in_place`); a
/// dedicated thread that lives as long as zwarm makes the signal mean "zwarm died".
fn spawner() -> &'static Mutex<std::sync::mpsc::Sender<SpawnRequest>> {
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("zwarm-spawner".into())
            .spawn(move || {
                while let Ok(req) = rx.recv() {
                    let _rt = req.runtime.enter();
                    let _ = req
                        .reply
                        .send(spawn_here(&req.spec, req.stdin, &req.marker));
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    })
}

/// Start an executor process (see the module docs for how it is set up). A [`Launch`] with
/// input gets it on stdin: written by a background task, then closed; a child that exits
/// without reading it is fine (EPIPE is ignored).
pub async fn spawn<S: Spawnable + ?Sized>(what: &S, marker: &str) -> std::io::Result<Child> {
    let input = what.stdin_bytes().map(<[u8]>::to_vec);
    let (reply, rx) = tokio::sync::oneshot::channel();
    let req = SpawnRequest {
        spec: what.process_spec().clone(),
        stdin: input.is_some(),
        marker: marker.to_string(),
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    if lock(spawner()).send(req).is_err() {
        return Err(std::io::Error::other("the spawner thread is not running"));
    }
    let mut child = rx
        .await
        .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))??;
    if let (Some(bytes), Some(mut pipe)) = (input, child.stdin.take()) {
        let marker = marker.to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let r = match pipe.write_all(&bytes).await {
                Ok(()) => pipe.shutdown().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    tracing::debug!(%marker, "the executor exited before reading all of its stdin")
                }
                Err(e) => {
                    tracing::warn!(%marker, error = %e, "writing the executor's stdin failed")
                }
            }
        });
    }
    Ok(child)
}

fn spawn_here(spec: &ProcessSpec, stdin: bool, marker: &str) -> std::io::Result<Child> {
    if let Mode::Cgroup { parent } = current_mode() {
        match cgroup::prepare(&parent, marker) {
            Ok((dir, procs)) => match spawn_command(spec, stdin, marker, Some(&procs)) {
                Ok(child) => {
                    cgroup::register(marker, dir);
                    return Ok(child);
                }
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    // Not necessarily the cgroup's fault (a missing binary fails too): only a
                    // start that works without the cgroup proves it.
                    let plain = spawn_command(spec, stdin, marker, None)?;
                    fall_back_to_groups(format!(
                        "moving an executor into {} failed ({e})",
                        dir.display()
                    ));
                    return Ok(plain);
                }
            },
            Err(reason) => fall_back_to_groups(reason),
        }
    }
    spawn_command(spec, stdin, marker, None)
}

fn spawn_command(
    spec: &ProcessSpec,
    stdin: bool,
    marker: &str,
    cgroup_procs: Option<&std::fs::File>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
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
    let procs_fd = cgroup_procs.map(|f| f.as_raw_fd());
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and only calls prctl, getppid and write,
    // which are async-signal-safe. If zwarm dies (even by SIGKILL), the executor gets SIGTERM
    // instead of running on unsupervised; whatever it leaves is killed by cgroup or marker on
    // the next start. Writing "0" to cgroup.procs moves the child itself into the turn's
    // cgroup before it execs, so everything it starts is born inside.
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
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
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

// ---------------------------------------------------------------------------------------------
// Stopping

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: killpg only sends a signal; a stale group id yields ESRCH, which we ignore.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// How long [`terminate`] waits after SIGTERM, and after SIGKILL, for the executor to exit.
const TERM_WAIT: Duration = Duration::from_secs(2);
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Time kept back from a deadline for the final sweep (cgroup.kill, marker scan, reaping).
const SWEEP_RESERVE: Duration = Duration::from_millis(250);
/// Budget of the sweep when no deadline is given.
const SWEEP_BUDGET: Duration = Duration::from_secs(1);

/// Stop a running executor: SIGINT, `grace`, SIGTERM, 2 s, SIGKILL — to its whole process
/// group, plus `cgroup.kill` in cgroup mode — then kill whatever still carries the turn
/// marker. Returns once the child is reaped (or after about `grace` + 8 s at most).
pub async fn terminate(child: &mut Child, marker: &str, grace: Duration) {
    let deadline = Instant::now() + grace + TERM_WAIT + KILL_WAIT + SWEEP_BUDGET;
    stop_turn(child, marker, grace, deadline).await;
}

/// [`terminate`] within a deadline: SIGINT to the group, up to `grace` (shortened to fit),
/// SIGTERM, then SIGKILL of the group and the turn's cgroup, and a sweep of marked
/// processes, all finished by `deadline` (about 250 ms of it is kept for the kill and sweep;
/// the SIGTERM step is skipped when no time is left for it). Only tokio timers on the async
/// side; the sweep runs on the blocking pool. Returns whether the executor was reaped.
pub async fn stop_turn(
    child: &mut Child,
    marker: &str,
    grace: Duration,
    deadline: Instant,
) -> bool {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        // Already reaped.
        sweep_async(marker.to_string(), None, None, deadline).await;
        return true;
    };
    let soft = |cap: Duration| {
        cap.min(
            deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(SWEEP_RESERVE),
        )
    };
    signal_group(pid, libc::SIGINT);
    let mut reaped = wait_for(child, soft(grace)).await;
    if !reaped {
        let wait = soft(TERM_WAIT);
        if !wait.is_zero() {
            signal_group(pid, libc::SIGTERM);
            reaped = wait_for(child, wait).await;
        }
    }
    if !reaped {
        hard_kill(pid, marker);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(SWEEP_RESERVE / 2);
        reaped = wait_for(child, left.min(KILL_WAIT).max(Duration::from_millis(20))).await;
    }
    // The group may still hold tool processes after the leader exited.
    sweep_async(marker.to_string(), Some(pid), Some(pid), deadline).await;
    reaped
}

async fn wait_for(child: &mut Child, limit: Duration) -> bool {
    if limit.is_zero() {
        return matches!(child.try_wait(), Ok(Some(_)));
    }
    tokio::time::timeout(limit, child.wait()).await.is_ok()
}

/// SIGKILL the group and the turn's cgroup: quick signal sends and one cgroupfs write, no waits.
fn hard_kill(pgid: i32, marker: &str) {
    signal_group(pgid, libc::SIGKILL);
    if let Some(dir) = cgroup::find(marker) {
        cgroup::kill(&dir);
    }
}

/// Run [`sweep`] on the blocking pool, waiting for it at most until `deadline` (it goes on in
/// the background if it takes longer).
async fn sweep_async(marker: String, pgid: Option<i32>, exclude: Option<i32>, deadline: Instant) {
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(Duration::from_millis(20));
    let task = tokio::task::spawn_blocking(move || sweep(&marker, pgid, exclude, budget));
    let _ = tokio::time::timeout_at(
        deadline.max(Instant::now() + Duration::from_millis(50)),
        task,
    )
    .await;
}

/// After a normal exit: kill leftovers of the turn (its group, its cgroup, and anything
/// carrying the marker), remove its cgroup. Blocking (up to about a second).
pub fn cleanup_after_exit(pgid: Option<u32>, marker: &str) {
    let pg = pgid.and_then(|p| i32::try_from(p).ok());
    sweep(marker, pg, pg, SWEEP_BUDGET);
}

/// SIGKILL every process of the turn `marker`: its cgroup (if it has one, made by this server
/// or an earlier one) and every process whose environment holds `ZWARM_TURN=<marker>`
/// (except `exclude`, the executor itself, which tokio reaps); then reap those that are our
/// children and remove the cgroup. Returns how many were killed. Blocking (up to about a
/// second).
pub fn kill_marked(marker: &str, exclude: Option<i32>) -> usize {
    sweep(marker, None, exclude, SWEEP_BUDGET)
}

/// The blocking part of every stop: group SIGKILL, cgroup.kill and removal, marker scan,
/// reaping — bounded by `budget` (with a zero budget: one pass of kills, no waiting).
fn sweep(marker: &str, pgid: Option<i32>, exclude: Option<i32>, budget: Duration) -> usize {
    // Probe first if nothing was started yet (adopting a dead server's session happens before
    // any spawn): that is what tells where turn cgroups live.
    let _ = current_mode();
    let until = std::time::Instant::now() + budget;
    let time_left = || until.saturating_duration_since(std::time::Instant::now());
    if let Some(pg) = pgid {
        signal_group(pg, libc::SIGKILL);
    }
    let mut killed: Vec<i32> = Vec::new();
    if let Some(dir) = cgroup::find(marker) {
        let inside = cgroup::pids(&dir);
        cgroup::kill(&dir);
        killed.extend(inside.into_iter().filter(|p| Some(*p) != exclude));
        while cgroup::populated(&dir) && !time_left().is_zero() {
            std::thread::sleep(Duration::from_millis(5).min(time_left()));
        }
        cgroup::remove(&dir);
        cgroup::forget(marker);
    }
    let needle = format!("{TURN_MARKER}={marker}");
    let me = std::process::id() as i32;
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
            if !killed.contains(pid) {
                killed.push(*pid);
            }
        }
        if time_left().is_zero() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20).min(time_left()));
    }
    reap(&killed, time_left().min(Duration::from_millis(500)));
    reap_zombies_now();
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

/// Reap killed processes that were re-parented to us (we are a subreaper), waiting up to
/// `limit`. Only the given pids are waited for, so tokio's own children are never touched.
fn reap(pids: &[i32], limit: Duration) {
    let until = std::time::Instant::now() + limit;
    loop {
        let mut pending = false;
        for pid in pids {
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with WNOHANG; ECHILD (not our child) is fine.
            let r = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
            if r == 0 {
                pending = true;
            }
        }
        if !pending || std::time::Instant::now() >= until {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_cgroup_names_are_safe_directory_names() {
        assert_eq!(cgroup::turn_dir_name("abc-123.4"), "turn-abc-123.4");
        assert_eq!(cgroup::turn_dir_name("../x y"), "turn-.._x_y");
    }

    #[test]
    fn containment_mode_is_one_of_two_names() {
        let m = containment_mode();
        println!("{}", containment_detail());
        assert!(m == "cgroup" || m == "process-group", "{m}");
        assert!(containment_detail().starts_with(m));
    }
}
