//! The executor event stream: one vocabulary for what every coding-agent CLI reports.
//!
//! `codex exec --json` and `claude -p --output-format stream-json` describe the same things
//! (a thread started, the agent said something, ran a command, changed a file, used tokens,
//! finished or failed) in very different shapes. Each executor's parser turns its CLI's lines
//! into [`ExecutorEvent`]s, and everything downstream — the session manager, the store,
//! progress reporting, watchers — only ever sees this type. Anything a parser does not
//! understand becomes [`ExecutorEvent::Other`] so that a new CLI release adding an event type
//! never breaks a turn.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Token counts. For codex they come from `turn.completed.usage`, for claude from `result.usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_output_tokens: u64,
}

impl Usage {
    /// `self - earlier`, clamped at zero: codex reports thread-cumulative usage, so the usage of
    /// one turn is the difference between two consecutive reports.
    pub fn delta_since(&self, earlier: &Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            cached_input_tokens: self
                .cached_input_tokens
                .saturating_sub(earlier.cached_input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            reasoning_output_tokens: self
                .reasoning_output_tokens
                .saturating_sub(earlier.reasoning_output_tokens),
        }
    }

    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(other.cached_input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.reasoning_output_tokens = self
            .reasoning_output_tokens
            .saturating_add(other.reasoning_output_tokens);
    }

    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Whether a reported usage figure covers the whole native thread or only this invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageScope {
    /// The figure keeps growing across the processes that resume one native thread (each
    /// turn's usage is the difference to the previous report).
    Thread,
    /// The figure counts only the current process: it is the turn's.
    Invocation,
}

/// A file the executor reported as changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileChange {
    pub path: String,
    /// `add`, `update` or `delete`.
    pub kind: String,
}

/// A tool call the executor's own permission system refused (claude `permission_denials`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PermissionDenial {
    pub tool: String,
    pub input: Value,
}

/// A tool call that failed or was refused inside the executor's turn, other than a permission
/// denial: claude's `is_error` tool results ("Blocked: sleep 61 …", "File does not exist", a
/// timed-out command), codex's rejected commands and patches and failed MCP calls. The turn goes
/// on, so only this record tells the orchestrator what the executor could not do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolError {
    /// The tool: claude `Bash`, `Read`, `mcp__server__tool`…; codex `exec_command`,
    /// `apply_patch`, `mcp:<server>/<tool>`.
    pub tool: String,
    /// The start of the tool's input (the command, the file, the arguments); empty when the
    /// executor did not report it.
    pub input: String,
    /// What the executor answered.
    pub message: String,
}

/// Longest `input` kept in a [`ToolError`].
pub const TOOL_INPUT_HEAD: usize = 200;
/// Longest `message` kept in a [`ToolError`].
pub const TOOL_MESSAGE_MAX: usize = 1000;

impl ToolError {
    /// A tool error with its input and message bounded (whitespace runs collapsed in the input).
    pub fn new(tool: impl Into<String>, input: &Value, message: &str) -> ToolError {
        ToolError {
            tool: tool.into(),
            input: input_head(input),
            message: crate::text::truncate_chars(message.trim(), TOOL_MESSAGE_MAX),
        }
    }

    /// Whether this error is the tool call `d` was denied (claude reports a denial both as an
    /// error tool result and in `permission_denials`; the denial is the record that stays).
    pub fn is_denial(&self, d: &PermissionDenial) -> bool {
        self.tool == d.tool && self.input == input_head(&d.input)
    }
}

/// The head of a tool input as one line: a command or a file path when the input has one,
/// else the input's compact JSON.
pub fn input_head(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(o) => [
            "command",
            "cmd",
            "file_path",
            "notebook_path",
            "path",
            "url",
        ]
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    };
    crate::text::one_line(&text, TOOL_INPUT_HEAD)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecutorEvent {
    /// The executor's native conversation id is known (codex thread id, claude session id).
    SessionStarted {
        native_id: String,
        model: Option<String>,
    },
    TurnStarted,
    AgentMessage {
        text: String,
    },
    Reasoning {
        text: String,
    },
    CommandStarted {
        id: String,
        command: String,
    },
    CommandFinished {
        id: String,
        command: String,
        exit_code: Option<i64>,
        output: String,
        ok: bool,
    },
    FilesChanged {
        changes: Vec<FileChange>,
    },
    /// Any other tool use (claude Read/Grep/MCP tools, codex MCP calls, web search, plans).
    ToolCall {
        id: String,
        name: String,
        input: Value,
    },
    PermissionDenied(PermissionDenial),
    /// A tool call failed or was refused inside the turn (see [`ToolError`]).
    ToolFailed(ToolError),
    /// A non-fatal problem the executor reported (retry notices, metadata warnings).
    Warning {
        message: String,
    },
    TurnCompleted {
        usage: Option<Usage>,
        scope: UsageScope,
        cost_usd: Option<f64>,
        /// The final answer when the executor reports it separately (claude `result`).
        final_text: Option<String>,
    },
    TurnFailed {
        message: String,
        /// HTTP status of the model API when known (claude `api_error_status`).
        api_status: Option<u16>,
        usage: Option<Usage>,
        scope: UsageScope,
        cost_usd: Option<f64>,
    },
    /// A line the parser does not understand (kept, never fatal).
    Other {
        kind: String,
    },
}

impl ExecutorEvent {
    /// A short, human line for progress reports ("ran `cargo test` — exit 0").
    pub fn summary(&self, adapter: &str) -> Option<String> {
        Some(match self {
            ExecutorEvent::SessionStarted { .. } => format!("{adapter}: session started"),
            ExecutorEvent::TurnStarted | ExecutorEvent::Other { .. } => return None,
            ExecutorEvent::AgentMessage { text } => {
                format!("{adapter} says: {}", crate::text::one_line(text, 160))
            }
            ExecutorEvent::Reasoning { text } => {
                format!("{adapter} thinks: {}", crate::text::one_line(text, 120))
            }
            ExecutorEvent::CommandStarted { command, .. } => {
                format!("{adapter} runs `{}`", crate::text::one_line(command, 120))
            }
            ExecutorEvent::CommandFinished {
                command, exit_code, ..
            } => match exit_code {
                Some(code) => format!(
                    "{adapter} ran `{}` — exit {code}",
                    crate::text::one_line(command, 120)
                ),
                None => format!("{adapter} ran `{}`", crate::text::one_line(command, 120)),
            },
            ExecutorEvent::FilesChanged { changes } => {
                let list: Vec<String> = changes
                    .iter()
                    .map(|c| format!("{} {}", verb(&c.kind), c.path))
                    .collect();
                format!("{adapter} {}", list.join(", "))
            }
            ExecutorEvent::ToolCall { name, .. } => format!("{adapter} uses {name}"),
            ExecutorEvent::PermissionDenied(d) => {
                format!("{adapter} was denied permission to use {}", d.tool)
            }
            ExecutorEvent::ToolFailed(e) => format!(
                "{adapter}: {} failed — {}",
                e.tool,
                crate::text::one_line(&e.message, 160)
            ),
            ExecutorEvent::Warning { message } => {
                format!("{adapter} warning: {}", crate::text::one_line(message, 160))
            }
            ExecutorEvent::TurnCompleted { .. } => format!("{adapter}: turn finished"),
            ExecutorEvent::TurnFailed { message, .. } => {
                format!(
                    "{adapter}: turn failed — {}",
                    crate::text::one_line(message, 160)
                )
            }
        })
    }
}

fn verb(kind: &str) -> &'static str {
    match kind {
        "add" => "created",
        "delete" => "deleted",
        _ => "edited",
    }
}
