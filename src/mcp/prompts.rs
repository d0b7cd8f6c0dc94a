//! The one prompt, `orchestrate`: how to use zwarm's tools well.

use rmcp::ErrorData as McpError;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResult, ListPromptsResult, Prompt, PromptArgument,
    PromptMessage, Role,
};

pub(super) fn prompt_list() -> ListPromptsResult {
    ListPromptsResult::with_all_items(vec![Prompt::new(
        "orchestrate",
        Some(
            "System prompt that teaches an orchestrator to use zwarm's tools well: plan, delegate with acceptance criteria, follow up, verify, recover",
        ),
        Some(vec![
            PromptArgument::new("task")
                .with_description("The overall goal to orchestrate")
                .with_required(true),
        ]),
    )])
}

pub(super) fn get(request: &GetPromptRequestParams) -> Result<GetPromptResult, McpError> {
    if request.name != "orchestrate" {
        return Err(McpError::invalid_params(
            format!(
                "unknown prompt `{}`; the only prompt is `orchestrate`",
                request.name
            ),
            None,
        ));
    }
    let task = request
        .arguments
        .as_ref()
        .and_then(|a| a.get("task"))
        .map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            McpError::invalid_params("the `orchestrate` prompt needs a `task` argument", None)
        })?;
    Ok(GetPromptResult::new(vec![PromptMessage::new_text(
        Role::User,
        crate::prompt::orchestrate(&task),
    )])
    .with_description("How to orchestrate coding agents with zwarm"))
}
