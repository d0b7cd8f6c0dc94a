//! The pattern watcher through its public API (`Watchers::from_config` + `on_event`): the
//! built-in `rm-rf-root` rule fires on commands that would really delete `/` or the home
//! directory, as codex and claude report them, and not on commands that only mention it.
//! User rules stay regexes over the command text.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use serde_json::json;
use zwarm::event::ExecutorEvent;
use zwarm::model::{Action, Session};
use zwarm::watch::{PatternConfig, PatternRule, Watchers, WatchersConfig};

fn session() -> Session {
    serde_json::from_value(json!({
        "id": "s1",
        "adapter": "codex",
        "mode": "sync",
        "status": "running",
        "task": "t",
        "working_dir": "/w",
        "model": null,
        "native_id": null,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "turns": [],
        "error": null,
        "summary": null,
        "owner": {"pid": 1, "instance": "i"}
    }))
    .expect("a session")
}

/// Only the pattern watcher, with the given config.
fn watchers(pattern: PatternConfig) -> Watchers {
    let mut cfg = WatchersConfig {
        pattern,
        ..Default::default()
    };
    cfg.progress.enabled = false;
    cfg.budget.enabled = false;
    cfg.scope.enabled = false;
    cfg.quality.enabled = false;
    Watchers::from_config(&cfg).expect("watchers")
}

/// The strongest action the pattern watcher takes on one command (a fresh registry each
/// time: an abort is final for the registry that saw it).
fn on_command(pattern: &PatternConfig, command: &str) -> Option<(Action, String)> {
    let w = watchers(pattern.clone());
    let firings = w.on_event(
        &session(),
        &ExecutorEvent::CommandStarted {
            id: "c1".into(),
            command: command.into(),
        },
    );
    firings
        .into_iter()
        .max_by_key(|f| f.action)
        .map(|f| (f.action, f.message))
}

const DELETES_ROOT_OR_HOME: &[&str] = &[
    // codex reports commands wrapped in a login shell
    "/bin/bash -lc 'rm -rf /'",
    "/bin/bash -lc 'rm -rf ~'",
    "/bin/bash -lc 'cd /tmp && rm -rf \"$HOME\"'",
    "/bin/bash -lc 'rm -rf '\"'\"'/'\"'\"''",
    "sh -c \"rm -rf \\\"$HOME\\\"/*\"",
    // claude reports them as typed
    "rm -rf /",
    "rm -fr /",
    "rm -r -f /",
    "rm -Rf /",
    "rm --recursive --force /",
    "rm -rf --no-preserve-root /",
    "rm -rf /*",
    "rm -rf ~",
    "rm -rf ~/",
    "rm -rf ~/*",
    "rm -rf $HOME",
    "rm -rf \"$HOME\"",
    "rm -rf ${HOME}/",
    "rm -rf -- /",
    "rm / -rf",
    "/usr/bin/rm -rf /",
    "sudo rm -rf /",
    "sudo -u root -E rm -rf /",
    "env VAR=1 rm -rf /",
    "env -i PATH=/bin rm -rf ~",
    "LC_ALL=C command rm -rf /",
    "exec rm -rf /",
    "nohup rm -rf / &",
    "time rm -rf /",
    "echo start; rm -rf / 2>/dev/null; echo done",
    "make clean && rm -rf ~",
    "false || rm -rf /",
    "ls | rm -rf /",
    "cd /tmp\nrm -rf /",
    "x=$(rm -rf ~)",
    "bash -c 'sudo bash -c \"rm -rf /\"'",
    "eval \"rm -rf /\"",
];

const HARMLESS: &[&str] = &[
    "grep -n \"rm -rf / \" docs/SAFETY.md",
    "echo 'rm -rf ~'",
    "/bin/bash -lc 'echo '\"'\"'rm -rf /'\"'\"''",
    "/bin/bash -lc 'grep -rn \"rm -rf /\" .'",
    "git commit -m 'never run rm -rf /'",
    "printf '%s\\n' \"rm -rf \\$HOME\"",
    "rm -rf ./target",
    "rm -rf /tmp/build",
    "rm -rf target/ /tmp/x",
    "rm -rf ~/project/target",
    "rm -rf \"$HOME/.cache/zwarm\"",
    "rm -rf '~'",
    "rm -rf '$HOME'",
    "rm -f /",
    "rm /",
    "cat <<'EOF' > notes.md\nrm -rf /\nEOF",
    "ls # rm -rf /",
    "command -v rm",
    "man rm",
    "bash ./cleanup.sh /",
];

#[test]
fn builtin_rule_aborts_on_deletes_of_root_or_home_as_executed() {
    let cfg = PatternConfig::default();
    for cmd in DELETES_ROOT_OR_HOME {
        match on_command(&cfg, cmd) {
            Some((Action::Abort, message)) => {
                assert!(message.contains("rm-rf-root"), "{cmd}: {message}")
            }
            other => panic!("`{cmd}` should abort, got {other:?}"),
        }
    }
}

#[test]
fn builtin_rule_ignores_commands_that_only_mention_it() {
    let cfg = PatternConfig::default();
    for cmd in HARMLESS {
        assert_eq!(on_command(&cfg, cmd), None, "`{cmd}` should not fire");
    }
}

#[test]
fn builtin_rule_is_off_without_builtin_rules() {
    let cfg = PatternConfig {
        builtin_rules: false,
        ..Default::default()
    };
    assert_eq!(on_command(&cfg, "rm -rf /"), None);
}

#[test]
fn user_rules_are_still_regexes_over_the_command_string() {
    let cfg = PatternConfig {
        builtin_rules: false,
        rules: vec![
            PatternRule {
                name: "no-force-push".into(),
                regex: "git push .*--force".into(),
                action: "pause".into(),
                on: "commands".into(),
            },
            PatternRule {
                name: "mentions-rm".into(),
                regex: r"rm -rf /\s".into(),
                action: "nudge".into(),
                on: "both".into(),
            },
        ],
        ..Default::default()
    };
    let (action, message) =
        on_command(&cfg, "/bin/bash -lc 'git push origin main --force'").expect("fires");
    assert_eq!(action, Action::Pause);
    assert!(message.contains("no-force-push"), "{message}");
    // A regex sees the text, quotes and all: a user rule can still match a mention.
    let (action, _) = on_command(&cfg, "grep -n \"rm -rf / \" docs/SAFETY.md").expect("fires");
    assert_eq!(action, Action::Nudge);
    assert_eq!(on_command(&cfg, "git push origin main"), None);
}

#[test]
fn api_key_rule_still_fires_on_messages_and_commands() {
    let w = watchers(PatternConfig::default());
    let f = w.on_event(
        &session(),
        &ExecutorEvent::AgentMessage {
            text: "use sk-ant-abcdefghijklmnopqrstuvwxyz123".into(),
        },
    );
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].action, Action::Nudge);
    assert!(f[0].message.contains("api-key"));
}
