//! Executors: how to run one turn of a coding-agent CLI and read what it says.
//!
//! An executor turns a [`TurnPlan`] (working dir, prompt, native id to resume) into a
//! [`Launch`] — a [`ProcessSpec`] whose stdin carries the prompt — and parses the process's stdout lines into [`ExecutorEvent`]s. It knows
//! nothing about MCP, sessions or storage, so the same code can serve a future human CLI.

pub mod claude;
pub mod codex;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::event::ExecutorEvent;
use crate::process::{Launch, ProcessSpec};

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

/// Events in one line of an executor's stderr: codex logs refused and failed tool calls there
/// and nowhere in its JSON stream ([`codex::parse_stderr_line`]). Claude reports everything on
/// stdout.
pub fn parse_stderr_line(adapter: Adapter, line: &str) -> Option<ExecutorEvent> {
    match adapter {
        Adapter::Codex => codex::parse_stderr_line(line),
        Adapter::Claude => None,
    }
}

/// Build the process for one turn. `scratch` is a per-turn file path the executor may use
/// (codex writes its last message there). The prompt goes to the process's stdin, never to
/// argv. Checks the prompt ([`check_prompt`] with `max_task_bytes`) and the native id
/// ([`validate_native_id`]); the engine should run both checks itself before starting a turn
/// (with the configured limit), so that a bad prompt is refused up front.
pub fn build_process(
    adapter: Adapter,
    cfg: &Config,
    plan: &TurnPlan,
    model: Option<&str>,
    scratch: &Path,
) -> Result<Launch, ExecutorError> {
    check_prompt(&plan.prompt, cfg.max_task_bytes)?;
    if let Some(id) = &plan.resume_id {
        validate_native_id(id)?;
    }
    let stdin = Some(plan.prompt.clone().into_bytes());
    let spec = build_spec(adapter, cfg, plan, model, scratch)?;
    Ok(Launch { spec, stdin })
}

fn build_spec(
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
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    resolve_binary_in(configured, default_name, &path_var).map_err(|e| match e {
        Lookup::NotFound {
            wanted,
            skipped,
            on_path,
        } => {
            if skipped.is_empty() {
                ExecutorError::NotInstalled {
                    cli,
                    binary: wanted,
                    looked: if on_path {
                        "on PATH (absolute entries only)"
                    } else {
                        "at that path"
                    },
                    package,
                    env,
                    key,
                }
            } else {
                ExecutorError::BadBinary {
                    cli,
                    path: wanted,
                    problem: format!(
                        "was not found as an executable on PATH (ignored: {})",
                        skipped.join("; ")
                    ),
                    fix: format!(
                        "Install it with `npm install -g {package}`, put its directory on PATH as an absolute path, or configure the absolute path of the executable"
                    ),
                    env,
                    key,
                }
            }
        }
        Lookup::Bad { path, problem, fix } => ExecutorError::BadBinary {
            cli,
            path,
            problem,
            fix,
            env,
            key,
        },
    })
}

/// Why a binary lookup failed.
#[derive(Debug, PartialEq)]
enum Lookup {
    /// No executable of that name; `skipped` lists candidates that were passed over and why.
    NotFound {
        wanted: String,
        skipped: Vec<String>,
        /// Looked up on PATH (rather than a configured path that does not exist).
        on_path: bool,
    },
    /// A configured path that exists but cannot be run.
    Bad {
        path: String,
        problem: String,
        fix: String,
    },
}

/// Find the executable: a configured path (with a `/`) is used as is (made absolute against
/// the current directory); a bare name is looked up in the absolute entries of `path_var`.
/// Relative and empty PATH entries (which mean the current directory) are ignored, so a file
/// in whatever directory zwarm was started from can never stand in for the CLI.
fn resolve_binary_in(
    configured: Option<&Path>,
    default_name: &str,
    path_var: &std::ffi::OsStr,
) -> Result<PathBuf, Lookup> {
    let wanted = configured.unwrap_or_else(|| Path::new(default_name));
    let shown = wanted.display().to_string();
    if wanted.as_os_str().is_empty() {
        return Err(Lookup::Bad {
            path: shown,
            problem: "is empty".into(),
            fix: "Set it to the executable's absolute path, or remove the setting to use PATH"
                .into(),
        });
    }
    if wanted.components().count() > 1 || wanted.is_absolute() {
        let abs = std::path::absolute(wanted).unwrap_or_else(|_| wanted.to_path_buf());
        return match check_executable(&abs) {
            Ok(()) => Ok(abs),
            Err(Problem::Missing) => Err(Lookup::NotFound {
                wanted: abs.display().to_string(),
                skipped: vec![],
                on_path: false,
            }),
            Err(Problem::Directory) => Err(Lookup::Bad {
                path: abs.display().to_string(),
                problem: "is a directory, not an executable".into(),
                fix: format!(
                    "Point it at the executable file inside, e.g. {}",
                    abs.join("bin").join(default_name).display()
                ),
            }),
            Err(Problem::NotExecutable(mode)) => Err(Lookup::Bad {
                path: abs.display().to_string(),
                problem: format!("is a file that is not executable (mode {mode:o})"),
                fix: format!(
                    "Make it executable (`chmod +x {}`) or point the setting at the real executable",
                    abs.display()
                ),
            }),
        };
    }
    let mut skipped = Vec::new();
    for dir in std::env::split_paths(path_var) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let candidate = dir.join(wanted);
        if !dir.is_absolute() {
            if candidate.exists() {
                skipped.push(format!(
                    "`{}` (relative PATH entry `{}`)",
                    candidate.display(),
                    dir.display()
                ));
            }
            continue;
        }
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Problem::Missing) => {}
            Err(Problem::Directory) => {
                skipped.push(format!("`{}` (a directory)", candidate.display()))
            }
            Err(Problem::NotExecutable(mode)) => skipped.push(format!(
                "`{}` (not executable, mode {mode:o})",
                candidate.display()
            )),
        }
    }
    Err(Lookup::NotFound {
        wanted: shown,
        skipped,
        on_path: true,
    })
}

enum Problem {
    Missing,
    Directory,
    NotExecutable(u32),
}

fn check_executable(p: &Path) -> Result<(), Problem> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).map_err(|_| Problem::Missing)?;
    if meta.is_dir() {
        return Err(Problem::Directory);
    }
    let mode = meta.permissions().mode();
    if !meta.is_file() || mode & 0o111 == 0 {
        return Err(Problem::NotExecutable(mode & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

    fn touch(p: &Path, mode: u32) {
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn path_lookup_ignores_relative_and_empty_entries() {
        let d = tempfile::tempdir().unwrap();
        let abs = d.path().join("abs");
        std::fs::create_dir(&abs).unwrap();
        touch(&abs.join("codex"), 0o755);
        // A relative entry that would resolve (from the test's cwd) is skipped, and so is an
        // empty one; the absolute entry wins.
        let path = std::ffi::OsString::from(format!("::.:src:{}", abs.display()));
        assert_eq!(
            resolve_binary_in(None, "codex", &path),
            Ok(abs.join("codex"))
        );
        // Only relative entries: not found, and the message says what was ignored.
        let here = std::env::current_dir().unwrap();
        let rel_dir = tempfile::tempdir_in(&here).unwrap();
        touch(&rel_dir.path().join("codex"), 0o755);
        let rel = rel_dir.path().strip_prefix(&here).unwrap();
        let path = std::ffi::OsString::from(format!(":{}", rel.display()));
        match resolve_binary_in(None, "codex", &path) {
            Err(Lookup::NotFound { skipped, .. }) => {
                assert_eq!(skipped.len(), 1, "{skipped:?}");
                assert!(skipped[0].contains("relative PATH entry"), "{skipped:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn path_lookup_skips_non_executables_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir_all(a.join("claude")).unwrap();
        std::fs::create_dir(&b).unwrap();
        touch(&b.join("claude"), 0o644);
        let path = std::env::join_paths([&a, &b]).unwrap();
        match resolve_binary_in(None, "claude", &path) {
            Err(Lookup::NotFound { skipped, .. }) => {
                assert!(skipped[0].contains("a directory"), "{skipped:?}");
                assert!(skipped[1].contains("not executable"), "{skipped:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn configured_directories_and_non_executables_get_their_own_message() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("codex-dir");
        std::fs::create_dir(&dir).unwrap();
        let e = resolve_binary(
            Some(&dir),
            "codex",
            "codex",
            "@openai/codex",
            "ZWARM_CODEX_BIN",
            "codex.binary",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("is a directory") && e.contains("codex.binary"),
            "{e}"
        );
        let file = d.path().join("codex");
        touch(&file, 0o644);
        let e = resolve_binary(
            Some(&file),
            "codex",
            "codex",
            "@openai/codex",
            "ZWARM_CODEX_BIN",
            "codex.binary",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not executable") && e.contains("chmod +x"),
            "{e}"
        );
        let e = resolve_binary(
            Some(&d.path().join("missing")),
            "codex",
            "codex",
            "@openai/codex",
            "ZWARM_CODEX_BIN",
            "codex.binary",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("was not found") && e.contains("at that path"),
            "{e}"
        );
        touch(&file, 0o755);
        assert!(
            resolve_binary(Some(&file), "codex", "codex", "p", "E", "k").is_ok(),
            "an executable file is accepted"
        );
    }
}
