//! Git worktrees for isolated sessions: create one, commit a turn, review, merge back, remove.
//!
//! Everything here is blocking (it runs `git` as a child process and waits for it, with a
//! deadline): call it from `spawn_blocking`, never on an async worker. It knows nothing about
//! sessions; `crate::sessions::isolation` decides when to call what.
//!
//! Git runs with hooks, fsmonitor, automatic gc and signing off: an executor may have written
//! the repository's hooks or config, and zwarm runs git outside the executor's sandbox. zwarm's
//! own commits are authored `zwarm <zwarm@localhost>`.
//!
//! Merging back never leaves the project checkout half-merged: the merge is computed first
//! without touching any checkout (`git merge-tree --write-tree`, then `git commit-tree`), refused
//! when it conflicts or would touch a file with uncommitted changes, and only then applied with
//! `git merge --ff-only`, which cannot conflict.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

/// Longest a git command may take before it is stopped.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `git worktree add` may take (it checks out the whole tree).
pub const ADD_TIMEOUT: Duration = Duration::from_secs(300);
/// Most output kept from one git command (a whole diff for the diff resource).
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;
/// Most files and commits listed in a diff summary (the totals count all of them).
pub const MAX_FILES: usize = 200;
pub const MAX_COMMITS: usize = 30;
/// Most untracked files shown in the whole diff, and most bytes read of each.
const MAX_UNTRACKED_IN_DIFF: usize = 500;
const MAX_SCAN_BYTES: u64 = 8 * 1024 * 1024;

/// Settings every zwarm git command runs with.
const SAFE: &[&str] = &[
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.pager=cat",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
    "-c",
    "color.ui=false",
    "-c",
    "user.name=zwarm",
    "-c",
    "user.email=zwarm@localhost",
];

/// Environment variables that would point git somewhere else, or speak for someone else.
const SCRUB: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_COMMITTER_DATE",
    "GIT_EDITOR",
    "GIT_SEQUENCE_EDITOR",
    "GIT_EXTERNAL_DIFF",
    "GIT_PAGER",
    "GIT_TRACE",
];

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("could not run git ({0}); install git, or use isolation \"none\"")]
    Spawn(std::io::Error),
    #[error("`git {args}` did not finish within {secs} s and was stopped")]
    Timeout { args: String, secs: u64 },
    #[error("`git {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("`git {args}` printed more than {max} bytes")]
    TooLong { args: String, max: usize },
}

/// What a git command did.
pub struct Out {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn shown(args: &[&str]) -> String {
    crate::text::one_line(&args.join(" "), 200)
}

/// Run `git <args>` in `dir`, whatever its exit code; `Err` only when it could not run, ran
/// too long or printed too much.
pub fn run(dir: &Path, args: &[&str], timeout: Duration) -> Result<Out, GitError> {
    run_capped(dir, args, timeout, MAX_OUTPUT)
}

/// [`run`] keeping at most `max` bytes of output (more is [`GitError::TooLong`]).
pub fn run_capped(
    dir: &Path,
    args: &[&str],
    timeout: Duration,
    max: usize,
) -> Result<Out, GitError> {
    let mut cmd = Command::new("git");
    cmd.args(SAFE)
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C");
    for k in SCRUB {
        cmd.env_remove(k);
    }
    let b = crate::process::run_bounded(&mut cmd, timeout, max).map_err(GitError::Spawn)?;
    let Some(status) = b.status else {
        return Err(GitError::Timeout {
            args: shown(args),
            secs: timeout.as_secs(),
        });
    };
    if b.stdout_over {
        return Err(GitError::TooLong {
            args: shown(args),
            max,
        });
    }
    Ok(Out {
        code: status.code(),
        stdout: b.stdout,
        stderr: crate::text::one_line(String::from_utf8_lossy(&b.stderr).trim(), 2000),
    })
}

/// Run `git <args>`; a non-zero exit is an error carrying git's message.
pub fn run_ok(dir: &Path, args: &[&str], timeout: Duration) -> Result<String, GitError> {
    let o = run(dir, args, timeout)?;
    if !o.success() {
        return Err(GitError::Failed {
            args: shown(args),
            stderr: o.stderr,
        });
    }
    Ok(o.text())
}

/// NUL-separated output as strings (empty entries dropped).
fn nul_list(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The top of the checkout `dir` is in; `None` when it is not in a git work tree.
pub fn toplevel(dir: &Path) -> Result<Option<PathBuf>, GitError> {
    let o = run(dir, &["rev-parse", "--show-toplevel"], GIT_TIMEOUT)?;
    if !o.success() {
        return Ok(None);
    }
    let t = o.text();
    let t = t.trim();
    if t.is_empty() {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(t)))
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

/// `git worktree add -b <branch> <path> <base>`. When it fails, whatever it made (a partial
/// checkout, the branch) is removed again.
pub fn add(repo: &Path, path: &Path, branch: &str, base: &str) -> Result<(), GitError> {
    let p = path.display().to_string();
    let r = run_ok(
        repo,
        &["worktree", "add", "--quiet", "-b", branch, &p, base],
        ADD_TIMEOUT,
    );
    if r.is_err() {
        let _ = remove(repo, path);
        if path.exists() {
            let _ = std::fs::remove_dir_all(path);
            let _ = prune(repo);
        }
        let _ = delete_branch(repo, branch);
    }
    r.map(drop)
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

/// The repository (common git dir's checkout) a worktree belongs to, read from its `.git`
/// file: `gitdir: <common>/worktrees/<name>`.
pub fn repo_of_worktree(wt: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(wt.join(".git")).ok()?;
    let gitdir = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
    // <repo>/.git/worktrees/<name> -> <repo>/.git -> <repo>
    let common = gitdir.parent()?.parent()?;
    if common.file_name().is_some_and(|n| n == ".git") {
        common.parent().map(Path::to_path_buf)
    } else {
        // A bare repository: git commands run in it directly.
        Some(common.to_path_buf())
    }
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
        let Ok(f) = std::fs::File::open(wt.join(p)) else {
            continue; // deleted: resolved by removal
        };
        let mut buf = Vec::new();
        if f.take(MAX_SCAN_BYTES).read_to_end(&mut buf).is_err() {
            continue;
        }
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
/// commit; one with conflict markers left is not committed.
pub fn commit_all(
    wt: &Path,
    branch: &str,
    message: &str,
    timeout: Duration,
) -> Result<Commit, GitError> {
    let head = run(wt, &["symbolic-ref", "--quiet", "HEAD"], timeout)?;
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
    let unmerged = run(wt, &["ls-files", "--unmerged", "-z"], timeout)?;
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
    run_ok(wt, &["add", "--all"], timeout)?;
    let staged = run(wt, &["diff", "--cached", "--quiet"], timeout)?;
    let merging = run(
        wt,
        &["rev-parse", "--quiet", "--verify", "MERGE_HEAD"],
        timeout,
    )?
    .success();
    if staged.success() && !merging {
        return Ok(Commit::Nothing);
    }
    run_ok(
        wt,
        &[
            "commit",
            "--quiet",
            "--no-verify",
            "--allow-empty",
            "-m",
            message,
        ],
        timeout,
    )?;
    let sha = run_ok(wt, &["rev-parse", "HEAD"], timeout)?
        .trim()
        .to_string();
    let names = run_ok(
        wt,
        &[
            "diff",
            "--name-status",
            "--no-renames",
            "-z",
            "HEAD^1",
            "HEAD",
        ],
        timeout,
    )?;
    let items = nul_list(names.as_bytes());
    let mut files = Vec::new();
    for pair in items.chunks(2) {
        if let [st, path] = pair {
            files.push((st.chars().next().unwrap_or('M'), path.clone()));
        }
    }
    Ok(Commit::Made { sha, files })
}

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

/// Paths `git status` reports in `dir`: (changed tracked paths, untracked paths).
fn status_paths(dir: &Path, timeout: Duration) -> Result<(Vec<String>, Vec<String>), GitError> {
    let o = run_ok(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "-z",
            "--untracked-files=all",
            "--no-renames",
        ],
        timeout,
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

/// Lines in a file (bounded read); `None` for a binary file.
fn count_lines(path: &Path) -> Option<u64> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_SCAN_BYTES).read_to_end(&mut buf).ok()?;
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
fn fork_point(repo: &Path, base: &str, tip: &str) -> Result<String, GitError> {
    let o = run(repo, &["merge-base", base, tip], GIT_TIMEOUT)?;
    let mb = o.text().trim().to_string();
    Ok(if o.success() && !mb.is_empty() {
        mb
    } else {
        base.to_string()
    })
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
    let (dir, from) = match wt {
        Some(w) => (w.to_path_buf(), fork_point(w, base, "HEAD")?),
        None => (repo.to_path_buf(), fork_point(repo, base, &tip)?),
    };
    let mut files: Vec<DiffFile> = Vec::new();
    let mut uncommitted_any = false;
    if let Some(w) = wt {
        // The working tree against the fork point: committed and uncommitted changes at once.
        let o = run_ok(
            w,
            &["diff", "--numstat", "-z", "--no-renames", &from],
            GIT_TIMEOUT,
        )?;
        let (tracked, untracked) = status_paths(w, GIT_TIMEOUT)?;
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
        let o = run_ok(
            &dir,
            &["diff", "--numstat", "-z", "--no-renames", &range],
            GIT_TIMEOUT,
        )?;
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
    let count = run_ok(&dir, &["rev-list", "--count", &range], GIT_TIMEOUT)?;
    let log = run_ok(
        &dir,
        &[
            "log",
            "--no-decorate",
            "-z",
            "--format=%H%x09%s",
            &format!("--max-count={MAX_COMMITS}"),
            &range,
        ],
        GIT_TIMEOUT,
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
    match wt {
        Some(w) => {
            let from = fork_point(w, base, "HEAD")?;
            let mut text = run_ok(
                w,
                &["diff", "--no-renames", "--no-ext-diff", &from],
                GIT_TIMEOUT,
            )?;
            let (_, untracked) = status_paths(w, GIT_TIMEOUT)?;
            for p in untracked.iter().take(MAX_UNTRACKED_IN_DIFF) {
                let o = run(
                    w,
                    &["diff", "--no-index", "--no-ext-diff", "--", "/dev/null", p],
                    GIT_TIMEOUT,
                )?;
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
        None => {
            let from = fork_point(repo, base, &tip)?;
            let range = format!("{from}..{tip}");
            run_ok(
                repo,
                &["diff", "--no-renames", "--no-ext-diff", &range],
                GIT_TIMEOUT,
            )
        }
    }
}

/// A merge that was done.
#[derive(Debug)]
pub struct Merged {
    /// The commit the project's branch (or detached HEAD) points to now.
    pub commit: String,
    /// What was merged into: a branch name, or `HEAD` when detached.
    pub target: String,
    pub fast_forward: bool,
    /// The branch held nothing the checkout did not have already.
    pub already: bool,
}

/// Why a merge was not done. Nothing in the checkout was changed.
#[derive(Debug)]
pub enum Refused {
    /// Both sides changed these files in ways that do not merge. `head`: the commit checked
    /// out in the project.
    Conflicts {
        target: String,
        head: String,
        files: Vec<String>,
    },
    /// The merge would change these files, which have uncommitted changes in the checkout.
    Dirty { target: String, files: Vec<String> },
    /// Something else went wrong (git's message).
    Git(GitError),
}

impl From<GitError> for Refused {
    fn from(e: GitError) -> Self {
        Refused::Git(e)
    }
}

/// Merge `branch` into whatever is checked out in the checkout `project` (its branch, or a
/// detached HEAD): a fast-forward when possible, else a merge commit. Computed without
/// touching any checkout, refused (with nothing changed) when it conflicts or would touch a
/// file with uncommitted changes, and then applied with `git merge --ff-only`.
pub fn merge(project: &Path, branch: &str, message: &str) -> Result<Merged, Refused> {
    let t = GIT_TIMEOUT;
    let sym = run(project, &["symbolic-ref", "--quiet", "HEAD"], t)?;
    let target = if sym.success() {
        sym.text()
            .trim()
            .trim_start_matches("refs/heads/")
            .to_string()
    } else {
        "HEAD".to_string()
    };
    let head = run_ok(project, &["rev-parse", "--verify", "HEAD^{commit}"], t)?
        .trim()
        .to_string();
    let tip_ref = format!("refs/heads/{branch}^{{commit}}");
    let tip = run_ok(project, &["rev-parse", "--verify", &tip_ref], t)?
        .trim()
        .to_string();
    let is_ancestor = |a: &str, b: &str| -> Result<bool, GitError> {
        Ok(run(project, &["merge-base", "--is-ancestor", a, b], t)?.success())
    };
    if is_ancestor(&tip, &head)? {
        return Ok(Merged {
            commit: head,
            target,
            fast_forward: false,
            already: true,
        });
    }
    let fast_forward = is_ancestor(&head, &tip)?;
    let result = if fast_forward {
        tip.clone()
    } else {
        let o = run(
            project,
            &[
                "merge-tree",
                "--write-tree",
                "-z",
                "--name-only",
                "--no-messages",
                &head,
                &tip,
            ],
            t,
        )?;
        let mut parts = nul_list(&o.stdout).into_iter();
        let tree = parts.next().unwrap_or_default();
        match o.code {
            Some(0) => {}
            Some(1) => {
                let files: BTreeSet<String> = parts.collect();
                return Err(Refused::Conflicts {
                    target,
                    head,
                    files: files.into_iter().collect(),
                });
            }
            _ => {
                return Err(Refused::Git(GitError::Failed {
                    args: "merge-tree --write-tree".into(),
                    stderr: o.stderr,
                }));
            }
        }
        run_ok(
            project,
            &[
                "commit-tree",
                tree.trim(),
                "-p",
                &head,
                "-p",
                &tip,
                "-m",
                message,
            ],
            t,
        )?
        .trim()
        .to_string()
    };
    // Files the merge changes, against files with uncommitted changes in the checkout.
    let changed = run_ok(
        project,
        &["diff", "--name-only", "-z", "--no-renames", &head, &result],
        t,
    )?;
    let changed: BTreeSet<String> = nul_list(changed.as_bytes()).into_iter().collect();
    let (tracked, untracked) = status_paths(project, t)?;
    let dirty: BTreeSet<String> = tracked
        .into_iter()
        .chain(untracked)
        .filter(|p| {
            changed.contains(p)
                // An untracked directory in the way of a file the merge adds, or the reverse.
                || changed.iter().any(|c| c.starts_with(&format!("{p}/")) || p.starts_with(&format!("{c}/")))
        })
        .collect();
    if !dirty.is_empty() {
        return Err(Refused::Dirty {
            target,
            files: dirty.into_iter().collect(),
        });
    }
    run_ok(
        project,
        &["merge", "--ff-only", "--quiet", "--no-edit", &result],
        t,
    )?;
    let now = run_ok(project, &["rev-parse", "HEAD"], t)?
        .trim()
        .to_string();
    if now != result {
        return Err(Refused::Git(GitError::Failed {
            args: "merge --ff-only".into(),
            stderr: format!("the checkout is at {now}, expected {result}"),
        }));
    }
    Ok(Merged {
        commit: result,
        target,
        fast_forward,
        already: false,
    })
}

/// Start merging `commit` into the worktree `wt` without committing, so the conflicts are
/// there to resolve (files with conflict markers). The next commit of the worktree
/// ([`commit_all`]) concludes the merge. Returns whether a merge is now in progress.
pub fn start_merge(wt: &Path, commit: &str) -> Result<bool, GitError> {
    let o = run(
        wt,
        &[
            "merge",
            "--no-commit",
            "--no-ff",
            "--no-edit",
            "--quiet",
            commit,
        ],
        GIT_TIMEOUT,
    )?;
    let merging = run(
        wt,
        &["rev-parse", "--quiet", "--verify", "MERGE_HEAD"],
        GIT_TIMEOUT,
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

    #[test]
    fn numstat_reads_text_and_binary_files() {
        let got = numstat(b"3\t1\tsrc/a.rs\0-\t-\timg.png\0");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (Some(3), Some(1), "src/a.rs".to_string()));
        assert_eq!(got[1], (None, None, "img.png".to_string()));
    }
}
