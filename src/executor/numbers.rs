//! The numbers executors report (token counts, cost) checked before anything stores or sums
//! them: a negative, fractional, non-numeric or absurd value is rejected with a note (a
//! [`ExecutorEvent::Warning`]), never passed on. Also the few helpers both stream parsers share.

use serde::Deserialize;
use serde_json::Value;

use crate::event::{ExecutorEvent, Usage};

/// More tokens than this in one report is not a real count (a turn of a 1M-token context
/// model re-sent a thousand times is still under it).
pub const MAX_TOKENS: u64 = 100_000_000_000;
/// More than this many dollars in one report is not a real cost.
pub const MAX_COST_USD: f64 = 100_000.0;

/// A number as the executor wrote it, not yet trusted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Reported(pub Option<Value>);

/// Why a reported number was refused, or its value.
fn token_count(field: &str, n: &Reported) -> Result<u64, String> {
    match &n.0 {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(x)) => match x.as_u64() {
            Some(v) if v <= MAX_TOKENS => Ok(v),
            Some(v) => Err(format!("{field} = {v} (more than {MAX_TOKENS})")),
            None => Err(format!("{field} = {x} (not a whole number of at least 0)")),
        },
        Some(other) => Err(format!(
            "{field} = {} (not a number)",
            crate::text::one_line(&other.to_string(), 40)
        )),
    }
}

/// Checked token counts: `Ok(usage)` when every field is a whole number in range, else the
/// list of refused fields.
pub fn usage(
    fields: &[(&str, &Reported)],
    build: impl FnOnce(&dyn Fn(&str) -> u64) -> Usage,
) -> Result<Usage, String> {
    let mut bad = Vec::new();
    let mut vals = Vec::new();
    for (name, n) in fields {
        match token_count(name, n) {
            Ok(v) => vals.push((*name, v)),
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        return Err(bad.join(", "));
    }
    let get = |k: &str| vals.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
    Ok(build(&get))
}

/// A checked cost in dollars: `Ok(None)` when absent.
pub fn cost(field: &str, n: &Reported) -> Result<Option<f64>, String> {
    match &n.0 {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => match x.as_f64() {
            Some(v) if v.is_finite() && (0.0..=MAX_COST_USD).contains(&v) => Ok(Some(v)),
            _ => Err(format!("{field} = {x} (not between 0 and {MAX_COST_USD})")),
        },
        Some(other) => Err(format!(
            "{field} = {} (not a number)",
            crate::text::one_line(&other.to_string(), 40)
        )),
    }
}

/// The note for refused numbers.
pub fn refused(cli: &str, what: &str, why: &str) -> ExecutorEvent {
    ExecutorEvent::Warning {
        message: format!(
            "{cli} reported an invalid {what} ({why}); zwarm ignores it for this turn's usage and cost"
        ),
    }
}

/// The event for a line a parser does not act on.
pub fn other(kind: &str) -> Vec<ExecutorEvent> {
    vec![ExecutorEvent::Other {
        kind: kind.to_string(),
    }]
}

/// The text blocks of a tool result's or MCP result's `content` (a string, or an array of
/// blocks with `text`).
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(v: Value) -> Reported {
        Reported(Some(v))
    }

    #[test]
    fn negative_fractional_absurd_and_non_numbers_are_refused() {
        for bad in [
            json!(-1),
            json!(1.5),
            json!(MAX_TOKENS + 1),
            json!("10"),
            json!(true),
        ] {
            assert!(
                token_count("input_tokens", &r(bad.clone())).is_err(),
                "{bad}"
            );
        }
        assert_eq!(token_count("x", &r(json!(42))), Ok(42));
        assert_eq!(token_count("x", &Reported(None)), Ok(0));
        for bad in [json!(-1000), json!(1e9), json!("0.1")] {
            assert!(cost("total_cost_usd", &r(bad.clone())).is_err(), "{bad}");
        }
        assert_eq!(cost("c", &r(json!(0.25))), Ok(Some(0.25)));
        assert_eq!(cost("c", &r(Value::Null)), Ok(None));
    }
}
