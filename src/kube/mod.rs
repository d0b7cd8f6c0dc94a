//! The Kubernetes runner: each turn runs as a Job on a cluster (`[runner] kind =
//! "kubernetes"`, `[runner.kubernetes]`).
//!
//! - **Code in and out through git.** Before a turn, the session's worktree branch
//!   (`zwarm/<id8>`) is pushed to `runner.kubernetes.git_remote`; the pod checks it out, runs the
//!   executor, commits the turn and pushes the branch back; zwarm fetches it and checks its tree
//!   out into the worktree, where the engine commits it as after a local turn ([`sync`]). So
//!   `diff`, the diff resource and `integrate` work as for any worktree session.
//! - **Executor state** (codex's `CODEX_HOME` with its threads, claude's config dir, a home)
//!   travels on a separate ref of the same remote, `refs/zwarm/state/<session>`, which each pod
//!   checks out before and pushes after its turn: `converse` resumes on any node, with no
//!   volume to provision. The executor's config file (codex's `config.toml`, claude's
//!   `settings.json`, never a login file) goes into the Job as an environment variable; API keys
//!   come from the Secret named in config (`envFrom`), never through zwarm.
//! - **Output and control.** The executor's JSONL is its pod's log, followed and handed to the
//!   engine as stdout; one shared watch on this zwarm's pods drives every turn ([`pods`]), so a
//!   turn costs two API requests (create and delete its Job) besides its log stream. Stopping
//!   a turn deletes its Job with foreground propagation; an unschedulable pod, an image that
//!   cannot be pulled, an OOM kill and a lost Job end the turn with that reason
//!   ([`crate::runner::Finished::cause`]).
//!
//! The client is a small typed one over hyper ([`api`]), not `kube` + `k8s-openapi`: see
//! docs/kubernetes.md for the measured build cost and for what it does not do yet (TLS and
//! exec-plugin auth: reach the API server through `kubectl proxy`).

pub mod api;
pub mod manifest;
pub mod pods;
mod sync;
mod turn;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tokio::io::AsyncRead;

use crate::runner::config::KubeConfig;
use crate::runner::{Launch, Runner, RunnerError, RunningTurn};
use api::{Api, Endpoint};
use manifest::{JobSpec, LABEL, LABEL_SERVER};

/// An output stream of a turn.
pub type Output = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the kubeconfig {path} cannot be read: {source}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kubeconfig cannot be used: {0}")]
    Kubeconfig(String),
    #[error(
        "runner.kubernetes.git_remote is not set: turns on a cluster bring their code in and out through a git remote the cluster can reach (docs/kubernetes.md)"
    )]
    NoRemote,
    #[error("talking to the Kubernetes API server: {0}")]
    Http(String),
    #[error("the Kubernetes API server answered {code}: {message}")]
    Status { code: u16, message: String },
}

/// What every turn of one runner shares.
pub(crate) struct Shared {
    api: Api,
    cfg: KubeConfig,
    pods: Arc<pods::Pods>,
    server: String,
}

impl Shared {
    /// Delete a Job (and, with `Foreground`, its pods first); a Job already gone is fine.
    async fn delete_job(&self, name: &str, propagation: &str, grace: Option<u64>) {
        let mut path = format!(
            "/apis/batch/v1/namespaces/{}/jobs/{name}?propagationPolicy={propagation}",
            self.cfg.namespace
        );
        if let Some(g) = grace {
            path.push_str(&format!("&gracePeriodSeconds={g}"));
        }
        match self.api.json(Method::DELETE, &path, None).await {
            Ok(_) | Err(KubeError::Status { code: 404, .. }) => {}
            Err(e) => tracing::warn!(job = %name, "deleting a turn's Job failed: {e}"),
        }
    }

    /// Names of the Jobs carrying `label=value`.
    async fn jobs(&self, label: &str, value: &str) -> Result<Vec<String>, KubeError> {
        let path = format!(
            "/apis/batch/v1/namespaces/{}/jobs?labelSelector={}",
            self.cfg.namespace,
            api::query(&api::selector(&[(label, value)]))
        );
        let list = self.api.json(Method::GET, &path, None).await?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_string))
            .collect())
    }
}

/// Turns as Jobs on one cluster.
pub struct KubeRunner {
    shared: Arc<Shared>,
}

impl KubeRunner {
    /// Runner on the API server `endpoint`, watching this zwarm's pods.
    pub async fn connect(
        cfg: KubeConfig,
        endpoint: Endpoint,
    ) -> Result<Arc<KubeRunner>, KubeError> {
        if cfg.git_remote.as_deref().is_none_or(str::is_empty) {
            return Err(KubeError::NoRemote);
        }
        let api = Api::new(endpoint);
        // One request up front: a server that cannot be reached fails the start, not a turn.
        api.json(
            Method::GET,
            &format!("/apis/batch/v1/namespaces/{}/jobs?limit=1", cfg.namespace),
            None,
        )
        .await?;
        let server = server_id();
        let pods = pods::Pods::start(
            api.clone(),
            cfg.namespace.clone(),
            api::selector(&[(LABEL_SERVER, &server)]),
        );
        Ok(Arc::new(KubeRunner {
            shared: Arc::new(Shared {
                api,
                cfg,
                pods,
                server,
            }),
        }))
    }

    /// This zwarm's `zwarm.dev/server` label value.
    pub fn server_id(&self) -> &str {
        &self.shared.server
    }

    /// Names of the Jobs of a session (running or not).
    pub async fn session_jobs(&self, session: &str) -> Result<Vec<String>, KubeError> {
        self.shared.jobs(manifest::LABEL_SESSION, session).await
    }
}

/// The runner the config asks for: the kubeconfig (`runner.kubernetes.kubeconfig`, else
/// `KUBECONFIG`, else `~/.kube/config`, in JSON form), its context, the namespace.
pub async fn from_config(cfg: &KubeConfig) -> Result<Arc<dyn Runner>, KubeError> {
    let path = cfg
        .kubeconfig
        .clone()
        .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config")))
        .unwrap_or_else(|| PathBuf::from(".kube/config"));
    let text = std::fs::read_to_string(&path).map_err(|source| KubeError::ReadKubeconfig {
        path: path.display().to_string(),
        source,
    })?;
    let ep = Endpoint::from_kubeconfig(&text, cfg.context.as_deref())?;
    let r: Arc<dyn Runner> = KubeRunner::connect(cfg.clone(), ep).await?;
    Ok(r)
}

fn start_error(m: impl Into<String>) -> RunnerError {
    RunnerError::Start(std::io::Error::other(m.into()))
}

/// The session part of a turn label `<session>.<turn>`.
fn session_of(label: &str) -> &str {
    label.rsplit_once('.').map(|(s, _)| s).unwrap_or(label)
}

/// A valid label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `<node>-<pid>-<start ticks>` of this process, as a label value.
fn server_id() -> String {
    let node: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(30)
        .collect();
    let pid = std::process::id();
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(19).map(str::to_string))
        })
        .unwrap_or_default();
    let id = format!("{node}-{pid}-{ticks}");
    id.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The executor's config file for the pod (its [`crate::executor::StateDir::pod_config`]:
/// codex's `config.toml`, claude's `settings.json`) from the config dir the executor would use
/// here, as the pod script's variables. Never a login.
fn executor_config(program: &str, env_set: &[(String, String)]) -> Vec<(String, String)> {
    let Some(dir) =
        crate::executor::portable::for_program(program).and_then(|e| e.portable().state_dir)
    else {
        return vec![];
    };
    let Some(file) = dir.pod_config else {
        return vec![];
    };
    let Some(text) = dir
        .source(env_set)
        .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
    else {
        return vec![];
    };
    vec![
        (
            "ZWARM_EXECUTOR_CONFIG_FILE".into(),
            format!("{}/{file}", dir.name),
        ),
        ("ZWARM_EXECUTOR_CONFIG".into(), text),
    ]
}

/// The executors' state dirs, as the pod script reads them (`name=VARIABLE …`).
fn state_dirs_var() -> String {
    crate::executor::portable::state_dirs()
        .iter()
        .map(|d| format!("{}={}", d.name, d.env))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Environment names the pod sets itself: a launch's value would point outside the pod.
fn pod_own(name: &str) -> bool {
    matches!(name, "HOME" | "PATH")
        || crate::executor::portable::state_dirs()
            .iter()
            .any(|d| d.env == name)
}

#[async_trait::async_trait]
impl Runner for KubeRunner {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn start(&self, launch: Launch) -> Result<RunningTurn, RunnerError> {
        self.start_timed(launch, None).await
    }

    async fn start_timed(
        &self,
        launch: Launch,
        timeout: Option<Duration>,
    ) -> Result<RunningTurn, RunnerError> {
        let sh = &self.shared;
        let label = launch.label.clone();
        let session = session_of(&label).to_string();
        if !valid_label(&label) || !valid_label(&session) {
            return Err(start_error(format!(
                "the turn label `{label}` cannot be a Kubernetes label value"
            )));
        }
        let remote = sh.cfg.git_remote.clone().unwrap_or_default();
        let cwd = launch.cwd.clone();
        let r = remote.clone();
        let branch = tokio::task::spawn_blocking(move || sync::push_branch(&cwd, &r))
            .await
            .map_err(|e| start_error(e.to_string()))?
            .map_err(start_error)?;

        let program = crate::container::program_in_image(&launch.program);
        let mut argv = vec![program.clone()];
        for a in &launch.args {
            let p = Path::new(a.as_os_str());
            let mapped = if p == launch.cwd {
                manifest::WS_ARG.to_string()
            } else if let Some(i) = launch.read_back.iter().position(|r| r == p) {
                format!("{}{i}@@", manifest::OUT_ARG)
            } else {
                os(a)
            };
            argv.push(mapped);
        }
        let mut env: Vec<(String, String)> = launch
            .env_set
            .iter()
            .filter(|(k, _)| !pod_own(k))
            .cloned()
            .collect();
        env.push(("ZWARM_STATE_DIRS".into(), state_dirs_var()));
        env.extend(executor_config(&program, &launch.env_set));
        let turn = label.rsplit_once('.').map(|(_, t)| t).unwrap_or("0");
        let name = format!(
            "zwarm-{}-{}-{}",
            session
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(8)
                .collect::<String>()
                .to_ascii_lowercase(),
            turn.to_ascii_lowercase(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let spec = JobSpec {
            name: name.clone(),
            label: label.clone(),
            session: session.clone(),
            server: sh.server.clone(),
            branch: branch.clone(),
            git_remote: remote,
            cwd: launch.cwd.display().to_string(),
            argv,
            env,
            stdin: launch
                .stdin
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            deadline_seconds: timeout.map(job_deadline),
        };
        let job = manifest::job(&sh.cfg, &spec);
        // Subscribed before the Job exists: no change of its pod is missed.
        let pod = sh.pods.subscribe(&label);
        let path = format!("/apis/batch/v1/namespaces/{}/jobs", sh.cfg.namespace);
        if let Err(e) = sh.api.json(Method::POST, &path, Some(&job)).await {
            sh.pods.forget(&label);
            return Err(match e {
                KubeError::Http(_) => RunnerError::Unavailable(e.to_string()),
                e => start_error(format!("the cluster refused the turn's Job: {e}")),
            });
        }
        let ret = turn::Return {
            cwd: launch.cwd.clone(),
            branch,
            session,
            read_back: launch.read_back.clone(),
        };
        let (control, stdout, stderr) =
            turn::KubeTurn::follow(sh.clone(), name, label, pod, ret, 0);
        Ok(RunningTurn {
            stdout: Some(stdout),
            stderr: Some(stderr),
            control: Box::new(control),
        })
    }

    fn reattaches(&self) -> bool {
        true
    }

    async fn adopt(&self, label: &str, read_back: &[PathBuf], logged: u64) -> Option<RunningTurn> {
        if !valid_label(label) {
            return None;
        }
        let sh = &self.shared;
        let path = format!(
            "/apis/batch/v1/namespaces/{}/jobs?labelSelector={}",
            sh.cfg.namespace,
            api::query(&api::selector(&[(LABEL, label)]))
        );
        let list = match sh.api.json(Method::GET, &path, None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%label, "looking for a turn's Job to re-attach to: {e}");
                return None;
            }
        };
        // A Job that ended while no zwarm watched is followed too: its pod's log and its
        // pushed branch are still there.
        let job = list["items"]
            .as_array()?
            .iter()
            .find(|j| j["metadata"]["deletionTimestamp"].is_null())?;
        let name = job["metadata"]["name"].as_str()?.to_string();
        let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
        let var = |k: &str| {
            env.as_array()?
                .iter()
                .find(|e| e["name"] == k)
                .and_then(|e| e["value"].as_str())
                .map(str::to_string)
        };
        let ret = turn::Return {
            cwd: PathBuf::from(var("ZWARM_CWD")?),
            branch: var("ZWARM_BRANCH")?,
            session: var("ZWARM_SESSION")?,
            read_back: read_back.to_vec(),
        };
        // Its pod carries the dead server's label: it gets a watch of its own, subscribed
        // before the first list so the pod is seen as it is now.
        let pods = pods::Pods::start_with(
            sh.api.clone(),
            sh.cfg.namespace.clone(),
            api::selector(&[(LABEL, label)]),
            &[label],
        );
        let pod = pods.subscribe(label);
        let own = Arc::new(Shared {
            api: sh.api.clone(),
            cfg: sh.cfg.clone(),
            pods,
            server: sh.server.clone(),
        });
        tracing::info!(%label, job = %name, logged, "re-attached to a turn's Job left by a stopped server");
        // The pod's log is served from its start: what the turn's raw log already holds is
        // skipped.
        let (control, stdout, stderr) =
            turn::KubeTurn::follow(own, name, label.to_string(), pod, ret, logged);
        Some(RunningTurn {
            stdout: Some(stdout),
            stderr: Some(stderr),
            control: Box::new(control),
        })
    }

    async fn clean_up(&self, label: &str) -> usize {
        if !valid_label(label) {
            return 0;
        }
        let jobs = self.shared.jobs(LABEL, label).await.unwrap_or_default();
        for j in &jobs {
            self.shared.delete_job(j, "Foreground", Some(0)).await;
        }
        jobs.len()
    }
}

/// Slack on top of the turn's timeout for the Job's `activeDeadlineSeconds`: zwarm stops a
/// turn at its timeout itself (with its own message, and the pod's grace period); the Job's
/// deadline is the cluster's bound for a turn whose zwarm is gone, and covers the pod's
/// checkout and push around the executor.
const DEADLINE_SLACK: Duration = Duration::from_secs(120);

/// The Job's `activeDeadlineSeconds` for a turn timeout.
fn job_deadline(timeout: Duration) -> u64 {
    (timeout + DEADLINE_SLACK).as_secs().max(1)
}

fn os(a: &OsString) -> String {
    a.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_ids() {
        assert!(valid_label("6883c685-0000-4000-8000-000000000000.12"));
        assert!(!valid_label("a/b"));
        assert!(!valid_label(".x"));
        assert!(!valid_label(&"a".repeat(64)));
        assert_eq!(session_of("abc.3"), "abc");
        assert_eq!(job_deadline(Duration::from_secs(1800)), 1920);
        let id = server_id();
        assert!(valid_label(&id), "{id}");
    }
}
