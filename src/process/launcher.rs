//! The launcher: how an executor starts without forking the server.
//!
//! A `fork()` of the server copies the page tables of a multi-threaded process of some 25 MB
//! and write-protects all of its memory, for a child that only execs; std's `Command` forks
//! whenever a `pre_exec` closure is set. So when a [`super::Reaper`] runs (the zwarm binary in
//! its helper mode, see [`super::REAPER_ARG`]) and another executor is running, executors are
//! started through that same binary as a *launcher* (`super::spawn` decides): std starts it with `posix_spawn` (a vfork: the server's memory is
//! not copied), with the executor's working dir, environment, process group and pipes, as
//! `<helper> __zwarm-reaper exec <server pid> <cgroup.procs or ""> <program> <args…>`. The
//! launcher, single-threaded and before anything else:
//!
//! 1. sets the parent-death signal (SIGTERM) and checks that the server is still its parent
//!    (as the `pre_exec` closure did);
//! 2. moves itself into the turn's cgroup by writing `0` to its `cgroup.procs`, so the
//!    executor and everything it starts are born inside the cgroup, as before;
//! 3. finds the program (PATH search as `execvp` does) and checks that it may execute it;
//! 4. writes a 4-byte status record on its stdout (the executor's stdout pipe, which the
//!    server reads first: [`read_status`]), restores SIGPIPE to its default (std's runtime
//!    ignores it, and that would be inherited), and execs the executor in place (same pid,
//!    same process group, same pipes).
//!
//! A failed step is reported in the record instead, and the launcher exits: the server turns
//! it into the same error a failed spawn gave (a cgroup move that fails makes the containment
//! fall back to process groups, a missing program is `ENOENT`). Only an `execv` that fails
//! after the checks (e.g. a file that is no executable format) is reported differently: on
//! the executor's stderr, with exit status 127.

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The word after [`super::REAPER_ARG`] that makes the helper binary a launcher.
pub(super) const EXEC_ARG: &str = "exec";

/// Length of the status record the launcher writes before it execs.
const STATUS_LEN: usize = 4;

/// What the launcher reported.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// The executor is being exec'd.
    Started,
    /// Moving into the turn's cgroup failed (errno).
    Cgroup(i32),
    /// The server was no longer the launcher's parent.
    ParentGone,
    /// The program cannot be run (errno: `ENOENT`, `EACCES`, …).
    Program(i32),
}

impl Status {
    fn encode(&self) -> [u8; STATUS_LEN] {
        let (kind, errno) = match self {
            Status::Started => (b'0', 0),
            Status::Cgroup(e) => (b'c', *e),
            Status::ParentGone => (b'p', 0),
            Status::Program(e) => (b'x', *e),
        };
        let e = u16::try_from(errno).unwrap_or(u16::MAX).to_be_bytes();
        [b'Z', kind, e[0], e[1]]
    }

    fn decode(b: [u8; STATUS_LEN]) -> Option<Status> {
        let errno = i32::from(u16::from_be_bytes([b[2], b[3]]));
        match (b[0], b[1]) {
            (b'Z', b'0') => Some(Status::Started),
            (b'Z', b'c') => Some(Status::Cgroup(errno)),
            (b'Z', b'p') => Some(Status::ParentGone),
            (b'Z', b'x') => Some(Status::Program(errno)),
            _ => None,
        }
    }
}

/// The arguments after the helper's own (`[REAPER_ARG]`) that launch `program args…`.
pub(super) fn args(procs: Option<&Path>, program: &Path, rest: &[OsString]) -> Vec<OsString> {
    let mut v = Vec::with_capacity(rest.len() + 4);
    v.push(OsString::from(EXEC_ARG));
    v.push(OsString::from(std::process::id().to_string()));
    v.push(procs.map(|p| p.as_os_str().to_owned()).unwrap_or_default());
    v.push(program.as_os_str().to_owned());
    v.extend(rest.iter().cloned());
    v
}

/// Read the launcher's status record from the executor's stdout (before any of its output).
/// `None`: the launcher ended (or the pipe failed) without writing one.
pub(super) async fn read_status(out: &mut tokio::process::ChildStdout) -> Option<Status> {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; STATUS_LEN];
    // read_exact never reads past the record: what follows is the executor's output.
    out.read_exact(&mut b).await.ok()?;
    Status::decode(b)
}

fn report(status: &Status) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&status.encode());
    let _ = out.flush();
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The launcher (the helper binary given [`EXEC_ARG`]): `args` are what follows it. Returns
/// the exit code when it does not exec.
pub(super) fn run(mut args: impl Iterator<Item = OsString>) -> i32 {
    let parent: i32 = args
        .next()
        .and_then(|a| a.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let procs = args.next().unwrap_or_default();
    let Some(program) = args.next() else {
        report(&Status::Program(libc::EINVAL));
        return 127;
    };
    let rest: Vec<OsString> = args.collect();
    // SAFETY: prctl with PR_SET_PDEATHSIG takes one integer argument; getppid has no
    // preconditions.
    let parent_now = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
        libc::getppid()
    };
    // The server may have died before the prctl: then the signal never comes.
    if parent_now != parent {
        report(&Status::ParentGone);
        return 1;
    }
    if !procs.is_empty() {
        let moved = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .and_then(|mut f| f.write_all(b"0"));
        if let Err(e) = moved {
            report(&Status::Cgroup(errno_of(&e)));
            return 1;
        }
    }
    let path = match resolve(&program) {
        Ok(p) => p,
        Err(errno) => {
            report(&Status::Program(errno));
            return 127;
        }
    };
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).ok();
    let argv: Option<Vec<CString>> = std::iter::once(program.as_os_str())
        .chain(rest.iter().map(OsString::as_os_str))
        .map(cstr)
        .collect();
    let (Some(argv), Some(path_c)) = (argv, cstr(path.as_os_str())) else {
        report(&Status::Program(libc::EINVAL));
        return 127;
    };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    report(&Status::Started);
    // SAFETY: restoring a signal's default disposition has no memory effects; execv gets a
    // valid C string and a null-terminated array of valid C strings that outlive the call
    // (it returns only on failure).
    let err = unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execv(path_c.as_ptr(), ptrs.as_ptr());
        std::io::Error::last_os_error()
    };
    let _ = writeln!(
        std::io::stderr(),
        "zwarm: cannot run {}: {err}",
        path.display()
    );
    127
}

/// Where `execvp` would find `program`: itself when it holds a `/`, else the first
/// executable file of that name in `$PATH`. Errno on failure.
fn resolve(program: &OsStr) -> Result<PathBuf, i32> {
    if program.as_bytes().contains(&b'/') {
        return executable(Path::new(program)).map(|()| PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(libc::ENOENT);
    }
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut err = libc::ENOENT;
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e == libc::EACCES => err = e,
            Err(_) => {}
        }
    }
    Err(err)
}

fn executable(p: &Path) -> Result<(), i32> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: access only reads the valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Err(libc::EACCES),
        Ok(_) => Ok(()),
        Err(e) => Err(errno_of(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_round_trip() {
        for s in [
            Status::Started,
            Status::Cgroup(libc::EBUSY),
            Status::ParentGone,
            Status::Program(libc::ENOENT),
        ] {
            assert_eq!(Status::decode(s.encode()), Some(s));
        }
        assert_eq!(Status::decode(*b"{\"ty"), None);
    }

    #[test]
    fn programs_are_found_as_execvp_would() {
        assert!(resolve(OsStr::new("sh")).is_ok());
        assert_eq!(
            resolve(OsStr::new("/nonexistent/zwarm-no-such")),
            Err(libc::ENOENT)
        );
        assert_eq!(
            resolve(OsStr::new("zwarm-no-such-program")),
            Err(libc::ENOENT)
        );
        assert_eq!(resolve(OsStr::new("/")), Err(libc::EACCES));
    }
}
