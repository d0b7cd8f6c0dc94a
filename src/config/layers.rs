//! Reading the layers into TOML tables: files, `ZWARM_*` variables and `--set`, each checked
//! against the key table ([`super::keys`]).

use std::path::Path;

use toml::Value;

use super::error::ConfigError;
use super::keys::{self, Kind};

pub(super) fn read_file(p: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|err| ConfigError::Read {
        path: p.display().to_string(),
        err,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: p.display().to_string(),
        err: crate::text::one_line(&e.to_string(), 300),
    })
}

/// A trusted config file's table: its first unknown key or bad value is an error.
pub(super) fn read_trusted(p: &Path) -> Result<toml::Table, ConfigError> {
    let t = read_file(p)?;
    match problems(&t, "", &p.display().to_string())
        .into_iter()
        .next()
    {
        Some((_, e)) => Err(e),
        None => Ok(t),
    }
}

fn unknown(key: &str, source_name: &str) -> ConfigError {
    ConfigError::UnknownKey {
        key: key.into(),
        source_name: source_name.into(),
        hint: match keys::suggest(key) {
            Some(k) => format!("did you mean `{k}`?"),
            None => "docs/configuration.md lists every key".into(),
        },
    }
}

/// Every unknown key, section that is not a table and mode value that is not one of its
/// values in `t`, with the dotted key it concerns.
pub(super) fn problems(
    t: &toml::Table,
    prefix: &str,
    source_name: &str,
) -> Vec<(String, ConfigError)> {
    let mut out = Vec::new();
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if keys::is_section(&path) {
            match v {
                Value::Table(sub) => out.extend(problems(sub, &path, source_name)),
                _ => out.push((
                    path.clone(),
                    ConfigError::BadValue {
                        key: path,
                        source_name: source_name.into(),
                        expected: "a table".into(),
                        value: v.to_string(),
                    },
                )),
            }
        } else if let (Some(_), Value::Table(sub)) = (keys::named_table(&path), v) {
            out.extend(problems(sub, &path, source_name));
        } else if keys::find(&path).is_none() {
            out.push((path.clone(), unknown(&path, source_name)));
        } else if let Err(e) = check_mode(&path, v, source_name) {
            out.push((path, e));
        }
    }
    out
}

/// A mode key's value must be one of its known values (other keys: anything).
pub(super) fn check_mode(key: &str, v: &Value, source_name: &str) -> Result<(), ConfigError> {
    let Some(mode) = keys::find(key).and_then(|k| k.mode()) else {
        return Ok(());
    };
    if v.as_str().and_then(|s| mode.width(s)).is_some() {
        return Ok(());
    }
    Err(ConfigError::BadValue {
        key: key.into(),
        source_name: source_name.into(),
        expected: mode.expected.into(),
        value: v.as_str().map_or_else(|| v.to_string(), str::to_string),
    })
}

/// The `ZWARM_*` variables as a table. An unknown name is a warning, not an error: hosts start
/// servers with the user's whole environment.
pub(super) fn env_table(
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<toml::Table, ConfigError> {
    let mut t = toml::Table::new();
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("ZWARM_"))
        .collect();
    vars.sort();
    for (name, value) in vars {
        if keys::ENV_RESERVED.contains(&name.as_str()) {
            continue;
        }
        let Some(key) = keys::from_env_name(name) else {
            if keys::is_executor_binary_env(name) {
                continue;
            }
            let hint = match keys::suggest_env(name) {
                Some(n) => format!("did you mean {n}?"),
                None => "zwarm reads ZWARM_<KEY> for config keys (e.g. ZWARM_CODEX_SANDBOX for codex.sandbox)".into(),
            };
            warnings.push(format!(
                "unknown environment variable {name} ignored: {hint}"
            ));
            continue;
        };
        set_path(&mut t, &key, value, &format!("environment variable {name}"))?;
    }
    Ok(t)
}

/// Parse `raw` as a TOML value (`[1, 2]`, `{ a = 1 }`, `"x"`).
fn toml_literal(raw: &str) -> Option<Value> {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
}

/// Set a dotted key from a raw string (a variable or `--set`), typed by the key's kind.
pub(super) fn set_path(
    t: &mut toml::Table,
    key: &str,
    raw: &str,
    source_name: &str,
) -> Result<(), ConfigError> {
    let kind = keys::find(key)
        .map(|k| k.kind)
        .ok_or_else(|| unknown(key, source_name))?;
    let bad = |expected: &str| ConfigError::BadValue {
        key: key.into(),
        source_name: source_name.into(),
        expected: expected.into(),
        value: raw.into(),
    };
    let value = match kind {
        Kind::Str => Value::String(raw.to_string()),
        Kind::Int => Value::Integer(raw.parse::<i64>().map_err(|_| bad("a whole number"))?),
        Kind::Float => Value::Float(raw.parse::<f64>().map_err(|_| bad("a number"))?),
        Kind::Bool => Value::Boolean(match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(bad("true or false")),
        }),
        Kind::Free | Kind::Section => {
            toml_literal(raw).ok_or_else(|| bad("a TOML value (table or array)"))?
        }
        Kind::StrList if raw.trim_start().starts_with('[') => toml_literal(raw)
            .filter(Value::is_array)
            .ok_or_else(|| bad("a TOML array of strings or a comma-separated list"))?,
        Kind::StrList => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
    };
    check_mode(key, &value, source_name)?;
    insert_path(t, key, value)
}

/// Set a dotted key, creating the tables on the way.
pub(super) fn insert_path(t: &mut toml::Table, key: &str, value: Value) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut cur = t;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        cur = match entry {
            Value::Table(sub) => sub,
            _ => return Err(ConfigError::Invalid(format!("`{p}` is not a table"))),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

pub(super) fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub(super) fn get_path<'a>(t: &'a toml::Table, key: &str) -> Option<&'a Value> {
    match key.split_once('.') {
        Some((head, rest)) => get_path(t.get(head)?.as_table()?, rest),
        None => t.get(key),
    }
}

pub(super) fn remove_path(t: &mut toml::Table, key: &str) -> Option<Value> {
    match key.split_once('.') {
        Some((head, rest)) => match t.get_mut(head)? {
            Value::Table(sub) => remove_path(sub, rest),
            _ => None,
        },
        None => t.remove(key),
    }
}
