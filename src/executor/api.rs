//! The executor seam: what an executor is ([`Executor`]), what it launches ([`Launch`]), what it
//! parses ([`StreamParser`]), and what it reports to doctor.

use std::path::{Path, PathBuf};

use super::adapter::Adapter;
use super::portable::{ImageRecipe, Portable};
use crate::config::Config;
use crate::config::schema::{KeyDef, Trust};
use crate::event::{ExecutorEvent, UsageScope};

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
    /// A file the executor may have the CLI write (codex's `-o`), in a directory zwarm
    /// created; name it in [`Launch::read_back`] to have it handed back. The caller makes it
    /// empty (lent by the store for this turn, [`crate::store::scratch`]) or passes
    /// `/dev/null` (a dry run); [`super::build_launch`] prepares every other read-back file.
    pub scratch: PathBuf,
    /// The session's own folder under the state dir (made before the turn; it outlives a
    /// restart, and every runner gives it to the turn): where an executor keeps files of its
    /// own across the session's turns (ACP's transcript and approval requests). Made only for
    /// an executor that [`Executor::keeps_session_files`]; `None` otherwise and in a dry run.
    pub turn_dir: Option<PathBuf>,
    /// The session whose turn this is: the value of [`super::TURN_ENV`] in the turn's environment.
    pub session_id: Option<String>,
    /// MCP servers (by name, from the user's host configuration) the executor may load. zwarm
    /// itself is never among them ([`super::nested`]).
    pub allowed_mcp_servers: Vec<String>,
}

/// What to start for one turn, independent of where it runs: the runner's input
/// ([`crate::runner::Launch`]). An executor fills everything but `label`, which the engine sets.
pub use crate::runner::Launch;

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

impl ConfigKey {
    /// A section's keys as the key table defines them (`codex.binary` is `binary` of
    /// `codex`): the executor describes its section from the same rules the layers follow.
    pub fn section(section: &str, defs: &[KeyDef]) -> Vec<ConfigKey> {
        defs.iter()
            .filter_map(|d| {
                let key = d.key.strip_prefix(section)?.strip_prefix('.')?;
                Some(ConfigKey {
                    key,
                    doc: d.doc,
                    trusted_only: matches!(d.trust, Trust::TrustedOnly(_)),
                })
            })
            .collect()
    }
}

/// A coding-agent CLI zwarm can run turns of.
pub trait Executor: Send + Sync {
    /// Its name in tools, config, the store and logs (`codex`): its [`Adapter`].
    fn name(&self) -> &'static str;
    /// Its adapter (its name as a value).
    fn adapter(&self) -> Adapter {
        Adapter::registered(self.name())
    }
    /// Other names `delegate` accepts for it (older spellings).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
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
    /// A line the CLI prints first on stderr on every turn, carrying nothing (codex's
    /// `Reading prompt from stdin...`): left out of the turn's stderr log, so a turn that
    /// prints nothing else there makes no stderr file (a file creation is a large part of a
    /// trivial turn's cost). It still reaches the stderr parser and a failure's explanation.
    fn stderr_banner(&self) -> Option<&'static str> {
        None
    }
    /// Whether it keeps files of its own across a session's turns (ACP: the transcript and
    /// approval requests): the engine then makes the session's folder and passes it as
    /// [`LaunchContext::turn_dir`].
    fn keeps_session_files(&self) -> bool {
        false
    }
    /// Whether its turns can stop to ask for a permission (the ACP bridge's approval files in
    /// the turn's folder). Only then does zwarm look for a pending request.
    fn asks_approval(&self) -> bool {
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
    /// Does its sandbox or permission mode work as configured (a setting zwarm refuses is
    /// reported by doctor from [`Executor::launch`]'s error instead).
    fn doctor_sandbox(&self, program: &Path, cfg: &Config) -> Finding;
    /// Host configurations of this CLI that register zwarm as an MCP server: a turn would have
    /// loaded zwarm without zwarm's exclusion ([`super::nested`]).
    fn host_registrations(&self) -> Vec<String>;
    /// Its config section: name and keys.
    fn config_section(&self) -> (&'static str, &'static [ConfigKey]);
    /// What a container or a pod needs to know of it: its state dir, how it goes into an
    /// image, its arguments in a container. Default: a native program on its own, no state
    /// dir, nothing to adjust.
    fn portable(&self) -> Portable {
        Portable {
            state_dir: None,
            image: ImageRecipe {
                package_dirs: &[],
                native_hint: "use a native build of it, or an image with its interpreter (`runner.container.image`)",
                bridge: false,
            },
            container_args: None,
        }
    }
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
