//! scope: keep the work on topic and inside the paths it may touch.
//!
//! * `avoid` keywords in a task/message or in an executor message → `action`;
//! * `focus` keywords: a task or message that mentions none of them → nudge;
//! * files changed outside `allowed_paths` (relative to the session's working dir) → `action`.

use serde::{Deserialize, Serialize};

use super::{Action, Call, Finding, Watcher, action_setting};
use crate::event::ExecutorEvent;
use crate::fleet::Fleet;
use crate::model::Session;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    pub enabled: bool,
    pub priority: i32,
    pub focus: Vec<String>,
    pub avoid: Vec<String>,
    /// Paths (relative to the working dir, or absolute) files may be changed in. Empty: any.
    pub allowed_paths: Vec<String>,
    pub action: String,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        ScopeConfig {
            enabled: true,
            priority: 5,
            focus: vec![],
            avoid: vec![],
            allowed_paths: vec![],
            action: "nudge".into(),
        }
    }
}

/// Resolve `.` and `..` lexically, so `src/../secrets` is not taken for a path under `src`.
fn normalize(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

pub struct Scope {
    cfg: ScopeConfig,
    action: Action,
}

impl Scope {
    pub fn new(cfg: &ScopeConfig) -> Result<Scope, String> {
        Ok(Scope {
            action: action_setting("watchers.scope.action", &cfg.action)?,
            cfg: cfg.clone(),
        })
    }

    fn avoided<'a>(&'a self, text: &str) -> Option<&'a str> {
        let lower = text.to_lowercase();
        self.cfg
            .avoid
            .iter()
            .find(|k| !k.is_empty() && lower.contains(&k.to_lowercase()))
            .map(String::as_str)
    }
}

impl Watcher for Scope {
    fn name(&self) -> &'static str {
        "scope"
    }

    fn before_call(&self, call: &Call, _fleet: &Fleet) -> Result<Finding, String> {
        let text = call.text().unwrap_or("");
        if text.is_empty() {
            return Ok(None);
        }
        if let Some(k) = self.avoided(text) {
            return Ok(Some((
                self.action,
                format!(
                    "the {} mentions `{k}`, which the configuration says to avoid. Rephrase the work so it stays out of that area.",
                    call.tool()
                ),
            )));
        }
        let lower = text.to_lowercase();
        if !self.cfg.focus.is_empty()
            && !self
                .cfg
                .focus
                .iter()
                .any(|k| lower.contains(&k.to_lowercase()))
        {
            return Ok(Some((
                Action::Nudge,
                format!(
                    "the {} mentions none of the focus areas ({}). Make sure it serves the goal.",
                    call.tool(),
                    self.cfg.focus.join(", ")
                ),
            )));
        }
        Ok(None)
    }

    fn on_event(&self, _session: &Session, event: &ExecutorEvent) -> Result<Finding, String> {
        let ExecutorEvent::AgentMessage { text } = event else {
            return Ok(None);
        };
        Ok(self.avoided(text).map(|k| {
            (
                self.action,
                format!("the executor's message mentions `{k}`, which the configuration says to avoid. Check that it stayed in scope."),
            )
        }))
    }

    fn after_turn(&self, session: &Session, _fleet: &Fleet) -> Result<Finding, String> {
        if self.cfg.allowed_paths.is_empty() {
            return Ok(None);
        }
        let Some(turn) = session.last_turn() else {
            return Ok(None);
        };
        let wd = std::path::Path::new(&session.working_dir);
        let allowed: Vec<std::path::PathBuf> = self
            .cfg
            .allowed_paths
            .iter()
            .map(|p| {
                let p = std::path::Path::new(p);
                normalize(&if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    wd.join(p)
                })
            })
            .collect();
        let outside: Vec<&str> = turn
            .files_changed
            .iter()
            .map(|f| f.path.as_str())
            .filter(|p| {
                let abs = normalize(&if std::path::Path::new(p).is_absolute() {
                    std::path::PathBuf::from(p)
                } else {
                    wd.join(p)
                });
                !allowed.iter().any(|a| abs.starts_with(a))
            })
            .collect();
        if outside.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            self.action,
            format!(
                "files changed outside the allowed paths ({}): {}. Review them and have the executor revert what does not belong.",
                self.cfg.allowed_paths.join(", "),
                outside.join(", ")
            ),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use std::path::Path;

    #[test]
    fn dot_dot_cannot_smuggle_a_path_into_an_allowed_one() {
        let p = normalize(Path::new("/w/src/../secrets/key"));
        assert_eq!(p, Path::new("/w/secrets/key"));
        assert!(!p.starts_with("/w/src"));
        assert!(normalize(Path::new("/w/./src/a.rs")).starts_with("/w/src"));
    }
}
