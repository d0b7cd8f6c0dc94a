//! A started executor, as the server holds it: its pid, a pidfd to await its exit on, and the
//! parent's ends of its pipes.
//!
//! Executors are not started by `tokio::process` (see [`super::vfork`] for why and how), so
//! this is the small part of `tokio::process::Child` the runner uses: [`ExecChild::wait`]
//! (the pidfd becomes readable when the process exits, then `waitpid` takes its status),
//! [`ExecChild::try_wait`], [`ExecChild::start_kill`], and kill-on-drop. Only this process
//! waits for the pid: it stays in the executor registry (which the orphan reaper skips) until
//! it is reaped here.

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// A started executor (see the module docs). Dropped before it was reaped, it is killed
/// (SIGKILL) and reaped in the background.
#[derive(Debug)]
pub struct ExecChild {
    pid: i32,
    /// Readable once the process has exited; `None` where pidfds are unavailable (then
    /// [`ExecChild::wait`] polls).
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// The write end of the executor's stdin, when it was given input.
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// Everything a finished executor wrote (for tests and one-shot helpers).
#[derive(Debug)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecChild {
    /// Take over a process [`super::vfork::start`] started (its pipes become tokio pipes: call
    /// within a runtime). Should that fail, the process is killed and reaped.
    pub(super) fn adopt(s: super::vfork::Started) -> std::io::Result<ExecChild> {
        let mut child = ExecChild {
            pid: s.pid,
            pidfd: None,
            status: None,
            stdin: None,
            stdout: None,
            stderr: None,
        };
        // From here on, dropping `child` kills and reaps the process.
        child.pidfd = s.pidfd.and_then(|fd| {
            // SAFETY: the OwnedFd is moved in: it stays open, and the same descriptor, for as
            // long as the AsyncFd lives.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
        });
        child.stdout = Some(pipe::Receiver::from_owned_fd(s.stdout)?);
        child.stderr = Some(pipe::Receiver::from_owned_fd(s.stderr)?);
        if let Some(fd) = s.stdin {
            child.stdin = Some(pipe::Sender::from_owned_fd(fd)?);
        }
        Ok(child)
    }

    /// The pid, until the process has been reaped (as `tokio::process::Child::id`).
    pub fn id(&self) -> Option<u32> {
        if self.status.is_some() {
            return None;
        }
        u32::try_from(self.pid).ok()
    }

    /// Its exit status, without blocking: `None` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut raw = 0;
        // SAFETY: waitpid on our own child with WNOHANG only writes the status integer.
        let r = unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r == self.pid => {
                let s = ExitStatus::from_raw(raw);
                self.status = Some(s);
                super::forget_executor(u32::try_from(self.pid).ok());
                Ok(Some(s))
            }
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Wait until it exits, and reap it.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            match &self.pidfd {
                // Cleared every time: the loop checks for the exit before waiting again, and
                // an exit after this clear is a new readiness event.
                Some(fd) => fd.readable().await?.clear_ready(),
                None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    /// Send SIGKILL (nothing once it has been reaped).
    pub fn start_kill(&mut self) -> std::io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill only sends a signal; the pid is our unreaped child, so it is not reused.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read its stdout and stderr to the end (concurrently) and wait for it.
    pub async fn wait_with_output(mut self) -> std::io::Result<ExecOutput> {
        use tokio::io::AsyncReadExt;
        drop(self.stdin.take());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (o, e) = (self.stdout.take(), self.stderr.take());
        let read_out = async {
            if let Some(mut o) = o {
                o.read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let read_err = async {
            if let Some(mut e) = e {
                e.read_to_end(&mut err).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (a, b) = tokio::join!(read_out, read_err);
        a?;
        b?;
        let status = self.wait().await?;
        Ok(ExecOutput {
            status,
            stdout: out,
            stderr: err,
        })
    }
}

impl Drop for ExecChild {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = self.start_kill();
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        // Dying: reaped as soon as it is gone, without blocking the dropping thread.
        let pid = self.pid;
        let pidfd = self.pidfd.take();
        let reap = move || {
            let mut raw = 0;
            // SAFETY: a blocking waitpid on our own child only writes the status integer.
            unsafe { libc::waitpid(pid, &mut raw, 0) };
            super::forget_executor(u32::try_from(pid).ok());
        };
        match (tokio::runtime::Handle::try_current(), pidfd) {
            (Ok(h), Some(fd)) => {
                h.spawn(async move {
                    let _ = fd.readable().await;
                    reap();
                });
            }
            _ => {
                let _ = std::thread::Builder::new()
                    .name("zwarm-reap".into())
                    .spawn(reap);
            }
        }
    }
}
