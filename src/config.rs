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
//! The sections are typed in `settings.rs` and beside the code they configure. Every key is
//! listed once, with its type, its `ZWARM_*` variable and what the project file
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

use toml::Value;

mod acp;
mod error;
pub mod executors;
mod guardrails;
pub mod keys;
mod layers;
mod project;
pub mod schema;
mod settings;
#[cfg(test)]
mod tests;

pub use crate::executor::claude::config::{ClaudeConfig, PERMISSION_MODE};
pub use crate::executor::codex::config::{CodexConfig, SANDBOX_MODE};
pub use acp::{ACP_LEVEL, AcpConfig};
pub use error::{ConfigError, EXIT_CONFIG, is_config_error};
pub use executors::{DeclaredExecutor, ExecutorsConfig};
pub use project::{project_config_file, project_root, project_slug};
pub use schema::ModeKey;
pub use settings::{Config, DEFAULT_MAX_TASK_BYTES, IgnoredKey};

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
    settings::validate(&cfg)?;
    executors::declare(&cfg.executors);

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
