//! `[claude]`: the claude executor's config section, its defaults and its keys' trust rules.
//! A leaf: the config layer reads it ([`crate::config::Config::claude`]) without knowing the
//! executor.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::schema::{
    ARGS, KeyDef, MODEL, ModeKey, PROMPT, RUNS,
    Tighten::{Count, Mode},
    Trust::TightenOnly,
    Trust::TrustedOnly,
    fields, key_types,
};

/// The executor's name: its section and its adapter.
pub const NAME: &str = "claude";

/// `[claude]`.
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

impl Default for ClaudeConfig {
    fn default() -> Self {
        ClaudeConfig {
            binary: None,
            model: None,
            permission_mode: PERMISSION_MODE.default.into(),
            max_turns: None,
            allowed_tools: vec![],
            append_system_prompt: None,
            extra_args: vec![],
        }
    }
}

key_types! { Section: ClaudeConfig; }

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

/// The keys of `[claude]`, with their rules (every field: a new one fails the build here).
pub fn key_defs(out: &mut Vec<KeyDef>) {
    fields!(out, "claude.", ClaudeConfig {
        binary: TrustedOnly(RUNS), "Path or name of the claude binary. Unset: `claude` on PATH.";
        model: TrustedOnly(MODEL), "Model passed to claude. Unset: claude's own default.";
        permission_mode: TightenOnly(Mode(&PERMISSION_MODE)), "`plan`, `default` (also `manual`), `acceptEdits`, `dontAsk`, `auto` or `bypassPermissions`.";
        max_turns: TightenOnly(Count), "`--max-turns` of every claude turn. Unset: no limit.";
        allowed_tools: TrustedOnly("it lets claude run tools without asking"), "Tools claude may use without asking (`--allowedTools`).";
        append_system_prompt: TrustedOnly(PROMPT), "Text appended to claude's system prompt.";
        extra_args: TrustedOnly(ARGS), "Extra arguments for claude.";
    });
}
