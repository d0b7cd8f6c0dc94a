//! The tool contract as hosts see it (`tools/list`: names, input and output schemas,
//! annotations) must only change on purpose. Regenerate with `ZWARM_UPDATE_SNAPSHOTS=1 cargo test --test schema_snapshot`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use serde_json::{Value, json};
use support::harness::{Env, Zwarm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_matches_the_snapshot() {
    let env = Env::new(None, None);
    let z = Zwarm::start(&env, &[]).await;
    let tools = z.client.list_all_tools().await.unwrap();
    let mut v: Vec<Value> = tools
        .iter()
        .map(|t| serde_json::to_value(t).unwrap())
        .collect();
    v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let names: Vec<&str> = v.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "check_session",
            "converse",
            "delegate",
            "end_session",
            "list_sessions"
        ]
    );
    for t in &v {
        assert!(
            t["outputSchema"].is_object(),
            "{} has no outputSchema",
            t["name"]
        );
    }
    let ann = |n: &str| v.iter().find(|t| t["name"] == n).unwrap()["annotations"].clone();
    assert_eq!(ann("check_session")["readOnlyHint"], json!(true));
    assert_eq!(ann("list_sessions")["readOnlyHint"], json!(true));
    assert_eq!(ann("end_session")["destructiveHint"], json!(true));

    let got = serde_json::to_string_pretty(&Value::Array(v)).unwrap() + "\n";
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/tools_list.json");
    if std::env::var("ZWARM_UPDATE_SNAPSHOTS").is_ok() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .expect("snapshot missing: run with ZWARM_UPDATE_SNAPSHOTS=1");
    assert!(
        want == got,
        "tools/list changed. If intended, regenerate with ZWARM_UPDATE_SNAPSHOTS=1 cargo test --test schema_snapshot and review the diff.\n{got}"
    );
}
