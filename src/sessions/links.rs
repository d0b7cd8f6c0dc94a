//! Where the host can read more about a session: its MCP resource addresses.
//!
//! The engine knows nothing of MCP; this is the one place it still names a resource address,
//! for [`super::Manager::diff_stat`] (check_session's `diff.full_diff`). It belongs to the MCP
//! layer: once that layer calls [`super::Manager::diff_stat_at`] with its own address, this
//! file and `diff_stat` go.

/// The resource holding a worktree session's whole diff.
pub(crate) fn session_diff_uri(id: &str) -> String {
    format!("{}/diff", crate::tools::session_uri(id))
}
