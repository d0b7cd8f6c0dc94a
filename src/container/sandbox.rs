//! The executors' own sandboxes inside a container: the container is the boundary.
//!
//! codex's Linux sandbox (bwrap) needs namespaces a container does not grant: with
//! `-s workspace-write` or `-s read-only` every command fails ("bwrap: No permissions to create
//! a new namespace") and every patch is refused. So in a container codex always runs with
//! `-s danger-full-access`, and what `codex.sandbox` asked for is enforced by the container:
//!
//! | `codex.sandbox` | inside the container |
//! |---|---|
//! | `read-only` | the working dir is mounted read-only |
//! | `workspace-write` (default) | the working dir is mounted read-write |
//! | `danger-full-access` | the working dir is mounted read-write |
//!
//! Nothing else of the host is mounted in either case. `codex.sandbox` can only be tightened by
//! the project file, so a project can make the mount read-only but never reach past it.
//! claude's permission modes are its own checks, not an OS sandbox: they work in a container
//! as on the host and are passed through unchanged (`IS_SANDBOX=1` is set in the container, so
//! `bypassPermissions`, which only trusted config can choose, also works as root).

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

/// What the container must enforce for a launch, after its arguments were adjusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Enforce {
    /// Mount the working dir read-only.
    pub read_only: bool,
}

/// Adjust an executor's arguments for running in a container and say what the container
/// enforces instead. `program` is the program's name in the image (`codex`, `claude`).
pub fn adjust(program: &str, args: &mut [String]) -> Enforce {
    if program != "codex" {
        return Enforce::default();
    }
    let mut e = Enforce::default();
    let mut i = 0;
    while i < args.len() {
        // Everything after `--` is positional (the prompt, a thread id).
        if args[i] == "--" {
            break;
        }
        if let Some(mode) = args[i].strip_prefix("--sandbox=") {
            e.read_only |= mode == "read-only";
            args[i] = "--sandbox=danger-full-access".into();
        } else if (args[i] == "-s" || args[i] == "--sandbox") && i + 1 < args.len() {
            e.read_only |= args[i + 1] == "read-only";
            args[i + 1] = "danger-full-access".into();
            i += 1;
        }
        i += 1;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn codex_runs_without_its_own_sandbox_and_the_mount_enforces_the_mode() {
        let mut a = v(&["exec", "-C", "/w", "-s", "workspace-write", "--", "-"]);
        assert_eq!(adjust("codex", &mut a), Enforce { read_only: false });
        assert_eq!(a[4], "danger-full-access");

        let mut a = v(&["exec", "-s", "read-only", "-o", "/x", "--", "-"]);
        assert_eq!(adjust("codex", &mut a), Enforce { read_only: true });
        assert_eq!(a[2], "danger-full-access");

        let mut a = v(&["exec", "--sandbox=read-only", "--", "-"]);
        assert!(adjust("codex", &mut a).read_only);
        assert_eq!(a[1], "--sandbox=danger-full-access");

        let mut a = v(&["exec", "-s", "danger-full-access", "--", "-"]);
        assert!(!adjust("codex", &mut a).read_only);
    }

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

    #[test]
    fn positional_arguments_and_other_programs_are_left_alone() {
        // A thread id or prompt after `--` is never read as a flag.
        let mut a = v(&["exec", "resume", "--", "-s", "read-only"]);
        assert!(!adjust("codex", &mut a).read_only);
        assert_eq!(a[4], "read-only");
        let mut a = v(&[
            "-p",
            "--permission-mode=bypassPermissions",
            "-s",
            "read-only",
        ]);
        let before = a.clone();
        assert_eq!(adjust("claude", &mut a), Enforce::default());
        assert_eq!(a, before);
    }
}
