//! The claude executor: one `claude -p --output-format stream-json --verbose` process per turn.
//!
//! Facts that shape this file (shared/reference/EXECUTORS.md §B):
//! * `--resume <session_id>` only finds the conversation from the cwd it was created in, so
//!   every turn runs in the session's working directory;
//! * `--allowedTools` and friends are variadic, so every list flag is written `--flag=value`;
//!   the prompt is not an argument at all: `claude -p` reads it from stdin;
//! * an API error is reported as `result.subtype:"success"` with `is_error:true`, and denied
//!   tools as an ordinary success with `permission_denials` — the exit code says little;
//! * `result.usage` and `total_cost_usd` count only this invocation ([`UsageScope::Invocation`]);
//! * a turn loads no MCP server but the ones the user allows executors (`--strict-mcp-config`),
//!   so never zwarm's own ([`nested`]).
//!
//! The stream's events are typed in [`events`].

pub mod config;
mod container;
mod doctor;
pub mod events;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::adapter::Adapter;
use super::api::{
    ConfigKey, DoctorSpec, Executor, ExecutorError, FailureContext, Finding, Health, Launch,
    LaunchContext, StreamParser, TurnPlan,
};
use super::nested;
use crate::config::Config;
use crate::event::{ToolError, UsageScope};

pub use events::ClaudeParser;
use events::PendingTool;

/// The claude executor.
pub struct Claude;

/// Flags zwarm passes to `claude`.
pub const FLAGS: &[&str] = &[
    "-p",
    "--output-format",
    "--verbose",
    "--permission-mode",
    "--resume",
    "--strict-mcp-config",
    "--mcp-config",
];

/// `[claude]` as the key table defines it ([`config::key_defs`]).
fn config_keys() -> &'static [ConfigKey] {
    static KEYS: std::sync::OnceLock<Vec<ConfigKey>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut defs = Vec::new();
        config::key_defs(&mut defs);
        ConfigKey::section(config::NAME, &defs)
    })
}

impl Adapter {
    /// This executor's adapter (a name kept for code written when adapters were a closed
    /// enum; new code uses [`Adapter::parse`]).
    #[allow(non_upper_case_globals)]
    pub const Claude: Adapter = Adapter::registered(config::NAME);
}

impl Executor for Claude {
    fn name(&self) -> &'static str {
        config::NAME
    }
    fn package(&self) -> &'static str {
        "@anthropic-ai/claude-code"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["claude_code", "claude-code"]
    }
    fn provider(&self) -> &'static str {
        "anthropic"
    }
    fn usage_scope(&self) -> UsageScope {
        UsageScope::Invocation
    }
    fn reports_cost(&self) -> bool {
        true
    }
    fn resolve(&self, cfg: &Config) -> Result<PathBuf, ExecutorError> {
        super::binary::resolve_binary(
            cfg.claude.binary.as_deref(),
            "claude",
            "claude",
            "@anthropic-ai/claude-code",
            "ZWARM_CLAUDE_BIN",
            "claude.binary",
        )
    }
    fn launch(
        &self,
        cfg: &Config,
        plan: &TurnPlan,
        ctx: &LaunchContext,
    ) -> Result<Launch, ExecutorError> {
        let program = self.resolve(cfg)?;
        let mode = cfg.claude.permission_mode.as_str();
        if !PERMISSION_MODES.contains(&mode) {
            return Err(ExecutorError::Misconfigured(format!(
                "claude.permission_mode is `{mode}`; use one of {}",
                PERMISSION_MODES.join(", ")
            )));
        }
        // The container runner sets IS_SANDBOX=1 inside its containers: there the container is
        // the boundary (docs/containers.md).
        if mode == "bypassPermissions"
            && is_root()
            && cfg.runner.kind != crate::runner::config::RunnerKind::Container
            && std::env::var("IS_SANDBOX").as_deref() != Ok("1")
        {
            return Err(ExecutorError::Misconfigured(
                "claude.permission_mode is bypassPermissions and zwarm runs as root: claude refuses that mode as root unless the environment has IS_SANDBOX=1 (exactly `1`). Only inside a disposable sandbox or container, start zwarm with IS_SANDBOX=1; otherwise use permission_mode acceptEdits and list extra tools in claude.allowed_tools.".into(),
            ));
        }
        let mcp_config = nested::claude_allowed_config(&ctx.allowed_mcp_servers);
        let args = build_args(
            plan,
            &ClaudeSettings {
                permission_mode: mode,
                model: ctx.model.as_deref().or(cfg.claude.model.as_deref()),
                max_turns: cfg.claude.max_turns,
                allowed_tools: &cfg.claude.allowed_tools,
                append_system_prompt: cfg.claude.append_system_prompt.as_deref(),
                extra_args: &cfg.claude.extra_args,
                mcp_config: &mcp_config,
            },
        );
        Ok(Launch {
            program,
            args,
            cwd: plan.working_dir.clone(),
            env_set: vec![],
            // claude refuses to start nested inside another Claude Code session.
            env_remove: vec!["CLAUDECODE".into()],
            stdin: Some(plan.prompt.clone().into_bytes()),
            read_back: vec![],
            label: String::new(),
        })
    }
    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(ClaudeParser::default())
    }
    fn explain_failure(&self, text: &str, s: FailureContext<'_>) -> Option<String> {
        if text.contains("No conversation found") {
            return Some(format!(
                " claude could not resume its session {}: it finds conversations only from the directory they started in ({}), and the transcript may have been removed. Start a new session with delegate.",
                s.native_id, s.working_dir
            ));
        }
        text.contains("cannot be used with root/sudo privileges")
            .then(|| {
                " claude refuses bypassPermissions as root unless IS_SANDBOX=1 is set for zwarm."
                    .to_string()
            })
    }
    fn doctor_spec(&self) -> DoctorSpec {
        DoctorSpec {
            tested: ("2.1.197", "2.1.332"),
            help_args: &["--help"],
            flags: FLAGS,
        }
    }
    fn doctor_auth(&self, _program: &Path) -> Finding {
        doctor::auth()
    }
    fn doctor_sandbox(&self, _program: &Path, cfg: &Config) -> Finding {
        let mode = cfg.claude.permission_mode.as_str();
        if mode == "bypassPermissions" {
            Finding::new(Health::Warn, "permission mode bypassPermissions: claude runs every tool without asking, and its Bash tool has no OS sandbox")
                .fix("use it only inside a disposable container or VM")
        } else {
            Finding::new(
                Health::Ok,
                format!(
                    "permission mode {mode} (claude's Bash tool has no OS sandbox; its permission checks apply)"
                ),
            )
        }
    }
    fn host_registrations(&self) -> Vec<String> {
        let project = std::env::current_dir().ok();
        nested::claude_registrations(project.as_deref())
    }
    fn config_section(&self) -> (&'static str, &'static [ConfigKey]) {
        (config::NAME, config_keys())
    }
    fn portable(&self) -> crate::executor::Portable {
        container::portable()
    }
}

/// `--permission-mode` values zwarm accepts in `claude.permission_mode`. `manual` is what newer
/// Claude Code calls `default`; see [`cli_permission_mode`].
pub const PERMISSION_MODES: &[&str] = &[
    "acceptEdits",
    "auto",
    "bypassPermissions",
    "default",
    "manual",
    "dontAsk",
    "plan",
];

/// The spelling of a permission mode that claude's `--permission-mode` accepts. Claude Code
/// 2.1.197 knows only `default` (`manual` is refused: "argument 'manual' is invalid"); 2.1.332
/// lists `manual` in `--help` but still accepts `default`, and reports either as
/// `permissionMode: "default"`. So `manual` is passed as `default`, which every version takes.
pub fn cli_permission_mode(mode: &str) -> &str {
    match mode {
        "manual" => "default",
        other => other,
    }
}

pub struct ClaudeSettings<'a> {
    pub permission_mode: &'a str,
    pub model: Option<&'a str>,
    pub max_turns: Option<u32>,
    pub allowed_tools: &'a [String],
    pub append_system_prompt: Option<&'a str>,
    pub extra_args: &'a [String],
    /// The only MCP servers the turn may load, as `--mcp-config` JSON ([`nested`]): with
    /// `--strict-mcp-config`, claude ignores every other MCP configuration, zwarm's included.
    pub mcp_config: &'a str,
}

pub fn build_args(plan: &TurnPlan, s: &ClaudeSettings) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-p".into(),
        "--output-format".into(),
        "stream-json".into(),
        "--verbose".into(),
        format!(
            "--permission-mode={}",
            cli_permission_mode(s.permission_mode)
        )
        .into(),
    ];
    if let Some(m) = s.model {
        args.push(format!("--model={m}").into());
    }
    if let Some(n) = s.max_turns {
        args.push(format!("--max-turns={n}").into());
    }
    if !s.allowed_tools.is_empty() {
        args.push(format!("--allowedTools={}", s.allowed_tools.join(",")).into());
    }
    if let Some(p) = s.append_system_prompt {
        args.push("--append-system-prompt".into());
        args.push(p.into());
    }
    if let Some(id) = &plan.resume_id {
        args.push(format!("--resume={id}").into());
    }
    args.push("--strict-mcp-config".into());
    args.push(format!("--mcp-config={}", s.mcp_config).into());
    for a in s.extra_args {
        args.push(a.into());
    }
    // No prompt argument: `claude -p` reads the prompt from stdin, where zwarm writes it (no
    // argv size limit, not visible in /proc/<pid>/cmdline).
    args
}

/// An error tool result as a [`ToolError`], or `None` when it is an ordinary failed command: a
/// Bash command that ran and exited non-zero is reported with its exit code in `commands`. A
/// command that never ran (blocked, refused) or was cut off (timed out) is a tool error, and so
/// is any other tool's error result.
pub(super) fn tool_error(tool: &PendingTool, content: &str) -> Option<ToolError> {
    let message = strip_tool_use_error(content);
    if tool.name == "Bash" && parse_exit_code(message).is_some() && !message.contains("timed out") {
        return None;
    }
    Some(ToolError::new(tool.name.clone(), &tool.input, message))
}

/// Claude wraps some tool errors in `<tool_use_error>…</tool_use_error>`.
fn strip_tool_use_error(content: &str) -> &str {
    let t = content.trim();
    t.strip_prefix("<tool_use_error>")
        .map(|r| r.strip_suffix("</tool_use_error>").unwrap_or(r))
        .unwrap_or(t)
        .trim()
}

/// Claude's failed Bash results start with `Exit code N`.
pub(super) fn parse_exit_code(content: &str) -> Option<i64> {
    let rest = content.trim_start().strip_prefix("Exit code ")?;
    rest.split_whitespace().next()?.parse().ok()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_not_an_argument_and_lists_use_equals() {
        let plan = TurnPlan {
            working_dir: "/w".into(),
            prompt: "--not-a-flag".into(),
            resume_id: Some("S1".into()),
        };
        let tools = vec!["Bash".to_string(), "Write".to_string()];
        let args: Vec<String> = build_args(
            &plan,
            &ClaudeSettings {
                permission_mode: "acceptEdits",
                model: None,
                max_turns: Some(3),
                allowed_tools: &tools,
                append_system_prompt: None,
                extra_args: &[],
                mcp_config: "{}",
            },
        )
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        assert!(args.contains(&"--allowedTools=Bash,Write".to_string()));
        assert!(args.contains(&"--resume=S1".to_string()));
        assert!(args.contains(&"--verbose".to_string()));
        assert!(
            !args.iter().any(|a| a.contains("not-a-flag")),
            "prompt in argv"
        );
    }

    #[test]
    fn manual_is_passed_as_default_which_every_claude_accepts() {
        assert_eq!(cli_permission_mode("manual"), "default");
        for m in PERMISSION_MODES {
            assert_ne!(cli_permission_mode(m), "manual", "{m}");
        }
        let plan = TurnPlan {
            working_dir: "/w".into(),
            prompt: "p".into(),
            resume_id: None,
        };
        let args: Vec<String> = build_args(
            &plan,
            &ClaudeSettings {
                permission_mode: "manual",
                model: None,
                max_turns: None,
                allowed_tools: &[],
                append_system_prompt: None,
                extra_args: &[],
                mcp_config: "{}",
            },
        )
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        assert!(args.contains(&"--permission-mode=default".to_string()));
    }

    #[test]
    fn error_results_become_tool_errors_except_plain_exit_codes() {
        let bash = |c: &str| PendingTool {
            name: "Bash".into(),
            input: serde_json::json!({"command": c}),
        };
        assert_eq!(tool_error(&bash("false"), "Exit code 1\n"), None);
        let e = tool_error(
            &bash("sleep 61"),
            "Exit code 143\nCommand timed out after 2s",
        )
        .unwrap();
        assert_eq!((e.tool.as_str(), e.input.as_str()), ("Bash", "sleep 61"));
        let e = tool_error(
            &bash("sleep 61"),
            "<tool_use_error>Blocked: standalone sleep 61.</tool_use_error>",
        )
        .unwrap();
        assert_eq!(e.message, "Blocked: standalone sleep 61.");
    }

    #[test]
    fn exit_code_prefix() {
        assert_eq!(parse_exit_code("Exit code 2\nboom"), Some(2));
        assert_eq!(parse_exit_code("nope"), None);
    }
}
