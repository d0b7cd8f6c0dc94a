//! gemini, qwen and opencode through `zwarm serve` and the five tools, with the real CLIs
//! against the scripted model servers.

use std::path::Path;

use serde_json::{Value, json};

use super::support::harness::{Env, Zwarm, wait_done};
use super::support::mock_chat::{ChatMock, messages_text};
use super::support::mock_gemini::{GeminiMock, contents_text};
use super::{acp_cli, write_call};

/// Which agent, and the model server it talks to.
pub enum Model<'a> {
    Gemini(&'a GeminiMock),
    Chat(&'a ChatMock),
}

/// A hermetic `zwarm serve` environment for one ACP agent: the agent's binary, a private HOME
/// with its settings pointed at the mock, zwarm's own bridge.
pub fn acp_env(agent: &str, model: Model<'_>) -> Env {
    let mut env = Env::without_clis("zwarm-acp-serve-");
    let home = env.dir.path().join("home");
    let bin_var = format!("ZWARM_{}_BIN", agent.to_ascii_uppercase());
    env.set(&bin_var, &acp_cli(agent).display().to_string());
    env.set("ZWARM_ACP_BRIDGE", env!("CARGO_BIN_EXE_zwarm-acp"));
    env.set("ZWARM_LOG", "debug");
    let xdg = |s: &str| env.dir.path().join(s).display().to_string();
    let (data, cache) = (xdg("xdg-data"), xdg("xdg-cache"));
    env.set("XDG_DATA_HOME", &data);
    env.set("XDG_CACHE_HOME", &cache);
    match (agent, model) {
        ("gemini", Model::Gemini(m)) => {
            let gdir = home.join(".gemini");
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
            .expect("settings");
            env.set("GOOGLE_GEMINI_BASE_URL", &m.base_url());
            env.set("GEMINI_API_KEY", "x");
        }
        ("qwen", Model::Chat(m)) => {
            let qdir = home.join(".qwen");
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
            .expect("settings");
            env.set("OPENAI_BASE_URL", &m.base_url());
            env.set("OPENAI_API_KEY", "x");
            env.set("OPENAI_MODEL", "mock-model");
        }
        ("opencode", Model::Gemini(m)) => {
            let cfg_dir = env.dir.path().join("xdg-config").join("opencode");
            std::fs::create_dir_all(&cfg_dir).expect("mkdir opencode config");
            std::fs::write(
                cfg_dir.join("opencode.json"),
                json!({
                    "provider": {"google": {"options": {"baseURL": format!("{}/v1beta", m.base_url()), "apiKey": "x"}}},
                    "model": "google/gemini-2.5-flash",
                    "small_model": "google/gemini-2.5-flash",
                    "autoupdate": false,
                    "share": "disabled",
                })
                .to_string(),
            )
            .expect("opencode config");
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
        (a, _) => panic!("no model server for {a}"),
    }
    env
}

/// What the model was shown in its last main request.
pub fn last_seen(model: &Model<'_>) -> String {
    match model {
        Model::Gemini(m) => contents_text(&m.model_requests().last().expect("a request").body),
        Model::Chat(m) => messages_text(&m.model_requests().last().expect("a request").body),
    }
}

/// Each main model request, shortened: for a failure's message.
pub fn requests_summary(model: &Model<'_>) -> String {
    let reqs = match model {
        Model::Gemini(m) => m
            .model_requests()
            .iter()
            .map(|r| contents_text(&r.body))
            .collect::<Vec<_>>(),
        Model::Chat(m) => m
            .model_requests()
            .iter()
            .map(|r| messages_text(&r.body))
            .collect(),
    };
    reqs.iter()
        .enumerate()
        .map(|(i, t)| {
            let tail: String = t
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("request {i}: ...{tail}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The model's step that has `agent` write `content` to `path` with its own write tool.
pub fn write_step(agent: &str, path: &Path, content: &str) -> Value {
    match agent {
        "opencode" => {
            json!({"call": {"name": "write", "args": {"filePath": path.display().to_string(), "content": content}}})
        }
        _ => write_call(path, content),
    }
}

pub fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Delegate `write hello.txt` (the agent writes it), converse (the model sees the history),
/// end; the permission decision is shown in check_session with its rule.
pub async fn writes_converses_and_ends(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, model_ref(&model));
    let env_target = env.work.join("hello.txt");
    set_script(
        &model,
        json!({"turns": [
            write_step(agent, &env_target, &format!("hello from {agent}\n")),
            {"text": "I wrote hello.txt."},
            {"text": "You asked me to write hello.txt; I did."},
        ]}),
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "write hello.txt", "adapter": agent, "mode": "sync", "wait_seconds": 120}),
        )
        .await;
    let id = text(&r["session_id"]);
    let r = if r["status"] == "running" {
        wait_done(&z, &id).await
    } else {
        r
    };
    assert_eq!(r["status"], "idle", "{r:#}\n{}", z.stderr());
    assert_eq!(r["adapter"], agent);
    assert_eq!(
        std::fs::read_to_string(&env_target).expect("hello.txt written"),
        format!("hello from {agent}\n")
    );
    assert_eq!(r["response"], "I wrote hello.txt.", "{r:#}");

    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "what did you do?", "wait_seconds": 120}),
        )
        .await;
    let c = if c["status"] == "running" {
        wait_done(&z, &id).await
    } else {
        c
    };
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(
        c["response"],
        "You asked me to write hello.txt; I did.",
        "{c:#}\n{}",
        requests_summary(&model)
    );
    let seen = last_seen(&model);
    assert!(
        seen.contains("write hello.txt")
            && seen.contains("I wrote hello.txt.")
            && seen.contains("what did you do?"),
        "the model sees the history: {seen}"
    );
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "completed", "summary": "ok"}),
        )
        .await;
    assert_eq!(e["status"], "completed", "{e:#}");
}

fn model_ref<'a>(m: &Model<'a>) -> Model<'a> {
    match m {
        Model::Gemini(g) => Model::Gemini(g),
        Model::Chat(c) => Model::Chat(c),
    }
}

fn set_script(m: &Model<'_>, script: Value) {
    match m {
        Model::Gemini(g) => g.set_script(script),
        Model::Chat(c) => c.set_script(script),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_through_serve_writes_converses_and_ends() {
    let mock = GeminiMock::start(json!({}));
    writes_converses_and_ends("gemini", Model::Gemini(&mock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_through_serve_writes_converses_and_ends() {
    let mock = ChatMock::start(json!({}));
    writes_converses_and_ends("qwen", Model::Chat(&mock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_through_serve_writes_converses_and_ends() {
    let mock = GeminiMock::start(json!({}));
    writes_converses_and_ends("opencode", Model::Gemini(&mock)).await;
}
