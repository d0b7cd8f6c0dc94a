//! Code in and out through git (blocking: call from `spawn_blocking`).
//!
//! Before a turn, the session's worktree `HEAD` is pushed to `refs/heads/zwarm/<id8>` on the
//! remote (forced: zwarm's own branch is the authority, the remote's is its transport copy).
//! After it, the branch the pod pushed back is fetched and its tree is checked out into the
//! worktree without moving `HEAD` (`git read-tree -u --reset`), so the worktree looks exactly as
//! after a local turn and the engine commits it as it does for one. The executor's state ref
//! gives back the files to read back and the executor's stderr.

use std::path::Path;
use std::time::Duration;

use crate::git::{Git, GitError};

/// Longest a fetch or push may take.
pub const GIT_NET_TIMEOUT: Duration = Duration::from_secs(300);
const MAX: usize = 16 << 20;

/// git in the session's working dir: its recorded worktree when it is one, else the repository
/// it is in.
fn git_for(cwd: &Path) -> Result<Git, String> {
    if let Ok(g) = Git::worktree(cwd, None, GIT_NET_TIMEOUT) {
        return Ok(g);
    }
    match Git::open(cwd, GIT_NET_TIMEOUT) {
        Ok(Some(g)) if g.work_tree().is_some() => Ok(g),
        Ok(_) => Err(format!(
            "{} is not in a git repository: a Kubernetes turn brings its code in and out through git; delegate with isolation \"worktree\"",
            cwd.display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn ok(g: &Git, args: &[&str]) -> Result<String, String> {
    g.ok(args, GIT_NET_TIMEOUT, MAX)
        .map(|s| s.trim().to_string())
        .map_err(|e| match e {
            GitError::Failed { args, stderr } => format!("git {args}: {stderr}"),
            e => e.to_string(),
        })
}

/// The branch the session's worktree is on (`zwarm/<id8>`), after pushing its `HEAD` there on
/// the remote.
pub fn push_branch(cwd: &Path, remote: &str) -> Result<String, String> {
    let g = git_for(cwd)?;
    let head = ok(&g, &["symbolic-ref", "--quiet", "HEAD"])
        .map_err(|_| "the session's worktree is not on a branch".to_string())?;
    let branch = head.trim_start_matches("refs/heads/").to_string();
    if !branch.starts_with("zwarm/") {
        return Err(format!(
            "the session's working dir is on `{branch}`, not on a session branch `zwarm/<id>`: a Kubernetes turn needs isolation \"worktree\""
        ));
    }
    ok(
        &g,
        &[
            "push",
            "--quiet",
            "--force",
            "--no-verify",
            remote,
            &format!("HEAD:refs/heads/{branch}"),
        ],
    )
    .map_err(|e| format!("pushing the session's branch to {remote} failed: {e}"))?;
    Ok(branch)
}

/// What came back of a turn.
#[derive(Debug, Default)]
pub struct Back {
    /// `out/<n>` of the state ref, for each read-back index.
    pub files: Vec<Option<String>>,
    pub stderr: Option<String>,
}

/// Fetch the branch the pod pushed and check its tree out into the worktree (not committed:
/// the engine commits it), then read the files back from the executor's state.
pub fn fetch_turn(
    cwd: &Path,
    remote: &str,
    branch: &str,
    session: &str,
    read_back: usize,
) -> Result<Back, String> {
    let g = git_for(cwd)?;
    ok(
        &g,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            remote,
            &format!("refs/heads/{branch}"),
        ],
    )
    .map_err(|e| format!("fetching the turn's branch back failed: {e}"))?;
    let theirs = ok(&g, &["rev-parse", "FETCH_HEAD^{commit}"])?;
    let head = ok(&g, &["rev-parse", "HEAD"])?;
    if theirs != head {
        let ancestor = g
            .run(
                &["merge-base", "--is-ancestor", &head, &theirs],
                GIT_NET_TIMEOUT,
                MAX,
            )
            .map_err(|e| e.to_string())?;
        if !ancestor.success() {
            return Err(format!(
                "the branch {branch} on {remote} does not continue the session's branch (someone else pushed to it); the turn's work is on the remote at {theirs}"
            ));
        }
        ok(&g, &["read-tree", "-u", "--reset", &theirs])?;
    }
    let mut back = Back::default();
    let state = format!("refs/zwarm/state/{session}");
    if ok(&g, &["fetch", "--quiet", "--no-tags", remote, &state]).is_ok() {
        let commit = ok(&g, &["rev-parse", "FETCH_HEAD^{commit}"])?;
        let show = |p: &str| -> Option<String> {
            let o = g
                .run(
                    &["cat-file", "blob", &format!("{commit}:{p}")],
                    GIT_NET_TIMEOUT,
                    MAX,
                )
                .ok()?;
            o.success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
                .filter(|s| !s.trim().is_empty())
        };
        back.files = (0..read_back).map(|i| show(&format!("out/{i}"))).collect();
        back.stderr = show("stderr");
    }
    Ok(back)
}
