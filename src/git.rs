//! The one place that builds zwarm's git command lines.
//!
//! zwarm runs git outside every executor's sandbox, as the user, in repositories and worktrees
//! an executor may have written: their config, their `.gitattributes`, their hooks and even
//! the worktree's `.git` file. So every git command zwarm runs
//!
//! - names its git dir and work tree explicitly (`--git-dir`, `--work-tree`), and a session
//!   worktree's git dir is the one recorded when zwarm created it: a worktree whose `.git` file
//!   points elsewhere is refused ([`GitError::Redirected`]);
//! - runs no hook (`core.hooksPath=/dev/null`), no fsmonitor, no pager (`--no-pager`), no editor, no
//!   credential helper, no signing or signature check, no automatic gc;
//! - reads no attributes a repository names: `.gitattributes` is read from the empty tree
//!   (`GIT_ATTR_SOURCE`), the global attributes file is `/dev/null`, the system one is off;
//! - and, because `$GIT_DIR/info/attributes` cannot be turned off, every filter, textconv and
//!   merge driver defined in the effective config is blanked for that one command (read just
//!   before it): clean, smudge and process filters do nothing, textconv is empty, and a named
//!   merge driver is git's own text merge (`git merge-file`). Diffs run with `--no-ext-diff
//!   --no-textconv`.
//!
//! What this costs: git-lfs and other filters do not apply to zwarm's own commits, checkouts and
//! diffs (files are stored and shown as they are in the work tree), and `.gitattributes`
//! settings such as `eol` do not apply to them either.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The empty tree: attributes are read from it, so no `.gitattributes` applies.
const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// Settings every zwarm git command runs with (they override every config file).
const SAFE: &[(&str, &str)] = &[
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.attributesFile", "/dev/null"),
    ("core.pager", "cat"),
    ("core.editor", ":"),
    ("core.askPass", ""),
    ("credential.helper", ""),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("merge.verifySignatures", "false"),
    ("log.showSignature", "false"),
    ("gpg.program", "false"),
    ("gpg.openpgp.program", "false"),
    ("gpg.x509.program", "false"),
    ("gpg.ssh.program", "false"),
    ("diff.external", ""),
    ("merge.stat", "false"),
    ("submodule.recurse", "false"),
    ("status.submoduleSummary", "false"),
    ("color.ui", "false"),
    ("user.name", "zwarm"),
    ("user.email", "zwarm@localhost"),
];

/// What a merge driver a repository names becomes: git's own three-way text merge.
const TEXT_MERGE: &str = "git merge-file -L ours -L base -L theirs --marker-size=%L %A %O %B";

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
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_ATTR_SOURCE",
];

/// Subcommands that apply no attribute, filter or driver: they skip reading the config's
/// drivers first.
const PLUMBING: &[&str] = &[
    "rev-parse",
    "symbolic-ref",
    "show-ref",
    "branch",
    "merge-base",
    "rev-list",
    "ls-files",
    "commit-tree",
    "config",
    "cat-file",
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
    /// The worktree's `.git` no longer leads to the git dir zwarm made for it.
    #[error(
        "the worktree {worktree} no longer points at the session's own git dir ({why}); zwarm runs no git there. Something in the session rewrote its `.git` file: end the session with integrate keep or discard (its committed turns are on its branch)"
    )]
    Redirected { worktree: String, why: String },
    /// A merge that brings symlinks pointing outside the repository, not accepted.
    #[error(
        "{0}. zwarm does not merge such links unless the merge is told to accept them: look at them in the session's diff, then have the session remove or fix them and merge again, or merge the branch yourself with git after review"
    )]
    OutsideLinks(String),
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

/// Where a git command runs: its directory, and the git dir and work tree it is told to use.
#[derive(Debug, Clone)]
pub struct Git {
    cwd: PathBuf,
    git_dir: Option<PathBuf>,
    work_tree: Option<PathBuf>,
}

impl Git {
    /// git in `dir` finding its repository itself: only for [`Git::open`]'s own question.
    fn discover(dir: &Path) -> Git {
        Git {
            cwd: dir.to_path_buf(),
            git_dir: None,
            work_tree: None,
        }
    }

    /// The repository (its git dir, and its work tree unless it is bare) `dir` is in; `None`
    /// when `dir` is in none.
    pub fn open(dir: &Path, timeout: Duration) -> Result<Option<Git>, GitError> {
        let o = Git::discover(dir).run(
            &[
                "rev-parse",
                "--absolute-git-dir",
                "--is-bare-repository",
                "--show-toplevel",
            ],
            timeout,
            64 * 1024,
        )?;
        let text = o.text();
        let mut lines = text.lines();
        let (Some(git_dir), Some(bare)) = (lines.next(), lines.next()) else {
            return Ok(None);
        };
        let work_tree = match (bare.trim(), lines.next()) {
            ("false", Some(top)) if o.success() && !top.is_empty() => Some(PathBuf::from(top)),
            ("true", _) => None,
            _ => return Ok(None),
        };
        Ok(Some(Git {
            cwd: work_tree.clone().unwrap_or_else(|| PathBuf::from(git_dir)),
            git_dir: Some(PathBuf::from(git_dir)),
            work_tree,
        }))
    }

    /// The top of the work tree (`None` for a bare repository).
    pub fn work_tree(&self) -> Option<&Path> {
        self.work_tree.as_deref()
    }

    /// The session worktree `wt`, with the git dir zwarm recorded when it made it (see
    /// [`record_worktree`]); refused when its `.git` file leads anywhere else. `repo`, when
    /// known, is the repository it must belong to.
    pub fn worktree(wt: &Path, repo: Option<&Path>, timeout: Duration) -> Result<Git, GitError> {
        let refuse = |why: String| GitError::Redirected {
            worktree: wt.display().to_string(),
            why,
        };
        let named = named_git_dir(wt).map_err(refuse)?;
        let named_real = std::fs::canonicalize(&named)
            .map_err(|e| refuse(format!("its `.git` file names {}: {e}", named.display())))?;
        let own = match recorded_git_dir(wt) {
            Some(r) => r,
            None => legacy_git_dir(wt, &named_real).map_err(refuse)?,
        };
        let own_real = std::fs::canonicalize(&own).unwrap_or(own.clone());
        if named_real != own_real {
            return Err(refuse(format!(
                "its `.git` file names {}, zwarm made {}",
                named.display(),
                own.display()
            )));
        }
        if let Some(repo) = repo {
            let common = common_dir(&own_real).map_err(refuse)?;
            let theirs = Git::open(repo, timeout)?
                .and_then(|g| g.git_dir)
                .map(|d| common_dir(&d).unwrap_or(d));
            if theirs.as_deref() != Some(common.as_path()) {
                return Err(refuse(format!(
                    "its git dir {} is not in the repository {}",
                    own_real.display(),
                    repo.display()
                )));
            }
        }
        Ok(Git {
            cwd: wt.to_path_buf(),
            git_dir: Some(own_real),
            work_tree: Some(wt.to_path_buf()),
        })
    }

    /// Run `git <args>`, whatever its exit code; `Err` only when it could not run, ran too
    /// long or printed more than `max` bytes.
    pub fn run(&self, args: &[&str], timeout: Duration, max: usize) -> Result<Out, GitError> {
        let sub = args.iter().find(|a| !a.starts_with('-')).copied();
        let blank = match sub {
            Some(s) if PLUMBING.contains(&s) => Vec::new(),
            _ => self.drivers(timeout)?,
        };
        let mut cmd = self.command(&blank);
        cmd.args(args);
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

    /// [`Git::run`]; a non-zero exit is an error carrying git's message.
    pub fn ok(&self, args: &[&str], timeout: Duration, max: usize) -> Result<String, GitError> {
        let o = self.run(args, timeout, max)?;
        if !o.success() {
            return Err(GitError::Failed {
                args: shown(args),
                stderr: o.stderr,
            });
        }
        Ok(o.text())
    }

    /// The command line: explicit dirs, the safe settings (and `extra` ones) given through
    /// `GIT_CONFIG_*` so that no key or value needs quoting, and a scrubbed environment.
    fn command(&self, extra: &[(String, String)]) -> Command {
        let mut cmd = Command::new("git");
        // No pager at all, whatever `pager.<command>` the config names.
        cmd.arg("--no-pager");
        if let Some(d) = &self.git_dir {
            cmd.arg(format!("--git-dir={}", d.display()));
        }
        if let Some(w) = &self.work_tree {
            cmd.arg(format!("--work-tree={}", w.display()));
        }
        cmd.current_dir(&self.cwd);
        for k in SCRUB {
            cmd.env_remove(k);
        }
        let all = SAFE
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(extra.iter().cloned());
        let mut n = 0;
        for (i, (k, v)) in all.enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
                .env(format!("GIT_CONFIG_VALUE_{i}"), v);
            n = i + 1;
        }
        cmd.env("GIT_CONFIG_COUNT", n.to_string())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("GIT_ATTR_SOURCE", EMPTY_TREE)
            .env("GIT_EDITOR", ":")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("LC_ALL", "C");
        cmd
    }

    /// Every filter, textconv and merge driver the effective config defines, blanked.
    fn drivers(&self, timeout: Duration) -> Result<Vec<(String, String)>, GitError> {
        let o = self.run(
            &[
                "config",
                "--null",
                "--name-only",
                "--get-regexp",
                r"^(filter|diff|merge)\..+\.",
            ],
            timeout,
            4 * 1024 * 1024,
        )?;
        let mut out = Vec::new();
        for key in o.stdout.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let key = String::from_utf8_lossy(key);
            let Some((section_sub, var)) = key.rsplit_once('.') else {
                continue;
            };
            let var = var.to_ascii_lowercase();
            let v = match (section_sub.split('.').next(), var.as_str()) {
                (Some("filter"), "clean" | "smudge" | "process") => "",
                (Some("filter"), "required") => "false",
                (Some("diff"), "textconv" | "command") => "",
                (Some("merge"), "driver") => TEXT_MERGE,
                _ => continue,
            };
            let pair = (format!("{section_sub}.{var}"), v.to_string());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        Ok(out)
    }
}

/// The git dir the worktree's `.git` file names (relative names are taken from the worktree).
fn named_git_dir(wt: &Path) -> Result<PathBuf, String> {
    let dot = wt.join(".git");
    let meta = std::fs::symlink_metadata(&dot).map_err(|e| format!("no `.git` file: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("its `.git` is not a plain file".into());
    }
    let text = std::fs::read_to_string(&dot).map_err(|e| format!("unreadable `.git`: {e}"))?;
    let named = text
        .trim()
        .strip_prefix("gitdir:")
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.contains('\n'))
        .ok_or("its `.git` file holds no `gitdir:` line")?;
    Ok(wt.join(named))
}

/// The common git dir of a (worktree's) git dir.
fn common_dir(git_dir: &Path) -> Result<PathBuf, String> {
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(c) => git_dir.join(c.trim()),
        Err(_) => git_dir.to_path_buf(),
    };
    std::fs::canonicalize(&common).map_err(|e| format!("{}: {e}", common.display()))
}

/// For a worktree made before zwarm recorded its git dir: the one its `.git` names, when that
/// looks like what `git worktree add` makes (outside the worktree, under a `worktrees` folder,
/// pointing back at this worktree).
fn legacy_git_dir(wt: &Path, named: &Path) -> Result<PathBuf, String> {
    let wt_real = std::fs::canonicalize(wt).map_err(|e| e.to_string())?;
    let back = std::fs::read_to_string(named.join("gitdir")).unwrap_or_default();
    let back = std::fs::canonicalize(back.trim()).ok();
    if named.starts_with(&wt_real)
        || named.parent().and_then(Path::file_name) != Some("worktrees".as_ref())
        || back != std::fs::canonicalize(wt_real.join(".git")).ok()
    {
        return Err(format!(
            "its `.git` file names {}, which is not a git dir `git worktree add` made for it",
            named.display()
        ));
    }
    Ok(named.to_path_buf())
}

/// Where the git dir of the session worktree `wt` is recorded: next to it, outside it.
fn record_path(wt: &Path) -> PathBuf {
    let name = wt.file_name().map(|n| n.to_string_lossy().into_owned());
    wt.with_file_name(format!("{}.gitdir", name.unwrap_or_default()))
}

/// Record the git dir of the worktree `wt` just made (before any executor ran in it).
pub fn record_worktree(wt: &Path) -> std::io::Result<()> {
    let named = named_git_dir(wt).map_err(std::io::Error::other)?;
    let real = std::fs::canonicalize(named)?;
    let path = record_path(wt);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    std::io::Write::write_all(&mut f, real.display().to_string().as_bytes())
}

/// Forget the record of a removed worktree.
pub fn forget_worktree(wt: &Path) {
    let _ = std::fs::remove_file(record_path(wt));
}

/// The git dir zwarm recorded for the session worktree `wt`, if it did.
pub fn recorded_git_dir(wt: &Path) -> Option<PathBuf> {
    let r = std::fs::read_to_string(record_path(wt)).ok()?;
    Some(PathBuf::from(r.trim())).filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_blanked_whatever_their_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("git")
            .args(["init", "-q"])
            .current_dir(dir.path())
            .status()
            .expect("git")
            .success();
        assert!(ok);
        let cfg = dir.path().join(".git/config");
        let mut text = std::fs::read_to_string(&cfg).expect("config");
        text.push_str("[filter \"a.b=c\"]\n\tclean = evil\n\tSmudge = evil\n\trequired = true\n[diff \"x\"]\n\ttextconv = evil\n[merge \"m\"]\n\tdriver = evil\n[filter]\n\tlonely = 1\n");
        std::fs::write(&cfg, text).expect("write");
        let g = Git::open(dir.path(), Duration::from_secs(30))
            .expect("git")
            .expect("repo");
        let got = g.drivers(Duration::from_secs(30)).expect("drivers");
        for want in [
            ("filter.a.b=c.clean", ""),
            ("filter.a.b=c.smudge", ""),
            ("filter.a.b=c.required", "false"),
            ("diff.x.textconv", ""),
            ("merge.m.driver", TEXT_MERGE),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} in {got:?}"
            );
        }
    }

    fn sh(dir: &Path, script: &str) {
        let ok = Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .expect("sh")
            .success();
        assert!(ok, "{script}");
    }

    /// With the record: only the recorded git dir. Without one (a worktree made before
    /// zwarm recorded it): only a git dir that looks like `git worktree add`'s, pointing back.
    #[test]
    fn a_worktree_is_run_only_with_its_own_git_dir() {
        let d = tempfile::tempdir().expect("tempdir");
        let repo = d.path().join("repo");
        std::fs::create_dir_all(&repo).expect("mkdir");
        sh(
            &repo,
            "git init -q && echo a > a && git add a && git commit -qm a",
        );
        let wt = d.path().join("wts").join("s1");
        sh(
            &repo,
            &format!("git worktree add -q -b s1 {}", wt.display()),
        );
        let t = Duration::from_secs(30);
        // No record yet: the git dir `git worktree add` made is accepted.
        Git::worktree(&wt, Some(&repo), t).expect("legacy worktree");
        record_worktree(&wt).expect("record");
        Git::worktree(&wt, Some(&repo), t).expect("recorded worktree");
        // Pointed at a copy inside the worktree: refused, with or without the record.
        sh(
            &wt,
            "cp -r \"$(sed -n 's/^gitdir: //p' .git)\" .copy && printf 'gitdir: .copy\\n' > .git",
        );
        for _ in 0..2 {
            let e = Git::worktree(&wt, None, t).expect_err("redirected");
            assert!(
                matches!(e, GitError::Redirected { .. }) && e.to_string().contains(".copy"),
                "{e}"
            );
            forget_worktree(&wt);
        }
        // Another repository's worktree is not this repository's.
        let other = d.path().join("other");
        std::fs::create_dir_all(&other).expect("mkdir");
        sh(
            &other,
            "git init -q && echo b > b && git add b && git commit -qm b",
        );
        let wt2 = d.path().join("wts").join("s2");
        sh(
            &other,
            &format!("git worktree add -q -b s2 {}", wt2.display()),
        );
        let e = Git::worktree(&wt2, Some(&repo), t).expect_err("another repository");
        assert!(e.to_string().contains("is not in the repository"), "{e}");
    }
}
