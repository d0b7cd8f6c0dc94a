//! Layered configuration.
//!
//! Precedence, lowest first: built-in defaults < `<state_dir>/config.toml` < `--config FILE` <
//! environment (`ZWARM_*`) < `--set key=value` (and `--state-dir`). Every layer is reduced to a
//! TOML table and merged key by key, then checked against the list of known keys, so a typo in
//! any layer is an error that names the key and where it came from instead of being ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Adapter used when `delegate` names none: `codex` or `claude`.
    pub default_adapter: String,
    /// Where sessions, turn logs and `events.jsonl` live (relative to the server's cwd).
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
    pub codex: CodexConfig,
    pub claude: ClaudeConfig,
    /// Guardrails (see `crate::watch`).
    pub watchers: crate::watch::WatchersConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodexConfig {
    /// Path or name of the codex binary (default: `codex` on PATH).
    pub binary: Option<PathBuf>,
    pub model: Option<String>,
    /// `read-only`, `workspace-write` or `danger-full-access`.
    pub sandbox: String,
    /// Extra arguments placed before the prompt (e.g. `["-c", "key=value"]`).
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaudeConfig {
    pub binary: Option<PathBuf>,
    pub model: Option<String>,
    /// `acceptEdits`, `default`, `plan`, `dontAsk`, `auto` or `bypassPermissions`.
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
            state_dir: PathBuf::from(".zwarm"),
            allowed_roots: vec![],
            sync_wait_seconds: None,
            turn_timeout_seconds: 3600,
            max_running: 8,
            interrupt_grace_seconds: 5,
            max_response_chars: 8000,
            list_page_size: 50,
            codex: CodexConfig::default(),
            claude: ClaudeConfig::default(),
            watchers: Default::default(),
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
];

/// Environment variables that are not config keys but are still zwarm's.
const ENV_RESERVED: &[&str] = &["ZWARM_LOG", "ZWARM_TURN"];
/// Short aliases for env variables.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("ZWARM_CODEX_BIN", "codex.binary"),
    ("ZWARM_CLAUDE_BIN", "claude.binary"),
    ("ZWARM_SANDBOX", "codex.sandbox"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown config key `{key}` in {source_name}. Known keys: {known}")]
    UnknownKey {
        key: String,
        source_name: String,
        known: String,
    },
    #[error(
        "unknown environment variable {0}: zwarm reads ZWARM_<KEY> for config keys (e.g. ZWARM_CODEX_SANDBOX). Remove it or fix its name."
    )]
    UnknownEnv(String),
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
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Inputs for [`load`]: everything that is not a file on disk.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub sets: Vec<String>,
}

impl Sources {
    pub fn from_process_env(
        config_file: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        sets: Vec<String>,
    ) -> Sources {
        Sources {
            config_file,
            state_dir,
            env: std::env::vars().collect(),
            sets,
        }
    }
}

pub fn load(src: &Sources) -> Result<Config, ConfigError> {
    let mut merged = toml::Table::new();

    // --config FILE and env/--set layers are parsed first: they may move the state dir, which
    // decides where the lowest file layer lives.
    let file_layer = match &src.config_file {
        Some(p) => Some((read_file(p)?, format!("{}", p.display()))),
        None => None,
    };
    let env_layer = env_table(&src.env)?;
    let mut set_layer = toml::Table::new();
    for s in &src.sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::BadSet(s.clone()))?;
        set_path(&mut set_layer, k.trim(), v.trim(), &format!("--set {s}"))?;
    }
    if let Some(dir) = &src.state_dir {
        set_layer.insert("state_dir".into(), Value::String(dir.display().to_string()));
    }

    let state_dir = [
        Some(&set_layer),
        Some(&env_layer),
        file_layer.as_ref().map(|(t, _)| t),
    ]
    .into_iter()
    .flatten()
    .find_map(|t| {
        t.get("state_dir")
            .and_then(Value::as_str)
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(".zwarm"));
    let state_file = state_dir.join("config.toml");
    if state_file.is_file() {
        let t = read_file(&state_file)?;
        check_keys(&t, "", &format!("{}", state_file.display()))?;
        merge(&mut merged, t);
    }
    if let Some((t, name)) = file_layer {
        check_keys(&t, "", &name)?;
        merge(&mut merged, t);
    }
    merge(&mut merged, env_layer);
    merge(&mut merged, set_layer);

    let cfg: Config = Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
    validate(&cfg)?;
    Ok(cfg)
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
        }
    }
    Ok(())
}

fn env_table(env: &[(String, String)]) -> Result<toml::Table, ConfigError> {
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
            })
            .ok_or_else(|| ConfigError::UnknownEnv(name.clone()))?;
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

    fn src(env: &[(&str, &str)], sets: &[&str]) -> Sources {
        Sources {
            config_file: None,
            state_dir: Some(PathBuf::from("/nonexistent-zwarm-test")),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn defaults() {
        let c = load(&src(&[], &[])).unwrap();
        assert_eq!(c.codex.sandbox, "workspace-write");
        assert_eq!(c.claude.permission_mode, "acceptEdits");
        assert_eq!(c.turn_timeout_seconds, 3600);
        assert_eq!(c.max_running, 8);
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "max_running = 3\n[codex]\nsandbox = \"read-only\"\nmodel = \"m1\"\n",
        )
        .unwrap();
        let mut s = src(
            &[("ZWARM_CODEX_MODEL", "m2"), ("ZWARM_CODEX_BIN", "/x/codex")],
            &["max_running=5"],
        );
        s.config_file = Some(f);
        let c = load(&s).unwrap();
        assert_eq!(c.codex.sandbox, "read-only");
        assert_eq!(c.codex.model.as_deref(), Some("m2"));
        assert_eq!(c.codex.binary, Some(PathBuf::from("/x/codex")));
        assert_eq!(c.max_running, 5);
    }

    #[test]
    fn state_dir_file_is_lowest_layer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "turn_timeout_seconds = 7\nmax_running = 2\n",
        )
        .unwrap();
        let mut s = src(&[], &["max_running=4"]);
        s.state_dir = Some(dir.path().to_path_buf());
        let c = load(&s).unwrap();
        assert_eq!(c.turn_timeout_seconds, 7);
        assert_eq!(c.max_running, 4);
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[codex]\nsandox = \"x\"\n").unwrap();
        let mut s = src(&[], &[]);
        s.config_file = Some(f);
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("codex.sandox"), "{e}");
        let e = load(&src(&[], &["nope=1"])).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = load(&src(&[("ZWARM_NOPE", "1")], &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ZWARM_NOPE"), "{e}");
        let e = load(&src(&[], &["max_running=lots"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole number"), "{e}");
    }

    #[test]
    fn watcher_settings_layer_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[watchers.budget]\nmax_cost_usd = 2.5\n[watchers.budget.prices.\"gpt-5.5\"]\ninput_per_million = 1.0\noutput_per_million = 8.0\n[[watchers.pattern.rules]]\nname = \"no-sleep\"\nregex = \"sleep\"\naction = \"abort\"\n",
        )
        .unwrap();
        let mut s = src(
            &[("ZWARM_WATCHERS_QUALITY_ENABLED", "false")],
            &["watchers.budget.max_tokens=1000"],
        );
        s.config_file = Some(f);
        let c = load(&s).unwrap();
        assert_eq!(c.watchers.budget.max_cost_usd, Some(2.5));
        assert_eq!(c.watchers.budget.max_tokens, Some(1000));
        assert_eq!(c.watchers.budget.prices["gpt-5.5"].output_per_million, 8.0);
        assert_eq!(c.watchers.pattern.rules[0].action, "abort");
        assert!(!c.watchers.quality.enabled);
        let e = load(&src(&[], &["watchers.budget.max_cost=1"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("watchers.budget.max_cost"), "{e}");
        let e = load(&src(&[], &["watchers.scope.action=explode"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("explode"), "{e}");
    }

    #[test]
    fn lists_from_env() {
        let c = load(&src(
            &[("ZWARM_CLAUDE_ALLOWED_TOOLS", "Bash, Write")],
            &["codex.extra_args=[\"-c\", \"a=1\"]"],
        ))
        .unwrap();
        assert_eq!(c.claude.allowed_tools, vec!["Bash", "Write"]);
        assert_eq!(c.codex.extra_args, vec!["-c", "a=1"]);
    }
}
