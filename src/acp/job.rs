//! The job of one ACP turn: what the executor tells the `zwarm-acp` bridge on its stdin, and
//! what the bridge forwards to `zwarm serve`'s pool. Its own file because the bridge, the
//! pool's remote end and the turn logic all read it, and none of them should own it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::agent::AgentCommand;
use super::policy::{Level, Rule};

/// What the bridge is told on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeJob {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env_set: Vec<(String, String)>,
    #[serde(default)]
    pub env_remove: Vec<String>,
    pub cwd: PathBuf,
    pub prompt: String,
    /// The agent session of the previous turn.
    #[serde(default)]
    pub resume_id: Option<String>,
    /// The earlier turns, for the summary when the session cannot be loaded.
    #[serde(default)]
    pub earlier: Vec<BridgeTurn>,
    /// A file the bridge keeps the session's turns in (one JSON [`BridgeTurn`] a line),
    /// appended after each completed turn, read for the summary when `earlier` is empty. The
    /// executor puts it in the zwarm session's turn directory, so it outlives a restart.
    #[serde(default)]
    pub transcript: Option<PathBuf>,
    /// The permission level: `read-only`, `workspace-write`, `full-access`.
    pub level: Level,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default = "default_init_timeout")]
    pub init_timeout_secs: u64,
    #[serde(default = "default_cancel_grace")]
    pub cancel_grace_secs: u64,
    /// How long an `ask` waits for an answer; 0: no one is asked (an ask is a denial).
    #[serde(default)]
    pub ask_timeout_secs: u64,
    /// The session's turn directory, where asks wait for their answers
    /// ([`super::approval`]). None: no one is asked.
    #[serde(default)]
    pub approvals: Option<PathBuf>,
    /// The zwarm session this turn belongs to (the pool keeps one agent per session).
    #[serde(default)]
    pub session: Option<String>,
    /// The unix socket of `zwarm serve`'s agent pool ([`super::pool`]); None, or a socket that
    /// does not answer: the bridge runs the agent itself.
    #[serde(default)]
    pub pool: Option<PathBuf>,
    /// The pool's secret: it takes jobs only from zwarm's own executor (the socket is
    /// reachable by every process of the user, turns' executors included).
    #[serde(default)]
    pub pool_token: Option<String>,
    /// How long the pool keeps the agent after this turn, waiting for the next one.
    #[serde(default)]
    pub agent_idle_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeTurn {
    pub prompt: String,
    pub response: Option<String>,
}

fn default_init_timeout() -> u64 {
    60
}
fn default_cancel_grace() -> u64 {
    5
}

/// How long the agent gets to end after its stdin is closed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

impl BridgeJob {
    /// The agent's command line; `own_group`: in a process group of its own (the pool's
    /// agents) rather than the caller's (the bridge's, which the runner stops as a group).
    pub fn agent_command(&self, own_group: bool) -> AgentCommand {
        AgentCommand {
            program: self.program.clone(),
            args: self.args.iter().map(Into::into).collect(),
            cwd: self.cwd.clone(),
            env_set: self.env_set.clone(),
            env_remove: self.env_remove.clone(),
            share_group: !own_group,
        }
    }
}
