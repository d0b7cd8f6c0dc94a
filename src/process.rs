//! Child processes that never leak.
//!
//! Every executor runs in its own process group with piped stdout/stderr (zwarm's own stdout is
//! the MCP channel). Its stdin is either `/dev/null` (an open, silent stdin makes `codex exec`
//! wait for EOF and `claude -p` stall) or, for a [`Launch`] that carries input (the prompt), a
//! pipe that zwarm writes and then closes. Prompts go through stdin rather than argv: argv has
//! a size limit (a task over 128 KiB failed with E2BIG) and is readable by every user in
//! `/proc/<pid>/cmdline`.
//!
//! **Starting.** Executors are started from one dedicated thread with
//! `clone(CLONE_VM | CLONE_VFORK)` (module `vfork`): the server is neither forked (a fork of the
//! multi-threaded server copies its page tables and stalls its other threads; it was the largest
//! item of the server's CPU per turn) nor is a helper binary exec'd in between. Before the
//! executor's program runs, the child resets signal handlers, takes its own process group, sets
//! the parent-death signal, moves into the turn's cgroup and takes its pipes; a start that fails
//! reports the errors `std::process::Command` would. The server holds the result as an
//! [`ExecChild`] (pid, pidfd, pipes).
//!
//! **Containment.** Where cgroup v2 is writable (root, or a delegated subtree), every turn's
//! executor is moved into its own cgroup before it execs (`<own cgroup>/zwarm/turn-<marker>`,
//! or under the parent given by [`ContainmentPreference::CgroupParent`]). Nothing a turn
//! starts can leave that cgroup — not even `setsid env -i …` — unless it runs as root (the
//! [`Reaper`] kills one it saw there, at the turn's end), and `cgroup.kill` stops all of it
//! at once. Otherwise
//! zwarm falls back to the process group plus a marker: each turn's executor gets
//! `ZWARM_TURN=<id>`, which its commands inherit, and when the turn ends every process still
//! carrying the marker is killed. In that mode a command that both leaves the group (`setsid`)
//! and clears its environment (`env -i`) escapes; that is the fallback's known limit.
//! [`Containment::mode_name`] says which mode is in use; the reason for a fallback is logged.
//!
//! **Stopping** is an escalation — SIGINT (both CLIs then kill the tool command they are
//! running), a grace period, SIGTERM, then SIGKILL of the group and `cgroup.kill` — because
//! SIGTERM alone orphans the command a CLI was running (EXECUTORS.md §A.8, §B.6).
//! [`Containment::stop_turn`] fits the whole sequence into a deadline, using only tokio timers
//! on the async side; /proc scans and waits for the kernel run on the blocking pool.
//!
//! zwarm is a child subreaper, so orphans are re-parented to zwarm rather than to PID 1, and
//! are reaped here.
//!
//! **State.** How turns are contained (the mode, the turn cgroups made, the thread executors
//! are started from, the [`Reaper`] that kills them if zwarm dies) is a [`Containment`] value,
//! owned by the local runner ([`crate::runner::local::LocalRunner`]); there is no process-wide
//! default. The one piece of state that is the process's by nature is the list of live
//! executor pids: every runner's children are children of this one process, and the orphan
//! reaper (which reaps any zombie child of this process) must not reap any of them.
//!
//! **After zwarm's death.** The parent-death signal (SIGTERM, set before the executor execs)
//! reaches the executor only, so a
//! [`Reaper`] — a helper process holding a pipe from zwarm — kills what each running turn
//! left (cgroup, process group, marked processes) when that pipe closes, within
//! milliseconds, however zwarm ended.

mod bounded;
mod cgroup;
mod child;
mod reaper;
mod spawn;
mod vfork;
pub use child::{ExecChild, ExecOutput};
pub(crate) use spawn::die_with_parent;
mod stop;
pub use bounded::{Bounded, run_bounded};
pub use reaper::{REAPER_ARG, Reaper, run as run_reaper};
pub(crate) use stop::left_by_dead;
pub use stop::pid_alive;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

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

/// What [`Containment::spawn`] accepts: a bare [`ProcessSpec`] (stdin `/dev/null`) or a [`Launch`].
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pids of live executor processes (tokio reaps those; the orphan reaper must not). Global on
/// purpose: the orphan reaper waits for *any* zombie child of this process, so it must know
/// the executors of every runner and containment in it, and a process has one set of children.
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

/// Start a child this process waits for itself (through tokio) that is not a turn's executor
/// (an ACP agent kept by the pool), registered as executors are, under the lock the orphan
/// reaper holds while it scans: the orphan reaper never takes its exit status. The guard
/// forgets it.
pub fn spawn_waited_child(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, ExecutorGuard)> {
    let child = start_registered(|| cmd.spawn(), |c| c.id())?;
    let pid = child.id();
    Ok((child, ExecutorGuard(pid)))
}

/// Start a child with `start` and register its pid (`pid_of`) as an executor, both under the
/// lock the orphan reaper holds while it scans, so a child that exits at once is never taken
/// for an orphan.
fn start_registered<T, E>(
    start: impl FnOnce() -> Result<T, E>,
    pid_of: impl FnOnce(&T) -> Option<u32>,
) -> Result<T, E> {
    let mut reg = executors();
    let started = start()?;
    if let Some(p) = pid_of(&started).and_then(|p| i32::try_from(p).ok()) {
        reg.push(p);
    }
    Ok(started)
}

/// A pidfd for `pid` (readable once it has exited; close-on-exec). `None` where the kernel has
/// no `pidfd_open`, or the process is gone.
pub(crate) fn pidfd_of(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a new descriptor that nothing else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Forgets an executor when dropped, on every path out of a turn (including panics).
pub struct ExecutorGuard(pub Option<u32>);

impl Drop for ExecutorGuard {
    fn drop(&mut self) {
        forget_executor(self.0);
    }
}

pub(crate) fn reap_zombies_now() -> usize {
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
pub(crate) fn proc_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// The fields of /proc/<pid>/stat that zwarm uses.
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
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

/// How turns should be contained (given to [`Containment::new`]).
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
pub(crate) enum Mode {
    /// Each turn in `<parent>/turn-<marker>`.
    Cgroup { parent: PathBuf },
    /// Process group + marker; `reason` says why not cgroups.
    Group { reason: String },
}

struct ContainmentState {
    pref: ContainmentPreference,
    mode: Option<Mode>,
}

/// How one runner contains its turns: the mode (probed once), the turn cgroups it made, the
/// thread its executors are started from, and the reaper that outlives zwarm.
pub struct Containment {
    state: Mutex<ContainmentState>,
    cgroups: Mutex<cgroup::Registry>,
    spawner: OnceLock<Mutex<std::sync::mpsc::Sender<spawn::SpawnRequest>>>,
    reaper: OnceLock<Arc<Reaper>>,
}

impl std::fmt::Debug for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containment")
            .field("mode", &lock(&self.state).mode)
            .finish()
    }
}

impl Containment {
    /// A containment that probes with `pref` on first use.
    pub fn new(pref: ContainmentPreference) -> Arc<Containment> {
        Arc::new(Containment {
            state: Mutex::new(ContainmentState { pref, mode: None }),
            cgroups: Mutex::new(cgroup::Registry::default()),
            spawner: OnceLock::new(),
            reaper: OnceLock::new(),
        })
    }

    /// Have `reaper` kill this containment's running turns if zwarm dies. Set once, before the
    /// first turn; returns false when a reaper was already set.
    pub fn set_reaper(&self, reaper: Arc<Reaper>) -> bool {
        self.reaper.set(reaper).is_ok()
    }

    /// The reaper, if one was set.
    pub fn reaper(&self) -> Option<&Arc<Reaper>> {
        self.reaper.get()
    }

    /// Probe the mode now if not done yet (blocking, a few milliseconds) and return its name.
    pub fn probe(&self) -> &'static str {
        self.mode_name()
    }

    /// Choose how turns are contained and probe it now (blocking, a few milliseconds).
    pub fn configure(&self, pref: ContainmentPreference) -> &'static str {
        let mut st = lock(&self.state);
        st.pref = pref;
        let mode = cgroup::probe(&self.cgroups, &st.pref);
        log_mode(&mode);
        st.mode = Some(mode);
        mode_name(st.mode.as_ref())
    }

    /// `"cgroup"` or `"process-group"` (probes on first use).
    pub fn mode_name(&self) -> &'static str {
        mode_name(Some(&self.current_mode()))
    }

    /// One line for diagnostics: the mode, and where the cgroups are or why there are none.
    pub fn detail(&self) -> String {
        match self.current_mode() {
            Mode::Cgroup { parent } => format!(
                "cgroup: each turn runs in its own cgroup v2 under {} and is stopped with cgroup.kill",
                parent.display()
            ),
            Mode::Group { reason } => format!(
                "process-group: each turn runs in its own process group and its processes are marked with {TURN_MARKER} (a command that calls setsid and clears its environment escapes); cgroups are not used because {reason}"
            ),
        }
    }

    fn current_mode(&self) -> Mode {
        let mut st = lock(&self.state);
        if st.mode.is_none() {
            let mode = cgroup::probe(&self.cgroups, &st.pref);
            log_mode(&mode);
            st.mode = Some(mode);
        }
        st.mode.clone().unwrap_or(Mode::Group {
            reason: "not probed".into(),
        })
    }

    /// Give up on cgroups for the rest of this containment's life.
    fn fall_back_to_groups(&self, reason: String) {
        tracing::warn!(%reason, "containment: falling back to process groups and the ZWARM_TURN marker");
        lock(&self.state).mode = Some(Mode::Group { reason });
    }

    /// Reap orphans that were re-parented to zwarm (a subreaper) and exited on their own:
    /// zombies whose parent is zwarm, outside zwarm's own process group, that are not
    /// executors. Also retries cgroup removals that failed. Blocking (reads /proc).
    pub fn reap_orphan_zombies(&self) -> usize {
        let n = reap_zombies_now();
        cgroup::retry_removals(&self.cgroups);
        n
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
        let c = Containment::new(ContainmentPreference::Auto);
        let m = c.probe();
        println!("{}", c.detail());
        assert!(m == "cgroup" || m == "process-group", "{m}");
        assert!(c.detail().starts_with(m));
    }
}
