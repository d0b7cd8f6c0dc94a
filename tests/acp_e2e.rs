//! ACP agents driven by zwarm's ACP client, against the real CLIs (pinned in
//! `.ci/install-acp-clis`) and scripted model servers: gemini against the Gemini API mock.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::mock_chat::{ChatMock, messages_text};
use support::mock_gemini::{GeminiMock, contents_text};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use zwarm::acp::{
    AcpAgent, AcpEvent, AgentCommand, Level, Policy, PromptOptions, Rule, TurnEnd, Verdict,
};

/// Where the ACP CLIs are: `ZWARM_TEST_ACP_CLI_DIR`, else PATH, else `.tools-acp/` where
/// `.ci/install-acp-clis` puts the pinned ones. Missing is a failure, never a skip.
fn acp_cli(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ZWARM_TEST_ACP_CLI_DIR").filter(|d| !d.is_empty()) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name);
        assert!(p.exists(), "`{name}` not found in ZWARM_TEST_ACP_CLI_DIR");
        return p;
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools-acp/node_modules/.bin")
        .join(name);
    if local.exists() {
        return local;
    }
    if let Ok(p) = which::which(name) {
        return p;
    }
    panic!("`{name}` not found in .tools-acp/ or on PATH: run `bash .ci/install-acp-clis`");
}

const LONG: Duration = Duration::from_secs(120);

/// A hermetic home and work dir for one agent.
struct AgentEnv {
    _dir: TempDir,
    home: PathBuf,
    work: PathBuf,
}

impl AgentEnv {
    fn new() -> AgentEnv {
        let dir = tempfile::Builder::new()
            .prefix("zwarm-acp-")
            .tempdir()
            .expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        let home = root.join("home");
        let work = root.join("work");
        for d in [&home, &work] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        AgentEnv {
            _dir: dir,
            home,
            work,
        }
    }

    fn gemini(&self, mock: &GeminiMock) -> AgentCommand {
        let gdir = self.home.join(".gemini");
        std::fs::create_dir_all(&gdir).expect("mkdir .gemini");
        std::fs::write(
            gdir.join("settings.json"),
            json!({
                "security": {"auth": {"selectedType": "gemini-api-key"}},
                "privacy": {"usageStatisticsEnabled": false},
                "telemetry": {"enabled": false},
                "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false, "sessionRetention": {"enabled": false}},
            })
            .to_string(),
        )
        .expect("write settings");
        AgentCommand {
            share_group: false,
            program: acp_cli("gemini"),
            args: vec![OsString::from("--acp")],
            cwd: self.work.clone(),
            env_set: vec![
                ("HOME".into(), self.home.display().to_string()),
                ("GOOGLE_GEMINI_BASE_URL".into(), mock.base_url()),
                ("GEMINI_API_KEY".into(), "x".into()),
                ("GEMINI_CLI_TRUST_WORKSPACE".into(), "true".into()),
                (
                    "XDG_CONFIG_HOME".into(),
                    self.home.join(".config").display().to_string(),
                ),
            ],
            env_remove: vec![
                "GOOGLE_API_KEY".into(),
                "GOOGLE_CLOUD_PROJECT".into(),
                "GOOGLE_APPLICATION_CREDENTIALS".into(),
            ],
        }
    }
}

impl AgentEnv {
    fn qwen(&self, mock: &ChatMock) -> AgentCommand {
        let qdir = self.home.join(".qwen");
        std::fs::create_dir_all(&qdir).expect("mkdir .qwen");
        std::fs::write(
            qdir.join("settings.json"),
            json!({
                "security": {"auth": {"selectedType": "openai"}, "folderTrust": {"enabled": false}},
                "privacy": {"usageStatisticsEnabled": false},
                "telemetry": {"enabled": false},
                "general": {"disableAutoUpdate": true},
                "memory": {"enableManagedAutoMemory": false, "enableManagedAutoDream": false},
            })
            .to_string(),
        )
        .expect("write settings");
        AgentCommand {
            share_group: false,
            program: acp_cli("qwen"),
            args: vec![OsString::from("--acp")],
            cwd: self.work.clone(),
            env_set: vec![
                ("HOME".into(), self.home.display().to_string()),
                ("OPENAI_BASE_URL".into(), mock.base_url()),
                ("OPENAI_API_KEY".into(), "x".into()),
                ("OPENAI_MODEL".into(), "mock-model".into()),
                (
                    "XDG_CONFIG_HOME".into(),
                    self.home.join(".config").display().to_string(),
                ),
            ],
            env_remove: vec!["DASHSCOPE_API_KEY".into(), "QWEN_MODEL".into()],
        }
    }
}

impl AgentEnv {
    /// OpenCode on its google provider, pointed at the Gemini mock. Its permission config
    /// makes it ask before edits and commands (by default it asks nothing).
    fn opencode(&self, mock: &GeminiMock) -> AgentCommand {
        let config = json!({
            "provider": {"google": {"options": {"baseURL": format!("{}/v1beta", mock.base_url()), "apiKey": "x"}}},
            "model": "google/gemini-2.5-flash",
            "small_model": "google/gemini-2.5-flash",
            "permission": {"edit": "ask", "bash": "ask", "webfetch": "ask"},
            "autoupdate": false,
            "share": "disabled",
        });
        AgentCommand {
            share_group: false,
            program: acp_cli("opencode"),
            args: vec![OsString::from("acp")],
            cwd: self.work.clone(),
            env_set: vec![
                ("HOME".into(), self.home.display().to_string()),
                (
                    "XDG_CONFIG_HOME".into(),
                    self.home.join(".config").display().to_string(),
                ),
                (
                    "XDG_DATA_HOME".into(),
                    self.home.join(".local/share").display().to_string(),
                ),
                (
                    "XDG_STATE_HOME".into(),
                    self.home.join(".local/state").display().to_string(),
                ),
                (
                    "XDG_CACHE_HOME".into(),
                    self.home.join(".cache").display().to_string(),
                ),
                ("OPENCODE_CONFIG_CONTENT".into(), config.to_string()),
                ("OPENCODE_DISABLE_MODELS_FETCH".into(), "1".into()),
                ("OPENCODE_DISABLE_AUTOUPDATE".into(), "1".into()),
                ("OPENCODE_DISABLE_LSP_DOWNLOAD".into(), "1".into()),
                ("OPENCODE_DISABLE_SHARE".into(), "1".into()),
                ("OPENCODE_DISABLE_CLAUDE_CODE".into(), "1".into()),
            ],
            env_remove: vec![
                "GOOGLE_GENERATIVE_AI_API_KEY".into(),
                "GEMINI_API_KEY".into(),
            ],
        }
    }
}

#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<AcpEvent>>>);

impl Events {
    fn all(&self) -> Vec<AcpEvent> {
        self.0.lock().unwrap().clone()
    }
    fn message(&self) -> String {
        self.all()
            .iter()
            .filter_map(|e| match e {
                AcpEvent::AgentMessage { text } => Some(text.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }
    fn permissions(&self) -> Vec<(Verdict, String, Option<String>)> {
        self.all()
            .iter()
            .filter_map(|e| match e {
                AcpEvent::Permission {
                    decision, option, ..
                } => Some((decision.verdict, decision.rule.clone(), option.clone())),
                _ => None,
            })
            .collect()
    }
}

async fn prompt(
    agent: &mut AcpAgent,
    session: &str,
    text: &str,
    policy: &Policy,
    events: &Events,
    cancel: CancellationToken,
) -> TurnEnd {
    prompt_with(agent, session, text, policy, None, events, cancel).await
}

/// An approver that answers every ask with `answer` (`None`: never answers), and records
/// what it was asked.
struct ScriptedApprover {
    answer: Option<bool>,
    asked: Mutex<Vec<zwarm::acp::PermissionAsk>>,
}

#[async_trait::async_trait]
impl zwarm::acp::Approver for ScriptedApprover {
    async fn approve(&self, ask: &zwarm::acp::PermissionAsk, _rule: &str) -> Option<bool> {
        self.asked.lock().unwrap().push(ask.clone());
        match self.answer {
            Some(a) => Some(a),
            None => std::future::pending().await,
        }
    }
}

async fn prompt_with(
    agent: &mut AcpAgent,
    session: &str,
    text: &str,
    policy: &Policy,
    approver: Option<&dyn zwarm::acp::Approver>,
    events: &Events,
    cancel: CancellationToken,
) -> TurnEnd {
    let opts = PromptOptions {
        policy,
        approver,
        ask_timeout: Duration::from_secs(2),
        cancel,
        cancel_grace: Duration::from_secs(10),
    };
    let sink_events = events.clone();
    let mut sink = move |e: AcpEvent| sink_events.0.lock().unwrap().push(e);
    tokio::time::timeout(LONG, agent.prompt(session, text, &opts, &mut sink))
        .await
        .expect("the turn ended in time")
}

/// Stop `agent`, start a new process of `cmd` and open `session` again (session/load, else a
/// new session with a summary of the first turn); one more turn, "are you there?".
async fn restart_and_continue(
    cmd: &AgentCommand,
    agent: AcpAgent,
    session: &str,
    work: &Path,
    policy: &Policy,
) -> (AcpAgent, zwarm::acp::OpenedSession) {
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(
        !group_alive(pid),
        "the agent's process group is gone after stop"
    );
    let mut agent = AcpAgent::start(cmd, LONG).await.expect("initialize again");
    let earlier = vec![zwarm::acp::EarlierTurn {
        prompt: "write hello.txt".into(),
        response: Some("I wrote hello.txt.".into()),
    }];
    let opened = agent
        .open_session(Some(session), work, &earlier, LONG)
        .await
        .expect("open session");
    let text = format!(
        "{}are you there?",
        opened.preamble.clone().unwrap_or_default()
    );
    let ev = Events::default();
    let end = prompt(
        &mut agent,
        &opened.session_id,
        &text,
        policy,
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(end, TurnEnd::Completed { note: None });
    // The mocks answer "done" once their script is used up; nothing replayed leaks in.
    assert_eq!(ev.message(), "done", "the turn's message after the restart");
    (agent, opened)
}

/// Is any process of group `pgid` still running (zombies waiting for init do not count)?
fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces: split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()
    })
}

fn write_call(path: &Path, content: &str) -> Value {
    json!({"call": {"name": "write_file", "args": {"file_path": path.display().to_string(), "content": content}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_writes_a_file_continues_the_session_and_reloads_it() {
    let env = AgentEnv::new();
    let target = env.work.join("hello.txt");
    let mock = GeminiMock::start(json!({"turns": [
        write_call(&target, "hello from gemini\n"),
        {"text": "I wrote hello.txt."},
        {"text": "You asked me to write hello.txt; I did."},
        {"text": "Still here after the reload."},
    ]}));
    let cmd = env.gemini(&mock);
    let mut agent = AcpAgent::start(&cmd, LONG).await.expect("initialize");
    assert_eq!(agent.info.protocol_version, 1);
    assert!(agent.info.load_session, "gemini advertises loadSession");
    let session = agent
        .new_session(&env.work, LONG)
        .await
        .expect("session/new");
    let policy = Policy::new(Level::WorkspaceWrite, &env.work);

    let ev = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "write hello.txt",
        &policy,
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        end,
        TurnEnd::Completed { note: None },
        "events: {:#?}",
        ev.all()
    );
    assert_eq!(
        std::fs::read_to_string(&target).expect("hello.txt written"),
        "hello from gemini\n"
    );
    let perms = ev.permissions();
    assert_eq!(perms.len(), 1, "one permission request: {perms:?}");
    assert_eq!(perms[0].0, Verdict::Allow);
    assert_eq!(
        perms[0].1,
        "default workspace-write: edit inside the working dir"
    );
    assert!(perms[0].2.is_some(), "an allow option was selected");
    assert!(
        ev.message().contains("I wrote hello.txt."),
        "message: {:?}",
        ev.message()
    );
    assert!(
        ev.all().iter().any(|e| matches!(e, AcpEvent::ToolCall { kind, status, .. } if kind == "edit" && status == "completed")),
        "a completed edit tool call: {:#?}",
        ev.all()
    );

    // Turn 2 continues the same agent session: the model sees the first exchange.
    let ev2 = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "what did you do?",
        &policy,
        &ev2,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(end, TurnEnd::Completed { note: None });
    assert!(
        ev2.message().contains("You asked me"),
        "message: {:?}",
        ev2.message()
    );
    let last = mock
        .model_requests()
        .last()
        .cloned()
        .expect("model requests");
    let seen = contents_text(&last.body);
    assert!(
        seen.contains("write hello.txt") && seen.contains("what did you do?"),
        "history: {seen}"
    );
    assert!(
        seen.contains("I wrote hello.txt."),
        "history has the first answer: {seen}"
    );

    // A new agent process continues it (as after an idle stop or a zwarm restart). gemini
    // 0.61.0 advertises session/load, but after a restart its load rewrites the saved chat
    // before reading it and answers "No previous sessions found": zwarm then starts a new
    // session with a summary of the earlier turns and says so.
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(
        !group_alive(pid),
        "the agent's process group is gone after stop"
    );
    let mut agent = AcpAgent::start(&cmd, LONG).await.expect("initialize again");
    let earlier = vec![
        zwarm::acp::EarlierTurn {
            prompt: "write hello.txt".into(),
            response: Some("I wrote hello.txt.".into()),
        },
        zwarm::acp::EarlierTurn {
            prompt: "what did you do?".into(),
            response: Some("You asked me to write hello.txt; I did.".into()),
        },
    ];
    let opened = agent
        .open_session(Some(&session), &env.work, &earlier, LONG)
        .await
        .expect("open session");
    let text = match &opened.preamble {
        Some(p) => format!("{p}are you there?"),
        None => "are you there?".to_string(),
    };
    if !opened.loaded {
        let note = opened
            .note
            .clone()
            .expect("a note says the session was not continued");
        assert!(
            note.contains(&session) && note.contains("summary"),
            "note: {note}"
        );
    }
    let ev3 = Events::default();
    let end = prompt(
        &mut agent,
        &opened.session_id,
        &text,
        &policy,
        &ev3,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(end, TurnEnd::Completed { note: None });
    assert_eq!(
        ev3.message(),
        "Still here after the reload.",
        "no replayed text leaks into the turn (loaded: {}): {:#?}",
        opened.loaded,
        ev3.all()
    );
    let seen = contents_text(&mock.model_requests().last().expect("request").body);
    assert!(
        seen.contains("write hello.txt")
            && seen.contains("I wrote hello.txt.")
            && seen.contains("are you there?"),
        "history after restart: {seen}"
    );
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(!group_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_policy_denials_leave_files_untouched_and_are_reported() {
    let env = AgentEnv::new();
    let readonly = env.work.join("notes.txt");
    let secret = env.work.join("secret.txt");
    std::fs::write(&secret, "original\n").expect("seed");
    let mock = GeminiMock::start(json!({"turns": [
        write_call(&readonly, "written\n"),
        {"text": "I could not write it."},
        write_call(&secret, "overwritten\n"),
        {"text": "Refused again."},
    ]}));
    let mut agent = AcpAgent::start(&env.gemini(&mock), LONG)
        .await
        .expect("initialize");
    let session = agent
        .new_session(&env.work, LONG)
        .await
        .expect("session/new");

    // The level's default: a read-only session may not edit.
    let policy = Policy::new(Level::ReadOnly, &env.work);
    let ev = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "write notes",
        &policy,
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert!(!readonly.exists(), "the denied write did not happen");
    let perms = ev.permissions();
    assert_eq!(perms.len(), 1, "{perms:?}");
    assert_eq!(perms[0].0, Verdict::Deny);
    assert_eq!(perms[0].1, "default read-only: edit not allowed read-only");
    let mapped: Vec<_> = ev
        .all()
        .iter()
        .flat_map(zwarm::acp::update::to_executor_events)
        .collect();
    assert!(
        mapped.iter().any(|e| matches!(e, zwarm::event::ExecutorEvent::PermissionDenied(d) if d.input["rule"] == "default read-only: edit not allowed read-only")),
        "the denial is reported as a permission denial: {mapped:#?}"
    );
    assert!(
        matches!(end, TurnEnd::Completed { .. } | TurnEnd::Interrupted),
        "{end:?}"
    );

    // A configured rule denies an edit the level would allow, and is named.
    let policy = Policy::new(Level::FullAccess, &env.work)
        .with_rules(vec![Rule {
            verdict: Verdict::Deny,
            kinds: vec!["edit".into()],
            pattern: Some("secret".into()),
            project: false,
        }])
        .expect("policy");
    let ev = Events::default();
    prompt(
        &mut agent,
        &session,
        "overwrite the secret",
        &policy,
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&secret).expect("read"),
        "original\n"
    );
    let perms = ev.permissions();
    assert_eq!(perms.len(), 1, "{perms:?}");
    assert_eq!(
        (perms[0].0, perms[0].1.as_str()),
        (Verdict::Deny, "rule 1 (deny edit /secret/)")
    );
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(!group_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_dying_mid_turn_fails_the_turn_and_leaves_no_process() {
    let env = AgentEnv::new();
    let mock = GeminiMock::start(json!({"turns": [{"text": "too late", "stall_s": 600}]}));
    let mut agent = AcpAgent::start(&env.gemini(&mock), LONG)
        .await
        .expect("initialize");
    let session = agent
        .new_session(&env.work, LONG)
        .await
        .expect("session/new");
    let policy = Policy::new(Level::WorkspaceWrite, &env.work);
    let pid = agent.pid().expect("pid");
    let killer = {
        let mock_requests = move || mock.model_requests().len();
        tokio::spawn(async move {
            // Wait until the model request is in flight, then kill the agent's whole group.
            while mock_requests() == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // SAFETY: a plain signal to the agent's process group.
            unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
        })
    };
    let ev = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "take your time",
        &policy,
        &ev,
        CancellationToken::new(),
    )
    .await;
    killer.await.expect("killer");
    let TurnEnd::Failed { reason } = end else {
        panic!("expected a failed turn, got {end:?}")
    };
    assert!(
        reason.contains("killed by signal 9") || reason.contains("closed its output"),
        "reason: {reason}"
    );
    agent.stop(Duration::from_secs(5)).await;
    assert!(!group_alive(pid), "no process of the agent is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cancel_interrupts_the_turn() {
    let env = AgentEnv::new();
    let mock = GeminiMock::start(json!({"turns": [{"text": "too late", "stall_s": 600}]}));
    let mut agent = AcpAgent::start(&env.gemini(&mock), LONG)
        .await
        .expect("initialize");
    let session = agent
        .new_session(&env.work, LONG)
        .await
        .expect("session/new");
    let policy = Policy::new(Level::WorkspaceWrite, &env.work);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let watcher = tokio::spawn(async move {
        while mock.model_requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trigger.cancel();
        mock
    });
    let ev = Events::default();
    let end = prompt(&mut agent, &session, "take your time", &policy, &ev, cancel).await;
    let _mock = watcher.await.expect("watcher");
    assert_eq!(end, TurnEnd::Interrupted);
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(!group_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_writes_a_file_and_continues_the_session() {
    let env = AgentEnv::new();
    let target = env.work.join("hello.txt");
    let mock = ChatMock::start(json!({"turns": [
        write_call(&target, "hello from qwen\n"),
        {"text": "I wrote hello.txt."},
        {"text": "You asked me to write hello.txt; I did."},
    ]}));
    let mut agent = AcpAgent::start(&env.qwen(&mock), LONG)
        .await
        .expect("initialize");
    let session = agent
        .new_session(&env.work, LONG)
        .await
        .expect("session/new");
    let policy = Policy::new(Level::WorkspaceWrite, &env.work);
    let ev = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "write hello.txt",
        &policy,
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        end,
        TurnEnd::Completed { note: None },
        "events: {:#?}",
        ev.all()
    );
    assert_eq!(
        std::fs::read_to_string(&target).expect("hello.txt written"),
        "hello from qwen\n"
    );
    let perms = ev.permissions();
    assert_eq!(
        perms.len(),
        1,
        "{perms:?} {} {:#?}",
        agent.session_info,
        ev.all()
    );
    assert_eq!(perms[0].0, Verdict::Allow);
    assert!(
        ev.message().contains("I wrote hello.txt."),
        "message: {:?}",
        ev.message()
    );
    let ev2 = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "what did you do?",
        &policy,
        &ev2,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(end, TurnEnd::Completed { note: None });
    let seen = messages_text(&mock.model_requests().last().expect("request").body);
    assert!(
        seen.contains("write hello.txt")
            && seen.contains("I wrote hello.txt.")
            && seen.contains("what did you do?"),
        "history: {seen}"
    );
    let cmd = env.qwen(&mock);
    let (agent, opened) = restart_and_continue(&cmd, agent, &session, &env.work, &policy).await;
    assert!(
        opened.loaded,
        "qwen loads its session in a new process: {:?}",
        opened.note
    );
    let seen = messages_text(&mock.model_requests().last().expect("request").body);
    assert!(
        seen.contains("write hello.txt") && seen.contains("are you there?"),
        "history after restart: {seen}"
    );
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(!group_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_writes_a_file_and_continues_the_session() {
    let env = AgentEnv::new();
    let target = env.work.join("hello.txt");
    let mock = GeminiMock::start(json!({"turns": [
        {"call": {"name": "write", "args": {"filePath": target.display().to_string(), "content": "hello from opencode\n"}}},
        {"text": "I wrote hello.txt."},
        {"text": "You asked me to write hello.txt; I did."},
    ]}));
    let mut agent = AcpAgent::start(&env.opencode(&mock), LONG)
        .await
        .expect("initialize");
    let session = agent
        .new_session(&env.work, LONG)
        .await
        .expect("session/new");
    let policy = Policy::new(Level::WorkspaceWrite, &env.work);
    let ev = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "write hello.txt",
        &policy,
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        end,
        TurnEnd::Completed { note: None },
        "events: {:#?}",
        ev.all()
    );
    assert_eq!(
        std::fs::read_to_string(&target).expect("hello.txt written"),
        "hello from opencode\n"
    );
    let perms = ev.permissions();
    assert_eq!(
        perms.len(),
        1,
        "{perms:?} {} {:#?}",
        agent.session_info,
        ev.all()
    );
    assert_eq!(perms[0].0, Verdict::Allow);
    assert!(
        ev.message().contains("I wrote hello.txt."),
        "message: {:?}",
        ev.message()
    );
    let ev2 = Events::default();
    let end = prompt(
        &mut agent,
        &session,
        "what did you do?",
        &policy,
        &ev2,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(end, TurnEnd::Completed { note: None });
    let seen = contents_text(&mock.model_requests().last().expect("request").body);
    assert!(
        seen.contains("write hello.txt")
            && seen.contains("I wrote hello.txt.")
            && seen.contains("what did you do?"),
        "history: {seen}"
    );
    let cmd = env.opencode(&mock);
    let (agent, opened) = restart_and_continue(&cmd, agent, &session, &env.work, &policy).await;
    assert!(
        opened.loaded,
        "opencode loads its session in a new process: {:?}",
        opened.note
    );
    let seen = contents_text(&mock.model_requests().last().expect("request").body);
    assert!(
        seen.contains("write hello.txt") && seen.contains("are you there?"),
        "history after restart: {seen}"
    );
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(!group_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_asks_are_approved_or_denied_at_the_timeout() {
    let env = AgentEnv::new();
    let approved = env.work.join("approved.txt");
    let unanswered = env.work.join("unanswered.txt");
    let mock = GeminiMock::start(json!({"turns": [
        write_call(&approved, "yes\n"),
        {"text": "Written after approval."},
        write_call(&unanswered, "no\n"),
        {"text": "Not written."},
    ]}));
    let mut agent = AcpAgent::start(&env.gemini(&mock), LONG)
        .await
        .expect("initialize");
    let session = agent
        .new_session(&env.work, LONG)
        .await
        .expect("session/new");
    let policy = Policy::new(Level::WorkspaceWrite, &env.work)
        .with_rules(vec![Rule {
            verdict: Verdict::Ask,
            kinds: vec!["edit".into()],
            pattern: None,
            project: false,
        }])
        .expect("policy");

    let yes = ScriptedApprover {
        answer: Some(true),
        asked: Mutex::default(),
    };
    let ev = Events::default();
    let end = prompt_with(
        &mut agent,
        &session,
        "write approved",
        &policy,
        Some(&yes),
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(end, TurnEnd::Completed { note: None });
    assert_eq!(
        std::fs::read_to_string(&approved).expect("written"),
        "yes\n"
    );
    let asked = yes.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].kind, "edit");
    assert!(
        asked[0].paths.iter().any(|p| p.ends_with("approved.txt")),
        "{asked:?}"
    );
    assert_eq!(ev.permissions()[0].1, "rule 1 (ask edit); approved");

    let silent = ScriptedApprover {
        answer: None,
        asked: Mutex::default(),
    };
    let ev = Events::default();
    prompt_with(
        &mut agent,
        &session,
        "write unanswered",
        &policy,
        Some(&silent),
        &ev,
        CancellationToken::new(),
    )
    .await;
    assert!(!unanswered.exists(), "an unanswered ask is a denial");
    let perms = ev.permissions();
    assert_eq!(perms.len(), 1, "{perms:?}");
    assert_eq!(
        (perms[0].0, perms[0].1.as_str()),
        (
            Verdict::Deny,
            "rule 1 (ask edit); no answer within 2 s, so denied"
        )
    );
    let pid = agent.pid().expect("pid");
    agent.stop(Duration::from_secs(5)).await;
    assert!(!group_alive(pid));
}

/// One turn through the `zwarm-acp` bridge process: the job on stdin, the events it prints.
fn bridge_turn(job: &Value) -> (i32, Vec<Value>) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm-acp"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start zwarm-acp");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(job.to_string().as_bytes())
        .expect("write job");
    drop(stdin);
    let out = child.wait_with_output().expect("zwarm-acp ran");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event line ({e}): {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), events)
}

#[test]
fn the_bridge_runs_gemini_turns_as_processes_and_continues_with_a_summary() {
    let env = AgentEnv::new();
    let target = env.work.join("bridge.txt");
    let denied = env.work.join("denied.txt");
    let mock = GeminiMock::start(json!({"turns": [
        write_call(&target, "via the bridge\n"),
        {"text": "Bridge wrote it."},
        write_call(&denied, "never\n"),
        {"text": "Could not write it."},
    ]}));
    let cmd = env.gemini(&mock);
    let transcript = env.home.join("acp-transcript.jsonl");
    let job = |prompt: &str, resume: Option<&str>| {
        json!({
            "transcript": transcript,
            "program": cmd.program, "args": ["--acp"], "env_set": cmd.env_set,
            "env_remove": cmd.env_remove, "cwd": env.work, "prompt": prompt,
            "resume_id": resume, "level": "workspace-write",
            "rules": [{"verdict": "deny", "kinds": ["edit"], "pattern": "denied"}],
        })
    };
    let (code, events) = bridge_turn(&job("write bridge.txt", None));
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("written"),
        "via the bridge\n"
    );
    assert_eq!(events[0]["event"], "session_started", "{events:#?}");
    let native = events[0]["native_id"]
        .as_str()
        .expect("native id")
        .to_string();
    let last = events.last().expect("events");
    assert_eq!(last["event"], "turn_completed");
    assert_eq!(last["final_text"], "Bridge wrote it.");
    assert!(
        events.iter().any(|e| e["event"] == "files_changed"),
        "{events:#?}"
    );

    // The next turn is a new process. gemini 0.61.0 loads its session only when the new
    // process starts in a later minute than the session's chat file; otherwise the bridge
    // starts a new session with a summary from the transcript it keeps, and says so. Either
    // way the model sees the first turn, and the rule denies the write.
    let (code, events) = bridge_turn(&job("write denied.txt", Some(&native)));
    assert_eq!(code, 0, "{events:#?}");
    assert!(!denied.exists(), "the rule denied the write");
    let loaded = events[0]["native_id"] == native.as_str();
    let said = events.iter().any(|e| {
        e["event"] == "warning" && e["message"].as_str().is_some_and(|m| m.contains(&native))
    });
    assert!(
        loaded != said,
        "either the session was loaded, or the result says it was not continued: {events:#?}"
    );
    let denial = events
        .iter()
        .find(|e| e["event"] == "permission_denied")
        .expect("a denial event");
    assert_eq!(denial["input"]["rule"], "rule 1 (deny edit /denied/)");
    let seen = contents_text(&mock.model_requests().last().expect("request").body);
    assert!(
        seen.contains("write bridge.txt") && seen.contains("Bridge wrote it."),
        "summary: {seen}"
    );
}

/// A turn the way the engine runs one: the gemini executor's launch (the bridge, the job on
/// stdin), its stdout parsed by the executor's parser.
#[test]
fn the_gemini_executor_runs_turns_through_the_bridge() {
    use std::io::Write;
    use zwarm::executor::acp::{AcpExecutor, GEMINI, TRANSCRIPT_FILE};
    use zwarm::executor::{Executor, LaunchContext, TurnPlan};

    let env = AgentEnv::new();
    let target = env.work.join("exec.txt");
    let mock = GeminiMock::start(json!({"turns": [
        write_call(&target, "via the executor\n"),
        {"text": "Executor wrote it."},
        {"text": "Second turn."},
    ]}));
    let gemini_cmd = env.gemini(&mock);
    // The registry entry will name its own adapter; the launch does not depend on it.
    let exec = AcpExecutor::new(&GEMINI);
    let cfg = zwarm::config::Config::default();
    let turns = env.home.join("turns").join("s1");
    std::fs::create_dir_all(&turns).expect("turn dir");
    let run = |prompt: &str, resume: Option<String>, n: u32| {
        let plan = TurnPlan {
            working_dir: env.work.clone(),
            prompt: prompt.into(),
            resume_id: resume,
        };
        let ctx = LaunchContext {
            scratch: turns.join(format!("{n}.last-message")),
            turn_dir: Some(turns.clone()),
            ..LaunchContext::default()
        };
        let launch = exec
            .launch_with(
                &cfg,
                &plan,
                &ctx,
                gemini_cmd.program.clone(),
                env!("CARGO_BIN_EXE_zwarm-acp").into(),
            )
            .expect("launch");
        let mut child = std::process::Command::new(&launch.program)
            .args(&launch.args)
            .current_dir(&launch.cwd)
            .envs(gemini_cmd.env_set.iter().cloned())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the bridge");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(launch.stdin.as_deref().unwrap_or_default())
            .expect("job");
        drop(stdin);
        let out = child.wait_with_output().expect("bridge ran");
        let mut parser = exec.parser();
        let events: Vec<zwarm::event::ExecutorEvent> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .flat_map(|l| parser.parse_line(l))
            .collect();
        (out.status.code(), events)
    };
    let (code, events) = run("write exec.txt", None, 1);
    assert_eq!(code, Some(0), "{events:#?}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("written"),
        "via the executor\n"
    );
    let Some(zwarm::event::ExecutorEvent::SessionStarted { native_id, .. }) = events.first() else {
        panic!("the first event names the agent session: {events:#?}");
    };
    assert!(
        matches!(
            events.last(),
            Some(zwarm::event::ExecutorEvent::TurnCompleted { final_text: Some(t), .. }) if t == "Executor wrote it."
        ),
        "{events:#?}"
    );
    assert!(
        turns.join(TRANSCRIPT_FILE).exists(),
        "the transcript is kept in the session's turn dir"
    );
    let (code, events) = run("and now?", Some(native_id.clone()), 2);
    assert_eq!(code, Some(0), "{events:#?}");
    let seen = contents_text(&mock.model_requests().last().expect("request").body);
    assert!(
        seen.contains("write exec.txt") && seen.contains("and now?"),
        "history: {seen}"
    );
}

#[test]
fn doctor_handshakes_each_agent() {
    use zwarm::executor::acp::{GEMINI, OPENCODE, QWEN, handshake};
    let env = AgentEnv::new();
    let h = |k: &str, sub: &str| (k.to_string(), env.home.join(sub).display().to_string());
    let vars = vec![
        h("HOME", ""),
        h("XDG_CONFIG_HOME", ".config"),
        h("XDG_DATA_HOME", ".local/share"),
        h("XDG_STATE_HOME", ".local/state"),
        h("XDG_CACHE_HOME", ".cache"),
        ("OPENCODE_DISABLE_MODELS_FETCH".to_string(), "1".to_string()),
        ("OPENCODE_DISABLE_AUTOUPDATE".to_string(), "1".to_string()),
    ];
    // Only initialize: no model request is made, so no mock is needed.
    for (spec, name) in [
        (&GEMINI, "gemini"),
        (&QWEN, "qwen"),
        (&OPENCODE, "opencode"),
    ] {
        let info = handshake(spec, &acp_cli(name), &env.work, &vars)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.protocol_version, 1, "{name}");
        assert!(info.load_session, "{name} offers session/load");
    }
    let missing = handshake(&GEMINI, &env.work.join("no-such-agent"), &env.work, &vars);
    assert!(missing.unwrap_err().contains("could not start"));
}

/// A scripted ACP agent in sh: answers `initialize` and `session/new`, and each
/// `session/prompt` with one `agent_message_chunk` and the prompt's answer written together,
/// so both are ready for the client at once (as a real agent's last update and its answer
/// often are under load).
const ECHO_AGENT: &str = r#"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/^{"id":\([0-9]*\),.*/\1/p')
  case "$line" in
    *'"method":"initialize"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":1,"agentCapabilities":{}}}\n' "$id" ;;
    *'"method":"session/new"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"sessionId":"s1"}}\n' "$id" ;;
    *'"method":"session/prompt"'*)
      printf '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"answer %s"}}}}\n{"jsonrpc":"2.0","id":%s,"result":{"stopReason":"end_turn"}}\n' "$id" "$id" ;;
  esac
done
"#;

/// The turn's last update and the prompt's answer arrive together: the update is always part
/// of the turn (the client once took the answer first about half the time, and the turn's
/// message came back empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_sent_just_before_the_answer_belongs_to_the_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = AgentCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), ECHO_AGENT.into()],
        cwd: dir.path().into(),
        ..Default::default()
    };
    let mut agent = AcpAgent::start(&cmd, LONG).await.expect("initialize");
    let session = agent.new_session(dir.path(), LONG).await.expect("new");
    let policy = Policy::new(Level::WorkspaceWrite, dir.path());
    for turn in 0..200 {
        let ev = Events::default();
        let end = prompt(
            &mut agent,
            &session,
            "hi",
            &policy,
            &ev,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(end, TurnEnd::Completed { note: None });
        assert_eq!(ev.message(), format!("answer {}", turn + 2), "turn {turn}");
    }
    agent.stop(Duration::from_secs(5)).await;
}

#[path = "acp/serve.rs"]
mod serve;

#[path = "acp/pool.rs"]
mod pool;

#[path = "acp/custom.rs"]
mod custom;
