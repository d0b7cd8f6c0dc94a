//! The agent pool of `zwarm serve`: an ACP agent lives while its session is in use (two turns,
//! one agent process), is stopped after `acp.agent_idle_seconds`, and the next turn starts a
//! new one that reloads the session; no agent outlives the server.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::serve::{Model, acp_env, last_seen, requests_summary, text, to_end};
use super::support::harness::{Zwarm, cmdline};
use super::support::mock_chat::ChatMock;
use super::support::mock_gemini::GeminiMock;

/// Live processes started by the pool for zwarm session `id` (the agent and its children
/// carry `ZWARM_ACP_SESSION=<id>`).
pub fn pool_pids(id: &str) -> Vec<i32> {
    let needle = format!("{}={id}", zwarm::acp::pool::SESSION_ENV);
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
            && zwarm::process::pid_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// The parent of a process.
fn ppid(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The agent the pool of server `z` runs for session `id`: its pid (a child of the server).
fn pooled_agent(z: &Zwarm, id: &str) -> Option<i32> {
    pool_pids(id).into_iter().find(|p| ppid(*p) == Some(z.pid))
}

/// Poll (no fixed sleep) until `f` holds, or panic with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} (after {limit:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sync `delegate` of `task` to `agent`, until its turn ends.
async fn delegate(z: &Zwarm, agent: &str, task: &str) -> Value {
    let r = z
        .ok(
            "delegate",
            json!({"task": task, "adapter": agent, "mode": "sync", "wait_seconds": 120}),
        )
        .await;
    to_end(z, r).await
}

async fn converse(z: &Zwarm, id: &str, message: &str) -> Value {
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": message, "wait_seconds": 120}),
        )
        .await;
    to_end(z, c).await
}

/// Two turns on one agent process; serve's exit stops it. After a restart with
/// `agent_idle_seconds = 1`, the agent of a turn is gone after a second, and the next turn
/// starts a new one and continues the session (loaded, or a summary for gemini).
pub async fn pooled(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, super::serve::model_ref(&model));
    super::serve::set_script(
        &model,
        json!({"turns": [
            {"text": "one"},
            {"text": "two"},
            {"text": "three"},
            {"text": "four"},
        ]}),
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = delegate(&z, agent, "say one").await;
    let id = text(&r["session_id"]);
    assert_eq!(r["status"], "idle", "{r:#}\n{}", z.stderr());
    assert_eq!(r["response"], "one");
    let first = pooled_agent(&z, &id).unwrap_or_else(|| {
        panic!(
            "the agent stays up between turns, a child of zwarm serve\n{}",
            z.stderr()
        )
    });
    let c = converse(&z, &id, "say two").await;
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(c["response"], "two", "{c:#}\n{}", requests_summary(&model));
    assert_eq!(
        pooled_agent(&z, &id),
        Some(first),
        "the second turn ran on the same agent process ({})",
        cmdline(first)
    );
    assert!(
        last_seen(&model).contains("say one"),
        "the history is there"
    );
    z.signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .await;
    eventually(
        Duration::from_secs(10),
        "no agent outlives zwarm serve",
        || pool_pids(&id).is_empty(),
    )
    .await;
    drop(z);

    let z = Zwarm::start(&env, &["--set", "acp.agent_idle_seconds=1"]).await;
    let c = converse(&z, &id, "say three").await;
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(
        c["response"],
        "three",
        "{c:#}\n{}",
        requests_summary(&model)
    );
    eventually(
        Duration::from_secs(30),
        "the idle agent is stopped after acp.agent_idle_seconds",
        || pool_pids(&id).is_empty(),
    )
    .await;
    let c = converse(&z, &id, "say four").await;
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(c["response"], "four", "{c:#}\n{}", requests_summary(&model));
    let seen = last_seen(&model);
    assert!(
        seen.contains("say one") && seen.contains("three") && seen.contains("say four"),
        "the next turn continues the session: {seen}"
    );
    z.signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .await;
    eventually(
        Duration::from_secs(10),
        "no agent outlives zwarm serve",
        || pool_pids(&id).is_empty(),
    )
    .await;
}

/// An interrupt (end_session on a running turn) reaches the pooled agent (`session/cancel`,
/// then it is stopped); an agent kept between turns does not outlive a zwarm killed outright.
pub async fn interrupted_and_killed(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, super::serve::model_ref(&model));
    super::serve::set_script(
        &model,
        json!({"turns": [
            {"text": "too late", "stall_s": 600},
            {"text": "ended"},
            {"text": "done"},
        ]}),
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "take your time", "adapter": agent, "mode": "async"}),
        )
        .await;
    let id = text(&r["session_id"]);
    eventually(Duration::from_secs(60), "the model request is made", || {
        super::serve::model_requests(&model) > 0
    })
    .await;
    assert!(pooled_agent(&z, &id).is_some(), "{}", z.stderr());
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled", "summary": "stop"}),
        )
        .await;
    assert_eq!(e["interrupted_turn"], true, "{e:#}");
    eventually(
        Duration::from_secs(20),
        "the interrupted turn's agent is stopped",
        || pool_pids(&id).is_empty(),
    )
    .await;

    // A session that ends at rest releases its agent at once, not after the idle time (300 s).
    let r = delegate(&z, agent, "say ended").await;
    let ended = text(&r["session_id"]);
    assert_eq!(r["response"], "ended", "{r:#}\n{}", z.stderr());
    assert!(pooled_agent(&z, &ended).is_some(), "kept after the turn");
    let e = z
        .ok(
            "end_session",
            json!({"session_id": ended, "verdict": "completed", "summary": "done"}),
        )
        .await;
    assert_eq!(e["interrupted_turn"], false, "{e:#}");
    eventually(
        Duration::from_secs(20),
        "an ended session's agent is stopped",
        || pool_pids(&ended).is_empty(),
    )
    .await;

    let r = delegate(&z, agent, "say done").await;
    let id = text(&r["session_id"]);
    assert_eq!(r["response"], "done", "{r:#}\n{}", z.stderr());
    assert!(pooled_agent(&z, &id).is_some(), "kept after the turn");
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
        .await;
    eventually(
        Duration::from_secs(20),
        "no agent outlives a zwarm killed outright",
        || pool_pids(&id).is_empty(),
    )
    .await;
}

/// A command the pooled agent runs does not outlive a zwarm killed with SIGKILL (the pool's
/// reaper kills the agent's process group and what carries its marker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_agents_command_does_not_outlive_a_killed_zwarm() {
    let mock = ChatMock::start(json!({}));
    let env = acp_env("qwen", Model::Chat(&mock));
    mock.set_script(json!({"turns": [
        {"call": {"name": "run_shell_command", "args": {"command": "sleep 600 # intentional-sleep: a command that outlives nothing", "description": "wait"}}},
        {"text": "slept"},
    ]}));
    let z = Zwarm::start(&env, &["--set", "acp.level=full-access"]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "sleep", "adapter": "qwen", "mode": "async"}),
        )
        .await;
    let id = text(&r["session_id"]);
    eventually(
        Duration::from_secs(120),
        "the agent runs `sleep 600`",
        || {
            pool_pids(&id)
                .iter()
                .any(|p| cmdline(*p).starts_with("sleep 600"))
        },
    )
    .await;
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
        .await;
    eventually(
        Duration::from_secs(20),
        "neither the agent nor its command outlives a zwarm killed outright",
        || pool_pids(&id).is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_agent_is_interrupted_and_does_not_outlive_a_killed_zwarm() {
    let mock = ChatMock::start(json!({}));
    interrupted_and_killed("qwen", Model::Chat(&mock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_agent_is_interrupted_and_does_not_outlive_a_killed_zwarm() {
    let mock = GeminiMock::start(json!({}));
    interrupted_and_killed("opencode", Model::Gemini(&mock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_agent_is_interrupted_and_does_not_outlive_a_killed_zwarm() {
    let mock = GeminiMock::start(json!({}));
    interrupted_and_killed("gemini", Model::Gemini(&mock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_keeps_its_agent_between_turns_and_stops_it_when_idle() {
    let mock = ChatMock::start(json!({}));
    pooled("qwen", Model::Chat(&mock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_keeps_its_agent_between_turns_and_stops_it_when_idle() {
    let mock = GeminiMock::start(json!({}));
    pooled("opencode", Model::Gemini(&mock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_keeps_its_agent_between_turns_and_stops_it_when_idle() {
    let mock = GeminiMock::start(json!({}));
    pooled("gemini", Model::Gemini(&mock)).await;
}
