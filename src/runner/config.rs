//! `[runner]`: where turns run. Trusted layers only: every key changes what an executor can
//! reach (a container's network, a cluster, the host's environment) or how much of a machine.
//!
//! Every runner's section is typed here, a leaf the configuration and the runners both read:
//! `[runner.container]` ([`ContainerConfig`], its limits checked in
//! `crate::container::config`) and `[runner.kubernetes]` ([`KubeConfig`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[runner] kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// A child process of zwarm on this machine (its own process group and cgroup).
    #[default]
    Local,
    /// A container per turn on a Docker Engine API (`[runner.container]`).
    Container,
    /// A Kubernetes Job per turn (`[runner.kubernetes]`).
    Kubernetes,
}

impl RunnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::Local => "local",
            RunnerKind::Container => "container",
            RunnerKind::Kubernetes => "kubernetes",
        }
    }
}

/// `[runner]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    pub kind: RunnerKind,
    pub container: ContainerConfig,
    pub kubernetes: KubeConfig,
}

/// `[runner.kubernetes]`: turns as Jobs on a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// The kubeconfig file. Unset: `KUBECONFIG`, else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context. Unset: its current context.
    pub context: Option<String>,
    /// The namespace Jobs run in.
    pub namespace: String,
    /// The image holding git and the executor CLIs.
    pub image: String,
    /// The service account of the Jobs' pods.
    pub service_account: Option<String>,
    /// CPU request and limit of a turn's pod, e.g. `"2"` or `"500m"`.
    pub cpu: Option<String>,
    /// Memory request and limit of a turn's pod, e.g. `"2Gi"`.
    pub memory: Option<String>,
    /// Node labels a turn's pod must run on.
    pub node_selector: BTreeMap<String, String>,
    /// The Secret whose keys become the executor's environment (API keys); never written into
    /// the Job spec.
    pub secret: Option<String>,
    /// The git remote the cluster fetches a session's branch from and pushes it back to.
    pub git_remote: Option<String>,
    /// A pod not scheduled and started within this time fails the turn.
    pub schedule_timeout_seconds: u64,
    /// `ttlSecondsAfterFinished` of every Job.
    pub ttl_seconds_after_finished: u64,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            kubeconfig: None,
            context: None,
            namespace: "default".into(),
            image: "zwarm-exec:latest".into(),
            service_account: None,
            cpu: None,
            memory: None,
            node_selector: BTreeMap::new(),
            secret: None,
            git_remote: None,
            schedule_timeout_seconds: 300,
            ttl_seconds_after_finished: 600,
        }
    }
}

/// `[runner.container] network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace: the executor reaches what the host reaches, loopback
    /// included (a model server or proxy on 127.0.0.1).
    #[default]
    Host,
    /// Docker's default bridge: its own loopback, outbound through NAT.
    Bridge,
    /// No network at all (a model API is then unreachable: for tests and offline tools).
    None,
}

impl Network {
    pub fn mode(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::Bridge => "bridge",
            Network::None => "none",
        }
    }
}

/// `[runner.container]`: what a container turn may use. Trusted layers only: every key
/// changes what an executor can reach (network, the host's environment) or how much of the
/// machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    /// The image holding the executor CLIs (`codex`, `claude` on its PATH).
    pub image: String,
    pub network: Network,
    /// Memory limit, e.g. `2g`, `512m` (swap is not added on top).
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. `2.0`.
    pub cpus: Option<f64>,
    /// Limit on processes and threads in the container.
    pub pids: Option<u64>,
    /// `uid[:gid]` or a name known to the image; default: zwarm's own uid:gid, so files
    /// written into the worktree belong to the same user as with the local runner.
    pub user: Option<String>,
    /// Names of zwarm's environment variables passed into the container (API keys, proxy
    /// settings). Nothing else of zwarm's environment goes in.
    pub env: Vec<String>,
    /// Docker endpoint (`unix:///…`, `tcp://…`); default: `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            image: "zwarm-exec:latest".into(),
            network: Network::Host,
            memory: None,
            cpus: None,
            pids: Some(4096),
            user: None,
            env: Vec::new(),
            host: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_parses_from_toml() {
        let r: RunnerConfig = toml::from_str(
            r#"kind = "container"
[container]
image = "zwarm-exec:1"
network = "none"
memory = "1g"
cpus = 2.0
pids = 256
env = ["OPENAI_API_KEY"]
"#,
        )
        .unwrap();
        assert_eq!(r.kind, RunnerKind::Container);
        assert_eq!(r.container.network, Network::None);
        assert_eq!(r.container.env, vec!["OPENAI_API_KEY".to_string()]);
        assert!(toml::from_str::<RunnerConfig>("kind = \"vm\"").is_err());
        assert!(toml::from_str::<RunnerConfig>("[container]\nimage2 = \"x\"").is_err());
    }
}
