//! What a session's branch (and its worktree) changed versus its base.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::{GIT_TIMEOUT, GitError, MAX_COMMITS, MAX_FILES, MAX_OUTPUT, nul_list, read_regular};
use crate::git::Git;

/// Most untracked files shown in the whole diff.
const MAX_UNTRACKED_IN_DIFF: usize = 500;

/// What every diff zwarm runs is told: no external diff, no textconv, no rename detection.
const DIFF: &[&str] = &["diff", "--no-ext-diff", "--no-textconv", "--no-renames"];

/// One changed file in a session's diff.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DiffFile {
    /// Relative to the top of the checkout.
    pub path: String,
    /// Lines added (absent for a binary file).
    pub added: Option<u64>,
    /// Lines removed (absent for a binary file).
    pub removed: Option<u64>,
    /// The file has changes not committed to the branch yet (an untracked file counts).
    pub uncommitted: bool,
}

/// One commit on a session's branch.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CommitInfo {
    pub sha: String,
    pub subject: String,
}

/// What a session's branch changed versus its base.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DiffStat {
    /// The base commit compared against.
    pub base: String,
    pub branch: String,
    /// Changed files (at most 200; `files_total` counts all).
    pub files: Vec<DiffFile>,
    pub files_total: usize,
    /// Lines added and removed over all files.
    pub added: u64,
    pub removed: u64,
    /// The branch's commits since the base, newest first (at most 30; `commits_total` counts all).
    pub commits: Vec<CommitInfo>,
    pub commits_total: usize,
    /// Some changes are not committed yet (a turn is running, or worktree_commit_turns is off).
    pub uncommitted: bool,
    /// Resource with the whole unified diff.
    pub uri: String,
}

fn numstat(bytes: &[u8]) -> Vec<(Option<u64>, Option<u64>, String)> {
    let mut out = Vec::new();
    for e in nul_list(bytes) {
        let mut parts = e.splitn(3, '\t');
        let (Some(a), Some(r), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        out.push((a.parse().ok(), r.parse().ok(), p.to_string()));
    }
    out
}

/// Paths `git status` reports: (changed tracked paths, untracked paths).
pub(super) fn status_paths(
    g: &Git,
    timeout: Duration,
) -> Result<(Vec<String>, Vec<String>), GitError> {
    let o = g.ok(
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "-z",
            "--untracked-files=all",
            "--ignore-submodules=dirty",
            "--no-renames",
        ],
        timeout,
        MAX_OUTPUT,
    )?;
    let mut tracked = Vec::new();
    let mut untracked = Vec::new();
    for e in nul_list(o.as_bytes()) {
        let (Some(xy), Some(path)) = (e.get(..2), e.get(3..)) else {
            continue;
        };
        if xy == "??" {
            untracked.push(path.to_string());
        } else {
            tracked.push(path.to_string());
        }
    }
    Ok((tracked, untracked))
}

/// Lines in a regular file (bounded read); `None` for a binary file or anything else.
fn count_lines(path: &Path) -> Option<u64> {
    let buf = read_regular(path)?;
    if buf.contains(&0) {
        return None;
    }
    let n = buf.iter().filter(|b| **b == b'\n').count() as u64;
    Some(if buf.last().is_some_and(|b| *b != b'\n') {
        n + 1
    } else {
        n
    })
}

/// The commit the branch's changes are counted from: where it left `base`.
fn fork_point(g: &Git, base: &str, tip: &str) -> Result<String, GitError> {
    let o = g.run(&["merge-base", base, tip], GIT_TIMEOUT, MAX_OUTPUT)?;
    let mb = o.text().trim().to_string();
    Ok(if o.success() && !mb.is_empty() {
        mb
    } else {
        base.to_string()
    })
}

/// git for the session: its worktree when it exists (refused when redirected), else the
/// repository.
fn session_git(repo: &Path, wt: Option<&Path>) -> Result<Git, GitError> {
    match wt {
        Some(w) => Git::worktree(w, Some(repo), GIT_TIMEOUT),
        None => super::repo_git(repo),
    }
}

fn with(args: &[&str]) -> Vec<String> {
    DIFF.iter().chain(args).map(|s| s.to_string()).collect()
}

fn diff(g: &Git, args: &[&str]) -> Result<String, GitError> {
    let a = with(args);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    g.ok(&a, GIT_TIMEOUT, MAX_OUTPUT)
}

/// The session's changes versus `base`: committed on `branch` (`git diff --numstat
/// base...branch`), plus what is not committed yet in the worktree `wt` when it exists.
pub fn diff_stat(
    repo: &Path,
    wt: Option<&Path>,
    base: &str,
    branch: &str,
    uri: String,
) -> Result<DiffStat, GitError> {
    let tip = format!("refs/heads/{branch}");
    let g = session_git(repo, wt)?;
    let from = fork_point(&g, base, if wt.is_some() { "HEAD" } else { &tip })?;
    let mut files: Vec<DiffFile> = Vec::new();
    let mut uncommitted_any = false;
    if let Some(w) = wt {
        // The working tree against the fork point: committed and uncommitted changes at once.
        let o = diff(&g, &["--numstat", "-z", &from])?;
        let (tracked, untracked) = status_paths(&g, GIT_TIMEOUT)?;
        let dirty: BTreeSet<&str> = tracked.iter().map(String::as_str).collect();
        for (a, r, p) in numstat(o.as_bytes()) {
            let u = dirty.contains(p.as_str());
            files.push(DiffFile {
                path: p,
                added: a,
                removed: r,
                uncommitted: u,
            });
        }
        uncommitted_any = !tracked.is_empty() || !untracked.is_empty();
        for p in untracked {
            files.push(DiffFile {
                added: count_lines(&w.join(&p)),
                removed: Some(0),
                path: p,
                uncommitted: true,
            });
        }
    } else {
        let range = format!("{from}..{tip}");
        let o = diff(&g, &["--numstat", "-z", &range])?;
        for (a, r, p) in numstat(o.as_bytes()) {
            files.push(DiffFile {
                path: p,
                added: a,
                removed: r,
                uncommitted: false,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let added = files.iter().filter_map(|f| f.added).sum();
    let removed = files.iter().filter_map(|f| f.removed).sum();
    let files_total = files.len();
    files.truncate(MAX_FILES);
    let range = format!("{base}..{tip}");
    let count = g.ok(&["rev-list", "--count", &range], GIT_TIMEOUT, MAX_OUTPUT)?;
    let log = g.ok(
        &[
            "log",
            "--no-decorate",
            "--no-show-signature",
            "-z",
            "--format=%H%x09%s",
            &format!("--max-count={MAX_COMMITS}"),
            &range,
        ],
        GIT_TIMEOUT,
        MAX_OUTPUT,
    )?;
    let commits = nul_list(log.as_bytes())
        .into_iter()
        .filter_map(|l| {
            let (sha, subject) = l.trim_start_matches('\n').split_once('\t')?;
            Some(CommitInfo {
                sha: sha.to_string(),
                subject: crate::text::truncate_chars(subject, 200),
            })
        })
        .collect();
    Ok(DiffStat {
        base: base.to_string(),
        branch: branch.to_string(),
        files,
        files_total,
        added,
        removed,
        commits,
        commits_total: count.trim().parse().unwrap_or(0),
        uncommitted: uncommitted_any,
        uri,
    })
}

/// The whole unified diff of the session versus `base`: the working tree of `wt` when it
/// exists (untracked files shown as added), else the branch.
pub fn diff_text(
    repo: &Path,
    wt: Option<&Path>,
    base: &str,
    branch: &str,
) -> Result<String, GitError> {
    let tip = format!("refs/heads/{branch}");
    let g = session_git(repo, wt)?;
    let Some(w) = wt else {
        let from = fork_point(&g, base, &tip)?;
        return diff(&g, &[&format!("{from}..{tip}")]);
    };
    let from = fork_point(&g, base, "HEAD")?;
    let mut text = diff(&g, &[&from])?;
    let (_, untracked) = status_paths(&g, GIT_TIMEOUT)?;
    for p in untracked.iter().take(MAX_UNTRACKED_IN_DIFF) {
        // Only regular files and symlinks: a FIFO would hold git until its deadline.
        let kind = std::fs::symlink_metadata(w.join(p)).map(|m| m.file_type());
        if !kind.is_ok_and(|k| k.is_file() || k.is_symlink()) {
            continue;
        }
        let a = with(&["--no-index", "--", "/dev/null", p]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = g.run(&a, GIT_TIMEOUT, MAX_OUTPUT)?;
        text.push_str(&o.text());
        if text.len() > MAX_OUTPUT {
            break;
        }
    }
    if untracked.len() > MAX_UNTRACKED_IN_DIFF {
        text.push_str(&format!(
            "\n# … and {} more untracked files\n",
            untracked.len() - MAX_UNTRACKED_IN_DIFF
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numstat_reads_text_and_binary_files() {
        let got = numstat(b"3\t1\tsrc/a.rs\0-\t-\timg.png\0");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (Some(3), Some(1), "src/a.rs".to_string()));
        assert_eq!(got[1], (None, None, "img.png".to_string()));
    }
}
