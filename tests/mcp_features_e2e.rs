//! Beyond tools: progress notifications, session resources and subscriptions, the
//! `orchestrate` prompt, bounded answers and paging — through `zwarm serve` and real CLIs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use rmcp::model::{
    GetPromptRequestParams, ReadResourceRequestParams, ResourceContents, SubscribeRequestParams,
};
use serde_json::{Value, json};
use support::harness::{Env, Zwarm, keyed_script};
use support::mock_anthropic::AnthropicMock;
use support::mock_openai::OpenAiMock;

fn codex_env(extra: Value) -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let mut s = keyed_script("codex_keyed.json", &env.work);
    if let Value::Object(m) = extra {
        for (k, v) in m {
            s["scenarios"][k] = v;
        }
    }
    mock.set_script(s);
    (mock, env)
}

async fn read(z: &Zwarm, uri: &str) -> Value {
    let r = z
        .client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .unwrap_or_else(|e| panic!("read {uri}: {e}"));
    let ResourceContents::TextResourceContents { text, .. } = &r.contents[0] else {
        panic!("expected text")
    };
    serde_json::from_str(text).expect("resource is JSON")
}

async fn progress_messages(z: &Zwarm) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(300)).await; // notifications are handled asynchronously
    let mut p = z.recorder.progress.lock().unwrap().clone();
    // rmcp's client handles each notification in its own task, so arrival order is not wire
    // order; the progress value (strictly increasing as sent) is.
    p.sort_by(|a, b| a.progress.total_cmp(&b.progress));
    let values: Vec<f64> = p.iter().map(|n| n.progress).collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "progress values must be distinct and increasing: {values:?}"
    );
    p.into_iter().filter_map(|n| n.message).collect()
}

fn position(msgs: &[String], needle: &str) -> usize {
    msgs.iter()
        .position(|m| m.contains(needle))
        .unwrap_or_else(|| panic!("no progress message contains {needle:?}: {msgs:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_delegate_streams_progress_naming_the_command_and_the_file() {
    let (_mock, env) = codex_env(json!({}));
    let z = Zwarm::start(&env, &[]).await;
    // rmcp's client attaches a progressToken to every request, as Claude Code and Codex do.
    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert_eq!(r["status"], "idle");
    let msgs = progress_messages(&z).await;
    let ran = position(
        &msgs,
        "codex ran `echo hello-from-shell > from_shell.txt && ls -la && pwd` — exit 0",
    );
    let file = position(&msgs, "hello.py");
    let done = position(&msgs, "codex: turn finished");
    assert!(ran < file && file < done, "out of order: {msgs:#?}");
    assert!(msgs[file].contains("codex created"), "{msgs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_progress_names_its_edits() {
    let mock = AnthropicMock::start(json!({}));
    let env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok("delegate", json!({"task": "@@tools", "adapter": "claude"}))
        .await;
    assert_eq!(r["status"], "idle");
    let msgs = progress_messages(&z).await;
    let ran = position(&msgs, "claude ran `echo hi > out.txt && ls` — exit 0");
    let wrote = position(&msgs, "written.txt");
    assert!(msgs[wrote].starts_with("claude created"), "{msgs:#?}");
    assert!(ran < wrote && wrote < position(&msgs, "claude: turn finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_resources_with_full_transcripts_and_updates() {
    let (_mock, env) = codex_env(json!({
        "second": [
            {"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": "echo two > two.txt"}}}]},
            {"items": [{"custom_tool_call": {"name": "apply_patch", "input": "*** Begin Patch\n*** Add File: second.py\n+print(2)\n*** End Patch\n"}}]},
            {"items": [{"message": "second turn done"}]}
        ]
    }));
    let z = Zwarm::start(&env, &[]).await;
    let resources = z.client.list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert!(
        uris.contains(&"zwarm://sessions") && uris.contains(&"zwarm://events"),
        "{uris:?}"
    );
    let templates = z.client.list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "zwarm://sessions/{id}")
    );

    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let uri = format!("zwarm://sessions/{id}");
    assert_eq!(r["transcript_uri"], uri.as_str());
    #[allow(deprecated)]
    z.client
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let c = z
        .ok("converse", json!({"session_id": id, "message": "@@second"}))
        .await;
    assert_eq!(c["response"], "second turn done", "{c}");

    let t = read(&z, &uri).await;
    assert_eq!(t["session_id"], id.as_str());
    let turns = t["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(
        turns[0]["commands"][0]["command"],
        "echo hello-from-shell > from_shell.txt && ls -la && pwd"
    );
    assert_eq!(turns[0]["commands"][0]["exit_code"], 0);
    assert!(
        turns[0]["files_changed"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("hello.py")
    );
    assert_eq!(turns[1]["commands"][0]["command"], "echo two > two.txt");
    assert!(
        turns[1]["files_changed"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("second.py")
    );
    assert_eq!(turns[1]["response"], "second turn done");
    assert!(turns[1]["usage"]["input_tokens"].as_u64().unwrap() > 0);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let updated = z.recorder.updated.lock().unwrap().clone();
    assert!(
        updated.iter().filter(|u| **u == uri).count() >= 1,
        "subscribed session sent no updates: {updated:?}"
    );

    let index = read(&z, "zwarm://sessions").await;
    assert_eq!(index["sessions"][0]["session_id"], id.as_str());
    let events = read(&z, "zwarm://events").await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "turn_finished" && e["session_id"] == id.as_str())
    );
    let missing = z
        .client
        .read_resource(ReadResourceRequestParams::new(
            "zwarm://sessions/nope-nope-nope",
        ))
        .await;
    assert!(missing.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrate_prompt_carries_the_task() {
    let (_mock, env) = codex_env(json!({}));
    let z = Zwarm::start(&env, &[]).await;
    let prompts = z.client.list_all_prompts().await.unwrap();
    assert!(prompts.iter().any(|p| p.name == "orchestrate"));
    let mut args = serde_json::Map::new();
    args.insert("task".into(), json!("port the billing module to Rust"));
    let p = z
        .client
        .get_prompt(GetPromptRequestParams::new("orchestrate").with_arguments(args))
        .await
        .unwrap();
    let text = serde_json::to_string(&p.messages).unwrap();
    assert!(text.contains("port the billing module to Rust"));
    assert!(
        text.contains("acceptance criteria")
            && text.contains("check_session")
            && text.contains("end_session")
    );
    let info = z.client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "zwarm");
    assert!(
        info.instructions
            .as_deref()
            .unwrap_or("")
            .contains("check_session")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_is_capped_in_the_result_and_whole_in_the_resource() {
    let big = format!("BEGIN{}END", "0123456789".repeat(19_999));
    assert_eq!(big.len(), 199_998);
    let (_mock, env) = codex_env(json!({"big": [{"items": [{"message": big}]}]}));
    let z = Zwarm::start(&env, &[]).await;
    let r = z.ok("delegate", json!({"task": "@@big"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    let resp = r["response"].as_str().unwrap();
    assert!(resp.chars().count() < 8_300, "{}", resp.len());
    assert!(resp.starts_with("BEGIN") && resp.ends_with("END"));
    let id = r["session_id"].as_str().unwrap();
    assert!(resp.contains(&format!("zwarm://sessions/{id}")));
    assert_eq!(r["response_truncated"], true);
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert!(s["response"].as_str().unwrap().len() < 8_300);
    assert!(
        s.to_string().len() < 20_000,
        "check_session must stay bounded"
    );
    let t = read(&z, &format!("zwarm://sessions/{id}")).await;
    assert_eq!(t["turns"][0]["response"].as_str().unwrap(), big);

    // list_sessions pages.
    z.ok("delegate", json!({"task": "small"})).await;
    let p1 = z.ok("list_sessions", json!({"limit": 1})).await;
    assert_eq!(p1["count"], 1);
    assert_eq!(p1["total"], 2);
    assert_eq!(p1["next_offset"], 1);
    let p2 = z
        .ok("list_sessions", json!({"limit": 1, "offset": 1}))
        .await;
    assert_eq!(p2["count"], 1);
    assert!(p2["next_offset"].is_null());
    assert_ne!(
        p1["sessions"][0]["session_id"],
        p2["sessions"][0]["session_id"]
    );
    // So does the index resource, and its next page is named.
    let r1 = read(&z, "zwarm://sessions?limit=1").await;
    assert_eq!(
        (r1["count"].clone(), r1["total"].clone()),
        (json!(1), json!(2))
    );
    let next = r1["next_uri"].as_str().unwrap_or_else(|| panic!("{r1}"));
    let r2 = read(&z, next).await;
    assert_eq!(r2["count"], 1, "{r2}");
    assert!(r2["next_uri"].is_null(), "{r2}");
    assert_eq!(
        r2["sessions"][0]["session_id"],
        p2["sessions"][0]["session_id"]
    );
}

/// Through `zwarm serve`: arguments no executor can take are refused up front, naming the
/// field, and start nothing (the model server gets no request); the session index is paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_up_front_and_name_the_field() {
    let (mock, env) = codex_env(json!({}));
    let z = Zwarm::start(&env, &[]).await;
    let cases = [
        (
            "delegate",
            json!({"task": "write x\u{0}y", "mode": "async"}),
            "`task` contains a NUL",
        ),
        (
            "delegate",
            json!({"task": "write x", "model": "gpt\u{0}5", "mode": "async"}),
            "`model` contains a NUL",
        ),
        (
            "delegate",
            json!({"task": "write x", "model": "-c sandbox=none", "mode": "async"}),
            "model `-c sandbox=none`",
        ),
        (
            "delegate",
            json!({"task": ["write x"], "mode": "async"}),
            "`task` must be a string",
        ),
        (
            "list_sessions",
            json!({"limit": "ten"}),
            "`limit` must be a number",
        ),
        (
            "check_session",
            json!({"session_ids": ["a", "b\u{0}"]}),
            "`session_ids[1]` contains a NUL",
        ),
    ];
    for (tool, args, want) in cases {
        let e = z.err(tool, args).await;
        assert!(e.contains(want), "{tool}: {e}");
    }
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["total"], 0, "{l}");
    assert!(mock.model_requests().is_empty());
    let index = read(&z, "zwarm://sessions?limit=5").await;
    assert_eq!(index["total"], 0, "{index}");
    assert_eq!(index["next_uri"], Value::Null, "{index}");
}

/// An executor whose `#!` line names an interpreter that does not exist is refused by
/// `delegate` up front, saying so; no session is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_with_a_bad_interpreter_is_refused_before_a_session_exists() {
    use std::os::unix::fs::PermissionsExt;
    let (mock, mut env) = codex_env(json!({}));
    let fake = env.dir.path().join("codex-bad-interpreter");
    std::fs::write(&fake, "#!/nonexistent/node\nconsole.log('hi')\n").expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    env.set("ZWARM_CODEX_BIN", &fake.display().to_string());
    let z = Zwarm::start(&env, &[]).await;
    let e = z
        .err("delegate", json!({"task": "write x", "mode": "async"}))
        .await;
    assert!(
        e.contains("/nonexistent/node") && e.contains("interpreter"),
        "{e}"
    );
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["total"], 0, "{l}");
    assert!(mock.model_requests().is_empty());
}

/// The wire itself, against the binary: an unparseable line, invalid UTF-8 and a line over the
/// size limit each get a −32700 reply (the limit named), and the server goes on answering.
/// Closing stdin stops it, and the log says that stdin closed (not "signal").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zwarm_serve_answers_bad_lines_with_parse_errors() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let env = support::harness::Env::without_clis("wire");
    let mut child = env
        .command(&["--set", "max_task_bytes=2000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn zwarm serve");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a reply within 30 s")
            .expect("read stdout")
            .expect("a line, not EOF");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout is JSON-RPC only: {e}: {line}"))
    };

    stdin.write_all(b"this is not json\n").await.expect("write");
    let r = next().await;
    assert_eq!(r["error"]["code"], -32700, "{r}");

    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\xff\"}\n")
        .await
        .expect("write");
    let r = next().await;
    assert_eq!(r["error"]["code"], -32700, "{r}");

    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}\n",
        "a".repeat(17 * 1024 * 1024)
    );
    stdin.write_all(big.as_bytes()).await.expect("write");
    let r = next().await;
    assert_eq!(r["error"]["code"], -32700, "{r}");
    let msg = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("bytes"), "the limit is named: {msg}");

    // Still serving: a real initialize is answered.
    let init = json!({"jsonrpc":"2.0","id":3,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"wire","version":"1"}}});
    stdin
        .write_all(format!("{init}\n").as_bytes())
        .await
        .expect("write");
    let r = next().await;
    assert_eq!(r["id"], 3, "{r}");
    assert!(r["result"]["serverInfo"].is_object(), "{r}");

    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exits after stdin closes")
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin closed"), "{err}");
    assert!(!err.contains("reason=signal"), "{err}");
}
