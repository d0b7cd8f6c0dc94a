//! The events of `claude -p --output-format stream-json --verbose`, typed (one JSON object per
//! line, tagged by `type`), and the parser that turns them into zwarm's [`ExecutorEvent`]s.
//!
//! Unknown event, subtype and block types, and known ones in an unexpected shape, become
//! [`ExecutorEvent::Other`] (kept, never fatal).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::event::{ExecutorEvent, FileChange, PermissionDenial, Usage, UsageScope};
use crate::executor::api::StreamParser;
use crate::executor::numbers::{self, Reported, content_text, other};

/// One line of claude's stream-json.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    System(System),
    Assistant {
        #[serde(default)]
        message: Option<AssistantMessage>,
    },
    User {
        #[serde(default)]
        message: Option<UserMessage>,
        #[serde(default)]
        tool_use_result: Option<Value>,
    },
    Result(ResultEvent),
    #[serde(other)]
    Unknown,
}

/// `system` events: `init`, `api_retry`, `permission_denied`, `status`…
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct System {
    pub subtype: String,
    pub session_id: Option<String>,
    pub model: Option<String>,
    pub error_status: Option<Value>,
    pub attempt: Option<Value>,
    pub max_retries: Option<Value>,
    pub tool_use_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AssistantMessage {
    pub model: Option<String>,
    #[serde(deserialize_with = "lenient_vec")]
    pub content: Vec<Block>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserMessage {
    #[serde(deserialize_with = "lenient_vec")]
    pub content: Vec<Block>,
}

/// A content block of a message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        #[serde(default)]
        tool_use_id: String,
        #[serde(default)]
        is_error: Option<bool>,
        #[serde(default)]
        content: Option<Value>,
    },
    #[serde(other)]
    Unknown,
}

/// The last line of a run.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResultEvent {
    pub subtype: String,
    pub is_error: Option<bool>,
    pub result: Option<Value>,
    pub usage: Option<RawUsage>,
    pub total_cost_usd: Reported,
    #[serde(deserialize_with = "lenient_vec")]
    pub permission_denials: Vec<Denial>,
    pub api_error_status: Option<Value>,
    pub errors: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Denial {
    pub tool_name: String,
    pub tool_input: Value,
}

/// `result.usage`: counts of this invocation.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawUsage {
    pub input_tokens: Reported,
    pub cache_creation_input_tokens: Reported,
    pub cache_read_input_tokens: Reported,
    pub output_tokens: Reported,
}

/// A list whose elements that do not fit `T` are left out (a non-list is empty).
fn lenient_vec<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
        _ => vec![],
    })
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

pub struct PendingTool {
    pub name: String,
    pub input: Value,
}

impl StreamParser for ClaudeParser {
    fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        ClaudeParser::parse_line(self, line)
    }
}

fn str_at<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn shown(v: &Option<Value>) -> String {
    v.as_ref().map(Value::to_string).unwrap_or_default()
}

impl ClaudeParser {
    pub fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return other("unparsable");
        };
        let kind = || format!("{}:{}", str_at(&v, "type"), str_at(&v, "subtype"));
        let Ok(ev) = StreamEvent::deserialize(&v) else {
            return other(&kind());
        };
        match ev {
            StreamEvent::System(s) => match s.subtype.as_str() {
                "init" => match s.session_id {
                    Some(id) => vec![ExecutorEvent::SessionStarted {
                        native_id: id,
                        model: s.model,
                    }],
                    None => other("system:init"),
                },
                "api_retry" => vec![ExecutorEvent::Warning {
                    message: format!(
                        "API error {}, retry {} of {}",
                        shown(&s.error_status),
                        shown(&s.attempt),
                        shown(&s.max_retries)
                    ),
                }],
                "permission_denied" => {
                    if let Some(id) = s.tool_use_id {
                        self.denied.insert(id);
                    }
                    other("system:permission_denied")
                }
                _ => other(&kind()),
            },
            StreamEvent::Assistant { message } => self.assistant(message.unwrap_or_default()),
            StreamEvent::User {
                message,
                tool_use_result,
            } => self.user(message.unwrap_or_default(), tool_use_result.as_ref()),
            StreamEvent::Result(r) => result(r),
            StreamEvent::Unknown => other(&kind()),
        }
    }

    fn assistant(&mut self, m: AssistantMessage) -> Vec<ExecutorEvent> {
        let mut out = Vec::new();
        let synthetic = m.model.as_deref() == Some("<synthetic>");
        for b in m.content {
            match b {
                // The synthetic message that carries an API error is repeated in `result`.
                Block::Text { text } if !synthetic => {
                    out.push(ExecutorEvent::AgentMessage { text })
                }
                Block::Thinking { thinking } => {
                    out.push(ExecutorEvent::Reasoning { text: thinking })
                }
                Block::ToolUse { id, name, input } => {
                    if name == "Bash" {
                        out.push(ExecutorEvent::CommandStarted {
                            id: id.clone(),
                            command: str_at(&input, "command").to_string(),
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

    fn user(&mut self, m: UserMessage, tool_use_result: Option<&Value>) -> Vec<ExecutorEvent> {
        let mut out = Vec::new();
        for b in m.content {
            let Block::ToolResult {
                tool_use_id: id,
                is_error,
                content,
            } = b
            else {
                continue;
            };
            let Some(tool) = self.pending.remove(&id) else {
                continue;
            };
            let is_error = is_error.unwrap_or(false);
            let content = content_text(content.as_ref());
            if is_error
                && !self.denied.remove(&id)
                && let Some(e) = super::tool_error(&tool, &content)
            {
                out.push(ExecutorEvent::ToolFailed(e));
            }
            match tool.name.as_str() {
                "Bash" => {
                    // A failed command's result starts with `Exit code N`; without that prefix
                    // the command never ran (permission denial, blocked redirect, interrupt),
                    // so there is no exit code to report.
                    let exit_code = if is_error {
                        super::parse_exit_code(&content)
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
                        command: str_at(&tool.input, "command").to_string(),
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
}

/// Checked usage and cost of a `result`: refused numbers give a note and are left out. The
/// usage is per invocation, so a refused count leaves the turn's usage at zero while a valid
/// cost is still kept.
fn checked(r: &ResultEvent) -> (Option<Usage>, Option<f64>, Vec<ExecutorEvent>) {
    let mut notes = Vec::new();
    let cost = match numbers::cost("total_cost_usd", &r.total_cost_usd) {
        Ok(c) => c,
        Err(why) => {
            notes.push(numbers::refused("claude", "cost", &why));
            None
        }
    };
    let usage = r.usage.as_ref().map(|u| {
        numbers::usage(
            &[
                ("input_tokens", &u.input_tokens),
                (
                    "cache_creation_input_tokens",
                    &u.cache_creation_input_tokens,
                ),
                ("cache_read_input_tokens", &u.cache_read_input_tokens),
                ("output_tokens", &u.output_tokens),
            ],
            |n| Usage {
                input_tokens: n("input_tokens")
                    .saturating_add(n("cache_creation_input_tokens"))
                    .saturating_add(n("cache_read_input_tokens")),
                cached_input_tokens: n("cache_read_input_tokens"),
                output_tokens: n("output_tokens"),
                reasoning_output_tokens: 0,
            },
        )
    });
    let usage = match usage {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(why)) => {
            notes.push(numbers::refused("claude", "token count", &why));
            Some(Usage::default())
        }
    };
    (usage, cost, notes)
}

fn result(r: ResultEvent) -> Vec<ExecutorEvent> {
    let mut out: Vec<ExecutorEvent> = r
        .permission_denials
        .iter()
        .map(|d| {
            ExecutorEvent::PermissionDenied(PermissionDenial {
                tool: d.tool_name.clone(),
                input: d.tool_input.clone(),
            })
        })
        .collect();
    let (usage, cost_usd, notes) = checked(&r);
    out.extend(notes);
    let is_error = r.is_error.unwrap_or(false);
    let subtype = r.subtype;
    let text = r
        .result
        .as_ref()
        .and_then(Value::as_str)
        .map(str::to_string);
    if is_error || subtype != "success" {
        let api_status = r
            .api_error_status
            .as_ref()
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok());
        let errors: Vec<String> = r
            .errors
            .as_ref()
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
