//! The vocabulary of the key table, a leaf every config section may use: how a value is written
//! ([`Kind`], [`KeyType`]), what the untrusted project file may do with a key ([`Trust`],
//! [`Tighten`]), keys whose values are ordered ([`ModeKey`]), one key ([`KeyDef`]) and the
//! `fields!` macro that lists a section's fields exhaustively.
//!
//! Sections are typed beside the code they configure (an executor's in its module, a runner's
//! in its own); each says its keys' rules with `fields!`, and [`super::keys`] gathers them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use toml::Value;

/// How a value is written in `ZWARM_*` variables and `--set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// A TOML array of strings, or a comma-separated list.
    StrList,
    /// A table or array checked by serde only (price tables, pattern rules), as a TOML value.
    Free,
    /// A table of keys (`[codex]`): not a key itself.
    Section,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Int => "integer",
            Kind::Float => "number",
            Kind::Bool => "boolean",
            Kind::StrList => "list of strings",
            Kind::Free => "TOML value",
            Kind::Section => "table",
        }
    }
}

/// The [`Kind`] of a config field's Rust type: a field of a new type fails the build until it
/// says how it is written.
pub trait KeyType {
    const KIND: Kind;
}

/// `impl KeyType` for types, by kind: `key_types! { Section: MyConfig; }`.
macro_rules! key_types {
    ($($kind:ident: $($ty:ty),*;)*) => {
        $($(impl $crate::config::schema::KeyType for $ty {
            const KIND: $crate::config::schema::Kind = $crate::config::schema::Kind::$kind;
        })*)*
    };
}
pub(crate) use key_types;

key_types! {
    Str: String, PathBuf;
    Int: u32, u64, usize, i32;
    Float: f64;
    Bool: bool;
    StrList: Vec<String>, Vec<PathBuf>;
}

impl<V> KeyType for BTreeMap<String, V> {
    const KIND: Kind = Kind::Free;
}

impl<T: KeyType> KeyType for Option<T> {
    const KIND: Kind = T::KIND;
}

/// What the untrusted project file (`<project>/.zwarm/config.toml`) may do with a key. The
/// other layers are the user's own and may set anything.
#[derive(Debug, Clone, Copy)]
pub enum Trust {
    /// The project file may set it: it neither changes what runs nor loosens a limit.
    Free,
    /// Only a trusted layer may set it; the text says why.
    TrustedOnly(&'static str),
    /// The project file may only make it stricter than the layers below it.
    TightenOnly(Tighten),
    /// Not a key: a table of keys.
    Section,
    /// Not a key: a fact `load` finds.
    NotAKey,
}

/// Which way a key tightens.
#[derive(Debug, Clone, Copy)]
pub enum Tighten {
    /// `true` is stricter.
    On,
    /// A number where lower is stricter. An unset value below means no limit, or
    /// (`Some(n)`) at most `n`.
    Lower(Option<u64>),
    /// A count where lower is stricter, down to 1 (0 turns the check off).
    Count,
    /// A watcher action: continue < nudge < pause < abort.
    Action,
    /// One of a mode's values; narrower is stricter.
    Mode(&'static ModeKey),
    /// A list the project's entries are added to (never replace).
    Add,
    /// Paths that must lie inside those below (an empty list means anywhere).
    WithinPaths,
    /// Entries that must be among those below (an empty list means any).
    Subset,
    /// Prices: never lower than those below.
    Prices,
    /// Permission rules: the project's deny and ask rules are added (they win only when
    /// stricter); its allow rules are dropped.
    Rules,
}

impl Trust {
    /// The rule as the key reference shows it.
    pub fn describe(&self) -> String {
        match self {
            Trust::Free => "yes".into(),
            Trust::TrustedOnly(_) => "no (trusted layers only)".into(),
            Trust::TightenOnly(t) => format!(
                "only {}",
                match t {
                    Tighten::On => "to turn it on".to_string(),
                    Tighten::Lower(_) | Tighten::Count => "lower".to_string(),
                    Tighten::Action => "a stronger action".to_string(),
                    Tighten::Mode(m) => format!("narrower ({})", m.order()),
                    Tighten::Add => "adds entries".to_string(),
                    Tighten::WithinPaths => "paths inside those below".to_string(),
                    Tighten::Subset => "entries among those below".to_string(),
                    Tighten::Prices => "prices no lower than those below".to_string(),
                    Tighten::Rules => "adds deny and ask rules".to_string(),
                }
            ),
            Trust::Section | Trust::NotAKey => String::new(),
        }
    }
}

/// A key whose values are ordered from narrowest to widest.
#[derive(Debug)]
pub struct ModeKey {
    pub key: &'static str,
    pub default: &'static str,
    /// Every accepted value with its width; values of equal width grant the same.
    pub values: &'static [(&'static str, u8)],
    /// The accepted values, for error messages.
    pub expected: &'static str,
}

impl ModeKey {
    /// Width of `value`, `None` when it is not a known value.
    pub fn width(&self, value: &str) -> Option<u8> {
        self.values
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, w)| *w)
    }

    /// Whether `value` grants more than the default.
    pub fn is_wide(&self, value: &str) -> bool {
        self.width(value) > self.width(self.default)
    }

    /// `a` < `b` = `c` < ...: the values from narrowest to widest.
    fn order(&self) -> String {
        let mut s = String::new();
        let mut last = None;
        for (v, w) in self.values {
            match last {
                None => {}
                Some(l) if l == *w => s.push_str(" = "),
                Some(_) => s.push_str(" < "),
            }
            s.push_str(&format!("`{v}`"));
            last = Some(*w);
        }
        s
    }
}

/// One config key.
#[derive(Debug)]
pub struct KeyDef {
    /// Dotted key, e.g. `codex.sandbox`.
    pub key: &'static str,
    pub kind: Kind,
    pub trust: Trust,
    /// The built-in default, `None` when unset.
    pub default: Option<Value>,
    pub doc: &'static str,
}

impl KeyDef {
    pub fn new<T: KeyType + Serialize>(
        key: &'static str,
        value: &T,
        trust: Trust,
        doc: &'static str,
    ) -> KeyDef {
        let default = match T::KIND {
            Kind::Section => None,
            _ => Value::try_from(value).ok(),
        };
        KeyDef {
            key,
            kind: T::KIND,
            trust,
            default,
            doc,
        }
    }

    /// The `ZWARM_*` variable for the key: `codex.sandbox` is `ZWARM_CODEX_SANDBOX`.
    pub fn env_name(&self) -> String {
        format!("ZWARM_{}", self.key.replace('.', "_").to_ascii_uppercase())
    }

    /// Whether it is a key (not a section, not a fact `load` finds).
    pub fn is_key(&self) -> bool {
        !matches!(self.trust, Trust::Section | Trust::NotAKey)
    }
}

/// List a struct's fields with their rules, exhaustively (no `..`): a field missing here is a
/// build error. `fields!(out, "codex.", CodexConfig { binary: TrustedOnly(RUNS), "doc"; ... })`.
macro_rules! fields {
    ($out:ident, $prefix:literal, $ty:ident { $($field:ident: $trust:expr, $doc:expr;)* }) => {{
        let $ty { $($field),* } = <$ty as Default>::default();
        $( $out.push($crate::config::schema::KeyDef::new(
            concat!($prefix, stringify!($field)), &$field, $trust, $doc,
        )); )*
    }};
}
pub(crate) use fields;

/// Why a key is trusted-only: it chooses the program zwarm runs.
pub const RUNS: &str = "it chooses the program zwarm runs";
/// Why a key is trusted-only: it goes into an executor's command line.
pub const ARGS: &str = "it goes into the executor's command line";
/// Why a key is trusted-only: it goes into every prompt.
pub const PROMPT: &str = "it goes into every executor's prompt";
/// Why a key is trusted-only: it chooses the model (and so the cost).
pub const MODEL: &str = "it goes into the executor's command line and chooses what a turn costs";
