//! `[codex]`: the codex executor's config section, its defaults and its keys' trust rules.
//! A leaf: the config layer reads it ([`crate::config::Config::codex`]) without knowing the
//! executor.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::schema::{
    ARGS, KeyDef, MODEL, ModeKey, RUNS, Tighten::Mode, Trust::TightenOnly, Trust::TrustedOnly,
    fields, key_types,
};

/// The executor's name: its section, its adapter, the default `default_adapter`.
pub const NAME: &str = "codex";

/// `[codex]`.
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

impl Default for CodexConfig {
    fn default() -> Self {
        CodexConfig {
            binary: None,
            model: None,
            sandbox: SANDBOX_MODE.default.into(),
            extra_args: vec![],
        }
    }
}

key_types! { Section: CodexConfig; }

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

/// The keys of `[codex]`, with their rules (every field: a new one fails the build here).
pub fn key_defs(out: &mut Vec<KeyDef>) {
    fields!(out, "codex.", CodexConfig {
        binary: TrustedOnly(RUNS), "Path or name of the codex binary. Unset: `codex` on PATH.";
        model: TrustedOnly(MODEL), "Model passed to codex. Unset: codex's own default.";
        sandbox: TightenOnly(Mode(&SANDBOX_MODE)), "`read-only`, `workspace-write` or `danger-full-access`.";
        extra_args: TrustedOnly(ARGS), "Extra arguments placed before the prompt, e.g. `[\"-c\", \"key=value\"]`.";
    });
}
