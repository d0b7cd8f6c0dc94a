//! `zwarm logs [-f] [ID]`: the event log as lines, with what the executors did; `-f`
//! follows both.
//!
//! The event log holds the lifecycle (sessions and turns starting and ending, watcher
//! firings, merges). What an executor does inside a turn (commands with their exit codes,
//! file changes, messages, tool errors) is read from the turn's raw log
//! ([`super::activity`]): printed before the turn's `turn_finished` line, and, while a turn
//! runs, as it is written.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::activity::{TurnReader, activity_line};
use super::{StateArgs, fmt_time, one_line, open_state, short_id};
use crate::model::Adapter;
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
    if kind == "watcher_fired" {
        // What a person wants to read: who said what, and what it does.
        let turn = ev["turn"]
            .as_u64()
            .map(|t| format!(" (turn {t})"))
            .unwrap_or_default();
        return format!(
            "{ts}  {kind:<18} {sid:<8}  watcher {} {}{turn}: {}",
            ev["watcher"].as_str().unwrap_or("?"),
            ev["action"].as_str().unwrap_or("?"),
            one_line(ev["message"].as_str().unwrap_or(""), 200)
        );
    }
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

/// The executors' activity, followed turn by turn from the turns' raw logs.
struct Activity {
    state: PathBuf,
    /// Only this session's turns.
    only: Option<String>,
    adapters: HashMap<String, Option<Adapter>>,
    readers: HashMap<(String, u32), TurnReader>,
}

/// Blank where an activity line has no time of its own (read back from a finished turn).
const NO_TIME: &str = "                   ";

impl Activity {
    fn adapter(&mut self, store: &ReadOnlyStore, sid: &str) -> Option<Adapter> {
        if let Some(a) = self.adapters.get(sid) {
            return *a;
        }
        let a = store.load_session(sid).ok().flatten().map(|s| s.adapter);
        self.adapters.insert(sid.to_string(), a);
        a
    }

    /// Start following (session, turn), unless already followed.
    fn follow(&mut self, store: &ReadOnlyStore, sid: &str, turn: u32) {
        if self.only.as_deref().is_some_and(|o| o != sid)
            || self.readers.contains_key(&(sid.to_string(), turn))
        {
            return;
        }
        if let Some(a) = self.adapter(store, sid)
            && let Some(r) = TurnReader::new(&self.state, sid, turn, a)
        {
            self.readers.insert((sid.to_string(), turn), r);
        }
    }

    /// The turns running now (for `-f` started mid-turn).
    fn follow_running(&mut self, store: &ReadOnlyStore) {
        for (sid, _, _) in store.active().unwrap_or_default() {
            if let Some(s) = store.load_session(&sid).ok().flatten()
                && let Some(t) = s.turns.last()
            {
                self.adapters.insert(sid.clone(), Some(s.adapter));
                self.follow(store, &sid, t.index);
            }
        }
    }

    /// What (sid, turn) logged since the last read, as lines.
    fn drain(&mut self, sid: &str, turn: u32, ts: &str, json: bool, text: &mut String) {
        let Some(r) = self.readers.get_mut(&(sid.to_string(), turn)) else {
            return;
        };
        let adapter = self
            .adapters
            .get(sid)
            .copied()
            .flatten()
            .map(|a| a.as_str())
            .unwrap_or("executor");
        for ev in r.read_new() {
            let Some(what) = activity_line(adapter, &ev) else {
                continue;
            };
            if json {
                let v = json!({"event": "executor", "session_id": sid, "turn": turn, "text": what, "executor": ev});
                text.push_str(&v.to_string());
            } else {
                let kind = match &ev {
                    crate::event::ExecutorEvent::ToolFailed(_) => "tool_error",
                    crate::event::ExecutorEvent::PermissionDenied(_) => "denied",
                    _ => "executor",
                };
                text.push_str(&format!(
                    "{ts}  {kind:<18} {:<8}  {}",
                    short_id(sid),
                    one_line(&what, 200)
                ));
            }
            text.push('\n');
        }
    }

    fn drain_all(&mut self, ts: &str, json: bool, text: &mut String) {
        let mut keys: Vec<(String, u32)> = self.readers.keys().cloned().collect();
        keys.sort();
        for (sid, turn) in keys {
            self.drain(&sid, turn, ts, json, text);
        }
    }
}

/// Print events in order, each turn's activity before its `turn_finished` line, then what
/// the turns still running logged so far (stamped `now` when given).
fn print(
    store: &ReadOnlyStore,
    activity: &mut Activity,
    events: &[Value],
    json: bool,
    now: Option<&str>,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for ev in events {
        let sid = ev["session_id"].as_str();
        let turn = ev["turn"].as_u64().and_then(|t| u32::try_from(t).ok());
        let kind = ev["event"].as_str().unwrap_or("");
        if let (Some(sid), Some(turn)) = (sid, turn) {
            match kind {
                "turn_started" => activity.follow(store, sid, turn),
                "turn_finished" => {
                    activity.follow(store, sid, turn);
                    activity.drain(sid, turn, NO_TIME, json, &mut text);
                    activity.readers.remove(&(sid.to_string(), turn));
                }
                _ => {}
            }
        }
        if json {
            text.push_str(&ev.to_string());
        } else {
            text.push_str(&line(ev));
        }
        text.push('\n');
    }
    activity.drain_all(now.unwrap_or(NO_TIME), json, &mut text);
    if text.is_empty() {
        return Ok(());
    }
    super::out(&text)
}

/// The current time as `logs` prints it.
fn now_text() -> String {
    fmt_time(&humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string())
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
    let mut activity = Activity {
        state: store.root().to_path_buf(),
        only: session.clone(),
        adapters: HashMap::new(),
        readers: HashMap::new(),
    };
    if a.follow {
        activity.follow_running(&store);
        if a.lines == 0 {
            // `-n 0`: only what happens from now on.
            activity.drain_all(NO_TIME, a.json, &mut String::new());
        }
    }
    let first = store.last_events(session.as_deref(), a.lines)?;
    print(&store, &mut activity, &first, a.json, None)?;
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
        after = seq_of(&new, after);
        print(&store, &mut activity, &new, a.json, Some(&now_text()))?;
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
        let ev = serde_json::json!({
            "seq": 8, "ts": "2026-12-01T07:16:23.000Z", "event": "watcher_fired",
            "session_id": "0123456789abcdef", "turn": 2, "watcher": "quality",
            "action": "nudge", "message": "code changed but no test did",
        });
        assert_eq!(
            line(&ev),
            "2026-12-01 07:16:23  watcher_fired      01234567  watcher quality nudge (turn 2): code changed but no test did"
        );
    }
}
