//! Executors declared in the configuration (`[executors.NAME]`): a real ACP CLI (OpenCode)
//! under a name of the user's choosing, through `zwarm serve` against the scripted model
//! server; declared in the project file, it is ignored and said so.

use serde_json::{Value, json};

use super::acp_cli;
use super::serve::{Model, acp_env, project_config, text, user_config, wait_done, write_step};
use super::support::harness::Zwarm;
use super::support::mock_gemini::GeminiMock;

/// `[executors.myagent]`: OpenCode's ACP command line, asking before it edits.
fn declaration() -> String {
    format!(
        r#"default_adapter = "myagent"

[executors.myagent]
protocol = "acp"
command = [{program:?}, "acp"]
env = {{ OPENCODE_CONFIG_CONTENT = '{{"permission":{{"edit":"ask","bash":"ask","webfetch":"ask"}}}}' }}
auth_env = ["GEMINI_API_KEY"]
"#,
        program = acp_cli("opencode").display().to_string()
    )
}

async fn finished(z: &Zwarm, r: Value) -> Value {
    if r["status"] == "running" {
        wait_done(z, &text(&r["session_id"])).await
    } else {
        r
    }
}

/// Declared in the user file: in the tools' schemas, the default adapter, a delegate that
/// writes a file through zwarm's permission policy, a converse that continues the session;
/// once the declaration is gone, its session lists as unreadable with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_executor_writes_and_converses_through_serve() {
    let mock = GeminiMock::start(json!({}));
    let env = acp_env("opencode", Model::Gemini(&mock));
    user_config(&env, &declaration());
    let target = env.work.join("hello.txt");
    mock.set_script(json!({"turns": [
        write_step("opencode", &target, "hello from myagent\n"),
        {"text": "I wrote hello.txt."},
        {"text": "You asked me to write hello.txt; I did."},
    ]}));
    let z = Zwarm::start(&env, &[]).await;

    // The tools offer it by name: delegate's description and the adapter enum of the results.
    let tools = z.client.list_all_tools().await.expect("tools/list");
    let listed = serde_json::to_string(&tools).expect("json");
    assert!(listed.contains("`myagent`"), "delegate names it");
    assert!(listed.contains("\"myagent\""), "the Adapter enum holds it");

    // No adapter given: the configured default_adapter, the declared executor.
    let r = z
        .ok(
            "delegate",
            json!({"task": "write hello.txt", "mode": "sync", "wait_seconds": 120}),
        )
        .await;
    let id = text(&r["session_id"]);
    let r = finished(&z, r).await;
    assert_eq!(r["status"], "idle", "{r:#}\n{}", z.stderr());
    assert_eq!(r["adapter"], "myagent");
    assert_eq!(r["response"], "I wrote hello.txt.", "{r:#}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("hello.txt written"),
        "hello from myagent\n"
    );

    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "what did you do?", "wait_seconds": 120}),
        )
        .await;
    let c = finished(&z, c).await;
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    assert_eq!(c["response"], "You asked me to write hello.txt; I did.");
    let seen = super::serve::last_seen(&Model::Gemini(&mock));
    assert!(
        seen.contains("write hello.txt") && seen.contains("what did you do?"),
        "the model sees the history: {seen}"
    );

    // Named explicitly, too; a built-in name is still the built-in executor.
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["adapter"], "myagent", "{s:#}");
    let m = z
        .err(
            "delegate",
            json!({"task": "x", "adapter": "myagnet", "mode": "async"}),
        )
        .await;
    assert!(m.contains("`myagent`"), "the error lists it: {m}");

    // Declared no more: its stored session is listed as unreadable, with the reason.
    z.signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(10))
        .await;
    drop(z);
    user_config(&env, "");
    let z = Zwarm::start(&env, &[]).await;
    let l = z.ok("list_sessions", json!({})).await;
    let row = l["sessions"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["session_id"] == id.as_str()))
        .unwrap_or_else(|| panic!("the session is still listed: {l:#}"))
        .clone();
    assert_eq!(row["status"], "unreadable", "{row}");
    assert!(
        text(&row["task"]).contains("unknown adapter `myagent`"),
        "{row}"
    );
}

/// The same declaration in the project file (which executors can write): ignored, with a
/// `config_ignored` event saying why; the name is unknown to delegate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_executor_in_the_project_file_is_ignored() {
    let mock = GeminiMock::start(json!({}));
    let env = acp_env("opencode", Model::Gemini(&mock));
    project_config(
        &env,
        &declaration().replace("default_adapter = \"myagent\"\n", ""),
    );
    let z = Zwarm::start(&env, &[]).await;
    let m = z
        .err(
            "delegate",
            json!({"task": "write hello.txt", "adapter": "myagent", "mode": "async"}),
        )
        .await;
    assert!(m.contains("unknown adapter `myagent`"), "{m}");
    let tools =
        serde_json::to_string(&z.client.list_all_tools().await.expect("tools/list")).expect("json");
    assert!(!tools.contains("myagent"), "not offered");
    let events = env.events();
    let ignored = events
        .lines()
        .find(|l| l.contains("\"event\":\"config_ignored\"") && l.contains("executors.myagent"))
        .unwrap_or_else(|| panic!("no config_ignored event for executors.myagent:\n{events}"));
    assert!(
        ignored.contains("only a trusted layer may declare the executor `myagent`")
            && ignored.contains("the program zwarm runs"),
        "{ignored}"
    );
    assert!(mock.model_requests().is_empty(), "nothing ran");
}
