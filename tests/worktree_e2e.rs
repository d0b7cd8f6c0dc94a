//! Sessions isolated in git worktrees, end to end with the real codex against the scripted
//! model: a worktree and branch per session, a commit per turn, review, merge back (fast-forward,
//! conflict refused with nothing changed, resolved by conversing, then merged), discard, waiting
//! on several sessions, refusals, and a restart in the middle.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, keyed_script, wait_done};
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
    sc["slow"] = json!([{"delay_s": 6, "items": [{"message": "slow done"}]}]);
    // Writes a file, then the model stalls (the server is killed meanwhile).
    sc["writestall"] = json!([
        json!({"items": [{"custom_tool_call": {"name": "apply_patch", "input": "*** Begin Patch\n*** Add File: half.txt\n+half done\n*** End Patch\n"}}]}),
        {"stall_s": 60, "items": [{"message": "late"}]}
    ]);
    mock.set_script(s);
    (mock, env)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .expect("run git");
    assert!(
        o.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
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
