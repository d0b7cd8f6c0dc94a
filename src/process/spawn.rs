//! Starting an executor: on the spawner thread, with [`super::vfork`] (the server is not
//! forked), into the turn's cgroup when there is one.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::unix::pipe;

use super::child::ExecChild;
use super::vfork::{self, Failed, Step};
use super::{
    Containment, Mode, ProcessSpec, Spawnable, TURN_MARKER, cgroup, lock, start_registered,
};

/// A request to the spawner thread.
pub(super) struct SpawnRequest {
    containment: Arc<Containment>,
    spec: ProcessSpec,
    /// Input for its stdin; what does not fit in the pipe comes back with the child.
    input: Option<Vec<u8>>,
    marker: String,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<(ExecChild, Option<Vec<u8>>)>>,
}

impl Containment {
    /// The thread every executor is started from. `PR_SET_PDEATHSIG` fires when the *thread*
    /// that started a child exits, and tokio retires worker threads (e.g. after
    /// `block_in_place`); a dedicated thread that lives as long as zwarm makes the signal mean
    /// "zwarm died".
    fn spawner(&self) -> &std::sync::Mutex<std::sync::mpsc::Sender<SpawnRequest>> {
        self.spawner.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
            let started = std::thread::Builder::new()
                .name("zwarm-spawner".into())
                .spawn(move || {
                    while let Ok(req) = rx.recv() {
                        // The pipes and the pidfd register with this runtime's reactor.
                        let _rt = req.runtime.enter();
                        let r = req
                            .containment
                            .spawn_here(&req.spec, req.input, &req.marker);
                        let _ = req.reply.send(r);
                    }
                });
            if let Err(e) = started {
                tracing::error!(error = %e, "cannot start the spawner thread");
            }
            std::sync::Mutex::new(tx)
        })
    }

    /// Start an executor process (see the module docs for how it is set up). A [`super::Launch`]
    /// with input gets it on stdin: put in the pipe before the start, then the pipe closed;
    /// input larger than the pipe holds is finished by a background task. A child that exits
    /// without reading it is fine (EPIPE is ignored).
    pub async fn spawn<S: Spawnable + ?Sized>(
        self: &Arc<Self>,
        what: &S,
        marker: &str,
    ) -> std::io::Result<ExecChild> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let req = SpawnRequest {
            containment: self.clone(),
            spec: what.process_spec().clone(),
            input: what.stdin_bytes().map(<[u8]>::to_vec),
            marker: marker.to_string(),
            runtime: tokio::runtime::Handle::current(),
            reply,
        };
        if lock(self.spawner()).send(req).is_err() {
            return Err(std::io::Error::other("the spawner thread is not running"));
        }
        let (mut child, rest) = rx
            .await
            .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))??;
        if let (Some(bytes), Some(pipe)) = (rest, child.stdin.take()) {
            feed_stdin(pipe, bytes, marker.to_string());
        }
        Ok(child)
    }

    /// The child, and the part of `input` still to be written to its stdin (`None` when all
    /// of it is in the pipe, which is then closed).
    fn spawn_here(
        &self,
        spec: &ProcessSpec,
        input: Option<Vec<u8>>,
        marker: &str,
    ) -> std::io::Result<(ExecChild, Option<Vec<u8>>)> {
        let ((child, fed), cgroup) = self.spawn_contained(spec, input.as_deref(), marker)?;
        if let Some(r) = self.reaper.get() {
            let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
            r.watch(marker, pgid, cgroup.as_deref());
        }
        let rest = input
            .filter(|i| fed < i.len())
            .map(|mut i| i.split_off(fed));
        Ok((child, rest))
    }

    /// Start it in the turn's cgroup when turns get one (falling back to process groups for
    /// good when the move into the cgroup fails), else in its process group only.
    fn spawn_contained(
        &self,
        spec: &ProcessSpec,
        stdin: Option<&[u8]>,
        marker: &str,
    ) -> std::io::Result<((ExecChild, usize), Option<PathBuf>)> {
        if let Mode::Cgroup { parent } = self.current_mode() {
            match cgroup::prepare(&parent, marker) {
                Ok((dir, entry)) => {
                    // Known to the reaper before the executor exists: if zwarm dies from here
                    // on, the cgroup is killed.
                    if let Some(r) = self.reaper.get() {
                        r.watch(marker, 0, Some(&dir));
                    }
                    match start_executor(spec, stdin, marker, Some(&entry)) {
                        Ok(child) => {
                            cgroup::register(&self.cgroups, marker, dir.clone());
                            return Ok((child, Some(dir)));
                        }
                        Err(f) => {
                            let _ = std::fs::remove_dir(&dir);
                            if f.step != Step::Cgroup {
                                if let Some(r) = self.reaper.get() {
                                    r.release(marker);
                                }
                                return Err(f.error);
                            }
                            self.fall_back_to_groups(format!(
                                "moving an executor into {} failed ({})",
                                dir.display(),
                                f.error
                            ));
                        }
                    }
                }
                Err(reason) => self.fall_back_to_groups(reason),
            }
        }
        let child = start_executor(spec, stdin, marker, None).map_err(|f| f.error)?;
        Ok((child, None))
    }
}

/// Write the input to the executor's stdin, then close it.
fn feed_stdin(mut pipe: pipe::Sender, bytes: Vec<u8>, marker: String) {
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

/// The executor's environment: zwarm's own, less `env_remove`, plus `env_set` and the marker.
fn environment(spec: &ProcessSpec, marker: &str) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !spec.env_remove.iter().any(|r| OsStr::new(r) == k))
        .collect();
    let sets = spec
        .env_set
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(std::iter::once((TURN_MARKER, marker)));
    for (k, v) in sets {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.into(),
            None => env.push((k.into(), v.into())),
        }
    }
    env
}

/// Start the executor (see [`vfork`]), registered for the orphan reaper; with how many bytes
/// of its input are already in its stdin pipe.
fn start_executor(
    spec: &ProcessSpec,
    stdin: Option<&[u8]>,
    marker: &str,
    cgroup: Option<&cgroup::Entry>,
) -> Result<(ExecChild, usize), Failed> {
    let env = environment(spec, marker);
    let what = vfork::Start {
        program: &spec.program,
        args: &spec.args,
        cwd: &spec.cwd,
        env: &env,
        stdin,
        cgroup,
    };
    let started = start_registered(|| vfork::start(&what), |s| u32::try_from(s.pid).ok())?;
    let fed = started.stdin_fed;
    ExecChild::adopt(started)
        .map(|c| (c, fed))
        .map_err(|error| Failed {
            step: Step::Prepare,
            error,
        })
}

/// Set, between fork and exec (for the ACP agents, started by `tokio::process`), the parent-death signal `signal` (checking that this process is
/// still the parent: it may have died before the prctl, and then the signal never comes) and,
/// with `cgroup_procs`, move the child into that cgroup before it execs, so everything it
/// starts is born inside. `gone` is the error when this process is no longer the parent.
pub(crate) fn die_with_parent(
    cmd: &mut tokio::process::Command,
    signal: libc::c_int,
    cgroup_procs: Option<&std::fs::File>,
    gone: &'static str,
) {
    let procs_fd = cgroup_procs.map(|f| f.as_raw_fd());
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and only calls prctl, getppid and write,
    // which are async-signal-safe.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0);
            if libc::getppid() != parent {
                return Err(std::io::Error::other(gone));
            }
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ContainmentPreference, Launch};
    use super::*;

    /// Input reaches the executor whole and then ends: small enough for the pipe (written
    /// before the start, the pipe closed), exactly the pipe's size, and larger (the rest
    /// written by the background task).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn input_reaches_stdin_whole_then_ends_at_any_size() {
        let dir = tempfile::tempdir().unwrap();
        let c = Containment::new(ContainmentPreference::ProcessGroup);
        for size in [1usize, 5_000, 64 * 1024, (1 << 20) + 17] {
            let input: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let launch = Launch {
                spec: ProcessSpec {
                    program: "cat".into(),
                    cwd: dir.path().to_path_buf(),
                    ..Default::default()
                },
                stdin: Some(input.clone()),
            };
            let child = c.spawn(&launch, &format!("stdin-{size}")).await.unwrap();
            let out =
                tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
                    .await
                    .expect("cat ends once its input has")
                    .unwrap();
            assert!(out.status.success(), "{size}: {:?}", out.status);
            assert_eq!(out.stdout.len(), size);
            assert!(out.stdout == input, "{size}: the bytes differ");
        }
    }

    /// In cgroup mode the executor is in its turn's cgroup from its first instruction; on
    /// x86_64 it is made there (`clone3(CLONE_INTO_CGROUP)`), not moved in. Fails (never
    /// skips) where turns cannot get cgroups, as the containment tests do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_executor_starts_inside_its_turn_cgroup() {
        let c = Containment::new(ContainmentPreference::Auto);
        let Mode::Cgroup { parent } = c.current_mode() else {
            panic!(
                "this test needs cgroup v2 containment ({}); run it as root or in a delegated, writable cgroup v2 subtree",
                c.detail()
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("spawn-test-{}", std::process::id());
        let launch = Launch {
            spec: ProcessSpec {
                program: "cat".into(),
                args: vec!["/proc/self/cgroup".into()],
                cwd: dir.path().to_path_buf(),
                ..Default::default()
            },
            stdin: None,
        };
        let made_before = super::super::vfork::into_cgroup::made_inside();
        let child = c.spawn(&launch, &marker).await.unwrap();
        let made_after = super::super::vfork::into_cgroup::made_inside();
        let out = child.wait_with_output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line");
        let turn = parent.join(cgroup::turn_dir_name(&marker));
        assert!(
            turn.ends_with(line.trim_start_matches('/')),
            "{line} is not the turn's cgroup {}",
            turn.display()
        );
        c.kill_marked(&marker, None);
        // Other tests may start children meanwhile: this start made one at least.
        #[cfg(target_arch = "x86_64")]
        assert!(
            made_after > made_before,
            "the executor moved itself in: this kernel refused clone3(CLONE_INTO_CGROUP)"
        );
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (made_before, made_after);
    }
}
