//! Watchers through `zwarm serve`, with the real CLIs: each built-in fires on a real scenario
//! and stays silent on a clean one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, keyed_script, turn_pids, wait_done};
use support::mock_anthropic::AnthropicMock;
use support::mock_openai::OpenAiMock;

fn patch(files: &[&str]) -> Value {
    let mut p = String::from("*** Begin Patch\n");
    for f in files {
        p.push_str(&format!("*** Add File: {f}\n+// {f}\n"));
    }
    p.push_str("*** End Patch\n");
    json!({"items": [{"custom_tool_call": {"name": "apply_patch", "input": p}}]})
}

fn codex_env() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let mut s = keyed_script("codex_keyed.json", &env.work);
    s["scenarios"]["libonly"] =
        json!([patch(&["src/lib.rs"]), {"items": [{"message": "edited lib"}]}]);
    s["scenarios"]["libtested"] = json!([patch(&["src/lib.rs", "tests/lib_test.rs"]), {"items": [{"message": "edited lib and tests"}]}]);
    let same = json!({"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": "cat missing.txt"}}}]});
    s["scenarios"]["loop"] = json!([same, same, same, {"items": [{"message": "gave up"}]}]);
    // Files written by a shell command only: no file events from codex.
    let shell = json!({"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": "echo a > a.py && echo b > b.py"}}}]});
    s["scenarios"]["shellwrites"] = json!([shell, {"items": [{"message": "wrote two files"}]}]);
    mock.set_script(s);
    (mock, env)
}

fn notes<'a>(r: &'a Value, watcher: &str) -> Vec<&'a Value> {
    r["watchers"]
        .as_array()
        .map(|a| a.iter().filter(|n| n["watcher"] == watcher).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_nudges_code_without_tests_and_is_silent_with_tests() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &[]).await;
    let r = z.ok("delegate", json!({"task": "@@libonly"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    assert!(env.work.join("src/lib.rs").exists());
    let q = notes(&r, "quality");
    assert_eq!(q.len(), 1, "{r}");
    assert_eq!(q[0]["action"], "nudge");
    assert!(
        q[0]["message"].as_str().unwrap().contains("src/lib.rs")
            && q[0]["message"].as_str().unwrap().contains("no test file")
    );
    // Visible in check_session and recorded in events.jsonl.
    let s = z
        .ok("check_session", json!({"session_id": r["session_id"]}))
        .await;
    assert_eq!(notes(&s, "quality").len(), 1);
    let events = env.events();
    assert!(
        events.contains("\"event\":\"watcher_fired\"")
            && events.contains("\"watcher\":\"quality\"")
    );

    let clean = z.ok("delegate", json!({"task": "@@libtested"})).await;
    assert_eq!(clean["status"], "idle");
    assert!(notes(&clean, "quality").is_empty(), "{clean}");
    let plain = z.ok("delegate", json!({"task": "just say hello"})).await;
    assert_eq!(
        plain["watchers"],
        json!([]),
        "a clean turn has no watcher notes: {plain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_scans_git_after_a_turn_that_reported_no_files() {
    let (_mock, env) = codex_env();
    std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&env.work)
        .status()
        .unwrap();
    let z = Zwarm::start(&env, &["--set", "watchers.quality.max_files=1"]).await;
    // The shell command writes a.py and b.py; codex reports no file change for them. The git
    // scan runs after the result is out (never on the tool call), and its nudge reaches the
    // session afterwards.
    let r = z.ok("delegate", json!({"task": "@@shellwrites"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    let id = r["session_id"].clone();
    let mut q = Vec::new();
    for _ in 0..100 {
        let s = z.ok("check_session", json!({"session_id": id})).await;
        q = notes(&s, "quality").into_iter().cloned().collect();
        if !q.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("2 files changed"),
        "{q:?}"
    );
    // A turn that reports its own file changes is judged on those alone (no scan): the shell
    // file written next to hello.py does not count.
    let t = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert!(
        notes(&t, "quality")
            .iter()
            .all(|n| !n["message"].as_str().unwrap().contains("files changed")),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_nudges_repeated_calls_looping_commands_and_stalls() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &["--set", "watchers.progress.stalled_calls=4"]).await;
    for i in 1..=3 {
        let r = z.ok("delegate", json!({"task": "say hello"})).await;
        let p = notes(&r, "progress");
        if i < 3 {
            assert!(p.is_empty(), "call {i}: {r}");
        } else {
            assert_eq!(p.len(), 1, "{r}");
            assert!(
                p[0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("same delegate call")
            );
        }
    }
    // The executor running the same command three times in one turn.
    let r = z.ok("delegate", json!({"task": "@@loop"})).await;
    let p = notes(&r, "progress");
    assert_eq!(p.len(), 1, "{r}");
    assert!(
        p[0]["message"]
            .as_str()
            .unwrap()
            .contains("`cat missing.txt` 3 times"),
        "{p:?}"
    );

    // Many calls while a turn runs and none finishes.
    let slow = z
        .ok("delegate", json!({"task": "@@slowcmd", "mode": "async"}))
        .await;
    let mut fired = None;
    for i in 1..=4 {
        let l = z.ok("list_sessions", json!({})).await;
        if !notes(&l, "progress").is_empty() {
            fired = Some(i);
            break;
        }
    }
    assert!(
        fired.is_some(),
        "no stall nudge after 5 calls without a finished turn"
    );
    z.ok(
        "end_session",
        json!({"session_id": slow["session_id"], "verdict": "cancelled"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_warns_then_stops_a_claude_spender() {
    let mock = AnthropicMock::start(json!({}));
    // What the scenario costs depends on claude's default model and its price, which change
    // between releases: measure it first (on a state of its own), and set the budget from it.
    let scenario_cost = {
        let env = Env::new(None, Some(&mock));
        mock.set_script(keyed_script("claude_keyed.json", &env.work));
        let z = Zwarm::start(&env, &[]).await;
        let a = z
            .ok("delegate", json!({"task": "@@tools", "adapter": "claude"}))
            .await;
        a["cost_usd"].as_f64().unwrap()
    };
    assert!(scenario_cost > 0.0, "claude reports a cost");
    // The scenario spends 7/8 of the budget: past the 80% warning, below the limit. The next,
    // one-request turn costs a third as much again, which takes the total past it.
    let budget = scenario_cost * 8.0 / 7.0;
    let env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    let limit = format!("watchers.budget.max_cost_usd={budget}");
    let z = Zwarm::start(&env, &["--set", &limit]).await;
    let a = z
        .ok("delegate", json!({"task": "@@tools", "adapter": "claude"}))
        .await;
    assert!(notes(&a, "budget").is_empty(), "{a}");
    let cost = a["cost_usd"].as_f64().unwrap();
    assert!((cost - scenario_cost).abs() < 1e-12, "scenario cost {cost}");
    // 87% of the budget spent: a warning first.
    let b = z
        .ok("delegate", json!({"task": "hello", "adapter": "claude"}))
        .await;
    let w = notes(&b, "budget");
    assert_eq!(w[0]["action"], "nudge", "{b}");
    assert!(w[0]["message"].as_str().unwrap().contains("budget warning"));
    // That turn took the total past the limit: the hard stop fires right after it.
    assert_eq!(w.len(), 2, "{b}");
    assert_eq!(w[1]["action"], "abort");
    assert!(
        w[1]["message"]
            .as_str()
            .unwrap()
            .contains("budget exceeded: cost")
    );
    let s = z
        .ok("check_session", json!({"session_id": b["session_id"]}))
        .await;
    assert!(
        notes(&s, "budget")
            .iter()
            .any(|n| n["message"].as_str().unwrap().contains("budget warning")),
        "the pre-call warning is kept on the session: {s}"
    );
    // Now past the limit: the next delegate is refused with the reason, and so is converse.
    let m = z
        .err(
            "delegate",
            json!({"task": "more work", "adapter": "claude"}),
        )
        .await;
    assert!(
        m.contains("budget exceeded: cost") && m.contains("max_cost_usd"),
        "{m}"
    );
    let m = z
        .err(
            "converse",
            json!({"session_id": a["session_id"], "message": "more"}),
        )
        .await;
    assert!(m.contains("budget"), "{m}");
    // Inspecting and ending still work.
    let l = z.ok("list_sessions", json!({})).await;
    assert_eq!(l["count"], 2, "the refused delegate created no session");
    z.ok("end_session", json!({"session_id": a["session_id"]}))
        .await;
    let events = env.events();
    assert!(
        events.contains("\"event\":\"watchers_abort\"")
            && events.contains("\"event\":\"call_refused\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_prices_codex_tokens_from_the_config() {
    let (_mock, env) = codex_env();
    let cfg = env.dir.path().join("budget.toml");
    std::fs::write(&cfg, "[watchers.budget]\nmax_cost_usd = 0.4\n[watchers.budget.prices.default]\ninput_per_million = 10000.0\noutput_per_million = 10000.0\n").unwrap();
    let z = Zwarm::start(&env, &["--config", cfg.to_str().unwrap()]).await;
    // 30 input + 15 output tokens at 0.01 USD per token = 0.45 USD.
    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert!(
        notes(&r, "budget").iter().any(|n| n["action"] == "abort"),
        "{r}"
    );
    let m = z.err("delegate", json!({"task": "again"})).await;
    assert!(m.contains("budget exceeded: cost 0.4500"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_rule_with_abort_interrupts_the_running_turn() {
    let (_mock, env) = codex_env();
    let cfg = env.dir.path().join("pattern.toml");
    std::fs::write(&cfg, "[[watchers.pattern.rules]]\nname = \"no-long-sleeps\"\nregex = 'sleep \\d{2,}'\naction = \"abort\"\non = \"commands\"\n").unwrap();
    let z = Zwarm::start(
        &env,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "interrupt_grace_seconds=2",
        ],
    )
    .await;
    let clean = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert!(notes(&clean, "pattern").is_empty(), "{clean}");
    let r = z
        .ok("delegate", json!({"task": "@@slowcmd", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let s = wait_done(&z, &id).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["turns"][0]["status"], "interrupted");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("aborted by watcher pattern"),
        "{s}"
    );
    let p = notes(&s, "pattern");
    assert_eq!(p[0]["action"], "abort");
    assert!(p[0]["message"].as_str().unwrap().contains("no-long-sleeps"));
    assert!(!env.work.join("slow.txt").exists());
    for _ in 0..100 {
        if turn_pids(&id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(turn_pids(&id).is_empty());
    // The abort is about that session: it takes no more turns, and says why …
    let m = z
        .err("converse", json!({"session_id": id, "message": "go on"}))
        .await;
    assert!(
        m.contains("no-long-sleeps") && m.contains("stopped by a watcher"),
        "{m}"
    );
    // … while the server keeps working for everything else.
    let other = z.ok("delegate", json!({"task": "hello"})).await;
    assert_eq!(other["status"], "idle", "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_new_work_until_acknowledged() {
    let (_mock, env) = codex_env();
    let cfg = env.dir.path().join("pause.toml");
    std::fs::write(&cfg, "[[watchers.pattern.rules]]\nname = \"review-patches\"\nregex = 'created hello\\.py'\naction = \"pause\"\non = \"messages\"\n").unwrap();
    let z = Zwarm::start(&env, &["--config", cfg.to_str().unwrap()]).await;
    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert_eq!(r["status"], "idle");
    assert_eq!(notes(&r, "pattern")[0]["action"], "pause");
    let m = z
        .err(
            "converse",
            json!({"session_id": r["session_id"], "message": "next"}),
        )
        .await;
    assert!(
        m.contains("paused") && m.contains("acknowledge_pause"),
        "{m}"
    );
    z.ok("check_session", json!({"session_id": r["session_id"]}))
        .await;
    let c = z
        .ok(
            "converse",
            json!({"session_id": r["session_id"], "message": "next", "acknowledge_pause": true}),
        )
        .await;
    assert_eq!(c["status"], "idle");
    // Acknowledged: work flows again without the flag.
    z.ok("delegate", json!({"task": "hello"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_flags_avoided_topics_and_files_outside_allowed_paths() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(
        &env,
        &[
            "--set",
            "watchers.scope.avoid=billing,payments",
            "--set",
            "watchers.scope.allowed_paths=src,tests",
        ],
    )
    .await;
    let r = z
        .ok("delegate", json!({"task": "refactor the Billing module"}))
        .await;
    let s = notes(&r, "scope");
    assert_eq!(s.len(), 1, "{r}");
    assert!(s[0]["message"].as_str().unwrap().contains("billing"));
    // hello.py lands in the working dir root, outside src/ and tests/.
    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    let s = notes(&r, "scope");
    assert_eq!(s.len(), 1, "{r}");
    assert!(s[0]["message"].as_str().unwrap().contains("hello.py"));
    let clean = z.ok("delegate", json!({"task": "@@libtested"})).await;
    assert!(notes(&clean, "scope").is_empty(), "{clean}");
}
