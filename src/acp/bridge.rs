//! The turn bridge: one ACP turn as one process, so an ACP agent fits zwarm's executor seam
//! (a launch whose stdin carries the input and whose stdout lines are parsed into events).
//!
//! zwarm's runner starts the bridge (`zwarm-acp`) like any executor CLI: in its own process
//! group and containment, input on stdin. The bridge reads a [`BridgeJob`] (JSON) from stdin,
//! starts the agent **in the bridge's process group** (so the runner's stop and containment
//! reach it), opens the session (`session/new`, or `session/load` of the earlier one, or a new
//! one with a summary), sends one `session/prompt`, answers permission requests with the
//! job's policy, and writes one [`ExecutorEvent`] per line (JSON) to stdout:
//! `session_started` (the agent's session id, stored as the native id for the next turn),
//! the turn's events, then `turn_completed` or `turn_failed`. SIGINT or SIGTERM (the runner's
//! stop) sends `session/cancel`; the bridge then ends the agent (stdin closed, then SIGKILL)
//! and exits.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::agent::AgentCommand;
use super::approval::{FileApprover, Pending};
use super::client::{AcpAgent, EarlierTurn, PromptOptions, TurnEnd};
use super::policy::{Level, Policy, Rule};
use super::update::{AcpEvent, to_executor_events};
use crate::event::{ExecutorEvent, UsageScope};

/// What the bridge is told on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeJob {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env_set: Vec<(String, String)>,
    #[serde(default)]
    pub env_remove: Vec<String>,
    pub cwd: PathBuf,
    pub prompt: String,
    /// The agent session of the previous turn.
    #[serde(default)]
    pub resume_id: Option<String>,
    /// The earlier turns, for the summary when the session cannot be loaded.
    #[serde(default)]
    pub earlier: Vec<BridgeTurn>,
    /// A file the bridge keeps the session's turns in (one JSON [`BridgeTurn`] a line),
    /// appended after each completed turn, read for the summary when `earlier` is empty. The
    /// executor puts it in the zwarm session's turn directory, so it outlives a restart.
    #[serde(default)]
    pub transcript: Option<PathBuf>,
    /// The permission level: `read-only`, `workspace-write`, `full-access`.
    pub level: Level,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default = "default_init_timeout")]
    pub init_timeout_secs: u64,
    #[serde(default = "default_cancel_grace")]
    pub cancel_grace_secs: u64,
    /// How long an `ask` waits for an answer; 0: no one is asked (an ask is a denial).
    #[serde(default)]
    pub ask_timeout_secs: u64,
    /// The session's turn directory, where asks wait for their answers
    /// ([`super::approval`]). None: no one is asked.
    #[serde(default)]
    pub approvals: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeTurn {
    pub prompt: String,
    pub response: Option<String>,
}

fn default_init_timeout() -> u64 {
    60
}
fn default_cancel_grace() -> u64 {
    5
}

/// How long the agent gets to end after its stdin is closed.
const STOP_GRACE: Duration = Duration::from_secs(3);

fn emit(out: &mut dyn Write, ev: &ExecutorEvent) {
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

fn failed(message: String) -> ExecutorEvent {
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
        tracing::warn!(path = %path.display(), "acp bridge: cannot keep the transcript: {e}");
    }
}

/// Run one turn. Returns the process exit status: 0 when the turn completed.
pub async fn run(job: BridgeJob, out: &mut (dyn Write + Send), cancel: CancellationToken) -> i32 {
    let policy = match Policy::new(job.level, &job.cwd).with_rules(job.rules.clone()) {
        Ok(p) => p,
        Err(e) => {
            emit(out, &failed(e.to_string()));
            return 2;
        }
    };
    let cmd = AgentCommand {
        program: job.program.clone(),
        args: job.args.iter().map(Into::into).collect(),
        cwd: job.cwd.clone(),
        env_set: job.env_set.clone(),
        env_remove: job.env_remove.clone(),
        share_group: true,
    };
    let init = Duration::from_secs(job.init_timeout_secs);
    let mut agent = match AcpAgent::start(&cmd, init).await {
        Ok(a) => a,
        Err(e) => {
            emit(out, &failed(format!("the ACP agent did not start: {e}")));
            return 1;
        }
    };
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
    let opened = match agent
        .open_session(job.resume_id.as_deref(), &job.cwd, &earlier, init)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            emit(
                out,
                &failed(format!("the ACP agent could not open a session: {e}")),
            );
            agent.stop(STOP_GRACE).await;
            return 1;
        }
    };
    emit(
        out,
        &ExecutorEvent::SessionStarted {
            native_id: opened.session_id.clone(),
            model: agent
                .session_info
                .pointer("/models/currentModelId")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
        },
    );
    if let Some(note) = &opened.note {
        emit(
            out,
            &ExecutorEvent::Warning {
                message: note.clone(),
            },
        );
    }
    let text = match &opened.preamble {
        Some(p) => format!("{p}{}", job.prompt),
        None => job.prompt.clone(),
    };
    let approver = job
        .approvals
        .clone()
        .filter(|_| job.ask_timeout_secs > 0)
        .map(|dir| FileApprover {
            dir,
            ask_timeout: Duration::from_secs(job.ask_timeout_secs),
            announce: Some(Box::new(|p: &Pending| {
                emit(&mut std::io::stdout(), &asked(p));
            })),
        });
    let opts = PromptOptions {
        policy: &policy,
        approver: approver.as_ref().map(|a| a as &dyn super::client::Approver),
        ask_timeout: Duration::from_secs(job.ask_timeout_secs),
        cancel: cancel.clone(),
        cancel_grace: Duration::from_secs(job.cancel_grace_secs),
    };
    let mut last_message: Option<String> = None;
    let mut cost: Option<f64> = None;
    let end = {
        let out_ref: &mut (dyn Write + Send) = out;
        let mut sink = |ev: AcpEvent| {
            match &ev {
                AcpEvent::AgentMessage { text } => last_message = Some(text.clone()),
                AcpEvent::Usage { cost_usd, .. } if cost_usd.is_some() => cost = *cost_usd,
                _ => {}
            }
            for e in to_executor_events(&ev) {
                emit(out_ref, &e);
            }
        };
        agent
            .prompt(&opened.session_id, &text, &opts, &mut sink)
            .await
    };
    agent.stop(STOP_GRACE).await;
    match end {
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
                emit(out, &ExecutorEvent::Warning { message: n });
            }
            emit(
                out,
                &ExecutorEvent::TurnCompleted {
                    usage: None,
                    scope: UsageScope::Invocation,
                    cost_usd: cost,
                    final_text: last_message,
                },
            );
            0
        }
        TurnEnd::Failed { reason } => {
            emit(out, &failed(reason));
            1
        }
        TurnEnd::Interrupted => {
            emit(out, &failed("the turn was cancelled".into()));
            130
        }
    }
}

/// The bridge process: the job from stdin, events to stdout, SIGINT/SIGTERM cancel the turn.
pub fn main() -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
        emit(
            &mut std::io::stdout(),
            &failed(format!("zwarm-acp: cannot read the job: {e}")),
        );
        return 2;
    }
    let job: BridgeJob = match serde_json::from_str(&input) {
        Ok(j) => j,
        Err(e) => {
            emit(
                &mut std::io::stdout(),
                &failed(format!("zwarm-acp: the job is not valid: {e}")),
            );
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(
                &mut std::io::stdout(),
                &failed(format!("zwarm-acp: no runtime: {e}")),
            );
            return 2;
        }
    };
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            c.cancel();
        });
        let mut stdout = std::io::stdout();
        run(job, &mut stdout, cancel).await
    })
}
