//! Sessions isolated in git worktrees, end to end with the real codex against the scripted
//! model: a worktree and branch per session, a commit per turn, review, merge back (fast-forward,
//! conflict refused with nothing changed, resolved by conversing, then merged), discard, waiting
//! on several sessions, refusals, and a restart in the middle.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, git, keyed_script, wait_done};
use support::mock_openai::OpenAiMock;

const ORIGINAL: &str = "line1\nline2\nline3\n";
const RESOLVED: &str = "line1\nline2 by A and B\nline3\n";

fn edit(to: &str) -> Value {
    let patch = format!(
        "*** Begin Patch\n*** Update File: shared.txt\n@@\n line1\n-line2\n+{to}\n line3\n*** End Patch\n"
    );
    json!({"items": [{"custom_tool_call": {"name": "apply_patch", "input": patch}}]})
}

fn exec(cmd: &str) -> Value {
    json!({"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": cmd}}}]})
}

fn say(text: &str) -> Value {
    json!({"items": [{"message": text}]})
}

fn codex_env() -> (OpenAiMock, Env) {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let mut s = keyed_script("codex_keyed.json", &env.work);
    let sc = &mut s["scenarios"];
    sc["edita"] = json!([edit("line2 by A"), say("edited as A")]);
    sc["editb"] = json!([edit("line2 by B"), say("edited as B")]);
    // The resolution turn: zwarm has merged main into the worktree (conflict markers in
    // shared.txt); the executor reads the file and writes the resolution. zwarm's turn-end
    // commit concludes the merge.
    sc["resolve"] = json!([
        exec("grep -c '<<<<<<<' shared.txt"),
        exec(&format!(
            "printf '{}' > shared.txt",
            RESOLVED.replace('\n', "\\n")
        )),
        say("resolved")
    ]);
    sc["newfile"] = json!([
        json!({"items": [{"custom_tool_call": {"name": "apply_patch", "input": "*** Begin Patch\n*** Add File: notes.md\n+# notes\n+two\n*** End Patch\n"}}]}),
        say("added notes")
    ]);
    sc["slow"] = json!([{"delay_s": 10, "items": [{"message": "slow done"}]}]);
    // Writes a file, then the model stalls (the server is killed meanwhile).
    sc["writestall"] = json!([
        json!({"items": [{"custom_tool_call": {"name": "apply_patch", "input": "*** Begin Patch\n*** Add File: half.txt\n+half done\n*** End Patch\n"}}]}),
        {"stall_s": 60, "items": [{"message": "late"}]}
    ]);
    mock.set_script(s);
    (mock, env)
}

/// A project repository on `main` with shared.txt committed.
fn init_repo(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("shared.txt"), ORIGINAL).unwrap();
    std::fs::write(dir.join(".gitignore"), "ignored.log\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "initial"]);
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", p.as_ref().display()))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

async fn read_resource(z: &Zwarm, uri: &str) -> Result<String, String> {
    match z
        .client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri))
        .await
    {
        Ok(r) => Ok(r
            .contents
            .iter()
            .map(|c| match c {
                rmcp::model::ResourceContents::TextResourceContents { text, .. } => text.clone(),
                _ => String::new(),
            })
            .collect()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_edit_one_file_merge_conflict_resolve_and_discard() {
    let (_mock, env) = codex_env();
    let work = env.work.clone();
    init_repo(&work);
    let base = git(&work, &["rev-parse", "HEAD"]);
    let z = Zwarm::start(&env, &[]).await;

    let a = z
        .ok(
            "delegate",
            json!({"task": "@@edita", "isolation": "worktree"}),
        )
        .await;
    assert_eq!(a["status"], "idle", "{a}");
    let ida = s(&a["session_id"]).to_string();
    assert_eq!(a["isolation"], "worktree");
    assert_eq!(a["branch"], format!("zwarm/{}", &ida[..8]));
    assert_eq!(a["base"], base.as_str());
    let wta = PathBuf::from(s(&a["worktree"]));
    assert!(
        wta.starts_with(std::fs::canonicalize(&env.state).unwrap().join("worktrees")),
        "{}",
        wta.display()
    );
    assert!(read(wta.join("shared.txt")).contains("line2 by A"));
    assert!(
        a["next_step"].as_str().unwrap().contains("integrate"),
        "{a}"
    );

    let b = z
        .ok(
            "delegate",
            json!({"task": "@@editb", "isolation": "worktree"}),
        )
        .await;
    assert_eq!(b["status"], "idle", "{b}");
    let idb = s(&b["session_id"]).to_string();
    let wtb = PathBuf::from(s(&b["worktree"]));
    assert!(read(wtb.join("shared.txt")).contains("line2 by B"));

    // The project checkout is untouched; each turn is a commit on its session's branch.
    assert_eq!(read(work.join("shared.txt")), ORIGINAL);
    assert_eq!(git(&work, &["status", "--porcelain"]), "");
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), base);
    let tip_a = git(&work, &["rev-parse", s(&a["branch"])]);
    assert_ne!(tip_a, base);
    let subject = git(&work, &["log", "-1", "--format=%an <%ae>|%s", &tip_a]);
    assert!(
        subject.starts_with("zwarm <zwarm@localhost>|")
            && subject.contains(&ida[..8])
            && subject.contains("turn 1"),
        "{subject}"
    );

    // Review: the diff summary and the whole diff.
    let c = z.ok("check_session", json!({"session_id": ida})).await;
    assert_eq!(c["isolation"], "worktree");
    assert_eq!(c["worktree_state"], "active");
    assert_eq!(c["project_dir"], work.display().to_string());
    let d = &c["diff"];
    assert_eq!(d["files_total"], 1, "{c}");
    assert_eq!(d["files"][0]["path"], "shared.txt");
    assert_eq!(d["files"][0]["added"], 1);
    assert_eq!(d["files"][0]["removed"], 1);
    assert_eq!(d["files"][0]["uncommitted"], false);
    assert_eq!(d["uncommitted"], false);
    assert_eq!(d["commits_total"], 1);
    assert_eq!(d["commits"][0]["sha"], tip_a.as_str());
    let uri = s(&d["uri"]).to_string();
    assert_eq!(uri, format!("zwarm://sessions/{ida}/diff"));
    let whole = read_resource(&z, &uri).await.unwrap();
    assert!(
        whole.contains("-line2") && whole.contains("+line2 by A"),
        "{whole}"
    );
    let l = z.ok("list_sessions", json!({})).await;
    let row = |id: &str| {
        l["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["session_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&ida)["branch"], s(&a["branch"]));
    assert_eq!(row(&idb)["branch"], s(&b["branch"]));

    // First merge: a fast-forward of main.
    let e = z
        .ok(
            "end_session",
            json!({"session_id": ida, "integrate": "merge", "summary": "A done"}),
        )
        .await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["merged"], true);
    assert_eq!(e["integrate"], "merge");
    assert_eq!(e["commit"], tip_a.as_str());
    assert_eq!(e["branch"], s(&a["branch"]));
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), tip_a);
    assert_eq!(git(&work, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert!(read(work.join("shared.txt")).contains("line2 by A"));
    assert_eq!(git(&work, &["status", "--porcelain"]), "");
    assert!(!wta.exists(), "merged worktree still there");
    assert_eq!(git(&work, &["rev-parse", s(&a["branch"])]), tip_a);

    // Second merge: conflicts. Nothing in the checkout changes; branch, worktree and session stay.
    let tip_b = git(&work, &["rev-parse", s(&b["branch"])]);
    let m = z
        .err(
            "end_session",
            json!({"session_id": idb, "integrate": "merge"}),
        )
        .await;
    assert!(
        m.contains("conflicts in shared.txt")
            && m.contains("conflict markers")
            && m.contains("Converse"),
        "{m}"
    );
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), tip_a);
    assert!(read(work.join("shared.txt")).contains("line2 by A"));
    assert_eq!(git(&work, &["status", "--porcelain"]), "");
    assert!(!work.join(".git/MERGE_HEAD").exists());
    assert_eq!(git(&work, &["rev-parse", s(&b["branch"])]), tip_b);
    // The resolution is prepared in the session's worktree: main merged in, markers left.
    let prepared = read(wtb.join("shared.txt"));
    assert!(
        prepared.contains("<<<<<<<") && prepared.contains("line2 by B"),
        "{prepared}"
    );
    // Merging again before resolving is refused the same way, and says why.
    let m = z
        .err(
            "end_session",
            json!({"session_id": idb, "integrate": "merge"}),
        )
        .await;
    assert!(
        m.contains("unresolved merge conflicts in shared.txt"),
        "{m}"
    );
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), tip_a);
    let cb = z.ok("check_session", json!({"session_id": idb})).await;
    assert_eq!(cb["status"], "idle", "{cb}");

    // Subscribers to the diff (by a prefix of the id) hear when it changes.
    #[allow(deprecated)]
    z.client
        .subscribe(rmcp::model::SubscribeRequestParams::new(format!(
            "zwarm://sessions/{}/diff",
            &idb[..8]
        )))
        .await
        .unwrap();
    // Conversing resolves it: the executor merges main and writes the resolution; zwarm's
    // turn-end commit concludes the merge on the session's branch.
    let r = z
        .ok(
            "converse",
            json!({"session_id": idb, "message": "@@resolve resolve the merge conflicts in shared.txt: keep both changes"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["commands"][0]["exit_code"], 0, "no markers seen: {r}");
    assert_eq!(read(wtb.join("shared.txt")), RESOLVED);
    let diff_uri = format!("zwarm://sessions/{idb}/diff");
    for _ in 0..50 {
        if z.recorder.updated.lock().unwrap().contains(&diff_uri) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        z.recorder.updated.lock().unwrap().contains(&diff_uri),
        "no update for {diff_uri}"
    );
    let parents = git(&work, &["log", "-1", "--format=%P", s(&b["branch"])]);
    assert_eq!(
        parents.split_whitespace().count(),
        2,
        "the resolution is not a merge commit: {parents}"
    );
    let e = z
        .ok(
            "end_session",
            json!({"session_id": idb, "integrate": "merge"}),
        )
        .await;
    assert_eq!(e["merged"], true, "{e}");
    assert_eq!(read(work.join("shared.txt")), RESOLVED);
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), s(&e["commit"]));
    assert_eq!(git(&work, &["status", "--porcelain"]), "");
    assert!(!wtb.exists());

    // Discard removes the worktree and the branch; the project is untouched.
    let head = git(&work, &["rev-parse", "HEAD"]);
    let c = z
        .ok(
            "delegate",
            json!({"task": "@@newfile", "isolation": "worktree"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}");
    let wtc = PathBuf::from(s(&c["worktree"]));
    assert!(wtc.join("notes.md").exists());
    let e = z
        .ok(
            "end_session",
            json!({"session_id": c["session_id"], "integrate": "discard", "verdict": "cancelled"}),
        )
        .await;
    assert_eq!(e["merged"], false, "{e}");
    assert_eq!(e["integrate"], "discard");
    assert_eq!(e["worktree_state"], "discarded");
    assert!(!wtc.exists());
    let branches = git(&work, &["branch", "--list", s(&c["branch"])]);
    assert_eq!(branches, "", "discarded branch still there");
    assert!(!work.join("notes.md").exists());
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&work, &["worktree", "list"]).lines().count(), 1);
    let events = env.events();
    for kind in [
        "worktree_created",
        "turn_committed",
        "merge_refused",
        "worktree_merged",
        "worktree_removed",
    ] {
        assert!(
            events.contains(&format!("\"event\":\"{kind}\"")),
            "missing {kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_any_returns_when_the_fast_session_finishes_then_all() {
    let (_mock, env) = codex_env();
    init_repo(&env.work);
    let z = Zwarm::start(&env, &[]).await;
    let slow = z
        .ok(
            "delegate",
            json!({"task": "@@slow", "mode": "async", "isolation": "worktree"}),
        )
        .await;
    let fast = z
        .ok(
            "delegate",
            json!({"task": "@@edita", "mode": "async", "isolation": "worktree"}),
        )
        .await;
    let (ids, idf) = (s(&slow["session_id"]), s(&fast["session_id"]));
    let r = z
        .ok(
            "check_session",
            json!({"session_ids": [ids, idf], "wait": "any", "wait_seconds": 60}),
        )
        .await;
    assert_eq!(r["finished"], json!([idf]), "{r}");
    let sessions = r["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["session_id"], ids);
    assert_eq!(sessions[0]["status"], "running");
    assert_eq!(sessions[1]["status"], "idle");
    assert_eq!(sessions[1]["diff"]["files_total"], 1, "{r}");
    // The top level is the session that finished.
    assert_eq!(r["session_id"], idf);
    assert!(
        r["next_step"].as_str().unwrap().contains("still running"),
        "{r}"
    );

    // "all" waits for the slow one too; ids may come as one string, and prefixes work.
    let r = z
        .ok(
            "check_session",
            json!({"session_ids": format!("{}, {}", &ids[..8], idf), "wait": "all", "wait_seconds": "60"}),
        )
        .await;
    assert_eq!(r["finished"].as_array().unwrap().len(), 2, "{r}");
    assert!(
        r["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["status"] == "idle")
    );
    // Without any wait, an unknown wait mode and without ids: clear errors.
    let m = z
        .err(
            "check_session",
            json!({"session_ids": [ids], "wait": "some"}),
        )
        .await;
    assert!(m.contains("unknown wait") && m.contains("all"), "{m}");
    let m = z.err("check_session", json!({})).await;
    assert!(m.contains("session_id") && m.contains("session_ids"), "{m}");
    // A single session_id still gets the single-session report (no multi fields).
    let one = z.ok("check_session", json!({"session_id": ids})).await;
    assert!(one.get("sessions").is_none() && one.get("finished").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_to_do() {
    let (_mock, env) = codex_env();
    let z = Zwarm::start(&env, &["--set", "max_worktrees=1"]).await;
    // Not a git repository.
    let m = z
        .err("delegate", json!({"task": "hi", "isolation": "worktree"}))
        .await;
    assert!(
        m.contains("not in a git repository") && m.contains("isolation \"none\""),
        "{m}"
    );
    let m = z
        .err("delegate", json!({"task": "hi", "isolation": "sandbox"}))
        .await;
    assert!(
        m.contains("unknown isolation") && m.contains("worktree"),
        "{m}"
    );
    let m = z
        .err("delegate", json!({"task": "hi", "base": "main"}))
        .await;
    assert!(m.contains("`base`") && m.contains("isolation"), "{m}");
    assert_eq!(z.ok("list_sessions", json!({})).await["count"], 0);

    init_repo(&env.work);
    let m = z
        .err(
            "delegate",
            json!({"task": "hi", "isolation": "worktree", "base": "no-such-branch"}),
        )
        .await;
    assert!(m.contains("base `no-such-branch`"), "{m}");
    let m = z
        .err(
            "delegate",
            json!({"task": "hi", "isolation": "worktree", "base": "--output=/tmp/x"}),
        )
        .await;
    assert!(m.contains("cannot be used"), "{m}");

    // max_worktrees.
    let a = z
        .ok("delegate", json!({"task": "hi", "isolation": "worktree"}))
        .await;
    assert_eq!(a["status"], "idle", "{a}");
    let m = z
        .err("delegate", json!({"task": "hi", "isolation": "worktree"}))
        .await;
    assert!(
        m.contains("max_worktrees is 1") && m.contains("end_session"),
        "{m}"
    );

    // A worktree that vanished: converse refuses instead of running elsewhere.
    let ida = s(&a["session_id"]).to_string();
    let wt = PathBuf::from(s(&a["worktree"]));
    std::fs::remove_dir_all(&wt).unwrap();
    let m = z
        .err("converse", json!({"session_id": ida, "message": "more"}))
        .await;
    assert!(
        m.contains("no longer exists") && m.contains(s(&a["branch"])),
        "{m}"
    );
    assert!(!wt.exists(), "the turn ran somewhere");
    // Integration arguments.
    let m = z
        .err(
            "end_session",
            json!({"session_id": ida, "integrate": "squash"}),
        )
        .await;
    assert!(m.contains("unknown integrate"), "{m}");
    let e = z
        .ok(
            "end_session",
            json!({"session_id": ida, "integrate": "keep"}),
        )
        .await;
    assert_eq!(e["worktree_state"], "kept", "{e}");
    assert_eq!(e["merged"], false);
    // Its branch is kept; the stale worktree record is pruned.
    assert_eq!(
        git(&env.work, &["branch", "--list", s(&a["branch"])]).trim_start_matches(['*', '+', ' ']),
        s(&a["branch"])
    );
    assert_eq!(git(&env.work, &["worktree", "list"]).lines().count(), 1);

    let plain = z.ok("delegate", json!({"task": "hi"})).await;
    assert!(
        plain.get("isolation").is_none() && plain.get("branch").is_none(),
        "{plain}"
    );
    let m = z
        .err(
            "end_session",
            json!({"session_id": plain["session_id"], "integrate": "merge"}),
        )
        .await;
    assert!(m.contains("no worktree"), "{m}");
    let m = read_resource(
        &z,
        &format!("zwarm://sessions/{}/diff", s(&plain["session_id"])),
    )
    .await
    .unwrap_err();
    assert!(m.contains("no worktree"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_checkout_refuses_the_merge_and_nothing_changes() {
    let (_mock, env) = codex_env();
    let work = env.work.clone();
    init_repo(&work);
    // Turn commits off: the session's change stays uncommitted until end_session.
    let z = Zwarm::start(
        &env,
        &[
            "--set",
            "worktree_commit_turns=false",
            "--set",
            "isolation=worktree",
        ],
    )
    .await;
    let a = z.ok("delegate", json!({"task": "@@edita"})).await;
    assert_eq!(a["isolation"], "worktree", "config default isolation: {a}");
    let id = s(&a["session_id"]).to_string();
    let c = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(c["diff"]["uncommitted"], true, "{c}");
    assert_eq!(c["diff"]["files"][0]["uncommitted"], true);
    assert_eq!(c["diff"]["commits_total"], 0);

    // The user has uncommitted changes to the same file in the project.
    let head = git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("shared.txt"), "user's own edit\n").unwrap();
    std::fs::write(work.join("untracked.txt"), "mine\n").unwrap();
    let m = z
        .err(
            "end_session",
            json!({"session_id": id, "integrate": "merge"}),
        )
        .await;
    assert!(
        m.contains("uncommitted changes")
            && m.contains("shared.txt")
            && !m.contains("untracked.txt"),
        "{m}"
    );
    assert_eq!(read(work.join("shared.txt")), "user's own edit\n");
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), head);
    assert_eq!(read(work.join("untracked.txt")), "mine\n");
    let c = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(c["status"], "idle");
    assert_eq!(c["worktree_state"], "active");

    // Once the user's edit is gone, the merge goes through; unrelated dirt stays as it was.
    git(&work, &["checkout", "--", "shared.txt"]);
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "integrate": "merge"}),
        )
        .await;
    assert_eq!(e["merged"], true, "{e}");
    assert!(read(work.join("shared.txt")).contains("line2 by A"));
    assert_eq!(read(work.join("untracked.txt")), "mine\n");
    let subject = git(&work, &["log", "-1", "--format=%s"]);
    assert!(
        subject.contains("uncommitted work at end_session"),
        "{subject}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_head_base_and_a_subdirectory() {
    let (_mock, env) = codex_env();
    let work = env.work.clone();
    init_repo(&work);
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("sub/shared.txt"), ORIGINAL).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "sub"]);
    let first = git(&work, &["rev-parse", "HEAD~1"]);
    git(&work, &["checkout", "-q", "--detach", "HEAD"]);
    let detached = git(&work, &["rev-parse", "HEAD"]);
    let z = Zwarm::start(&env, &[]).await;
    // The base defaults to the detached HEAD; working_dir in a subdirectory maps into the worktree.
    let a = z
        .ok(
            "delegate",
            json!({"task": "@@edita", "isolation": "worktree", "working_dir": "sub"}),
        )
        .await;
    assert_eq!(a["status"], "idle", "{a}");
    assert_eq!(a["base"], detached.as_str());
    let wt = PathBuf::from(s(&a["worktree"]));
    assert!(read(wt.join("sub/shared.txt")).contains("line2 by A"));
    assert_eq!(read(wt.join("shared.txt")), ORIGINAL);
    let c = z
        .ok("check_session", json!({"session_id": a["session_id"]}))
        .await;
    assert_eq!(c["working_dir"], wt.join("sub").display().to_string());
    assert_eq!(c["diff"]["files"][0]["path"], "sub/shared.txt", "{c}");
    // A base given by commit: the branch starts there.
    let b = z
        .ok(
            "delegate",
            json!({"task": "hello", "isolation": "worktree", "base": &first[..10]}),
        )
        .await;
    assert_eq!(b["base"], first.as_str(), "{b}");
    assert!(!PathBuf::from(s(&b["worktree"])).join("sub").exists());
    // Merging into a detached HEAD moves HEAD (still detached).
    let e = z
        .ok(
            "end_session",
            json!({"session_id": a["session_id"], "integrate": "merge"}),
        )
        .await;
    assert_eq!(e["merged"], true, "{e}");
    assert_eq!(git(&work, &["rev-parse", "HEAD"]), s(&e["commit"]));
    assert!(read(work.join("sub/shared.txt")).contains("line2 by A"));
    let sym = std::process::Command::new("git")
        .args(["symbolic-ref", "-q", "HEAD"])
        .current_dir(&work)
        .status()
        .unwrap();
    assert!(!sym.success(), "HEAD is no longer detached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_keeps_worktree_sessions_conversable() {
    let (_mock, env) = codex_env();
    let work = env.work.clone();
    init_repo(&work);
    let z = Zwarm::start(&env, &[]).await;
    let a = z
        .ok(
            "delegate",
            json!({"task": "@@writestall", "mode": "async", "isolation": "worktree"}),
        )
        .await;
    let id = s(&a["session_id"]).to_string();
    let wt = PathBuf::from(s(&a["worktree"]));
    // Wait for the executor's write, then kill the server mid-turn.
    for _ in 0..200 {
        if wt.join("half.txt").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(wt.join("half.txt").exists(), "{}", z.stderr());
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .await;
    drop(z);
    // Something under worktrees/ that no session owns is reported after the restart.
    let stray = env.state.join("worktrees").join("stray");
    std::fs::create_dir_all(&stray).unwrap();

    let z = Zwarm::start(&env, &[]).await;
    let c = wait_done(&z, &id).await;
    assert_eq!(c["status"], "failed", "{c}");
    assert_eq!(c["worktree_state"], "active");
    assert_eq!(c["diff"]["files"][0]["path"], "half.txt", "{c}");
    assert_eq!(c["diff"]["files"][0]["uncommitted"], true);
    // The adopted session converses in its worktree; that turn's commit takes what the
    // interrupted turn left too.
    let r = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "@@newfile finish up"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    assert_eq!(r["worktree"], wt.display().to_string());
    assert!(wt.join("notes.md").exists());
    let files = git(
        &work,
        &["show", "--name-only", "--format=", s(&r["branch"])],
    );
    assert!(
        files.contains("half.txt") && files.contains("notes.md"),
        "{files}"
    );
    assert!(!work.join("notes.md").exists());
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "integrate": "merge"}),
        )
        .await;
    assert_eq!(e["merged"], true, "{e}");
    assert!(work.join("half.txt").exists() && work.join("notes.md").exists());
    let events = env.events();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"event\":\"worktree_orphaned\"") && l.contains("stray")),
        "{events}"
    );
    assert!(stray.exists(), "an orphan is reported, not deleted");
    let templates = z.client.list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "zwarm://sessions/{id}/diff")
    );
}
