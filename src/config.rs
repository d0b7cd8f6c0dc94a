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
//! Keys that choose what runs or widen what it may do ([`TRUSTED_ONLY`], and a sandbox or
//! permission mode wider than the default) count only from trusted layers (all but the project
//! file). In the project file they are ignored, logged and listed in [`Config::ignored`]; the
//! server still starts. The project file's guardrail settings (watchers, turn timeout, turns
//! and worktrees at once) count only when they tighten the layers below ([`guardrails`]). Every file layer is checked against the list of known keys, so a typo is
//! an error naming the file and the key. An unknown `ZWARM_*` variable is only a warning
//! ([`Config::warnings`]): hosts start servers with the user's whole environment.
//!
//! The project is the server's working directory. State lives outside it, in
//! `$XDG_STATE_HOME/zwarm/<slug>` (else `$HOME/.local/state/zwarm/<slug>`, see
//! [`project_slug`]), unless `state_dir` / `--state-dir` choose another directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Value;

mod guardrails;

/// Default for `max_task_bytes`: the longest task or message zwarm sends to an executor.
pub const DEFAULT_MAX_TASK_BYTES: usize = 1_048_576;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Adapter used when `delegate` names none: `codex` or `claude`.
    pub default_adapter: String,
    /// Where sessions, turn logs and events live. Absolute after [`load`] (a relative value is
    /// taken from the project dir); unset: [`default_state_dir`].
    pub state_dir: PathBuf,
    /// Directories a session's `working_dir` must be inside. Empty: the server's cwd.
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
    /// Guardrails (see `crate::watch`).
    pub watchers: crate::watch::WatchersConfig,
    /// Trace export (see `crate::telemetry`).
    pub telemetry: crate::telemetry::TelemetryConfig,

    // Not config keys: facts [`load`] found while loading.
    /// The project: the server's working directory, canonical.
    #[serde(skip)]
    pub project_dir: PathBuf,
    /// `<project>/.zwarm` when it holds a zwarm 0.2 state (a `sessions/` directory or an
    /// `events.jsonl` file) and is not `state_dir`: state to import.
    #[serde(skip)]
    pub legacy_state_dir: Option<PathBuf>,
    /// Keys of the project file that were not applied because only a trusted layer may set them.
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
            default_adapter: "codex".into(),
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
            watchers: Default::default(),
            telemetry: Default::default(),
            project_dir: PathBuf::new(),
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    StrList,
    /// A table or array checked by serde only (price tables, pattern rules).
    Free,
}

/// Every key a layer may set, with its type (used to parse env and `--set` values).
const KEYS: &[(&str, Kind)] = &[
    ("default_adapter", Kind::Str),
    ("state_dir", Kind::Str),
    ("allowed_roots", Kind::StrList),
    ("sync_wait_seconds", Kind::Int),
    ("turn_timeout_seconds", Kind::Int),
    ("max_running", Kind::Int),
    ("interrupt_grace_seconds", Kind::Int),
    ("max_response_chars", Kind::Int),
    ("list_page_size", Kind::Int),
    ("hold_idle_seconds", Kind::Int),
    ("max_task_bytes", Kind::Int),
    ("containment", Kind::Str),
    ("cgroup_parent", Kind::Str),
    ("isolation", Kind::Str),
    ("worktree_commit_turns", Kind::Bool),
    ("max_worktrees", Kind::Int),
    ("codex.binary", Kind::Str),
    ("codex.model", Kind::Str),
    ("codex.sandbox", Kind::Str),
    ("codex.extra_args", Kind::StrList),
    ("claude.binary", Kind::Str),
    ("claude.model", Kind::Str),
    ("claude.permission_mode", Kind::Str),
    ("claude.max_turns", Kind::Int),
    ("claude.allowed_tools", Kind::StrList),
    ("claude.append_system_prompt", Kind::Str),
    ("claude.extra_args", Kind::StrList),
    ("watchers.progress.enabled", Kind::Bool),
    ("watchers.progress.priority", Kind::Int),
    ("watchers.progress.repeat_calls", Kind::Int),
    ("watchers.progress.stalled_calls", Kind::Int),
    ("watchers.progress.repeat_commands", Kind::Int),
    ("watchers.progress.action", Kind::Str),
    ("watchers.budget.enabled", Kind::Bool),
    ("watchers.budget.priority", Kind::Int),
    ("watchers.budget.max_sessions", Kind::Int),
    ("watchers.budget.max_running", Kind::Int),
    ("watchers.budget.max_turns_per_session", Kind::Int),
    ("watchers.budget.max_tokens", Kind::Int),
    ("watchers.budget.max_cost_usd", Kind::Float),
    ("watchers.budget.warn_percent", Kind::Float),
    ("watchers.budget.action", Kind::Str),
    ("watchers.budget.prices", Kind::Free),
    ("watchers.scope.enabled", Kind::Bool),
    ("watchers.scope.priority", Kind::Int),
    ("watchers.scope.focus", Kind::StrList),
    ("watchers.scope.avoid", Kind::StrList),
    ("watchers.scope.allowed_paths", Kind::StrList),
    ("watchers.scope.action", Kind::Str),
    ("watchers.pattern.enabled", Kind::Bool),
    ("watchers.pattern.priority", Kind::Int),
    ("watchers.pattern.builtin_rules", Kind::Bool),
    ("watchers.pattern.rules", Kind::Free),
    ("watchers.quality.enabled", Kind::Bool),
    ("watchers.quality.priority", Kind::Int),
    ("watchers.quality.max_files", Kind::Int),
    ("watchers.quality.require_tests", Kind::Bool),
    ("telemetry.enabled", Kind::Bool),
    ("telemetry.endpoint", Kind::Str),
    ("telemetry.headers", Kind::Str),
    ("telemetry.service_name", Kind::Str),
];

/// Environment variables that are not config keys but are still zwarm's.
const ENV_RESERVED: &[&str] = &["ZWARM_LOG", "ZWARM_TURN"];
/// Short aliases for env variables.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("ZWARM_CODEX_BIN", "codex.binary"),
    ("ZWARM_CLAUDE_BIN", "claude.binary"),
    ("ZWARM_SANDBOX", "codex.sandbox"),
];

/// Keys that choose what runs or widen what it may do, with why: only trusted layers (not the
/// project file) may set them. [`SANDBOX_MODE`] and [`PERMISSION_MODE`] are trusted-only too
/// when their value is wider.
pub const TRUSTED_ONLY: &[(&str, &str)] = &[
    ("state_dir", "it chooses where zwarm keeps its state"),
    (
        "containment",
        "it chooses how an executor's processes are contained",
    ),
    ("cgroup_parent", "it chooses where executors' cgroups live"),
    ("allowed_roots", "it widens where sessions may work"),
    ("codex.binary", "it chooses the program zwarm runs"),
    (
        "codex.extra_args",
        "it adds arguments to the codex command line",
    ),
    ("claude.binary", "it chooses the program zwarm runs"),
    (
        "claude.allowed_tools",
        "it lets claude run tools without asking",
    ),
    (
        "claude.extra_args",
        "it adds arguments to the claude command line",
    ),
    (
        "telemetry.enabled",
        "it decides whether traces of your sessions leave the machine",
    ),
    (
        "telemetry.endpoint",
        "it chooses where traces of your sessions are sent",
    ),
    (
        "telemetry.headers",
        "it chooses the credentials sent with traces",
    ),
];

/// Where a trusted-only key may be set instead (appended to every [`IgnoredKey::reason`]).
const TRUSTED_LAYERS: &str = "executors can write the project file; set it in the user config file, --config FILE, a ZWARM_* variable or --set";

/// A key whose values are ordered from narrowest to widest.
#[derive(Debug)]
pub struct ModeKey {
    pub key: &'static str,
    pub default: &'static str,
    /// Every accepted value with its width; values of equal width grant the same.
    pub values: &'static [(&'static str, u8)],
    /// The accepted values, for error messages.
    pub expected: &'static str,
}

impl ModeKey {
    /// Width of `value`, `None` when it is not a known value.
    pub fn width(&self, value: &str) -> Option<u8> {
        self.values
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, w)| *w)
    }

    /// Whether `value` grants more than the default.
    pub fn is_wide(&self, value: &str) -> bool {
        self.width(value) > self.width(self.default)
    }
}

/// `codex.sandbox`.
pub const SANDBOX_MODE: ModeKey = ModeKey {
    key: "codex.sandbox",
    default: "workspace-write",
    values: &[
        ("read-only", 0),
        ("workspace-write", 1),
        ("danger-full-access", 2),
    ],
    expected: "one of read-only, workspace-write, danger-full-access",
};

/// `claude.permission_mode`. Claude Code renamed `default` to `manual`; both are accepted.
pub const PERMISSION_MODE: ModeKey = ModeKey {
    key: "claude.permission_mode",
    default: "acceptEdits",
    values: &[
        ("plan", 0),
        ("default", 1),
        ("manual", 1),
        ("acceptEdits", 2),
        ("dontAsk", 3),
        ("auto", 3),
        ("bypassPermissions", 3),
    ],
    expected: "one of plan, default, manual, acceptEdits, dontAsk, auto, bypassPermissions",
};

const MODE_KEYS: &[&ModeKey] = &[&SANDBOX_MODE, &PERMISSION_MODE];

/// Longest readable part of a [`project_slug`].
const SLUG_READABLE_MAX: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown config key `{key}` in {source_name}. Known keys: {known}")]
    UnknownKey {
        key: String,
        source_name: String,
        known: String,
    },
    #[error("config key `{key}` from {source_name}: expected {expected}, got `{value}`")]
    BadValue {
        key: String,
        source_name: String,
        expected: &'static str,
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
    /// The server's working directory: the project (relative: against the process's cwd).
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
pub fn project_config_file(project_dir: &Path) -> PathBuf {
    project_dir.join(".zwarm").join("config.toml")
}

/// A directory name for a project's state: the end of its path, readable (`/` becomes `-`,
/// other unusual characters `_`, at most 48 characters, cut at a `-`), then `-` and 8 hex digits
/// of an FNV-1a hash of the whole path, so two paths never share one by accident.
/// Stable across versions: changing it would lose every project's state.
pub fn project_slug(project_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in project_dir.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = (hash ^ (hash >> 32)) as u32;
    // Every character becomes one ASCII byte, so byte offsets below are char boundaries.
    let readable: String = project_dir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
            _ => '_',
        })
        .collect();
    let mut tail = &readable[readable.len().saturating_sub(SLUG_READABLE_MAX)..];
    if tail.len() < readable.len()
        && let Some((_, rest)) = tail.split_once('-')
        && !rest.is_empty()
    {
        tail = rest;
    }
    let tail = tail.trim_start_matches(['-', '.']);
    let name = if tail.is_empty() { "root" } else { tail };
    format!("{name}-{folded:08x}")
}

pub fn load(src: &Sources) -> Result<Config, ConfigError> {
    let project_dir = std::fs::canonicalize(&src.cwd).map_err(|err| ConfigError::ProjectDir {
        path: src.cwd.display().to_string(),
        err,
    })?;
    let mut warnings = Vec::new();

    let user_layer = match src.user_config_file() {
        Some(p) if p.is_file() => Some(read_layer(&p)?),
        _ => None,
    };
    let project_file = project_config_file(&project_dir);
    let mut ignored = Vec::new();
    let project_layer = if project_file.is_file() {
        let mut t = read_layer(&project_file)?;
        ignored = strip_untrusted(&mut t, user_layer.as_ref(), &project_file);
        Some(t)
    } else {
        None
    };
    let file_layer = src.config_file.as_deref().map(read_layer).transpose()?;
    let env_layer = env_table(&src.env, &mut warnings)?;
    let mut set_layer = toml::Table::new();
    for s in &src.sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::BadSet(s.clone()))?;
        set_path(&mut set_layer, k.trim(), v.trim(), &format!("--set {s}"))?;
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
        merge(&mut merged, layer);
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
    cfg.legacy_state_dir = legacy_state_dir(&project_dir, &cfg.state_dir);

    for w in &warnings {
        tracing::warn!("{w}");
    }
    for i in &ignored {
        tracing::warn!(file = %i.file.display(), key = %i.key, reason = %i.reason, "ignored a key of the project config file");
    }
    cfg.project_dir = project_dir;
    cfg.warnings = warnings;
    cfg.ignored = ignored;
    Ok(cfg)
}

/// `<project>/.zwarm` when it holds a zwarm 0.2 state and is not the chosen state dir.
fn legacy_state_dir(project_dir: &Path, state_dir: &Path) -> Option<PathBuf> {
    let legacy = project_dir.join(".zwarm");
    let holds_state = legacy.join("sessions").is_dir() || legacy.join("events.jsonl").is_file();
    if !holds_state {
        return None;
    }
    let same = legacy == state_dir
        || matches!(
            (std::fs::canonicalize(&legacy), std::fs::canonicalize(state_dir)),
            (Ok(a), Ok(b)) if a == b
        );
    (!same).then_some(legacy)
}

/// Remove from the project file's table what only a trusted layer may set, and say what was
/// removed. A mode key stays only when it is no wider than the default and than the user file's
/// value (the layer below it).
fn strip_untrusted(
    project: &mut toml::Table,
    user: Option<&toml::Table>,
    file: &Path,
) -> Vec<IgnoredKey> {
    let mut ignored = Vec::new();
    let mut ignore = |key: &str, why: String| {
        ignored.push(IgnoredKey {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason: format!("only a trusted layer may set `{key}`: {why}; {TRUSTED_LAYERS}"),
        });
    };
    for (key, why) in TRUSTED_ONLY {
        if remove_path(project, key).is_some() {
            ignore(key, (*why).to_string());
        }
    }
    for mode in MODE_KEYS {
        let Some(value) = get_path(project, mode.key).and_then(Value::as_str) else {
            continue;
        };
        let below = user
            .and_then(|u| get_path(u, mode.key))
            .and_then(Value::as_str)
            .unwrap_or(mode.default);
        let why = if mode.is_wide(value) {
            format!("`{value}` is wider than the default `{}`", mode.default)
        } else if mode.width(value) > mode.width(below) {
            format!("`{value}` is wider than `{below}` from the user config file")
        } else {
            continue;
        };
        remove_path(project, mode.key);
        ignore(mode.key, why);
    }
    for (key, why) in guardrails::tighten_only(project, user) {
        ignored.push(IgnoredKey {
            file: file.to_path_buf(),
            reason: format!(
                "the project file may tighten guardrails, not loosen them: `{key}`: {why}; {TRUSTED_LAYERS}"
            ),
            key,
        });
    }
    ignored
}

fn get_path<'a>(t: &'a toml::Table, key: &str) -> Option<&'a Value> {
    match key.split_once('.') {
        Some((head, rest)) => get_path(t.get(head)?.as_table()?, rest),
        None => t.get(key),
    }
}

fn remove_path(t: &mut toml::Table, key: &str) -> Option<Value> {
    match key.split_once('.') {
        Some((head, rest)) => match t.get_mut(head)? {
            Value::Table(sub) => remove_path(sub, rest),
            _ => None,
        },
        None => t.remove(key),
    }
}

fn validate(cfg: &Config) -> Result<(), ConfigError> {
    if crate::model::Adapter::parse(&cfg.default_adapter).is_none() {
        return Err(ConfigError::Invalid(format!(
            "default_adapter is `{}`; use `codex` or `claude`",
            cfg.default_adapter
        )));
    }
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

/// A config file's table, its keys checked.
fn read_layer(p: &Path) -> Result<toml::Table, ConfigError> {
    let t = read_file(p)?;
    check_keys(&t, "", &p.display().to_string())?;
    Ok(t)
}

fn read_file(p: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|err| ConfigError::Read {
        path: p.display().to_string(),
        err,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: p.display().to_string(),
        err: e.to_string(),
    })
}

fn known_list() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

fn check_keys(t: &toml::Table, prefix: &str, source_name: &str) -> Result<(), ConfigError> {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let is_section = KEYS
            .iter()
            .any(|(key, _)| key.starts_with(&format!("{path}.")));
        if is_section {
            match v {
                Value::Table(sub) => check_keys(sub, &path, source_name)?,
                _ => {
                    return Err(ConfigError::BadValue {
                        key: path,
                        source_name: source_name.into(),
                        expected: "a table",
                        value: v.to_string(),
                    });
                }
            }
        } else if !KEYS.iter().any(|(key, _)| *key == path) {
            return Err(ConfigError::UnknownKey {
                key: path,
                source_name: source_name.into(),
                known: known_list(),
            });
        } else {
            check_mode(&path, v, source_name)?;
        }
    }
    Ok(())
}

/// A mode key's value must be one of its known values (other keys: anything).
fn check_mode(key: &str, v: &Value, source_name: &str) -> Result<(), ConfigError> {
    let Some(mode) = MODE_KEYS.iter().find(|m| m.key == key) else {
        return Ok(());
    };
    if v.as_str().and_then(|s| mode.width(s)).is_some() {
        return Ok(());
    }
    Err(ConfigError::BadValue {
        key: key.into(),
        source_name: source_name.into(),
        expected: mode.expected,
        value: v.as_str().map_or_else(|| v.to_string(), str::to_string),
    })
}

/// The `ZWARM_*` variables as a table. An unknown name is a warning, not an error: hosts start
/// servers with the user's whole environment.
fn env_table(
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<toml::Table, ConfigError> {
    let mut t = toml::Table::new();
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("ZWARM_"))
        .collect();
    vars.sort();
    for (name, value) in vars {
        if ENV_RESERVED.contains(&name.as_str()) {
            continue;
        }
        let key = ENV_ALIASES
            .iter()
            .find(|(alias, _)| alias == name)
            .map(|(_, key)| key.to_string())
            .or_else(|| {
                let wanted = name.trim_start_matches("ZWARM_").to_ascii_lowercase();
                KEYS.iter()
                    .find(|(k, _)| k.replace('.', "_") == wanted)
                    .map(|(k, _)| k.to_string())
            });
        let Some(key) = key else {
            warnings.push(format!(
                "unknown environment variable {name} ignored: zwarm reads ZWARM_<KEY> for config keys (e.g. ZWARM_CODEX_SANDBOX for codex.sandbox)"
            ));
            continue;
        };
        set_path(&mut t, &key, value, &format!("environment variable {name}"))?;
    }
    Ok(t)
}

/// Set a dotted key from a raw string, typed by the key's kind.
/// Parse `raw` as a TOML value (`[1, 2]`, `{ a = 1 }`, `"x"`).
fn toml_literal(raw: &str) -> Option<Value> {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
}

fn set_path(
    t: &mut toml::Table,
    key: &str,
    raw: &str,
    source_name: &str,
) -> Result<(), ConfigError> {
    let kind = KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind)
        .ok_or_else(|| ConfigError::UnknownKey {
            key: key.into(),
            source_name: source_name.into(),
            known: known_list(),
        })?;
    let bad = |expected: &'static str| ConfigError::BadValue {
        key: key.into(),
        source_name: source_name.into(),
        expected,
        value: raw.into(),
    };
    let value = match kind {
        Kind::Str => Value::String(raw.to_string()),
        Kind::Int => Value::Integer(raw.parse::<i64>().map_err(|_| bad("a whole number"))?),
        Kind::Float => Value::Float(raw.parse::<f64>().map_err(|_| bad("a number"))?),
        Kind::Bool => Value::Boolean(match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(bad("true or false")),
        }),
        Kind::Free => toml_literal(raw).ok_or_else(|| bad("a TOML value (table or array)"))?,
        Kind::StrList if raw.trim_start().starts_with('[') => toml_literal(raw)
            .filter(Value::is_array)
            .ok_or_else(|| bad("a TOML array of strings or a comma-separated list"))?,
        Kind::StrList => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
    };
    check_mode(key, &value, source_name)?;
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut cur = t;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        cur = match entry {
            Value::Table(sub) => sub,
            _ => return Err(ConfigError::Invalid(format!("`{p}` is not a table"))),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sources with a temp project dir, state and XDG homes inside a temp dir.
    struct T {
        dir: tempfile::TempDir,
        src: Sources,
    }

    fn t(env: &[(&str, &str)], sets: &[&str]) -> T {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let mut vars = vec![
            (
                "XDG_CONFIG_HOME".to_string(),
                dir.path().join("config").display().to_string(),
            ),
            (
                "XDG_STATE_HOME".to_string(),
                dir.path().join("state").display().to_string(),
            ),
        ];
        vars.extend(env.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        let src = Sources {
            config_file: None,
            state_dir: None,
            env: vars,
            sets: sets.iter().map(|s| s.to_string()).collect(),
            cwd: project,
        };
        T { dir, src }
    }

    fn load_err(t: &T) -> String {
        load(&t.src).unwrap_err().to_string()
    }

    #[test]
    fn layers_in_order() {
        let mut t = t(
            &[("ZWARM_CODEX_MODEL", "m2"), ("ZWARM_CODEX_BIN", "/x/codex")],
            &["max_running=5"],
        );
        let f = t.dir.path().join("c.toml");
        std::fs::write(
            &f,
            "max_running = 3\n[codex]\nsandbox = \"read-only\"\nmodel = \"m1\"\n",
        )
        .unwrap();
        t.src.config_file = Some(f);
        let c = load(&t.src).unwrap();
        assert_eq!(c.codex.sandbox, "read-only");
        assert_eq!(c.codex.model.as_deref(), Some("m2"));
        assert_eq!(c.codex.binary, Some(PathBuf::from("/x/codex")));
        assert_eq!(c.max_running, 5);
    }

    #[test]
    fn state_dir_config_file_is_not_read() {
        let mut t = t(&[], &[]);
        let state = t.dir.path().join("chosen");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("config.toml"), "max_running = 2\n").unwrap();
        t.src.state_dir = Some(state.clone());
        let c = load(&t.src).unwrap();
        assert_eq!(c.max_running, Config::default().max_running);
        assert_eq!(c.state_dir, state);
    }

    #[test]
    fn relative_state_dir_is_under_the_project() {
        let t = t(&[], &["state_dir=./s"]);
        let c = load(&t.src).unwrap();
        assert!(c.state_dir.is_absolute());
        assert_eq!(c.state_dir, c.project_dir.join("s"));
        assert!(c.warnings.iter().any(|w| w.contains("inside the project")));
    }

    #[test]
    fn unknown_keys_are_named() {
        let mut t = t(&[], &[]);
        let f = t.dir.path().join("c.toml");
        std::fs::write(&f, "[codex]\nsandox = \"x\"\n").unwrap();
        t.src.config_file = Some(f);
        let e = load_err(&t);
        assert!(e.contains("codex.sandox") && e.contains("c.toml"), "{e}");
        t.src.config_file = None;
        t.src.sets = vec!["nope=1".into()];
        assert!(load_err(&t).contains("nope"));
        t.src.sets = vec!["max_running=lots".into()];
        assert!(load_err(&t).contains("whole number"));
    }

    #[test]
    fn mode_values_are_checked_in_every_layer() {
        let mut t = t(&[("ZWARM_SANDBOX", "full")], &[]);
        let e = load_err(&t);
        assert!(
            e.contains("ZWARM_SANDBOX") && e.contains("danger-full-access"),
            "{e}"
        );
        t.src.env.pop();
        t.src.sets = vec!["claude.permission_mode=yolo".into()];
        let e = load_err(&t);
        assert!(
            e.contains("claude.permission_mode") && e.contains("yolo"),
            "{e}"
        );
        t.src.sets = vec!["claude.permission_mode=manual".into()];
        assert_eq!(load(&t.src).unwrap().claude.permission_mode, "manual");
    }

    #[test]
    fn watcher_settings_layer_and_are_checked() {
        let mut t = t(
            &[("ZWARM_WATCHERS_QUALITY_ENABLED", "false")],
            &["watchers.budget.max_tokens=1000"],
        );
        let f = t.dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[watchers.budget]\nmax_cost_usd = 2.5\n[watchers.budget.prices.\"gpt-5.5\"]\ninput_per_million = 1.0\noutput_per_million = 8.0\n[[watchers.pattern.rules]]\nname = \"no-sleep\"\nregex = \"sleep\"\naction = \"abort\"\n",
        )
        .unwrap();
        t.src.config_file = Some(f);
        let c = load(&t.src).unwrap();
        assert_eq!(c.watchers.budget.max_cost_usd, Some(2.5));
        assert_eq!(c.watchers.budget.max_tokens, Some(1000));
        assert_eq!(c.watchers.budget.prices["gpt-5.5"].output_per_million, 8.0);
        assert_eq!(c.watchers.pattern.rules[0].action, "abort");
        assert!(!c.watchers.quality.enabled);
        t.src.config_file = None;
        t.src.sets = vec!["watchers.budget.max_cost=1".into()];
        assert!(load_err(&t).contains("watchers.budget.max_cost"));
        t.src.sets = vec!["watchers.scope.action=explode".into()];
        assert!(load_err(&t).contains("explode"));
    }

    #[test]
    fn lists_from_env() {
        let t = t(
            &[("ZWARM_CLAUDE_ALLOWED_TOOLS", "Bash, Write")],
            &["codex.extra_args=[\"-c\", \"a=1\"]"],
        );
        let c = load(&t.src).unwrap();
        assert_eq!(c.claude.allowed_tools, vec!["Bash", "Write"]);
        assert_eq!(c.codex.extra_args, vec!["-c", "a=1"]);
    }

    #[test]
    fn project_mode_may_not_widen_the_user_file() {
        let t = t(&[], &[]);
        let user = t.dir.path().join("config/zwarm");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(
            user.join("config.toml"),
            "[codex]\nsandbox = \"read-only\"\n",
        )
        .unwrap();
        let project = t.src.cwd.join(".zwarm");
        std::fs::create_dir(&project).unwrap();
        std::fs::write(
            project.join("config.toml"),
            "[codex]\nsandbox = \"workspace-write\"\n",
        )
        .unwrap();
        let c = load(&t.src).unwrap();
        assert_eq!(c.codex.sandbox, "read-only");
        assert_eq!(c.ignored.len(), 1);
        assert!(
            c.ignored[0].reason.contains("user config"),
            "{:?}",
            c.ignored
        );
    }

    #[test]
    fn slug_is_stable_readable_and_bounded() {
        // Pinned: a different slug would orphan every project's existing state.
        assert_eq!(
            project_slug(Path::new("/home/me/src/proj")),
            "home-me-src-proj-90c1ba2b"
        );
        assert_ne!(
            project_slug(Path::new("/home/me/src/proj")),
            project_slug(Path::new("/home/me/src-proj"))
        );
        assert!(project_slug(Path::new("/")).starts_with("root-"));
        let long = format!("/{}/the-project", "very-long-directory-name/".repeat(6));
        let slug = project_slug(Path::new(&long));
        assert!(slug.len() <= SLUG_READABLE_MAX + 9, "{slug}");
        assert!(slug.contains("the-project"), "{slug}");
        let odd = project_slug(Path::new("/tmp/a b/ü"));
        assert!(odd.starts_with("tmp-a_b-_-"), "{odd}");
    }
}
