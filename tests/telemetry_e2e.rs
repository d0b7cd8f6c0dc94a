//! Traces end to end: `zwarm serve` with a fake codex, exporting to an OTLP/HTTP receiver in
//! the test (`support/otlp.rs`, decoding the protobuf requests). Checks the span names and
//! attributes, that a turn is the child of the call that started it (sync and async), that a
//! caller's `_meta.traceparent` parents the call, that the executor gets its turn's
//! `TRACEPARENT`, that with export off nothing is sent, and that a collector that hangs slows
//! no call and the spans it costs are counted at shutdown. Then the real CLIs (against the
//! scripted model servers): codex and claude, with their own trace export turned on, put their
//! spans under the zwarm turn that ran them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use otlp::{Receiver, Span};
use rmcp::model::{CallToolRequestParams, CallToolResult, RequestParamsMeta};
use serde_json::{Value, json};
use support::harness::{Env, Zwarm, keyed_script};
use support::mock_anthropic::AnthropicMock;
use support::mock_openai::OpenAiMock;

/// A fake `codex exec --json`: reads and discards the prompt on stdin, records the trace
/// context it was given, waits `delay` seconds when the working dir has that file, and prints
/// a short turn (two commands, one failing; a file change; an answer; usage).
const FAKE_CODEX: &str = r#"#!/bin/bash
cat >/dev/null
printf '%s %s\n' "${TRACEPARENT:-none}" "${TRACESTATE:-none}" >> "$ZW_FAKE_TRACE_LOG"
[ -f delay ] && sleep "$(cat delay)"
cmd() {
  printf '{"type":"item.started","item":{"id":"%s","type":"command_execution","command":"%s","aggregated_output":"","exit_code":null,"status":"in_progress"}}\n' "$1" "$2"
  printf '{"type":"item.completed","item":{"id":"%s","type":"command_execution","command":"%s","aggregated_output":"","exit_code":%s,"status":"%s"}}\n' "$1" "$2" "$3" "$4"
}
printf '{"type":"thread.started","thread_id":"0199a0a0-0000-7000-8000-000000000001"}\n'
printf '{"type":"turn.started"}\n'
cmd c1 "cargo test" 0 completed
cmd c2 "false" 1 failed
printf '{"type":"item.completed","item":{"id":"f1","type":"file_change","changes":[{"path":"src/lib.rs","kind":"update"}],"status":"completed"}}\n'
printf '{"type":"item.completed","item":{"id":"m1","type":"agent_message","text":"done"}}\n'
printf '{"type":"turn.completed","usage":{"input_tokens":120,"cached_input_tokens":20,"output_tokens":7,"reasoning_output_tokens":3}}\n'
"#;

/// Text of a task that must never reach a span.
const SECRET_TASK: &str = "refactor the quux module with the codeword PAPAYA-7731";

struct Fake {
    env: Env,
    /// One line per executor run: `$TRACEPARENT $TRACESTATE` (`none` when unset).
    trace_log: PathBuf,
    binary: String,
}

fn fake() -> Fake {
    let mut env = Env::without_clis("zwarm-otel-");
    let bin = env.dir.path().join("fake-codex");
    std::fs::write(&bin, FAKE_CODEX).expect("write the fake codex");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let trace_log = env.dir.path().join("executor-trace.log");
    env.vars.extend([
        ("ZW_FAKE_TRACE_LOG".into(), trace_log.display().to_string()),
        // Whatever the test runner's own environment says about traces does not leak in.
        ("TRACEPARENT".into(), String::new()),
        ("TRACESTATE".into(), String::new()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), String::new()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), String::new()),
        ("OTEL_EXPORTER_OTLP_HEADERS".into(), String::new()),
        ("OTEL_SERVICE_NAME".into(), String::new()),
    ]);
    let binary = format!("codex.binary={}", bin.display());
    Fake {
        env,
        trace_log,
        binary,
    }
}

async fn start(f: &Fake, extra: &[&str]) -> Zwarm {
    let mut args = vec!["--set", f.binary.as_str()];
    args.extend_from_slice(extra);
    Zwarm::start(&f.env, &args).await
}

/// A tool call carrying a W3C trace context in `_meta`.
async fn call_traced(
    z: &Zwarm,
    tool: &str,
    args: Value,
    traceparent: &str,
    tracestate: &str,
) -> CallToolResult {
    let Value::Object(map) = args else {
        panic!("args must be an object")
    };
    let mut p = CallToolRequestParams::new(tool.to_string()).with_arguments(map);
    p.set_traceparent(traceparent);
    p.set_tracestate(tracestate);
    tokio::time::timeout(Duration::from_secs(60), z.client.call_tool(p))
        .await
        .expect("the call answers")
        .expect("the call succeeds at the protocol level")
}

/// Wait until the receiver holds what `done` wants.
async fn spans_until(rx: &Receiver, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let start = Instant::now();
    loop {
        let spans = rx.spans();
        if done(&spans) {
            return spans;
        }
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} not received within 20 s; spans so far: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "exactly one `{name}` span: {spans:#?}");
    found[0]
}

fn turn(spans: &[Span], n: u64) -> &Span {
    let found: Vec<&Span> = named(spans, "invoke_agent codex")
        .into_iter()
        .filter(|s| s.attr("zwarm.turn") == &json!(n))
        .collect();
    assert_eq!(found.len(), 1, "exactly one span of turn {n}: {spans:#?}");
    found[0]
}

/// The executor runs' `(traceparent, tracestate)`.
fn executor_contexts(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap_or((l, ""));
            (a.to_string(), b.to_string())
        })
        .collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_delegate_turn_commands_and_executor_join_the_callers_trace() {
    let rx = Receiver::start();
    let mut f = fake();
    f.env.set("OTEL_BSP_SCHEDULE_DELAY", "50");
    // The endpoint without a path gets /v1/traces.
    let endpoint = format!("telemetry.endpoint={}", rx.base());
    let z = start(
        &f,
        &[
            "--set",
            &endpoint,
            "--set",
            "telemetry.headers=Authorization=Basic%20dGVzdDprZXk=,project_id=team/proj",
            "--set",
            "telemetry.service_name=zwarm-under-test",
        ],
    )
    .await;

    let r = call_traced(
        &z,
        "delegate",
        json!({"task": SECRET_TASK, "model": "gpt-test"}),
        &format!("00-{TRACE_ID}-{CALLER_SPAN}-01"),
        "vendor=abc",
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{:?}\n{}", r.content, z.stderr());
    let s = r.structured_content.expect("structuredContent");
    assert_eq!(s["status"], "idle", "{s}");
    let sid = s["session_id"].as_str().expect("session_id").to_string();

    let spans = spans_until(&rx, "the call, the turn and its two commands", |s| {
        named(s, "tools/call delegate").len() == 1
            && named(s, "invoke_agent codex").len() == 1
            && named(s, "command").len() == 2
    })
    .await;

    // The tool call: parented by the caller's traceparent; keys of the arguments, no values.
    let call = one(&spans, "tools/call delegate");
    assert_eq!(call.trace_id, TRACE_ID);
    assert_eq!(call.parent_span_id, CALLER_SPAN);
    assert_eq!(call.service, "zwarm-under-test");
    assert_eq!(call.attr("mcp.method.name"), "tools/call");
    assert_eq!(call.attr("gen_ai.tool.name"), "delegate");
    assert_eq!(
        call.attr("zwarm.tool.argument_keys"),
        &json!(["model", "task"])
    );
    assert_eq!(call.attr("zwarm.session.id"), &json!(sid));
    assert_eq!(call.attr("zwarm.result.status"), "idle");
    assert_eq!(call.attr("zwarm.result.is_error"), &json!(false));
    assert_eq!(call.attr("zwarm.turn"), &json!(1));
    assert_ne!(call.status_code, 2, "not an error");

    // The turn: the call's child, with the GenAI attributes.
    let t = turn(&spans, 1);
    assert_eq!(t.trace_id, TRACE_ID);
    assert_eq!(t.parent_span_id, call.span_id);
    assert_eq!(t.attr("gen_ai.operation.name"), "invoke_agent");
    assert_eq!(t.attr("gen_ai.system"), "openai");
    assert_eq!(t.attr("gen_ai.agent.name"), "codex");
    assert_eq!(t.attr("gen_ai.request.model"), "gpt-test");
    assert_eq!(t.attr("gen_ai.usage.input_tokens"), &json!(120));
    assert_eq!(t.attr("gen_ai.usage.output_tokens"), &json!(7));
    assert_eq!(t.attr("gen_ai.usage.cache_read.input_tokens"), &json!(20));
    assert_eq!(t.attr("gen_ai.conversation.id"), &json!(sid));
    assert_eq!(t.attr("zwarm.turn.status"), "completed");
    assert_eq!(t.attr("process.exit.code"), &json!(0));
    assert!(t.attr("zwarm.turn.duration_ms").is_u64(), "{t:#?}");
    assert!(
        t.start >= call.start && t.start <= call.end,
        "the turn starts inside its call"
    );
    let files = t.events_named("file_changed");
    assert_eq!(files.len(), 1, "{t:#?}");
    assert_eq!(files[0]["file.path"], "src/lib.rs");
    assert_eq!(files[0]["zwarm.change.kind"], "update");
    // The quality watcher's nudge (code changed, no test) is an event of the turn.
    let fired = t.events_named("watcher_fired");
    assert!(
        fired
            .iter()
            .any(|e| e["zwarm.watcher"] == "quality" && e["zwarm.watcher.action"] == "nudge"),
        "{t:#?}"
    );

    // The commands: the turn's children, with exit codes; the failing one is an error.
    let mut cmds = named(&spans, "command");
    cmds.sort_by_key(|c| c.start);
    for c in &cmds {
        assert_eq!(c.parent_span_id, t.span_id);
        assert_eq!(c.trace_id, TRACE_ID);
    }
    assert_eq!(cmds[0].attr("process.command_line"), "cargo test");
    assert_eq!(cmds[0].attr("process.exit.code"), &json!(0));
    assert_ne!(cmds[0].status_code, 2);
    assert_eq!(cmds[1].attr("process.command_line"), "false");
    assert_eq!(cmds[1].attr("process.exit.code"), &json!(1));
    assert_eq!(cmds[1].status_code, 2, "a failed command is an error span");

    // The executor was told its turn's span: same trace, and the caller's tracestate.
    assert_eq!(
        executor_contexts(&f.trace_log),
        vec![(
            format!("00-{TRACE_ID}-{}-01", t.span_id),
            "vendor=abc".to_string()
        )]
    );

    // OTLP/HTTP protobuf, with the configured headers, to /v1/traces.
    let reqs = rx.requests();
    assert!(!reqs.is_empty());
    for q in &reqs {
        assert_eq!(q.path, "/v1/traces");
        assert_eq!(q.content_type, "application/x-protobuf");
        assert_eq!(
            q.headers.get("authorization").map(String::as_str),
            Some("Basic dGVzdDprZXk=")
        );
        assert_eq!(
            q.headers.get("project_id").map(String::as_str),
            Some("team/proj")
        );
    }
    // The task's text is nowhere in a span.
    assert!(!format!("{spans:?}").contains("PAPAYA"), "{spans:#?}");
    // Nor are the headers in the log.
    assert!(!z.stderr().contains("dGVzdDprZXk"), "{}", z.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_turn_keeps_its_call_as_parent_and_shutdown_flushes() {
    let rx = Receiver::start();
    let mut f = fake();
    // Configured by the standard variables alone, with the default 5 s batch delay: what is
    // received was sent by the flush at shutdown.
    f.env.set("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.base());
    std::fs::write(f.env.work.join("delay"), "0.5").expect("write delay");
    let z = start(&f, &[]).await;

    let d = z
        .ok("delegate", json!({"task": "write tests", "mode": "async"}))
        .await;
    assert_eq!(d["status"], "running", "{d}");
    let sid = d["session_id"].as_str().expect("session_id").to_string();
    let c = z
        .ok(
            "check_session",
            json!({"session_id": sid, "wait_seconds": 30}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}");
    let v = z
        .ok(
            "converse",
            json!({"session_id": sid, "message": "and docs"}),
        )
        .await;
    assert_eq!(v["status"], "idle", "{v}");
    let e = z
        .err(
            "check_session",
            json!({"session_id": "nonexistent-session"}),
        )
        .await;
    assert!(e.contains("no session matches"), "{e}");
    let stderr_path = z.stderr_path.clone();
    let took = z
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(log.contains("exporting traces"), "{log}");
    assert!(log.contains("traces flushed"), "{log}");

    let spans = rx.spans();
    let delegate = one(&spans, "tools/call delegate");
    assert_eq!(delegate.parent_span_id, "", "no traceparent: a root span");
    assert_eq!(delegate.attr("zwarm.result.status"), "running");
    assert_eq!(delegate.service, "zwarm");
    let t1 = turn(&spans, 1);
    assert_eq!(
        t1.parent_span_id, delegate.span_id,
        "the async turn's parent is its delegate call"
    );
    assert_eq!(t1.trace_id, delegate.trace_id);
    assert!(
        t1.end > delegate.end,
        "the turn outlived the call that started it"
    );

    let checks = named(&spans, "tools/call check_session");
    assert_eq!(checks.len(), 2, "{spans:#?}");
    let ok_check = checks
        .iter()
        .find(|s| s.attr("zwarm.result.is_error") == &json!(false))
        .expect("the check that waited");
    assert_eq!(ok_check.attr("zwarm.result.status"), "idle");
    assert_eq!(ok_check.attr("zwarm.session.id"), &json!(sid));
    assert_ne!(
        ok_check.trace_id, delegate.trace_id,
        "a call without traceparent starts its own trace"
    );
    let bad = checks
        .iter()
        .find(|s| s.attr("zwarm.result.is_error") == &json!(true))
        .expect("the refused check");
    assert_eq!(bad.status_code, 2);
    assert!(
        bad.status_message.contains("no session matches"),
        "{bad:#?}"
    );
    assert_eq!(bad.attr("zwarm.session.ref"), "nonexistent-session");

    let converse = one(&spans, "tools/call converse");
    let t2 = turn(&spans, 2);
    assert_eq!(t2.parent_span_id, converse.span_id);
    assert_eq!(t2.trace_id, converse.trace_id);

    // Each executor run got its own turn's span.
    let ctx = executor_contexts(&f.trace_log);
    assert_eq!(
        ctx,
        vec![
            (
                format!("00-{}-{}-01", t1.trace_id, t1.span_id),
                "none".to_string()
            ),
            (
                format!("00-{}-{}-01", t2.trace_id, t2.span_id),
                "none".to_string()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_07_28_request_is_parented_by_its_meta_traceparent() {
    use rmcp::ClientServiceExt;
    use rmcp::service::ClientLifecycleMode;
    use rmcp::transport::TokioChildProcess;
    let rx = Receiver::start();
    let mut f = fake();
    f.env.set("OTEL_BSP_SCHEDULE_DELAY", "50");
    f.env
        .set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &rx.endpoint());
    let cmd = f.env.command(&["--set", f.binary.as_str()]);
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn zwarm");
    // Stateless: no initialize; protocol version and capabilities travel in every _meta.
    let client = ()
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover");
    let mut p = CallToolRequestParams::new("list_sessions").with_arguments(serde_json::Map::new());
    p.set_traceparent(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01"));
    let r = client.call_tool(p).await.expect("list_sessions");
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let spans = spans_until(&rx, "the list_sessions call", |s| {
        !named(s, "tools/call list_sessions").is_empty()
    })
    .await;
    let call = one(&spans, "tools/call list_sessions");
    assert_eq!(call.trace_id, TRACE_ID);
    assert_eq!(call.parent_span_id, CALLER_SPAN);
    assert_eq!(call.attr("zwarm.tool.argument_keys"), &json!([]));
    let _ = client.cancel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_off_nothing_is_sent_and_executors_get_no_traceparent() {
    let rx = Receiver::start();
    let mut f = fake();
    f.env.set("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.base());
    f.env.set("OTEL_BSP_SCHEDULE_DELAY", "50");
    // Turned off in zwarm's config, whatever the standard variables say.
    let z = start(&f, &["--set", "telemetry.enabled=false"]).await;
    let r = z.ok("delegate", json!({"task": "a task"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    let stderr_path = z.stderr_path.clone();
    z.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    // And the default: no endpoint configured anywhere.
    f.env.set("OTEL_EXPORTER_OTLP_ENDPOINT", "");
    let z = start(&f, &[]).await;
    let r = z.ok("delegate", json!({"task": "another"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    let stderr_path2 = z.stderr_path.clone();
    z.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.connections(), 0, "nothing was sent");
    assert_eq!(
        executor_contexts(&f.trace_log),
        vec![
            ("none".to_string(), "none".to_string()),
            ("none".to_string(), "none".to_string())
        ]
    );
    for p in [stderr_path, stderr_path2] {
        let log = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(!log.contains("exporting traces"), "{log}");
        assert!(!log.contains("traces flushed"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_slows_no_call_and_lost_spans_are_counted() {
    // Accepts, reads, never answers.
    let rx = Receiver::silent();
    let mut f = fake();
    f.env.set("OTEL_BSP_SCHEDULE_DELAY", "20");
    f.env.set("OTEL_BSP_MAX_QUEUE_SIZE", "4");
    let endpoint = format!("telemetry.endpoint={}", rx.endpoint());
    let z = start(&f, &["--set", &endpoint]).await;
    for i in 0..5 {
        let t = Instant::now();
        let r = z.ok("delegate", json!({"task": format!("task {i}")})).await;
        assert_eq!(r["status"], "idle", "{r}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a delegate took {:?} with a hanging collector",
            t.elapsed()
        );
    }
    assert!(rx.connections() >= 1, "the exporter did try");
    let stderr_path = z.stderr_path.clone();
    let took = z
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .await;
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} with a hanging collector"
    );
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("some spans were not exported"))
        .unwrap_or_else(|| panic!("no count of lost spans in the log:\n{log}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {line}"))
    };
    // 5 calls, 5 turns, 10 commands; a queue of 4.
    assert_eq!(field("spans"), 20, "{line}");
    assert_eq!(field("exported"), 0, "{line}");
    assert!(field("dropped") >= 16, "{line}");
    assert_eq!(
        field("dropped") + field("unsent") + field("failed"),
        20,
        "{line}"
    );
    // The first drops were reported while the server ran, not only at its end.
    assert!(
        log.contains("spans dropped so far because the export queue was full"),
        "{log}"
    );
}

/// The executor's own spans whose parent is `turn` (a span of another service).
fn executor_children<'a>(spans: &'a [Span], turn: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.service != "zwarm" && s.parent_span_id == turn.span_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_codex_puts_its_spans_under_the_turn() {
    let rx = Receiver::start();
    let mock = OpenAiMock::start(json!({}));
    let mut env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    env.set("OTEL_BSP_SCHEDULE_DELAY", "50");
    // codex exports traces when its config says so (`[otel] trace_exporter`); it continues
    // the trace in TRACEPARENT.
    let codex_otel = format!(
        r#"codex.extra_args=['-c', 'otel.trace_exporter={{ otlp-http = {{ endpoint = "{}", protocol = "binary" }} }}']"#,
        rx.endpoint()
    );
    let endpoint = format!("telemetry.endpoint={}", rx.endpoint());
    let z = Zwarm::start(&env, &["--set", &endpoint, "--set", &codex_otel]).await;
    let r = z.ok("delegate", json!({"task": "say hello"})).await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    // The call's span ends after the turn's, so it can come in a later batch: wait for both.
    let spans = spans_until(
        &rx,
        "the call, and codex's spans under the zwarm turn",
        |s| {
            named(s, "tools/call delegate").len() == 1
                && named(s, "invoke_agent codex")
                    .first()
                    .is_some_and(|t| !executor_children(s, t).is_empty())
        },
    )
    .await;
    let t = turn(&spans, 1);
    let call = one(&spans, "tools/call delegate");
    assert_eq!(t.parent_span_id, call.span_id);
    for c in executor_children(&spans, t) {
        assert_eq!(c.trace_id, t.trace_id, "{c:#?}");
    }
    // (codex 0.169's start-up and shutdown spans — auth, model info, the session loop — are
    // traces of their own; the turn's work is under the zwarm turn.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_claude_puts_its_spans_under_the_turn() {
    let rx = Receiver::start();
    let mock = AnthropicMock::start(json!({}));
    let mut env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    // One set of standard variables configures both: zwarm exports (an endpoint is set), and
    // claude exports its traces (beta) when its telemetry is enabled.
    for (k, v) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.base().as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_LOGS_EXPORTER", "none"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("CLAUDE_CODE_ENABLE_TELEMETRY", "1"),
        ("CLAUDE_CODE_ENHANCED_TELEMETRY_BETA", "1"),
    ] {
        env.set(k, v);
    }
    let z = Zwarm::start(&env, &[]).await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "say hello", "adapter": "claude"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    let spans = spans_until(
        &rx,
        "the call, and claude's spans under the zwarm turn",
        |s| {
            named(s, "tools/call delegate").len() == 1
                && named(s, "invoke_agent claude")
                    .first()
                    .is_some_and(|t| !executor_children(s, t).is_empty())
        },
    )
    .await;
    let t = one(&spans, "invoke_agent claude");
    assert_eq!(t.attr("gen_ai.system"), "anthropic");
    assert_eq!(t.parent_span_id, one(&spans, "tools/call delegate").span_id);
    let children = executor_children(&spans, t);
    assert!(
        children
            .iter()
            .all(|c| c.service == "claude-code" && c.trace_id == t.trace_id),
        "{children:#?}"
    );

    // The next turn (claude --resume, a second run with the same claude home) too.
    let sid = r["session_id"].as_str().expect("session_id").to_string();
    let c = z
        .ok(
            "converse",
            json!({"session_id": sid, "message": "say hello again"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}\n{}", z.stderr());
    let spans = spans_until(
        &rx,
        "the call, and claude's spans under the second turn",
        |s| {
            named(s, "tools/call converse").len() == 1
                && named(s, "invoke_agent claude")
                    .iter()
                    .find(|t| t.attr("zwarm.turn") == &json!(2))
                    .is_some_and(|t| !executor_children(s, t).is_empty())
        },
    )
    .await;
    let t2 = named(&spans, "invoke_agent claude")
        .into_iter()
        .find(|t| t.attr("zwarm.turn") == &json!(2))
        .expect("turn 2");
    assert_eq!(
        t2.parent_span_id,
        one(&spans, "tools/call converse").span_id
    );
}

#[test]
fn the_project_file_cannot_choose_where_traces_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join(".zwarm")).expect("mkdir");
    std::fs::write(
        project.join(".zwarm/config.toml"),
        r#"
[telemetry]
enabled = true
endpoint = "https://collector.example/v1/traces"
headers = "Authorization=Bearer%20stolen"
service_name = "my-project"
"#,
    )
    .expect("write the project file");
    let p = |s: &str| dir.path().join(s).display().to_string();
    let sources = zwarm::config::Sources {
        env: vec![
            ("HOME".into(), p("home")),
            ("XDG_CONFIG_HOME".into(), p("xdg-config")),
            ("XDG_STATE_HOME".into(), p("xdg-state")),
        ],
        cwd: project,
        ..Default::default()
    };
    let cfg = zwarm::config::load(&sources).expect("load");
    assert_eq!(cfg.telemetry.enabled, None);
    assert_eq!(cfg.telemetry.endpoint, None);
    assert_eq!(cfg.telemetry.headers, None);
    assert_eq!(cfg.telemetry.service_name.as_deref(), Some("my-project"));
    let mut ignored: Vec<&str> = cfg.ignored.iter().map(|i| i.key.as_str()).collect();
    ignored.sort_unstable();
    assert_eq!(
        ignored,
        vec![
            "telemetry.enabled",
            "telemetry.endpoint",
            "telemetry.headers"
        ]
    );

    // From a trusted layer they apply.
    let sources = zwarm::config::Sources {
        sets: vec![
            "telemetry.endpoint=http://127.0.0.1:4318".into(),
            "telemetry.headers=x-key=1".into(),
        ],
        ..sources
    };
    let cfg = zwarm::config::load(&sources).expect("load");
    assert_eq!(
        cfg.telemetry.endpoint.as_deref(),
        Some("http://127.0.0.1:4318")
    );
    assert_eq!(cfg.telemetry.headers.as_deref(), Some("x-key=1"));
}
