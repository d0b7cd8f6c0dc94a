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

/// The executor named `name` (or one of its aliases).
pub fn by_name(name: &str) -> Option<&'static dyn Executor> {
    let a = Adapter::parse(name)?;
    REGISTRY.iter().find(|e| e.adapter() == a).copied()
}
