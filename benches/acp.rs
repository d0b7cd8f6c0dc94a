//! zwarm's cost over driving the same ACP agent directly: the same agent CLI, the same scripted
//! model server, the same prompt.
//!
//! `cargo bench --bench acp` (needs the pinned ACP CLIs: `bash .ci/install-acp-clis`).
//! `ZWARM_BENCH_ACP_AGENT` chooses the agent: `opencode` (default), `qwen` or `gemini`.
//!
//! - direct: a client (zwarm's ACP library, the thinnest one there is) starts the agent,
//!   `initialize`, `session/new`, one `session/prompt`, stops it: what one turn of the agent
//!   costs anyway;
//! - through zwarm: the same turn as a sync `delegate` through `zwarm serve` (the MCP round
//!   trip, the engine, the state writes, the runner, the `zwarm-acp` bridge process, and the
//!   same ACP calls).
//!
//! - the second turn of a session (a sync `converse`) with the agent kept by `zwarm serve`'s
//!   pool (`acp.agent_idle_seconds = 5`) against one with a fresh agent every turn
//!   (`acp.agent_idle_seconds = 0`: start, `initialize`, `session/load`, prompt, stop).
//!
//! Runs alternate (direct, zwarm, direct, ...) so that drift in the machine's load hits both.
//! `ZWARM_BENCH_ACP_RUNS` sets the number of runs (default 10).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failed run

#[path = "../tests/support/mod.rs"]
mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::harness::{Env, Zwarm};
use support::mock_chat::ChatMock;
use support::mock_gemini::GeminiMock;
use tokio_util::sync::CancellationToken;
use zwarm::acp::{AcpAgent, AgentCommand, Level, Policy, PromptOptions};

fn runs() -> usize {
    std::env::var("ZWARM_BENCH_ACP_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn acp_cli(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools-acp/node_modules/.bin")
        .join(name);
    if local.exists() {
        return local;
    }
    which::which(name)
        .unwrap_or_else(|_| panic!("`{name}` not found: run `bash .ci/install-acp-clis`"))
}

enum Mock {
    Gemini(GeminiMock),
    Chat(ChatMock),
}

/// The agent's environment (also given to `zwarm serve`, which passes it on).
fn agent_env(agent: &str, env: &mut Env, mock: &Mock) {
    let root = env.dir.path().to_path_buf();
    let home = root.join("home");
    let xdg = |s: &str| root.join(s);
    env.set("XDG_DATA_HOME", &xdg("xdg-data").display().to_string());
    env.set("XDG_CACHE_HOME", &xdg("xdg-cache").display().to_string());
    env.set("ZWARM_LOG", "warn");
    env.set("ZWARM_ACP_BRIDGE", env!("CARGO_BIN_EXE_zwarm-acp"));
    env.set(
        &format!("ZWARM_{}_BIN", agent.to_ascii_uppercase()),
        &acp_cli(agent).display().to_string(),
    );
    match (agent, mock) {
        ("gemini", Mock::Gemini(m)) => {
            std::fs::create_dir_all(home.join(".gemini")).unwrap();
            std::fs::write(
                home.join(".gemini/settings.json"),
                json!({
                    "security": {"auth": {"selectedType": "gemini-api-key"}},
                    "privacy": {"usageStatisticsEnabled": false},
                    "telemetry": {"enabled": false},
                    "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false},
                })
                .to_string(),
            )
            .unwrap();
            env.set("GOOGLE_GEMINI_BASE_URL", &m.base_url());
            env.set("GEMINI_API_KEY", "x");
            env.set("GEMINI_CLI_TRUST_WORKSPACE", "true");
        }
        ("qwen", Mock::Chat(m)) => {
            std::fs::create_dir_all(home.join(".qwen")).unwrap();
            std::fs::write(
                home.join(".qwen/settings.json"),
                json!({
                    "security": {"auth": {"selectedType": "openai"}, "folderTrust": {"enabled": false}},
                    "privacy": {"usageStatisticsEnabled": false},
                    "telemetry": {"enabled": false},
                    "general": {"disableAutoUpdate": true},
                    "memory": {"enableManagedAutoMemory": false, "enableManagedAutoDream": false},
                })
                .to_string(),
            )
            .unwrap();
            env.set("OPENAI_BASE_URL", &m.base_url());
            env.set("OPENAI_API_KEY", "x");
            env.set("OPENAI_MODEL", "mock-model");
        }
        ("opencode", Mock::Gemini(m)) => {
            let dir = xdg("xdg-config").join("opencode");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("opencode.json"),
                json!({
                    "provider": {"google": {"options": {"baseURL": format!("{}/v1beta", m.base_url()), "apiKey": "x"}}},
                    "model": "google/gemini-2.5-flash",
                    "small_model": "google/gemini-2.5-flash",
                    "autoupdate": false,
                    "share": "disabled",
                })
                .to_string(),
            )
            .unwrap();
            for k in [
                "OPENCODE_DISABLE_MODELS_FETCH",
                "OPENCODE_DISABLE_AUTOUPDATE",
                "OPENCODE_DISABLE_LSP_DOWNLOAD",
                "OPENCODE_DISABLE_SHARE",
                "OPENCODE_DISABLE_CLAUDE_CODE",
            ] {
                env.set(k, "1");
            }
        }
        (a, _) => panic!("unknown agent {a}"),
    }
}

/// One turn driven directly: start, initialize, session/new, prompt, stop.
async fn direct_turn(agent: &str, env: &Env) -> Duration {
    let spec_args: &[&str] = if agent == "opencode" {
        &["acp"]
    } else {
        &["--acp"]
    };
    let cmd = AgentCommand {
        program: acp_cli(agent),
        args: spec_args.iter().map(OsString::from).collect(),
        cwd: env.work.clone(),
        env_set: env
            .vars
            .iter()
            .filter(|(k, _)| !k.starts_with("ZWARM_"))
            .cloned()
            .collect(),
        env_remove: vec![],
        share_group: false,
    };
    let t = Instant::now();
    let mut a = AcpAgent::start(&cmd, Duration::from_secs(120))
        .await
        .expect("initialize");
    let s = a
        .new_session(&env.work, Duration::from_secs(120))
        .await
        .expect("session/new");
    let policy = Policy::new(Level::WorkspaceWrite, &env.work);
    let opts = PromptOptions {
        policy: &policy,
        approver: None,
        ask_timeout: Duration::ZERO,
        cancel: CancellationToken::new(),
        cancel_grace: Duration::from_secs(5),
    };
    let mut sink = |_e| {};
    let end = a.prompt(&s, "say hello", &opts, &mut sink).await;
    assert!(
        matches!(end, zwarm::acp::TurnEnd::Completed { .. }),
        "{end:?}"
    );
    a.stop(Duration::from_secs(3)).await;
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let agent = std::env::var("ZWARM_BENCH_ACP_AGENT").unwrap_or_else(|_| "opencode".into());
    let mock = match agent.as_str() {
        "qwen" => Mock::Chat(ChatMock::start(json!({}))),
        _ => Mock::Gemini(GeminiMock::start(json!({}))),
    };
    let mut env = Env::without_clis("zwarm-bench-acp-");
    agent_env(&agent, &mut env, &mock);
    // Short-lived pooled agents: every delegate is a new session, and agents kept for 300 s
    // would pile up.
    let z = Zwarm::start(&env, &["--set", "acp.agent_idle_seconds=2"]).await;
    let runs = runs();

    // One of each first (caches, the agent's first-start work), not counted.
    direct_turn(&agent, &env).await;
    let r = z
        .ok("delegate", json!({"task": "say hello", "adapter": agent}))
        .await;
    assert_eq!(r["status"], "idle", "{r}");

    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        direct.push(direct_turn(&agent, &env).await);
        let t = Instant::now();
        let r = z
            .ok(
                "delegate",
                json!({"task": "say hello", "adapter": agent, "wait_seconds": 120}),
            )
            .await;
        via.push(t.elapsed());
        assert_eq!(r["status"], "idle", "{r}");
        assert_eq!(r["response"], "done");
    }
    let (d, v) = (median(direct), median(via));
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!("zwarm ACP overhead benchmark: {agent}, {runs} runs each, medians");
    println!("  the agent driven directly           {:>8.1} ms", ms(d));
    println!(
        "  the same turn via zwarm delegate    {:>8.1} ms   ratio {:.3}x   zwarm's cost {:+.1} ms ({:+.1}%)",
        ms(v),
        ms(v) / ms(d),
        ms(v) - ms(d),
        (ms(v) / ms(d) - 1.0) * 100.0
    );
    drop(z);
    second_turn(&agent, &env, runs).await;
}

/// A delegate (`id` None) or a converse, sync: how long it took, and the session.
async fn turn(z: &Zwarm, agent: &str, id: Option<String>) -> (Duration, String) {
    let (tool, args) = match &id {
        None => (
            "delegate",
            json!({"task": "say hello", "adapter": agent, "wait_seconds": 120}),
        ),
        Some(id) => (
            "converse",
            json!({"session_id": id, "message": "say hello again", "wait_seconds": 120}),
        ),
    };
    let t = Instant::now();
    let r = z.ok(tool, args).await;
    assert_eq!(r["status"], "idle", "{r}");
    let id = id.unwrap_or_else(|| r["session_id"].as_str().unwrap_or_default().to_string());
    (t.elapsed(), id)
}

/// A session's second turn (converse), the agent kept by the pool against a fresh one.
async fn second_turn(agent: &str, env: &Env, runs: usize) {
    let pooled = Zwarm::start(env, &["--set", "acp.agent_idle_seconds=5"]).await;
    let fresh = Zwarm::start(env, &["--set", "acp.agent_idle_seconds=0"]).await;
    // One of each first, not counted.
    for z in [&pooled, &fresh] {
        let (_, id) = turn(z, agent, None).await;
        turn(z, agent, Some(id)).await;
    }
    let (mut kept, mut new) = (Vec::new(), Vec::new());
    let (mut first_pool, mut first_bridge) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let order: [(&Zwarm, bool); 2] = if i % 2 == 0 {
            [(&pooled, true), (&fresh, false)]
        } else {
            [(&fresh, false), (&pooled, true)]
        };
        for (z, is_pooled) in order {
            let (f, id) = turn(z, agent, None).await;
            let (d, _) = turn(z, agent, Some(id)).await;
            if is_pooled {
                first_pool.push(f);
                kept.push(d);
            } else {
                first_bridge.push(f);
                new.push(d);
            }
        }
    }
    let (fp, fb) = (median(first_pool), median(first_bridge));
    let (k, n) = (median(kept), median(new));
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!("first turn of a session (delegate): {agent}, {runs} runs each, medians");
    println!(
        "  the bridge starts the agent (idle 0)     {:>8.1} ms",
        ms(fb)
    );
    println!(
        "  the pool starts the agent                 {:>8.1} ms   ratio {:.3}x (pool / bridge)",
        ms(fp),
        ms(fp) / ms(fb)
    );
    println!("second turn of a session (converse): {agent}, {runs} runs each, medians");
    println!(
        "  a fresh agent (agent_idle_seconds = 0)  {:>8.1} ms",
        ms(n)
    );
    println!(
        "  the agent kept by zwarm serve's pool      {:>8.1} ms   ratio {:.3}x (pooled / fresh)",
        ms(k),
        ms(k) / ms(n)
    );
}
