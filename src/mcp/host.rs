//! Host policy: what zwarm tells the host, how long a sync call may wait for each host, and
//! what a server started inside an executor's turn offers.

use std::time::Duration;

use rmcp::RoleServer;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::service::RequestContext;

use super::ZwarmServer;

/// What zwarm tells the host's model; [`instructions`] puts the executors' names in front.
pub const INSTRUCTIONS: &str = "zwarm runs coding agents for you as executors.\n\
1. delegate(task, …) starts a session: write the task with acceptance criteria. mode=sync waits (bounded by the host's tool timeout); mode=async returns at once.\n\
2. If status is running, call check_session(session_id, wait_seconds) until it is idle or failed. Never re-delegate a running task.\n\
3. Verify the result yourself (tests, diffs); use converse(session_id, message) to correct or continue in the same thread.\n\
4. end_session(session_id, verdict, summary) when done: completed, failed or cancelled (cancelled stops a running turn).\n\
Parallel work in one git repository: delegate each part with isolation=\"worktree\" (a worktree and branch per session), wait on several with check_session(session_ids, wait=\"any\"), review each `diff`, then end_session(…, integrate=\"merge\") one at a time.\n\
list_sessions shows everything, including sessions from earlier runs. Every result has next_step: follow it.";

/// [`INSTRUCTIONS`] naming the registered executors.
pub fn instructions() -> String {
    let names: Vec<&str> = crate::executor::REGISTRY.iter().map(|e| e.name()).collect();
    INSTRUCTIONS.replacen(
        "coding agents for you",
        &format!("coding agents ({}) for you", names.join(", ")),
        1,
    )
}

/// The registered executors' names in the tool descriptions that offer a choice of them
/// (delegate's description and its `adapter` argument), so no handler names an executor.
pub fn name_executors(router: &mut ToolRouter<ZwarmServer>, default_adapter: &str) {
    let Some(route) = router.map.get_mut("delegate") else {
        return;
    };
    let names = crate::executor::names_for_humans(false);
    if let Some(d) = &route.attr.description {
        let d = d.replacen("an executor", &format!("an executor ({names})"), 1);
        route.attr.description = Some(d.into());
    }
    let mut schema = (*route.attr.input_schema).clone();
    if let Some(adapter) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("adapter"))
        .and_then(|a| a.as_object_mut())
    {
        adapter.insert(
            "description".into(),
            format!(
                "The executor: {}. Default: `{default_adapter}` (the configured default_adapter).",
                crate::executor::names_for_humans(true)
            )
            .into(),
        );
    }
    route.attr.input_schema = std::sync::Arc::new(schema);
}

/// The variable zwarm sets in the environment of every executor turn (non-empty inside one).
pub const EXECUTOR_TURN_ENV: &str = "ZWARM_EXECUTOR_TURN";

/// Why a server inside an executor turn offers nothing: its instructions, the text of every
/// refused call, and its start-up warning.
pub const EXECUTOR_TURN_INSTRUCTIONS: &str = "This zwarm server was started inside a zwarm executor's turn (ZWARM_EXECUTOR_TURN is set), so it offers no tools, resources or prompts. An executor must not start, continue or end sessions (that would recurse, or end the orchestrator's work), and it does not read other sessions (their tasks and transcripts are the orchestrator's, not its own). Do the task you were given directly; report back in your answer.";

/// Whether this process runs inside an executor's turn.
pub fn inside_executor_turn() -> bool {
    std::env::var_os(EXECUTOR_TURN_ENV).is_some_and(|v| !v.is_empty())
}

/// Sync-wait policy for the calling host: (default, maximum) seconds. Hosts give up on a long
/// tool call: Codex cancels it after `tool_timeout_sec` (300 s by default), Claude Desktop after
/// about 60 s, and Claude Code (since 2.1.212) moves it to the background after 120 s
/// (`CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS`), after which its model may never read the result.
/// zwarm returns before that with status running, so the orchestrator polls instead of losing
/// the call. The name comes from `initialize`'s `clientInfo` or, in the 2026-07-28 revision,
/// from the client info each request carries.
pub fn host_wait_policy(client_name: Option<&str>) -> (u64, Option<u64>) {
    let name = client_name.unwrap_or("").to_ascii_lowercase();
    if name.contains("codex") {
        (240, Some(280))
    } else if name == "claude-code" {
        (110, Some(115))
    } else if name.contains("claude") || name.contains("desktop") {
        (45, Some(55))
    } else {
        (45, None)
    }
}

impl ZwarmServer {
    /// (wait to use now, maximum to advertise) for a sync call.
    pub(super) fn wait_budget(
        &self,
        ctx: &RequestContext<RoleServer>,
        requested: Option<u64>,
        default_zero: bool,
    ) -> (Duration, u64) {
        // The request's own client info (2026-07-28), else `initialize`'s.
        let name = ctx.client_info().map(|c| c.name);
        let (host_default, host_max) = host_wait_policy(name.as_deref());
        let default = if default_zero {
            0
        } else {
            self.manager
                .config()
                .sync_wait_seconds
                .unwrap_or(host_default)
        };
        let max = host_max.unwrap_or(crate::sessions::MAX_WAIT.as_secs());
        let secs = requested.unwrap_or(default).min(max);
        (
            Duration::from_secs(secs),
            host_max.unwrap_or(host_default.max(secs)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::host_wait_policy;

    /// How long each host lets one tool call run before it stops waiting for it (docs/hosts.md,
    /// "Sync, async, and host timeouts"): (clientInfo.name, seconds, what).
    const HOST_LIMITS: &[(&str, u64, &str)] = &[
        (
            "codex-mcp-client",
            300,
            "Codex cancels the call (tool_timeout_sec)",
        ),
        ("claude-ai", 60, "Claude Desktop cancels the call"),
        (
            "claude-code",
            120,
            "Claude Code moves the call to the background (CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS)",
        ),
    ];

    #[test]
    fn sync_waits_end_before_each_host_gives_up() {
        for (name, limit, what) in HOST_LIMITS {
            let (default, max) = host_wait_policy(Some(name));
            let max = max.unwrap_or_else(|| panic!("{name}: no maximum, but {what} at {limit} s"));
            assert!(
                default <= max && max < *limit,
                "{name}: default {default} s, maximum {max} s, but {what} at {limit} s"
            );
            // Not so short that a sync call rarely gets its answer: most of the host's patience.
            assert!(
                default * 3 >= limit * 2,
                "{name}: default {default} s wastes the host's {limit} s"
            );
        }
        // A host zwarm does not know: below the 60 s that SDK-based clients (the Inspector)
        // allow a request.
        assert!(host_wait_policy(None).0 < 60);
        assert!(host_wait_policy(Some("some-ide")).0 < 60);
    }
}
