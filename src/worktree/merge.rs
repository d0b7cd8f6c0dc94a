//! Merging a session's branch into the project checkout.

use std::collections::BTreeSet;
use std::path::{Component, Path};

use super::{GIT_TIMEOUT, GitError, MAX_OUTPUT, diff::status_paths, nul_list};
use crate::git::Git;

/// Most symlinks a merge may bring that zwarm reads the target of; a merge bringing more is
/// refused unless outside links are accepted.
const MAX_LINKS: usize = 1000;

/// A symlink a merge brings that points outside the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Relative to the top of the checkout.
    pub path: String,
    /// What it points to.
    pub target: String,
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}",
            crate::text::one_line(&self.path, 200),
            crate::text::one_line(&self.target, 200)
        )
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
    /// Symlinks pointing outside the repository that the merge brought (only when they were
    /// accepted; otherwise the merge is refused).
    pub outside_links: Vec<Link>,
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
    /// Something else went wrong (git's message), or the merge brings symlinks pointing
    /// outside the repository ([`GitError::OutsideLinks`]).
    Git(GitError),
}

impl From<GitError> for Refused {
    fn from(e: GitError) -> Self {
        Refused::Git(e)
    }
}

/// Whether the symlink at `path` (relative to the top of the repository) pointing to `target`
/// leads outside it: absolute, or climbing above the top. Judged on the names alone.
pub fn points_outside(path: &str, target: &str) -> bool {
    if target.is_empty() || Path::new(target).is_absolute() {
        return true;
    }
    let mut depth: i64 = Path::new(path)
        .parent()
        .map(|p| {
            p.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count() as i64
        })
        .unwrap_or(0);
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Symlinks the change `from..to` adds or changes that point outside the repository.
fn outside_links(g: &Git, from: &str, to: &str) -> Result<Vec<Link>, GitError> {
    let raw = g.ok(
        &[
            "diff",
            "--raw",
            "-z",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
            "--no-abbrev",
            "--diff-filter=AMT",
            from,
            to,
        ],
        GIT_TIMEOUT,
        MAX_OUTPUT,
    )?;
    let items = nul_list(raw.as_bytes());
    let mut links = Vec::new();
    let mut seen = 0;
    for pair in items.chunks(2) {
        let [meta, path] = pair else { continue };
        // :<old mode> <new mode> <old sha> <new sha> <status>
        let mut f = meta.trim_start_matches(':').split(' ');
        let (Some(_), Some(mode), Some(_), Some(sha)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if mode != "120000" {
            continue;
        }
        seen += 1;
        if seen > MAX_LINKS {
            return Err(GitError::OutsideLinks(format!(
                "it brings more than {MAX_LINKS} symlinks, too many for zwarm to check"
            )));
        }
        let target = g.ok(&["cat-file", "blob", sha], GIT_TIMEOUT, 64 * 1024)?;
        if points_outside(path, &target) {
            links.push(Link {
                path: path.clone(),
                target,
            });
        }
    }
    Ok(links)
}

/// [`merge_with`], refusing symlinks that point outside the repository.
pub fn merge(project: &Path, branch: &str, message: &str) -> Result<Merged, Refused> {
    merge_with(project, branch, message, false)
}

/// Merge `branch` into whatever is checked out in the checkout `project` (its branch, or a
/// detached HEAD): a fast-forward when possible, else a merge commit. Computed without
/// touching any checkout, refused (with nothing changed) when it conflicts, would touch a
/// file with uncommitted changes, or brings symlinks pointing outside the repository (unless
/// `accept_outside_links`), and then applied with `git merge --ff-only`.
pub fn merge_with(
    project: &Path,
    branch: &str,
    message: &str,
    accept_outside_links: bool,
) -> Result<Merged, Refused> {
    let t = GIT_TIMEOUT;
    let g = super::repo_git(project)?;
    let run = |args: &[&str]| g.run(args, t, MAX_OUTPUT);
    let run_ok = |args: &[&str]| g.ok(args, t, MAX_OUTPUT);
    let sym = run(&["symbolic-ref", "--quiet", "HEAD"])?;
    let target = if sym.success() {
        sym.text()
            .trim()
            .trim_start_matches("refs/heads/")
            .to_string()
    } else {
        "HEAD".to_string()
    };
    let head = run_ok(&["rev-parse", "--verify", "HEAD^{commit}"])?
        .trim()
        .to_string();
    let tip_ref = format!("refs/heads/{branch}^{{commit}}");
    let tip = run_ok(&["rev-parse", "--verify", &tip_ref])?
        .trim()
        .to_string();
    let is_ancestor = |a: &str, b: &str| -> Result<bool, GitError> {
        Ok(run(&["merge-base", "--is-ancestor", a, b])?.success())
    };
    if is_ancestor(&tip, &head)? {
        return Ok(Merged {
            commit: head,
            target,
            fast_forward: false,
            already: true,
            outside_links: Vec::new(),
        });
    }
    let fast_forward = is_ancestor(&head, &tip)?;
    let result = if fast_forward {
        tip.clone()
    } else {
        let o = run(&[
            "merge-tree",
            "--write-tree",
            "-z",
            "--name-only",
            "--no-messages",
            &head,
            &tip,
        ])?;
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
        run_ok(&[
            "commit-tree",
            tree.trim(),
            "-p",
            &head,
            "-p",
            &tip,
            "-m",
            message,
        ])?
        .trim()
        .to_string()
    };
    let links = outside_links(&g, &head, &result)?;
    if !links.is_empty() && !accept_outside_links {
        let list: Vec<String> = links.iter().take(20).map(Link::to_string).collect();
        let more = links.len().saturating_sub(20);
        return Err(Refused::Git(GitError::OutsideLinks(format!(
            "it brings {} symlink(s) pointing outside the repository: {}{}",
            links.len(),
            list.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ))));
    }
    // Files the merge changes, against files with uncommitted changes in the checkout.
    let changed = run_ok(&[
        "diff",
        "--name-only",
        "-z",
        "--no-renames",
        "--no-ext-diff",
        "--no-textconv",
        &head,
        &result,
    ])?;
    let changed: BTreeSet<String> = nul_list(changed.as_bytes()).into_iter().collect();
    let (tracked, untracked) = status_paths(&g, t)?;
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
    run_ok(&[
        "merge",
        "--ff-only",
        "--quiet",
        "--no-edit",
        "--no-verify-signatures",
        &result,
    ])?;
    let now = run_ok(&["rev-parse", "HEAD"])?.trim().to_string();
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
        outside_links: links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_leave_the_repository_are_told_apart() {
        for (path, target) in [
            ("a", "/etc/passwd"),
            ("a", ".."),
            ("a", "../x"),
            ("d/a", "../../x"),
            ("d/a", "x/../../../y"),
            ("a", ""),
        ] {
            assert!(points_outside(path, target), "{path} -> {target}");
        }
        for (path, target) in [
            ("a", "b"),
            ("d/a", "../b"),
            ("d/e/a", "../../b/c"),
            ("a", "./b"),
            ("d/a", "x/../y"),
        ] {
            assert!(!points_outside(path, target), "{path} -> {target}");
        }
    }
}
