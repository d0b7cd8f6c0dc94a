//! What stops loading the configuration.

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
