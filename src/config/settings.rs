//! The configuration itself: [`Config`], every section in it, its built-in defaults and the
//! checks serde cannot make ([`validate`]). Sections that belong to an executor or a runner are
//! typed beside it (`[codex]` in `crate::executor::codex::config`, `[runner]` in
//! `crate::runner::config`, ...); this file only gathers them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::acp::AcpConfig;
use super::error::ConfigError;
use super::executors::ExecutorsConfig;
use crate::executor::claude::config::ClaudeConfig;
use crate::executor::codex::config::CodexConfig;
use crate::runner::config::RunnerConfig;
use crate::telemetry::TelemetryConfig;
use crate::watch::WatchersConfig;

/// Default for `max_task_bytes`: the longest task or message zwarm sends to an executor.
pub const DEFAULT_MAX_TASK_BYTES: usize = 1_048_576;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Adapter used when `delegate` names none: a registered executor's name.
    pub default_adapter: String,
    /// Where sessions, turn logs and events live. Absolute after [`super::load`] (a relative
    /// value is taken from the project dir); unset: [`super::Sources::default_state_dir`].
    pub state_dir: PathBuf,
    /// Directories a session's `working_dir` must be inside. Empty: the project.
    pub allowed_roots: Vec<PathBuf>,
    /// How long a sync `delegate`/`converse` waits before returning `running`.
    /// Unset: a safe margin under the calling host's tool timeout.
    pub sync_wait_seconds: Option<u64>,
    /// A turn running longer than this is interrupted and failed.
    pub turn_timeout_seconds: u64,
    /// Turns allowed to run at once; more are queued.
    pub max_running: usize,
    /// Seconds between SIGINT and SIGTERM when interrupting an executor.
    pub interrupt_grace_seconds: u64,
    /// Longest executor answer placed in a tool result; longer ones keep head and tail and
    /// point to the session resource that holds all of it.
    pub max_response_chars: usize,
    /// Default page size of list_sessions.
    pub list_page_size: usize,
    /// Seconds a session this server holds stays in memory, at rest (no turn running) and
    /// unused, before it is let go (it is read back from the state database when needed).
    pub hold_idle_seconds: u64,
    /// Largest task or message accepted, in bytes (refused up front; sent on stdin).
    pub max_task_bytes: usize,
    /// How a turn's processes are contained: `auto` (a cgroup per turn where cgroup v2 is
    /// writable, else process group + marker) or `process-group`.
    pub containment: String,
    /// Where turn cgroups are created (default: a `zwarm` cgroup next to zwarm's own).
    pub cgroup_parent: Option<PathBuf>,
    /// Default `isolation` of `delegate`: `none` (work in the project) or `worktree` (a git
    /// worktree and branch per session).
    pub isolation: String,
    /// Commit what changed in a session's worktree at the end of every turn.
    pub worktree_commit_turns: bool,
    /// Most session worktrees at once; `delegate` with isolation refuses more.
    pub max_worktrees: usize,
    /// `[codex]` (see [`CodexConfig`]).
    pub codex: CodexConfig,
    /// `[claude]` (see [`ClaudeConfig`]).
    pub claude: ClaudeConfig,
    /// What executors may load, and executors declared here (see [`ExecutorsConfig`]).
    pub executors: ExecutorsConfig,
    /// `[acp]`: the permission policy for ACP agents.
    pub acp: AcpConfig,
    /// Guardrails (see `crate::watch`).
    pub watchers: WatchersConfig,
    /// Trace export (see `crate::telemetry`).
    pub telemetry: TelemetryConfig,
    /// `[runner]`: where turns run (local processes, containers, a cluster).
    pub runner: RunnerConfig,

    // Not config keys: facts [`super::load`] found while loading.
    /// The project: the top level of the git work tree holding the working directory, else
    /// the working directory; canonical ([`super::project_root`]). The state slug, the project file
    /// and the default allowed root come from it; use it, not the process's directory.
    #[serde(skip)]
    pub project_dir: PathBuf,
    /// The working directory zwarm was started in, canonical (inside `project_dir`).
    #[serde(skip)]
    pub cwd: PathBuf,
    /// `<project>/.zwarm` when it holds a zwarm 0.2 state (a `sessions/` directory or an
    /// `events.jsonl` file) and is not `state_dir`: state to import.
    #[serde(skip)]
    pub legacy_state_dir: Option<PathBuf>,
    /// Keys of the project file that were not applied: only a trusted layer may set them, they
    /// would loosen a limit, or they are unknown or bad. Logged as `config_ignored` events.
    #[serde(skip)]
    pub ignored: Vec<IgnoredKey>,
    /// Problems that did not stop loading (e.g. an unknown `ZWARM_*` variable), already logged.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// A key of the project file that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredKey {
    /// The file that set it.
    pub file: PathBuf,
    /// Dotted key, e.g. `codex.sandbox`.
    pub key: String,
    /// Why it was ignored and where it may be set instead.
    pub reason: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // The first registered executor (the registry checks that it comes first).
            default_adapter: crate::executor::codex::config::NAME.into(),
            // Empty: not chosen; `load` puts the default here.
            state_dir: PathBuf::new(),
            allowed_roots: vec![],
            sync_wait_seconds: None,
            turn_timeout_seconds: 3600,
            max_running: 8,
            interrupt_grace_seconds: 5,
            max_response_chars: 8000,
            list_page_size: 50,
            hold_idle_seconds: 600,
            max_task_bytes: DEFAULT_MAX_TASK_BYTES,
            containment: "auto".into(),
            cgroup_parent: None,
            isolation: "none".into(),
            worktree_commit_turns: true,
            max_worktrees: 32,
            codex: CodexConfig::default(),
            claude: ClaudeConfig::default(),
            executors: ExecutorsConfig::default(),
            acp: AcpConfig::default(),
            watchers: Default::default(),
            telemetry: Default::default(),
            runner: Default::default(),
            project_dir: PathBuf::new(),
            cwd: PathBuf::new(),
            legacy_state_dir: None,
            ignored: vec![],
            warnings: vec![],
        }
    }
}

/// Checks serde cannot make: ranges and values. Whether `default_adapter` names a registered executor is the registry's to say
/// (`crate::executor::check_config`): the configuration does not know the executors.
pub(super) fn validate(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.default_adapter.trim().is_empty() {
        return Err(ConfigError::Invalid(
            "default_adapter is empty; name an executor (`zwarm doctor` lists them)".into(),
        ));
    }
    cfg.acp.validate().map_err(ConfigError::Invalid)?;
    cfg.executors.validate().map_err(ConfigError::Invalid)?;
    if cfg.max_running == 0 {
        return Err(ConfigError::Invalid(
            "max_running must be at least 1".into(),
        ));
    }
    if cfg.max_response_chars < 200 {
        return Err(ConfigError::Invalid(
            "max_response_chars must be at least 200".into(),
        ));
    }
    if !(1024..=64 * 1024 * 1024).contains(&cfg.max_task_bytes) {
        return Err(ConfigError::Invalid(
            "max_task_bytes must be between 1024 and 67108864 (64 MiB)".into(),
        ));
    }
    if !matches!(cfg.containment.as_str(), "auto" | "process-group") {
        return Err(ConfigError::Invalid(format!(
            "containment is `{}`; use `auto` (a cgroup per turn where possible) or `process-group`",
            cfg.containment
        )));
    }
    if !matches!(cfg.isolation.as_str(), "none" | "worktree") {
        return Err(ConfigError::Invalid(format!(
            "isolation is `{}`; use `none` (sessions work in the project) or `worktree` (a git worktree per session)",
            cfg.isolation
        )));
    }
    if cfg.max_worktrees > 4096 {
        return Err(ConfigError::Invalid(
            "max_worktrees must be at most 4096".into(),
        ));
    }
    if cfg.hold_idle_seconds == 0 {
        return Err(ConfigError::Invalid(
            "hold_idle_seconds must be at least 1".into(),
        ));
    }
    if cfg.list_page_size == 0 {
        return Err(ConfigError::Invalid(
            "list_page_size must be at least 1".into(),
        ));
    }
    crate::watch::Watchers::from_config(&cfg.watchers).map_err(ConfigError::Invalid)?;
    if cfg.turn_timeout_seconds == 0 || cfg.turn_timeout_seconds > 30 * 86_400 {
        return Err(ConfigError::Invalid(
            "turn_timeout_seconds must be between 1 and 2592000 (30 days)".into(),
        ));
    }
    if cfg.sync_wait_seconds.is_some_and(|w| w > 86_400) {
        return Err(ConfigError::Invalid(
            "sync_wait_seconds must be at most 86400 (a day)".into(),
        ));
    }
    if cfg.interrupt_grace_seconds > 600 {
        return Err(ConfigError::Invalid(
            "interrupt_grace_seconds must be at most 600".into(),
        ));
    }
    if cfg.max_running > 1024 {
        return Err(ConfigError::Invalid(
            "max_running must be at most 1024".into(),
        ));
    }
    Ok(())
}
