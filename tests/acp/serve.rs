//! gemini, qwen and opencode through `zwarm serve` and the five tools, with the real CLIs
//! against the scripted model servers.

use std::path::Path;

use serde_json::{Value, json};

use super::support::harness::{Env, Zwarm};
use super::support::mock_chat::{ChatMock, messages_text};
use super::support::mock_gemini::{GeminiMock, contents_text};
use super::{acp_cli, write_call};

/// A sync `delegate` or `converse` reply, or, when it answered `running` (the turn outlived
/// the call's wait), the turn's end.
pub async fn to_end(z: &Zwarm, reply: Value) -> Value {
    if reply["status"] == "running" {
        wait_done(z, &text(&reply["session_id"])).await
    } else {
        reply
    }
}

/// Wait (check_session with wait_seconds) until the session is neither running, queued nor
/// waiting for an approval.
pub async fn wait_done(z: &Zwarm, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while std::time::Instant::now() < deadline {
        let s = z
            .ok(
                "check_session",
                json!({"session_id": id, "wait_seconds": 5}),
            )
            .await;
        match s["status"].as_str() {
            Some("running" | "queued") => {}
            // check_session returns at once while an ask waits: look again shortly.
            Some("needs_approval") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            _ => return s,
        }
    }
    panic!("session {id} still running after 5 minutes");
}

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
    let r = to_end(&z, r).await;
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
    let c = to_end(&z, c).await;
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

pub fn model_ref<'a>(m: &Model<'a>) -> Model<'a> {
    match m {
        Model::Gemini(g) => Model::Gemini(g),
        Model::Chat(c) => Model::Chat(c),
    }
}

pub fn model_requests(m: &Model<'_>) -> usize {
    match m {
        Model::Gemini(g) => g.model_requests().len(),
        Model::Chat(c) => c.model_requests().len(),
    }
}

pub fn set_script(m: &Model<'_>, script: Value) {
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

/// `zwarm show ID` (text, and `--json`'s `permission_decisions`), run from the terminal.
pub fn show(env: &Env, id: &str) -> (String, Vec<Value>) {
    let run = |json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"));
        c.args(["show", id]);
        if json {
            c.arg("--json");
        }
        let out = c
            .arg("--state-dir")
            .arg(&env.state)
            .current_dir(&env.work)
            .envs(env.vars.iter().cloned())
            .output()
            .expect("zwarm show");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let v: Value = serde_json::from_str(&run(true)).expect("show --json");
    let decisions = v["permission_decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (run(false), decisions)
}

/// The decisions `zwarm show` lists, as (turn, outcome, kind, rule, paths).
fn decided(d: &[Value]) -> Vec<(u64, String, String, String, String)> {
    d.iter()
        .map(|d| {
            (
                d["turn"].as_u64().unwrap_or(0),
                text(&d["outcome"]),
                text(&d["kind"]),
                text(&d["rule"]),
                d["paths"].to_string(),
            )
        })
        .collect()
}

/// Write zwarm's user config file (a trusted layer) in the test's environment.
pub fn user_config(env: &Env, toml: &str) {
    let dir = env.dir.path().join("xdg-config").join("zwarm");
    std::fs::create_dir_all(&dir).expect("mkdir zwarm config");
    std::fs::write(dir.join("config.toml"), toml).expect("write config");
}

/// Write the project file (untrusted) in the work dir.
pub fn project_config(env: &Env, toml: &str) {
    let dir = env.work.join(".zwarm");
    std::fs::create_dir_all(&dir).expect("mkdir .zwarm");
    std::fs::write(dir.join("config.toml"), toml).expect("write project config");
}

/// A configured rule denies an edit the level allows: the file stays as it was, the result
/// reports the denial with the rule, and check_session shows the decision. The project file
/// adds a deny rule (kept) and an allow rule (dropped: it may only make the policy stricter).
pub async fn policy_denial(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, model_ref(&model));
    let secret = env.work.join("secret.txt");
    let notes = env.work.join("notes.txt");
    let other = env.work.join("other.txt");
    user_config(
        &env,
        "[[acp.rules]]\nverdict = \"deny\"\nkinds = [\"edit\"]\npattern = \"secret\"\n",
    );
    project_config(
        &env,
        "[[acp.rules]]\nverdict = \"allow\"\npattern = \"secret\"\n\n[[acp.rules]]\nverdict = \"deny\"\nkinds = [\"edit\"]\npattern = \"other\"\n",
    );
    // gemini tells the model about a refusal and goes on; qwen and opencode end the turn.
    let mut turns = vec![write_step(agent, &secret, "overwritten\n")];
    if agent == "gemini" {
        turns.push(json!({"text": "I could not write it."}));
    }
    turns.extend([
        write_step(agent, &notes, "notes\n"),
        write_step(agent, &other, "other\n"),
        json!({"text": "Wrote notes, not other."}),
    ]);
    set_script(&model, json!({ "turns": turns }));
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "overwrite secret.txt", "adapter": agent, "wait_seconds": 120}),
        )
        .await;
    let id = text(&r["session_id"]);
    let r = to_end(&z, r).await;
    assert_eq!(r["status"], "idle", "{r:#}\n{}", z.stderr());
    // (A new file: qwen refuses by itself to overwrite a file it has not read.)
    assert!(!secret.exists(), "the denied write did not happen");
    let denials = r["permission_denials"].as_array().expect("denials");
    assert_eq!(denials.len(), 1, "{r:#}");
    assert_eq!(denials[0]["input"]["rule"], "rule 1 (deny edit /secret/)");
    assert_eq!(denials[0]["input"]["decision"], "deny");
    let c = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(
        c["turns"][0]["permission_denials"][0]["input"]["rule"], "rule 1 (deny edit /secret/)",
        "{c:#}"
    );

    // The project's allow rule was dropped; its deny rule applies, the level allows the rest.
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "write notes and other", "wait_seconds": 120}),
        )
        .await;
    let c = to_end(&z, c).await;
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(
        std::fs::read_to_string(&notes)
            .unwrap_or_else(|e| panic!("notes written: {e}\n{c:#}\n{}", requests_summary(&model))),
        "notes\n"
    );
    assert!(!other.exists(), "the project's deny rule held");
    let denials = c["permission_denials"].as_array().expect("denials");
    assert_eq!(denials.len(), 1, "{c:#}");
    assert_eq!(
        denials[0]["input"]["rule"],
        "rule 2 of the project file (deny edit /other/)"
    );
    let check = z.ok("check_session", json!({"session_id": id})).await;
    let progress = check["recent_progress"].to_string();
    assert!(
        progress
            .contains("permission allowed by default workspace-write: edit inside the working dir"),
        "the allowed write is shown with its rule: {progress}"
    );
    // `zwarm show` lists every decision with its rule, allowed ones too.
    let (shown, d) = show(&env, &id);
    let d = decided(&d);
    assert_eq!(d.len(), 3, "{d:#?}\n{shown}");
    assert_eq!(
        (d[0].0, d[0].1.as_str(), d[0].2.as_str(), d[0].3.as_str()),
        (1, "deny", "edit", "rule 1 (deny edit /secret/)")
    );
    assert!(d[0].4.contains("secret.txt"), "{d:#?}");
    assert_eq!(
        (d[1].0, d[1].1.as_str(), d[1].3.as_str()),
        (
            2,
            "allow",
            "default workspace-write: edit inside the working dir"
        )
    );
    assert!(d[1].4.contains("notes.txt"), "{d:#?}");
    assert_eq!(
        (d[2].0, d[2].1.as_str(), d[2].3.as_str()),
        (2, "deny", "rule 2 of the project file (deny edit /other/)")
    );
    assert!(shown.contains("  permissions"), "{shown}");
    assert!(
        shown.contains("[default workspace-write: edit inside the working dir]")
            && shown.contains("[rule 1 (deny edit /secret/)]"),
        "{shown}"
    );
}

/// An `ask` pauses the turn: the session shows needs_approval with what is asked; the
/// orchestrator allows it through converse, and the turn goes on. A second ask is denied by a
/// person with `zwarm approve --deny`.
pub async fn ask_answered(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, model_ref(&model));
    let target = env.work.join("hello.txt");
    let refused = env.work.join("refused.txt");
    user_config(
        &env,
        "[acp]\nask_timeout_seconds = 300\n\n[[acp.rules]]\nverdict = \"ask\"\nkinds = [\"edit\"]\n",
    );
    set_script(
        &model,
        json!({"turns": [
            write_step(agent, &target, "approved\n"),
            {"text": "I wrote hello.txt."},
            write_step(agent, &refused, "never\n"),
            {"text": "It was refused."},
        ]}),
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "write hello.txt", "adapter": agent, "wait_seconds": 120}),
        )
        .await;
    let id = text(&r["session_id"]);
    // The sync call returns as soon as the turn asks.
    let r = if r["status"] == "running" {
        z.ok(
            "check_session",
            json!({"session_id": id, "wait_seconds": 120}),
        )
        .await
    } else {
        r
    };
    assert_eq!(r["status"], "needs_approval", "{r:#}\n{}", z.stderr());
    let ap = &r["approval"];
    assert_eq!(ap["kind"], "edit", "{r:#}");
    assert_eq!(ap["rule"], "rule 1 (ask edit)");
    assert!(ap["paths"].to_string().contains("hello.txt"), "{ap}");
    assert!(!target.exists(), "nothing is written before the answer");
    let listed = z.ok("list_sessions", json!({})).await;
    assert_eq!(
        listed["sessions"][0]["status"], "needs_approval",
        "{listed:#}"
    );
    let waiting = z
        .ok("list_sessions", json!({"status": "needs_approval"}))
        .await;
    assert_eq!(waiting["count"], 1, "{waiting:#}");
    assert_eq!(waiting["sessions"][0]["session_id"], id.as_str());
    let ps = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"))
        .args(["ps", "--json", "--state-dir"])
        .arg(&env.state)
        .current_dir(&env.work)
        .envs(env.vars.iter().cloned())
        .output()
        .expect("zwarm ps");
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("needs_approval"),
        "zwarm ps shows it: {}",
        String::from_utf8_lossy(&ps.stdout)
    );

    // A wrong request id is refused with what is pending.
    let e = z
        .err(
            "converse",
            json!({"session_id": id, "approval": {"request_id": "nope", "decision": "allow"}}),
        )
        .await;
    assert!(e.contains("not the pending one"), "{e}");
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "approval": {"request_id": ap["request_id"], "decision": "allow"}, "wait_seconds": 120}),
        )
        .await;
    let c = to_end(&z, c).await;
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(c["response"], "I wrote hello.txt.");
    assert_eq!(
        std::fs::read_to_string(&target).expect("written"),
        "approved\n"
    );

    // A person denies the next one from the terminal.
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "write refused.txt", "wait_seconds": 120}),
        )
        .await;
    let c = if c["status"] == "running" {
        z.ok(
            "check_session",
            json!({"session_id": id, "wait_seconds": 120}),
        )
        .await
    } else {
        c
    };
    assert_eq!(c["status"], "needs_approval", "{c:#}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"))
        .args(["approve", &id[..8], "--deny", "--state-dir"])
        .arg(&env.state)
        .current_dir(&env.work)
        .envs(env.vars.iter().cloned())
        .output()
        .expect("zwarm approve");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("denied"),
        "{out:?}"
    );
    let c = wait_done(&z, &id).await;
    assert_eq!(c["status"], "idle", "{c:#}");
    assert!(!refused.exists(), "the denied write did not happen");
    let last = c["turns"]
        .as_array()
        .and_then(|t| t.last())
        .expect("turns")
        .clone();
    assert!(
        last["permission_denials"][0]["input"]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{last:#}"
    );
    let (shown, d) = show(&env, &id);
    let d = decided(&d);
    assert_eq!(d.len(), 2, "{d:#?}\n{shown}");
    assert_eq!(
        (d[0].0, d[0].1.as_str(), d[0].3.as_str()),
        (1, "approved", "rule 1 (ask edit); approved")
    );
    assert!(d[0].4.contains("hello.txt"), "{d:#?}");
    assert_eq!(
        (d[1].0, d[1].1.as_str(), d[1].3.as_str()),
        (2, "refused", "rule 1 (ask edit); refused")
    );
    assert!(
        shown.contains("approved") && shown.contains("refused"),
        "{shown}"
    );
}

/// An ask nobody answers is denied when `acp.ask_timeout_seconds` runs out.
pub async fn ask_times_out(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, model_ref(&model));
    let target = env.work.join("hello.txt");
    user_config(
        &env,
        "[acp]\nask_timeout_seconds = 2\n\n[[acp.rules]]\nverdict = \"ask\"\nkinds = [\"edit\"]\n",
    );
    set_script(
        &model,
        json!({"turns": [
            write_step(agent, &target, "never\n"),
            {"text": "Nobody answered."},
        ]}),
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "write hello.txt", "adapter": agent, "wait_seconds": 120}),
        )
        .await;
    let id = text(&r["session_id"]);
    let r = wait_done(&z, &id).await;
    assert_eq!(r["status"], "idle", "{r:#}\n{}", z.stderr());
    assert!(!target.exists());
    let denial = &r["turns"][0]["permission_denials"][0]["input"];
    assert_eq!(
        denial["rule"], "rule 1 (ask edit); no answer within 2 s, so denied",
        "{r:#}"
    );
    assert!(r["approval"].is_null(), "nothing is pending any more");
    let (shown, d) = show(&env, &id);
    let d = decided(&d);
    assert_eq!(d.len(), 1, "{d:#?}\n{shown}");
    assert_eq!(
        (d[0].1.as_str(), d[0].2.as_str()),
        ("timed out", "edit"),
        "{d:#?}"
    );
    assert!(shown.contains("timed out"), "{shown}");
}

/// The agent killed mid-turn: the turn fails with the reason, and no process of it is left.
pub async fn dying_mid_turn(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, model_ref(&model));
    set_script(
        &model,
        json!({"turns": [{"text": "too late", "stall_s": 600}]}),
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "take your time", "adapter": agent, "mode": "async"}),
        )
        .await;
    let id = text(&r["session_id"]);
    // Wait until the model request is in flight, then kill the agent (not the bridge).
    while model_requests(&model) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The agent runs in the turn (a bridge running its own agent), or in zwarm serve's pool.
    let agents: Vec<i32> = super::support::harness::turn_pids(&id)
        .into_iter()
        .filter(|p| !super::support::harness::cmdline(*p).contains("zwarm-acp"))
        .chain(super::pool::pool_pids(&id))
        .collect();
    assert!(!agents.is_empty(), "the agent runs in the turn");
    for p in &agents {
        // SAFETY: a plain signal to a process of this test's turn.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let r = wait_done(&z, &id).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let e = text(&r["error"]);
    assert!(
        e.contains("killed by signal 9")
            || e.contains("closed its output")
            || e.contains("ended during"),
        "the reason: {e}"
    );
    // Every process of the turn is gone once the turn has ended; the pool drops the dead
    // agent (its group is killed just after the turn's end).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !super::pool::pool_pids(&id).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut left = super::support::harness::turn_pids(&id);
    left.extend(super::pool::pool_pids(&id));
    assert!(
        left.is_empty(),
        "left: {:?}",
        left.iter()
            .map(|p| super::support::harness::cmdline(*p))
            .collect::<Vec<_>>()
    );
}

/// A zwarm restart: the session stays conversable (session/load where the agent can, else a
/// new agent session with a summary of the earlier turns, said in the progress).
pub async fn restart_keeps_it_conversable(agent: &str, model: Model<'_>) {
    let env = acp_env(agent, model_ref(&model));
    let target = env.work.join("hello.txt");
    set_script(
        &model,
        json!({"turns": [
            write_step(agent, &target, "before the restart\n"),
            {"text": "I wrote hello.txt."},
            {"text": "Still here after the restart."},
        ]}),
    );
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "write hello.txt", "adapter": agent, "wait_seconds": 120}),
        )
        .await;
    let id = text(&r["session_id"]);
    let r = to_end(&z, r).await;
    assert_eq!(r["status"], "idle", "{r:#}\n{}", z.stderr());
    z.signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(60))
        .await;
    drop(z);
    let z = Zwarm::start(&env, &[]).await;
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "are you there?", "wait_seconds": 120}),
        )
        .await;
    let c = to_end(&z, c).await;
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(
        c["response"],
        "Still here after the restart.",
        "{c:#}\n{}",
        requests_summary(&model)
    );
    let seen = last_seen(&model);
    assert!(
        seen.contains("write hello.txt")
            && seen.contains("I wrote hello.txt.")
            && seen.contains("are you there?"),
        "the model sees the earlier turn after the restart: {seen}"
    );
    let check = z.ok("check_session", json!({"session_id": id})).await;
    let progress = check["recent_progress"].to_string();
    let loaded =
        check["native_id"] == r["native_id"] || !progress.contains("could not be continued");
    assert!(
        loaded || progress.contains("summary of the earlier turns"),
        "a new agent session is said in the result: {progress}"
    );
}

macro_rules! for_each_agent {
    ($($name:ident => $f:ident;)*) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn gemini() {
                    let mock = GeminiMock::start(json!({}));
                    $f("gemini", Model::Gemini(&mock)).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn qwen() {
                    let mock = ChatMock::start(json!({}));
                    $f("qwen", Model::Chat(&mock)).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn opencode() {
                    let mock = GeminiMock::start(json!({}));
                    $f("opencode", Model::Gemini(&mock)).await;
                }
            }
        )*
    };
}

for_each_agent! {
    policy_denial_leaves_the_file_and_names_the_rule => policy_denial;
    an_ask_is_answered_by_the_orchestrator_or_a_person => ask_answered;
    an_unanswered_ask_is_denied_at_the_timeout => ask_times_out;
    dying_mid_turn_fails_and_leaves_no_process => dying_mid_turn;
    a_restart_keeps_the_session_conversable => restart_keeps_it_conversable;
}
