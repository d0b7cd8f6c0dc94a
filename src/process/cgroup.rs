//! cgroup v2 plumbing. Everything here is blocking file I/O on cgroupfs (fast, no sleeps
//! except where noted). The turn cgroups a [`super::Containment`] made are kept in its
//! [`Registry`], not in global state.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{ContainmentPreference, Mode, lock};

/// statfs magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Turn cgroups created by one [`super::Containment`] (marker → dir), and dirs whose
/// removal failed.
#[derive(Default)]
pub(super) struct Registry {
    turns: HashMap<String, PathBuf>,
    pending_removal: Vec<PathBuf>,
    /// The parent of turn cgroups, kept after a fallback so earlier turns can still be
    /// found by marker (e.g. when adopting a dead server's session).
    parent: Option<PathBuf>,
}

fn with_registry<T>(reg: &Mutex<Registry>, f: impl FnOnce(&mut Registry) -> T) -> T {
    f(&mut lock(reg))
}

pub(super) fn probe(reg: &Mutex<Registry>, pref: &ContainmentPreference) -> Mode {
    let parent = match pref {
        ContainmentPreference::ProcessGroup => {
            // Turn cgroups an earlier server left behind are still found by marker.
            remember_existing_parent(reg, own_cgroup_dir().ok().map(|d| d.join("zwarm")));
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
            with_registry(reg, |r| r.parent = Some(parent.clone()));
            Mode::Cgroup { parent }
        }
        Err(reason) => {
            remember_existing_parent(reg, Some(parent.clone()));
            Mode::Group {
                reason: format!("{}: {reason}", parent.display()),
            }
        }
    }
}

fn remember_existing_parent(reg: &Mutex<Registry>, parent: Option<PathBuf>) {
    if let Some(p) = parent.filter(|p| p.join("cgroup.procs").exists()) {
        with_registry(reg, |r| r.parent = Some(p));
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
        .ok_or("this process is in no cgroup v2 hierarchy (no `0::` line in /proc/self/cgroup)")?;
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
    sweep_probes(parent);
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

/// Remove the probe cgroups (`probe-<pid>`) of servers that are gone: one that exited or was
/// killed during its probe (which runs beside start-up) leaves its empty probe cgroup. A
/// cgroup with a process in it cannot be removed, so nothing live is touched.
fn sweep_probes(parent: &Path) {
    let probe_pid = |n: &str| n.strip_prefix("probe-")?.parse().ok();
    for dir in super::left_by_dead(parent, probe_pid) {
        let _ = std::fs::remove_dir(dir);
    }
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

/// A turn's cgroup opened for a start: the folder, for a child born inside it
/// (`clone3(CLONE_INTO_CGROUP)`), and its `cgroup.procs`, for a child that moves itself in.
pub(super) struct Entry {
    pub dir: std::fs::File,
    pub procs: std::fs::File,
}

/// Create the turn's cgroup and open it for a start ([`Entry`]).
pub(super) fn prepare(parent: &Path, marker: &str) -> Result<(PathBuf, Entry), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = parent.join(turn_dir_name(marker));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {} ({e})", dir.display())),
    }
    let folder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&dir)
        .map_err(|e| format!("cannot open {} ({e})", dir.display()))?;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| format!("cannot open {}/cgroup.procs ({e})", dir.display()))?;
    Ok((dir, Entry { dir: folder, procs }))
}

pub(super) fn register(reg: &Mutex<Registry>, marker: &str, dir: PathBuf) {
    with_registry(reg, |r| {
        r.turns.insert(marker.to_string(), dir);
    });
}

/// The cgroup of a turn, if it exists: one this process made, or one under the parent
/// (made by an earlier server on the same machine).
pub(super) fn find(reg: &Mutex<Registry>, marker: &str) -> Option<PathBuf> {
    with_registry(reg, |r| {
        r.turns.get(marker).cloned().or_else(|| {
            r.parent
                .as_ref()
                .map(|p| p.join(turn_dir_name(marker)))
                .filter(|d| d.join("cgroup.procs").exists())
        })
    })
}

pub(super) fn forget(reg: &Mutex<Registry>, marker: &str) {
    with_registry(reg, |r| {
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

/// What the cgroup's `cgroup.events` says of `populated` (`None` when it cannot be read).
fn populated_state(dir: &Path) -> Option<bool> {
    let s = std::fs::read_to_string(dir.join("cgroup.events")).ok()?;
    s.lines().find_map(|l| match l.trim() {
        "populated 1" => Some(true),
        "populated 0" => Some(false),
        _ => None,
    })
}

/// Whether the cgroup is known to be empty (`populated 0`); `false` when that cannot be read.
pub(super) fn emptied(dir: &Path) -> bool {
    populated_state(dir) == Some(false)
}

/// Whether the cgroup has a process in it (`populated 1`); `false` when that cannot be read.
pub(super) fn populated(dir: &Path) -> bool {
    populated_state(dir) == Some(true)
}

/// Remove an empty turn cgroup (and empty sub-cgroups the executor may have made). Leaves
/// it for a later retry when it is still busy.
pub(super) fn remove(reg: &Mutex<Registry>, dir: &Path) {
    if remove_tree(dir) {
        return;
    }
    with_registry(reg, |r| {
        if !r.pending_removal.iter().any(|d| d == dir) {
            r.pending_removal.push(dir.to_path_buf());
        }
    });
}

pub(super) fn remove_tree(dir: &Path) -> bool {
    // Usually the turn made no cgroups of its own: one rmdir does it.
    match std::fs::remove_dir(dir) {
        Ok(()) => return true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(_) => {}
    }
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
pub(super) fn retry_removals(reg: &Mutex<Registry>) {
    let (pending, parent, live): (Vec<PathBuf>, Option<PathBuf>, Vec<PathBuf>) =
        with_registry(reg, |r| {
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
        remove(reg, &d);
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
