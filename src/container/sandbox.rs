//! What a container mounts of the working dir's git metadata.
//!
//! The executors' own sandboxes inside a container are the executors' business: codex's is
//! switched off and replaced by the mount (`src/executor/codex/container.rs`, reached through
//! [`crate::executor::portable::container_args`]); claude's permission modes work unchanged.

use std::path::{Path, PathBuf};

/// Read-only binds (`src:dst:ro`) for the git metadata of a working dir: its `.git` (a
/// checkout's dir, or a worktree's `gitdir:` file) and, for a worktree, the repository's git dir
/// it points to, which lies outside the working dir. zwarm runs git on the host in these
/// repositories (a worktree session's commit per turn, the merge at the end), so a hook or a
/// `core.fsmonitor` planted there by an executor would run outside the container: the
/// executor can read them (git works inside: status, diff, log) but never change them. This
/// is what codex's own workspace-write sandbox does on the host (`.git` stays read-only).
pub fn git_binds(cwd: &Path) -> Vec<String> {
    let ro = |p: &Path| format!("{0}:{0}:ro", p.display());
    let dotgit = cwd.join(".git");
    let Ok(meta) = std::fs::symlink_metadata(&dotgit) else {
        return vec![];
    };
    if meta.is_dir() {
        return vec![ro(&dotgit)];
    }
    if !meta.is_file() {
        return vec![];
    }
    let mut binds = vec![ro(&dotgit)];
    if let Some(git_dir) = worktree_git_dir(&dotgit)
        && !git_dir.starts_with(cwd)
    {
        binds.push(ro(&git_dir));
    }
    binds
}

/// The repository's git dir a worktree's `.git` file leads to: the `gitdir:` it names (the
/// worktree's own admin dir), then that dir's `commondir`.
fn worktree_git_dir(dotgit: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dotgit).ok()?;
    let admin = Path::new(text.trim().strip_prefix("gitdir:")?.trim());
    let admin = dotgit.parent()?.join(admin).canonicalize().ok()?;
    match std::fs::read_to_string(admin.join("commondir")) {
        Ok(c) => admin.join(c.trim()).canonicalize().ok(),
        Err(_) => Some(admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_metadata_is_mounted_read_only() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().canonicalize().unwrap().join("repo");
        std::fs::create_dir_all(repo.join(".git/worktrees/wt1")).unwrap();
        std::fs::write(repo.join(".git/worktrees/wt1/commondir"), "../..\n").unwrap();
        assert_eq!(
            git_binds(&repo),
            vec![format!("{0}/.git:{0}/.git:ro", repo.display())]
        );
        let wt = t.path().canonicalize().unwrap().join("wt1");
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::write(
            wt.join(".git"),
            format!("gitdir: {}/.git/worktrees/wt1\n", repo.display()),
        )
        .unwrap();
        assert_eq!(
            git_binds(&wt),
            vec![
                format!("{0}/.git:{0}/.git:ro", wt.display()),
                format!("{0}/.git:{0}/.git:ro", repo.display()),
            ]
        );
        assert!(git_binds(t.path()).is_empty());
    }
}
