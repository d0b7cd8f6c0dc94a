//! Reading the event log: the rows as the tools and `zwarm logs` show them.

use rusqlite::{Connection, params};
use serde_json::Value;

use super::StoreError;
use super::db::db;

pub(super) fn recent_events(
    c: &Connection,
    limit: usize,
    after: Option<i64>,
) -> Result<Vec<Value>, StoreError> {
    let sql = if after.is_some() {
        "SELECT seq, ts, server, pid, session_id, kind, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    } else {
        "SELECT * FROM (SELECT seq, ts, server, pid, session_id, kind, data FROM events WHERE ?1 IS NULL ORDER BY seq DESC LIMIT ?2) ORDER BY seq"
    };
    let mut st = c.prepare_cached(sql).map_err(db)?;
    let rows = st
        .query_map(params![after, limit as i64], event_row)
        .map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

/// An event row (`seq, ts, server, pid, session_id, kind, data`) as the JSON the tools and
/// `zwarm logs` show: the record's fields, then its data's (which never override them).
pub(super) fn event_row(r: &rusqlite::Row) -> rusqlite::Result<Value> {
    let seq: i64 = r.get(0)?;
    let ts: String = r.get(1)?;
    let server: String = r.get(2)?;
    let pid: i64 = r.get(3)?;
    let sid: Option<String> = r.get(4)?;
    let kind: String = r.get(5)?;
    let data: String = r.get(6)?;
    let mut v =
        serde_json::json!({"seq": seq, "ts": ts, "server": server, "pid": pid, "event": kind});
    if let Some(id) = sid {
        v["session_id"] = Value::String(id);
    }
    if let (Value::Object(dst), Ok(Value::Object(src))) =
        (&mut v, serde_json::from_str::<Value>(&data))
    {
        for (k, val) in src {
            dst.entry(k).or_insert(val);
        }
    }
    Ok(v)
}
