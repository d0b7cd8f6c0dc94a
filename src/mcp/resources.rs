//! Resources: the session index (paged), each session's transcript and diff, the event log;
//! subscriptions to them, and the task that turns session changes into `resources/updated`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, Resource, ResourceTemplate,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::{Peer, SubscriptionSink};
use rmcp::{ErrorData as McpError, RoleServer};

use super::ZwarmServer;
use super::dto::SessionRow;
use super::errors::tool_error;
use super::report::{session_row, session_uri};
use crate::model::Session;
use crate::sessions::{Manager, ManagerError};

pub const SESSIONS_URI: &str = "zwarm://sessions";
pub const EVENTS_URI: &str = "zwarm://events";

/// The most sessions one page of `zwarm://sessions` holds.
pub const MAX_PAGE: usize = 200;

/// Resource subscriptions (2025 style): each resource once, with the client that asked
/// (a stdio server has one client; a repeated subscription replaces the earlier one).
pub(super) type Subscriptions = Arc<Mutex<BTreeMap<String, Peer<RoleServer>>>>;

/// `subscriptions/listen` streams: the sink, and each accepted uri as the client wrote it
/// (notifications must use that spelling) with the uri zwarm's changes are matched against
/// (a session prefix resolved to the full id).
pub(super) type Listeners = Arc<Mutex<Vec<(SubscriptionSink, Vec<(String, String)>)>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a change to the sessions in `changed` (or to unknown ones: `everything`) touches
/// the resource `uri`.
fn hit(uri: &str, changed: &BTreeSet<String>, everything: bool, diffs: bool) -> bool {
    everything
        || (uri == SESSIONS_URI || uri.starts_with("zwarm://sessions?")) && !changed.is_empty()
        || changed.iter().any(|id| session_uri(id) == uri)
        || diffs
            && changed
                .iter()
                .any(|id| format!("{}/diff", session_uri(id)) == uri)
}

/// Start the task that notifies subscribers of session changes. Must run inside a tokio
/// runtime.
pub(super) fn spawn_notifier(manager: &Manager, subs: Subscriptions, listeners: Listeners) {
    let mut changes = manager.subscribe_changes();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            // Coalesce: a chatty executor changes its session many times a second; send at
            // most one notification per resource every 100 ms.
            let mut changed: BTreeSet<String> = BTreeSet::new();
            // Missed changes (the feed lagged) are unknown ones: notify every subscription.
            let mut everything = false;
            match changes.recv().await {
                Ok(id) => {
                    changed.insert(id);
                }
                Err(RecvError::Lagged(_)) => everything = true,
                Err(RecvError::Closed) => break,
            }
            let window = tokio::time::sleep(Duration::from_millis(100));
            tokio::pin!(window);
            loop {
                tokio::select! {
                    _ = &mut window => break,
                    r = changes.recv() => match r {
                        Ok(id) => { changed.insert(id); }
                        Err(RecvError::Lagged(_)) => everything = true,
                        Err(RecvError::Closed) => break,
                    },
                }
            }
            let subs_now: Vec<(String, Peer<RoleServer>)> = lock(&subs)
                .iter()
                .map(|(u, p)| (u.clone(), p.clone()))
                .collect();
            for (u, peer) in subs_now {
                if hit(&u, &changed, everything, true) {
                    let _ = peer
                        .notify_resource_updated(ResourceUpdatedNotificationParam::new(u))
                        .await;
                }
            }
            let listeners_now = lock(&listeners).clone();
            for (sink, uris) in listeners_now {
                for (asked, u) in uris {
                    if hit(&u, &changed, everything, false) {
                        let _ = sink.notify_resource_updated(asked).await;
                    }
                }
            }
        }
    });
}

/// `offset` and `limit` of a `zwarm://sessions?offset=N&limit=M` uri.
fn page_params(query: &str, default_limit: usize) -> Result<(usize, usize), String> {
    let (mut offset, mut limit) = (0usize, default_limit);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: usize = v
            .parse()
            .map_err(|_| format!("`{k}` must be a whole number, got `{v}`"))?;
        match k {
            "offset" => offset = n,
            "limit" => limit = n.clamp(1, MAX_PAGE),
            _ => return Err(format!("unknown parameter `{k}`: use offset and limit")),
        }
    }
    Ok((offset, limit))
}

impl ZwarmServer {
    fn not_found(uri: &str, what: String) -> McpError {
        McpError::resource_not_found(
            format!(
                "{}. Resources: {SESSIONS_URI} (paged: ?offset=N&limit=M), {SESSIONS_URI}/{{id}}, {SESSIONS_URI}/{{id}}/diff, {EVENTS_URI}",
                what.trim_end_matches('.')
            ),
            Some(serde_json::json!({ "uri": uri })),
        )
    }

    /// The uri a subscription is kept under: a session named by a prefix gets its full id,
    /// which notifications use. Checks the resource exists without reading it.
    pub(super) async fn subscription_uri(&self, uri: &str) -> Result<String, McpError> {
        if uri == SESSIONS_URI || uri == EVENTS_URI {
            return Ok(uri.to_string());
        }
        if let Some(q) = uri.strip_prefix("zwarm://sessions?") {
            page_params(q, 1).map_err(|e| Self::not_found(uri, e))?;
            return Ok(uri.to_string());
        }
        let Some(rest) = uri.strip_prefix("zwarm://sessions/") else {
            return Err(Self::not_found(uri, format!("unknown resource `{uri}`")));
        };
        let (id, diff) = match rest.strip_suffix("/diff") {
            Some(id) => (id, true),
            None => (rest, false),
        };
        let full = self
            .manager
            .resolve(id)
            .await
            .map_err(|e| Self::not_found(uri, tool_error(&e)))?;
        Ok(if diff {
            format!("{}/diff", session_uri(&full))
        } else {
            session_uri(&full)
        })
    }

    /// Like [`Self::subscription_uri`], but an unknown resource is kept as written.
    pub(super) async fn normalize_uri(&self, uri: &str) -> String {
        self.subscription_uri(uri)
            .await
            .unwrap_or_else(|_| uri.to_string())
    }

    pub(super) fn subscribe_uri(&self, uri: String, peer: Peer<RoleServer>) {
        lock(&self.subs).insert(uri, peer);
    }

    pub(super) fn unsubscribe_uri(&self, normalized: &str, asked: &str) {
        let mut subs = lock(&self.subs);
        subs.remove(normalized);
        subs.remove(asked);
    }

    pub(super) fn add_listener(&self, sink: SubscriptionSink, uris: Vec<(String, String)>) {
        lock(&self.listeners).push((sink, uris));
    }

    pub(super) fn remove_listener(&self, sink: &SubscriptionSink) {
        lock(&self.listeners).retain(|(s, _)| s.id() != sink.id());
    }

    /// The text of a resource.
    pub(super) async fn read(&self, uri: &str) -> Result<String, McpError> {
        let internal = |e: ManagerError| McpError::internal_error(e.to_string(), None);
        let text = if uri == SESSIONS_URI || uri.starts_with("zwarm://sessions?") {
            let query = uri.strip_prefix("zwarm://sessions?").unwrap_or("");
            let page_size = self.manager.config().list_page_size.clamp(1, MAX_PAGE);
            let (offset, limit) =
                page_params(query, page_size).map_err(|e| Self::not_found(uri, e))?;
            let page = self
                .manager
                .list(None, limit, offset)
                .await
                .map_err(internal)?;
            let rows: Vec<SessionRow> = page.sessions.into_iter().map(session_row).collect();
            let next = offset + rows.len();
            let more = next < page.total;
            serde_json::to_string_pretty(&serde_json::json!({
                "count": rows.len(),
                "total": page.total,
                "offset": offset,
                "next_offset": more.then_some(next),
                "next_uri": more.then(|| format!("{SESSIONS_URI}?offset={next}&limit={limit}")),
                "sessions": rows,
            }))
        } else if let Some(id) = uri
            .strip_prefix("zwarm://sessions/")
            .and_then(|r| r.strip_suffix("/diff"))
        {
            return self
                .manager
                .diff_text(id)
                .await
                .map_err(|e| Self::not_found(uri, format!("no diff for session `{id}`: {e}")));
        } else if uri == EVENTS_URI {
            serde_json::to_string_pretty(&self.manager.recent_events(200).await.map_err(internal)?)
        } else if let Some(id) = uri.strip_prefix("zwarm://sessions/") {
            let s = self
                .manager
                .get(id)
                .await
                .map_err(|e| Self::not_found(uri, tool_error(&e)))?;
            serde_json::to_string_pretty(&transcript(&s))
        } else {
            return Err(Self::not_found(uri, format!("unknown resource `{uri}`")));
        };
        text.map_err(|e| McpError::internal_error(e.to_string(), None))
    }
}

pub(super) fn resource_list() -> ListResourcesResult {
    ListResourcesResult::with_all_items(vec![
        Resource::new(SESSIONS_URI, "sessions")
            .with_description("Index of all zwarm sessions (status, adapter, task, turns, usage)")
            .with_mime_type("application/json"),
        Resource::new(EVENTS_URI, "events")
            .with_description("The last 200 entries of zwarm's event log")
            .with_mime_type("application/json"),
    ])
}

pub(super) fn resource_templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new("zwarm://sessions/{id}", "session-transcript")
            .with_description(
                "Full transcript of one session: every turn's prompt, complete response, agent messages, commands with exit codes, file changes, permission denials and usage",
            )
            .with_mime_type("application/json"),
        ResourceTemplate::new("zwarm://sessions/{id}/diff", "session-diff")
            .with_description(
                "The whole unified diff of a worktree session (isolation \"worktree\") versus its base: committed turns and what is not committed yet",
            )
            .with_mime_type("text/x-diff"),
    ])
}

/// The full record of a session, as the `zwarm://sessions/{id}` resource shows it.
fn transcript(s: &Session) -> serde_json::Value {
    serde_json::json!({
        "session_id": s.id,
        "status": s.status,
        "adapter": s.adapter,
        "mode": s.mode,
        "task": s.task,
        "working_dir": s.working_dir,
        "model": s.model,
        "native_id": s.native_id,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "error": s.error,
        "summary": s.summary,
        "usage": s.total_usage(),
        "cost_usd": s.total_cost(),
        "recent_progress": s.recent,
        "watcher_notes": s.watcher_notes,
        "turns": s.turns,
        "isolation": s.isolation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_bounded_and_bad_parameters_named() {
        assert_eq!(page_params("", 50), Ok((0, 50)));
        assert_eq!(
            page_params("offset=10&limit=100000", 50),
            Ok((10, MAX_PAGE))
        );
        assert!(
            page_params("limit=ten", 50)
                .unwrap_err()
                .contains("`limit`")
        );
        assert!(page_params("foo=1", 50).is_err());
    }
}
