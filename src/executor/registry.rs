//! The registry: every executor zwarm knows. Adding an executor is its module and one line in
//! [`REGISTRY`].

use super::adapter::Adapter;
use super::api::Executor;
use super::{acp, claude, codex};

/// Every executor zwarm knows. Adding one: its module, and one line here. The first is the
/// default `default_adapter`.
pub static REGISTRY: &[&dyn Executor] = &[
    &codex::Codex,
    &claude::Claude,
    &acp::GEMINI_EXECUTOR,
    &acp::QWEN_EXECUTOR,
    &acp::OPENCODE_EXECUTOR,
];

/// Every registered executor, in order.
pub fn all() -> impl Iterator<Item = &'static dyn Executor> {
    REGISTRY.iter().copied()
}

/// The executor of an adapter.
pub fn get(adapter: Adapter) -> &'static dyn Executor {
    match all().find(|e| e.name() == adapter.as_str()) {
        Some(e) => e,
        // An Adapter is only made from a registered executor.
        None => REGISTRY[0],
    }
}

/// The executor named `name` (or one of its aliases), case and surrounding space ignored.
pub fn by_name(name: &str) -> Option<&'static dyn Executor> {
    let name = name.trim().to_ascii_lowercase();
    all().find(|e| e.name() == name || e.aliases().contains(&name.as_str()))
}

/// The registered names, each with its aliases: "`codex` (alias `codex_mcp`), `claude` ..." for
/// texts that tell a user what to choose from.
pub fn names_for_humans(with_aliases: bool) -> String {
    let names: Vec<String> = all()
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
