//! `session/update` notifications → [`AcpEvent`]s → zwarm's [`ExecutorEvent`]s.
//!
//! Agents stream their answer in `agent_message_chunk` pieces; the [`Mapper`] joins them into
//! one message, ended by any other update or the end of the turn. Tool calls arrive as a
//! `tool_call` and later `tool_call_update`s of the same id; the mapper keeps what each said
//! (kind, title, input, paths) so an update that only carries a status is still complete.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::policy::{Decision, PermissionAsk};
use super::schema::{ContentBlock, SessionNotification, SessionUpdate, ToolCallContent, tool_kind};
use crate::event::{ExecutorEvent, FileChange, PermissionDenial, ToolError};

/// What happened in an ACP turn, in ACP's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "acp", rename_all = "snake_case")]
pub enum AcpEvent {
    AgentMessage {
        text: String,
    },
    Thought {
        text: String,
    },
    /// A tool call began or changed status.
    ToolCall {
        id: String,
        kind: String,
        title: String,
        /// `pending`, `in_progress`, `completed`, `failed`.
        status: String,
        input: Value,
        paths: Vec<String>,
        /// Text the tool produced (bounded), when it ended.
        output: String,
    },
    /// A file the agent changed (from a tool call's diff).
    FileEdit {
        path: String,
        /// `add` (no old text) or `update`.
        kind: String,
    },
    Plan {
        entries: Vec<PlanItem>,
    },
    /// Context window use and cost, when the agent reports them.
    Usage {
        used: u64,
        size: u64,
        cost_usd: Option<f64>,
    },
    /// zwarm answered a permission request.
    Permission {
        ask: PermissionAsk,
        decision: Decision,
        /// The option zwarm selected (`None`: it answered `cancelled`).
        option: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub content: String,
    pub status: String,
}

/// Longest tool output kept in an event.
const OUTPUT_MAX: usize = 2000;

#[derive(Default)]
struct CallState {
    kind: String,
    title: String,
    input: Value,
    paths: Vec<String>,
    status: String,
}

/// Turns one session's updates into events; one per agent session.
#[derive(Default)]
pub struct Mapper {
    message: String,
    thought: String,
    calls: HashMap<String, CallState>,
    /// The last usage the agent reported.
    pub last_usage: Option<(u64, u64, Option<f64>)>,
}

/// Path-like values of a tool input (`file_path`, `filePath`, `path`, `absolute_path`, …).
pub fn input_paths(input: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(o) = input.as_object() {
        for (k, v) in o {
            let key = k.to_ascii_lowercase().replace('_', "");
            if matches!(
                key.as_str(),
                "filepath" | "path" | "absolutepath" | "dirpath" | "destination" | "source"
            ) && let Some(s) = v.as_str()
            {
                out.push(s.to_string());
            }
        }
    }
    out
}

fn content_text(content: &[ToolCallContent]) -> String {
    let mut out = String::new();
    for c in content {
        if let ToolCallContent::Content {
            content: ContentBlock::Text { text },
        } = c
        {
            out.push_str(text);
        }
    }
    crate::text::truncate_chars(&out, OUTPUT_MAX)
}

fn diffs(content: &[ToolCallContent]) -> Vec<AcpEvent> {
    content
        .iter()
        .filter_map(|c| match c {
            ToolCallContent::Diff { path, old_text } => Some(AcpEvent::FileEdit {
                path: path.display().to_string(),
                // qwen sends an empty old text for a new file.
                kind: if old_text.as_deref().is_none_or(str::is_empty) {
                    "add"
                } else {
                    "update"
                }
                .into(),
            }),
            _ => None,
        })
        .collect()
}

impl Mapper {
    /// The events of one `session/update`'s params. Anything that does not parse is skipped.
    pub fn map(&mut self, params: &Value) -> Vec<AcpEvent> {
        let Ok(n) = serde_json::from_value::<SessionNotification>(params.clone()) else {
            tracing::debug!("acp: a session/update zwarm does not understand");
            return Vec::new();
        };
        let mut out = Vec::new();
        match n.update {
            // Agents do not echo the prompt; a user message is a replayed history still
            // streaming after a load: what was gathered so far is history too.
            SessionUpdate::UserMessageChunk(_) => {
                self.message.clear();
                self.thought.clear();
            }
            SessionUpdate::AgentMessageChunk(c) => {
                self.flush_thought(&mut out);
                if let ContentBlock::Text { text } = c.content {
                    self.message.push_str(&text);
                }
            }
            SessionUpdate::AgentThoughtChunk(c) => {
                self.flush_message(&mut out);
                if let ContentBlock::Text { text } = c.content {
                    self.thought.push_str(&text);
                }
            }
            SessionUpdate::ToolCall(tc) | SessionUpdate::ToolCallUpdate(tc) => {
                self.flush(&mut out);
                let id = tc.tool_call_id.clone();
                let st = self.calls.entry(id.clone()).or_default();
                if tc.kind.is_some() || st.kind.is_empty() {
                    st.kind = tool_kind(tc.kind.as_deref());
                }
                if let Some(t) = tc.title {
                    st.title = t;
                }
                if let Some(i) = tc.raw_input {
                    for p in input_paths(&i) {
                        if !st.paths.contains(&p) {
                            st.paths.push(p);
                        }
                    }
                    st.input = i;
                }
                for p in tc
                    .locations
                    .unwrap_or_default()
                    .iter()
                    .map(|l| l.path.display().to_string())
                {
                    if !st.paths.contains(&p) {
                        st.paths.push(p);
                    }
                }
                let content = tc.content.unwrap_or_default();
                let first = st.status.is_empty();
                let new_status = tc.status.unwrap_or_else(|| {
                    if first {
                        "pending".into()
                    } else {
                        st.status.clone()
                    }
                });
                let changed = first || new_status != st.status;
                st.status = new_status;
                if changed {
                    out.push(Mapper::call_event_of(&id, st, content_text(&content)));
                }
                out.extend(diffs(&content));
            }
            SessionUpdate::Plan(p) => {
                self.flush(&mut out);
                out.push(AcpEvent::Plan {
                    entries: p
                        .entries
                        .iter()
                        .map(|e| PlanItem {
                            content: e.content.clone(),
                            status: e.status.clone(),
                        })
                        .collect(),
                });
            }
            SessionUpdate::UsageUpdate(u) => {
                let cost = u
                    .cost
                    .as_ref()
                    .filter(|c| c.currency.eq_ignore_ascii_case("usd"))
                    .map(|c| c.amount);
                self.last_usage = Some((u.used, u.size, cost));
                out.push(AcpEvent::Usage {
                    used: u.used,
                    size: u.size,
                    cost_usd: cost,
                });
            }
            SessionUpdate::Other => {}
        }
        out
    }

    fn call_event_of(id: &str, st: &CallState, output: String) -> AcpEvent {
        AcpEvent::ToolCall {
            id: id.to_string(),
            kind: st.kind.clone(),
            title: st.title.clone(),
            status: st.status.clone(),
            input: st.input.clone(),
            paths: st.paths.clone(),
            output,
        }
    }

    /// What a tool call said so far (for a permission request that names only its id).
    pub fn known_call(&self, id: &str) -> Option<(String, String, Value, Vec<String>)> {
        self.calls.get(id).map(|c| {
            (
                c.kind.clone(),
                c.title.clone(),
                c.input.clone(),
                c.paths.clone(),
            )
        })
    }

    fn flush_message(&mut self, out: &mut Vec<AcpEvent>) {
        if !self.message.is_empty() {
            out.push(AcpEvent::AgentMessage {
                text: std::mem::take(&mut self.message),
            });
        }
    }

    fn flush_thought(&mut self, out: &mut Vec<AcpEvent>) {
        if !self.thought.is_empty() {
            out.push(AcpEvent::Thought {
                text: std::mem::take(&mut self.thought),
            });
        }
    }

    /// The message or thought being streamed, as an event (at the end of a turn).
    pub fn flush(&mut self, out: &mut Vec<AcpEvent>) {
        self.flush_thought(out);
        self.flush_message(out);
    }
}

/// An ACP event in zwarm's executor vocabulary (what progress, transcripts and watchers read).
pub fn to_executor_events(ev: &AcpEvent) -> Vec<ExecutorEvent> {
    match ev {
        AcpEvent::AgentMessage { text } => vec![ExecutorEvent::AgentMessage { text: text.clone() }],
        AcpEvent::Thought { text } => vec![ExecutorEvent::Reasoning { text: text.clone() }],
        AcpEvent::ToolCall {
            id,
            kind,
            title,
            status,
            input,
            output,
            ..
        } => {
            let command = input
                .get("command")
                .and_then(Value::as_str)
                .unwrap_or(title)
                .to_string();
            let ended = matches!(status.as_str(), "completed" | "failed");
            match (kind.as_str(), ended) {
                ("execute", false) => vec![ExecutorEvent::CommandStarted {
                    id: id.clone(),
                    command,
                }],
                ("execute", true) => vec![ExecutorEvent::CommandFinished {
                    id: id.clone(),
                    command,
                    exit_code: None,
                    output: output.clone(),
                    ok: status == "completed",
                }],
                (_, false) => vec![ExecutorEvent::ToolCall {
                    id: id.clone(),
                    name: title.clone(),
                    input: input.clone(),
                }],
                (_, true) if status == "failed" => vec![ExecutorEvent::ToolFailed(ToolError::new(
                    title.clone(),
                    input,
                    output,
                ))],
                (_, true) => Vec::new(),
            }
        }
        AcpEvent::FileEdit { path, kind } => vec![ExecutorEvent::FilesChanged {
            changes: vec![FileChange {
                path: path.clone(),
                kind: kind.clone(),
            }],
        }],
        AcpEvent::Plan { entries } => vec![ExecutorEvent::ToolCall {
            id: "plan".into(),
            name: "plan".into(),
            input: json!(entries),
        }],
        AcpEvent::Usage { .. } => Vec::new(),
        AcpEvent::Permission { ask, decision, .. } => match decision.verdict {
            // Shown in the progress (and so in check_session) with the rule that allowed it.
            super::policy::Verdict::Allow => vec![ExecutorEvent::ToolCall {
                id: format!("permission:{}", ask.tool_call_id),
                name: format!("permission allowed by {}: {}", decision.rule, ask.title),
                input: json!({
                    "kind": ask.kind,
                    "command": ask.command,
                    "paths": ask.paths,
                    "decision": decision.verdict,
                    "rule": decision.rule,
                }),
            }],
            _ => vec![ExecutorEvent::PermissionDenied(PermissionDenial {
                tool: ask.title.clone(),
                input: json!({
                    "kind": ask.kind,
                    "command": ask.command,
                    "paths": ask.paths,
                    "decision": decision.verdict,
                    "rule": decision.rule,
                }),
            })],
        },
    }
}
