//! The parts of ACP's schema zwarm reads (protocol version 1): `session/update` payloads.
//!
//! Written here rather than taken from the `agent-client-protocol` crate: that crate turns on
//! serde_json's `preserve_order` feature, which would change the key order of every JSON
//! document zwarm writes. Every type is lenient: unknown update kinds, tool kinds and statuses
//! and missing fields parse (as `Other` or defaults), so a newer agent never breaks a turn.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// `session/update` params.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionNotification {
    #[serde(default)]
    pub session_id: String,
    pub update: SessionUpdate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "sessionUpdate", rename_all = "snake_case")]
pub enum SessionUpdate {
    UserMessageChunk(ContentChunk),
    AgentMessageChunk(ContentChunk),
    AgentThoughtChunk(ContentChunk),
    ToolCall(ToolCall),
    ToolCallUpdate(ToolCall),
    Plan(Plan),
    UsageUpdate(UsageUpdate),
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentChunk {
    pub content: ContentBlock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    #[serde(other)]
    Other,
}

/// A `tool_call`, or a `tool_call_update` (where every field but the id may be missing).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCall {
    pub tool_call_id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient_vec")]
    pub content: Option<Vec<ToolCallContent>>,
    #[serde(default, deserialize_with = "lenient_vec")]
    pub locations: Option<Vec<Location>>,
    #[serde(default)]
    pub raw_input: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolCallContent {
    Content {
        content: ContentBlock,
    },
    Diff {
        path: PathBuf,
        #[serde(default, rename = "oldText")]
        old_text: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Location {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Plan {
    #[serde(default)]
    pub entries: Vec<PlanEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlanEntry {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UsageUpdate {
    #[serde(default)]
    pub used: u64,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub cost: Option<Cost>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Cost {
    pub amount: f64,
    pub currency: String,
}

/// The ACP tool kinds zwarm knows; anything else is `other`.
pub fn tool_kind(k: Option<&str>) -> String {
    match k {
        Some(
            k @ ("read" | "edit" | "delete" | "move" | "search" | "execute" | "think" | "fetch"
            | "switch_mode"),
        ) => k.to_string(),
        _ => "other".to_string(),
    }
}

/// A list whose items that do not parse are skipped (and a list that is not one is none).
fn lenient_vec<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = Option::<Value>::deserialize(d)?;
    Ok(match v {
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .filter_map(|i| serde_json::from_value(i).ok())
                .collect(),
        ),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn updates_parse_leniently() {
        let n: SessionNotification = serde_json::from_value(json!({
            "sessionId": "s",
            "update": {"sessionUpdate": "tool_call", "toolCallId": "t", "title": "w",
                "kind": "edit", "status": "pending",
                "content": [{"type": "diff", "path": "/a", "newText": "x"}, {"type": "nope"}, 3],
                "locations": [{"path": "/a"}]}
        }))
        .unwrap();
        let SessionUpdate::ToolCall(tc) = n.update else {
            panic!("a tool call")
        };
        assert_eq!(tc.content.as_ref().map(Vec::len), Some(2));
        assert!(matches!(
            tc.content.as_deref(),
            Some([
                ToolCallContent::Diff { old_text: None, .. },
                ToolCallContent::Other
            ])
        ));
        let n: SessionNotification = serde_json::from_value(json!({
            "sessionId": "s", "update": {"sessionUpdate": "something_new", "x": 1}
        }))
        .unwrap();
        assert!(matches!(n.update, SessionUpdate::Other));
        assert_eq!(tool_kind(Some("execute")), "execute");
        assert_eq!(tool_kind(Some("brand_new")), "other");
    }
}
