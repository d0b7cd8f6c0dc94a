//! Tool arguments and results now live in [`crate::mcp::dto`] and [`crate::mcp::report`]; these
//! re-exports keep the `zwarm::tools` paths working.

pub use crate::mcp::dto::*;
pub use crate::mcp::report::*;
