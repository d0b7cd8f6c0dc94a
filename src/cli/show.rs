//! `zwarm show ID`: a session's transcript, for a person (or as JSON).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{StateArgs, fmt_cost, fmt_duration, fmt_time, open_state, parse_time};
use crate::event::{ToolError, Usage};
use crate::model::{Session, Turn};

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Session id, or a unique prefix of 8 or more characters.
    pub id: String,
    /// Print the whole session record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print the end of each command's output.
    #[arg(long)]
    pub output: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn main(a: ShowArgs) -> anyhow::Result<i32> {
    let cfg = a.state.load()?;
    let store = open_state(&cfg)?;
    let id = store.resolve(&a.id)?;
    let Some(s) = store.load_session(&id)? else {
        anyhow::bail!("session {id} is gone from the state database");
    };
    let decisions = decisions_of(store.root(), &s);
    if a.json {
        let mut v = to_json(&s);
        if let Value::Object(o) = &mut v {
            o.insert(
                "permission_decisions".into(),
                serde_json::to_value(&decisions).unwrap_or_default(),
            );
        }
        super::out(&format!("{v}\n"))?;
    } else {
        let cut = unfinished(store.root(), &s);
        let mut lines = transcript_with(&s, a.output, &cut);
        insert_decisions(&mut lines, &s, &decisions);
        super::out(&lines.join("\n"))?;
        super::out("\n")?;
    }
    Ok(0)
}

/// The session record as JSON, with its totals.
pub fn to_json(s: &Session) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_else(|_| json!({}));
    if let Value::Object(o) = &mut v {
        o.remove("native_usage");
        o.insert("session_id".into(), Value::String(s.id.clone()));
        o.insert("usage".into(), json!(s.total_usage()));
        o.insert("cost_usd".into(), json!(s.total_cost()));
    }
    v
}

fn usage_line(u: &Usage, cost: Option<f64>) -> String {
    format!(
        "in {} (cached {}) · out {} (reasoning {}) · cost {}",
        u.input_tokens,
        u.cached_input_tokens,
        u.output_tokens,
        u.reasoning_output_tokens,
        fmt_cost(cost)
    )
}

fn indented(out: &mut Vec<String>, text: &str) {
    for l in text.lines() {
        out.push(format!("    {l}"));
    }
    if text.is_empty() {
        out.push("    (empty)".into());
    }
}

fn turn_duration(t: &Turn) -> Option<String> {
    let start = parse_time(&t.started_at)?;
    let end = t.ended_at.as_deref().and_then(parse_time)?;
    let d = end.duration_since(start).ok()?;
    Some(if d.as_secs() < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        fmt_duration(d.as_secs())
    })
}

fn file_mark(kind: &str) -> &'static str {
    match kind {
        "add" => "+",
        "delete" => "-",
        _ => "~",
    }
}

/// What became of a session's worktree and branch, in words.
pub fn worktree_text(state: crate::model::WorktreeState) -> &'static str {
    use crate::model::WorktreeState::*;
    match state {
        Active => "worktree active",
        Merged => "merged; worktree removed, branch kept",
        Kept => "branch kept; worktree removed",
        Discarded => "branch and worktree removed",
    }
}

/// A tool error as one line: `Write /a/b.txt failed: File does not exist`.
pub fn tool_error_line(e: &ToolError) -> String {
    let input = if e.input.is_empty() {
        String::new()
    } else {
        format!(" {}", crate::text::one_line(&e.input, 120))
    };
    format!(
        "{}{input} failed: {}",
        e.tool,
        crate::text::one_line(&e.message, 200)
    )
}

/// The commands each turn started and never finished (read from the turns' raw logs), for
/// turns that did not complete: a command cut off by `end`, Ctrl-C or a failure, or one that
/// is still running.
pub fn unfinished(state: &std::path::Path, s: &Session) -> HashMap<u32, Vec<String>> {
    s.turns
        .iter()
        .filter(|t| t.status != crate::model::TurnStatus::Completed)
        .map(|t| {
            let evs = super::activity::read_turn(state, &s.id, t.index, s.adapter);
            (t.index, super::activity::unfinished_commands(&evs))
        })
        .filter(|(_, c)| !c.is_empty())
        .collect()
}

/// The transcript as lines of text (also shown by `zwarm top`).
pub fn transcript(s: &Session, with_output: bool) -> Vec<String> {
    transcript_with(s, with_output, &HashMap::new())
}

/// The transcript, with the commands [`unfinished`] found.
pub fn transcript_with(
    s: &Session,
    with_output: bool,
    unfinished: &HashMap<u32, Vec<String>>,
) -> Vec<String> {
    let mut o = Vec::new();
    let mode = serde_json::to_value(s.mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    o.push(format!(
        "session {}  ({}, {}, {mode})",
        s.id,
        s.adapter.as_str(),
        s.status.as_str()
    ));
    o.push(format!("task     {}", first_line(&s.task)));
    if s.task.lines().count() > 1 {
        for l in s.task.lines().skip(1) {
            o.push(format!("         {l}"));
        }
    }
    let removed = s
        .isolation
        .as_ref()
        .is_some_and(|i| i.state != crate::model::WorktreeState::Active);
    o.push(format!(
        "dir      {}{}",
        s.working_dir,
        if removed { " (removed)" } else { "" }
    ));
    if let Some(iso) = &s.isolation {
        o.push(format!(
            "branch   {} from {} ({})    {}{}",
            iso.branch,
            iso.base.get(..12).unwrap_or(&iso.base),
            iso.base_ref,
            worktree_text(iso.state),
            iso.merged_commit
                .as_deref()
                .map(|c| format!(", merged at {}", c.get(..12).unwrap_or(c)))
                .unwrap_or_default()
        ));
        o.push(format!("project  {}", iso.project_dir));
    }
    o.push(format!(
        "model    {}    native id {}",
        s.model.as_deref().unwrap_or("(executor default)"),
        s.native_id.as_deref().unwrap_or("-")
    ));
    o.push(format!(
        "created  {}    updated {}",
        fmt_time(&s.created_at),
        fmt_time(&s.updated_at)
    ));
    o.push(format!(
        "usage    {}",
        usage_line(&s.total_usage(), s.total_cost())
    ));
    if let Some(x) = &s.summary {
        o.push(format!("summary  {x}"));
    }
    if let Some(x) = &s.error {
        o.push(format!("error    {x}"));
    }
    if let Some(x) = &s.aborted {
        o.push(format!("stopped  by a watcher: {x}"));
    }
    for t in &s.turns {
        o.push(String::new());
        let status = serde_json::to_value(t.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut head = format!(
            "── turn {} · {status} · {}",
            t.index,
            fmt_time(&t.started_at)
        );
        if let Some(d) = turn_duration(t) {
            head.push_str(&format!(" · {d}"));
        }
        head.push_str(" ──");
        o.push(head);
        o.push("  prompt".into());
        indented(&mut o, &t.prompt);
        let cut = unfinished.get(&t.index).map(Vec::as_slice).unwrap_or(&[]);
        if !t.commands.is_empty() || !cut.is_empty() {
            o.push("  commands".into());
            for c in &t.commands {
                let mark = if c.ok { "✓" } else { "✗" };
                let code = c
                    .exit_code
                    .map(|x| format!("exit {x}"))
                    .unwrap_or_else(|| "running".into());
                o.push(format!(
                    "    {mark} {}  ({code})",
                    crate::text::one_line(&c.command, 200)
                ));
                if with_output && !c.output_tail.trim().is_empty() {
                    let lines: Vec<&str> = c.output_tail.trim_end().lines().collect();
                    for l in &lines[lines.len().saturating_sub(10)..] {
                        o.push(format!("        │ {l}"));
                    }
                }
            }
            for c in cut {
                let what = if t.ended_at.is_some() {
                    "cut off: the turn stopped before it finished"
                } else {
                    "running"
                };
                o.push(format!("    … {}  ({what})", crate::text::one_line(c, 200)));
            }
        }
        if !t.files_changed.is_empty() {
            o.push("  files".into());
            for f in &t.files_changed {
                o.push(format!("    {} {}", file_mark(&f.kind), f.path));
            }
        }
        if !t.permission_denials.is_empty() {
            o.push("  permission denied".into());
            for d in &t.permission_denials {
                o.push(format!(
                    "    {} {}",
                    d.tool,
                    crate::text::one_line(&d.input.to_string(), 160)
                ));
            }
        }
        if !t.tool_errors.is_empty() {
            o.push("  tool errors".into());
            for e in &t.tool_errors {
                o.push(format!("    ✗ {}", tool_error_line(e)));
            }
        }
        if !t.messages.is_empty() {
            o.push("  messages".into());
            for m in &t.messages {
                indented(&mut o, m);
            }
        }
        match &t.response {
            Some(r) => {
                o.push("  answer".into());
                indented(&mut o, r);
            }
            None if t.ended_at.is_none() => o.push("  (turn in progress)".into()),
            None => {}
        }
        if let Some(e) = &t.error {
            let api = t
                .api_status
                .map(|c| format!(" (API {c})"))
                .unwrap_or_default();
            o.push(format!("  error{api}"));
            indented(&mut o, e);
        }
        o.push(format!("  usage  {}", usage_line(&t.usage, t.cost_usd)));
    }
    if !s.watcher_notes.is_empty() {
        o.push(String::new());
        o.push("── watcher notes ──".into());
        for n in &s.watcher_notes {
            let action = serde_json::to_value(n.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let turn = n.turn.map(|t| format!("turn {t} · ")).unwrap_or_default();
            o.push(format!(
                "  {turn}{} ({action}): {}",
                n.watcher,
                crate::text::one_line(&n.message, 300)
            ));
        }
    }
    o
}

/// One permission decision of a turn (an ACP agent's `session/request_permission`, answered
/// by zwarm's policy), as recorded in the turn's events.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PermissionDecision {
    pub turn: u32,
    /// `allow`, `deny`, `approved`, `refused`, `timed out`, `nobody to ask`: what was
    /// decided, and for an `ask` what became of it.
    pub outcome: String,
    /// The ACP tool kind: `edit`, `execute`, `read`, ...
    pub kind: String,
    pub title: String,
    pub command: Option<String>,
    pub paths: Vec<String>,
    /// The rule that made the decision: `rule 1 (deny edit /secret/)`, `default
    /// workspace-write: edit inside the working dir`, `rule 2 (ask edit); approved`, ...
    pub rule: String,
}

/// The outcome of a decision, from its verdict and rule.
fn outcome_of(allowed: bool, rule: &str) -> &'static str {
    if rule.ends_with("; approved") {
        "approved"
    } else if rule.ends_with("; refused") {
        "refused"
    } else if rule.contains("; no answer within") {
        "timed out"
    } else if rule.contains("; nobody to ask") {
        "nobody to ask"
    } else if allowed {
        "allow"
    } else {
        "deny"
    }
}

/// The permission decisions among a turn's events: an allow is a tool call `permission:ID`
/// (named `permission allowed by RULE: TITLE`), a denial a `permission_denied`; both carry
/// the kind, command, paths and rule. Denials of other executors (no rule) are left out:
/// they are in the turn's `permission denied` already.
pub fn decisions_in(turn: u32, events: &[crate::event::ExecutorEvent]) -> Vec<PermissionDecision> {
    use crate::event::ExecutorEvent;
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    events
        .iter()
        .filter_map(|ev| {
            let (allowed, title, input) = match ev {
                ExecutorEvent::ToolCall { id, name, input } if id.starts_with("permission:") => {
                    let title = field(input, "rule")
                        .and_then(|r| {
                            name.strip_prefix(&format!("permission allowed by {r}: "))
                                .map(str::to_string)
                        })
                        .unwrap_or_else(|| name.clone());
                    (true, title, input)
                }
                ExecutorEvent::PermissionDenied(d) => (false, d.tool.clone(), &d.input),
                _ => return None,
            };
            let rule = field(input, "rule")?;
            Some(PermissionDecision {
                turn,
                outcome: outcome_of(allowed, &rule).to_string(),
                kind: field(input, "kind").unwrap_or_default(),
                title,
                command: field(input, "command"),
                paths: input
                    .get("paths")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                rule,
            })
        })
        .collect()
}

/// Every permission decision of the session's turns, read from the turns' raw logs (the
/// events zwarm recorded from the executor's output), in order.
pub fn decisions_of(state: &std::path::Path, s: &Session) -> Vec<PermissionDecision> {
    s.turns
        .iter()
        .flat_map(|t| {
            let evs = super::activity::read_turn(state, &s.id, t.index, s.adapter);
            decisions_in(t.index, &evs)
        })
        .collect()
}

/// A decision as one line: `✓ allow    edit  Write hello.txt: /w/hello.txt  [RULE]`.
pub fn decision_line(d: &PermissionDecision) -> String {
    let mark = if matches!(d.outcome.as_str(), "allow" | "approved") {
        "✓"
    } else {
        "✗"
    };
    let what = match (&d.command, d.paths.is_empty()) {
        (Some(c), _) => crate::text::one_line(c, 160),
        (None, false) => d.paths.join(", "),
        (None, true) => String::new(),
    };
    let title = crate::text::one_line(&d.title, 100);
    let sep = if what.is_empty() || title.is_empty() {
        ""
    } else {
        ": "
    };
    format!(
        "{mark} {:<8} {:<8} {title}{sep}{what}  [{}]",
        d.outcome, d.kind, d.rule
    )
}

/// Put each turn's decisions (`permissions`) into the transcript, before its usage line.
fn insert_decisions(lines: &mut Vec<String>, s: &Session, decisions: &[PermissionDecision]) {
    for t in s.turns.iter().rev() {
        let mine: Vec<&PermissionDecision> =
            decisions.iter().filter(|d| d.turn == t.index).collect();
        if mine.is_empty() {
            continue;
        }
        let head = format!("── turn {} · ", t.index);
        let Some(start) = lines.iter().position(|l| l.starts_with(&head)) else {
            continue;
        };
        let end_of_turn = |lines: &[String]| {
            lines[start..]
                .iter()
                .position(|l| l.starts_with("  usage  "))
                .map(|i| start + i)
        };
        let Some(at) = end_of_turn(lines) else {
            continue;
        };
        // Every denial of the turn is among its decisions (with its rule): the older
        // `permission denied` block would list them twice.
        let denied = mine
            .iter()
            .filter(|d| d.outcome != "allow" && d.outcome != "approved")
            .count();
        if denied >= t.permission_denials.len()
            && let Some(b) = lines[start..at]
                .iter()
                .position(|l| l == "  permission denied")
                .map(|i| start + i)
        {
            let len = 1 + lines[b + 1..at]
                .iter()
                .take_while(|l| l.starts_with("    "))
                .count();
            lines.drain(b..b + len);
        }
        let Some(at) = end_of_turn(lines) else {
            continue;
        };
        let mut block = vec!["  permissions".to_string()];
        block.extend(mine.iter().map(|d| format!("    {}", decision_line(d))));
        lines.splice(at..at, block);
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExecutorEvent, PermissionDenial};

    #[test]
    fn decisions_are_read_from_the_events_with_their_rules() {
        let evs = vec![
            ExecutorEvent::ToolCall {
                id: "permission:c1".into(),
                name: "permission allowed by rule 1 (ask edit); approved: Write a.txt".into(),
                input: json!({"kind": "edit", "command": null, "paths": ["/w/a.txt"], "decision": "allow", "rule": "rule 1 (ask edit); approved"}),
            },
            ExecutorEvent::ToolCall {
                id: "c2".into(),
                name: "read".into(),
                input: json!({}),
            },
            ExecutorEvent::PermissionDenied(PermissionDenial {
                tool: "Shell".into(),
                input: json!({"kind": "execute", "command": "rm -rf x", "paths": [], "decision": "deny", "rule": "rule 2 (ask execute); no answer within 2 s, so denied"}),
            }),
            // Another executor's denial: no rule, not a decision of zwarm's policy.
            ExecutorEvent::PermissionDenied(PermissionDenial {
                tool: "Bash".into(),
                input: json!({"command": "ls"}),
            }),
        ];
        let d = decisions_in(3, &evs);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].outcome, "approved");
        assert_eq!(d[0].title, "Write a.txt");
        assert_eq!(d[0].paths, vec!["/w/a.txt".to_string()]);
        assert_eq!(d[1].outcome, "timed out");
        assert_eq!(d[1].command.as_deref(), Some("rm -rf x"));
        assert_eq!(
            decision_line(&d[1]),
            "✗ timed out execute  Shell: rm -rf x  [rule 2 (ask execute); no answer within 2 s, so denied]"
        );
        assert_eq!(outcome_of(true, "default full-access"), "allow");
        assert_eq!(outcome_of(false, "rule 1 (ask edit); refused"), "refused");
    }

    #[test]
    fn decisions_replace_the_turns_denied_block() {
        let mut s = Session::sample();
        s.turns[0].permission_denials = vec![PermissionDenial {
            tool: "Shell".into(),
            input: json!({"command": "rm x"}),
        }];
        let mut lines: Vec<String> = [
            "── turn 1 · x",
            "  permission denied",
            "    Shell {\"command\":\"rm x\"}",
            "  usage  1 in",
        ]
        .map(String::from)
        .to_vec();
        let d = PermissionDecision {
            turn: 1,
            outcome: "deny".into(),
            kind: "execute".into(),
            title: "Shell".into(),
            command: Some("rm x".into()),
            paths: vec![],
            rule: "rule 1 (deny execute /rm/)".into(),
        };
        insert_decisions(&mut lines, &s, &[d]);
        assert_eq!(lines[1], "  permissions");
        assert!(lines[2].contains("rm x") && lines[2].contains("[rule 1"));
        assert_eq!(lines[3], "  usage  1 in");
        assert_eq!(lines.len(), 4, "{lines:#?}");
        // A denial without a decision (another executor's) keeps the block.
        let mut other = lines.clone();
        other.insert(1, "  permission denied".into());
        other.insert(2, "    Bash ls".into());
        s.turns[0].permission_denials.push(PermissionDenial {
            tool: "Bash".into(),
            input: json!({"command": "ls"}),
        });
        let before = other.clone();
        insert_decisions(&mut other, &s, &[]);
        assert_eq!(other, before);
    }
}
