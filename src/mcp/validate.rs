//! Checks every tool call gets before its handler runs: things no executor can take, refused
//! up front with an `isError` result instead of becoming a failed session.

use serde_json::{Map, Value};

/// Why a call's arguments cannot be used, if they cannot.
pub fn check_arguments(tool: &str, args: Option<&Map<String, Value>>) -> Option<String> {
    let args = args?;
    if let Some((path, at)) = find_nul(args) {
        return Some(format!(
            "argument `{path}` contains a NUL character (at character {at}), which cannot be passed to an executor or stored. Remove it and call {tool} again."
        ));
    }
    if tool == "delegate"
        && let Some(Value::String(model)) = args.get("model")
        && let Err(why) = check_model(model)
    {
        return Some(format!(
            "model `{}` {why}. Give a model name such as `gpt-5.5` or `claude-sonnet-4-5`, or omit model for the executor's configured one, and call delegate again.",
            model.escape_debug()
        ));
    }
    None
}

/// A string or boolean argument of the wrong JSON type, checked against the tool's input
/// schema so the answer names the field ("`task` must be a string, got a number"); the
/// argument parser alone says only "invalid type". Numbers and id lists are parsed leniently
/// (and name their field) by the argument types themselves.
pub fn check_types(
    schema: &Map<String, Value>,
    args: Option<&Map<String, Value>>,
) -> Option<String> {
    let props = schema.get("properties")?.as_object()?;
    for (name, value) in args? {
        let Some(types) = props.get(name).and_then(|p| p.get("type")) else {
            continue;
        };
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let null_ok = types.contains(&"null");
        let (want, fits) = if types.contains(&"string") {
            ("a string", value.is_string())
        } else if types.contains(&"boolean") {
            ("true or false", value.is_boolean())
        } else {
            continue;
        };
        if !(fits || null_ok && value.is_null()) {
            return Some(format!(
                "`{name}` must be {want}, got {}. Fix it and call again.",
                match value {
                    Value::Null => "null".to_string(),
                    Value::String(s) => format!("the string {s:?}"),
                    other => other.to_string(),
                }
            ));
        }
    }
    None
}

/// The first string with a NUL in it: its path (`task`, `session_ids[2]`) and the position.
fn find_nul(args: &Map<String, Value>) -> Option<(String, usize)> {
    fn walk(v: &Value, path: String) -> Option<(String, usize)> {
        match v {
            Value::String(s) => s.chars().position(|c| c == '\0').map(|at| (path, at)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, x)| walk(x, format!("{path}[{i}]"))),
            Value::Object(o) => o.iter().find_map(|(k, x)| walk(x, format!("{path}.{k}"))),
            _ => None,
        }
    }
    args.iter().find_map(|(k, v)| walk(v, k.clone()))
}

/// A model name goes on an executor's command line: letters, digits and `._:/@+-`, not
/// starting with `-` (it would read as an option), at most 200 characters.
pub fn check_model(model: &str) -> Result<(), &'static str> {
    let m = model.trim();
    if m.is_empty() {
        return Ok(()); // empty: the configured model
    }
    if m.len() > 200 {
        return Err("is longer than 200 characters");
    }
    if m.starts_with('-') {
        return Err("starts with `-`, which an executor would read as an option");
    }
    if !m
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:/@+-".contains(c))
    {
        return Err(
            "contains characters a model name cannot have (only letters, digits and . _ : / @ + - are allowed)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_wrong_type_names_its_field() {
        let schema = obj(json!({"properties": {
            "task": {"type": "string"},
            "mode": {"type": ["string", "null"]},
            "acknowledge_pause": {"type": "boolean"},
            "wait_seconds": {"type": ["integer", "null"]}
        }}));
        let check = |v: Value| check_types(&schema, Some(&obj(v)));
        assert!(
            check(json!({"task": 5}))
                .unwrap_or_default()
                .contains("`task` must be a string")
        );
        assert!(
            check(json!({"task": "t", "acknowledge_pause": "yes"}))
                .unwrap_or_default()
                .contains("`acknowledge_pause`")
        );
        assert!(check(json!({"task": "t", "mode": null, "wait_seconds": "30"})).is_none());
        assert!(check(json!({"task": null})).is_some());
    }

    #[test]
    fn nul_anywhere_and_bad_models_are_refused() {
        let a = obj(json!({"task": "ok", "session_ids": ["a", "b\u{0}c"]}));
        let e = check_arguments("check_session", Some(&a)).unwrap_or_default();
        assert!(e.contains("`session_ids[1]`"), "{e}");
        for bad in ["gpt\u{0}", "--config=x", "gpt 5", "a\nb", "#!/bin/sh"] {
            let a = obj(json!({"task": "t", "model": bad}));
            assert!(check_arguments("delegate", Some(&a)).is_some(), "{bad:?}");
        }
        for good in [
            "gpt-5.5",
            "claude-sonnet-4-5@20250929",
            "openai/gpt-4o",
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "",
        ] {
            let a = obj(json!({"task": "t", "model": good}));
            assert!(check_arguments("delegate", Some(&a)).is_none(), "{good:?}");
        }
    }
}
