//! `zwarm top`'s reading: one snapshot of the state dir (a few indexed queries, one short
//! read each).

use std::time::SystemTime;

use super::{Snapshot, TopRow};
use crate::cli::{fmt_cost, fmt_tokens, one_line, parse_time, secs_since};
use crate::config::Config;
use crate::fleet::Fleet;
use crate::model::SessionStatus;
use crate::store::readonly::ReadOnlyStore;

/// Running totals across every session, updated from the rows changed since the last look.
#[derive(Default)]
pub struct Totals {
    fleet: Fleet,
    rev: i64,
}

/// Read a snapshot: running and queued sessions, then the most recent ones (a few indexed
/// queries, one short read each).
pub fn snapshot(
    store: &ReadOnlyStore,
    totals: &mut Totals,
    cfg: &Config,
    limit: usize,
    now: SystemTime,
) -> Result<Snapshot, crate::store::StoreError> {
    let mut rows = Vec::new();
    for st in [
        Some(SessionStatus::Running),
        Some(SessionStatus::Queued),
        None,
    ] {
        let (page, _) = store.page(st, if st.is_some() { 200 } else { limit }, 0)?;
        for r in page {
            if !rows
                .iter()
                .any(|x: &crate::store::readonly::SessionRow| x.session_id == r.session_id)
            {
                rows.push(r);
            }
        }
    }
    let ids: Vec<String> = rows.iter().map(|r| r.session_id.clone()).collect();
    let mut extras = store.extras(&ids)?;
    let mut out = Vec::new();
    for r in rows {
        let x = extras.remove(&r.session_id).unwrap_or_default();
        let active = r.status.is_active();
        let alive = !active || store.owner_alive(&x.owner_instance);
        let elapsed = if active {
            x.turn_started_at
                .as_deref()
                .and_then(|t| secs_since(t, now))
        } else {
            match (parse_time(&x.created_at), parse_time(&r.updated_at)) {
                (Some(a), Some(b)) => Some(b.duration_since(a).map(|d| d.as_secs()).unwrap_or(0)),
                _ => None,
            }
        };
        let last = match (&x.last_progress, &x.error) {
            (_, Some(e)) if r.status == SessionStatus::Failed => e.clone(),
            (Some(p), _) => p.clone(),
            (None, _) => String::new(),
        };
        out.push(TopRow {
            id: r.session_id.clone(),
            status: if alive {
                crate::acp::approval::shown_status(store.root(), &r.session_id, r.status)
                    .as_str()
                    .to_string()
            } else {
                "stale".into()
            },
            active,
            is_final: r.status.is_final(),
            adapter: r.adapter.as_str().to_string(),
            branch: x.branch.clone(),
            elapsed,
            updated: secs_since(&r.updated_at, now),
            last: one_line(&last, 200),
            tokens: r.usage.total_tokens(),
            cost: r.cost_usd,
            task: one_line(&r.task, 200),
        });
    }
    let (stats, rev) = store.stats_since(totals.rev)?;
    for s in stats {
        totals.fleet.update(s);
    }
    totals.rev = rev;
    let cost = crate::watch::priced_cost(&totals.fleet, &cfg.watchers.budget.prices);
    let tokens = totals.fleet.usage().total_tokens();
    let b = &cfg.watchers.budget;
    let mut budget = Vec::new();
    let pct = |v: f64, max: f64| {
        if max > 0.0 {
            format!("{:.0}%", 100.0 * v / max)
        } else {
            "-".into()
        }
    };
    if let Some(max) = b.max_cost_usd {
        budget.push(format!(
            "cost {} of {} ({})",
            fmt_cost(Some(cost)),
            fmt_cost(Some(max)),
            pct(cost, max)
        ));
    }
    if let Some(max) = b.max_tokens {
        budget.push(format!(
            "tokens {} of {} ({})",
            fmt_tokens(tokens),
            fmt_tokens(max),
            pct(tokens as f64, max as f64)
        ));
    }
    if let Some(max) = b.max_sessions {
        budget.push(format!(
            "sessions {} of {max} ({})",
            totals.fleet.len(),
            pct(totals.fleet.len() as f64, max as f64)
        ));
    }
    if let Some(max) = b.max_running {
        budget.push(format!("running {} of {max}", totals.fleet.active()));
    }
    Ok(Snapshot {
        state_dir: store.root().display().to_string(),
        rows: out,
        sessions: totals.fleet.len(),
        running: totals.fleet.active(),
        tokens,
        cost,
        budget,
        error: None,
    })
}
