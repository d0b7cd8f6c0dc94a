//! The codex executor: one `codex exec --json` process per turn.
//!
//! `codex mcp-server` was removed in codex 0.154, so zwarm drives the CLI the way a person's
//! script would: the first turn is `codex exec --json … -- -`, every later turn is
//! `codex exec --json … resume -- <thread_id> -` in a new process; `-` makes codex read the
//! prompt from stdin, where zwarm writes it. Two quirks shape this
//! file (see shared/reference/EXECUTORS.md §A):
//! * `exec resume` forgets `-C` and `-s`, so both are passed again, before `resume`, every turn;
//! * `turn.completed.usage` is cumulative for the thread, so it is tagged [`UsageScope::Thread`]
//!   and the session manager stores per-turn differences.
//!
//! The stream's events are typed in [`events`]. A turn never loads zwarm's own MCP server
//! (`-c mcp_servers.zwarm={…enabled=false}`, see [`nested`]).

pub mod config;
mod container;
mod doctor;
pub mod events;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::adapter::Adapter;
use super::api::{
    ConfigKey, DoctorSpec, Executor, ExecutorError, FailureContext, Finding, Launch, LaunchContext,
    StreamParser, TurnPlan,
};
use super::nested;
use crate::config::Config;
use crate::event::{ExecutorEvent, ToolError, UsageScope};

pub use events::CodexParser;

/// The codex executor.
pub struct Codex;

/// Flags zwarm passes to `codex exec`.
pub const FLAGS: &[&str] = &["--json", "-C", "-s", "--skip-git-repo-check", "-o", "-c"];

/// `[codex]` as the key table defines it ([`config::key_defs`]).
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
    pub const Codex: Adapter = Adapter::registered(config::NAME);
}

impl Executor for Codex {
    fn name(&self) -> &'static str {
        config::NAME
    }
    fn package(&self) -> &'static str {
        "@openai/codex"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["codex_mcp", "codex-mcp"]
    }
    fn provider(&self) -> &'static str {
        "openai"
    }
    fn usage_scope(&self) -> UsageScope {
        UsageScope::Thread
    }
    fn reports_cost(&self) -> bool {
        false
    }
    fn last_message_authoritative(&self) -> bool {
        // The -o file holds the final message even when the JSONL stream lost it
        // (openai/codex#19689).
        true
    }
    fn stderr_banner(&self) -> Option<&'static str> {
        // `codex exec` says so on every turn, as its prompt comes on stdin.
        Some("Reading prompt from stdin...\n")
    }
    fn resolve(&self, cfg: &Config) -> Result<PathBuf, ExecutorError> {
        let found = super::binary::resolve_binary(
            cfg.codex.binary.as_deref(),
            "codex",
            "codex",
            "@openai/codex",
            "ZWARM_CODEX_BIN",
            "codex.binary",
        )?;
        // npm installs a Node wrapper (`bin/codex.js`) that spawns the native binary; calling
        // the native binary directly saves a ~45 MB Node process per turn and keeps signals
        // direct.
        Ok(super::binary::native_codex_for(&found).unwrap_or(found))
    }
    fn launch(
        &self,
        cfg: &Config,
        plan: &TurnPlan,
        ctx: &LaunchContext,
    ) -> Result<Launch, ExecutorError> {
        let program = self.resolve(cfg)?;
        if !SANDBOX_MODES.contains(&cfg.codex.sandbox.as_str()) {
            return Err(ExecutorError::Misconfigured(format!(
                "codex.sandbox is `{}`; use one of {}",
                cfg.codex.sandbox,
                SANDBOX_MODES.join(", ")
            )));
        }
        let overrides = nested::codex_overrides();
        let args = build_args(
            plan,
            &CodexSettings {
                sandbox: &cfg.codex.sandbox,
                model: ctx.model.as_deref().or(cfg.codex.model.as_deref()),
                extra_args: &cfg.codex.extra_args,
                last_message_file: &ctx.scratch,
                mcp_overrides: &overrides,
            },
        );
        Ok(Launch {
            program,
            args,
            cwd: plan.working_dir.clone(),
            env_set: vec![],
            // Backtraces leak into codex's error messages (EXECUTORS.md §A.3).
            env_remove: vec!["RUST_BACKTRACE".into()],
            stdin: Some(plan.prompt.clone().into_bytes()),
            // The last message (`-o`).
            read_back: vec![ctx.scratch.clone()],
            label: String::new(),
        })
    }
    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(CodexParser)
    }
    fn parse_stderr_line(&self, line: &str) -> Option<ExecutorEvent> {
        parse_stderr_line(line)
    }
    fn explain_failure(&self, text: &str, s: FailureContext<'_>) -> Option<String> {
        text.contains("no rollout found").then(|| {
            format!(
                " codex could not resume thread {}: its rollout is gone from CODEX_HOME. Start a new session with delegate.",
                s.native_id
            )
        })
    }
    fn doctor_spec(&self) -> DoctorSpec {
        DoctorSpec {
            tested: ("0.169.0", "0.171.x"),
            help_args: &["exec", "--help"],
            flags: FLAGS,
        }
    }
    fn doctor_auth(&self, program: &Path) -> Finding {
        doctor::auth(program)
    }
    fn doctor_sandbox(&self, program: &Path, cfg: &Config) -> Finding {
        doctor::sandbox(program, &cfg.codex.sandbox)
    }
    fn host_registrations(&self) -> Vec<String> {
        nested::codex_registrations()
    }
    fn config_section(&self) -> (&'static str, &'static [ConfigKey]) {
        (config::NAME, config_keys())
    }
    fn portable(&self) -> crate::executor::Portable {
        container::portable()
    }
}

/// Sandbox modes `codex exec -s` accepts.
pub const SANDBOX_MODES: &[&str] = &["read-only", "workspace-write", "danger-full-access"];

pub struct CodexSettings<'a> {
    pub sandbox: &'a str,
    pub model: Option<&'a str>,
    pub extra_args: &'a [String],
    /// Where codex writes the final message (`-o`): the fallback when the JSONL drops it.
    pub last_message_file: &'a Path,
    /// `-c` settings that keep zwarm's own MCP server out of the turn ([`nested::codex_overrides`]).
    pub mcp_overrides: &'a [String],
}

/// Arguments after the binary name.
pub fn build_args(plan: &TurnPlan, s: &CodexSettings) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "exec".into(),
        "--json".into(),
        "--skip-git-repo-check".into(),
        "-C".into(),
        plan.working_dir.as_os_str().to_owned(),
        "-s".into(),
        s.sandbox.into(),
        "-o".into(),
        s.last_message_file.as_os_str().to_owned(),
    ];
    if let Some(m) = s.model {
        args.push("-m".into());
        args.push(m.into());
    }
    for a in s.extra_args {
        args.push(a.into());
    }
    // After the user's extra arguments, so no setting there brings zwarm back into the turn.
    for a in s.mcp_overrides {
        args.push(a.into());
    }
    // The prompt is read from stdin (`-`), never from argv: no size limit, not visible in
    // /proc/<pid>/cmdline. Everything after `--` is positional, so neither the thread id nor
    // `-` can be read as a flag.
    if let Some(thread) = &plan.resume_id {
        args.push("resume".into());
        args.push("--".into());
        args.push(thread.into());
    } else {
        args.push("--".into());
    }
    args.push("-".into());
    args
}

/// `/bin/bash -lc 'echo hi'` → `echo hi` (codex wraps every command in a login shell). The
/// script is unquoted exactly as the shell would (`'\''` and `'"'"'` included); anything that
/// is not a single shell word after `-lc`/`-c` is returned unchanged.
pub(crate) fn unwrap_shell(cmd: &str) -> String {
    for prefix in [
        "/bin/bash -lc ",
        "bash -lc ",
        "/bin/sh -c ",
        "/bin/zsh -lc ",
    ] {
        if let Some(rest) = cmd.strip_prefix(prefix) {
            return single_shell_word(rest.trim()).unwrap_or_else(|| cmd.to_string());
        }
    }
    cmd.to_string()
}

/// The value of `s` if it is exactly one shell word (quotes removed, nothing expanded).
fn single_shell_word(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '\'' => loop {
                match it.next()? {
                    '\'' => break,
                    ch => out.push(ch),
                }
            },
            '"' => loop {
                match it.next()? {
                    '"' => break,
                    '\\' => match it.next()? {
                        ch @ ('$' | '`' | '"' | '\\') => out.push(ch),
                        '\n' => {}
                        ch => {
                            out.push('\\');
                            out.push(ch);
                        }
                    },
                    ch => out.push(ch),
                }
            },
            '\\' => match it.next() {
                Some('\n') | None => {}
                Some(ch) => out.push(ch),
            },
            c if c.is_whitespace() => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// What codex's stderr says about a refused or failed tool call. `codex exec --json` emits no
/// event at all for a command refused by the approval policy, a patch rejected by the sandbox
/// or a patch that does not apply (0.169 and 0.171 alike); the model gets the refusal as the
/// tool's output, and codex logs it on stderr as
/// `<time> ERROR codex_core::tools::router: error=<message>`. The input is not in that line.
pub fn parse_stderr_line(line: &str) -> Option<ExecutorEvent> {
    const MARK: &str = " ERROR codex_core::tools::router: error=";
    let message = line[line.find(MARK)? + MARK.len()..].trim();
    if message.is_empty() {
        return None;
    }
    let tool = if message.starts_with("patch rejected") || message.starts_with("apply_patch") {
        "apply_patch".to_string()
    } else if message.contains("reject command") || message.starts_with("exec_command") {
        "exec_command".to_string()
    } else if let Some(name) = message.strip_prefix("unsupported call: ") {
        crate::text::one_line(name, 80)
    } else {
        "tool".to_string()
    };
    Some(ExecutorEvent::ToolFailed(ToolError::new(
        tool,
        &Value::Null,
        message,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_router_errors_are_tool_errors() {
        // Verbatim lines from codex 0.169.0 and 0.171.0 (read-only sandbox, approval never).
        let cases = [
            (
                "2026-12-01T07:17:02.781165Z ERROR codex_core::tools::router: error=patch rejected: writing is blocked by read-only sandbox; rejected by user approval settings",
                "apply_patch",
            ),
            (
                "2026-12-01T07:17:02.808151Z ERROR codex_core::tools::router: error=approval policy is Never; reject command — you cannot ask for escalated permissions if the approval policy is Never",
                "exec_command",
            ),
            (
                "2026-12-01T07:17:02.832756Z ERROR codex_core::tools::router: error=apply_patch verification failed: Failed to read file to update /w/nothere.py: No such file or directory (os error 2)",
                "apply_patch",
            ),
        ];
        for (line, tool) in cases {
            match parse_stderr_line(line) {
                Some(ExecutorEvent::ToolFailed(e)) => {
                    assert_eq!(e.tool, tool, "{line}");
                    assert!(line.ends_with(&e.message), "{e:?}");
                    assert_eq!(e.input, "");
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        for line in [
            "Reading additional input from stdin...",
            "WARNING: proceeding, even though we could not create PATH aliases",
            "2026-12-01T07:17:02Z ERROR codex_core::tools::router: error=",
        ] {
            assert_eq!(parse_stderr_line(line), None, "{line}");
        }
    }

    #[test]
    fn unwraps_login_shell() {
        assert_eq!(unwrap_shell("/bin/bash -lc 'ls -la'"), "ls -la");
        assert_eq!(unwrap_shell("/bin/bash -lc 'echo '\\''x'\\'''"), "echo 'x'");
        assert_eq!(unwrap_shell("python x.py"), "python x.py");
        assert_eq!(
            unwrap_shell("/bin/bash -lc 'rm -rf '\"'\"'/'\"'\"''"),
            "rm -rf '/'"
        );
        assert_eq!(
            unwrap_shell("/bin/bash -lc \"echo \\\"$HOME\\\"\""),
            "echo \"$HOME\""
        );
        assert_eq!(unwrap_shell("/bin/bash -lc ls"), "ls");
        // Not one word: left as codex reported it (the pattern watcher parses it whole).
        assert_eq!(
            unwrap_shell("/bin/bash -lc echo hi"),
            "/bin/bash -lc echo hi"
        );
        assert_eq!(
            unwrap_shell("/bin/bash -lc 'unterminated"),
            "/bin/bash -lc 'unterminated"
        );
    }

    #[test]
    fn resume_repeats_cwd_and_sandbox_before_resume() {
        let plan = TurnPlan {
            working_dir: "/w".into(),
            prompt: "-next".into(),
            resume_id: Some("T1".into()),
        };
        let args: Vec<String> = build_args(
            &plan,
            &CodexSettings {
                sandbox: "workspace-write",
                model: Some("gpt-5.5"),
                extra_args: &[],
                last_message_file: Path::new("/tmp/last"),
                mcp_overrides: &[],
            },
        )
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        let resume = args.iter().position(|a| a == "resume").unwrap();
        let cd = args.iter().position(|a| a == "-C").unwrap();
        let sb = args.iter().position(|a| a == "-s").unwrap();
        assert!(cd < resume && sb < resume);
        assert_eq!(&args[resume..], ["resume", "--", "T1", "-"]);
        assert!(!args.iter().any(|a| a.contains("next")), "prompt in argv");
    }

    #[test]
    fn first_turn_reads_the_prompt_from_stdin() {
        let plan = TurnPlan {
            working_dir: "/w".into(),
            prompt: "do it".into(),
            resume_id: None,
        };
        let args: Vec<String> = build_args(
            &plan,
            &CodexSettings {
                sandbox: "read-only",
                model: None,
                extra_args: &[],
                last_message_file: Path::new("/tmp/last"),
                mcp_overrides: &[],
            },
        )
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        assert_eq!(&args[args.len() - 2..], ["--", "-"]);
        assert!(!args.iter().any(|a| a.contains("do it")));
    }
}
