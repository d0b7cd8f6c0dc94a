//! The reaper: a small helper process that outlives the server only to kill its turns.
//!
//! `PR_SET_PDEATHSIG` reaches an executor only (not what it started), and only with SIGTERM,
//! which a CLI may answer by leaving its tool command running. So when a server dies — even by
//! SIGKILL — something else must stop the turns it was running: the server starts this helper
//! (the zwarm binary with [`REAPER_ARG`]) with a pipe on its stdin and tells it, one JSON line
//! at a time, which turns are running (their label, process group and cgroup) and which are
//! over. When the pipe closes — the server exited or was killed; the kernel closes it either
//! way — the helper kills what is still registered (`cgroup.kill`, the process group, every
//! process carrying the turn's marker) and exits.
//!
//! While a turn runs, the helper also notes every process it sees in the turn's cgroup (pid
//! and start time, sampled every [`SAMPLE`]). A process that later leaves the cgroup (only
//! root can: by writing its pid into another cgroup's `cgroup.procs`) is killed when the turn
//! ends or the server dies. One that leaves before it is ever sampled is not known to anyone.
//!
//! The helper runs in its own process group (a signal to the server's group does not reach it)
//! and ignores SIGINT, SIGTERM and SIGHUP: it exits only when its pipe closes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{TURN_MARKER, cgroup, lock, proc_pids};

/// The argument that makes the zwarm binary run as the reaper ([`run`]).
pub const REAPER_ARG: &str = "__zwarm-reaper";

/// How often the helper looks at the running turns' cgroups.
const SAMPLE: Duration = Duration::from_millis(100);

/// At most this many distinct processes are remembered per turn.
const SEEN_CAP: usize = 8192;

/// The server's end: a pipe to the helper, and what was registered (to replay to a new helper
/// when the old one is found dead).
#[derive(Debug)]
pub struct Reaper {
    program: PathBuf,
    args: Vec<String>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    pipe: Option<std::process::ChildStdin>,
    pid: u32,
    /// A pidfd of the helper (readable once it has exited): checked before every write, far
    /// cheaper than reading its /proc entry; `None` where pidfds are unavailable.
    pidfd: Option<std::os::fd::OwnedFd>,
    /// marker → (process group, cgroup) of every turn watched and not released.
    turns: HashMap<String, (i32, Option<PathBuf>)>,
    /// When the helper was last restarted: a helper that keeps dying (a program that does not
    /// run [`run`]) is restarted at most once per [`RESTART_EVERY`].
    restarted: Option<Instant>,
}

/// The least time between two restarts of the helper.
const RESTART_EVERY: Duration = Duration::from_secs(5);

fn start_helper(
    program: &Path,
    args: &[String],
) -> std::io::Result<(std::process::ChildStdin, u32)> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        // zwarm's stdout is the MCP channel: the helper never holds it.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .current_dir("/")
        .env_remove(TURN_MARKER)
        .process_group(0);
    // Never waited for: when it exits, zwarm's orphan reaper collects it (it is outside
    // zwarm's process group and not an executor).
    let mut child = cmd.spawn()?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the reaper has no stdin pipe"))?;
    Ok((pipe, child.id()))
}

/// Whether the helper still runs: its pidfd is not readable (or, without one, its /proc entry
/// says so).
fn helper_alive(inner: &Inner) -> bool {
    use std::os::fd::AsRawFd;
    match &inner.pidfd {
        Some(fd) => {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no waiting.
            unsafe { libc::poll(&mut p, 1, 0) == 0 }
        }
        None => super::pid_alive(inner.pid as i32),
    }
}

fn watch_line(marker: &str, pgid: i32, cgroup: Option<&Path>) -> String {
    let mut l = json!({
        "watch": marker,
        "pgid": pgid,
        "cgroup": cgroup.map(|p| p.to_string_lossy()),
    })
    .to_string();
    l.push('\n');
    l
}

impl Reaper {
    /// Start the helper: this process's own executable with [`REAPER_ARG`] (for the zwarm
    /// binary, whose `main` hands that argument to [`run`]).
    pub fn start() -> std::io::Result<Reaper> {
        let exe = std::env::current_exe()?;
        Reaper::start_program(&exe, &[REAPER_ARG])
    }

    /// Start the helper as `program args…`: a program that runs [`run`].
    pub fn start_program(program: &Path, args: &[&str]) -> std::io::Result<Reaper> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (pipe, pid) = start_helper(program, &args)?;
        Ok(Reaper {
            program: program.to_path_buf(),
            args,
            inner: Mutex::new(Inner {
                pipe: Some(pipe),
                pid,
                pidfd: super::pidfd_of(pid as i32),
                turns: HashMap::new(),
                restarted: None,
            }),
        })
    }

    /// The helper's process id (of the current helper, after a restart).
    pub fn pid(&self) -> u32 {
        lock(&self.inner).pid
    }

    /// Write `line`; when the helper is gone, start a new one, tell it every turn still
    /// registered, and write `line` to it.
    fn send(&self, line: &str) {
        let mut inner = lock(&self.inner);
        // A write can succeed after the helper died while a process forked meanwhile (and not
        // yet exec'd) still holds the pipe's read end: check the helper itself too.
        let alive = helper_alive(&inner);
        if alive
            && let Some(p) = inner.pipe.as_mut()
            && p.write_all(line.as_bytes()).is_ok()
        {
            return;
        }
        let old = inner.pid;
        if inner.pipe.take().is_some() {
            tracing::warn!(pid = old, "the reaper is gone");
        }
        if inner.restarted.is_some_and(|t| t.elapsed() < RESTART_EVERY) {
            return;
        }
        inner.restarted = Some(Instant::now());
        match start_helper(&self.program, &self.args) {
            Ok((mut pipe, pid)) => {
                // The new helper's pid even if it died at once (its pipe is then dropped and
                // the next send tries again after RESTART_EVERY).
                inner.pid = pid;
                inner.pidfd = super::pidfd_of(pid as i32);
                let replay: String = inner
                    .turns
                    .iter()
                    .map(|(m, (pg, cg))| watch_line(m, *pg, cg.as_deref()))
                    .collect();
                if pipe.write_all(replay.as_bytes()).is_ok()
                    && pipe.write_all(line.as_bytes()).is_ok()
                {
                    tracing::warn!(
                        old,
                        new = pid,
                        turns = inner.turns.len(),
                        "the reaper was gone; started a new one"
                    );
                    inner.pipe = Some(pipe);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the reaper is gone and cannot be restarted: turns are not killed if zwarm dies")
            }
        }
    }

    /// Kill this turn's processes if the server dies before [`Reaper::release`]: its process
    /// group `pgid` (0: not known yet), its cgroup, and whatever carries `ZWARM_TURN=<marker>`.
    /// Sent again with more detail, it updates what is known.
    pub fn watch(&self, marker: &str, pgid: i32, cgroup: Option<&Path>) {
        {
            let mut inner = lock(&self.inner);
            let e = inner.turns.entry(marker.to_string()).or_insert((0, None));
            if pgid > 1 {
                e.0 = pgid;
            }
            if let Some(c) = cgroup {
                e.1 = Some(c.to_path_buf());
            }
        }
        self.send(&watch_line(marker, pgid, cgroup));
    }

    /// The turn is over and its processes were stopped: forget it, killing any process that
    /// was seen in its cgroup and left it.
    pub fn release(&self, marker: &str) {
        lock(&self.inner).turns.remove(marker);
        let mut l = json!({ "release": marker }).to_string();
        l.push('\n');
        self.send(&l);
    }

    /// Check that the helper still listens (restarting it if not). Called periodically.
    pub fn check(&self) {
        self.send("{}\n");
    }
}

/// A turn as the helper knows it.
#[derive(Default)]
struct Turn {
    pgid: i32,
    cgroup: Option<PathBuf>,
    /// pid → start time (clock ticks since boot) of every process seen in the cgroup.
    seen: HashMap<i32, u64>,
}

/// The helper's main loop (the zwarm binary runs it when given [`REAPER_ARG`]). Returns the
/// exit code.
pub fn run() -> i32 {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no memory effects.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut turns: HashMap<String, Turn> = HashMap::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut next_sample = Instant::now();
    loop {
        // Asleep until the server writes (or goes) while no turn has a cgroup to look at.
        let timeout = if turns.values().any(|t| t.cgroup.is_some()) {
            next_sample
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(1000) as i32
        } else {
            -1
        };
        let mut fds = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd struct.
        let r = unsafe { libc::poll(&mut fds, 1, timeout) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if r > 0 {
            // SAFETY: reading into a stack buffer of the given length.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                break;
            }
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            pending.extend_from_slice(&buf[..n as usize]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                handle(&mut turns, &line);
            }
        }
        if Instant::now() >= next_sample {
            sample(&mut turns);
            next_sample = Instant::now() + SAMPLE;
        }
    }
    // The server is gone.
    let n = kill_all(&turns);
    if n > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "zwarm reaper: the server exited with {} turn(s) running; killed {n} process(es)",
            turns.len()
        );
    }
    0
}

fn handle(turns: &mut HashMap<String, Turn>, line: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    if let Some(marker) = v.get("watch").and_then(Value::as_str) {
        let t = turns.entry(marker.to_string()).or_default();
        if let Some(pg) = v
            .get("pgid")
            .and_then(Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 1)
        {
            t.pgid = pg;
        }
        if let Some(dir) = v.get("cgroup").and_then(Value::as_str) {
            t.cgroup = Some(PathBuf::from(dir));
        }
    } else if let Some(marker) = v.get("release").and_then(Value::as_str)
        && let Some(t) = turns.remove(marker)
    {
        let n = kill_escaped(&t);
        if n > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "zwarm reaper: killed {n} process(es) that left the cgroup of turn {marker}"
            );
        }
    }
}

/// Note every process in the running turns' cgroups.
fn sample(turns: &mut HashMap<String, Turn>) {
    for t in turns.values_mut() {
        let Some(dir) = &t.cgroup else { continue };
        for pid in cgroup::pids(dir) {
            if t.seen.len() >= SEEN_CAP && !t.seen.contains_key(&pid) {
                break;
            }
            if let Some(st) = start_time(pid) {
                t.seen.insert(pid, st);
            }
        }
    }
}

/// Start time of a process (field 22 of /proc/<pid>/stat), to tell it from a later process
/// with the same pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn sigkill(pid: i32) {
    // SAFETY: sending a signal has no memory effects; ESRCH is ignored.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Kill the processes seen in the turn's cgroup that are alive and outside it. Returns how
/// many.
fn kill_escaped(t: &Turn) -> usize {
    let inside: Vec<i32> = t.cgroup.as_deref().map(cgroup::pids).unwrap_or_default();
    let mut n = 0;
    for (pid, st) in &t.seen {
        if !inside.contains(pid) && start_time(*pid) == Some(*st) && !zombie(*pid) {
            sigkill(*pid);
            n += 1;
        }
    }
    n
}

fn zombie(pid: i32) -> bool {
    super::proc_stat(pid).is_some_and(|s| s.state == 'Z')
}

/// Kill every registered turn: cgroup.kill, the process group, escaped processes, then
/// marked processes (a few passes), and remove the emptied cgroups. Returns how many
/// processes were signalled.
fn kill_all(turns: &HashMap<String, Turn>) -> usize {
    if turns.is_empty() {
        return 0;
    }
    let mut n = 0;
    for t in turns.values() {
        if let Some(dir) = &t.cgroup {
            n += cgroup::pids(dir).len();
            cgroup::kill(dir);
        }
        if t.pgid > 1 {
            // SAFETY: killpg only sends a signal; a stale group yields ESRCH.
            unsafe {
                libc::killpg(t.pgid, libc::SIGKILL);
            }
        }
        n += kill_escaped(t);
    }
    let needles: Vec<Vec<u8>> = turns
        .keys()
        .map(|m| format!("{TURN_MARKER}={m}").into_bytes())
        .collect();
    let me = std::process::id() as i32;
    for _ in 0..3 {
        let mut found = 0;
        for pid in proc_pids() {
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if env
                .split(|b| *b == 0)
                .any(|kv| needles.iter().any(|n| kv == n.as_slice()))
                && !zombie(pid)
            {
                sigkill(pid);
                found += 1;
            }
        }
        n += found;
        if found == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Remove the cgroups once empty (a later server would otherwise do it).
    let until = Instant::now() + Duration::from_secs(1);
    for t in turns.values() {
        let Some(dir) = &t.cgroup else { continue };
        while cgroup::populated(dir) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        cgroup::remove_tree(dir);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_register_update_and_release_a_turn() {
        let mut turns = HashMap::new();
        handle(
            &mut turns,
            watch_line("s.1", 0, Some(Path::new("/cg/turn-s.1"))).as_bytes(),
        );
        handle(&mut turns, watch_line("s.1", 4242, None).as_bytes());
        let t = turns.get("s.1").expect("registered");
        assert_eq!(t.pgid, 4242);
        assert_eq!(t.cgroup.as_deref(), Some(Path::new("/cg/turn-s.1")));
        // A pgid of 0 or 1 never replaces a known one (killpg(1) would be everyone).
        handle(&mut turns, watch_line("s.1", 1, None).as_bytes());
        assert_eq!(turns["s.1"].pgid, 4242);
        handle(&mut turns, b"not json\n");
        handle(&mut turns, b"{}\n");
        assert_eq!(turns.len(), 1);
        handle(&mut turns, br#"{"release":"s.1"}"#);
        assert!(turns.is_empty());
    }

    #[test]
    fn a_helper_that_keeps_dying_is_restarted_at_most_once_per_period() {
        let r = Reaper::start_program(Path::new("/bin/true"), &[]).expect("start");
        let wait_dead = |pid: u32| {
            let start = Instant::now();
            while super::super::pid_alive(pid as i32) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{pid} still runs"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            // The pipe's reader is gone once it exited.
        };
        let first = r.pid();
        wait_dead(first);
        r.watch("t.1", 0, None);
        let second = r.pid();
        assert_ne!(first, second, "not restarted");
        wait_dead(second);
        r.watch("t.2", 0, None);
        r.check();
        assert_eq!(r.pid(), second, "restarted again within {RESTART_EVERY:?}");
        for pid in [first, second] {
            // SAFETY: reaping the helpers this test started.
            unsafe {
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}
