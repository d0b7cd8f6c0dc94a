//! `[runner]`: where turns run. Trusted layers only: every key changes what an executor can
//! reach (a container's network, a cluster, the host's environment) or how much of a machine.
//!
//! Each runner's own section is typed beside its code: `[runner.container]` in
//! [`crate::container::config`], `[runner.kubernetes]` here ([`KubeConfig`]).

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
    pub container: crate::container::ContainerConfig,
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
