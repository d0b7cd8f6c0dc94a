//! Executors: how to run one turn of a coding-agent CLI and read what it says.
//!
//! Each executor is one module (`codex/`, `claude/`) implementing [`Executor`]: what to launch
//! for a turn ([`Launch`]: argv, environment, stdin, files to read back), a typed stream parser
//! ([`StreamParser`]), how it resumes, how its failures are explained, its usage and cost
//! semantics, its doctor checks and its config section. [`REGISTRY`] lists them; adding an
//! executor is its module plus one line there (and its name in [`Adapter`]). Executors know
//! nothing about MCP, sessions or storage.

pub mod binary;
pub mod claude;
pub mod codex;
pub mod nested;
pub mod numbers;
pub mod probe;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::event::{ExecutorEvent, UsageScope};

pub use crate::model::Adapter;
pub use binary::native_codex_for;
pub use nested::TURN_ENV;

/// Every executor zwarm knows. Adding one: its module, and one line here.
pub static REGISTRY: &[&dyn Executor] = &[&codex::Codex, &claude::Claude];

/// The executor of an adapter.
pub fn get(adapter: Adapter) -> &'static dyn Executor {
    match REGISTRY.iter().find(|e| e.adapter() == adapter) {
        Some(e) => *e,
        // Every Adapter has an entry: the registry test checks it.
        None => REGISTRY[0],
    }
}

/// The executor named `name` (or one of its aliases).
pub fn by_name(name: &str) -> Option<&'static dyn Executor> {
    let a = Adapter::parse(name)?;
    REGISTRY.iter().find(|e| e.adapter() == a).copied()
}

/// What one turn should do.
#[derive(Debug, Clone)]
pub struct TurnPlan {
    pub working_dir: PathBuf,
    pub prompt: String,
    /// The native thread/session id to continue, if this is not the first turn.
    pub resume_id: Option<String>,
}

/// What the engine tells an executor besides the plan.
#[derive(Debug, Clone, Default)]
pub struct LaunchContext {
    /// The model asked for this session (else the executor's configured one).
    pub model: Option<String>,
    /// A per-turn file the executor may have the CLI write (codex's `-o`), in a directory
    /// zwarm created; see [`Launch::read_back`].
    pub scratch: PathBuf,
    /// The session whose turn this is: the value of [`TURN_ENV`] in the turn's environment.
    pub session_id: Option<String>,
    /// MCP servers (by name, from the user's host configuration) the executor may load. zwarm
    /// itself is never among them ([`nested`]).
    pub allowed_mcp_servers: Vec<String>,
}

/// A file the CLI writes during the turn that zwarm reads back afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBack {
    /// What it holds (`last_message`).
    pub what: &'static str,
    pub path: PathBuf,
}

/// What to start for one turn, independent of where it runs: the runner consumes the
/// command line, environment, working directory and stdin, and hands back the files named in
/// `read_back` after the process ended.
#[derive(Clone, Default)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env_set: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    /// Written to the process's stdin, which is then closed (the prompt: never argv).
    pub stdin: Vec<u8>,
    pub read_back: Vec<ReadBack>,
}

impl std::fmt::Debug for Launch {
    // The input is a prompt: its size, never its text, goes into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("env_set", &self.env_set)
            .field("env_remove", &self.env_remove)
            .field("stdin_bytes", &self.stdin.len())
            .field("read_back", &self.read_back)
            .finish()
    }
}

impl Launch {
    /// The local process form the engine spawns today.
    pub fn into_process(self) -> crate::process::Launch {
        crate::process::Launch {
            spec: crate::process::ProcessSpec {
                program: self.program,
                args: self.args,
                cwd: self.cwd,
                env_set: self.env_set,
                env_remove: self.env_remove,
            },
            stdin: Some(self.stdin),
        }
    }
}

/// A parser for one executor's stdout, fresh for every turn. Unknown or malformed lines become
/// [`ExecutorEvent::Other`]; nothing a CLI prints is fatal to the parser.
pub trait StreamParser: Send {
    fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent>;
}

/// What a session looks like to an executor explaining a failure.
#[derive(Debug, Clone, Copy)]
pub struct FailureContext<'a> {
    pub native_id: &'a str,
    pub working_dir: &'a str,
}

/// How a doctor check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    Warn,
    Fail,
}

/// One doctor finding an executor reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub health: Health,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(health: Health, detail: impl Into<String>) -> Finding {
        Finding {
            health,
            detail: detail.into(),
            fix: None,
        }
    }
    pub fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// What doctor checks of an executor's installation.
#[derive(Debug, Clone, Copy)]
pub struct DoctorSpec {
    /// The versions zwarm's tests cover: lowest, highest (`x` matches any number).
    pub tested: (&'static str, &'static str),
    /// Arguments that print the help listing zwarm's flags.
    pub help_args: &'static [&'static str],
    /// The flags zwarm passes.
    pub flags: &'static [&'static str],
}

/// One key of an executor's config section (`[codex]`, `[claude]`).
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    pub key: &'static str,
    pub doc: &'static str,
    /// Only trusted layers (user config, environment, flags) may set it: it changes the
    /// executor's command line or prompt.
    pub trusted_only: bool,
}

/// A coding-agent CLI zwarm can run turns of.
pub trait Executor: Send + Sync {
    fn adapter(&self) -> Adapter;
    /// Its name in tools, config and logs (`codex`).
    fn name(&self) -> &'static str {
        self.adapter().as_str()
    }
    /// The npm package that installs it.
    fn package(&self) -> &'static str;
    /// The model provider, for telemetry's `gen_ai.system`.
    fn provider(&self) -> &'static str;
    /// Whether its usage reports cover the native thread or only this invocation.
    fn usage_scope(&self) -> UsageScope;
    /// Whether it reports a cost (else the budget watcher prices its tokens).
    fn reports_cost(&self) -> bool;
    /// Whether the read-back last message is the turn's answer even when the stream had one
    /// (codex's JSONL can lose it; its `-o` file does not).
    fn last_message_authoritative(&self) -> bool {
        false
    }
    /// The executable to run, from its config section or PATH.
    fn resolve(&self, cfg: &Config) -> Result<PathBuf, ExecutorError>;
    /// The command line, environment, stdin and read-back files of one turn. Resuming is
    /// `plan.resume_id`: each executor passes it its own way.
    fn launch(
        &self,
        cfg: &Config,
        plan: &TurnPlan,
        ctx: &LaunchContext,
    ) -> Result<Launch, ExecutorError>;
    fn parser(&self) -> Box<dyn StreamParser>;
    /// Events in one line of its stderr (codex logs refused tool calls only there).
    fn parse_stderr_line(&self, _line: &str) -> Option<ExecutorEvent> {
        None
    }
    /// Advice for a failure it is known to report (a lost conversation, a refused mode),
    /// starting with a space.
    fn explain_failure(&self, text: &str, s: FailureContext<'_>) -> Option<String>;
    fn doctor_spec(&self) -> DoctorSpec;
    /// Is there a login or key for it.
    fn doctor_auth(&self, program: &Path) -> Finding;
    /// Does its sandbox or permission mode work as configured. `refused` is why zwarm refuses
    /// the configured setting, if it does.
    fn doctor_sandbox(&self, program: &Path, cfg: &Config) -> Finding;
    /// Host configurations of this CLI that register zwarm as an MCP server: a turn would have
    /// loaded zwarm without zwarm's exclusion ([`nested`]).
    fn host_registrations(&self) -> Vec<String>;
    /// Its config section: name and keys.
    fn config_section(&self) -> (&'static str, &'static [ConfigKey]);
}

/// A parser for one executor's stdout (the registry's parser behind a stable type).
pub struct Parser(Box<dyn StreamParser>);

impl Parser {
    pub fn new(adapter: Adapter) -> Parser {
        Parser(get(adapter).parser())
    }

    pub fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        self.0.parse_line(line)
    }
}

/// Events in one line of an executor's stderr ([`Executor::parse_stderr_line`]).
pub fn parse_stderr_line(adapter: Adapter, line: &str) -> Option<ExecutorEvent> {
    get(adapter).parse_stderr_line(line)
}

/// Advice for a known failure ([`Executor::explain_failure`]).
pub fn explain_failure(adapter: Adapter, text: &str, s: FailureContext<'_>) -> Option<String> {
    get(adapter).explain_failure(text, s)
}

/// Build the process for one turn. `scratch` is a per-turn file path the executor may use
/// (codex writes its last message there). The prompt goes to the process's stdin, never to
/// argv. Checks the prompt ([`check_prompt`] with `max_task_bytes`) and the native id
/// ([`validate_native_id`]); the engine should run both checks itself before starting a turn
/// (with the configured limit), so that a bad prompt is refused up front. The turn is marked
/// with [`TURN_ENV`] (the session id when `scratch` lies in the session's turn directory).
pub fn build_process(
    adapter: Adapter,
    cfg: &Config,
    plan: &TurnPlan,
    model: Option<&str>,
    scratch: &Path,
) -> Result<crate::process::Launch, ExecutorError> {
    let ctx = LaunchContext {
        model: model.map(str::to_string),
        scratch: scratch.to_path_buf(),
        session_id: nested::session_of_scratch(scratch),
        allowed_mcp_servers: vec![],
    };
    let launch = build_launch(adapter, cfg, plan, &ctx)?;
    for r in &launch.read_back {
        nested::prepare_read_back(&r.path)?;
    }
    Ok(launch.into_process())
}

/// [`Executor::launch`] after the checks every executor shares.
pub fn build_launch(
    adapter: Adapter,
    cfg: &Config,
    plan: &TurnPlan,
    ctx: &LaunchContext,
) -> Result<Launch, ExecutorError> {
    check_prompt(&plan.prompt, cfg.max_task_bytes)?;
    if let Some(id) = &plan.resume_id {
        validate_native_id(id)?;
    }
    let mut launch = get(adapter).launch(cfg, plan, ctx)?;
    launch.env_set.retain(|(k, _)| k != TURN_ENV);
    launch.env_set.push((
        TURN_ENV.into(),
        ctx.session_id.clone().unwrap_or_else(|| "1".into()),
    ));
    Ok(launch)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(
        "the `{cli}` CLI was not found (looked for `{binary}` {looked}). Install it with `npm install -g {package}`, or point zwarm at it with {env} or `{key}` in the config."
    )]
    NotInstalled {
        cli: &'static str,
        binary: String,
        /// Where: "on PATH (absolute entries only)", or "at that path".
        looked: &'static str,
        package: &'static str,
        env: &'static str,
        key: &'static str,
    },
    #[error(
        "the `{cli}` binary `{path}` {problem}. {fix} (set with {env} or `{key}` in the config)."
    )]
    BadBinary {
        cli: &'static str,
        path: String,
        problem: String,
        fix: String,
        env: &'static str,
        key: &'static str,
    },
    #[error("{0}")]
    Misconfigured(String),
    #[error(
        "the {what} contains a NUL byte (at byte {at}), which cannot be passed to an executor. Remove it and send the text again."
    )]
    PromptHasNul { what: &'static str, at: usize },
    #[error(
        "the {what} is {bytes} bytes, over the limit of {max} bytes (max_task_bytes). Put the long material in a file in the working directory and refer to it by path, or raise max_task_bytes."
    )]
    PromptTooLarge {
        what: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error(
        "the stored native session id {id:?} is not valid ({why}); zwarm will not pass it to the executor. Start a new session with delegate."
    )]
    BadNativeId { id: String, why: &'static str },
}

pub use crate::config::DEFAULT_MAX_TASK_BYTES;

/// Check a task or message before a turn is started: no NUL bytes (no executor can receive
/// them), at most `max_bytes` bytes (UTF-8). Call it up front, so a bad prompt is refused with
/// this error instead of failing a turn.
pub fn check_prompt(prompt: &str, max_bytes: usize) -> Result<(), ExecutorError> {
    check_text("task", prompt, max_bytes)
}

/// [`check_prompt`] naming what is checked (`"task"`, `"message"`) in the error.
pub fn check_text(what: &'static str, text: &str, max_bytes: usize) -> Result<(), ExecutorError> {
    if let Some(at) = text.bytes().position(|b| b == 0) {
        return Err(ExecutorError::PromptHasNul { what, at });
    }
    if text.len() > max_bytes {
        return Err(ExecutorError::PromptTooLarge {
            what,
            bytes: text.len(),
            max: max_bytes,
        });
    }
    Ok(())
}

/// Check a native thread/session id before it is passed to `codex exec resume` or
/// `claude --resume`: non-empty, at most 256 bytes, not starting with `-` (it would be read as
/// a flag), no whitespace or control characters.
pub fn validate_native_id(id: &str) -> Result<(), ExecutorError> {
    let why = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > 256 {
        Some("it is longer than 256 bytes")
    } else if id.starts_with('-') {
        Some("it starts with `-` and would be read as an option")
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(ExecutorError::BadNativeId {
            id: crate::text::truncate_chars(id, 80),
            why,
        }),
        None => Ok(()),
    }
}

/// The executor's read-back file as zwarm wrote it: opened without following a symlink, a
/// regular file only, at most `max` bytes; `None` when it is missing, empty or not a plain file.
pub fn read_back(path: &Path, max: usize) -> Option<String> {
    nested::read_no_follow(path, max).filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_adapter_has_one_executor() {
        for a in [Adapter::Codex, Adapter::Claude] {
            assert_eq!(REGISTRY.iter().filter(|e| e.adapter() == a).count(), 1);
            assert_eq!(get(a).adapter(), a);
            assert_eq!(by_name(a.as_str()).map(|e| e.adapter()), Some(a));
        }
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn every_turn_is_marked_and_excludes_zwarm() {
        let d = tempfile::tempdir().unwrap();
        for (name, bin) in [("codex", "codex"), ("claude", "claude")] {
            let b = d.path().join(bin);
            std::fs::write(&b, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut cfg = Config::default();
            cfg.codex.binary = Some(d.path().join("codex"));
            cfg.claude.binary = Some(d.path().join("claude"));
            cfg.claude.permission_mode = "acceptEdits".into();
            let plan = TurnPlan {
                working_dir: d.path().into(),
                prompt: "p".into(),
                resume_id: None,
            };
            let ctx = LaunchContext {
                session_id: Some("S".into()),
                scratch: "/dev/null".into(),
                ..Default::default()
            };
            let l = build_launch(by_name(name).unwrap().adapter(), &cfg, &plan, &ctx).unwrap();
            assert!(l.env_set.contains(&(TURN_ENV.into(), "S".into())), "{name}");
            let args: Vec<String> = l
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let excluded = if name == "codex" {
                args.iter()
                    .any(|a| a == "mcp_servers.zwarm={command=\"zwarm\",enabled=false}")
            } else {
                args.iter().any(|a| a == "--strict-mcp-config")
                    && args.iter().any(|a| a == "--mcp-config={\"mcpServers\":{}}")
            };
            assert!(excluded, "{name}: {args:?}");
        }
    }

    #[test]
    fn prompts_with_nul_or_over_the_limit_are_refused_with_the_numbers() {
        assert!(check_prompt("fine", 10).is_ok());
        let e = check_prompt("a\0b", 10).unwrap_err().to_string();
        assert!(e.contains("NUL") && e.contains("byte 1"), "{e}");
        let e = check_prompt(&"x".repeat(11), 10).unwrap_err().to_string();
        assert!(e.contains("11 bytes") && e.contains("10 bytes"), "{e}");
        assert!(e.contains("max_task_bytes") && e.contains("file"), "{e}");
        // The limit counts bytes, not characters.
        assert!(check_prompt("é", 1).is_err());
    }

    #[test]
    fn native_ids_that_could_be_flags_or_split_are_refused() {
        for ok in ["019a0f3e-7c1d-7b52-a9a0-0f3e7c1d7b52", "thread_1", "S1"] {
            assert!(validate_native_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "--resume", "a b", "a\nb", "a\tb", "a\u{7}b"] {
            let e = validate_native_id(bad).unwrap_err().to_string();
            assert!(e.contains("not valid"), "{bad:?}: {e}");
        }
        assert!(validate_native_id(&"a".repeat(300)).is_err());
    }
}
