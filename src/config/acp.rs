//! `[acp]`: how zwarm answers ACP agents' permission requests (gemini, qwen, opencode, ...).

use serde::{Deserialize, Serialize};

use super::schema::ModeKey;
use crate::acp::{Level, Rule};

/// `[acp]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcpConfig {
    /// The permission level of ACP sessions: `read-only`, `workspace-write` or `full-access`.
    /// Unset: follows `codex.sandbox` (zwarm's sandbox setting).
    pub level: Option<String>,
    /// `[[acp.rules]]`: `verdict` (allow, deny, ask), `kinds` (ACP tool kinds; empty: all),
    /// `pattern` (a regular expression over the command and paths). Checked in order before
    /// the level's defaults; the first that matches decides. Rules from the project file may
    /// only deny or ask, and win only when they are stricter.
    pub rules: Vec<Rule>,
    /// How long an `ask` waits for an answer (the orchestrator's or a person's) before it is
    /// a denial.
    pub ask_timeout_seconds: u64,
    /// How long an agent gets to answer `initialize` and to open its session.
    pub init_timeout_seconds: u64,
    /// How long an ACP agent process stays up after a turn, waiting for the session's next
    /// turn, before it is stopped. 0: a new agent process for every turn.
    pub agent_idle_seconds: u64,
}

impl Default for AcpConfig {
    fn default() -> Self {
        AcpConfig {
            level: None,
            rules: vec![],
            ask_timeout_seconds: 120,
            init_timeout_seconds: 60,
            agent_idle_seconds: 300,
        }
    }
}

/// `acp.level`.
pub const ACP_LEVEL: ModeKey = ModeKey {
    key: "acp.level",
    default: "workspace-write",
    values: &[("read-only", 0), ("workspace-write", 1), ("full-access", 2)],
    expected: "one of read-only, workspace-write, full-access",
};

impl AcpConfig {
    /// The level ACP sessions run at: `acp.level`, else from `codex.sandbox`.
    pub fn level(&self, sandbox: &str) -> Level {
        self.level
            .as_deref()
            .and_then(Level::parse)
            .or_else(|| Level::parse(sandbox))
            .unwrap_or(Level::WorkspaceWrite)
    }

    /// Checks serde cannot make: a level zwarm knows, rules whose patterns compile.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(l) = &self.level
            && ACP_LEVEL.width(l).is_none()
        {
            return Err(format!("acp.level is `{l}`; use {}", ACP_LEVEL.expected));
        }
        crate::acp::Policy::new(Level::ReadOnly, "/")
            .with_rules(self.rules.clone())
            .map(|_| ())
            .map_err(|e| format!("acp.rules: {e}"))
    }
}
