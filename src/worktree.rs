//! Git worktrees for isolated sessions: create one, commit a turn, review, merge back, remove.
//!
//! Everything here is blocking (it runs `git` as a child process and waits for it, with a
//! deadline): call it from `spawn_blocking`, never on an async worker. It knows nothing about
//! sessions; `crate::sessions::isolation` decides when to call what.
//!
//! Git runs through [`crate::git`]: with an explicit git dir and work tree, and with hooks,
//! fsmonitor, filters, textconv, external diff, merge drivers, credential helpers, automatic
//! gc and signing off, because an executor may have written the repository's config and
//! attributes, and zwarm runs git outside the executor's sandbox. A session worktree whose
//! `.git` file no longer points at the git dir zwarm made for it is refused. zwarm's own
//! commits are authored `zwarm <zwarm@localhost>`.
//!
//! Merging back never leaves the project checkout half-merged: the merge is computed first
//! without touching any checkout (`git merge-tree --write-tree`, then `git commit-tree`), refused
//! when it conflicts, would touch a file with uncommitted changes or brings a symlink pointing
//! outside the repository (unless asked), and only then applied with `git merge --ff-only`,
//! which cannot conflict.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::git::Git;
pub use crate::git::{GitError, Out};

mod diff;
mod merge;
pub use diff::{CommitInfo, DiffFile, DiffStat, diff_stat, diff_text};
pub use merge::{Link, Merged, Refused, merge, merge_with};

/// Longest a git command may take before it is stopped.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `git worktree add` may take (it checks out the whole tree).
pub const ADD_TIMEOUT: Duration = Duration::from_secs(300);
/// Most output kept from one git command (a whole diff for the diff resource).
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;
/// Most files and commits listed in a diff summary (the totals count all of them).
pub const MAX_FILES: usize = 200;
pub const MAX_COMMITS: usize = 30;
/// Most bytes read of one file zwarm looks into (conflict markers, line counts).
const MAX_SCAN_BYTES: u64 = 8 * 1024 * 1024;

/// git for the repository whose checkout (or bare git dir) is `repo`.
fn repo_git(repo: &Path) -> Result<Git, GitError> {
    Git::open(repo, GIT_TIMEOUT)?.ok_or_else(|| GitError::Failed {
        args: "rev-parse --absolute-git-dir".into(),
        stderr: format!("{} is not in a git repository", repo.display()),
    })
}

/// `git <args>` in `dir`'s repository, whatever its exit code (see [`Git::run`]).
pub fn run(dir: &Path, args: &[&str], timeout: Duration) -> Result<Out, GitError> {
    repo_git(dir)?.run(args, timeout, MAX_OUTPUT)
}

/// [`run`]; a non-zero exit is an error carrying git's message.
pub fn run_ok(dir: &Path, args: &[&str], timeout: Duration) -> Result<String, GitError> {
    repo_git(dir)?.ok(args, timeout, MAX_OUTPUT)
}

/// NUL-separated output as strings (empty entries dropped).
fn nul_list(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// At most `MAX_SCAN_BYTES` of the regular file `path` (never a symlink, FIFO or device);
/// `None` when it is not one or cannot be read.
fn read_regular(path: &Path) -> Option<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.take(MAX_SCAN_BYTES).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The top of the checkout `dir` is in; `None` when it is not in a git work tree.
pub fn toplevel(dir: &Path) -> Result<Option<PathBuf>, GitError> {
    Ok(Git::open(dir, GIT_TIMEOUT)?.and_then(|g| g.work_tree().map(Path::to_path_buf)))
}

/// Whether a user-given ref may be passed to git (it can never be read as an option).
pub fn valid_rev(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= 256
        && !rev.starts_with('-')
        && !rev.contains("..")
        && !rev.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// The commit `rev` names in `repo`; `None` when it names none.
pub fn resolve_commit(repo: &Path, rev: &str) -> Result<Option<String>, GitError> {
    if !valid_rev(rev) {
        return Ok(None);
    }
    let spec = format!("{rev}^{{commit}}");
    let o = run(
        repo,
        &["rev-parse", "--verify", "--quiet", &spec],
        GIT_TIMEOUT,
    )?;
    let sha = o.text().trim().to_string();
    Ok((o.success() && !sha.is_empty()).then_some(sha))
}

/// Whether `refs/heads/<branch>` exists.
pub fn branch_exists(repo: &Path, branch: &str) -> Result<bool, GitError> {
    let r = format!("refs/heads/{branch}");
    Ok(run(repo, &["show-ref", "--verify", "--quiet", &r], GIT_TIMEOUT)?.success())
}

/// `git worktree add -b <branch> <path> <base>`, and the record of the git dir it made (the
/// only one zwarm runs git with in that worktree from then on). When it fails, whatever it
/// made (a partial checkout, the branch) is removed again.
pub fn add(repo: &Path, path: &Path, branch: &str, base: &str) -> Result<(), GitError> {
    let p = path.display().to_string();
    let r = run_ok(
        repo,
        &["worktree", "add", "--quiet", "-b", branch, &p, base],
        ADD_TIMEOUT,
    )
    .and_then(|_| {
        crate::git::record_worktree(path).map_err(|e| GitError::Failed {
            args: format!("worktree add {p}"),
            stderr: format!("cannot record the worktree's git dir: {e}"),
        })
    });
    if r.is_err() {
        let _ = remove(repo, path);
        if path.exists() {
            let _ = std::fs::remove_dir_all(path);
            let _ = prune(repo);
        }
        let _ = delete_branch(repo, branch);
    }
    r
}

/// Remove a worktree (with whatever it holds) and its administrative files. A worktree whose
/// directory is already gone is pruned.
pub fn remove(repo: &Path, path: &Path) -> Result<(), GitError> {
    if path.exists() {
        let p = path.display().to_string();
        let o = run(
            repo,
            &["worktree", "remove", "--force", "--force", &p],
            GIT_TIMEOUT,
        )?;
        if !o.success() && path.exists() {
            return Err(GitError::Failed {
                args: format!("worktree remove --force {p}"),
                stderr: o.stderr,
            });
        }
    }
    crate::git::forget_worktree(path);
    prune(repo)
}

/// `git branch -D <branch>` (a branch already gone is fine).
pub fn delete_branch(repo: &Path, branch: &str) -> Result<(), GitError> {
    if !branch_exists(repo, branch)? {
        return Ok(());
    }
    run_ok(repo, &["branch", "-D", "--quiet", branch], GIT_TIMEOUT).map(drop)
}

/// `git worktree prune`: forget worktrees whose directories are gone.
pub fn prune(repo: &Path) -> Result<(), GitError> {
    run_ok(repo, &["worktree", "prune"], GIT_TIMEOUT).map(drop)
}

/// The repository (common git dir's checkout) a worktree belongs to, read from the git dir
/// recorded when zwarm made it, else from its `.git` file: `gitdir: <common>/worktrees/<name>`.
pub fn repo_of_worktree(wt: &Path) -> Option<PathBuf> {
    let gitdir = match crate::git::recorded_git_dir(wt) {
        Some(g) => g,
        None => {
            let text = std::fs::read_to_string(wt.join(".git")).ok()?;
            PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim())
        }
    };
    // <repo>/.git/worktrees/<name> -> <repo>/.git -> <repo>
    let common = gitdir.parent()?.parent()?;
    if common.file_name().is_some_and(|n| n == ".git") {
        common.parent().map(Path::to_path_buf)
    } else {
        // A bare repository: git commands run in it directly.
        Some(common.to_path_buf())
    }
}

/// Whether the session worktree `wt` still points at the git dir zwarm made for it (`Err`
/// says how it does not). For a check before a turn starts.
pub fn check_worktree(wt: &Path) -> Result<(), GitError> {
    Git::worktree(wt, None, GIT_TIMEOUT).map(drop)
}

/// What [`commit_all`] did.
#[derive(Debug)]
pub enum Commit {
    /// Nothing had changed.
    Nothing,
    /// A commit on the branch: its sha and the files it changed (`A`/`M`/`D`, path).
    Made {
        sha: String,
        files: Vec<(char, String)>,
    },
    /// Not committed, and why (the worktree is not on the session's branch, or holds
    /// unresolved merge conflicts).
    Skipped(String),
}

/// Files still holding conflict markers among `paths` (relative to `wt`).
fn with_markers(wt: &Path, paths: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        let Some(buf) = read_regular(&wt.join(p)) else {
            continue; // deleted: resolved by removal
        };
        let text = String::from_utf8_lossy(&buf);
        if text.lines().any(|l| {
            l.starts_with("<<<<<<< ")
                || l.starts_with(">>>>>>> ")
                || l == "<<<<<<<"
                || l == ">>>>>>>"
        }) {
            out.push(p.clone());
        }
    }
    out
}

/// Commit everything that changed in the worktree `wt` (tracked and untracked, minus ignored
/// files) onto `branch`. A merge the executor started and resolved is concluded by this
/// commit; one with conflict markers left is not committed. A worktree whose `.git` file no
/// longer points at its own git dir is [`GitError::Redirected`].
pub fn commit_all(
    wt: &Path,
    branch: &str,
    message: &str,
    timeout: Duration,
) -> Result<Commit, GitError> {
    let g = Git::worktree(wt, None, timeout)?;
    let run = |args: &[&str]| g.run(args, timeout, MAX_OUTPUT);
    let run_ok = |args: &[&str]| g.ok(args, timeout, MAX_OUTPUT);
    let head = run(&["symbolic-ref", "--quiet", "HEAD"])?;
    let want = format!("refs/heads/{branch}");
    let on = head.text().trim().to_string();
    if !head.success() || on != want {
        let now = if head.success() {
            format!("`{}`", on.trim_start_matches("refs/heads/"))
        } else {
            "a detached HEAD (a rebase in progress?)".to_string()
        };
        return Ok(Commit::Skipped(format!(
            "the worktree is on {now}, not on the session's branch `{branch}`; zwarm commits only to that branch"
        )));
    }
    let unmerged = run(&["ls-files", "--unmerged", "-z"])?;
    let mut conflicted: BTreeSet<String> = BTreeSet::new();
    for e in nul_list(&unmerged.stdout) {
        // <mode> <sha> <stage>\t<path>
        if let Some((_, path)) = e.split_once('\t') {
            conflicted.insert(path.to_string());
        }
    }
    if !conflicted.is_empty() {
        let paths: Vec<String> = conflicted.into_iter().collect();
        let left = with_markers(wt, &paths);
        if !left.is_empty() {
            return Ok(Commit::Skipped(format!(
                "unresolved merge conflicts in {}: remove the conflict markers, then the next turn's end commits the resolution",
                left.join(", ")
            )));
        }
    }
    run_ok(&["add", "--all"])?;
    let staged = run(&[
        "diff",
        "--cached",
        "--quiet",
        "--no-ext-diff",
        "--no-textconv",
    ])?;
    let merging = run(&["rev-parse", "--quiet", "--verify", "MERGE_HEAD"])?.success();
    if staged.success() && !merging {
        return Ok(Commit::Nothing);
    }
    run_ok(&[
        "commit",
        "--quiet",
        "--no-verify",
        "--no-gpg-sign",
        "--allow-empty",
        "-m",
        message,
    ])?;
    let sha = run_ok(&["rev-parse", "HEAD"])?.trim().to_string();
    let names = run_ok(&[
        "diff",
        "--name-status",
        "--no-renames",
        "--no-ext-diff",
        "--no-textconv",
        "-z",
        "HEAD^1",
        "HEAD",
    ])?;
    let items = nul_list(names.as_bytes());
    let mut files = Vec::new();
    for pair in items.chunks(2) {
        if let [st, path] = pair {
            files.push((st.chars().next().unwrap_or('M'), path.clone()));
        }
    }
    Ok(Commit::Made { sha, files })
}
/// Start merging `commit` into the worktree `wt` without committing, so the conflicts are
/// there to resolve (files with conflict markers). The next commit of the worktree
/// ([`commit_all`]) concludes the merge. Returns whether a merge is now in progress.
pub fn start_merge(wt: &Path, commit: &str) -> Result<bool, GitError> {
    let g = Git::worktree(wt, None, GIT_TIMEOUT)?;
    let o = g.run(
        &[
            "merge",
            "--no-commit",
            "--no-ff",
            "--no-edit",
            "--no-verify-signatures",
            "--quiet",
            commit,
        ],
        GIT_TIMEOUT,
        MAX_OUTPUT,
    )?;
    let merging = g
        .run(
            &["rev-parse", "--quiet", "--verify", "MERGE_HEAD"],
            GIT_TIMEOUT,
            MAX_OUTPUT,
        )?
        .success();
    if !merging && !o.success() {
        return Err(GitError::Failed {
            args: format!("merge --no-commit {commit}"),
            stderr: o.stderr,
        });
    }
    Ok(merging)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_that_could_be_options_are_refused() {
        assert!(valid_rev("main"));
        assert!(valid_rev("HEAD~2"));
        assert!(valid_rev("v1.0"));
        assert!(!valid_rev("--output=/tmp/x"));
        assert!(!valid_rev("-b"));
        assert!(!valid_rev("a..b"));
        assert!(!valid_rev("a b"));
        assert!(!valid_rev(""));
    }
}
