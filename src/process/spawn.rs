//! Starting an executor (see [`super`] for the set-up, and [`super::launcher`] for how it is
//! started without forking the server when a reaper runs).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::launcher::{self, Status};
use super::{
    Containment, Mode, ProcessSpec, Spawnable, TURN_MARKER, cgroup, executors, forget_executor,
    lock,
};

/// How long the launcher may take to report (it only sets itself up: milliseconds).
const LAUNCH_WAIT: Duration = Duration::from_secs(30);

/// A request to the spawner thread.
pub(super) struct SpawnRequest {
    containment: Arc<Containment>,
    spec: ProcessSpec,
    stdin: bool,
    marker: String,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Spawned>>,
}

/// A process just started.
struct Spawned {
    child: Child,
    /// Started through the launcher: its status record comes first on stdout.
    launched: bool,
    /// The turn's cgroup, when it was put in one.
    cgroup: Option<PathBuf>,
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
                        let _rt = req.runtime.enter();
                        let r = req
                            .containment
                            .spawn_here(&req.spec, req.stdin, &req.marker);
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
    /// with input gets it on stdin: written by a background task, then closed; a child that
    /// exits without reading it is fine (EPIPE is ignored).
    pub async fn spawn<S: Spawnable + ?Sized>(
        self: &Arc<Self>,
        what: &S,
        marker: &str,
    ) -> std::io::Result<Child> {
        let input = what.stdin_bytes().map(<[u8]>::to_vec);
        // A second time only after a launcher could not move into the turn's cgroup: the
        // containment has then fallen back to process groups.
        for _ in 0..2 {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let req = SpawnRequest {
                containment: self.clone(),
                spec: what.process_spec().clone(),
                stdin: input.is_some(),
                marker: marker.to_string(),
                runtime: tokio::runtime::Handle::current(),
                reply,
            };
            if lock(self.spawner()).send(req).is_err() {
                return Err(std::io::Error::other("the spawner thread is not running"));
            }
            let spawned = rx
                .await
                .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))??;
            let Some(mut child) = self.confirm(spawned, marker).await? else {
                continue;
            };
            if let (Some(bytes), Some(pipe)) = (input, child.stdin.take()) {
                feed_stdin(pipe, bytes, marker.to_string());
            }
            return Ok(child);
        }
        Err(std::io::Error::other(
            "the executor could be started neither in its cgroup nor without one",
        ))
    }

    /// For a launched executor, wait for the launcher's report. `Ok(None)`: the move into the
    /// turn's cgroup failed, and the containment fell back to process groups (start again).
    async fn confirm(&self, s: Spawned, marker: &str) -> std::io::Result<Option<Child>> {
        let Spawned {
            mut child,
            launched,
            cgroup,
        } = s;
        if !launched {
            return Ok(Some(child));
        }
        // Dropped before the report (the turn was cancelled meanwhile): the launcher is killed
        // with its `Child`, and forgotten as an executor here.
        let mut unconfirmed = super::ExecutorGuard(child.id());
        let status = match child.stdout.as_mut() {
            Some(out) => tokio::time::timeout(LAUNCH_WAIT, launcher::read_status(out))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        if status == Some(Status::Started) {
            unconfirmed.0 = None;
            return Ok(Some(child));
        }
        // The launcher exited without starting the executor (or is stuck: killed now).
        let pid = child.id();
        let _ = child.start_kill();
        let _ = child.wait().await;
        forget_executor(pid);
        if let Some(dir) = &cgroup {
            cgroup::forget(&self.cgroups, marker);
            let _ = std::fs::remove_dir(dir);
        }
        if let Some(r) = self.reaper.get() {
            r.release(marker);
        }
        match status {
            Some(Status::Cgroup(errno)) => {
                self.fall_back_to_groups(format!(
                    "moving an executor into {} failed ({})",
                    cgroup
                        .as_deref()
                        .unwrap_or(Path::new("its cgroup"))
                        .display(),
                    std::io::Error::from_raw_os_error(errno)
                ));
                Ok(None)
            }
            Some(Status::Program(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
            Some(Status::ParentGone) => Err(std::io::Error::other(
                "zwarm exited while starting the executor",
            )),
            _ => Err(std::io::Error::other(
                "the executor's launcher ended without starting it",
            )),
        }
    }

    fn spawn_here(
        &self,
        spec: &ProcessSpec,
        stdin: bool,
        marker: &str,
    ) -> std::io::Result<Spawned> {
        let spawned = self.spawn_contained(spec, stdin, marker)?;
        if let Some(r) = self.reaper.get() {
            let pgid = spawned
                .child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(0);
            r.watch(marker, pgid, spawned.cgroup.as_deref());
        }
        Ok(spawned)
    }

    fn spawn_contained(
        &self,
        spec: &ProcessSpec,
        stdin: bool,
        marker: &str,
    ) -> std::io::Result<Spawned> {
        // The launcher while other executors run (a fork would stall their turns' threads,
        // see `launcher`); a fork when none does: then it stalls nobody, and saves the
        // launcher's own start (about 1–2 ms of a single turn's latency, measured).
        let launcher = self
            .reaper
            .get()
            .filter(|_| !executors().is_empty())
            .map(|r| r.launcher());
        match self.spawn_via(spec, stdin, marker, launcher) {
            // The launcher itself could not be started (or the executor's set-up failed, which
            // the fork then reports the same way): fork.
            Err(e) if launcher.is_some() => {
                tracing::debug!(error = %e, "starting through the launcher failed; forking");
                self.spawn_via(spec, stdin, marker, None)
            }
            r => r,
        }
    }

    fn spawn_via(
        &self,
        spec: &ProcessSpec,
        stdin: bool,
        marker: &str,
        launcher: Option<(&Path, &[String])>,
    ) -> std::io::Result<Spawned> {
        let launched = launcher.is_some();
        if let Mode::Cgroup { parent } = self.current_mode() {
            match cgroup::prepare(&parent, marker) {
                Ok((dir, procs)) => {
                    // Known to the reaper before the executor exists: if zwarm dies from here
                    // on, the cgroup is killed.
                    if let Some(r) = self.reaper.get() {
                        r.watch(marker, 0, Some(&dir));
                    }
                    let into = Place::Cgroup(&dir, &procs);
                    match spawn_command(spec, stdin, marker, into, launcher) {
                        Ok(child) => {
                            cgroup::register(&self.cgroups, marker, dir.clone());
                            return Ok(Spawned {
                                child,
                                launched,
                                cgroup: Some(dir),
                            });
                        }
                        Err(e) => {
                            let _ = std::fs::remove_dir(&dir);
                            // Not necessarily the cgroup's fault (a missing binary fails too):
                            // only a start that works without the cgroup proves it.
                            let plain = spawn_command(spec, stdin, marker, Place::Group, launcher)?;
                            self.fall_back_to_groups(format!(
                                "moving an executor into {} failed ({e})",
                                dir.display()
                            ));
                            return Ok(Spawned {
                                child: plain,
                                launched,
                                cgroup: None,
                            });
                        }
                    }
                }
                Err(reason) => self.fall_back_to_groups(reason),
            }
        }
        let child = spawn_command(spec, stdin, marker, Place::Group, launcher)?;
        Ok(Spawned {
            child,
            launched,
            cgroup: None,
        })
    }
}

/// Write the input to the executor's stdin, then close it.
fn feed_stdin(mut pipe: tokio::process::ChildStdin, bytes: Vec<u8>, marker: String) {
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

/// Where a new executor goes: into a turn cgroup (its directory, and its `cgroup.procs`
/// opened for writing), or only into a process group of its own.
#[derive(Clone, Copy)]
enum Place<'a> {
    Cgroup(&'a Path, &'a std::fs::File),
    Group,
}

/// Start the executor: through the launcher (program and arguments of the helper binary)
/// when given, else forked with a `pre_exec` closure doing the launcher's part.
fn spawn_command(
    spec: &ProcessSpec,
    stdin: bool,
    marker: &str,
    into: Place<'_>,
    launcher: Option<(&Path, &[String])>,
) -> std::io::Result<Child> {
    let mut cmd = match launcher {
        Some((program, args)) => {
            let procs = match into {
                Place::Cgroup(dir, _) => Some(dir.join("cgroup.procs")),
                Place::Group => None,
            };
            let mut cmd = Command::new(program);
            cmd.args(args)
                .args(launcher::args(procs.as_deref(), &spec.program, &spec.args));
            cmd
        }
        None => {
            let mut cmd = Command::new(&spec.program);
            cmd.args(&spec.args);
            let procs = match into {
                Place::Cgroup(_, f) => Some(f),
                Place::Group => None,
            };
            set_up_in_child(&mut cmd, procs);
            cmd
        }
    };
    cmd.current_dir(&spec.cwd)
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
    // Registered under the lock the reaper holds while it scans, so a fast-exiting executor
    // is never mistaken for an orphan.
    let mut reg = executors();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        reg.push(pid);
    }
    Ok(child)
}

/// Without a launcher: the parent-death signal and the move into the turn's cgroup in a
/// `pre_exec` closure (which makes std fork the server rather than `posix_spawn`).
fn set_up_in_child(cmd: &mut Command, cgroup_procs: Option<&std::fs::File>) {
    // If zwarm dies (even by SIGKILL), the executor gets SIGTERM instead of running on
    // unsupervised; whatever it leaves is killed by cgroup or marker on the next start.
    die_with_parent(
        cmd,
        libc::SIGTERM,
        cgroup_procs,
        "zwarm exited while starting the executor",
    );
}

/// Set, between fork and exec, the parent-death signal `signal` (checking that this process is
/// still the parent: it may have died before the prctl, and then the signal never comes) and,
/// with `cgroup_procs`, move the child into that cgroup before it execs, so everything it
/// starts is born inside. `gone` is the error when this process is no longer the parent.
pub(crate) fn die_with_parent(
    cmd: &mut Command,
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
