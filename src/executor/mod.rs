//! Executors: how to run one turn of a coding-agent CLI and read what it says.
//!
//! An executor turns a [`TurnPlan`] (working dir, prompt, native id to resume) into a
//! [`ProcessSpec`] and parses the process's stdout lines into [`ExecutorEvent`]s. It knows
//! nothing about MCP, sessions or storage, so the same code can serve a future human CLI.

pub mod claude;
pub mod codex;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::event::ExecutorEvent;
use crate::process::ProcessSpec;

pub use crate::model::Adapter;

/// What one turn should do.
#[derive(Debug, Clone)]
pub struct TurnPlan {
    pub working_dir: PathBuf,
    pub prompt: String,
    /// The native thread/session id to continue, if this is not the first turn.
    pub resume_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(
        "the `{cli}` CLI was not found (looked for `{binary}` on PATH). Install it with `npm install -g {package}`, or point zwarm at it with {env} or `{key}` in the config."
    )]
    NotInstalled {
        cli: &'static str,
        binary: String,
        package: &'static str,
        env: &'static str,
        key: &'static str,
    },
    #[error("{0}")]
    Misconfigured(String),
}

/// A parser for one executor's stdout, fresh for every turn.
pub enum Parser {
    Codex(codex::CodexParser),
    Claude(claude::ClaudeParser),
}

impl Parser {
    pub fn new(adapter: Adapter) -> Parser {
        match adapter {
            Adapter::Codex => Parser::Codex(codex::CodexParser),
            Adapter::Claude => Parser::Claude(claude::ClaudeParser::default()),
        }
    }

    pub fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        match self {
            Parser::Codex(p) => p.parse_line(line),
            Parser::Claude(p) => p.parse_line(line),
        }
    }
}

/// Build the process for one turn. `scratch` is a per-turn file path the executor may use
/// (codex writes its last message there).
pub fn build_process(
    adapter: Adapter,
    cfg: &Config,
    plan: &TurnPlan,
    model: Option<&str>,
    scratch: &Path,
) -> Result<ProcessSpec, ExecutorError> {
    match adapter {
        Adapter::Codex => {
            let program = resolve_codex(cfg)?;
            if !codex::SANDBOX_MODES.contains(&cfg.codex.sandbox.as_str()) {
                return Err(ExecutorError::Misconfigured(format!(
                    "codex.sandbox is `{}`; use one of {}",
                    cfg.codex.sandbox,
                    codex::SANDBOX_MODES.join(", ")
                )));
            }
            let args = codex::build_args(
                plan,
                &codex::CodexSettings {
                    sandbox: &cfg.codex.sandbox,
                    model: model.or(cfg.codex.model.as_deref()),
                    extra_args: &cfg.codex.extra_args,
                    last_message_file: scratch,
                },
            );
            Ok(ProcessSpec {
                program,
                args,
                cwd: plan.working_dir.clone(),
                env_set: vec![],
                // Backtraces leak into codex's error messages (EXECUTORS.md §A.3).
                env_remove: vec!["RUST_BACKTRACE".into()],
            })
        }
        Adapter::Claude => {
            let program = resolve_binary(
                cfg.claude.binary.as_deref(),
                "claude",
                "claude",
                "@anthropic-ai/claude-code",
                "ZWARM_CLAUDE_BIN",
                "claude.binary",
            )?;
            let mode = cfg.claude.permission_mode.as_str();
            if !claude::PERMISSION_MODES.contains(&mode) {
                return Err(ExecutorError::Misconfigured(format!(
                    "claude.permission_mode is `{mode}`; use one of {}",
                    claude::PERMISSION_MODES.join(", ")
                )));
            }
            if mode == "bypassPermissions"
                && is_root()
                && std::env::var("IS_SANDBOX").as_deref() != Ok("1")
            {
                return Err(ExecutorError::Misconfigured(
                    "claude.permission_mode is bypassPermissions and zwarm runs as root: claude refuses that mode as root unless the environment has IS_SANDBOX=1 (exactly `1`). Only inside a disposable sandbox or container, start zwarm with IS_SANDBOX=1; otherwise use permission_mode acceptEdits and list extra tools in claude.allowed_tools.".into(),
                ));
            }
            let args = claude::build_args(
                plan,
                &claude::ClaudeSettings {
                    permission_mode: mode,
                    model: model.or(cfg.claude.model.as_deref()),
                    max_turns: cfg.claude.max_turns,
                    allowed_tools: &cfg.claude.allowed_tools,
                    append_system_prompt: cfg.claude.append_system_prompt.as_deref(),
                    extra_args: &cfg.claude.extra_args,
                },
            );
            Ok(ProcessSpec {
                program,
                args,
                cwd: plan.working_dir.clone(),
                env_set: vec![],
                // claude refuses to start nested inside another Claude Code session.
                env_remove: vec!["CLAUDECODE".into()],
            })
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn resolve_codex(cfg: &Config) -> Result<PathBuf, ExecutorError> {
    let found = resolve_binary(
        cfg.codex.binary.as_deref(),
        "codex",
        "codex",
        "@openai/codex",
        "ZWARM_CODEX_BIN",
        "codex.binary",
    )?;
    // npm installs a Node wrapper (`bin/codex.js`) that spawns the native binary; calling the
    // native binary directly saves a ~45 MB Node process per turn and keeps signals direct.
    Ok(native_codex_for(&found).unwrap_or(found))
}

/// Given the npm wrapper `…/node_modules/@openai/codex/bin/codex.js`, find the native binary
/// shipped in the platform package next to it.
pub fn native_codex_for(wrapper: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(wrapper).ok()?;
    if real.extension().and_then(|e| e.to_str()) != Some("js") {
        return None;
    }
    let pkg = real.parent()?.parent()?; // …/@openai/codex
    let (plat, triple) = match std::env::consts::ARCH {
        "x86_64" => ("codex-linux-x64", "x86_64-unknown-linux-musl"),
        "aarch64" => ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
        _ => return None,
    };
    let candidates = [
        pkg.parent()?.join(plat),
        pkg.join("node_modules").join("@openai").join(plat),
    ];
    candidates
        .iter()
        .map(|c| c.join("vendor").join(triple).join("bin").join("codex"))
        .find(|p| p.is_file())
}

fn resolve_binary(
    configured: Option<&Path>,
    default_name: &str,
    cli: &'static str,
    package: &'static str,
    env: &'static str,
    key: &'static str,
) -> Result<PathBuf, ExecutorError> {
    let wanted = configured.unwrap_or_else(|| Path::new(default_name));
    which::which(wanted).map_err(|_| ExecutorError::NotInstalled {
        cli,
        binary: wanted.display().to_string(),
        package,
        env,
        key,
    })
}
