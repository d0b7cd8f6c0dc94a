//! The MCP server now lives in [`crate::mcp`]; these re-exports keep the `zwarm::server`
//! paths working.

pub use crate::mcp::{
    EVENTS_URI, INSTRUCTIONS, SESSIONS_URI, ZwarmServer, host_wait_policy, inside_executor_turn,
};
