//! progress: notice an orchestrator or an executor going in circles.
//!
//! * the same `delegate`/`converse`/`end_session` call with the same arguments N times in a
//!   row (polling with check_session is normal and not counted);
//! * sessions started but no turn finishing over M tool calls;
//! * an executor running the same command K times within one turn.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Action, Call, Finding, Watcher};
use crate::event::ExecutorEvent;
use crate::fleet::Fleet;
use crate::model::Session;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgressConfig {
    pub enabled: bool,
    pub priority: i32,
    /// Identical delegate/converse/end_session calls in a row before a nudge.
    pub repeat_calls: usize,
    /// Tool calls without any turn finishing (while sessions run) before a nudge.
    pub stalled_calls: usize,
    /// Identical commands within one turn before a nudge.
    pub repeat_commands: usize,
    /// Action for all three findings.
    pub action: String,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        ProgressConfig {
            enabled: true,
            priority: 0,
            repeat_calls: 3,
            stalled_calls: 30,
            repeat_commands: 3,
            action: "nudge".into(),
        }
    }
}

pub struct Progress {
    cfg: ProgressConfig,
    action: Action,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_call: Option<Call>,
    repeats: usize,
    calls_since_finish: usize,
    finished_seen: usize,
    /// (session, turn) → command → count
    commands: HashMap<(String, u32), HashMap<String, usize>>,
}

impl Progress {
    pub fn new(cfg: &ProgressConfig) -> Result<Progress, String> {
        Ok(Progress {
            action: super::action_setting("watchers.progress.action", &cfg.action)?,
            cfg: cfg.clone(),
            state: Mutex::new(State::default()),
        })
    }
}

impl Watcher for Progress {
    fn name(&self) -> &'static str {
        "progress"
    }

    fn before_call(&self, call: &Call, fleet: &Fleet) -> Result<Finding, String> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| "state poisoned".to_string())?;
        // Stalled: count calls while no turn finishes.
        let finished = fleet.finished_turns() as usize;
        if finished != st.finished_seen {
            st.finished_seen = finished;
            st.calls_since_finish = 0;
        }
        st.calls_since_finish += 1;
        let active = fleet.active();
        if active > 0 && st.calls_since_finish == self.cfg.stalled_calls {
            return Ok(Some((
                self.action,
                format!(
                    "{} tool calls and no turn has finished while {active} session(s) are running. Use check_session with wait_seconds instead of polling quickly, or end sessions that are stuck.",
                    self.cfg.stalled_calls
                ),
            )));
        }
        if !matches!(
            call,
            Call::Delegate { .. } | Call::Converse { .. } | Call::EndSession { .. }
        ) {
            return Ok(None);
        }
        if st.last_call.as_ref() == Some(call) {
            st.repeats += 1;
        } else {
            st.last_call = Some(call.clone());
            st.repeats = 1;
        }
        if st.repeats >= self.cfg.repeat_calls {
            return Ok(Some((
                self.action,
                format!(
                    "this is the same {} call with the same arguments {} times in a row. Repeating it will not change the outcome: check_session the existing session(s), read their errors, or change the task.",
                    call.tool(),
                    st.repeats
                ),
            )));
        }
        Ok(None)
    }

    fn on_event(&self, session: &Session, event: &ExecutorEvent) -> Result<Finding, String> {
        let ExecutorEvent::CommandStarted { command, .. } = event else {
            return Ok(None);
        };
        let turn = session.turns.len() as u32;
        let mut st = self
            .state
            .lock()
            .map_err(|_| "state poisoned".to_string())?;
        let n = {
            let per_turn = st.commands.entry((session.id.clone(), turn)).or_default();
            let n = per_turn.entry(command.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if n == self.cfg.repeat_commands {
            return Ok(Some((
                self.action,
                format!(
                    "the executor ran `{}` {n} times in turn {turn}; it may be looping. Consider converse with a different approach or end_session.",
                    crate::text::one_line(command, 120)
                ),
            )));
        }
        Ok(None)
    }

    /// A finished turn's command counts are not needed any more: forget the session's, so
    /// the counts follow the running turns, not every turn the server has seen.
    fn after_turn(&self, session: &Session, _fleet: &Fleet) -> Result<Finding, String> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| "state poisoned".to_string())?;
        st.commands.retain(|(id, _), _| id != &session.id);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_commands_nudge_once_per_turn_and_are_forgotten_when_it_ends() {
        let p = Progress::new(&ProgressConfig::default()).expect("default config");
        let s = Session::sample();
        let ev = ExecutorEvent::CommandStarted {
            id: "c".into(),
            command: "cargo test".into(),
        };
        let found: Vec<bool> = (0..4)
            .map(|_| p.on_event(&s, &ev).expect("on_event").is_some())
            .collect();
        assert_eq!(found, vec![false, false, true, false]);
        assert_eq!(p.state.lock().expect("lock").commands.len(), 1);
        p.after_turn(&s, &Fleet::default()).expect("after_turn");
        assert!(p.state.lock().expect("lock").commands.is_empty());
    }
}
