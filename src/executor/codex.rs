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
//! Lines are parsed into `serde_json::Value` first (web_search items carry a duplicate `"id"`
//! key that a derived struct rejects) and unknown types become [`ExecutorEvent::Other`].

use std::ffi::OsString;
use std::path::Path;

use serde_json::Value;

use super::TurnPlan;
use crate::event::{ExecutorEvent, FileChange, ToolError, Usage, UsageScope};

/// Sandbox modes `codex exec -s` accepts.
pub const SANDBOX_MODES: &[&str] = &["read-only", "workspace-write", "danger-full-access"];

pub struct CodexSettings<'a> {
    pub sandbox: &'a str,
    pub model: Option<&'a str>,
    pub extra_args: &'a [String],
    /// Where codex writes the final message (`-o`): the fallback when the JSONL drops it.
    pub last_message_file: &'a Path,
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

/// Stateless line parser for `codex exec --json`.
#[derive(Default)]
pub struct CodexParser;

impl CodexParser {
    pub fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                return vec![ExecutorEvent::Other {
                    kind: "unparsable".into(),
                }];
            }
        };
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "thread.started" => match v.get("thread_id").and_then(Value::as_str) {
                Some(id) => vec![ExecutorEvent::SessionStarted {
                    native_id: id.to_string(),
                    model: None,
                }],
                None => other(ty),
            },
            "turn.started" => vec![ExecutorEvent::TurnStarted],
            "turn.completed" => vec![ExecutorEvent::TurnCompleted {
                usage: v.get("usage").map(parse_usage),
                scope: UsageScope::Thread,
                cost_usd: None,
                final_text: None,
            }],
            "turn.failed" => {
                let message = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("codex reported turn.failed without a message")
                    .to_string();
                vec![ExecutorEvent::TurnFailed {
                    message,
                    api_status: None,
                    usage: v.get("usage").map(parse_usage),
                    scope: UsageScope::Thread,
                    cost_usd: None,
                }]
            }
            "error" => vec![ExecutorEvent::Warning {
                message: str_field(&v, "message"),
            }],
            "item.started" | "item.updated" | "item.completed" => match v.get("item") {
                Some(item) => parse_item(ty, item),
                None => other(ty),
            },
            _ => other(ty),
        }
    }
}

fn parse_item(phase: &str, item: &Value) -> Vec<ExecutorEvent> {
    let ty = item.get("type").and_then(Value::as_str).unwrap_or("");
    let id = str_field(item, "id");
    let completed = phase == "item.completed";
    match (ty, phase) {
        ("agent_message", "item.completed") => vec![ExecutorEvent::AgentMessage {
            text: str_field(item, "text"),
        }],
        ("reasoning", "item.completed") => vec![ExecutorEvent::Reasoning {
            text: str_field(item, "text"),
        }],
        ("command_execution", "item.started") => vec![ExecutorEvent::CommandStarted {
            id,
            command: unwrap_shell(&str_field(item, "command")),
        }],
        ("command_execution", "item.completed") => {
            let exit_code = item.get("exit_code").and_then(Value::as_i64);
            let status = str_field(item, "status");
            let command = unwrap_shell(&str_field(item, "command"));
            let output = str_field(item, "aggregated_output");
            let mut out = Vec::new();
            // Declined, or failed without running (no exit code): the command never ran, so
            // the orchestrator hears it as a tool error. A non-zero exit is an ordinary failure.
            if status == "declined" || (status == "failed" && exit_code.is_none()) {
                let message = if output.trim().is_empty() {
                    format!("the command was {status}")
                } else {
                    output.clone()
                };
                out.push(ExecutorEvent::ToolFailed(ToolError::new(
                    "exec_command",
                    &Value::String(command.clone()),
                    &message,
                )));
            }
            out.push(ExecutorEvent::CommandFinished {
                id,
                command,
                exit_code,
                output,
                ok: status == "completed" && exit_code.unwrap_or(0) == 0,
            });
            out
        }
        ("mcp_tool_call", "item.completed")
            if item.get("status").and_then(Value::as_str) == Some("failed") =>
        {
            let message = item
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| item.pointer("/result/content").map(content_text))
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "the MCP tool call failed".into());
            vec![ExecutorEvent::ToolFailed(ToolError::new(
                format!(
                    "mcp:{}/{}",
                    str_field(item, "server"),
                    str_field(item, "tool")
                ),
                item.get("arguments").unwrap_or(&Value::Null),
                &message,
            ))]
        }
        ("file_change", "item.completed") => {
            if item.get("status").and_then(Value::as_str) == Some("failed") {
                let paths: Vec<String> = item
                    .get("changes")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|c| str_field(c, "path")).collect())
                    .unwrap_or_default();
                return vec![ExecutorEvent::ToolFailed(ToolError::new(
                    "apply_patch",
                    &Value::String(paths.join(" ")),
                    "the patch failed",
                ))];
            }
            let changes = item
                .get("changes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|c| FileChange {
                            path: str_field(c, "path"),
                            kind: str_field(c, "kind"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![ExecutorEvent::FilesChanged { changes }]
        }
        ("mcp_tool_call", "item.started") => vec![ExecutorEvent::ToolCall {
            id,
            name: format!(
                "mcp:{}/{}",
                str_field(item, "server"),
                str_field(item, "tool")
            ),
            input: item.get("arguments").cloned().unwrap_or(Value::Null),
        }],
        ("web_search", "item.started") => vec![ExecutorEvent::ToolCall {
            id,
            name: "web_search".into(),
            input: item.get("query").cloned().unwrap_or(Value::Null),
        }],
        ("todo_list", "item.started") => vec![ExecutorEvent::ToolCall {
            id,
            name: "plan".into(),
            input: item.get("items").cloned().unwrap_or(Value::Null),
        }],
        ("error", _) if completed => vec![ExecutorEvent::Warning {
            message: str_field(item, "message"),
        }],
        _ => other(&format!("{phase}:{ty}")),
    }
}

/// `/bin/bash -lc 'echo hi'` → `echo hi` (codex wraps every command in a login shell). The
/// script is unquoted exactly as the shell would (`'\''` and `'"'"'` included); anything that
/// is not a single shell word after `-lc`/`-c` is returned unchanged.
fn unwrap_shell(cmd: &str) -> String {
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

/// The text blocks of an MCP result's `content`.
fn content_text(content: &Value) -> String {
    match content {
        Value::Array(a) => a
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
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

fn parse_usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("input_tokens"),
        cached_input_tokens: n("cached_input_tokens"),
        output_tokens: n("output_tokens"),
        reasoning_output_tokens: n("reasoning_output_tokens"),
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn other(kind: &str) -> Vec<ExecutorEvent> {
    vec![ExecutorEvent::Other {
        kind: kind.to_string(),
    }]
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
            },
        )
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        assert_eq!(&args[args.len() - 2..], ["--", "-"]);
        assert!(!args.iter().any(|a| a.contains("do it")));
    }
}
