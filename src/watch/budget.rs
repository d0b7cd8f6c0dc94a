//! budget: hard limits on sessions, running turns, turns per session, tokens and cost.
//!
//! Limits are checked before every `delegate`/`converse` across all sessions on the state
//! dir. Past a limit the call is stopped with `action` (default `abort`: a hard stop); past
//! `warn_percent` of a limit, a nudge warns first. An executor that reports its cost is charged
//! that; one that reports only tokens is priced from `prices` (USD per million tokens, per
//! model; `default` for sessions without a model).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AbortScope, Action, Call, Finding, Watcher, action_setting};
use crate::fleet::Fleet;
use crate::model::Session;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    pub enabled: bool,
    pub priority: i32,
    pub max_sessions: Option<usize>,
    pub max_running: Option<usize>,
    pub max_turns_per_session: Option<usize>,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    /// Nudge when a total reaches this percentage of its limit.
    pub warn_percent: f64,
    /// What to do when a limit is exceeded.
    pub action: String,
    pub prices: BTreeMap<String, Price>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            enabled: true,
            priority: 10,
            max_sessions: None,
            max_running: None,
            max_turns_per_session: None,
            max_tokens: None,
            max_cost_usd: None,
            warn_percent: 80.0,
            action: "abort".into(),
            prices: BTreeMap::new(),
        }
    }
}

pub struct Budget {
    cfg: BudgetConfig,
    action: Action,
    /// The after-turn hard stop fires once; later calls are refused by the gate anyway.
    stopped: std::sync::atomic::AtomicBool,
}

impl Budget {
    pub fn new(cfg: &BudgetConfig) -> Result<Budget, String> {
        Ok(Budget {
            action: action_setting("watchers.budget.action", &cfg.action)?,
            cfg: cfg.clone(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Cost so far in USD (see [`priced_cost`]).
    pub fn cost(&self, fleet: &Fleet) -> f64 {
        priced_cost(fleet, &self.cfg.prices)
    }
}

/// Cost so far in USD: what executors reported (claude) plus tokens priced from `prices`
/// (codex; `default` prices sessions without a priced model). What the budget counts, and what
/// `zwarm top` shows.
pub fn priced_cost(fleet: &Fleet, prices: &BTreeMap<String, Price>) -> f64 {
    let mut c = fleet.reported_cost();
    for (model, u) in fleet.unpriced() {
        let price = model
            .and_then(|m| prices.get(m))
            .or_else(|| prices.get("default"));
        let Some(p) = price else { continue };
        let cached = u.cached_input_tokens.min(u.input_tokens) as f64;
        let fresh = u.input_tokens as f64 - cached;
        c += (fresh * p.input_per_million
            + cached * p.cached_input_per_million.unwrap_or(p.input_per_million)
            + u.output_tokens as f64 * p.output_per_million)
            / 1_000_000.0;
    }
    c
}

impl Watcher for Budget {
    fn name(&self) -> &'static str {
        "budget"
    }

    /// Budgets are server-wide: an abort stops all work, not one session.
    fn abort_scope(&self) -> AbortScope {
        AbortScope::Server
    }

    fn before_call(&self, call: &Call, fleet: &Fleet) -> Result<Finding, String> {
        if !call.starts_work() {
            return Ok(None);
        }
        let new_session = matches!(call, Call::Delegate { .. });
        let mut checks: Vec<(&str, f64, f64, String)> = Vec::new(); // (what, value after call, limit, unit)
        if let Some(max) = self.cfg.max_sessions {
            let n = fleet.len() + usize::from(new_session);
            checks.push(("sessions", n as f64, max as f64, String::new()));
        }
        if let Some(max) = self.cfg.max_running {
            let n = fleet.active() + 1;
            checks.push(("running turns", n as f64, max as f64, String::new()));
        }
        if let (Some(max), Call::Converse { session_id, .. }) =
            (self.cfg.max_turns_per_session, call)
            && let Some(s) = fleet.find(session_id.trim())
        {
            checks.push((
                "turns in this session",
                (s.turns + 1) as f64,
                max as f64,
                String::new(),
            ));
        }
        if let Some(max) = self.cfg.max_tokens {
            let t: u64 = fleet.usage().total_tokens();
            checks.push(("tokens used", t as f64, max as f64, String::new()));
        }
        if let Some(max) = self.cfg.max_cost_usd {
            let c: f64 = self.cost(fleet);
            checks.push(("cost", c, max, " USD".into()));
        }
        let mut warn = None;
        for (what, value, limit, unit) in checks {
            // Counts are checked for the state after this call; usage totals for what is spent.
            let over = if unit.is_empty() && what != "tokens used" {
                value > limit
            } else {
                value >= limit
            };
            if over {
                return Ok(Some((
                    self.action,
                    format!(
                        "budget exceeded: {what} {} of a limit of {}{unit}. Stop starting work; report to the user, who can raise watchers.budget limits in the zwarm config.",
                        fmt(value),
                        fmt(limit)
                    ),
                )));
            }
            if limit > 0.0 && value * 100.0 >= limit * self.cfg.warn_percent && warn.is_none() {
                warn = Some(format!(
                    "budget warning: {what} at {}{unit} of a limit of {}{unit} ({:.0}%). Prefer finishing and verifying current work over starting more.",
                    fmt(value),
                    fmt(limit),
                    value * 100.0 / limit
                ));
            }
        }
        Ok(warn.map(|w| (Action::Nudge, w)))
    }

    /// The hard stop also applies to work already running: a turn that takes the totals past
    /// `max_tokens` or `max_cost_usd` triggers the action at once (an abort interrupts every
    /// running turn).
    fn after_turn(&self, _session: &Session, fleet: &Fleet) -> Result<Finding, String> {
        let finding = self.exceeded(fleet);
        if finding.is_some() && self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(finding)
    }
}

impl Budget {
    fn exceeded(&self, fleet: &Fleet) -> Finding {
        if let Some(max) = self.cfg.max_tokens {
            let t: u64 = fleet.usage().total_tokens();
            if t >= max {
                return Some((
                    self.action,
                    format!(
                        "budget exceeded: tokens used {t} of a limit of {max}. Report to the user, who can raise watchers.budget.max_tokens."
                    ),
                ));
            }
        }
        if let Some(max) = self.cfg.max_cost_usd {
            let c: f64 = self.cost(fleet);
            if c >= max {
                return Some((
                    self.action,
                    format!(
                        "budget exceeded: cost {} of a limit of {} USD. Report to the user, who can raise watchers.budget.max_cost_usd.",
                        fmt(c),
                        fmt(max)
                    ),
                ));
            }
        }
        None
    }
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}
