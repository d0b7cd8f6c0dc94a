//! zwarm: an MCP server that lets one coding agent (the orchestrator) drive many others.
//!
//! Data flows one way: MCP tool handler ([`server`], thin) → session manager ([`manager`]) →
//! executor per CLI ([`executor`]) → child process ([`process`]) whose output becomes
//! [`event::ExecutorEvent`]s that update the [`session`] records kept by the [`store`].

pub mod acp;
pub mod cli;
pub mod config;
pub mod container;
pub mod event;
pub mod executor;
pub mod fleet;
pub mod git;
pub mod kube;
pub mod mcp;
pub mod model;
pub mod process;
pub mod prompt;
pub mod runner;
pub mod server;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tools;
pub mod watch;
pub mod worktree;
