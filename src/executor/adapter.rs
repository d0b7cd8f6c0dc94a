//! [`Adapter`]: which executor a session runs on, by the executor's registered name.
//!
//! An open set: every executor in the registry ([`super::registry`]) is an adapter, and no
//! other code names one. A value can only be made from a registered executor
//! ([`Adapter::parse`], [`super::Executor::adapter`], deserializing a stored name), so it
//! always has an executor ([`super::get`]).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A registered executor, by name (`codex`, `claude`, `gemini`, ...). Serialized as its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Adapter(&'static str);

impl Adapter {
    /// The adapter of the executor registered as `name` (its [`super::Executor::name`]).
    pub(super) const fn registered(name: &'static str) -> Adapter {
        Adapter(name)
    }

    /// The registered executor named `s` or one of its aliases (case and surrounding space
    /// ignored).
    pub fn parse(s: &str) -> Option<Adapter> {
        super::registry::by_name(s).map(|e| e.adapter())
    }

    /// Its name in tools, config, the store and logs.
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// Every adapter, in the registry's order.
    pub fn all() -> Vec<Adapter> {
        super::registry::all().map(|e| e.adapter()).collect()
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

impl<'de> Deserialize<'de> for Adapter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Adapter, D::Error> {
        let name = Cow::<'de, str>::deserialize(d)?;
        Adapter::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown adapter `{name}`: use {}",
                super::registry::names_for_humans(false)
            ))
        })
    }
}

impl JsonSchema for Adapter {
    fn schema_name() -> Cow<'static, str> {
        "Adapter".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Adapter::all().iter().map(Adapter::as_str).collect();
        json_schema!({
            "description": "The executor: a registered executor's name.",
            "type": "string",
            "enum": names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_are_the_registered_names_and_serialize_as_them() {
        let names: Vec<&str> = Adapter::all().iter().map(Adapter::as_str).collect();
        for name in ["codex", "claude", "gemini", "qwen", "opencode"] {
            assert!(names.contains(&name), "{name} in {names:?}");
            let a = Adapter::parse(name).unwrap();
            assert_eq!(a.as_str(), name);
            assert_eq!(serde_json::to_value(a).unwrap(), name);
            let back: Adapter = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(back, a);
        }
        assert_eq!(
            Adapter::parse(" Codex_MCP ").map(|a| a.as_str()),
            Some("codex")
        );
        assert!(Adapter::parse("nope").is_none());
        let e = serde_json::from_value::<Adapter>(serde_json::json!("nope")).unwrap_err();
        assert!(e.to_string().contains("unknown adapter `nope`"), "{e}");
        let schema = serde_json::to_value(schemars::schema_for!(Adapter)).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(names));
    }
}
