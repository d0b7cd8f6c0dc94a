//! ACP agents (Gemini CLI, Qwen Code, OpenCode, and any other agent speaking the Agent Client
//! Protocol) driven by zwarm.
//!
//! - [`rpc`]: JSON-RPC 2.0 over the agent's stdio, newline-delimited.
//! - [`agent`]: the agent process: stdio piped, own process group, stopped by closing stdin
//!   and then killing the group, always reaped.
//! - [`client`]: `initialize`, `session/new` / `session/load`, `session/prompt`,
//!   `session/cancel`, permission requests.
//! - [`update`]: `session/update` → [`update::AcpEvent`] → [`crate::event::ExecutorEvent`].
//! - [`policy`]: allow / deny / ask for each permission request, and why.
//! - [`turn`]: one turn on a running agent (session opened or kept, prompt, events).
//! - [`job`]: what one ACP turn is told (the bridge's input, forwarded to the pool).
//! - [`bridge`]: the per-turn process `zwarm-acp` the runner starts for an ACP turn.
//! - [`pool`]: `zwarm serve`'s long-lived agents, one per session in use, reached by the
//!   bridge over a unix socket and stopped after `acp.agent_idle_seconds`.
//! - [`approval`]: how an `ask` reaches the orchestrator or a person (files in the session's
//!   turn directory) and how the answer comes back.
//!
//! The message types zwarm reads are in [`schema`] (not from the `agent-client-protocol`
//! crate: it turns on serde_json's `preserve_order` for the whole program); the connection is
//! zwarm's own small loop on tokio.

pub mod agent;
pub mod approval;
pub mod bridge;
pub mod client;
pub mod job;
pub mod policy;
pub mod pool;
pub mod rpc;
pub mod schema;
pub mod turn;
pub mod update;

pub use agent::AgentCommand;
pub use client::{
    AcpAgent, AcpError, AgentInfo, Approver, EarlierTurn, OpenedSession, PromptOptions, TurnEnd,
};
pub use policy::{Decision, Level, PermissionAsk, Policy, Rule, Verdict};
pub use update::AcpEvent;
