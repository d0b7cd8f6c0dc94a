//! The container runner: each turn runs in its own Docker container (Docker Engine API, via
//! `bollard`; Podman's compatible API serves it too).
//!
//! What the container sees:
//! - the turn's working dir (the session's worktree), bind-mounted at the same path, read-write
//!   (read-only for `codex.sandbox = "read-only"`: the container enforces what the executor's
//!   own sandbox would, [`crate::executor::portable`]), its git metadata read-only
//!   ([`sandbox`]);
//! - a per-session state dir of zwarm's (`<state>/<session>/`), mounted at the same path: the
//!   executor's `HOME` and its config dir (each executor's [`crate::executor::StateDir`]:
//!   codex's `CODEX_HOME`, claude's `CLAUDE_CONFIG_DIR`) live there, so a resumed turn
//!   finds its thread; the files the executor writes for zwarm to read back (codex's `-o`)
//!   are redirected there;
//! - the environment variables the executor sets, the names listed in `[runner.container] env`
//!   with zwarm's values, and nothing else of zwarm's environment;
//! - nothing else of the host's filesystem; no capabilities, `no-new-privileges`.
//!
//! Every container carries labels: `zwarm.label` (`<session>.<turn>`), `zwarm.session` and
//! `zwarm.server` (node, pid and start time of the zwarm that started it), so a restarted zwarm
//! removes what a turn or a dead server left ([`ContainerRunner::remove_turn`],
//! [`ContainerRunner::clean_dead_servers`]).

mod acp;
pub mod config;
pub mod doctor;
pub mod image;
mod runner;
pub mod sandbox;
mod state;
mod turn;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use tokio::io::AsyncRead;

pub use config::{ContainerConfig, Network};
pub use runner::{ContainerRuns, from_config};
pub use turn::{ContainerFinished, ContainerTurn};

/// An output stream of a container turn (stdout or stderr, demultiplexed).
pub type Output = Pin<Box<dyn AsyncRead + Send>>;

pub const LABEL: &str = "zwarm.label";
pub const LABEL_SESSION: &str = "zwarm.session";
pub const LABEL_SERVER: &str = "zwarm.server";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "cannot reach the Docker daemon{endpoint}: {source}. Start Docker (or Podman's API service), or point DOCKER_HOST / runner.container.host at it"
    )]
    Daemon {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "the image `{0}` is not on the Docker daemon: build it (docs/containers.md, \"Images\") or set runner.container.image"
    )]
    NoImage(String),
    #[error("{0}")]
    Config(#[from] config::LimitError),
    #[error("the turn label `{0}` cannot name a container (letters, digits, `.`, `_`, `-` only)")]
    Label(String),
    #[error("preparing the session's container state: {0}")]
    State(#[from] std::io::Error),
    #[error("Docker refused the turn's container: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// One executor run, as the container runner needs it (the fields of the runner seam's
/// launch).
#[derive(Clone, Default)]
pub struct TurnSpec {
    /// The CLI on the host; the container runs the program of the same name on the image's
    /// PATH (`codex`, `claude`; a `.exe` or `.js` suffix is dropped).
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env_set: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub read_back: Vec<PathBuf>,
    /// `<session>.<turn>`.
    pub label: String,
}

impl std::fmt::Debug for TurnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSpec")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .field("cwd", &self.cwd)
            .field("label", &self.label)
            .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .finish()
    }
}

/// Runs turns in containers on one Docker daemon.
#[derive(Debug, Clone)]
pub struct ContainerRunner {
    docker: Docker,
    cfg: ContainerConfig,
    limits: config::Limits,
    state_root: PathBuf,
    server: String,
}

impl ContainerRunner {
    /// Connect to the daemon (`cfg.host`, else `DOCKER_HOST`, else the local socket), agree on
    /// an API version and check that the image is there. `state_root` holds the per-session
    /// state dirs.
    pub async fn connect(
        cfg: ContainerConfig,
        state_root: PathBuf,
    ) -> Result<ContainerRunner, ContainerError> {
        let limits = cfg.limits()?;
        let docker = connect_daemon(cfg.host.as_deref()).await?;
        match docker.inspect_image(&cfg.image).await {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(ContainerError::NoImage(cfg.image.clone())),
            Err(e) => return Err(daemon_error(cfg.host.as_deref(), e)),
        }
        Ok(ContainerRunner {
            docker,
            cfg,
            limits,
            state_root,
            server: server_id(),
        })
    }

    /// This zwarm's `zwarm.server` label value.
    pub fn server_id(&self) -> &str {
        &self.server
    }

    pub fn config(&self) -> &ContainerConfig {
        &self.cfg
    }

    /// Start one turn: create its container (attached before it starts, so no output is
    /// lost), start it and feed it its stdin.
    pub async fn start_turn(&self, mut spec: TurnSpec) -> Result<ContainerTurn, ContainerError> {
        let session = session_of(&spec.label);
        if !valid_name(&spec.label) || !valid_name(session) {
            return Err(ContainerError::Label(spec.label.clone()));
        }
        let dirs = state::SessionDirs::new(&self.state_root, session);
        let env_set = spec.env_set.clone();
        let dirs2 = dirs.clone();
        tokio::task::spawn_blocking(move || dirs2.prepare(&env_set))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;

        // Files to read back are written into the session's dir instead (the container sees
        // it); zwarm reads them there and hands them back under the names it asked for.
        let mut args = spec.args.clone();
        let mut read_back = Vec::new();
        for (i, want) in spec.read_back.iter().enumerate() {
            let name = want
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            let inside = dirs.out.join(format!("{}-{i}-{name}", spec.label));
            for a in args.iter_mut().filter(|a| Path::new(a.as_os_str()) == want) {
                *a = inside.clone().into_os_string();
            }
            read_back.push((want.clone(), inside));
        }

        let program = program_in_image(&spec.program);
        // The ACP bridge: its agent is the image's, its turn dir (approvals, transcript) is
        // mounted read-write.
        let mut stdin = spec.stdin.take();
        let mut extra_binds = Vec::new();
        if let Some(b) = acp::bridge_turn(&program, stdin.as_deref()) {
            for d in &b.dirs {
                std::fs::create_dir_all(d)?;
                extra_binds.push(format!("{0}:{0}:rw", d.display()));
            }
            stdin = Some(b.stdin);
        }
        let mut args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // The container is the sandbox: the executor's own is switched off inside, and what it
        // was asked to enforce is enforced by the mount.
        let read_only = crate::executor::portable::container_args(&program, &mut args);
        let mut cmd = vec![program];
        cmd.extend(args);
        let cwd = spec.cwd.to_string_lossy().into_owned();
        let work_mode = if read_only { "ro" } else { "rw" };
        let labels = HashMap::from([
            (LABEL.to_string(), spec.label.clone()),
            (LABEL_SESSION.to_string(), session.to_string()),
            (LABEL_SERVER.to_string(), self.server.clone()),
        ]);
        let has_stdin = stdin.is_some();
        let body = ContainerCreateBody {
            image: Some(self.cfg.image.clone()),
            cmd: Some(cmd),
            working_dir: Some(cwd.clone()),
            env: Some(self.env(&spec, &dirs)),
            user: Some(self.cfg.user.clone().unwrap_or_else(own_user)),
            labels: Some(labels),
            attach_stdin: Some(has_stdin),
            open_stdin: Some(has_stdin),
            stdin_once: Some(has_stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(HostConfig {
                binds: Some(
                    [
                        format!("{cwd}:{cwd}:{work_mode}"),
                        format!("{0}:{0}:rw", dirs.root.display()),
                    ]
                    .into_iter()
                    .chain(sandbox::git_binds(&spec.cwd))
                    .chain(extra_binds)
                    .collect(),
                ),
                network_mode: Some(self.cfg.network.mode().into()),
                memory: self.limits.memory_bytes,
                // No swap beyond the memory limit: a hog is stopped, not slowed down.
                memory_swap: self.limits.memory_bytes,
                nano_cpus: self.limits.nano_cpus,
                pids_limit: self.limits.pids,
                security_opt: Some(vec!["no-new-privileges".into()]),
                // No capabilities: root in the container (zwarm's own uid when zwarm runs as
                // root) cannot override file permissions, make devices, use raw sockets, ...
                cap_drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!(
            "zwarm-{}-{}",
            spec.label.replace('.', "-"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await?;
        let id = created.id;
        // From here on the container exists: any failure removes it.
        let attached = self
            .docker
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdin: has_stdin,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await;
        let attached = match attached {
            Ok(a) => a,
            Err(e) => {
                remove_container(&self.docker, &id).await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            remove_container(&self.docker, &id).await;
            return Err(e.into());
        }
        Ok(ContainerTurn::new(
            self.docker.clone(),
            id,
            attached,
            stdin,
            read_back,
            self.cfg.memory.clone(),
        ))
    }

    /// The container's environment: what the executor sets, the allow-listed names with
    /// zwarm's values, and the state dirs; nothing else.
    fn env(&self, spec: &TurnSpec, dirs: &state::SessionDirs) -> Vec<String> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v));
        };
        for name in &self.cfg.env {
            if spec.env_remove.iter().any(|r| r == name) {
                continue;
            }
            if let Ok(v) = std::env::var(name) {
                set(name, v);
            }
        }
        for (k, v) in &spec.env_set {
            set(k, v.clone());
        }
        set("HOME", dirs.home.display().to_string());
        for (d, path) in &dirs.executors {
            set(d.env, path.display().to_string());
        }
        // The container is the sandbox: claude accepts its bypass mode as root only with this.
        set("IS_SANDBOX", "1".into());
        // The turn's mark, as the local runner sets it: the turn's processes are found by it in
        // the host's /proc too.
        set(crate::process::TURN_MARKER, spec.label.clone());
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Remove a session's container state (the executor's home, config and threads): for
    /// when the session has ended for good. Its containers are removed first.
    pub async fn forget_session(&self, session: &str) -> Result<(), ContainerError> {
        if !valid_name(session) {
            return Err(ContainerError::Label(session.to_string()));
        }
        for id in self.containers(LABEL_SESSION, session).await {
            remove_container(&self.docker, &id).await;
        }
        let dir = self.state_root.join(session);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }

    /// IDs of the containers carrying `label=value` (running or not).
    pub async fn containers(&self, label: &str, value: &str) -> Vec<String> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{label}={value}")])]);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }

    /// Remove whatever a turn labelled `label` left (its server died, or its supervisor
    /// failed). Returns how many containers went.
    pub async fn remove_turn(&self, label: &str) -> usize {
        let ids = self.containers(LABEL, label).await;
        for id in &ids {
            remove_container(&self.docker, id).await;
        }
        ids.len()
    }

    /// Remove every zwarm container whose server, on this node, is no longer running.
    pub async fn clean_dead_servers(&self) -> usize {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_SERVER.to_string()])]);
        let all = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        let mut n = 0;
        for c in all {
            let server = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVER))
                .cloned()
                .unwrap_or_default();
            if let (Some(id), false) = (c.id, server_alive(&server)) {
                remove_container(&self.docker, &id).await;
                n += 1;
            }
        }
        n
    }
}

/// The daemon's endpoint: `host`, else `DOCKER_HOST`, else the local socket (`None`).
fn endpoint(host: Option<&str>) -> Option<String> {
    host.map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .filter(|h| !h.is_empty())
}

fn daemon_error(host: Option<&str>, source: bollard::errors::Error) -> ContainerError {
    ContainerError::Daemon {
        endpoint: endpoint(host)
            .map(|e| format!(" at {e}"))
            .unwrap_or_default(),
        source,
    }
}

/// Connect to the daemon at `host` (else `DOCKER_HOST`, else the local socket) and agree on
/// an API version.
pub async fn connect_daemon(host: Option<&str>) -> Result<Docker, ContainerError> {
    let docker = match endpoint(host).as_deref() {
        Some(h) if h.starts_with("unix://") => {
            Docker::connect_with_unix(h, 120, bollard::API_DEFAULT_VERSION)
        }
        Some(h) if h.starts_with("tcp://") || h.starts_with("http://") => {
            Docker::connect_with_http(h, 120, bollard::API_DEFAULT_VERSION)
        }
        _ => Docker::connect_with_local_defaults(),
    }
    .map_err(|e| daemon_error(host, e))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| daemon_error(host, e))
}

/// Stop (SIGKILL) and remove a container with its anonymous volumes; errors are logged.
pub async fn remove_container(docker: &Docker, id: &str) {
    let r = docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    match r {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => tracing::warn!(container = %id, "removing a turn's container failed: {e}"),
    }
}

/// The session part of a turn label `<session>.<turn>`.
pub fn session_of(label: &str) -> &str {
    label.rsplit_once('.').map(|(s, _)| s).unwrap_or(label)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The program the container runs for a host CLI path: its file name, without a `.exe` or
/// `.js` suffix (npm's `claude.exe`, codex's `codex.js` wrapper).
pub fn program_in_image(program: &Path) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string_lossy().into_owned());
    for suffix in [".exe", ".js"] {
        if let Some(n) = name.strip_suffix(suffix) {
            return n.to_string();
        }
    }
    name
}

fn own_user() -> String {
    // SAFETY: geteuid/getegid have no preconditions.
    let (u, g) = unsafe { (libc::geteuid(), libc::getegid()) };
    format!("{u}:{g}")
}

/// `<node>/<pid>/<start time in ticks>` of this process: unique across restarts and pid reuse.
fn server_id() -> String {
    let pid = std::process::id();
    format!("{}/{pid}/{}", node_name(), start_ticks(pid).unwrap_or(0))
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the `(comm)` field, which may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the zwarm named by a `zwarm.server` label still runs. Servers on other nodes are
/// taken as alive: this node cannot tell.
pub fn server_alive(server: &str) -> bool {
    let mut parts = server.split('/');
    let (Some(node), Some(pid), Some(ticks)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    if node != node_name() {
        return true;
    }
    match (pid.parse::<u32>(), ticks.parse::<u64>()) {
        (Ok(pid), Ok(ticks)) => start_ticks(pid) == Some(ticks),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_map_to_the_image() {
        assert_eq!(
            program_in_image(Path::new("/x/node_modules/.bin/codex")),
            "codex"
        );
        assert_eq!(program_in_image(Path::new("/x/bin/claude.exe")), "claude");
        assert_eq!(program_in_image(Path::new("codex.js")), "codex");
    }

    #[test]
    fn labels() {
        assert_eq!(session_of("abc-1.3"), "abc-1");
        assert_eq!(session_of("abc"), "abc");
        assert!(valid_name("0f3c.12"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn this_server_is_alive_and_a_gone_one_is_not() {
        assert!(server_alive(&server_id()));
        let me = server_id();
        let stale = format!("{}/{}/1", node_name(), std::process::id());
        assert_ne!(me, stale);
        assert!(!server_alive(&stale));
        assert!(server_alive("other-node/1/1"));
    }
}
