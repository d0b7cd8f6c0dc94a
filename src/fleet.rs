//! The fleet: running totals over every session on the state dir, for the watchers.
//!
//! Budget and progress watchers ask fleet-wide questions before every tool call (how many
//! sessions, how many running, tokens and cost so far, turns finished). 0.2 answered them by
//! reading every session; here the engine keeps one small [`Stat`] per session and totals that
//! are updated by difference whenever a session changes, so a question costs the same at ten
//! sessions and at ten thousand.

use std::collections::{BTreeMap, HashMap};

use crate::event::Usage;
use crate::model::{Adapter, Session, SessionStatus};

/// What the watchers need to know about one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub id: String,
    pub adapter: Adapter,
    pub model: Option<String>,
    pub status: SessionStatus,
    pub turns: u32,
    pub finished_turns: u32,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
}

impl Stat {
    pub fn of(s: &Session) -> Stat {
        Stat {
            id: s.id.clone(),
            adapter: s.adapter,
            model: s.model.clone(),
            status: s.status,
            turns: s.turns.len() as u32,
            finished_turns: s.turns.iter().filter(|t| t.ended_at.is_some()).count() as u32,
            usage: s.total_usage(),
            cost_usd: s.total_cost(),
        }
    }

    /// Whether the executor reported a cost for this session (claude does with every usage
    /// report). Sessions without one (codex, or a turn whose reported cost was refused as
    /// invalid) are priced from their tokens by the budget watcher. Decided from the data, not
    /// the adapter, so the fleet needs no executor knowledge.
    pub fn reports_cost(&self) -> bool {
        self.cost_usd.is_some()
    }
}

#[derive(Debug, Default, Clone)]
pub struct Fleet {
    stats: BTreeMap<String, Stat>,
    active: usize,
    finished_turns: u64,
    usage: Usage,
    reported_cost: f64,
    /// Usage of sessions without a reported cost, by model (None: the executor's default).
    unpriced: HashMap<Option<String>, Usage>,
}

fn sub(a: &mut Usage, b: &Usage) {
    a.input_tokens = a.input_tokens.saturating_sub(b.input_tokens);
    a.cached_input_tokens = a.cached_input_tokens.saturating_sub(b.cached_input_tokens);
    a.output_tokens = a.output_tokens.saturating_sub(b.output_tokens);
    a.reasoning_output_tokens = a
        .reasoning_output_tokens
        .saturating_sub(b.reasoning_output_tokens);
}

impl Fleet {
    /// Insert or replace one session's figures, adjusting the totals by difference.
    pub fn update(&mut self, s: Stat) {
        if let Some(old) = self.stats.remove(&s.id) {
            self.account(&old, false);
        }
        self.account(&s, true);
        self.stats.insert(s.id.clone(), s);
    }

    fn account(&mut self, s: &Stat, add: bool) {
        let sign = if add { 1.0 } else { -1.0 };
        if s.status.is_active() {
            self.active = if add {
                self.active + 1
            } else {
                self.active.saturating_sub(1)
            };
        }
        let ft = u64::from(s.finished_turns);
        self.finished_turns = if add {
            self.finished_turns + ft
        } else {
            self.finished_turns.saturating_sub(ft)
        };
        if add {
            self.usage.add(&s.usage);
        } else {
            sub(&mut self.usage, &s.usage);
        }
        if s.reports_cost() {
            self.reported_cost += sign * s.cost_usd.unwrap_or(0.0);
            if self.reported_cost < 1e-12 {
                self.reported_cost = self.reported_cost.max(0.0);
            }
        } else {
            let u = self.unpriced.entry(s.model.clone()).or_default();
            if add {
                u.add(&s.usage);
            } else {
                sub(u, &s.usage);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Sessions with a turn queued or running.
    pub fn active(&self) -> usize {
        self.active
    }

    pub fn finished_turns(&self) -> u64 {
        self.finished_turns
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Cost reported by executors (claude), in USD.
    pub fn reported_cost(&self) -> f64 {
        self.reported_cost
    }

    /// Token usage without a reported cost, by model.
    pub fn unpriced(&self) -> impl Iterator<Item = (Option<&str>, &Usage)> {
        self.unpriced.iter().map(|(m, u)| (m.as_deref(), u))
    }

    /// The session with this id, or the only one starting with this prefix.
    pub fn find(&self, id: &str) -> Option<&Stat> {
        if id.is_empty() {
            return None;
        }
        if let Some(s) = self.stats.get(id) {
            return Some(s);
        }
        let mut it = self
            .stats
            .range(id.to_string()..)
            .take_while(|(k, _)| k.starts_with(id));
        match (it.next(), it.next()) {
            (Some((_, s)), None) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(
        id: &str,
        adapter: Adapter,
        status: SessionStatus,
        out: u64,
        cost: Option<f64>,
    ) -> Stat {
        Stat {
            id: id.into(),
            adapter,
            model: None,
            status,
            turns: 1,
            finished_turns: u32::from(!status.is_active()),
            usage: Usage {
                output_tokens: out,
                ..Default::default()
            },
            cost_usd: cost,
        }
    }

    #[test]
    fn totals_follow_updates_by_difference() {
        // Any two adapters: the fleet knows none by name.
        let all = Adapter::all();
        let (a, b) = (all[0], all[1]);
        let mut f = Fleet::default();
        f.update(stat("aaaaaaaa-1", a, SessionStatus::Running, 10, None));
        f.update(stat("aaaaaaaa-2", b, SessionStatus::Idle, 5, Some(0.5)));
        assert_eq!((f.len(), f.active(), f.finished_turns()), (2, 1, 1));
        assert_eq!(f.usage().output_tokens, 15);
        // The running one finishes with more tokens: replaced, not added twice.
        f.update(stat("aaaaaaaa-1", a, SessionStatus::Idle, 30, None));
        assert_eq!((f.len(), f.active(), f.finished_turns()), (2, 0, 2));
        assert_eq!(f.usage().output_tokens, 35);
        assert!((f.reported_cost() - 0.5).abs() < 1e-9);
        let unpriced: u64 = f.unpriced().map(|(_, u)| u.output_tokens).sum();
        assert_eq!(unpriced, 30);
        assert!(f.find("aaaaaaaa").is_none(), "ambiguous prefix");
        assert_eq!(f.find("aaaaaaaa-2").map(|s| s.adapter), Some(b));
    }
}
