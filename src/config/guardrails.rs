//! The project file may tighten, never loosen.
//!
//! Executors write anywhere in their workspace, `.zwarm/config.toml` included, and the next
//! server started there reads it. So a setting from the project file whose key is tighten-only
//! in the key table ([`Trust::TightenOnly`]) counts only when it is at least as strict as what
//! the layers below it (the defaults and the user config file) say: it may turn a watcher on,
//! lower a limit, narrow a mode, make an action stronger, add rules, avoided topics and prices,
//! and narrow the allowed paths and focus. What would loosen (turn a watcher off, raise or lift
//! a limit, widen a mode, weaken an action, drop a rule or a restriction, lower a price) is
//! ignored, logged and listed like a trusted-only key. The layers above the project file
//! (`--config`, `ZWARM_*`, `--set`) are the user's own and may set anything.

use std::path::{Component, Path, PathBuf};

use toml::Value;

use super::keys::{self, ModeKey, Tighten, Trust};
use super::layers::{get_path, remove_path};

fn action_rank(v: &Value) -> Option<u8> {
    match v.as_str()? {
        "continue" => Some(0),
        "nudge" => Some(1),
        "pause" => Some(2),
        "abort" => Some(3),
        _ => None,
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

/// Whether `v` is a higher number than `b` (two integers compared exactly).
fn higher(v: &Value, b: &Value) -> bool {
    match (v.as_integer(), b.as_integer()) {
        (Some(v), Some(b)) => v > b,
        _ => matches!((num(v), num(b)), (Some(v), Some(b)) if v > b),
    }
}

/// A number that is not finite (`nan`, `inf`): no limit or price can be compared with it.
fn not_finite(v: &Value) -> bool {
    v.as_float().is_some_and(|f| !f.is_finite())
}

/// Why `value` (from the project file) is looser than `below`, if it is. Values of the wrong
/// type are left for the config's own validation to report.
fn looser(kind: &Tighten, value: &Value, below: Option<&Value>) -> Option<String> {
    let shown = |v: &Value| v.to_string();
    match kind {
        Tighten::On => (value.as_bool() == Some(false)
            && below.and_then(Value::as_bool) == Some(true))
        .then(|| "it turns off what the layers below it turn on".to_string()),
        Tighten::Action => {
            let below = below?;
            let (v, b) = (action_rank(value)?, action_rank(below)?);
            (v < b).then(|| format!("{} is weaker than {}", shown(value), shown(below)))
        }
        Tighten::Mode(mode) => looser_mode(mode, value, below),
        Tighten::Lower(_) | Tighten::Count => {
            num(value)?;
            if not_finite(value) {
                return Some(format!("{} is not a finite number", shown(value)));
            }
            if matches!(kind, Tighten::Count) && value.as_integer().is_some_and(|n| n < 1) {
                return Some(format!("{} turns the check off", shown(value)));
            }
            let unset = match kind {
                Tighten::Lower(Some(n)) => i64::try_from(*n).ok().map(Value::Integer),
                _ => None,
            };
            let below = below.cloned().or(unset)?;
            higher(value, &below)
                .then(|| format!("{} is higher than {}", shown(value), shown(&below)))
        }
        // Lists and prices: see `tighten_only`.
        Tighten::Add
        | Tighten::WithinPaths
        | Tighten::Subset
        | Tighten::Prices
        | Tighten::Rules => None,
    }
}

/// A mode no wider than the default and than the layers below.
fn looser_mode(mode: &ModeKey, value: &Value, below: Option<&Value>) -> Option<String> {
    let value = value.as_str()?;
    let below = below.and_then(Value::as_str).unwrap_or(mode.default);
    if mode.width(value)? > mode.width(mode.default)? {
        Some(format!(
            "`{value}` is wider than the default `{}`",
            mode.default
        ))
    } else if mode.width(value) > mode.width(below) {
        Some(format!(
            "`{value}` is wider than `{below}` from the user config file"
        ))
    } else {
        None
    }
}

/// Lexical normalisation (`a/./b/../c` is `a/c`), as the scope watcher compares paths.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `path` lies inside one of `roots` (all as written: relative to the working dir, or
/// absolute). A path that climbs out with `..` is inside nothing.
fn within(path: &str, roots: &[String]) -> bool {
    let p = normalize(Path::new(path));
    if p.starts_with("..") {
        return false;
    }
    roots.iter().any(|r| {
        let r = normalize(Path::new(r));
        r.as_os_str().is_empty() || p.starts_with(&r)
    })
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// The config as the layers below the project file leave it: the defaults, then the user
/// config file.
fn below_table(user: Option<&toml::Table>) -> toml::Table {
    let mut t = match Value::try_from(super::settings::Config::default()) {
        Ok(Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    if let Some(u) = user {
        super::layers::merge(&mut t, u.clone());
    }
    t
}

/// Apply the rule to the project file's table: remove what would loosen a guardrail (returned as
/// `(key, why)`), and turn lists that add to the layers below (`scope.avoid`, `pattern.rules`)
/// into those layers' lists plus the project's additions.
pub(super) fn tighten_only(
    project: &mut toml::Table,
    user: Option<&toml::Table>,
) -> Vec<(String, String)> {
    let below = below_table(user);
    let mut out = Vec::new();
    for k in keys::table() {
        let Trust::TightenOnly(kind) = &k.trust else {
            continue;
        };
        let Some(value) = get_path(project, k.key) else {
            continue;
        };
        match kind {
            Tighten::WithinPaths => within_paths(project, &below, k.key, &mut out),
            Tighten::Subset => subset(project, &below, k.key, &mut out),
            Tighten::Add => add(project, &below, k.key),
            Tighten::Rules => rules(project, &below, k.key, &mut out),
            Tighten::Prices => prices(project, &below, k.key, &mut out),
            _ => {
                if let Some(why) = looser(kind, value, get_path(&below, k.key)) {
                    remove_path(project, k.key);
                    out.push((k.key.to_string(), why));
                }
            }
        }
    }
    out
}

/// Allowed paths: an empty list below means anywhere, so any list narrows it; otherwise only
/// paths inside the allowed ones below are kept.
fn within_paths(
    project: &mut toml::Table,
    below: &toml::Table,
    key: &str,
    out: &mut Vec<(String, String)>,
) {
    if let Some(list) = get_path(project, key).and_then(strings) {
        let allowed = get_path(below, key).and_then(strings).unwrap_or_default();
        if !allowed.is_empty() && list.is_empty() {
            // An empty list means anywhere.
            remove_path(project, key);
            out.push((
                key.to_string(),
                format!("an empty list allows any path, wider than {allowed:?} below it"),
            ));
        } else if !allowed.is_empty() {
            let (kept, dropped): (Vec<String>, Vec<String>) =
                list.into_iter().partition(|p| within(p, &allowed));
            if !dropped.is_empty() {
                out.push((
                    key.to_string(),
                    format!(
                        "{} {} outside the allowed paths {:?} below it",
                        dropped
                            .iter()
                            .map(|d| format!("`{d}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        if dropped.len() == 1 { "is" } else { "are" },
                        allowed
                    ),
                ));
                if kept.is_empty() {
                    remove_path(project, key);
                } else {
                    set(project, key, Value::from(kept));
                }
            }
        }
    }
}

/// Entries that must be among those below, unless there are none below (any list narrows).
fn subset(
    project: &mut toml::Table,
    below: &toml::Table,
    key: &str,
    out: &mut Vec<(String, String)>,
) {
    let Some(list) = get_path(project, key).and_then(strings) else {
        return;
    };
    let theirs = get_path(below, key).and_then(strings).unwrap_or_default();
    if theirs.is_empty() {
        return;
    }
    let extra: Vec<&String> = list.iter().filter(|e| !theirs.contains(e)).collect();
    if list.is_empty() || !extra.is_empty() {
        remove_path(project, key);
        out.push((
            key.to_string(),
            format!("{list:?} is not a narrowing of {theirs:?} below it"),
        ));
    }
}

/// Lists of things to watch for: the project's entries are added to those below.
fn add(project: &mut toml::Table, below: &toml::Table, key: &str) {
    let Some(Value::Array(add)) = get_path(project, key).cloned() else {
        return;
    };
    let Some(Value::Array(mut all)) = get_path(below, key).cloned() else {
        return;
    };
    for v in add {
        if !all.contains(&v) {
            all.push(v);
        }
    }
    set(project, key, Value::Array(all));
}

/// Permission rules: the project's `deny` and `ask` rules are marked as the project's (they
/// win only when stricter than what the trusted rules and the level decide) and added to those
/// below; its `allow` rules (and entries that are not rules) are dropped.
fn rules(
    project: &mut toml::Table,
    below: &toml::Table,
    key: &str,
    out: &mut Vec<(String, String)>,
) {
    let Some(Value::Array(theirs)) = get_path(project, key).cloned() else {
        return;
    };
    let mut all = match get_path(below, key) {
        Some(Value::Array(a)) => a.clone(),
        _ => vec![],
    };
    for (i, mut r) in theirs.into_iter().enumerate() {
        let verdict = r.get("verdict").and_then(Value::as_str).unwrap_or("");
        if !matches!(verdict, "deny" | "ask") {
            out.push((
                key.to_string(),
                format!("rule {} (verdict `{verdict}`): the project file may only add deny and ask rules", i + 1),
            ));
            continue;
        }
        if let Some(t) = r.as_table_mut() {
            t.insert("project".into(), Value::Boolean(true));
        }
        all.push(r);
    }
    set(project, key, Value::Array(all));
}

/// Prices: a model keeps at least the price the layers below give it (its own, else
/// `default`): a lower one would let sessions spend more under the same cost limit. Prices
/// must be finite and not negative.
fn prices(
    project: &mut toml::Table,
    below: &toml::Table,
    key: &str,
    out: &mut Vec<(String, String)>,
) {
    let mut lowered = Vec::new();
    if let Some(Value::Table(mine)) = get_path(project, key) {
        let theirs = get_path(below, key).and_then(Value::as_table);
        for (model, price) in mine {
            let Some(p) = price.as_table() else {
                continue; // not a price table: the config's own validation says so
            };
            let bad = p
                .values()
                .any(|v| not_finite(v) || num(v).is_some_and(|n| n < 0.0));
            let floor = theirs.and_then(|t| t.get(model).or_else(|| t.get("default")));
            let cheaper = floor
                .and_then(Value::as_table)
                .is_some_and(|b| cheaper_than(p, b));
            if bad || cheaper {
                lowered.push(model.clone());
            }
        }
    }
    for model in lowered {
        remove_path(project, &format!("{key}.{model}"));
        out.push((
            format!("{key}.{model}"),
            "it prices the model lower than the layers below it do (or not as a finite, non-negative number)".to_string(),
        ));
    }
}

/// Whether price `p` charges less than `b` for any kind of token, comparing effective prices
/// (cached input costs the input price unless priced on its own).
fn cheaper_than(p: &toml::Table, b: &toml::Table) -> bool {
    let field = |t: &toml::Table, f: &str| t.get(f).and_then(num);
    let effective = |t: &toml::Table| {
        let input = field(t, "input_per_million");
        (
            input,
            field(t, "output_per_million"),
            field(t, "cached_input_per_million").or(input),
        )
    };
    let (pi, po, pc) = effective(p);
    let (bi, bo, bc) = effective(b);
    [(pi, bi), (po, bo), (pc, bc)]
        .into_iter()
        .any(|(v, b)| match (v, b) {
            (Some(v), Some(b)) => v < b,
            // Priced below and left out here: it would cost nothing.
            (None, Some(_)) => true,
            _ => false,
        })
}

/// Set a dotted key in a table whose parent tables exist (it was just read from there).
fn set(t: &mut toml::Table, key: &str, v: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            if let Some(Value::Table(sub)) = t.get_mut(head) {
                set(sub, rest, v);
            }
        }
        None => {
            t.insert(key.to_string(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().expect("toml")
    }

    fn keys(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn loosening_is_removed_tightening_kept() {
        let mut p = table(
            r#"
[watchers.budget]
enabled = false
max_cost_usd = 1.0
action = "nudge"
warn_percent = 90.0
[watchers.pattern]
builtin_rules = false
[watchers.progress]
repeat_calls = 2
action = "pause"
[watchers.quality]
max_files = 100
"#,
        );
        let out = tighten_only(&mut p, None);
        assert_eq!(
            keys(&out),
            vec![
                "watchers.budget.enabled",
                "watchers.budget.warn_percent",
                "watchers.budget.action",
                "watchers.pattern.builtin_rules",
                "watchers.quality.max_files",
            ]
        );
        // A first limit and stricter values stay.
        assert_eq!(
            get_path(&p, "watchers.budget.max_cost_usd"),
            Some(&Value::Float(1.0))
        );
        assert_eq!(
            get_path(&p, "watchers.progress.repeat_calls"),
            Some(&Value::Integer(2))
        );
        assert_eq!(
            get_path(&p, "watchers.progress.action"),
            Some(&Value::String("pause".into()))
        );
        assert!(get_path(&p, "watchers.budget.enabled").is_none());
    }

    #[test]
    fn run_limits_may_only_go_down() {
        let user = table("max_running = 2\n");
        let mut p = table("turn_timeout_seconds = 86400\nmax_running = 16\nmax_worktrees = 4\n");
        let out = tighten_only(&mut p, Some(&user));
        assert_eq!(keys(&out), vec!["turn_timeout_seconds", "max_running"]);
        assert!(out[0].1.contains("higher than 3600"), "{out:?}");
        assert_eq!(get_path(&p, "max_worktrees"), Some(&Value::Integer(4)));
        let mut p = table("turn_timeout_seconds = 1800\nmax_running = 1\n");
        assert!(tighten_only(&mut p, Some(&user)).is_empty());
    }

    #[test]
    fn limits_compare_with_the_user_file() {
        let user = table("[watchers.budget]\nmax_cost_usd = 5\nmax_tokens = 1000\n");
        let mut p = table("[watchers.budget]\nmax_cost_usd = 50.0\nmax_tokens = 10\n");
        let out = tighten_only(&mut p, Some(&user));
        assert_eq!(keys(&out), vec!["watchers.budget.max_cost_usd"]);
        assert!(out[0].1.contains("higher than 5"), "{out:?}");
        assert_eq!(
            get_path(&p, "watchers.budget.max_tokens"),
            Some(&Value::Integer(10))
        );
        // The user file turned a watcher off: the project may turn it back on.
        let user = table("[watchers.quality]\nenabled = false\n");
        let mut p = table("[watchers.quality]\nenabled = true\n");
        assert!(tighten_only(&mut p, Some(&user)).is_empty());
    }

    #[test]
    fn lists_add_and_allowed_paths_narrow() {
        let user = table(
            r#"
[watchers.scope]
avoid = ["billing"]
allowed_paths = ["src", "docs"]
[[watchers.pattern.rules]]
name = "no-push"
regex = "git push"
action = "abort"
"#,
        );
        let mut p = table(
            r#"
[watchers.scope]
avoid = ["auth"]
allowed_paths = ["src/core", "/etc", "src/../secrets"]
[[watchers.pattern.rules]]
name = "no-curl"
regex = "curl"
"#,
        );
        let out = tighten_only(&mut p, Some(&user));
        assert_eq!(keys(&out), vec!["watchers.scope.allowed_paths"]);
        assert!(
            out[0].1.contains("`/etc`, `src/../secrets` are outside"),
            "{out:?}"
        );
        assert_eq!(
            get_path(&p, "watchers.scope.allowed_paths").and_then(strings),
            Some(vec!["src/core".to_string()])
        );
        assert_eq!(
            get_path(&p, "watchers.scope.avoid").and_then(strings),
            Some(vec!["billing".to_string(), "auth".to_string()])
        );
        let rules = get_path(&p, "watchers.pattern.rules").and_then(Value::as_array);
        let names: Vec<&str> = rules
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("name").and_then(Value::as_str))
            .collect();
        assert_eq!(names, vec!["no-push", "no-curl"]);

        // Nothing left inside: the restriction below stays as it is.
        let mut p = table("[watchers.scope]\nallowed_paths = [\"..\"]\n");
        assert_eq!(tighten_only(&mut p, Some(&user)).len(), 1);
        assert!(get_path(&p, "watchers.scope.allowed_paths").is_none());
        // No restriction below: any list narrows.
        let mut p = table("[watchers.scope]\nallowed_paths = [\"/anywhere\"]\n");
        assert!(tighten_only(&mut p, None).is_empty());
    }

    #[test]
    fn no_number_tricks() {
        let user = table(
            "[watchers.budget]\nmax_cost_usd = 5.0\nmax_tokens = 9007199254740993\n[watchers.scope]\nallowed_paths = [\"src\"]\n",
        );
        let mut p = table(
            r#"
[watchers.budget]
max_cost_usd = nan
max_tokens = 9007199254740994
warn_percent = inf
[watchers.progress]
stalled_calls = 0
repeat_commands = 1
[watchers.scope]
allowed_paths = []
"#,
        );
        let out = tighten_only(&mut p, Some(&user));
        assert_eq!(
            keys(&out),
            vec![
                "watchers.progress.stalled_calls",
                "watchers.budget.max_tokens",
                "watchers.budget.max_cost_usd",
                "watchers.budget.warn_percent",
                "watchers.scope.allowed_paths",
            ],
            "{out:?}"
        );
        assert_eq!(
            get_path(&p, "watchers.progress.repeat_commands"),
            Some(&Value::Integer(1))
        );
    }

    #[test]
    fn prices_may_be_added_not_lowered() {
        let user = table(
            "[watchers.budget.prices.gpt-5]\ninput_per_million = 1.25\noutput_per_million = 10.0\n",
        );
        let mut p = table(
            r#"
[watchers.budget.prices.gpt-5]
input_per_million = 0.0
output_per_million = 10.0
[watchers.budget.prices.my-model]
input_per_million = 3.0
output_per_million = 15.0
"#,
        );
        let out = tighten_only(&mut p, Some(&user));
        assert_eq!(keys(&out), vec!["watchers.budget.prices.gpt-5"]);
        assert!(get_path(&p, "watchers.budget.prices.gpt-5").is_none());
        assert!(get_path(&p, "watchers.budget.prices.my-model").is_some());
        let mut p = table(
            "[watchers.budget.prices.gpt-5]\ninput_per_million = 2.0\noutput_per_million = 12.0\n",
        );
        assert!(tighten_only(&mut p, Some(&user)).is_empty());
        // Cached input priced at nothing where the user's falls back to the input price.
        let mut p = table(
            "[watchers.budget.prices.gpt-5]\ninput_per_million = 1.25\noutput_per_million = 10.0\ncached_input_per_million = 0.0\n",
        );
        assert_eq!(tighten_only(&mut p, Some(&user)).len(), 1);
        // A model the user prices only through `default`, and a negative price.
        let user = table(
            "[watchers.budget.prices.default]\ninput_per_million = 1.0\noutput_per_million = 4.0\n",
        );
        let mut p = table(
            r#"
[watchers.budget.prices.cheap]
input_per_million = 0.01
output_per_million = 0.01
[watchers.budget.prices.negative]
input_per_million = 5.0
output_per_million = -100.0
[watchers.budget.prices.dear]
input_per_million = 2.0
output_per_million = 8.0
"#,
        );
        let out = tighten_only(&mut p, Some(&user));
        let mut k = keys(&out);
        k.sort_unstable();
        assert_eq!(
            k,
            vec![
                "watchers.budget.prices.cheap",
                "watchers.budget.prices.negative"
            ]
        );
        assert!(get_path(&p, "watchers.budget.prices.dear").is_some());
    }
}
