//! `zwarm ps`: the sessions on the state dir, as a table or as JSON.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::{StateArgs, fmt_age, fmt_cost, fmt_tokens, one_line, open_state, secs_since, short_id};
use crate::model::SessionStatus;
use crate::store::readonly::{ReadOnlyStore, RowExtra, SessionRow};

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Only sessions with this status (queued, running, idle, failed, completed, cancelled,
    /// unreadable). Running ones waiting for an approval are shown `needs_approval`.
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// At most this many sessions, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print `{"sessions": [...], "total": N}`: each session with the fields of
    /// list_sessions (plus `created_at`, and `server_alive` for running ones); `total` counts
    /// every matching session, also those past --limit.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

/// One listed session with what the terminal views add to a `list_sessions` row.
#[derive(Debug, Clone)]
pub struct Listed {
    pub row: SessionRow,
    pub extra: RowExtra,
    /// For a running or queued session: whether the server running it is still alive.
    pub server_alive: Option<bool>,
}

/// Parse a status filter, with the list of valid ones in the error.
pub fn parse_status(s: &str) -> anyhow::Result<SessionStatus> {
    SessionStatus::parse(s).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown status `{s}`: use queued, running, idle, failed, completed, cancelled or unreadable"
        )
    })
}

/// A page of sessions with their extras (two short reads).
pub fn list(
    store: &ReadOnlyStore,
    status: Option<SessionStatus>,
    limit: usize,
) -> anyhow::Result<(Vec<Listed>, usize)> {
    let (rows, total) = store.page(status, limit, 0)?;
    let ids: Vec<String> = rows.iter().map(|r| r.session_id.clone()).collect();
    let mut extras = store.extras(&ids)?;
    let out = rows
        .into_iter()
        .map(|row| {
            let extra = extras.remove(&row.session_id).unwrap_or_default();
            let mut row = row;
            row.status =
                crate::acp::approval::shown_status(store.root(), &row.session_id, row.status);
            let server_alive = row
                .status
                .is_active()
                .then(|| store.owner_alive(&extra.owner_instance));
            Listed {
                row,
                extra,
                server_alive,
            }
        })
        .collect();
    Ok((out, total))
}

/// A session as `ps --json` prints it: the fields of list_sessions, and `branch` when the
/// session has one.
pub fn to_json(l: &Listed) -> Value {
    let r = &l.row;
    let mut v = json!({
        "session_id": r.session_id,
        "status": r.status,
        "adapter": r.adapter,
        "mode": r.mode,
        "task": r.task,
        "turns": r.turns,
        "usage": r.usage,
        "cost_usd": r.cost_usd,
        "updated_at": r.updated_at,
        "created_at": l.extra.created_at,
    });
    if let Some(b) = &l.extra.branch {
        v["branch"] = Value::String(b.clone());
    }
    if let Some(alive) = l.server_alive {
        v["server_alive"] = Value::Bool(alive);
    }
    v
}

/// The status as a person reads it: a running session whose server is gone is `stale`.
pub fn status_label(l: &Listed) -> &'static str {
    if l.server_alive == Some(false) {
        "stale"
    } else {
        l.row.status.as_str()
    }
}

/// Lay out rows as aligned columns; the last column is cut to `width` in total when given.
pub fn table(header: &[&str], rows: &[Vec<String>], width: Option<usize>) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n.saturating_sub(1)) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let lead: usize = w.iter().take(n.saturating_sub(1)).map(|x| x + 2).sum();
    let last_max = width.map(|t| t.saturating_sub(lead).max(10));
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == n {
                match last_max {
                    Some(m) => s.push_str(&one_line(c, m)),
                    None => s.push_str(c),
                }
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
    out
}

pub fn main(a: PsArgs) -> anyhow::Result<i32> {
    let status = a.status.as_deref().map(parse_status).transpose()?;
    let cfg = a.state.load()?;
    if !ReadOnlyStore::exists(&cfg.state_dir) {
        // Nothing has run yet: an empty list, not an error (scripts poll this).
        if a.json {
            super::out("{\"sessions\":[]}\n")?;
        } else {
            super::out(&format!(
                "no sessions (no zwarm state in {} yet)\n",
                cfg.state_dir.display()
            ))?;
        }
        return Ok(0);
    }
    let store = open_state(&cfg)?;
    let (list, total) = list(&store, status, a.limit.clamp(1, 10_000))?;
    if a.json {
        let v = json!({
            "sessions": list.iter().map(to_json).collect::<Vec<_>>(),
            "total": total,
        });
        super::out(&format!("{v}\n"))?;
        return Ok(0);
    }
    if list.is_empty() {
        super::out("no sessions\n")?;
        return Ok(0);
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            let r = &l.row;
            vec![
                short_id(&r.session_id).to_string(),
                status_label(l).to_string(),
                r.adapter.as_str().to_string(),
                // Age from when the session was created (the last update is in `ps --json`).
                secs_since(&l.extra.created_at, now)
                    .map(fmt_age)
                    .unwrap_or_else(|| "?".into()),
                r.turns.to_string(),
                fmt_tokens(r.usage.total_tokens()),
                fmt_cost(r.cost_usd),
                l.extra.branch.clone().unwrap_or_else(|| "-".into()),
                one_line(&r.task, 200),
            ]
        })
        .collect();
    let width = terminal_width();
    let mut text = table(
        &[
            "ID", "STATUS", "ADAPTER", "AGE", "TURNS", "TOKENS", "COST", "BRANCH", "TASK",
        ],
        &rows,
        width,
    );
    if list.len() < total {
        text.push_str(&format!(
            "({} of {total} sessions; --limit N shows more)\n",
            list.len()
        ));
    }
    if list.iter().any(|l| l.server_alive == Some(false)) {
        text.push_str("stale: the server running it is gone; the next server to start (or `zwarm end ID`) records it as failed\n");
    }
    super::out(&text)?;
    Ok(0)
}

/// The terminal's width when stdout is one.
pub fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    crossterm::terminal::size().ok().map(|(w, _)| w as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_cuts_the_last() {
        let t = table(
            &["ID", "TASK"],
            &[
                vec!["a".into(), "short".into()],
                vec!["bbbb".into(), "a much longer task text".into()],
            ],
            Some(16),
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID    TASK");
        assert_eq!(lines[1], "a     short");
        assert_eq!(lines[2], "bbbb  a much lo…");
    }
}
