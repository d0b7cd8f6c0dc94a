//! Short helper commands (git, `codex --version`, …) run to their end from blocking code:
//! stdin closed, both pipes drained so the command never blocks on a full pipe, at most a
//! given number of bytes kept of each, and a deadline after which the command is killed with
//! its whole process group. Whatever it leaves in its group is killed after it exits.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a [`run_bounded`] command ended, and what it printed.
#[derive(Debug, Default)]
pub struct Bounded {
    /// `None`: killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Stdout went past the bytes kept.
    pub stdout_over: bool,
}

/// Run `cmd` (its stdio and process group are set here) to its end or to `timeout`, keeping at
/// most `max` bytes of each output. `Err` only when it could not be started.
pub fn run_bounded(cmd: &mut Command, timeout: Duration, max: usize) -> std::io::Result<Bounded> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut over = false;
            if let Some(mut p) = pipe {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match p.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) if kept.len() + n <= max => kept.extend_from_slice(&buf[..n]),
                        Ok(_) => over = true,
                    }
                }
            }
            (kept, over)
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let group = -(child.id() as i32);
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            _ => {
                // SAFETY: signalling the process group of the child we spawned.
                unsafe {
                    libc::kill(group, libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // Whatever the command left in its group goes with it (so the pipes close).
    // SAFETY: as above; the group is ours and may already be empty.
    unsafe {
        libc::kill(group, libc::SIGKILL);
    }
    let (stdout, stdout_over) = out.join().unwrap_or_default();
    let (stderr, _) = err.join().unwrap_or_default();
    Ok(Bounded {
        status,
        stdout,
        stderr,
        stdout_over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_is_kept_up_to_the_bound_and_a_slow_command_is_killed_with_its_group() {
        let b = run_bounded(
            &mut sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
            100,
        )
        .expect("run");
        assert_eq!(b.status.and_then(|s| s.code()), Some(3));
        assert_eq!(
            (b.stdout.as_slice(), b.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert!(!b.stdout_over);

        let b = run_bounded(
            &mut sh("head -c 5000 /dev/zero"),
            Duration::from_secs(10),
            1000,
        )
        .expect("run");
        assert!(
            b.stdout_over && b.stdout.len() <= 1000,
            "{}",
            b.stdout.len()
        );

        // A grandchild holding the pipes open does not hold up the caller past the deadline.
        let t = Instant::now();
        let b = run_bounded(
            &mut sh("sleep 30 & sleep 30"),
            Duration::from_millis(300),
            100,
        )
        .expect("run");
        assert!(b.status.is_none());
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

        assert!(
            run_bounded(
                &mut Command::new("/nonexistent/x"),
                Duration::from_secs(1),
                1
            )
            .is_err()
        );
    }
}
