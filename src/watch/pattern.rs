//! pattern: rules over executor messages and commands, each with its own action.
//!
//! Checked as events arrive, so an `abort` rule stops a running turn the moment the executor
//! starts a matching command. User rules are regexes over the command or message text.
//!
//! The built-in `rm-rf-root` rule does not use a regex: it reads the command the way the shell
//! will execute it ([`shell`]), so that it fires on what would really run and not on text that
//! merely mentions it. The command line is split into simple commands (`;`, `&&`, `||`, `|`,
//! `&`, newlines, subshells, `$(…)` and backquotes), words are tokenised with quotes respected,
//! `bash -lc '…'` / `sh -c "…"` / `eval …` are unwrapped, and leading `sudo`, `env VAR=…`,
//! `command`, `exec`, `nohup`, `time`, `nice`, `timeout` and assignments are skipped. It fires
//! when `rm` gets a recursive flag in any spelling (`-r`, `-R`, `-rf`, `-fr`, `-r -f`,
//! `--recursive`, with or without force and `--no-preserve-root`) and an operand that is the
//! filesystem root or the home directory (`/`, `/*`, `~`, `~/`, `$HOME`, `"$HOME"`, `${HOME}/*`).
//! `grep "rm -rf /" notes.md` or `echo 'rm -rf ~'` do not fire; neither do `rm -rf '~'` or
//! `rm -rf '$HOME'`, which name files called `~` and `$HOME`.

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

/// How a rule decides.
enum Matcher {
    /// A regex over the command or message text.
    Regex(Regex),
    /// The command, parsed as the shell would run it, deletes `/` or the home directory.
    RmRoot,
}

impl Matcher {
    fn is_match(&self, text: &str) -> bool {
        match self {
            Matcher::Regex(re) => re.is_match(text),
            Matcher::RmRoot => shell::deletes_root_or_home(text),
        }
    }
}

struct Compiled {
    name: String,
    matcher: Matcher,
    action: Action,
    commands: bool,
    messages: bool,
}

fn builtin() -> Vec<Compiled> {
    let mut out = vec![Compiled {
        name: "rm-rf-root".into(),
        matcher: Matcher::RmRoot,
        action: Action::Abort,
        commands: true,
        messages: false,
    }];
    // A constant pattern: it compiles (checked by the tests).
    if let Ok(re) = Regex::new(
        r"\b(sk-(ant-)?[A-Za-z0-9_-]{24,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}|xox[baprs]-[A-Za-z0-9-]{10,})\b",
    ) {
        out.push(Compiled {
            name: "api-key".into(),
            matcher: Matcher::Regex(re),
            action: Action::Nudge,
            commands: true,
            messages: true,
        });
    }
    out
}

pub struct Pattern {
    rules: Vec<Compiled>,
}

impl Pattern {
    pub fn new(cfg: &PatternConfig) -> Result<Pattern, String> {
        let mut rules = if cfg.builtin_rules { builtin() } else { vec![] };
        for r in &cfg.rules {
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
                name: r.name.clone(),
                matcher: Matcher::Regex(re),
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
            .filter(|r| r.matcher.is_match(text))
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

/// A small reader of POSIX shell command lines (see [`shell`]).
mod shell;

#[cfg(test)]
mod tests {
    use super::*;

    fn rm_rule(p: &Pattern) -> &Compiled {
        p.rules.iter().find(|r| r.name == "rm-rf-root").unwrap()
    }

    #[test]
    fn builtins_catch_root_deletes_and_keys_but_not_ordinary_commands() {
        let p = Pattern::new(&PatternConfig::default()).unwrap();
        let rm = rm_rule(&p);
        for hit in [
            "rm -rf /",
            "sudo rm -rf --no-preserve-root /",
            "rm -fr ~",
            "rm -r -f /",
            "rm --recursive --force /",
            "rm -Rf /*",
            "rm -rf ~/",
            "rm -rf $HOME",
            "rm -rf \"$HOME\"",
            "rm -rf \"${HOME}\"/*",
            "rm / -rf",
            "rm -rf -- /",
            "rm --rec --force //",
            "/bin/rm -rf /",
            "\\rm -rf /",
            "/bin/bash -lc 'rm -rf /'",
            "sh -c \"rm -rf ~\"",
            "bash -c 'cd /tmp && rm -rf \"$HOME\"'",
            "env VAR=1 rm -rf /",
            "cd /tmp; rm -rf / 2>/dev/null",
            "true && sudo -E rm -rf /",
            "echo $(rm -rf /)",
            "eval 'rm -rf /'",
            "nohup rm -rf ~ &",
        ] {
            assert!(rm.matcher.is_match(hit), "should match: {hit}");
        }
        for miss in [
            "rm -rf ./target",
            "rm -rf /tmp/build",
            "rm -f /",
            "rm -rf '~'",
            "rm -rf '$HOME'",
            "rm -rf \"/*\"",
            "rm -rf $HOME/.cache",
            "rm -rf ~/project/target",
            "grep -n \"rm -rf / \" docs/SAFETY.md",
            "echo 'rm -rf ~'",
            "echo rm -rf /",
            "git commit -m 'rm -rf / is dangerous'",
            "cat <<EOF\nrm -rf /\nEOF",
            "ls # rm -rf /",
            "command -v rm",
            "bash script.sh /",
        ] {
            assert!(!rm.matcher.is_match(miss), "should not match: {miss}");
        }
        let key = p.rules.iter().find(|r| r.name == "api-key").unwrap();
        assert!(
            key.matcher
                .is_match("export KEY=sk-ant-abcdefghijklmnopqrstuvwxyz123")
        );
        assert!(!key.matcher.is_match("sk-test"));
    }

    #[test]
    fn user_rules_are_regexes_over_the_text() {
        let p = Pattern::new(&PatternConfig {
            builtin_rules: false,
            rules: vec![PatternRule {
                name: "no-force-push".into(),
                regex: "git push .*--force".into(),
                action: "pause".into(),
                on: "commands".into(),
            }],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.rules.len(), 1);
        assert!(p.rules[0].matcher.is_match("git push origin main --force"));
        assert!(!p.rules[0].matcher.is_match("git push origin main"));
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
