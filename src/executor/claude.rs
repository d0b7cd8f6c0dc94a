//! The claude executor: one `claude -p --output-format stream-json --verbose` process per turn.
//!
//! Facts that shape this file (shared/reference/EXECUTORS.md §B):
//! * `--resume <session_id>` only finds the conversation from the cwd it was created in, so
//!   every turn runs in the session's working directory;
//! * `--allowedTools` and friends are variadic, so every list flag is written `--flag=value`;
//!   the prompt is not an argument at all: `claude -p` reads it from stdin;
//! * an API error is reported as `result.subtype:"success"` with `is_error:true`, and denied
//!   tools as an ordinary success with `permission_denials` — the exit code says little;
//! * `result.usage` and `total_cost_usd` count only this invocation ([`UsageScope::Invocation`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;

use serde_json::Value;

use super::TurnPlan;
use crate::event::{ExecutorEvent, FileChange, PermissionDenial, ToolError, Usage, UsageScope};

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
    for a in s.extra_args {
        args.push(a.into());
    }
    // No prompt argument: `claude -p` reads the prompt from stdin, where zwarm writes it (no
    // argv size limit, not visible in /proc/<pid>/cmdline).
    args
}

/// Line parser for claude's stream-json. Keeps the names of pending tool uses so that a
/// `tool_result` can be reported as the command or file edit it belongs to.
#[derive(Default)]
pub struct ClaudeParser {
    pending: HashMap<String, PendingTool>,
    /// Tool uses claude announced as denied (`system/permission_denied`, newer versions): their
    /// error results are permission denials, reported from `result.permission_denials`.
    denied: HashSet<String>,
}

struct PendingTool {
    name: String,
    input: Value,
}

impl ClaudeParser {
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
        let subtype = v.get("subtype").and_then(Value::as_str).unwrap_or("");
        match (ty, subtype) {
            ("system", "init") => match v.get("session_id").and_then(Value::as_str) {
                Some(id) => vec![ExecutorEvent::SessionStarted {
                    native_id: id.to_string(),
                    model: v.get("model").and_then(Value::as_str).map(str::to_string),
                }],
                None => other("system:init"),
            },
            ("system", "api_retry") => vec![ExecutorEvent::Warning {
                message: format!(
                    "API error {}, retry {} of {}",
                    v.get("error_status")
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    v.get("attempt").map(|s| s.to_string()).unwrap_or_default(),
                    v.get("max_retries")
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ),
            }],
            ("system", "permission_denied") => {
                if let Some(id) = v.get("tool_use_id").and_then(Value::as_str) {
                    self.denied.insert(id.to_string());
                }
                other("system:permission_denied")
            }
            ("assistant", _) => self.assistant(&v),
            ("user", _) => self.user(&v),
            ("result", _) => self.result(&v),
            _ => other(&format!("{ty}:{subtype}")),
        }
    }

    fn assistant(&mut self, v: &Value) -> Vec<ExecutorEvent> {
        let mut out = Vec::new();
        let blocks = v
            .pointer("/message/content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let synthetic = v.pointer("/message/model").and_then(Value::as_str) == Some("<synthetic>");
        for b in blocks {
            match b.get("type").and_then(Value::as_str).unwrap_or("") {
                // The synthetic message that carries an API error is repeated in `result`.
                "text" if !synthetic => out.push(ExecutorEvent::AgentMessage {
                    text: str_field(&b, "text"),
                }),
                "thinking" => out.push(ExecutorEvent::Reasoning {
                    text: str_field(&b, "thinking"),
                }),
                "tool_use" => {
                    let id = str_field(&b, "id");
                    let name = str_field(&b, "name");
                    let input = b.get("input").cloned().unwrap_or(Value::Null);
                    if name == "Bash" {
                        out.push(ExecutorEvent::CommandStarted {
                            id: id.clone(),
                            command: str_field(&input, "command"),
                        });
                    } else {
                        out.push(ExecutorEvent::ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            input: input.clone(),
                        });
                    }
                    self.pending.insert(id, PendingTool { name, input });
                }
                _ => {}
            }
        }
        if out.is_empty() {
            out = other("assistant");
        }
        out
    }

    fn user(&mut self, v: &Value) -> Vec<ExecutorEvent> {
        let mut out = Vec::new();
        let blocks = v
            .pointer("/message/content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let tool_use_result = v.get("tool_use_result");
        for b in blocks {
            if b.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let id = str_field(&b, "tool_use_id");
            let Some(tool) = self.pending.remove(&id) else {
                continue;
            };
            let is_error = b.get("is_error").and_then(Value::as_bool).unwrap_or(false);
            let content = content_text(b.get("content"));
            if is_error
                && !self.denied.remove(&id)
                && let Some(e) = tool_error(&tool, &content)
            {
                out.push(ExecutorEvent::ToolFailed(e));
            }
            match tool.name.as_str() {
                "Bash" => {
                    // A failed command's result starts with `Exit code N`; without that prefix
                    // the command never ran (permission denial, blocked redirect, interrupt),
                    // so there is no exit code to report.
                    let exit_code = if is_error {
                        parse_exit_code(&content)
                    } else {
                        Some(0)
                    };
                    let output = match tool_use_result {
                        Some(Value::Object(o)) => {
                            let so = o.get("stdout").and_then(Value::as_str).unwrap_or("");
                            let se = o.get("stderr").and_then(Value::as_str).unwrap_or("");
                            if se.is_empty() {
                                so.to_string()
                            } else {
                                format!("{so}\n{se}")
                            }
                        }
                        _ => content,
                    };
                    out.push(ExecutorEvent::CommandFinished {
                        id,
                        command: str_field(&tool.input, "command"),
                        exit_code,
                        output,
                        ok: !is_error,
                    });
                }
                "Write" | "Edit" | "MultiEdit" | "NotebookEdit" if !is_error => {
                    let path = tool
                        .input
                        .get("file_path")
                        .or_else(|| tool.input.get("notebook_path"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let kind = match tool_use_result
                        .and_then(|r| r.get("type"))
                        .and_then(Value::as_str)
                    {
                        Some("create") => "add",
                        _ => "update",
                    };
                    out.push(ExecutorEvent::FilesChanged {
                        changes: vec![FileChange {
                            path,
                            kind: kind.into(),
                        }],
                    });
                }
                _ => {}
            }
        }
        if out.is_empty() {
            out = other("user");
        }
        out
    }

    fn result(&mut self, v: &Value) -> Vec<ExecutorEvent> {
        let mut out: Vec<ExecutorEvent> = v
            .get("permission_denials")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|d| {
                        ExecutorEvent::PermissionDenied(PermissionDenial {
                            tool: str_field(d, "tool_name"),
                            input: d.get("tool_input").cloned().unwrap_or(Value::Null),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let usage = v.get("usage").map(parse_usage);
        let cost_usd = v.get("total_cost_usd").and_then(Value::as_f64);
        let is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false);
        let subtype = str_field(v, "subtype");
        let text = v.get("result").and_then(Value::as_str).map(str::to_string);
        if is_error || subtype != "success" {
            let api_status = v
                .get("api_error_status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok());
            let errors: Vec<String> = v
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let message = match (text, errors.is_empty()) {
                (Some(t), _) if !t.is_empty() => t,
                (_, false) => errors.join("; "),
                _ => format!("claude ended the turn with {subtype}"),
            };
            let message = match subtype.as_str() {
                "success" | "" => message,
                other => format!("{other}: {message}"),
            };
            out.push(ExecutorEvent::TurnFailed {
                message,
                api_status,
                usage,
                scope: UsageScope::Invocation,
                cost_usd,
            });
        } else {
            out.push(ExecutorEvent::TurnCompleted {
                usage,
                scope: UsageScope::Invocation,
                cost_usd,
                final_text: text,
            });
        }
        out
    }
}

fn parse_usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("input_tokens")
            .saturating_add(n("cache_creation_input_tokens"))
            .saturating_add(n("cache_read_input_tokens")),
        cached_input_tokens: n("cache_read_input_tokens"),
        output_tokens: n("output_tokens"),
        reasoning_output_tokens: 0,
    }
}

/// `tool_result.content` is a string or an array of text blocks.
fn content_text(c: Option<&Value>) -> String {
    match c {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An error tool result as a [`ToolError`], or `None` when it is an ordinary failed command: a
/// Bash command that ran and exited non-zero is reported with its exit code in `commands`. A
/// command that never ran (blocked, refused) or was cut off (timed out) is a tool error, and so
/// is any other tool's error result.
fn tool_error(tool: &PendingTool, content: &str) -> Option<ToolError> {
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
fn parse_exit_code(content: &str) -> Option<i64> {
    let rest = content.trim_start().strip_prefix("Exit code ")?;
    rest.split_whitespace().next()?.parse().ok()
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
