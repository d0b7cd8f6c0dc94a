//! The registry: every executor zwarm knows. Adding an executor is its module and one line in
//! [`REGISTRY`].

use super::api::Executor;
use super::{claude, codex};
use crate::model::Adapter;

/// Every executor zwarm knows. Adding one: its module, and one line here.
pub static REGISTRY: &[&dyn Executor] = &[&codex::Codex, &claude::Claude];

/// The executor of an adapter.
pub fn get(adapter: Adapter) -> &'static dyn Executor {
    match REGISTRY.iter().find(|e| e.adapter() == adapter) {
        Some(e) => *e,
        // Every Adapter has an entry: the registry test checks it.
        None => REGISTRY[0],
    }
}

/// The executor named `name` (or one of its aliases), case and surrounding space ignored.
pub fn by_name(name: &str) -> Option<&'static dyn Executor> {
    let name = name.trim().to_ascii_lowercase();
    REGISTRY
        .iter()
        .find(|e| e.name() == name || e.aliases().contains(&name.as_str()))
        .copied()
}

/// The registered names, each with its aliases: "`codex` (alias `codex_mcp`), `claude` ..." for
/// texts that tell a user what to choose from.
pub fn names_for_humans(with_aliases: bool) -> String {
    let names: Vec<String> = REGISTRY
        .iter()
        .map(|e| {
            let main = format!("`{}`", e.name());
            let shown: Vec<String> = e
                .aliases()
                .iter()
                .filter(|a| !a.contains('-'))
                .map(|a| format!("`{a}`"))
                .collect();
            if with_aliases && !shown.is_empty() {
                format!("{main} (alias {})", shown.join(", "))
            } else {
                main
            }
        })
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}
