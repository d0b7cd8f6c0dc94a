//! pattern: regex rules over executor messages and commands, each with its own action.
//!
//! Checked as events arrive, so an `abort` rule stops a running turn the moment the executor
//! starts a matching command. The defaults catch destructive deletes of the filesystem root or
//! home and strings that look like API keys.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{Action, Finding, Watcher, action_setting};
use crate::event::ExecutorEvent;
use crate::model::Session;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternRule {
    pub name: String,
    pub regex: String,
    #[serde(default = "default_action")]
    pub action: String,
    /// `commands`, `messages` or `both`.
    #[serde(default = "default_on")]
    pub on: String,
}

fn default_action() -> String {
    "nudge".into()
}
fn default_on() -> String {
    "both".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatternConfig {
    pub enabled: bool,
    pub priority: i32,
    /// Keep the built-in rules in addition to `rules`.
    pub builtin_rules: bool,
    pub rules: Vec<PatternRule>,
}

impl Default for PatternConfig {
    fn default() -> Self {
        PatternConfig {
            enabled: true,
            priority: 20,
            builtin_rules: true,
            rules: vec![],
        }
    }
}

fn builtin() -> Vec<PatternRule> {
    vec![
        PatternRule {
            name: "rm-rf-root".into(),
            regex: r"\brm\s+(-[a-zA-Z]*[rR][a-zA-Z]*\s+)+(--no-preserve-root\s+)?(/|~|\$HOME)(\s|$|/\*)".into(),
            action: "abort".into(),
            on: "commands".into(),
        },
        PatternRule {
            name: "api-key".into(),
            regex: r"\b(sk-(ant-)?[A-Za-z0-9_-]{24,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}|xox[baprs]-[A-Za-z0-9-]{10,})\b".into(),
            action: "nudge".into(),
            on: "both".into(),
        },
    ]
}

struct Compiled {
    name: String,
    re: Regex,
    action: Action,
    commands: bool,
    messages: bool,
}

pub struct Pattern {
    rules: Vec<Compiled>,
}

impl Pattern {
    pub fn new(cfg: &PatternConfig) -> Result<Pattern, String> {
        let mut all = if cfg.builtin_rules { builtin() } else { vec![] };
        all.extend(cfg.rules.iter().cloned());
        let mut rules = Vec::new();
        for r in all {
            let re = Regex::new(&r.regex)
                .map_err(|e| format!("watchers.pattern rule `{}`: invalid regex: {e}", r.name))?;
            let (commands, messages) = match r.on.as_str() {
                "commands" => (true, false),
                "messages" => (false, true),
                "both" => (true, true),
                other => {
                    return Err(format!(
                        "watchers.pattern rule `{}`: on = `{other}`; use commands, messages or both",
                        r.name
                    ));
                }
            };
            rules.push(Compiled {
                action: action_setting(&format!("watchers.pattern rule {}", r.name), &r.action)?,
                name: r.name,
                re,
                commands,
                messages,
            });
        }
        Ok(Pattern { rules })
    }
}

impl Watcher for Pattern {
    fn name(&self) -> &'static str {
        "pattern"
    }

    fn on_event(&self, _session: &Session, event: &ExecutorEvent) -> Result<Finding, String> {
        let (text, is_command) = match event {
            ExecutorEvent::CommandStarted { command, .. } => (command.as_str(), true),
            ExecutorEvent::AgentMessage { text } => (text.as_str(), false),
            _ => return Ok(None),
        };
        let hit = self
            .rules
            .iter()
            .filter(|r| if is_command { r.commands } else { r.messages })
            .filter(|r| r.re.is_match(text))
            .max_by_key(|r| r.action);
        Ok(hit.map(|r| {
            let what = if is_command {
                format!("command `{}`", crate::text::one_line(text, 160))
            } else {
                "agent message".to_string()
            };
            (
                r.action,
                format!("rule `{}` matched the executor's {what}", r.name),
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_catch_root_deletes_and_keys_but_not_ordinary_commands() {
        let p = Pattern::new(&PatternConfig::default()).unwrap();
        let rm = p.rules.iter().find(|r| r.name == "rm-rf-root").unwrap();
        assert!(rm.re.is_match("rm -rf /"));
        assert!(rm.re.is_match("sudo rm -rf --no-preserve-root /"));
        assert!(rm.re.is_match("rm -fr ~"));
        assert!(!rm.re.is_match("rm -rf ./target"));
        assert!(!rm.re.is_match("rm -rf /tmp/build"));
        let key = p.rules.iter().find(|r| r.name == "api-key").unwrap();
        assert!(
            key.re
                .is_match("export KEY=sk-ant-abcdefghijklmnopqrstuvwxyz123")
        );
        assert!(!key.re.is_match("sk-test"));
    }

    #[test]
    fn bad_rules_are_config_errors() {
        let cfg = PatternConfig {
            rules: vec![PatternRule {
                name: "x".into(),
                regex: "(".into(),
                action: "nudge".into(),
                on: "both".into(),
            }],
            ..Default::default()
        };
        assert!(Pattern::new(&cfg).err().unwrap().contains("invalid regex"));
    }
}
