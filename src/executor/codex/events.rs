//! The events of `codex exec --json`, typed (one JSON object per line, tagged by `type`), and
//! the parser that turns them into zwarm's [`ExecutorEvent`]s.
//!
//! A line is read into a `serde_json::Value` first: `web_search` items carry a duplicate `"id"`
//! key that a derived struct rejects, and the value keeps the last one. Unknown event and item
//! types, and known ones in an unexpected shape, become [`ExecutorEvent::Other`] (kept, never
//! fatal).

use serde::Deserialize;
use serde_json::Value;

use crate::event::{ExecutorEvent, FileChange, ToolError, Usage, UsageScope};
use crate::executor::api::StreamParser;
use crate::executor::numbers::{self, Reported, content_text, other};

/// One line of `codex exec --json`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ThreadEvent {
    #[serde(rename = "thread.started")]
    ThreadStarted { thread_id: String },
    #[serde(rename = "turn.started")]
    TurnStarted,
    #[serde(rename = "turn.completed")]
    TurnCompleted {
        #[serde(default)]
        usage: Option<RawUsage>,
    },
    #[serde(rename = "turn.failed")]
    TurnFailed {
        #[serde(default)]
        error: Option<Message>,
        #[serde(default)]
        usage: Option<RawUsage>,
    },
    /// Top level: retry notices and the final fatal message.
    #[serde(rename = "error")]
    Error {
        #[serde(default)]
        message: String,
    },
    #[serde(rename = "item.started")]
    ItemStarted { item: Value },
    #[serde(rename = "item.updated")]
    ItemUpdated { item: Value },
    #[serde(rename = "item.completed")]
    ItemCompleted { item: Value },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub message: Option<String>,
}

/// `turn.completed.usage`: thread-cumulative counts.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawUsage {
    pub input_tokens: Reported,
    pub cached_input_tokens: Reported,
    pub output_tokens: Reported,
    pub reasoning_output_tokens: Reported,
}

/// The `item` of `item.started`/`item.updated`/`item.completed`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    AgentMessage {
        #[serde(default)]
        text: String,
    },
    Reasoning {
        #[serde(default)]
        text: String,
    },
    CommandExecution {
        #[serde(default)]
        id: String,
        #[serde(default)]
        command: String,
        #[serde(default)]
        aggregated_output: String,
        #[serde(default)]
        exit_code: Option<i64>,
        #[serde(default)]
        status: String,
    },
    FileChange {
        #[serde(default)]
        changes: Vec<Change>,
        #[serde(default)]
        status: String,
    },
    McpToolCall {
        #[serde(default)]
        id: String,
        #[serde(default)]
        server: String,
        #[serde(default)]
        tool: String,
        #[serde(default)]
        arguments: Value,
        #[serde(default)]
        result: Option<McpResult>,
        #[serde(default)]
        error: Option<Message>,
        #[serde(default)]
        status: String,
    },
    WebSearch {
        #[serde(default)]
        id: String,
        #[serde(default)]
        query: Value,
    },
    TodoList {
        #[serde(default)]
        id: String,
        #[serde(default)]
        items: Value,
    },
    /// A non-fatal warning (e.g. model metadata not found).
    Error {
        #[serde(default)]
        message: String,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct McpResult {
    #[serde(default)]
    pub content: Option<Value>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Started,
    Updated,
    Completed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Started => "item.started",
            Phase::Updated => "item.updated",
            Phase::Completed => "item.completed",
        }
    }
}

/// Stateless line parser for `codex exec --json`.
#[derive(Default)]
pub struct CodexParser;

impl StreamParser for CodexParser {
    fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        CodexParser::parse_line(self, line)
    }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

impl CodexParser {
    pub fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return other("unparsable");
        };
        let ev = match ThreadEvent::deserialize(&v) {
            Ok(ev) => ev,
            Err(_) => return other(type_of(&v)),
        };
        match ev {
            ThreadEvent::ThreadStarted { thread_id } => vec![ExecutorEvent::SessionStarted {
                native_id: thread_id,
                model: None,
            }],
            ThreadEvent::TurnStarted => vec![ExecutorEvent::TurnStarted],
            ThreadEvent::TurnCompleted { usage } => {
                let (usage, mut notes) = checked_usage(usage);
                notes.push(ExecutorEvent::TurnCompleted {
                    usage,
                    scope: UsageScope::Thread,
                    cost_usd: None,
                    final_text: None,
                });
                notes
            }
            ThreadEvent::TurnFailed { error, usage } => {
                let message = error
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| "codex reported turn.failed without a message".into());
                let (usage, mut notes) = checked_usage(usage);
                notes.push(ExecutorEvent::TurnFailed {
                    message,
                    api_status: None,
                    usage,
                    scope: UsageScope::Thread,
                    cost_usd: None,
                });
                notes
            }
            ThreadEvent::Error { message } => vec![ExecutorEvent::Warning { message }],
            ThreadEvent::ItemStarted { item } => parse_item(Phase::Started, &item),
            ThreadEvent::ItemUpdated { item } => parse_item(Phase::Updated, &item),
            ThreadEvent::ItemCompleted { item } => parse_item(Phase::Completed, &item),
            ThreadEvent::Unknown => other(type_of(&v)),
        }
    }
}

/// The usage of a report, checked: refused counts give a note and no usage (codex's usage is
/// thread-cumulative, so a partial figure would corrupt the next turn's difference too).
fn checked_usage(u: Option<RawUsage>) -> (Option<Usage>, Vec<ExecutorEvent>) {
    let Some(u) = u else {
        return (None, vec![]);
    };
    let checked = numbers::usage(
        &[
            ("input_tokens", &u.input_tokens),
            ("cached_input_tokens", &u.cached_input_tokens),
            ("output_tokens", &u.output_tokens),
            ("reasoning_output_tokens", &u.reasoning_output_tokens),
        ],
        |n| Usage {
            input_tokens: n("input_tokens"),
            cached_input_tokens: n("cached_input_tokens"),
            output_tokens: n("output_tokens"),
            reasoning_output_tokens: n("reasoning_output_tokens"),
        },
    );
    match checked {
        Ok(u) => (Some(u), vec![]),
        Err(why) => (None, vec![numbers::refused("codex", "token count", &why)]),
    }
}

fn mcp_name(server: &str, tool: &str) -> String {
    format!("mcp:{server}/{tool}")
}

fn parse_item(phase: Phase, raw: &Value) -> Vec<ExecutorEvent> {
    let kind = || format!("{}:{}", phase.as_str(), type_of(raw));
    let Ok(item) = Item::deserialize(raw) else {
        return other(&kind());
    };
    match (item, phase) {
        (Item::AgentMessage { text }, Phase::Completed) => {
            vec![ExecutorEvent::AgentMessage { text }]
        }
        (Item::Reasoning { text }, Phase::Completed) => vec![ExecutorEvent::Reasoning { text }],
        (Item::CommandExecution { id, command, .. }, Phase::Started) => {
            vec![ExecutorEvent::CommandStarted {
                id,
                command: super::unwrap_shell(&command),
            }]
        }
        (
            Item::CommandExecution {
                id,
                command,
                aggregated_output: output,
                exit_code,
                status,
            },
            Phase::Completed,
        ) => {
            let command = super::unwrap_shell(&command);
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
        (
            Item::McpToolCall {
                server,
                tool,
                arguments,
                result,
                error,
                status,
                ..
            },
            Phase::Completed,
        ) if status == "failed" => {
            let message = error
                .and_then(|e| e.message)
                .or_else(|| {
                    result
                        .and_then(|r| r.content)
                        .map(|c| content_text(Some(&c)))
                })
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "the MCP tool call failed".into());
            vec![ExecutorEvent::ToolFailed(ToolError::new(
                mcp_name(&server, &tool),
                &arguments,
                &message,
            ))]
        }
        (Item::FileChange { changes, status }, Phase::Completed) => {
            if status == "failed" {
                let paths: Vec<String> = changes.into_iter().map(|c| c.path).collect();
                return vec![ExecutorEvent::ToolFailed(ToolError::new(
                    "apply_patch",
                    &Value::String(paths.join(" ")),
                    "the patch failed",
                ))];
            }
            vec![ExecutorEvent::FilesChanged {
                changes: changes
                    .into_iter()
                    .map(|c| FileChange {
                        path: c.path,
                        kind: c.kind,
                    })
                    .collect(),
            }]
        }
        (
            Item::McpToolCall {
                id,
                server,
                tool,
                arguments,
                ..
            },
            Phase::Started,
        ) => vec![ExecutorEvent::ToolCall {
            id,
            name: mcp_name(&server, &tool),
            input: arguments,
        }],
        (Item::WebSearch { id, query }, Phase::Started) => vec![ExecutorEvent::ToolCall {
            id,
            name: "web_search".into(),
            input: query,
        }],
        (Item::TodoList { id, items }, Phase::Started) => vec![ExecutorEvent::ToolCall {
            id,
            name: "plan".into(),
            input: items,
        }],
        (Item::Error { message }, Phase::Completed) => vec![ExecutorEvent::Warning { message }],
        _ => other(&kind()),
    }
}
