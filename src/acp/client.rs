//! The client side of ACP over one agent process: `initialize`, `session/new` or
//! `session/load`, one `session/prompt` per turn, `session/cancel` for interrupts, and the
//! agent's `session/request_permission` answered by the [`Policy`].
//!
//! Capabilities zwarm advertises: **no `fs`, no `terminal`**. The agent reads and writes files
//! and runs commands itself, in its own process (inside zwarm's runner and containment), and
//! asks permission first; zwarm does not become a file or terminal server for it. Any `fs/*`
//! or `terminal/*` request is answered "method not found".

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::agent::{AgentCommand, AgentProcess, describe_exit};
use super::policy::{Decision, PermissionAsk, Policy, Verdict};
use super::rpc::{Connection, Incoming, RpcError};
use super::schema::tool_kind;
use super::update::{AcpEvent, Mapper, input_paths};

/// The session mode in which agents ask before they edit or run anything.
pub const ASKING_MODE: &str = "default";

/// At most this many round trips wait for a load's replay to end.
const BARRIER_ROUNDS: usize = 20;

/// The ACP protocol version zwarm speaks.
pub const PROTOCOL_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AcpError {
    #[error("could not start the agent `{program}`: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("the agent did not answer `{method}` within {secs} s")]
    Timeout { method: &'static str, secs: u64 },
    #[error("the agent ended during `{method}`: {how}")]
    Died { method: &'static str, how: String },
    #[error("{0}")]
    Rpc(#[from] RpcError),
    #[error("the agent's answer to `{method}` is not what ACP says: {why}")]
    Protocol { method: &'static str, why: String },
}

/// What the agent said about itself in `initialize`.
#[derive(Debug, Clone, Default)]
pub struct AgentInfo {
    pub protocol_version: u64,
    pub load_session: bool,
    pub name: Option<String>,
    pub version: Option<String>,
    pub auth_methods: Vec<String>,
}

/// Someone who answers an `ask` (`rule`: the policy rule that said ask): the orchestrator or
/// a person. `None`: no answer.
#[async_trait::async_trait]
pub trait Approver: Send + Sync {
    async fn approve(&self, ask: &PermissionAsk, rule: &str) -> Option<bool>;
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEnd {
    /// `end_turn`; `max_tokens` / `max_turn_requests` too, with a note.
    Completed { note: Option<String> },
    /// `refusal`, a JSON-RPC error, or the agent died.
    Failed { reason: String },
    /// `cancelled` after `session/cancel` (or no answer to it in time).
    Interrupted,
}

/// Options of one prompt.
pub struct PromptOptions<'a> {
    pub policy: &'a Policy,
    pub approver: Option<&'a dyn Approver>,
    /// How long an `ask` waits for an answer before it is a denial.
    pub ask_timeout: Duration,
    pub cancel: CancellationToken,
    /// After `session/cancel`, how long to wait for the agent's `cancelled` answer.
    pub cancel_grace: Duration,
}

/// An earlier turn of a zwarm session, for the summary a new agent session starts with.
#[derive(Debug, Clone)]
pub struct EarlierTurn {
    pub prompt: String,
    pub response: Option<String>,
}

/// How [`AcpAgent::open_session`] got its session.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedSession {
    pub session_id: String,
    /// `session/load` brought the earlier session back.
    pub loaded: bool,
    /// Said in the turn's result when the earlier session could not be continued.
    pub note: Option<String>,
    /// Put before the next prompt: the summary of the earlier turns (a new agent session).
    pub preamble: Option<String>,
}

/// Longest prompt or answer of one earlier turn in a summary.
const SUMMARY_ITEM_MAX: usize = 1500;
/// Most earlier turns in a summary (the latest ones).
const SUMMARY_TURNS: usize = 10;

/// The summary of earlier turns a new agent session starts with.
pub fn summary_of(earlier: &[EarlierTurn]) -> String {
    let start = earlier.len().saturating_sub(SUMMARY_TURNS);
    let mut out = String::from(
        "This task continues an earlier conversation that you cannot see (it could not be reloaded). What was asked and answered before, oldest first:\n",
    );
    if start > 0 {
        out.push_str(&format!("({start} earlier turns left out)\n"));
    }
    for (i, t) in earlier.iter().enumerate().skip(start) {
        out.push_str(&format!(
            "\nTurn {} asked: {}\n",
            i + 1,
            crate::text::truncate_chars(&t.prompt, SUMMARY_ITEM_MAX)
        ));
        match &t.response {
            Some(r) => out.push_str(&format!(
                "Turn {} answer: {}\n",
                i + 1,
                crate::text::truncate_chars(r, SUMMARY_ITEM_MAX)
            )),
            None => out.push_str(&format!("Turn {} had no answer.\n", i + 1)),
        }
    }
    out.push_str("\nThe new request follows.\n\n");
    out
}

/// One running agent and its connection.
pub struct AcpAgent {
    proc: AgentProcess,
    conn: Connection,
    incoming: UnboundedReceiver<Incoming>,
    pub info: AgentInfo,
    /// The agent's answer to the last `session/new` or `session/load` (its modes, models).
    pub session_info: Value,
    mapper: Mapper,
    /// Notifications that came outside a turn (a load's replay), dropped.
    dropped: usize,
}

impl AcpAgent {
    /// Start the agent and `initialize` it.
    pub async fn start(cmd: &AgentCommand, init_timeout: Duration) -> Result<AcpAgent, AcpError> {
        let (proc, stdin, stdout) = AgentProcess::spawn(cmd).map_err(|error| AcpError::Spawn {
            program: cmd.program.display().to_string(),
            error,
        })?;
        Self::initialize(proc, stdin, stdout, init_timeout).await
    }

    /// `initialize` an agent process already started (see [`AgentProcess::spawn_with`]).
    pub async fn initialize(
        proc: AgentProcess,
        stdin: tokio::process::ChildStdin,
        stdout: tokio::process::ChildStdout,
        init_timeout: Duration,
    ) -> Result<AcpAgent, AcpError> {
        let (conn, incoming) = Connection::start(stdout, stdin);
        let mut agent = AcpAgent {
            proc,
            conn,
            incoming,
            info: AgentInfo::default(),
            session_info: Value::Null,
            mapper: Mapper::default(),
            dropped: 0,
        };
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "clientCapabilities": {
                "fs": {"readTextFile": false, "writeTextFile": false},
                "terminal": false,
            },
            "clientInfo": {"name": "zwarm", "version": env!("CARGO_PKG_VERSION")},
        });
        let r = agent.call("initialize", params, init_timeout).await?;
        agent.info = AgentInfo {
            protocol_version: r
                .get("protocolVersion")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            load_session: r
                .pointer("/agentCapabilities/loadSession")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name: r
                .pointer("/agentInfo/name")
                .and_then(Value::as_str)
                .map(str::to_string),
            version: r
                .pointer("/agentInfo/version")
                .and_then(Value::as_str)
                .map(str::to_string),
            auth_methods: r
                .get("authMethods")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        };
        Ok(agent)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.id()
    }

    /// Has the agent process exited (it cannot take another turn)?
    pub fn exited(&mut self) -> bool {
        // Gone without a status: zwarm's orphan reaper (it reaps any zombie child of zwarm
        // outside its own group) can take an agent that died while idle.
        self.proc.try_exit().is_some()
            || self
                .pid()
                .and_then(|p| i32::try_from(p).ok())
                .is_some_and(|p| !crate::process::pid_alive(p))
    }

    /// `session/new` in `cwd`; returns the agent's session id.
    pub async fn new_session(&mut self, cwd: &Path, timeout: Duration) -> Result<String, AcpError> {
        let r = self
            .call(
                "session/new",
                json!({"cwd": cwd, "mcpServers": []}),
                timeout,
            )
            .await?;
        self.session_info = r.clone();
        let id = r
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| AcpError::Protocol {
                method: "session/new",
                why: "no sessionId".into(),
            })?;
        self.ensure_asking_mode(&id, timeout).await?;
        Ok(id)
    }

    /// zwarm's policy can only act on what the agent asks about, so a session runs in the
    /// agent's mode that asks before edits and commands: `default` (gemini and qwen name it
    /// so; qwen starts in `auto`, where its own classifier approves). An agent without modes,
    /// or without one of that name, is left as it is.
    async fn ensure_asking_mode(&mut self, id: &str, timeout: Duration) -> Result<(), AcpError> {
        let modes = self
            .session_info
            .get("modes")
            .cloned()
            .unwrap_or(Value::Null);
        let current = modes.get("currentModeId").and_then(Value::as_str);
        let has_default = modes
            .get("availableModes")
            .and_then(Value::as_array)
            .is_some_and(|m| {
                m.iter()
                    .any(|m| m.get("id").and_then(Value::as_str) == Some(ASKING_MODE))
            });
        if has_default && current != Some(ASKING_MODE) {
            self.call(
                "session/set_mode",
                json!({"sessionId": id, "modeId": ASKING_MODE}),
                timeout,
            )
            .await?;
        }
        Ok(())
    }

    /// `session/load` of an earlier session (the agent replays it; the replay is not
    /// reported again).
    pub async fn load_session(
        &mut self,
        session_id: &str,
        cwd: &Path,
        timeout: Duration,
    ) -> Result<(), AcpError> {
        self.session_info = self
            .call(
                "session/load",
                json!({"sessionId": session_id, "cwd": cwd, "mcpServers": []}),
                timeout,
            )
            .await?;
        self.ensure_asking_mode(session_id, timeout).await?;
        // gemini streams the replay without waiting for it, so part of it can come after the
        // load's answer. Round trips (any answer, even "method not found", will do) until one
        // sees no replayed update: the replay has ended, and all of it was dropped.
        for _ in 0..BARRIER_ROUNDS {
            let before = self.dropped;
            match self.call("zwarm/barrier", json!({}), timeout).await {
                Ok(_) | Err(AcpError::Rpc(RpcError::Remote { .. })) => {}
                Err(e) => return Err(e),
            }
            if self.dropped == before {
                break;
            }
        }
        // The replayed messages must not leak into the next turn's message.
        self.mapper = Mapper::default();
        Ok(())
    }

    /// The session for a turn: the earlier agent session `prior` loaded where the agent
    /// offers `session/load` and it works, else a new session in `cwd` whose first prompt
    /// carries a summary of the `earlier` turns (and a note saying so).
    pub async fn open_session(
        &mut self,
        prior: Option<&str>,
        cwd: &Path,
        earlier: &[EarlierTurn],
        timeout: Duration,
    ) -> Result<OpenedSession, AcpError> {
        let Some(prior) = prior else {
            return Ok(OpenedSession {
                session_id: self.new_session(cwd, timeout).await?,
                loaded: false,
                note: None,
                preamble: None,
            });
        };
        let why = if self.info.load_session {
            match self.load_session(prior, cwd, timeout).await {
                Ok(()) => {
                    return Ok(OpenedSession {
                        session_id: prior.to_string(),
                        loaded: true,
                        note: None,
                        preamble: None,
                    });
                }
                Err(e @ (AcpError::Died { .. } | AcpError::Spawn { .. })) => return Err(e),
                Err(e) => format!("session/load failed: {}", load_error_text(&e)),
            }
        } else {
            "the agent does not offer session/load".to_string()
        };
        let session_id = self.new_session(cwd, timeout).await?;
        let preamble = (!earlier.is_empty()).then(|| summary_of(earlier));
        Ok(OpenedSession {
            session_id,
            loaded: false,
            note: Some(format!(
                "A new agent session was started{} (the earlier session {prior} could not be continued: {why}).",
                if preamble.is_some() {
                    " with a summary of the earlier turns"
                } else {
                    ""
                }
            )),
            preamble,
        })
    }

    /// A request outside a turn: updates that come meanwhile (a load's replay) are dropped,
    /// permission requests refused.
    async fn call(
        &mut self,
        method: &'static str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, AcpError> {
        let conn = self.conn.clone();
        let fut = conn.request(method, params);
        tokio::pin!(fut);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            // `biased`, messages first: the reader task queues every message the agent sent
            // before an answer ahead of that answer, so they are all taken before the answer
            // (an unbiased select drops some of them half the time: a load's replay would leak
            // into the next turn).
            tokio::select! {
                biased;
                Some(m) = self.incoming.recv() => match m {
                    Incoming::Request { id, method, .. } => refuse(&self.conn, &id, &method),
                    Incoming::Notification { .. } => self.dropped += 1,
                },
                r = &mut fut => {
                    return match r {
                        Ok(v) => Ok(v),
                        Err(RpcError::Closed) => Err(self.died(method).await),
                        Err(e) => Err(e.into()),
                    };
                }
                _ = &mut deadline => {
                    return Err(AcpError::Timeout { method, secs: timeout.as_secs() });
                }
            }
        }
    }

    async fn died(&mut self, method: &'static str) -> AcpError {
        let status = self.proc.wait_for(Duration::from_secs(2)).await;
        AcpError::Died {
            method,
            how: describe_exit(status, &self.proc.stderr_tail()),
        }
    }

    /// One turn: `session/prompt` with `text`, every event passed to `sink` as it comes.
    pub async fn prompt(
        &mut self,
        session_id: &str,
        text: &str,
        opts: &PromptOptions<'_>,
        sink: &mut (dyn FnMut(AcpEvent) + Send),
    ) -> TurnEnd {
        let conn = self.conn.clone();
        let fut = conn.request(
            "session/prompt",
            json!({"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}),
        );
        tokio::pin!(fut);
        let mut cancelled = false;
        let cancel_deadline = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        tokio::pin!(cancel_deadline);
        let end = loop {
            // `biased`, the agent's messages before the prompt's answer: the reader task
            // queues the turn's last updates ahead of the answer, and an unbiased select took
            // the answer first half the time when both were ready (the turn's final message
            // was lost, more often under load).
            tokio::select! {
                biased;
                _ = opts.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    self.conn.notify("session/cancel", json!({"sessionId": session_id}));
                    cancel_deadline.as_mut().reset(tokio::time::Instant::now() + opts.cancel_grace);
                }
                Some(m) = self.incoming.recv() => match m {
                    Incoming::Notification { method, params } if method == "session/update" => {
                        for ev in self.mapper.map(&params) {
                            sink(ev);
                        }
                    }
                    Incoming::Notification { .. } => {}
                    Incoming::Request { id, method, params } => {
                        if method == "session/request_permission" {
                            let ev = self.permission(&id, &params, opts, cancelled).await;
                            sink(ev);
                        } else {
                            refuse(&self.conn, &id, &method);
                        }
                    }
                },
                r = &mut fut => break self.prompt_end(r, cancelled).await,
                _ = &mut cancel_deadline, if cancelled => break TurnEnd::Interrupted,
            }
        };
        let mut rest = Vec::new();
        self.mapper.flush(&mut rest);
        for ev in rest {
            sink(ev);
        }
        end
    }

    async fn prompt_end(&mut self, r: Result<Value, RpcError>, cancelled: bool) -> TurnEnd {
        match r {
            Ok(v) => match v.get("stopReason").and_then(Value::as_str) {
                Some("end_turn") => TurnEnd::Completed { note: None },
                Some("max_tokens") => TurnEnd::Completed {
                    note: Some("the agent stopped at its token limit".into()),
                },
                Some("max_turn_requests") => TurnEnd::Completed {
                    note: Some("the agent stopped at its limit of model requests per turn".into()),
                },
                Some("cancelled") => TurnEnd::Interrupted,
                Some("refusal") => TurnEnd::Failed {
                    reason: "the agent refused to go on (stop reason `refusal`)".into(),
                },
                other => TurnEnd::Failed {
                    reason: format!(
                        "the agent ended the turn with an unknown stop reason {other:?}"
                    ),
                },
            },
            Err(_) if cancelled => TurnEnd::Interrupted,
            Err(RpcError::Closed) => TurnEnd::Failed {
                reason: self.died("session/prompt").await.to_string(),
            },
            Err(e) => TurnEnd::Failed {
                reason: e.to_string(),
            },
        }
    }

    async fn permission(
        &mut self,
        id: &Value,
        params: &Value,
        opts: &PromptOptions<'_>,
        cancelled: bool,
    ) -> AcpEvent {
        let ask = self.ask_of(params);
        let mut decision = opts.policy.decide(&ask);
        if cancelled {
            decision = Decision {
                verdict: Verdict::Deny,
                rule: "the turn is being cancelled".into(),
            };
        }
        if decision.verdict == Verdict::Ask {
            let answer = match opts.approver {
                Some(a) => tokio::select! {
                    r = tokio::time::timeout(opts.ask_timeout, a.approve(&ask, &decision.rule)) => r.ok().flatten(),
                    _ = opts.cancel.cancelled() => None,
                },
                None => None,
            };
            decision = match answer {
                Some(true) => Decision {
                    verdict: Verdict::Allow,
                    rule: format!("{}; approved", decision.rule),
                },
                Some(false) => Decision {
                    verdict: Verdict::Deny,
                    rule: format!("{}; refused", decision.rule),
                },
                None if opts.approver.is_none() => Decision {
                    verdict: Verdict::Deny,
                    rule: format!("{}; nobody to ask, so denied", decision.rule),
                },
                None => Decision {
                    verdict: Verdict::Deny,
                    rule: format!(
                        "{}; no answer within {} s, so denied",
                        decision.rule,
                        opts.ask_timeout.as_secs()
                    ),
                },
            };
        }
        let option = choose_option(params, decision.verdict == Verdict::Allow);
        let outcome = match &option {
            Some(o) => json!({"outcome": {"outcome": "selected", "optionId": o}}),
            None => json!({"outcome": {"outcome": "cancelled"}}),
        };
        self.conn.respond(id, outcome);
        AcpEvent::Permission {
            ask,
            decision,
            option,
        }
    }

    fn ask_of(&self, params: &Value) -> PermissionAsk {
        let tc = params.get("toolCall").cloned().unwrap_or(Value::Null);
        let tool_call_id = tc
            .get("toolCallId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let known = self.mapper.known_call(&tool_call_id);
        let kind = tc
            .get("kind")
            .and_then(Value::as_str)
            .map(|k| tool_kind(Some(k)))
            .or_else(|| known.as_ref().map(|k| k.0.clone()))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "other".into());
        let title = tc
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| known.as_ref().map(|k| k.1.clone()))
            .unwrap_or_default();
        let input = tc
            .get("rawInput")
            .cloned()
            .or_else(|| known.as_ref().map(|k| k.2.clone()))
            .unwrap_or(Value::Null);
        let mut paths: Vec<String> = tc
            .get("locations")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(|x| x.get("path").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for p in input_paths(&input)
            .into_iter()
            .chain(known.map(|k| k.3).unwrap_or_default())
        {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
        let command = input
            .get("command")
            .and_then(Value::as_str)
            .map(str::to_string);
        PermissionAsk {
            tool_call_id,
            kind,
            title,
            command,
            paths,
            input,
        }
    }

    /// End the agent: close its stdin, wait `grace`, kill its process group; always reaped.
    pub async fn stop(mut self, grace: Duration) -> String {
        self.conn.close();
        let status = self.proc.stop(grace).await;
        describe_exit(status, &[])
    }
}

/// An agent's error, with the detail it put in `data` (gemini: `{"details": "..."}`).
fn load_error_text(e: &AcpError) -> String {
    match e {
        AcpError::Rpc(RpcError::Remote { message, data, .. }) => match data
            .as_ref()
            .and_then(|d| d.get("details"))
            .and_then(Value::as_str)
        {
            Some(d) => format!("{message}: {d}"),
            None => message.clone(),
        },
        other => other.to_string(),
    }
}

/// The option to select: for allow the first `allow_once` (else `allow_always`), for deny the
/// first `reject_once` (else `reject_always`); `None` (answer `cancelled`) when there is none.
fn choose_option(params: &Value, allow: bool) -> Option<String> {
    let options = params.get("options").and_then(Value::as_array)?;
    let wanted: &[&str] = if allow {
        &["allow_once", "allow_always"]
    } else {
        &["reject_once", "reject_always"]
    };
    wanted.iter().find_map(|w| {
        options
            .iter()
            .find(|o| o.get("kind").and_then(Value::as_str) == Some(w))
            .and_then(|o| o.get("optionId").and_then(Value::as_str))
            .map(str::to_string)
    })
}

fn refuse(conn: &Connection, id: &Value, method: &str) {
    if method == "session/request_permission" {
        conn.respond(id, json!({"outcome": {"outcome": "cancelled"}}));
    } else {
        conn.respond_error(
            id,
            -32601,
            &format!("zwarm does not offer `{method}` (no fs or terminal capability)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_chosen_by_kind() {
        let p = json!({"options": [
            {"optionId": "proceed_always", "kind": "allow_always"},
            {"optionId": "proceed_once", "kind": "allow_once"},
            {"optionId": "cancel", "kind": "reject_once"},
        ]});
        assert_eq!(choose_option(&p, true).as_deref(), Some("proceed_once"));
        assert_eq!(choose_option(&p, false).as_deref(), Some("cancel"));
        let only_allow = json!({"options": [{"optionId": "a", "kind": "allow_always"}]});
        assert_eq!(choose_option(&only_allow, false), None);
    }
}
