//! What a runner that does not share this machine's filesystem needs to know of an executor.
//!
//! The container runner (`src/container/`) and the Kubernetes runner (`src/kube/`) run an
//! executor away from the user's files: they build it into an image, give every session its
//! own config and thread dir, and switch off a sandbox the container replaces. Those facts are
//! the executor's, so they live here, described by each executor ([`super::Executor::portable`]),
//! and the runners read them without naming any executor.

use std::path::{Path, PathBuf};

/// An executor's config and thread dir (codex's `CODEX_HOME`, claude's config dir). A runner
/// that keeps a session's executor state apart gives it one of these per session, named
/// `name` inside the session's state, and points `env` at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDir {
    /// The dir's name in a session's state (`codex`); `[a-z]+`.
    pub name: &'static str,
    /// The variable that points the executor at it (`CODEX_HOME`).
    pub env: &'static str,
    /// Where it is without that variable, under the home dir (`.codex`).
    pub home_default: &'static str,
    /// Files of the user's dir copied into each session's (the model provider, the login),
    /// for a container; nothing else of the user's dir goes in.
    pub carried: &'static [&'static str],
    /// The one file of it sent to a pod (never a login, which a cluster's secrets carry).
    pub pod_config: Option<&'static str>,
}

impl StateDir {
    /// The user's dir on this machine: `env` in the executor's own environment for the turn
    /// (`env_set`), else in zwarm's, else `~/<home_default>`.
    pub fn source(&self, env_set: &[(String, String)]) -> Option<PathBuf> {
        env_set
            .iter()
            .rev()
            .find(|(k, _)| k == self.env)
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| std::env::var_os(self.env).map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(self.home_default)))
    }
}

/// How an executor's program goes into a container image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRecipe {
    /// Dirs beside its binary's `bin/` that make its platform package (codex's
    /// `codex-resources`, `codex-path`): when one is there, the whole package goes in under
    /// `/opt/<name>`; otherwise the binary alone, with its shared libraries.
    pub package_dirs: &'static [&'static str],
    /// What to install when the program found is a script (the image has no interpreter).
    pub native_hint: &'static str,
    /// Its turns run through the `zwarm-acp` bridge, which goes in beside it.
    pub bridge: bool,
}

/// Everything of [`super::Executor::portable`].
#[derive(Debug, Clone, Copy)]
pub struct Portable {
    pub state_dir: Option<StateDir>,
    pub image: ImageRecipe,
    /// Rewrites its arguments for a container, where its own OS sandbox cannot work, and says
    /// whether the working dir must then be mounted read-only to keep what was asked.
    pub container_args: Option<fn(&mut [String]) -> bool>,
}

/// The executor whose program is `program` inside an image or a pod (the image holds each as
/// `/usr/local/bin/<its name>`).
pub fn for_program(program: &str) -> Option<&'static dyn super::Executor> {
    super::all().find(|e| e.name() == program)
}

/// Every registered executor's state dir.
pub fn state_dirs() -> Vec<StateDir> {
    super::all()
        .filter_map(|e| e.portable().state_dir)
        .collect()
}

/// Adjust `program`'s arguments for a container; `true`: mount the working dir read-only.
pub fn container_args(program: &str, args: &mut [String]) -> bool {
    for_program(program)
        .and_then(|e| e.portable().container_args)
        .is_some_and(|adjust| adjust(args))
}
