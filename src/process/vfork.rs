//! Starting an executor without forking the server: `clone(CLONE_VM | CLONE_VFORK)`.
//!
//! `fork()` of the server copies the page tables of a multi-threaded process of some 25 MB and
//! write-protects all of its memory, for a child that only execs; that, and the exec of a
//! helper binary to avoid it, were the largest items of zwarm's own cost per turn (measured:
//! a forked start 1.8 ms of a 4.5 ms overhead; the launcher binary about as much CPU as the
//! executor script it started). Like glibc's `posix_spawn`, the child here shares the server's
//! memory and runs on a small stack of its own while the calling thread (the spawner thread,
//! see [`super::spawn`]) is suspended until the child has exec'd or exited. Unlike
//! `posix_spawn`, the child also does what zwarm needs before the executor runs anything:
//!
//! 1. resets every signal handler to its default (a handler of the server must never run in
//!    the child: it would run on the server's memory) and SIGPIPE from ignored to default
//!    (std ignores it, and that would be inherited), then unblocks all signals (the parent
//!    blocked them around the clone);
//! 2. puts itself in a process group of its own;
//! 3. sets the parent-death signal (SIGTERM) and checks that the server is still its parent
//!    (it may have died before the prctl, and then the signal never comes);
//! 4. moves itself into the turn's cgroup (writes `0` to its `cgroup.procs`), so the executor
//!    and everything it starts are born inside — unless it was born there: on x86_64 the child
//!    is made with `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)` (Linux 5.7+). Moving a
//!    process takes the cgroup core's global write lock, which now and then waits for an RCU
//!    grace period (measured: 4–25 ms, while the spawner and every start queued behind it
//!    wait, and the cores go idle); a child made inside the cgroup takes that lock only to
//!    read. Where `clone3` or the flag is missing (an older kernel, a seccomp filter), the
//!    child moves itself as before;
//! 5. takes its stdin, stdout and stderr, changes to the working directory, and execs the
//!    program found beforehand (PATH search as `execvp` does, in the parent).
//!
//! The child only makes system calls (no allocation, no locks, no panics): everything it needs
//! (C strings, argv, envp) is built by the parent before the clone. A failed step writes the
//! step and errno into memory shared with the parent and exits with 127; the parent reaps it
//! and reports [`Failed`].

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::{c_char, c_int, c_void};

/// The child's stack. It only makes system calls: a few KiB are used.
const STACK_SIZE: usize = 64 * 1024;

/// The step a start failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Before the clone (pipes, program lookup, the clone itself).
    Prepare,
    /// The server was no longer the child's parent.
    Parent,
    /// Moving into the turn's cgroup.
    Cgroup,
    /// Process group, stdio, working directory or the exec itself.
    Exec,
}

/// A start that failed: where, and the error (as `std::process::Command` would report it).
#[derive(Debug)]
pub(super) struct Failed {
    pub step: Step,
    pub error: std::io::Error,
}

impl Failed {
    fn prepare(error: std::io::Error) -> Failed {
        Failed {
            step: Step::Prepare,
            error,
        }
    }
}

/// What to start.
pub(super) struct Start<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    pub cwd: &'a Path,
    /// The complete environment.
    pub env: &'a [(OsString, OsString)],
    /// Input for a stdin pipe (else stdin is `/dev/null`). What fits in the pipe is written
    /// before the start, so the executor has it, and its end when all of it fits, without
    /// waiting for anyone; the rest is the caller's to write ([`Started::stdin_fed`]).
    pub stdin: Option<&'a [u8]>,
    /// The turn's cgroup: the child is made inside it, or moves itself into it.
    pub cgroup: Option<&'a super::cgroup::Entry>,
}

/// A started process: its pid, a pidfd for it (`None` on kernels without `pidfd_open`), and
/// the parent's ends of its pipes.
pub(super) struct Started {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
    /// The write end of its stdin, while some of the input is still to be written.
    pub stdin: Option<OwnedFd>,
    /// How many bytes of the input are already in the pipe.
    pub stdin_fed: usize,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

const FAILED_PARENT: c_int = 1;
const FAILED_CGROUP: c_int = 2;
const FAILED_EXEC: c_int = 3;

/// Shared between the parent and the child (the child writes `step` and `errno`).
#[repr(C)]
struct Shared {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    /// What becomes the child's fds 0, 1 and 2.
    stdio: [c_int; 3],
    /// `cgroup.procs` of the turn's cgroup, or -1.
    procs: c_int,
    parent: libc::pid_t,
    step: c_int,
    errno: c_int,
}

/// Start `what` (see the module docs). Call it from the thread whose exit should mean "zwarm
/// died" (the parent-death signal follows the thread).
pub(super) fn start(what: &Start<'_>) -> Result<Started, Failed> {
    let path_var = what
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let path = resolve(what.program.as_os_str(), path_var.as_deref())
        .map_err(|errno| Failed::prepare(std::io::Error::from_raw_os_error(errno)))?;
    let invalid = || Failed::prepare(std::io::Error::from_raw_os_error(libc::EINVAL));
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| invalid());
    let path_c = cstr(path.as_os_str())?;
    let cwd_c = cstr(what.cwd.as_os_str())?;
    let argv: Vec<CString> = std::iter::once(what.program.as_os_str())
        .chain(what.args.iter().map(OsString::as_os_str))
        .map(cstr)
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = what
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| invalid())
        })
        .collect::<Result<_, _>>()?;
    let argv_p = null_terminated(&argv);
    let envp_p = null_terminated(&envp);

    // The child's ends and the parent's.
    let (stdin_child, stdin_parent, stdin_fed) = match what.stdin {
        Some(input) => {
            let (r, w) = pipe().map_err(Failed::prepare)?;
            let fed = prefill(&w, input).map_err(Failed::prepare)?;
            // All of it in the pipe: the write end closes now, so the executor reads its
            // input and then the end of it, whenever it likes.
            let w = (fed < input.len()).then_some(w);
            (r, w, fed)
        }
        None => {
            let null = std::fs::File::open("/dev/null").map_err(Failed::prepare)?;
            (OwnedFd::from(null), None, 0)
        }
    };
    let (stdout_parent, stdout_child) = pipe().map_err(Failed::prepare)?;
    let (stderr_parent, stderr_child) = pipe().map_err(Failed::prepare)?;
    let stdio = [
        above_stdio(stdin_child).map_err(Failed::prepare)?,
        above_stdio(stdout_child).map_err(Failed::prepare)?,
        above_stdio(stderr_child).map_err(Failed::prepare)?,
    ];

    let mut shared = Shared {
        path: path_c.as_ptr(),
        argv: argv_p.as_ptr(),
        envp: envp_p.as_ptr(),
        cwd: cwd_c.as_ptr(),
        stdio: [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        procs: what.cgroup.map_or(-1, |c| c.procs.as_raw_fd()),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        step: 0,
        errno: 0,
    };
    let mut stack: Vec<u8> = Vec::with_capacity(STACK_SIZE);
    // The stack grows down on every architecture Linux runs zwarm on; 16-byte aligned top.
    let base = stack.as_mut_ptr();
    let top = ((base as usize + STACK_SIZE) & !15) as *mut c_void;

    // SAFETY: all signals are blocked around the clone so that no handler of the server runs
    // in the child before it reset them; the child function only makes async-signal-safe
    // system calls on `shared` and the C strings above, which outlive the clone (CLONE_VFORK
    // suspends this thread until the child has exec'd or exited); `[base, top)` lies in a
    // STACK_SIZE allocation that also outlives it and nothing else uses.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // Born in its cgroup when the kernel can; else it moves itself (`procs`).
        let born_inside = what.cgroup.and_then(|c| {
            let procs = std::mem::replace(&mut shared.procs, -1);
            let r =
                into_cgroup::clone(&c.dir, base, top, child, (&raw mut shared).cast::<c_void>());
            if r.is_none() {
                shared.procs = procs;
            }
            r
        });
        let pid = match born_inside {
            Some(pid) => pid,
            None => libc::clone(
                child,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut shared).cast::<c_void>(),
            ),
        };
        let err = std::io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(Failed::prepare(err));
        }
        pid
    };
    drop(stdio);
    drop(stack);
    // SAFETY: the child wrote these before it exited; volatile, as the compiler did not see it.
    let (step, errno) = unsafe {
        (
            std::ptr::read_volatile(&shared.step),
            std::ptr::read_volatile(&shared.errno),
        )
    };
    if step != 0 {
        let mut raw = 0;
        // SAFETY: the child has exited (CLONE_VFORK returned without an exec): reap it.
        unsafe { libc::waitpid(pid, &mut raw, 0) };
        let error = match step {
            FAILED_PARENT => std::io::Error::other("zwarm exited while starting the executor"),
            _ => std::io::Error::from_raw_os_error(errno),
        };
        let step = match step {
            FAILED_PARENT => Step::Parent,
            FAILED_CGROUP => Step::Cgroup,
            _ => Step::Exec,
        };
        return Err(Failed { step, error });
    }
    // Our unreaped child: the pid cannot have been reused.
    Ok(Started {
        pid,
        pidfd: super::pidfd_of(pid),
        stdin: stdin_parent,
        stdin_fed,
        stdout: stdout_parent,
        stderr: stderr_parent,
    })
}

/// The child (see the module docs). Only system calls; `_exit(127)` on a failed step.
extern "C" fn child(arg: *mut c_void) -> c_int {
    let s = arg.cast::<Shared>();
    // SAFETY: `arg` is the parent's `Shared`, alive and untouched while this child runs
    // (CLONE_VFORK); every call below is an async-signal-safe system call wrapper given valid
    // pointers from it.
    unsafe {
        let fail = |step: c_int| -> c_int {
            std::ptr::write_volatile(&raw mut (*s).errno, *libc::__errno_location());
            std::ptr::write_volatile(&raw mut (*s).step, step);
            libc::_exit(127)
        };
        let dfl: libc::sigaction = std::mem::zeroed();
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let h = old.sa_sigaction;
            if h == libc::SIG_DFL || (h == libc::SIG_IGN && sig != libc::SIGPIPE) {
                continue;
            }
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::setpgid(0, 0) != 0 {
            return fail(FAILED_EXEC);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
        if libc::getppid() != (*s).parent {
            return fail(FAILED_PARENT);
        }
        if (*s).procs >= 0 && libc::write((*s).procs, b"0".as_ptr().cast(), 1) != 1 {
            return fail(FAILED_CGROUP);
        }
        for (target, from) in (*s).stdio.iter().enumerate() {
            // Sources are above 2 (see `above_stdio`): dup2 never overwrites one.
            if libc::dup2(*from, target as c_int) < 0 {
                return fail(FAILED_EXEC);
            }
        }
        if libc::chdir((*s).cwd) != 0 {
            return fail(FAILED_EXEC);
        }
        libc::execve((*s).path, (*s).argv, (*s).envp);
        fail(FAILED_EXEC)
    }
}

fn null_terminated(v: &[CString]) -> Vec<*const c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`: the child is made inside the cgroup
/// and runs `f(arg)` on the stack that ends at `top`. x86_64 only (the child's first
/// instructions, on its new stack, are written here); elsewhere, and where the kernel refuses,
/// [`clone`](into_cgroup::clone) returns `None` and the caller clones as before.
pub(super) mod into_cgroup {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    use libc::{c_int, c_void};

    /// Cleared for good once the kernel says it has no `clone3` or no `CLONE_INTO_CGROUP`
    /// (what the kernel supports is the same for every start of this process).
    static SUPPORTED: AtomicBool = AtomicBool::new(true);

    /// Children made inside their cgroup so far (for tests: a child that moved itself in
    /// does not count).
    #[cfg(test)]
    static MADE_INSIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// How many children were made inside their cgroup so far (for tests).
    #[cfg(test)]
    pub(in crate::process) fn made_inside() -> u64 {
        MADE_INSIDE.load(Ordering::Relaxed)
    }

    /// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    /// The child's pid, or `None` (nothing was started) when this cannot be done here.
    ///
    /// # Safety
    /// As for `libc::clone` with `CLONE_VM | CLONE_VFORK`: `f` only makes async-signal-safe
    /// system calls on memory that outlives the call, `[base, top)` is a stack nobody else
    /// uses, and signals are blocked.
    #[allow(unused_variables)]
    pub(super) unsafe fn clone(
        cgroup: &std::fs::File,
        base: *mut u8,
        top: *mut c_void,
        f: extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> Option<libc::pid_t> {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            if !SUPPORTED.load(Ordering::Relaxed) {
                return None;
            }
            let mut args = CloneArgs {
                flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
                exit_signal: libc::SIGCHLD as u64,
                stack: base as u64,
                stack_size: top as u64 - base as u64,
                cgroup: cgroup.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            let ret: i64;
            // SAFETY: the caller's contract. The parent only gets the syscall's result back
            // (rcx and r11 are clobbered by `syscall`); the child starts on its own stack
            // (the kernel sets rsp to stack + stack_size, 16-byte aligned), calls `f(arg)` and
            // never comes back here: `f` execs or exits, and exit(2) follows should it return.
            unsafe {
                std::arch::asm!(
                    "syscall",
                    "test rax, rax",
                    "jnz 2f",
                    "xor ebp, ebp",
                    "mov rdi, r12",
                    "call r13",
                    "mov edi, eax",
                    "mov eax, 60",
                    "syscall",
                    "ud2",
                    "2:",
                    inlateout("rax") libc::SYS_clone3 => ret,
                    in("rdi") &raw mut args,
                    in("rsi") std::mem::size_of::<CloneArgs>(),
                    in("r12") arg,
                    in("r13") f,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            if ret > 0 {
                #[cfg(test)]
                MADE_INSIDE.fetch_add(1, Ordering::Relaxed);
                return libc::pid_t::try_from(ret).ok();
            }
            let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
            if matches!(errno, libc::ENOSYS | libc::E2BIG | libc::EINVAL) {
                SUPPORTED.store(false, Ordering::Relaxed);
                tracing::debug!(
                    errno,
                    "clone3 into a cgroup is unavailable; executors move themselves into their cgroup"
                );
            }
            None
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        None
    }
}

/// Write as much of `input` into the (empty) pipe `w` as it takes without blocking (a pipe
/// holds 64 KiB unless the system is short of pipe memory); `w` is left non-blocking.
fn prefill(w: &OwnedFd, input: &[u8]) -> std::io::Result<usize> {
    let fd = w.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory effects.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fed = 0;
    while fed < input.len() {
        let rest = &input[fed..];
        // SAFETY: writes at most `rest.len()` bytes from a live slice.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => break,
                _ => return Err(e),
            }
        }
        fed += n as usize;
    }
    Ok(fed)
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd` itself, or a close-on-exec copy numbered 3 or above when it is 0, 1 or 2 (zwarm's own
/// stdio was closed): the child's `dup2`s then never overwrite a source.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor >= 3 and has no memory effects.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Where `execvp` would find `program` with `PATH` = `path_var`: itself when it holds a `/`,
/// else the first executable file of that name in the path. Errno on failure.
pub(super) fn resolve(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, i32> {
    if program.as_bytes().contains(&b'/') {
        return executable(Path::new(program)).map(|()| PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(libc::ENOENT);
    }
    let path = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut err = libc::ENOENT;
    for dir in std::env::split_paths(path) {
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
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Err(libc::EACCES),
        Ok(_) => Ok(()),
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_execvp_would() {
        let path = std::env::var_os("PATH");
        assert!(resolve(OsStr::new("sh"), path.as_deref()).is_ok());
        assert_eq!(
            resolve(OsStr::new("/nonexistent/zwarm-no-such"), None),
            Err(libc::ENOENT)
        );
        assert_eq!(
            resolve(OsStr::new("zwarm-no-such-program"), path.as_deref()),
            Err(libc::ENOENT)
        );
        assert_eq!(resolve(OsStr::new("/"), None), Err(libc::EACCES));
    }

    fn start_cat(input: &[u8]) -> Started {
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        start(&Start {
            program: Path::new("cat"),
            args: &[],
            cwd: Path::new("/"),
            env: &env,
            stdin: Some(input),
            cgroup: None,
        })
        .unwrap_or_else(|f| panic!("cat did not start: {:?}", f.error))
    }

    /// Input that fits in the pipe is there, and ended, before the executor runs: no write end
    /// is left for anyone to finish. Larger input leaves the write end and says how much went in.
    #[test]
    fn input_that_fits_is_written_and_closed_before_the_start() {
        use std::io::Read;
        let small = start_cat(b"hello");
        assert!(small.stdin.is_none(), "the write end should be closed");
        assert_eq!(small.stdin_fed, 5);
        let mut out = Vec::new();
        std::fs::File::from(small.stdout)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello");
        let mut raw = 0;
        // SAFETY: our child, reaped once.
        unsafe { libc::waitpid(small.pid, &mut raw, 0) };

        let big = vec![b'x'; 1 << 20];
        let large = start_cat(&big);
        assert!(large.stdin.is_some(), "the rest is the caller's to write");
        assert!(
            large.stdin_fed > 0 && large.stdin_fed < big.len(),
            "{}",
            large.stdin_fed
        );
        // SAFETY: our child; killed and reaped.
        unsafe {
            libc::kill(large.pid, libc::SIGKILL);
            libc::waitpid(large.pid, &mut raw, 0);
        }
    }
}
