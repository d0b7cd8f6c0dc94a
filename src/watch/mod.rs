//! Watchers: guardrails that see every tool call and every executor event, and act.
//!
//! Every orchestrator call and every executor event passes through zwarm, so a watcher can
//! observe the whole trajectory. A watcher looks at one of three moments — before a tool call,
//! at each executor event, after a turn — and answers with an [`Action`]:
//!
//! * `continue` — nothing to say;
//! * `nudge` — guidance for the orchestrator, added to tool results under `watchers`;
//! * `pause` — new `delegate`/`converse` calls are refused until acknowledged (the call is
//!   repeated with `acknowledge_pause: true`; a person or the orchestrator decides);
//! * `abort` — stop. What stops depends on the watcher's [`AbortScope`]: a rule about one
//!   session (pattern, scope, quality, progress) interrupts that session's turn and refuses
//!   further turns of that session only; the budget stops the whole server (`delegate`/
//!   `converse` refused for the rest of its life, every running turn interrupted).
//!
//! When several watchers fire, the most severe action wins (abort > pause > nudge >
//! continue), then the higher priority. A watcher that errors (or panics) is logged and
//! skipped; it never breaks the call. Every firing is a `watcher_fired` event in the log.
//!
//! Watchers see fleet-wide figures through [`Fleet`] (running totals, not a list of every
//! session), and slow checks (a git scan) run in [`Watcher::after_turn_background`], off the
//! request path.

mod budget;
mod pattern;
mod progress;
mod quality;
mod scope;

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::ExecutorEvent;
use crate::fleet::Fleet;
use crate::model::{Mode, Session};

pub use budget::BudgetConfig;
pub use budget::priced_cost;
pub use pattern::{PatternConfig, PatternRule};
pub use progress::ProgressConfig;
pub use quality::QualityConfig;
pub use scope::ScopeConfig;

pub use crate::model::{Action, WatcherNote};

/// What a watcher says at one moment.
pub type Finding = Option<(Action, String)>;

/// A tool call as the watchers see it: typed, with the fields a watcher may judge. The MCP
/// layer builds it from the arguments it has already parsed (and `mode` parsed once).
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Delegate {
        task: String,
        mode: Mode,
        adapter: Option<String>,
        model: Option<String>,
        working_dir: Option<String>,
        isolation: Option<String>,
        base: Option<String>,
    },
    Converse {
        session_id: String,
        message: String,
        mode: Mode,
    },
    CheckSession {
        /// `session_id` and `session_ids`, in the order given.
        session_ids: Vec<String>,
    },
    EndSession {
        session_id: String,
        verdict: Option<String>,
        integrate: Option<String>,
    },
    ListSessions,
    /// A call zwarm has no type for (only through the untyped entry point).
    Other {
        tool: String,
    },
}

impl Call {
    /// The tool's name, for logs and events.
    pub fn tool(&self) -> &str {
        match self {
            Call::Delegate { .. } => "delegate",
            Call::Converse { .. } => "converse",
            Call::CheckSession { .. } => "check_session",
            Call::EndSession { .. } => "end_session",
            Call::ListSessions => "list_sessions",
            Call::Other { tool } => tool,
        }
    }

    /// Calls that start work: the ones pause and abort refuse (inspecting and ending stay
    /// possible).
    pub fn starts_work(&self) -> bool {
        matches!(self, Call::Delegate { .. } | Call::Converse { .. })
    }

    /// The text a call hands to an executor (the task or the message).
    pub fn text(&self) -> Option<&str> {
        match self {
            Call::Delegate { task, .. } => Some(task),
            Call::Converse { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Build a typed call from a tool name and its JSON arguments, for callers that have only
    /// JSON.
    pub fn from_json(tool: &str, args: &Value) -> Call {
        let s = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
        let mode = || {
            s("mode")
                .as_deref()
                .and_then(Mode::parse)
                .unwrap_or(Mode::Sync)
        };
        match tool {
            "delegate" => Call::Delegate {
                task: s("task").unwrap_or_default(),
                mode: mode(),
                adapter: s("adapter"),
                model: s("model"),
                working_dir: s("working_dir"),
                isolation: s("isolation"),
                base: s("base"),
            },
            "converse" => Call::Converse {
                session_id: s("session_id").unwrap_or_default(),
                message: s("message").unwrap_or_default(),
                mode: mode(),
            },
            "check_session" => Call::CheckSession {
                session_ids: s("session_id")
                    .into_iter()
                    .chain(
                        args.get("session_ids")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str().map(str::to_string)),
                    )
                    .collect(),
            },
            "end_session" => Call::EndSession {
                session_id: s("session_id").unwrap_or_default(),
                verdict: s("verdict"),
                integrate: s("integrate"),
            },
            "list_sessions" => Call::ListSessions,
            other => Call::Other {
                tool: other.to_string(),
            },
        }
    }
}

/// What an abort stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortScope {
    /// The session the finding is about: its running turn is interrupted, it takes no more
    /// turns; other sessions go on.
    Session,
    /// The whole server: every running turn, and all new work.
    Server,
}

pub trait Watcher: Send + Sync {
    fn name(&self) -> &'static str;
    /// What this watcher's aborts stop (default: the session concerned).
    fn abort_scope(&self) -> AbortScope {
        AbortScope::Session
    }
    /// Before every tool call. `fleet` has running totals over every session on the state dir.
    fn before_call(&self, _call: &Call, _fleet: &Fleet) -> Result<Finding, String> {
        Ok(None)
    }
    /// At every executor event, with the session as updated by it.
    fn on_event(&self, _session: &Session, _event: &ExecutorEvent) -> Result<Finding, String> {
        Ok(None)
    }
    /// After every turn, with the finished session, before the turn's result is reported.
    /// Must be cheap (no I/O).
    fn after_turn(&self, _session: &Session, _fleet: &Fleet) -> Result<Finding, String> {
        Ok(None)
    }
    /// After a turn's result is reported, off the request path: checks that need I/O (a
    /// bounded git scan). Their notes reach the session afterwards.
    fn after_turn_background(&self, _session: &Session) -> Result<Finding, String> {
        Ok(None)
    }
    /// Whether [`Watcher::after_turn_background`] has anything to do for this session (cheap,
    /// no I/O): when no watcher has, no blocking thread is woken for the turn.
    fn wants_background(&self, _session: &Session) -> bool {
        false
    }
}

/// `[watchers.*]` in the config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchersConfig {
    pub progress: ProgressConfig,
    pub budget: BudgetConfig,
    pub scope: ScopeConfig,
    pub pattern: PatternConfig,
    pub quality: QualityConfig,
}

/// A watcher's effective verdict, before it is recorded.
#[derive(Debug, Clone)]
pub struct Firing {
    pub watcher: String,
    pub action: Action,
    pub message: String,
    pub priority: i32,
    pub scope: AbortScope,
}

impl Firing {
    pub fn note(&self, turn: Option<u32>) -> WatcherNote {
        WatcherNote {
            watcher: self.watcher.clone(),
            action: self.action,
            message: self.message.clone(),
            turn,
            at: crate::model::now(),
        }
    }
}

/// The firing that decides: the strongest action; among aborts, a server-wide one (the budget)
/// before any session's, whatever the priorities, so no priority setting can keep the budget
/// from stopping every turn; then the highest priority.
pub fn winner(firings: &[Firing]) -> Option<&Firing> {
    firings.iter().max_by_key(|f| {
        (
            f.action,
            f.action == Action::Abort && f.scope == AbortScope::Server,
            f.priority,
        )
    })
}

#[derive(Debug, Default, Clone)]
pub struct Gate {
    pub paused: Option<String>,
    pub aborted: Option<String>,
}

pub struct Watchers {
    list: Vec<(Box<dyn Watcher>, i32)>,
    gate: Mutex<Gate>,
}

/// What to do with a tool call.
pub struct CallDecision {
    /// Refuse the call with this text.
    pub refuse: Option<String>,
    /// Firings to report (and record).
    pub firings: Vec<Firing>,
    /// An abort fired now: running turns must be interrupted.
    pub abort_now: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchers {
    pub fn from_config(cfg: &WatchersConfig) -> Result<Watchers, String> {
        let mut list: Vec<(Box<dyn Watcher>, i32)> = Vec::new();
        if cfg.progress.enabled {
            list.push((
                Box::new(progress::Progress::new(&cfg.progress)?),
                cfg.progress.priority,
            ));
        }
        if cfg.budget.enabled {
            list.push((
                Box::new(budget::Budget::new(&cfg.budget)?),
                cfg.budget.priority,
            ));
        }
        if cfg.scope.enabled {
            list.push((Box::new(scope::Scope::new(&cfg.scope)?), cfg.scope.priority));
        }
        if cfg.pattern.enabled {
            list.push((
                Box::new(pattern::Pattern::new(&cfg.pattern)?),
                cfg.pattern.priority,
            ));
        }
        if cfg.quality.enabled {
            list.push((
                Box::new(quality::Quality::new(&cfg.quality)),
                cfg.quality.priority,
            ));
        }
        Ok(Watchers {
            list,
            gate: Mutex::new(Gate::default()),
        })
    }

    /// A registry with the given watchers (for tests and embedding).
    pub fn with(list: Vec<(Box<dyn Watcher>, i32)>) -> Watchers {
        Watchers {
            list,
            gate: Mutex::new(Gate::default()),
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|(w, _)| w.name()).collect()
    }

    pub fn gate(&self) -> Gate {
        lock(&self.gate).clone()
    }

    fn run(&self, f: impl Fn(&dyn Watcher) -> Result<Finding, String>) -> Vec<Firing> {
        let mut out = Vec::new();
        for (w, priority) in &self.list {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(w.as_ref())));
            match r {
                Ok(Ok(Some((action, message)))) if action != Action::Continue => out.push(Firing {
                    watcher: w.name().to_string(),
                    action,
                    message,
                    priority: *priority,
                    scope: w.abort_scope(),
                }),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(watcher = w.name(), error = %e, "watcher failed; skipped")
                }
                Err(_) => tracing::error!(watcher = w.name(), "watcher panicked; skipped"),
            }
        }
        out
    }

    /// Run the watchers before a tool call and decide whether it may go on.
    pub fn check_call(&self, call: &Call, fleet: &Fleet, acknowledge: bool) -> CallDecision {
        let firings = self.run(|w| w.before_call(call, fleet));
        let mut d = CallDecision {
            refuse: None,
            firings,
            abort_now: None,
        };
        let mut gate = lock(&self.gate);
        if let Some(w) = winner(&d.firings).cloned() {
            match w.action {
                Action::Abort if w.scope == AbortScope::Server => {
                    let reason = format!("{}: {}", w.watcher, w.message);
                    if gate.aborted.is_none() {
                        gate.aborted = Some(reason.clone());
                        d.abort_now = Some(reason);
                    }
                }
                Action::Abort if call.starts_work() => {
                    // About this call only (e.g. a task with an avoided topic): refuse it.
                    d.refuse = Some(format!(
                        "refused by watcher {}: {}. Change the request, or ask the user.",
                        w.watcher, w.message
                    ));
                }
                Action::Pause if call.starts_work() && !acknowledge => {
                    gate.paused = Some(format!("{}: {}", w.watcher, w.message));
                }
                _ => {}
            }
        }
        if call.starts_work() && d.refuse.is_none() {
            if let Some(reason) = &gate.aborted {
                d.refuse = Some(format!(
                    "zwarm stopped starting work: watcher {reason}. No further delegate or converse calls are accepted by this server; check_session, list_sessions and end_session still work. A person must review the situation, change the configuration if appropriate, and restart zwarm."
                ));
            } else if let Some(reason) = gate.paused.clone() {
                if acknowledge {
                    gate.paused = None;
                    tracing::info!(%reason, "watcher pause acknowledged");
                } else {
                    d.refuse = Some(format!(
                        "zwarm is paused by watcher {reason}. Ask the user whether to go on; if they agree, repeat this call with acknowledge_pause: true."
                    ));
                }
            }
        }
        d
    }

    /// Run per-event watchers; the caller records notes and enforces pause/abort.
    pub fn on_event(&self, session: &Session, event: &ExecutorEvent) -> Vec<Firing> {
        let f = self.run(|w| w.on_event(session, event));
        self.enforce(&f);
        f
    }

    pub fn after_turn(&self, session: &Session, fleet: &Fleet) -> Vec<Firing> {
        let f = self.run(|w| w.after_turn(session, fleet));
        self.enforce(&f);
        f
    }

    /// Whether any watcher has slow after-turn checks to run for this session.
    pub fn wants_background(&self, session: &Session) -> bool {
        self.list.iter().any(|(w, _)| w.wants_background(session))
    }

    /// The slow after-turn checks (blocking; run them off the async workers).
    pub fn after_turn_background(&self, session: &Session) -> Vec<Firing> {
        let f = self.run(|w| w.after_turn_background(session));
        self.enforce(&f);
        f
    }

    /// Pause/abort found outside a tool call close the gate for the next calls.
    fn enforce(&self, firings: &[Firing]) {
        let Some(w) = winner(firings) else { return };
        let mut gate = lock(&self.gate);
        let reason = format!("{}: {}", w.watcher, w.message);
        match w.action {
            Action::Abort if w.scope == AbortScope::Server => {
                gate.aborted.get_or_insert(reason);
            }
            Action::Pause => {
                gate.paused.get_or_insert(reason);
            }
            _ => {}
        }
    }
}

/// Parse an action setting from the config.
pub(crate) fn action_setting(name: &str, value: &str) -> Result<Action, String> {
    Action::parse(value).ok_or_else(|| {
        format!("watchers: `{name}` is `{value}`; use continue, nudge, pause or abort")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Action);
    impl Watcher for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn abort_scope(&self) -> AbortScope {
            if self.0 == "budget" {
                AbortScope::Server
            } else {
                AbortScope::Session
            }
        }
        fn before_call(&self, _: &Call, _: &Fleet) -> Result<Finding, String> {
            Ok(Some((self.1, format!("{} says so", self.0))))
        }
    }
    struct Broken;
    impl Watcher for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn before_call(&self, _: &Call, _: &Fleet) -> Result<Finding, String> {
            panic!("boom")
        }
    }
    struct Failing;
    impl Watcher for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn before_call(&self, _: &Call, _: &Fleet) -> Result<Finding, String> {
            Err("no data".into())
        }
    }

    fn call(tool: &str) -> (String, Value) {
        (tool.to_string(), Value::Null)
    }

    #[test]
    fn most_severe_wins_then_priority() {
        let f = vec![
            Firing {
                watcher: "a".into(),
                action: Action::Nudge,
                message: String::new(),
                priority: 9,
                scope: AbortScope::Session,
            },
            Firing {
                watcher: "b".into(),
                action: Action::Pause,
                message: String::new(),
                priority: 0,
                scope: AbortScope::Session,
            },
            Firing {
                watcher: "c".into(),
                action: Action::Pause,
                message: String::new(),
                priority: 5,
                scope: AbortScope::Session,
            },
        ];
        assert_eq!(winner(&f).unwrap().watcher, "c");
        // Among aborts the server-wide one decides, even against a higher priority.
        let abort = |w: &str, priority, scope| Firing {
            watcher: w.into(),
            action: Action::Abort,
            message: String::new(),
            priority,
            scope,
        };
        let f = vec![
            abort("scope", 99, AbortScope::Session),
            abort("budget", 10, AbortScope::Server),
            abort("pattern", 20, AbortScope::Session),
        ];
        assert_eq!(winner(&f).unwrap().watcher, "budget");
    }

    #[test]
    fn pause_refuses_until_acknowledged_and_errors_are_skipped() {
        let w = Watchers::with(vec![
            (Box::new(Broken), 0),
            (Box::new(Failing), 0),
            (Box::new(Fixed("p", Action::Pause)), 0),
        ]);
        let (t, a) = call("delegate");
        let d = w.check_call(&Call::from_json(&t, &a), &Fleet::default(), false);
        assert!(d.refuse.as_deref().unwrap().contains("acknowledge_pause"));
        assert_eq!(
            d.firings.len(),
            1,
            "broken and failing watchers are skipped"
        );
        // Reading is never refused.
        let (t, a) = call("check_session");
        assert!(
            w.check_call(&Call::from_json(&t, &a), &Fleet::default(), false)
                .refuse
                .is_none()
        );
        let (t, a) = call("delegate");
        assert!(
            w.check_call(&Call::from_json(&t, &a), &Fleet::default(), true)
                .refuse
                .is_none()
        );
    }

    #[test]
    fn abort_is_final_for_work_but_not_for_inspection() {
        let w = Watchers::with(vec![(Box::new(Fixed("budget", Action::Abort)), 0)]);
        let (t, a) = call("converse");
        let d = w.check_call(&Call::from_json(&t, &a), &Fleet::default(), true);
        assert!(d.abort_now.is_some());
        assert!(d.refuse.unwrap().contains("budget says so"));
        let (t, a) = call("end_session");
        assert!(
            w.check_call(&Call::from_json(&t, &a), &Fleet::default(), false)
                .refuse
                .is_none()
        );
    }

    /// Says what task or message it was shown.
    struct Echo;
    impl Watcher for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn before_call(&self, call: &Call, _: &Fleet) -> Result<Finding, String> {
            Ok(Some((
                Action::Nudge,
                call.text().unwrap_or("-").to_string(),
            )))
        }
    }

    #[test]
    fn watchers_judge_the_typed_call_and_json_becomes_one() {
        let w = Watchers::with(vec![(Box::new(Echo), 0)]);
        let seen = |d: CallDecision| d.firings[0].message.clone();
        let typed = Call::Converse {
            session_id: "s".into(),
            message: "typed message".into(),
            mode: Mode::Sync,
        };
        assert_eq!(
            seen(w.check_call(&typed, &Fleet::default(), false)),
            "typed message"
        );
        let json =
            serde_json::json!({"session_id": "s", "message": "json message", "mode": "async"});
        let c = Call::from_json("converse", &json);
        assert_eq!(
            c,
            Call::Converse {
                session_id: "s".into(),
                message: "json message".into(),
                mode: Mode::Async,
            }
        );
        assert_eq!(
            seen(w.check_call(&c, &Fleet::default(), false)),
            "json message"
        );
    }

    #[test]
    fn a_session_scoped_abort_refuses_only_that_call() {
        let w = Watchers::with(vec![(Box::new(Fixed("scope", Action::Abort)), 0)]);
        let (t, a) = call("delegate");
        let d = w.check_call(&Call::from_json(&t, &a), &Fleet::default(), false);
        assert!(d.abort_now.is_none(), "the server keeps working");
        assert!(d.refuse.unwrap().contains("scope says so"));
        assert!(w.gate().aborted.is_none());
    }
}
