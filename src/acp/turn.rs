//! One ACP turn on an agent that is already running: open (or keep) the session, send the
//! prompt, answer permission requests with the job's policy, and report every event.
//!
//! Shared by the two ways a turn reaches its agent: the per-turn bridge that starts the agent
//! itself ([`super::bridge`]), and the agent pool of `zwarm serve` that keeps the agent alive
//! between a session's turns ([`super::pool`]). Both report the same events in the same order,
//! so the executor's parser does not know which one ran the turn.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::approval::{FileApprover, Pending};
use super::client::{AcpAgent, EarlierTurn, PromptOptions, TurnEnd};
use super::job::{BridgeJob, BridgeTurn};
use super::policy::Policy;
use super::update::{AcpEvent, to_executor_events};
use crate::event::{ExecutorEvent, UsageScope};

/// Where a turn's events go: the bridge's stdout, or the pool's connection to the bridge.
pub type Emit = Arc<dyn Fn(&ExecutorEvent) + Send + Sync>;

/// An [`Emit`] writing one JSON event a line to stdout.
pub fn stdout_emit() -> Emit {
    Arc::new(|ev: &ExecutorEvent| emit_to(&mut std::io::stdout().lock(), ev))
}

/// Write one event as a JSON line.
pub fn emit_to(out: &mut dyn Write, ev: &ExecutorEvent) {
    if let Ok(line) = serde_json::to_string(ev) {
        // A closed stdout (the runner gave up on us) is not worth failing the turn over.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The event that says a request waits for approval (so waiting callers wake up and the
/// progress shows it).
fn asked(p: &Pending) -> ExecutorEvent {
    ExecutorEvent::ToolCall {
        id: format!("approval:{}", p.request_id),
        name: format!("approval needed: {}", p.title),
        input: serde_json::to_value(p).unwrap_or_default(),
    }
}

pub fn failed(message: String) -> ExecutorEvent {
    ExecutorEvent::TurnFailed {
        message,
        api_status: None,
        usage: None,
        scope: UsageScope::Invocation,
        cost_usd: None,
    }
}

/// The turns in a transcript file; a missing file or a bad line is no turn.
fn read_transcript(path: &std::path::Path) -> Vec<BridgeTurn> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn append_transcript(path: &std::path::Path, turn: &BridgeTurn) {
    let Ok(line) = serde_json::to_string(turn) else {
        return;
    };
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), "acp: cannot keep the transcript: {e}");
    }
}

/// The job's policy, or the event that says why there is none.
pub fn policy_of(job: &BridgeJob) -> Result<Policy, ExecutorEvent> {
    Policy::new(job.level, &job.cwd)
        .with_rules(job.rules.clone())
        .map_err(|e| failed(e.to_string()))
}

/// How a turn on a running agent came out.
pub struct Outcome {
    /// The bridge's exit status: 0 completed, 1 failed, 130 interrupted.
    pub code: i32,
    /// The agent session the turn ran in (None: it could not be opened).
    pub session_id: Option<String>,
    /// The agent is fit for the session's next turn (the turn completed).
    pub reusable: bool,
}

/// Run the job's turn on `agent`. `open`: the agent session it already has open for this
/// zwarm session (a pooled agent whose session is the job's `resume_id`); None: open one
/// (`session/load` of `resume_id`, or a new one, with a summary where it cannot be loaded).
pub async fn run_on(
    agent: &mut AcpAgent,
    open: Option<String>,
    job: &BridgeJob,
    policy: &Policy,
    emit: &Emit,
    cancel: CancellationToken,
) -> Outcome {
    let init = Duration::from_secs(job.init_timeout_secs);
    let (session_id, note, preamble) = match open {
        Some(id) => (id, None, None),
        None => {
            let from_file;
            let earlier_src: &[BridgeTurn] = if job.earlier.is_empty() {
                from_file = job
                    .transcript
                    .as_deref()
                    .map(read_transcript)
                    .unwrap_or_default();
                &from_file
            } else {
                &job.earlier
            };
            let earlier: Vec<EarlierTurn> = earlier_src
                .iter()
                .map(|t| EarlierTurn {
                    prompt: t.prompt.clone(),
                    response: t.response.clone(),
                })
                .collect();
            match agent
                .open_session(job.resume_id.as_deref(), &job.cwd, &earlier, init)
                .await
            {
                Ok(o) => (o.session_id, o.note, o.preamble),
                Err(e) => {
                    emit(&failed(format!(
                        "the ACP agent could not open a session: {e}"
                    )));
                    return Outcome {
                        code: 1,
                        session_id: None,
                        reusable: false,
                    };
                }
            }
        }
    };
    emit(&ExecutorEvent::SessionStarted {
        native_id: session_id.clone(),
        model: agent
            .session_info
            .pointer("/models/currentModelId")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
    });
    if let Some(note) = note {
        emit(&ExecutorEvent::Warning { message: note });
    }
    let text = match &preamble {
        Some(p) => format!("{p}{}", job.prompt),
        None => job.prompt.clone(),
    };
    let announce_to = emit.clone();
    let approver = job
        .approvals
        .clone()
        .filter(|_| job.ask_timeout_secs > 0)
        .map(|dir| FileApprover {
            dir,
            ask_timeout: Duration::from_secs(job.ask_timeout_secs),
            announce: Some(Box::new(move |p: &Pending| announce_to(&asked(p)))),
        });
    let opts = PromptOptions {
        policy,
        approver: approver.as_ref().map(|a| a as &dyn super::client::Approver),
        ask_timeout: Duration::from_secs(job.ask_timeout_secs),
        cancel,
        cancel_grace: Duration::from_secs(job.cancel_grace_secs),
    };
    let mut last_message: Option<String> = None;
    let mut cost: Option<f64> = None;
    let end = {
        let mut sink = |ev: AcpEvent| {
            match &ev {
                AcpEvent::AgentMessage { text } => last_message = Some(text.clone()),
                AcpEvent::Usage { cost_usd, .. } if cost_usd.is_some() => cost = *cost_usd,
                _ => {}
            }
            for e in to_executor_events(&ev) {
                emit(&e);
            }
        };
        agent.prompt(&session_id, &text, &opts, &mut sink).await
    };
    let (code, reusable) = match end {
        TurnEnd::Completed { note } => {
            if let Some(path) = &job.transcript {
                append_transcript(
                    path,
                    &BridgeTurn {
                        prompt: job.prompt.clone(),
                        response: last_message.clone(),
                    },
                );
            }
            if let Some(n) = note {
                emit(&ExecutorEvent::Warning { message: n });
            }
            emit(&ExecutorEvent::TurnCompleted {
                usage: None,
                scope: UsageScope::Invocation,
                cost_usd: cost,
                final_text: last_message,
            });
            (0, true)
        }
        TurnEnd::Failed { reason } => {
            emit(&failed(reason));
            (1, false)
        }
        TurnEnd::Interrupted => {
            emit(&failed("the turn was cancelled".into()));
            (130, false)
        }
    };
    Outcome {
        code,
        session_id: Some(session_id),
        reusable,
    }
}
