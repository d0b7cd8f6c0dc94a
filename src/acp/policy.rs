//! The permission policy: how zwarm answers an agent's `session/request_permission`.
//!
//! A request names a tool call (its ACP kind: read, edit, delete, move, search, execute,
//! think, fetch, switch_mode, other), a title, the raw input (a command, a file path) and the
//! paths it touches. The policy answers **allow**, **deny** or **ask**:
//!
//! 1. The configured rules, in order; the first whose kinds and pattern match decides.
//! 2. Else the defaults of the session's permission [`Level`].
//! 3. Rules from the project file (untrusted: an executor can write it) are checked apart:
//!    the first of them that matches wins only when it is stricter (deny > ask > allow); their
//!    `allow` never counts.
//!
//! Every answer is a [`Decision`] naming the rule that made it (`rule 2 (deny execute
//! /rm -rf/)`, `default workspace-write: edit inside the working dir`), so the record says why.

use std::path::{Component, Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Serialize};

/// allow / deny / ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    /// A person or the orchestrator answers; no answer in time is a denial.
    Ask,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ask => "ask",
        }
    }
}

/// The session's permission level, from the sandbox / permission mode it was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Reads and searches only.
    ReadOnly,
    /// Reads anywhere; edits inside the working directory; commands and fetches are asked.
    WorkspaceWrite,
    /// Everything.
    FullAccess,
}

impl Level {
    /// From a codex sandbox (`read-only`, `workspace-write`, `danger-full-access`) or a claude
    /// permission mode (`plan`, `default`, `acceptEdits`, `bypassPermissions`).
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim() {
            "read-only" | "plan" => Some(Level::ReadOnly),
            "workspace-write" | "default" | "acceptEdits" | "auto-edit" => {
                Some(Level::WorkspaceWrite)
            }
            "danger-full-access" | "full-access" | "bypassPermissions" | "yolo" => {
                Some(Level::FullAccess)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::ReadOnly => "read-only",
            Level::WorkspaceWrite => "workspace-write",
            Level::FullAccess => "full-access",
        }
    }
}

/// What an agent asks permission for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionAsk {
    pub tool_call_id: String,
    /// The ACP tool kind (`edit`, `execute`, …; `other` when the agent gave none).
    pub kind: String,
    pub title: String,
    /// The command, for `execute`.
    pub command: Option<String>,
    /// The paths it touches (locations and path-like input fields), absolute where the agent
    /// gave them so.
    pub paths: Vec<String>,
    pub input: serde_json::Value,
}

/// One configured rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rule {
    pub verdict: Verdict,
    /// The tool kinds it applies to; empty: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// A regular expression matched against the command (execute) and each path; absent:
    /// every request of those kinds.
    #[serde(default)]
    pub pattern: Option<String>,
    /// From the project file (zwarm marks them so): it may only make a decision stricter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub project: bool,
}

/// The answer and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that made it, readable.
    pub rule: String,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "permission rule {index}: the pattern {pattern:?} is not a valid regular expression: {error}"
)]
pub struct PolicyError {
    pub index: usize,
    pub pattern: String,
    pub error: String,
}

/// The policy of one session.
#[derive(Debug, Clone)]
pub struct Policy {
    level: Level,
    working_dir: PathBuf,
    rules: Vec<(Rule, Option<Regex>)>,
}

impl Policy {
    /// The defaults of `level` for a session working in `working_dir`, no rules.
    pub fn new(level: Level, working_dir: impl Into<PathBuf>) -> Policy {
        Policy {
            level,
            working_dir: working_dir.into(),
            rules: Vec::new(),
        }
    }

    /// Rules checked before the defaults, in order.
    pub fn with_rules(mut self, rules: Vec<Rule>) -> Result<Policy, PolicyError> {
        for (i, r) in rules.into_iter().enumerate() {
            let re = match &r.pattern {
                Some(p) => Some(Regex::new(p).map_err(|e| PolicyError {
                    index: i + 1,
                    pattern: p.clone(),
                    error: e.to_string(),
                })?),
                None => None,
            };
            self.rules.push((r, re));
        }
        Ok(self)
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn decide(&self, ask: &PermissionAsk) -> Decision {
        let trusted = self
            .first_match(ask, false)
            .unwrap_or_else(|| self.default_decision(ask));
        match self.first_match(ask, true) {
            Some(p) if strictness(p.verdict) > strictness(trusted.verdict) => p,
            _ => trusted,
        }
    }

    /// The first matching rule of the trusted layers (`project` false) or of the project file.
    fn first_match(&self, ask: &PermissionAsk, project: bool) -> Option<Decision> {
        for (i, (rule, re)) in self.rules.iter().enumerate() {
            if rule.project != project
                || (project && rule.verdict == Verdict::Allow)
                || (!rule.kinds.is_empty() && !rule.kinds.iter().any(|k| k == &ask.kind))
            {
                continue;
            }
            let hit = match re {
                None => true,
                Some(re) => {
                    ask.command.as_deref().is_some_and(|c| re.is_match(c))
                        || ask.paths.iter().any(|p| re.is_match(p))
                        || (ask.command.is_none()
                            && ask.paths.is_empty()
                            && re.is_match(&ask.title))
                }
            };
            if hit {
                let what = match (&rule.kinds[..], &rule.pattern) {
                    ([], None) => "any".to_string(),
                    ([], Some(p)) => format!("/{p}/"),
                    (k, None) => k.join(","),
                    (k, Some(p)) => format!("{} /{p}/", k.join(",")),
                };
                return Some(Decision {
                    verdict: rule.verdict,
                    rule: format!(
                        "rule {}{} ({} {what})",
                        i + 1,
                        if project { " of the project file" } else { "" },
                        rule.verdict.as_str()
                    ),
                });
            }
        }
        None
    }

    fn default_decision(&self, ask: &PermissionAsk) -> Decision {
        let level = self.level.as_str();
        let d = |verdict: Verdict, why: &str| Decision {
            verdict,
            rule: format!("default {level}: {why}"),
        };
        match (self.level, ask.kind.as_str()) {
            (Level::FullAccess, k) => d(Verdict::Allow, &format!("{k} allowed")),
            (_, "read" | "search" | "think") => d(Verdict::Allow, &format!("{} allowed", ask.kind)),
            (Level::ReadOnly, k) => d(Verdict::Deny, &format!("{k} not allowed read-only")),
            (Level::WorkspaceWrite, "edit" | "delete" | "move") => {
                if ask.paths.is_empty() {
                    d(
                        Verdict::Ask,
                        &format!("{} of no named path is asked", ask.kind),
                    )
                } else if ask.paths.iter().all(|p| self.inside(p)) {
                    d(
                        Verdict::Allow,
                        &format!("{} inside the working dir", ask.kind),
                    )
                } else {
                    d(
                        Verdict::Deny,
                        &format!("{} outside the working dir", ask.kind),
                    )
                }
            }
            (Level::WorkspaceWrite, k) => d(Verdict::Ask, &format!("{k} is asked")),
        }
    }

    /// Is `p` (absolute, or relative to the working dir) inside the working dir, lexically
    /// (`..` resolved, symlinks not followed).
    fn inside(&self, p: &str) -> bool {
        let path = Path::new(p);
        let full = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.working_dir.join(path)
        };
        normalize(&full).starts_with(normalize(&self.working_dir))
    }
}

/// deny > ask > allow.
fn strictness(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Ask => 1,
        Verdict::Deny => 2,
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ask(kind: &str, command: Option<&str>, paths: &[&str]) -> PermissionAsk {
        PermissionAsk {
            tool_call_id: "t1".into(),
            kind: kind.into(),
            title: "x".into(),
            command: command.map(str::to_string),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            input: json!({}),
        }
    }

    #[test]
    fn defaults_follow_the_level() {
        let ws = Policy::new(Level::WorkspaceWrite, "/w/p");
        assert_eq!(
            ws.decide(&ask("edit", None, &["/w/p/a.txt"])).verdict,
            Verdict::Allow
        );
        assert_eq!(
            ws.decide(&ask("edit", None, &["src/a.rs"])).verdict,
            Verdict::Allow
        );
        let out = ws.decide(&ask("edit", None, &["/w/p/../q/a.txt"]));
        assert_eq!(out.verdict, Verdict::Deny);
        assert_eq!(
            out.rule,
            "default workspace-write: edit outside the working dir"
        );
        assert_eq!(
            ws.decide(&ask("execute", Some("ls"), &[])).verdict,
            Verdict::Ask
        );
        assert_eq!(
            ws.decide(&ask("read", None, &["/etc/x"])).verdict,
            Verdict::Allow
        );
        let ro = Policy::new(Level::ReadOnly, "/w/p");
        assert_eq!(
            ro.decide(&ask("edit", None, &["/w/p/a"])).verdict,
            Verdict::Deny
        );
        assert_eq!(ro.decide(&ask("search", None, &[])).verdict, Verdict::Allow);
        let full = Policy::new(Level::FullAccess, "/w/p");
        assert_eq!(
            full.decide(&ask("execute", Some("rm -rf /"), &[])).verdict,
            Verdict::Allow
        );
        assert_eq!(Level::parse("acceptEdits"), Some(Level::WorkspaceWrite));
        assert_eq!(Level::parse("nonsense"), None);
    }

    #[test]
    fn the_first_matching_rule_decides_and_is_named() {
        let p = Policy::new(Level::FullAccess, "/w/p")
            .with_rules(vec![
                Rule {
                    verdict: Verdict::Deny,
                    kinds: vec!["execute".into()],
                    pattern: Some(r"^rm\b".into()),
                    project: false,
                },
                Rule {
                    verdict: Verdict::Deny,
                    kinds: vec![],
                    pattern: Some(r"secret".into()),
                    project: false,
                },
            ])
            .unwrap();
        let d = p.decide(&ask("execute", Some("rm -rf x"), &[]));
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.rule, r"rule 1 (deny execute /^rm\b/)");
        assert_eq!(
            p.decide(&ask("execute", Some("ls"), &[])).verdict,
            Verdict::Allow
        );
        let d = p.decide(&ask("edit", None, &["/w/p/secret.txt"]));
        assert_eq!(d.rule, "rule 2 (deny /secret/)");
        let bad = Policy::new(Level::FullAccess, "/").with_rules(vec![Rule {
            verdict: Verdict::Deny,
            kinds: vec![],
            pattern: Some("(".into()),
            project: false,
        }]);
        assert!(bad.unwrap_err().to_string().contains("rule 1"));
    }

    #[test]
    fn project_rules_only_make_a_decision_stricter() {
        let rule = |verdict, pattern: &str, project| Rule {
            verdict,
            kinds: vec![],
            pattern: Some(pattern.into()),
            project,
        };
        let p = Policy::new(Level::WorkspaceWrite, "/w/p")
            .with_rules(vec![
                rule(Verdict::Allow, "^make", false),
                rule(Verdict::Allow, ".", true),
                rule(Verdict::Ask, "^make", true),
                rule(Verdict::Deny, "secret", true),
            ])
            .unwrap();
        // The project's ask is stricter than the user's allow.
        let d = p.decide(&ask("execute", Some("make test"), &[]));
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Ask, "rule 3 of the project file (ask /^make/)")
        );
        // Its allow never counts: an edit outside the working dir stays denied.
        let d = p.decide(&ask("edit", None, &["/elsewhere/a"]));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.rule.starts_with("default"), "{}", d.rule);
        // Its deny wins over the level's allow.
        let d = p.decide(&ask("edit", None, &["/w/p/secret.txt"]));
        assert_eq!(d.verdict, Verdict::Deny);
        // Not stricter: the trusted decision stands.
        let strict = Policy::new(Level::ReadOnly, "/w/p")
            .with_rules(vec![rule(Verdict::Ask, ".", true)])
            .unwrap();
        assert_eq!(
            strict.decide(&ask("edit", None, &["/w/p/a"])).verdict,
            Verdict::Deny
        );
    }
}
