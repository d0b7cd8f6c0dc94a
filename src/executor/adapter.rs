//! [`Adapter`]: which executor a session runs on, by the executor's registered name.
//!
//! An open set: every executor in the registry ([`super::registry`]) is an adapter, and no
//! other code names one. A value can only be made from a registered executor
//! ([`Adapter::parse`], [`super::Executor::adapter`], deserializing a stored name: all in the
//! registry, which knows the names), so it always has an executor ([`super::get`]).

use std::fmt;

use serde::{Serialize, Serializer};

/// A registered executor, by name (`codex`, `claude`, `gemini`, ...). Serialized as its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Adapter(&'static str);

impl Adapter {
    /// The adapter of the executor registered as `name` (its [`super::Executor::name`]).
    pub(super) const fn registered(name: &'static str) -> Adapter {
        Adapter(name)
    }

    /// Its name in tools, config, the store and logs.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Adapter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}
