//! Executors: how to run one turn of a coding-agent CLI and read what it says.
//!
//! Each executor is one module (`codex/`, `claude/`, `acp.rs` for the ACP agents) implementing
//! [`Executor`]: its name, what to launch for a turn ([`Launch`]: argv, environment, stdin,
//! files to read back), a typed stream parser ([`StreamParser`]), how it resumes, how its
//! failures are explained, its usage and cost semantics, its doctor checks and its config
//! section (`<name>/config.rs`, a leaf the configuration reads). [`REGISTRY`] (`registry.rs`)
//! lists them, then the executors the configuration declares (`[executors.NAME]`,
//! `declared.rs`); adding an executor is its module plus one line there. An [`Adapter`] is a
//! registered executor's name: nothing else names one.
//! Executors know nothing about MCP, sessions or storage.

pub mod acp;
mod adapter;
mod api;
pub mod binary;
pub mod claude;
pub mod codex;
mod declared;
pub mod nested;
pub mod numbers;
pub mod portable;
pub mod probe;
mod registry;

use std::path::Path;

use crate::config::Config;
use crate::event::ExecutorEvent;

pub use adapter::Adapter;
pub use api::{
    ConfigKey, DoctorSpec, Executor, ExecutorError, FailureContext, Finding, Health, Launch,
    LaunchContext, StreamParser, TurnPlan,
};
pub use binary::native_codex_for;
pub use nested::TURN_ENV;
pub use portable::{ImageRecipe, Portable, StateDir};
pub use registry::{REGISTRY, Registry, all, by_name, check_config, get, names_for_humans};

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

/// What to start for one turn ([`Executor::launch`]) after the checks every executor shares:
/// the prompt ([`check_prompt`] with `max_task_bytes`; it goes to stdin, never argv), the
/// native id to resume ([`validate_native_id`]), and the files to read back (created empty,
/// never followed through a symlink; the scratch file the caller made is not made again). The
/// turn is marked with [`TURN_ENV`] (the session id). The engine runs the same dry run at
/// delegate, so a missing CLI or a bad setting is refused up front. The runner starts the
/// result; the engine labels it.
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
    for path in launch.read_back.iter().filter(|p| **p != ctx.scratch) {
        nested::prepare_read_back(path)?;
    }
    launch.env_set.retain(|(k, _)| k != TURN_ENV);
    launch.env_set.push((
        TURN_ENV.into(),
        ctx.session_id.clone().unwrap_or_else(|| "1".into()),
    ));
    Ok(launch)
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

/// [`read_back`], and the file emptied (kept in place for the next turn).
pub fn take_read_back(path: &Path, max: usize) -> Option<String> {
    nested::take_read_back(path, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_adapter_has_one_executor() {
        for a in Adapter::all() {
            assert_eq!(all().filter(|e| e.adapter() == a).count(), 1);
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
