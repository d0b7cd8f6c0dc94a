//! `[executors]`: what executors may load, and executors declared in the configuration
//! (`[executors.NAME]`, an ACP agent's command line). Trusted layers only: a declared executor
//! chooses a program zwarm runs.
//!
//! The configuration only reads and checks the declarations; the executor registry
//! (`crate::executor`) turns them into executors ([`declared`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::schema::{KeyDef, ModeKey, RUNS, Trust::TrustedOnly, fields, key_types};

/// `[executors]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorsConfig {
    /// Names of the MCP servers, from the executors' own configuration, that executor turns
    /// may load (claude: the only ones kept under `--strict-mcp-config`). zwarm's own server
    /// never is one. Empty: none. Trusted layers only.
    pub mcp_servers: Vec<String>,
    /// `[executors.NAME]`: executors declared here, by name.
    #[serde(flatten)]
    pub declared: BTreeMap<String, DeclaredExecutor>,
}

/// `[executors.NAME]`: an agent zwarm runs as an executor of its own name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeclaredExecutor {
    /// How zwarm talks to it: `acp` (the Agent Client Protocol on stdio).
    pub protocol: String,
    /// The program and its arguments that start the agent speaking the protocol on stdio,
    /// e.g. `["copilot", "--acp", "--stdio"]`. A bare program name is looked up on PATH.
    pub command: Vec<String>,
    /// Environment set for the agent, in addition to zwarm's.
    pub env: BTreeMap<String, String>,
    /// Environment variables that hold its credentials (doctor says whether one is set).
    pub auth_env: Vec<String>,
}

key_types! { Section: ExecutorsConfig; }

/// `executors.NAME.protocol`: the protocols zwarm speaks with declared executors.
pub const PROTOCOL: ModeKey = ModeKey {
    key: "executors.<name>.protocol",
    default: "acp",
    values: &[("acp", 0)],
    expected: "acp (the Agent Client Protocol on stdio)",
};

/// Why declaring an executor is for trusted layers only.
pub const DECLARE: &str = "it declares an executor: the program zwarm runs";

/// `executors.mcp_servers`: the keys of `[executors]` itself.
pub fn key_defs(out: &mut Vec<KeyDef>) {
    // Every field; `declared` is the named tables below ([`named_key_defs`]).
    let ExecutorsConfig {
        mcp_servers,
        declared: _,
    } = ExecutorsConfig::default();
    out.push(KeyDef::new(
        "executors.mcp_servers",
        &mcp_servers,
        TrustedOnly("it chooses the MCP servers (programs) executors load"),
        "Names of the MCP servers (from the executors' own configuration) that executors may load; zwarm itself never is one. Empty: none.",
    ));
}

/// The keys of one `[executors.NAME]` table (`NAME` written `<name>`).
pub fn named_key_defs(out: &mut Vec<KeyDef>) {
    fields!(out, "executors.<name>.", DeclaredExecutor {
        protocol: TrustedOnly(DECLARE), "Declares the executor `<name>` (usable as `delegate`'s `adapter`): how zwarm talks to it, `acp`.";
        command: TrustedOnly(RUNS), "The agent's command line, speaking ACP on stdio, e.g. `[\"copilot\", \"--acp\", \"--stdio\"]`; a bare program is looked up on PATH.";
        env: TrustedOnly(RUNS), "Environment set for the agent, e.g. `{ COPILOT_MODE = \"agent\" }`.";
        auth_env: TrustedOnly(RUNS), "Variables holding its credentials, for `zwarm doctor`.";
    });
}

/// Longest name of a declared executor.
pub const NAME_MAX: usize = 32;

/// Whether `name` may name a declared executor: `[a-z][a-z0-9_-]{0,31}`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= NAME_MAX
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

impl ExecutorsConfig {
    /// Checks serde cannot make: names, protocols, command lines and variable names of the
    /// declared executors. Built-in names are the registry's to refuse.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in &self.declared {
            if !valid_name(name) {
                return Err(format!(
                    "`[executors.{name}]`: `{name}` cannot name an executor; use lowercase letters, digits, `_` and `-`, starting with a letter, at most {NAME_MAX} characters (e.g. `[executors.my-agent]`)"
                ));
            }
            if d.protocol != "acp" {
                return Err(format!(
                    "executors.{name}.protocol is `{}`; zwarm runs declared executors over ACP: set `protocol = \"acp\"` (the agent must speak the Agent Client Protocol on stdio)",
                    d.protocol
                ));
            }
            match d.command.first() {
                None => {
                    return Err(format!(
                        "executors.{name}.command is empty: give the program and the arguments that make it speak ACP on stdio, e.g. `command = [\"copilot\", \"--acp\", \"--stdio\"]`"
                    ));
                }
                Some(p) if p.trim().is_empty() => {
                    return Err(format!(
                        "executors.{name}.command starts with an empty program: name the program (on PATH) or its absolute path first"
                    ));
                }
                Some(_) => {}
            }
            if let Some(a) = d.command.iter().find(|a| a.contains('\0')) {
                return Err(format!(
                    "executors.{name}.command: the argument {a:?} contains a NUL byte; remove it"
                ));
            }
            for (k, v) in &d.env {
                if !valid_env_name(k) || v.contains('\0') {
                    return Err(format!(
                        "executors.{name}.env: `{k}` is not a usable variable (no `=` or NUL in the name, no NUL in the value)"
                    ));
                }
            }
            if let Some(k) = d.auth_env.iter().find(|k| !valid_env_name(k)) {
                return Err(format!(
                    "executors.{name}.auth_env: `{k}` is not a variable name (no `=` or NUL, not empty)"
                ));
            }
        }
        Ok(())
    }
}

static DECLARED: OnceLock<BTreeMap<String, DeclaredExecutor>> = OnceLock::new();

/// Publish the executors a loaded configuration declares, for the registry. The first loaded
/// configuration of the process counts (the registry is built once, at its first use).
pub(super) fn declare(cfg: &ExecutorsConfig) {
    if !cfg.declared.is_empty() {
        let _ = DECLARED.set(cfg.declared.clone());
    }
}

/// The executors the loaded configuration declares, by name (none before it is loaded).
pub fn declared() -> &'static BTreeMap<String, DeclaredExecutor> {
    static NONE: BTreeMap<String, DeclaredExecutor> = BTreeMap::new();
    DECLARED.get().unwrap_or(&NONE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> ExecutorsConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn declared_executors_parse_beside_mcp_servers() {
        let c = parse(
            r#"mcp_servers = ["docs"]
[myagent]
protocol = "acp"
command = ["copilot", "--acp", "--stdio"]
env = { COPILOT_MODE = "agent" }
auth_env = ["GH_TOKEN"]
"#,
        );
        assert_eq!(c.mcp_servers, vec!["docs"]);
        let d = &c.declared["myagent"];
        assert_eq!(d.command, vec!["copilot", "--acp", "--stdio"]);
        assert_eq!(d.env["COPILOT_MODE"], "agent");
        assert_eq!(d.auth_env, vec!["GH_TOKEN"]);
        assert!(c.validate().is_ok());
        // A key a declaration does not have is refused by serde.
        assert!(toml::from_str::<ExecutorsConfig>("[a]\nprogram = \"x\"").is_err());
    }

    #[test]
    fn names_follow_the_pattern() {
        for ok in ["a", "my-agent", "copilot_2", &"a".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "A", "1a", "-a", "a.b", "a b", "ä", &"a".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn bad_declarations_say_what_to_do() {
        let err = |toml: &str| parse(toml).validate().unwrap_err();
        let e = err("[My-Agent]\nprotocol = \"acp\"\ncommand = [\"x\"]");
        assert!(e.contains("lowercase") && e.contains("My-Agent"), "{e}");
        let e = err("[a]\nprotocol = \"mcp\"\ncommand = [\"x\"]");
        assert!(e.contains("protocol = \"acp\""), "{e}");
        let e = err("[a]\ncommand = [\"x\"]");
        assert!(e.contains("executors.a.protocol"), "{e}");
        let e = err("[a]\nprotocol = \"acp\"");
        assert!(e.contains("executors.a.command is empty"), "{e}");
        let e = err("[a]\nprotocol = \"acp\"\ncommand = [\" \"]");
        assert!(e.contains("empty program"), "{e}");
        let e = err("[a]\nprotocol = \"acp\"\ncommand = [\"x\"]\nenv = { \"A=B\" = \"1\" }");
        assert!(e.contains("executors.a.env"), "{e}");
        let e = err("[a]\nprotocol = \"acp\"\ncommand = [\"x\"]\nauth_env = [\"\"]");
        assert!(e.contains("executors.a.auth_env"), "{e}");
    }
}
