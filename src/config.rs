//! Layered configuration, and where zwarm's state lives.
//!
//! Layers, lowest first; each overrides the ones before it, key by key:
//!
//! 1. built-in defaults;
//! 2. the user file `$XDG_CONFIG_HOME/zwarm/config.toml` (else `$HOME/.config/zwarm/config.toml`);
//! 3. the project file `<project>/.zwarm/config.toml`, which is **untrusted**: executors work
//!    in the project and can write it;
//! 4. `--config FILE`;
//! 5. the environment (`ZWARM_*`);
//! 6. `--set key=value` and `--state-dir`.
//!
//! Every key is listed once, with its type, its `ZWARM_*` variable and what the project file
//! may do with it, in [`keys`]. The project file never stops zwarm: what it may not set (keys
//! only a trusted layer may set, settings that would loosen what the layers below it say,
//! unknown keys, bad values, an unreadable file) is left out, logged and listed in
//! [`Config::ignored`]. In the trusted file layers an unknown key or a bad value is an error
//! naming the file, the key and the nearest known key. An unknown `ZWARM_*` variable is only a
//! warning ([`Config::warnings`]): hosts start servers with the user's whole environment.
//!
//! The project is the top level of the git work tree holding the working directory (else the
//! working directory; [`project_root`]). State lives outside it, in
//! `$XDG_STATE_HOME/zwarm/<slug>` (else `$HOME/.local/state/zwarm/<slug>`, see
//! [`project_slug`]), unless `state_dir` / `--state-dir` choose another directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Value;

mod acp;
mod guardrails;
pub mod keys;
mod layers;
mod project;
#[cfg(test)]
mod tests;

pub use acp::{ACP_LEVEL, AcpConfig};
pub use keys::{ModeKey, PERMISSION_MODE, SANDBOX_MODE};
pub use project::{project_config_file, project_root, project_slug};

/// Default for `max_task_bytes`: the longest task or message zwarm sends to an executor.
pub const DEFAULT_MAX_TASK_BYTES: usize = 1_048_576;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Adapter used when `delegate` names none: a registered executor's name.
    pub default_adapter: String,
    /// Where sessions, turn logs and events live. Absolute after [`load`] (a relative value is
    /// taken from the project dir); unset: [`default_state_dir`].
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
    pub codex: CodexConfig,
    pub claude: ClaudeConfig,
    /// What executors may load (see [`ExecutorsConfig`]).
    pub executors: ExecutorsConfig,
    /// `[acp]`: the permission policy for ACP agents.
    pub acp: AcpConfig,
    /// Guardrails (see `crate::watch`).
    pub watchers: crate::watch::WatchersConfig,
    /// Trace export (see `crate::telemetry`).
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// `[runner]`: where turns run (local processes, containers, a cluster).
    pub runner: crate::runner::config::RunnerConfig,

    // Not config keys: facts [`load`] found while loading.
    /// The project: the top level of the git work tree holding the working directory, else
    /// the working directory; canonical ([`project_root`]). The state slug, the project file
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

/// `[executors]`: what executors may load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorsConfig {
    /// Names of the MCP servers, from the executors' own configuration, that executor turns
    /// may load (claude: the only ones kept under `--strict-mcp-config`). zwarm's own server
    /// never is one. Empty: none. Trusted layers only.
    pub mcp_servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodexConfig {
    /// Path or name of the codex binary (default: `codex` on PATH).
    pub binary: Option<PathBuf>,
    pub model: Option<String>,
    /// `read-only`, `workspace-write` or `danger-full-access` (see [`SANDBOX_MODE`]).
    pub sandbox: String,
    /// Extra arguments placed before the prompt (e.g. `["-c", "key=value"]`).
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaudeConfig {
    pub binary: Option<PathBuf>,
    pub model: Option<String>,
    /// `plan`, `default` (also called `manual`), `acceptEdits`, `dontAsk`, `auto` or
    /// `bypassPermissions` (see [`PERMISSION_MODE`]).
    pub permission_mode: String,
    pub max_turns: Option<u32>,
    pub allowed_tools: Vec<String>,
    pub append_system_prompt: Option<String>,
    pub extra_args: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // The first registered executor.
            default_adapter: crate::executor::REGISTRY[0].name().into(),
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

impl Default for CodexConfig {
    fn default() -> Self {
        CodexConfig {
            binary: None,
            model: None,
            sandbox: "workspace-write".into(),
            extra_args: vec![],
        }
    }
}

impl Default for ClaudeConfig {
    fn default() -> Self {
        ClaudeConfig {
            binary: None,
            model: None,
            permission_mode: "acceptEdits".into(),
            max_turns: None,
            allowed_tools: vec![],
            append_system_prompt: None,
            extra_args: vec![],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown config key `{key}` in {source_name}: {hint}")]
    UnknownKey {
        key: String,
        source_name: String,
        /// "did you mean `default_adapter`?", or where the keys are listed.
        hint: String,
    },
    #[error("config key `{key}` from {source_name}: expected {expected}, got `{value}`")]
    BadValue {
        key: String,
        source_name: String,
        expected: String,
        value: String,
    },
    #[error("cannot read config file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("config file {path} is not valid TOML: {err}")]
    Parse { path: String, err: String },
    #[error("`--set {0}` must look like key=value")]
    BadSet(String),
    #[error("cannot use the working directory {path} as the project: {err}")]
    ProjectDir { path: String, err: std::io::Error },
    #[error(
        "cannot choose a state directory: neither XDG_STATE_HOME nor HOME is set to an absolute path. Set one of them, or pass --state-dir DIR"
    )]
    NoStateHome,
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Exit status of a zwarm command stopped by its configuration (a trusted layer's unknown key
/// or bad value, an unreadable `--config` file).
pub const EXIT_CONFIG: i32 = 2;

/// Whether `e` (or one of its causes) is a configuration error: exit with [`EXIT_CONFIG`].
pub fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<ConfigError>())
}

/// Inputs for [`load`]: everything it would otherwise take from the process.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--state-dir DIR`.
    pub state_dir: Option<PathBuf>,
    /// The environment. Read from it: `ZWARM_*`, and `XDG_CONFIG_HOME`, `XDG_STATE_HOME` and
    /// `HOME`, which locate the user config file and the default state dir. When a name repeats,
    /// the last pair wins.
    pub env: Vec<(String, String)>,
    /// `--set key=value`, in order.
    pub sets: Vec<String>,
    /// The working directory (relative: against the process's); the project is the top level
    /// of the git work tree holding it ([`project_root`]).
    pub cwd: PathBuf,
}

impl Sources {
    /// Sources from this process: its environment and working directory.
    pub fn from_process_env(
        config_file: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        sets: Vec<String>,
    ) -> std::io::Result<Sources> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => env.push((name, value)),
                (name, _) => {
                    let name = name.unwrap_or_else(|n| n.to_string_lossy().into_owned());
                    if name.starts_with("ZWARM_") || name.starts_with("XDG_") || name == "HOME" {
                        tracing::warn!(variable = %name, "environment variable is not valid UTF-8; ignored");
                    }
                }
            }
        }
        Ok(Sources {
            config_file,
            state_dir,
            env,
            sets,
            cwd: std::env::current_dir()?,
        })
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An absolute directory from a variable; unset, empty or relative (which the XDG spec says
    /// to ignore) is `None`.
    fn dir_var(&self, name: &str) -> Option<PathBuf> {
        self.var(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    }

    /// The user config file: `$XDG_CONFIG_HOME/zwarm/config.toml`, else
    /// `$HOME/.config/zwarm/config.toml`. `None` when neither variable is usable.
    pub fn user_config_file(&self) -> Option<PathBuf> {
        self.dir_var("XDG_CONFIG_HOME")
            .or_else(|| self.dir_var("HOME").map(|h| h.join(".config")))
            .map(|d| d.join("zwarm").join("config.toml"))
    }

    /// The state dir used when none is chosen: `$XDG_STATE_HOME/zwarm/<slug>`, else
    /// `$HOME/.local/state/zwarm/<slug>`, with the slug from [`project_slug`].
    pub fn default_state_dir(&self, project_dir: &Path) -> Result<PathBuf, ConfigError> {
        let base = self
            .dir_var("XDG_STATE_HOME")
            .or_else(|| self.dir_var("HOME").map(|h| h.join(".local").join("state")))
            .ok_or(ConfigError::NoStateHome)?;
        Ok(base.join("zwarm").join(project_slug(project_dir)))
    }
}

/// `<project>/.zwarm/config.toml`: the untrusted project config file.
/// Load the configuration from `src` (see the module doc).
pub fn load(src: &Sources) -> Result<Config, ConfigError> {
    let cwd = std::fs::canonicalize(&src.cwd).map_err(|err| ConfigError::ProjectDir {
        path: src.cwd.display().to_string(),
        err,
    })?;
    let project_dir = project_root(&cwd);
    let mut warnings = Vec::new();

    let user_layer = match src.user_config_file() {
        Some(p) if p.is_file() => Some(layers::read_trusted(&p)?),
        _ => None,
    };
    let (project_layer, ignored) =
        project::project_layer(&project_config_file(&project_dir), user_layer.as_ref());
    let file_layer = src
        .config_file
        .as_deref()
        .map(layers::read_trusted)
        .transpose()?;
    let env_layer = layers::env_table(&src.env, &mut warnings)?;
    let mut set_layer = toml::Table::new();
    for s in &src.sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::BadSet(s.clone()))?;
        layers::set_path(&mut set_layer, k.trim(), v.trim(), &format!("--set {s}"))?;
    }

    let mut merged = toml::Table::new();
    for layer in [
        user_layer,
        project_layer,
        file_layer,
        Some(env_layer),
        Some(set_layer),
    ]
    .into_iter()
    .flatten()
    {
        layers::merge(&mut merged, layer);
    }
    let mut cfg: Config = Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
    validate(&cfg)?;

    // Set apart from the TOML layers so that a path that is not UTF-8 stays intact.
    if let Some(dir) = &src.state_dir {
        cfg.state_dir = dir.clone();
    }
    cfg.state_dir = if cfg.state_dir.as_os_str().is_empty() {
        src.default_state_dir(&project_dir)?
    } else {
        // `components` drops `.` parts: `--state-dir ./s` is `<project>/s`.
        project_dir.join(&cfg.state_dir).components().collect()
    };
    if cfg.state_dir.starts_with(&project_dir) {
        warnings.push(format!(
            "the state dir {} is inside the project {}: executors working in the project can change zwarm's sessions and events. Leave state_dir unset to keep state outside it.",
            cfg.state_dir.display(),
            project_dir.display()
        ));
    }
    cfg.legacy_state_dir = project::legacy_state_dir(&project_dir, &cfg.state_dir);

    for w in &warnings {
        tracing::warn!("{w}");
    }
    cfg.project_dir = project_dir;
    cfg.cwd = cwd;
    cfg.warnings = warnings;
    cfg.ignored = ignored;
    Ok(cfg)
}

/// Checks serde cannot make: ranges and values.
fn validate(cfg: &Config) -> Result<(), ConfigError> {
    if crate::model::Adapter::parse(&cfg.default_adapter).is_none() {
        return Err(ConfigError::Invalid(format!(
            "default_adapter is `{}`; use {}",
            cfg.default_adapter,
            crate::executor::names_for_humans(false)
        )));
    }
    cfg.acp.validate().map_err(ConfigError::Invalid)?;
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
