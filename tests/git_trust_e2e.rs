//! zwarm's own git runs nothing a repository names. Every kind of program git can be told to
//! run (clean, smudge and process filters, textconv, diff drivers, external diff, merge
//! drivers, hooks, fsmonitor, credential helpers, gpg, pager, editor) is planted in the
//! project's config, its `info/attributes` and a committed `.gitattributes`; then every git
//! operation zwarm does runs through `zwarm serve` (worktree creation, the per-turn commit,
//! check_session's diff, the diff resource, `zwarm diff`, the merge, the quality scan), and a
//! worktree whose `.git` file an executor pointed at a copy with its own config is refused.
//! No planted program may run: each writes its name into a marker file that must stay absent.
//!
//! The executor is a fake codex (a shell script): what it does to `.git` here, a sandboxed
//! real codex is not allowed to do on demand.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, git};

/// Ten lines; the project changes the first, the session the last (a clean non-fast-forward
/// merge that still goes through the merge driver).
const TEN: &str = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";

struct Planted {
    env: Env,
    /// Every planted program appends its name here.
    marks: PathBuf,
    /// The fake executor runs `next.sh` from here in its working dir, when it exists.
    ctl: PathBuf,
    fake: String,
}

impl Planted {
    fn ran(&self) -> String {
        std::fs::read_to_string(&self.marks).unwrap_or_default()
    }

    fn next(&self, script: &str) {
        std::fs::write(self.ctl.join("next.sh"), script).expect("write next.sh");
    }

    fn assert_nothing_ran(&self, when: &str) {
        let ran = self.ran();
        assert!(ran.is_empty(), "{when}: planted programs ran:\n{ran}");
    }
}

fn exe(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A project repository with `.gitattributes` naming drivers for every file, tagged `base`,
/// then one more commit on `main`; then (so the test's own git runs none of it) every kind of
/// program planted in its config, hooks and `info/attributes`.
fn plant() -> Planted {
    let env = Env::without_clis("zwarm-gittrust-");
    let root = env.dir.path().to_path_buf();
    let work = env.work.clone();
    let marks = root.join("ran.txt");
    let ctl = root.join("ctl");
    std::fs::create_dir_all(&ctl).expect("mkdir");

    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("a.txt"), TEN).expect("write");
    std::fs::write(
        work.join(".gitattributes"),
        "* filter=evil diff=evil merge=evil\n*.p filter=evp\n",
    )
    .expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "base"]);
    git(&work, &["tag", "base"]);
    std::fs::write(work.join("a.txt"), TEN.replacen("1\n", "one\n", 1)).expect("write");
    git(&work, &["commit", "-q", "-am", "project side"]);

    // The planted program: note who ran, then behave like `cat` so nothing else breaks.
    let evil = root.join("evil.sh");
    exe(
        &evil,
        &format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\ncat 2>/dev/null\nexit 0\n",
            marks.display()
        ),
    );
    let e = |what: &str| format!("{} {what}", evil.display());
    let hooks = root.join("hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir");
    for h in [
        "pre-commit",
        "prepare-commit-msg",
        "commit-msg",
        "post-commit",
        "post-checkout",
        "post-merge",
        "pre-merge-commit",
        "reference-transaction",
        "post-index-change",
        "pre-auto-gc",
        "post-rewrite",
    ] {
        let body = format!("#!/bin/sh\n{} hook:{h} </dev/null\n", evil.display());
        exe(&hooks.join(h), &body);
        exe(&work.join(".git/hooks").join(h), &body);
    }
    let cfg = [
        ("filter.evil.clean", e("filter-clean")),
        ("filter.evil.smudge", e("filter-smudge")),
        ("filter.evil.required", "true".into()),
        ("filter.evp.process", e("filter-process")),
        ("filter.evp.required", "true".into()),
        ("diff.evil.textconv", e("textconv")),
        ("diff.evil.command", e("diff-driver")),
        ("diff.external", e("external-diff")),
        ("merge.evil.driver", e("merge-driver")),
        ("merge.evil.name", "evil".into()),
        ("core.hooksPath", hooks.display().to_string()),
        ("core.fsmonitor", e("fsmonitor")),
        ("core.pager", e("pager")),
        ("pager.status", e("pager-status")),
        ("pager.diff", e("pager-diff")),
        ("core.editor", e("editor")),
        ("sequence.editor", e("sequence-editor")),
        ("core.askPass", e("askpass")),
        ("core.sshCommand", e("ssh")),
        ("credential.helper", format!("!{}", e("credential-helper"))),
        ("gpg.program", e("gpg")),
        ("gpg.openpgp.program", e("gpg-openpgp")),
        ("user.signingKey", "0xDEADBEEF".into()),
        ("commit.gpgSign", "true".into()),
        ("log.showSignature", "true".into()),
        ("merge.verifySignatures", "true".into()),
        ("submodule.recurse", "true".into()),
    ];
    for (k, v) in cfg {
        git(&work, &["config", k, &v]);
    }
    std::fs::write(
        work.join(".git/info/attributes"),
        "* filter=evil diff=evil merge=evil\n",
    )
    .expect("write info/attributes");

    let fake = root.join("fake-codex.sh");
    exe(
        &fake,
        &format!(
            "#!/bin/sh\ncat >/dev/null 2>&1 &\nif [ -f '{ctl}/next.sh' ]; then sh '{ctl}/next.sh' >/dev/null 2>&1; fi\necho '{{\"type\":\"thread.started\",\"thread_id\":\"0199a000-0000-7000-8000-00000000abcd\"}}'\necho '{{\"type\":\"turn.started\"}}'\necho '{{\"type\":\"item.completed\",\"item\":{{\"id\":\"item_0\",\"type\":\"agent_message\",\"text\":\"fake done\"}}}}'\necho '{{\"type\":\"turn.completed\",\"usage\":{{\"input_tokens\":1,\"cached_input_tokens\":0,\"output_tokens\":1}}}}'\n",
            ctl = ctl.display()
        ),
    );
    Planted {
        env,
        marks,
        ctl,
        fake: fake.display().to_string(),
    }
}

async fn start(p: &Planted) -> Zwarm {
    Zwarm::start(&p.env, &["--set", &format!("codex.binary={}", p.fake)]).await
}

/// Wait (up to a minute) until the event log has a line with all of `parts`.
async fn wait_event(env: &Env, parts: &[&str]) -> String {
    let t = Instant::now();
    loop {
        let events = env.events();
        if let Some(l) = events.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no event with {parts:?}:\n{events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

async fn read_resource(z: &Zwarm, uri: &str) -> String {
    let r = z
        .client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri))
        .await
        .unwrap_or_else(|e| panic!("read {uri}: {e}"));
    r.contents
        .iter()
        .map(|c| match c {
            rmcp::model::ResourceContents::TextResourceContents { text, .. } => text.clone(),
            _ => String::new(),
        })
        .collect()
}

/// `zwarm diff <id>` against the test's state dir.
fn cli_diff(env: &Env, id: &str) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"));
    cmd.args(["diff", id, "--state-dir"])
        .arg(&env.state)
        .current_dir(&env.work);
    for (k, _) in std::env::vars() {
        if k.starts_with("ZWARM_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run zwarm diff");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_program_a_repository_names_runs_in_any_git_operation() {
    let p = plant();
    let work = p.env.work.clone();
    let z = start(&p).await;

    // The quality scan in the project itself: a session without a worktree changes a code
    // file without reporting it, so the scan runs `git status` there after the turn.
    p.next("echo 'fn main() {}' > scan.rs");
    let r = z.ok("delegate", json!({"task": "scan me"})).await;
    assert_eq!(r["status"], "idle", "{r}");
    let plain = s(&r["session_id"]);
    wait_event(&p.env, &["watcher_fired", &plain, "scan.rs"]).await;
    p.assert_nothing_ran("quality scan in the project");
    std::fs::remove_file(work.join("scan.rs")).expect("rm");

    // Worktree creation (a checkout: smudge, post-checkout), then the per-turn commit (add:
    // clean and process filters; commit: hooks, signing).
    p.next("printf '1\\n2\\n3\\n4\\n5\\n6\\n7\\n8\\n9\\nten\\n' > a.txt && echo new > b.txt && echo p > c.p");
    let r = z
        .ok(
            "delegate",
            json!({"task": "edit", "isolation": "worktree", "base": "base"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}");
    let id = s(&r["session_id"]);
    let wt = PathBuf::from(s(&r["worktree"]));
    p.assert_nothing_ran("worktree creation and the turn's commit");
    wait_event(&p.env, &["turn_committed", &id]).await;
    let branch = format!("zwarm/{}", &id[..8]);
    let files = git(&work, &["show", "--name-only", "--format=", &branch]);
    assert!(files.contains("b.txt") && files.contains("c.p"), "{files}");
    // The commit holds the files as they are (no filter touched them).
    let blob = git(&work, &["cat-file", "-p", &format!("{branch}:a.txt")]);
    assert!(blob.ends_with("9\nten"), "{blob}");

    // check_session's diff (numstat, status), the diff resource and `zwarm diff`.
    std::fs::write(wt.join("b.txt"), "new\nuncommitted\n").expect("write");
    let c = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(c["diff"]["files_total"], 3, "{c}");
    let whole = read_resource(&z, &format!("zwarm://sessions/{id}/diff")).await;
    assert!(
        whole.contains("+ten") && whole.contains("+uncommitted"),
        "{whole}"
    );
    let (ok, out) = cli_diff(&p.env, &id);
    assert!(ok && out.contains("+ten"), "{out}");
    p.assert_nothing_ran("the diffs");

    // The merge: not a fast-forward (both sides changed a.txt), so merge-tree merges a.txt
    // (merge driver), commit-tree, then the fast-forward of the checkout (smudge,
    // post-merge, signature checks).
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "integrate": "merge", "summary": "done"}),
        )
        .await;
    assert_eq!(e["merged"], true, "{e}");
    let a = std::fs::read_to_string(work.join("a.txt")).expect("read");
    assert!(a.starts_with("one\n") && a.ends_with("9\nten\n"), "{a}");
    p.assert_nothing_ran("the merge");

    // Plain git in the project runs them: the plants are real.
    let o = std::process::Command::new("git")
        .args(["diff", "HEAD~1", "--", "a.txt"])
        .current_dir(&work)
        .output()
        .expect("git");
    assert!(o.status.success() || !o.stderr.is_empty());
    let ran = p.ran();
    assert!(
        ran.contains("fsmonitor") && ran.contains("filter-clean") && ran.contains("diff-driver"),
        "the plants did not work: {ran}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_whose_git_file_points_at_a_copy_is_refused() {
    let p = plant();
    let work = p.env.work.clone();
    let z = start(&p).await;
    // The executor copies the repository's git dir into its worktree, gives the copy a filter
    // (it has all the planted ones already) and points the worktree's `.git` file at it.
    p.next(
        "d=$(sed -n 's/^gitdir: //p' .git); c=$(cd \"$d\" && cd \"$(cat commondir)\" && pwd); \
         cp -r \"$c\" .evil-git && git config -f .evil-git/config core.worktree \"$(pwd)\" && \
         printf 'gitdir: .evil-git\\n' > .git && echo changed >> a.txt && echo 'fn x() {}' > x.rs",
    );
    let r = z
        .ok(
            "delegate",
            json!({"task": "redirect", "isolation": "worktree"}),
        )
        .await;
    // The turn's work cannot be committed to its branch: the turn fails, saying why.
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r.to_string()
            .contains("no longer points at the session's own git dir"),
        "{r}"
    );
    let id = s(&r["session_id"]);
    let wt = PathBuf::from(s(&r["worktree"]));
    assert!(
        std::fs::read_to_string(wt.join(".git"))
            .expect(".git")
            .contains(".evil-git"),
        "the fake did not redirect"
    );
    // The turn's commit is refused and says so; the quality scan ran (its nudge) and ran
    // nothing either.
    let failed = wait_event(&p.env, &["turn_commit_failed", &id]).await;
    assert!(
        failed.contains("no longer points at the session's own git dir"),
        "{failed}"
    );
    wait_event(&p.env, &["watcher_fired", &id, "\"quality\""]).await;
    p.assert_nothing_ran("a turn in a redirected worktree");
    // A redirected worktree never starts another turn: the executor does not run.
    let started = p.env.dir.path().join("executor-started");
    p.next(&format!("touch '{}'", started.display()));
    let c = z
        .ok("converse", json!({"session_id": id, "message": "go on"}))
        .await;
    assert_eq!(c["status"], "failed", "{c}");
    assert!(
        c.to_string()
            .contains("no longer points at the session's own git dir"),
        "{c}"
    );
    assert!(
        !started.exists(),
        "the executor ran in a redirected worktree"
    );
    let c = z.ok("check_session", json!({"session_id": id})).await;
    assert!(
        c.to_string()
            .contains("no longer points at the session's own git dir"),
        "{c}"
    );
    let (ok, out) = cli_diff(&p.env, &id);
    assert!(
        !ok && out.contains("no longer points at the session's own git dir"),
        "{out}"
    );
    let e = z
        .err(
            "end_session",
            json!({"session_id": id, "integrate": "merge"}),
        )
        .await;
    assert!(
        e.contains("no longer points at the session's own git dir"),
        "{e}"
    );
    p.assert_nothing_ran("diffs and a merge of a redirected worktree");
    // Nothing reached the project.
    assert_eq!(
        std::fs::read_to_string(work.join("a.txt")).expect("read"),
        TEN.replacen("1\n", "one\n", 1)
    );
    // Discarding it still works.
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "integrate": "discard"}),
        )
        .await;
    assert_eq!(e["integrate"], "discard", "{e}");
    p.assert_nothing_ran("discarding a redirected worktree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_lists_and_refuses_symlinks_that_point_outside_the_repository() {
    let env = Env::without_clis("zwarm-links-");
    let work = env.work.clone();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("a.txt"), "a\n").expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "base"]);
    let fake = env.dir.path().join("fake-codex.sh");
    exe(
        &fake,
        "#!/bin/sh\ncat >/dev/null 2>&1 &\nln -s /etc/passwd passwd; ln -s ../../outside up; ln -s a.txt inside\necho '{\"type\":\"thread.started\",\"thread_id\":\"0199a000-0000-7000-8000-00000000abcd\"}'\necho '{\"type\":\"turn.started\"}'\necho '{\"type\":\"item.completed\",\"item\":{\"id\":\"item_0\",\"type\":\"agent_message\",\"text\":\"fake done\"}}'\necho '{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":1,\"cached_input_tokens\":0,\"output_tokens\":1}}'\n",
    );
    let z = Zwarm::start(
        &env,
        &["--set", &format!("codex.binary={}", fake.display())],
    )
    .await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "links", "isolation": "worktree"}),
        )
        .await;
    let id = s(&r["session_id"]);
    wait_event(&env, &["turn_committed", &id]).await;
    let e = z
        .err(
            "end_session",
            json!({"session_id": id, "integrate": "merge"}),
        )
        .await;
    assert!(
        e.contains("2 symlink(s) pointing outside the repository")
            && e.contains("passwd -> /etc/passwd")
            && e.contains("up -> ../../outside")
            && !e.contains("inside ->"),
        "{e}"
    );
    assert!(
        std::fs::symlink_metadata(work.join("passwd")).is_err(),
        "the link reached the project"
    );

    // Accepted: merged, listed in the result and in the `worktree_merged` event.
    let m = z
        .ok(
            "end_session",
            json!({"session_id": id, "integrate": "merge", "accept_outside_symlinks": true}),
        )
        .await;
    assert_eq!(m["merged"], true, "{m}");
    let mut listed: Vec<String> = m["outside_symlinks"]
        .as_array()
        .unwrap_or_else(|| panic!("no outside_symlinks: {m}"))
        .iter()
        .map(s)
        .collect();
    listed.sort();
    assert_eq!(listed, ["passwd -> /etc/passwd", "up -> ../../outside"]);
    let ev = wait_event(&env, &["worktree_merged", &id]).await;
    assert!(
        ev.contains("outside_links")
            && ev.contains("passwd -> /etc/passwd")
            && ev.contains("up -> ../../outside"),
        "{ev}"
    );
    assert_eq!(
        std::fs::read_link(work.join("passwd")).expect("link"),
        Path::new("/etc/passwd")
    );
}
