//! The registry: every executor zwarm knows. Adding a built-in executor is its module and one
//! line in [`BUILT_IN`]; the configuration's declared executors (`[executors.NAME]`) follow
//! them ([`super::declared`]). The registry is built once, at its first use, after the
//! configuration is loaded; it also says what an [`Adapter`] may be (parsing, the tools' schema).

use std::borrow::Cow;
use std::sync::OnceLock;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

use super::adapter::Adapter;
use super::api::Executor;
use super::{acp, claude, codex, declared};
use crate::config::{Config, ConfigError};

/// The built-in executors. Adding one: its module, and one line here. The first is the
/// default `default_adapter`.
static BUILT_IN: &[&dyn Executor] = &[
    &codex::Codex,
    &claude::Claude,
    &acp::GEMINI_EXECUTOR,
    &acp::QWEN_EXECUTOR,
    &acp::OPENCODE_EXECUTOR,
];

/// Every executor zwarm knows: the built-in ones, then those the configuration declares. A
/// slice (`REGISTRY.iter()`, `REGISTRY[0]`, `REGISTRY.len()`), and `for e in REGISTRY` works.
#[derive(Debug, Clone, Copy)]
pub struct Registry;

/// Every executor zwarm knows (see [`Registry`]).
pub static REGISTRY: Registry = Registry;

struct Built {
    all: Vec<&'static dyn Executor>,
    /// Declarations refused (a built-in name), each with what to do.
    refused: Vec<String>,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut all = BUILT_IN.to_vec();
        let mut refused = Vec::new();
        for (name, d) in crate::config::executors::declared() {
            match shadowed(name) {
                Some(why) => {
                    tracing::error!("{why}");
                    refused.push(why);
                }
                None => all.push(declared::executor(name, d)),
            }
        }
        Built { all, refused }
    })
}

/// Why a declared executor named `name` is refused: it would shadow a built-in one.
fn shadowed(name: &str) -> Option<String> {
    let builtin = BUILT_IN
        .iter()
        .find(|e| e.name() == name || e.aliases().contains(&name))?;
    Some(format!(
        "`[executors.{name}]` cannot declare an executor named `{name}`: that is the name of zwarm's built-in executor `{}`. Rename the table (e.g. `[executors.my-{name}]`) and use that name as `delegate`'s `adapter`.",
        builtin.name()
    ))
}

impl std::ops::Deref for Registry {
    type Target = [&'static dyn Executor];
    fn deref(&self) -> &Self::Target {
        &built().all
    }
}

impl IntoIterator for Registry {
    type Item = &'static &'static dyn Executor;
    type IntoIter = std::slice::Iter<'static, &'static dyn Executor>;
    fn into_iter(self) -> Self::IntoIter {
        built().all.iter()
    }
}

/// Every registered executor, in order.
pub fn all() -> impl Iterator<Item = &'static dyn Executor> {
    REGISTRY.iter().copied()
}

/// The executor of an adapter.
pub fn get(adapter: Adapter) -> &'static dyn Executor {
    match all().find(|e| e.name() == adapter.as_str()) {
        Some(e) => e,
        // An Adapter is only made from a registered executor.
        None => BUILT_IN[0],
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

/// What the configuration asks of the executors, checked against the registry: a
/// `default_adapter` that is registered, declared executors that are (none shadowing a
/// built-in one). Start-up calls it after loading the configuration; the error (a
/// configuration error: exit status 2) says what to change.
pub fn check_config(cfg: &Config) -> Result<(), ConfigError> {
    check(cfg).map_err(ConfigError::Invalid)
}

fn check(cfg: &Config) -> Result<(), String> {
    if let Some(why) = built().refused.first() {
        return Err(why.clone());
    }
    for name in cfg.executors.declared.keys() {
        if let Some(why) = shadowed(name) {
            return Err(why);
        }
        if by_name(name).is_none() {
            return Err(format!(
                "the executor `{name}` declared in the configuration is not registered: the registry was built before this configuration was loaded. Start zwarm again."
            ));
        }
    }
    if by_name(&cfg.default_adapter).is_none() {
        return Err(format!(
            "default_adapter is `{}`; use {}",
            cfg.default_adapter,
            names_for_humans(false)
        ));
    }
    Ok(())
}

impl Adapter {
    /// The registered executor named `s` or one of its aliases (case and surrounding space
    /// ignored).
    pub fn parse(s: &str) -> Option<Adapter> {
        by_name(s).map(|e| e.adapter())
    }

    /// Every adapter, in the registry's order.
    pub fn all() -> Vec<Adapter> {
        all().map(|e| e.adapter()).collect()
    }
}

impl<'de> Deserialize<'de> for Adapter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Adapter, D::Error> {
        let name = Cow::<'de, str>::deserialize(d)?;
        Adapter::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown adapter `{name}`: use {}",
                names_for_humans(false)
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

    #[test]
    fn the_first_built_in_is_the_default_adapter() {
        assert_eq!(REGISTRY[0].name(), Config::default().default_adapter);
        assert_eq!(BUILT_IN[0].name(), REGISTRY[0].name());
    }

    #[test]
    fn config_sections_are_the_key_tables() {
        for e in BUILT_IN {
            let (section, keys) = e.config_section();
            for k in keys {
                let dotted = format!("{section}.{}", k.key);
                let def = crate::config::keys::find(&dotted).unwrap_or_else(|| panic!("{dotted}"));
                assert_eq!(
                    k.trusted_only,
                    matches!(def.trust, crate::config::keys::Trust::TrustedOnly(_)),
                    "{dotted}"
                );
            }
        }
        let (section, keys) = codex::Codex.config_section();
        let names: Vec<&str> = keys.iter().map(|k| k.key).collect();
        assert_eq!(section, "codex");
        assert_eq!(names, ["binary", "model", "sandbox", "extra_args"]);
        assert_eq!(claude::Claude.config_section().1.len(), 7);
    }

    #[test]
    fn declared_executors_cannot_take_a_built_in_name() {
        for name in ["codex", "claude", "gemini", "qwen", "opencode", "codex_mcp"] {
            let why = shadowed(name).unwrap();
            assert!(why.contains("built-in") && why.contains("Rename"), "{why}");
        }
        assert!(shadowed("myagent").is_none());
    }

    #[test]
    fn the_config_is_checked_against_the_registry() {
        let mut cfg = Config::default();
        assert!(check_config(&cfg).is_ok());
        cfg.default_adapter = "nope".into();
        let e = check_config(&cfg).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("default_adapter is `nope`") && text.contains("`codex`"),
            "{text}"
        );
        // A configuration error: `zwarm` exits with status 2.
        assert!(crate::config::is_config_error(&anyhow::Error::new(e)));
        let mut cfg = Config::default();
        cfg.executors
            .declared
            .insert("codex".into(), Default::default());
        assert!(check(&cfg).unwrap_err().contains("built-in"));
        let mut cfg = Config::default();
        cfg.executors
            .declared
            .insert("never-loaded".into(), Default::default());
        assert!(check(&cfg).unwrap_err().contains("not registered"));
    }
}
