//! `zwarm logs [-f] [ID]`: the event log as lines; `-f` follows it.

use std::time::Duration;

use serde_json::Value;

use super::{StateArgs, fmt_time, one_line, open_state, short_id};
use crate::store::readonly::ReadOnlyStore;

/// How often `-f` looks for new events.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Only this session's events (id or a unique prefix of 8+ characters).
    pub id: Option<String>,
    /// Keep printing new events as they are logged (Ctrl-C stops).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the last events to print first.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Keys every event has, not repeated in the data column.
const FIXED: &[&str] = &["seq", "ts", "server", "pid", "event", "session_id"];

/// One event as a line: time, event, session prefix, short data.
pub fn line(ev: &Value) -> String {
    let ts = ev["ts"].as_str().map(fmt_time).unwrap_or_default();
    let kind = ev["event"].as_str().unwrap_or("?");
    let sid = ev["session_id"].as_str().map(short_id).unwrap_or("-");
    let mut data = Vec::new();
    if let Value::Object(o) = ev {
        for (k, v) in o {
            if FIXED.contains(&k.as_str()) || v.is_null() {
                continue;
            }
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            data.push(format!("{k}={}", one_line(&v, 80)));
        }
    }
    format!(
        "{ts}  {kind:<18} {sid:<8}  {}",
        one_line(&data.join(" "), 160)
    )
    .trim_end()
    .to_string()
}

fn print(events: &[Value], json: bool) -> anyhow::Result<()> {
    let mut text = String::new();
    for ev in events {
        if json {
            text.push_str(&ev.to_string());
        } else {
            text.push_str(&line(ev));
        }
        text.push('\n');
    }
    super::out(&text)
}

fn seq_of(events: &[Value], before: i64) -> i64 {
    events
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .max()
        .unwrap_or(before)
}

pub fn main(a: LogsArgs) -> anyhow::Result<i32> {
    let cfg = a.state.load()?;
    // Following a state no server has written yet: wait for it to appear.
    if a.follow && !ReadOnlyStore::exists(&cfg.state_dir) {
        while !ReadOnlyStore::exists(&cfg.state_dir) {
            std::thread::sleep(FOLLOW_EVERY);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
    let store = open_state(&cfg)?;
    let session = a.id.as_deref().map(|p| store.resolve(p)).transpose()?;
    let first = store.last_events(session.as_deref(), a.lines)?;
    print(&first, a.json)?;
    if !a.follow {
        return Ok(0);
    }
    let mut after = seq_of(&first, 0);
    if first.is_empty() {
        after = store.last_event_seq()?;
    }
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let new = store.events_after(session.as_deref(), after, 1000)?;
        if !new.is_empty() {
            after = seq_of(&new, after);
            print(&new, a.json)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_readable_line() {
        let ev = serde_json::json!({
            "seq": 7, "ts": "2026-12-01T07:16:22.392Z", "server": "x", "pid": 1,
            "event": "turn_finished", "session_id": "0123456789abcdef",
            "turn": 1, "status": "completed", "error": null,
        });
        assert_eq!(
            line(&ev),
            "2026-12-01 07:16:22  turn_finished      01234567  status=completed turn=1"
        );
    }
}
