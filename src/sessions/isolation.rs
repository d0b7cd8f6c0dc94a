//! Sessions isolated in git worktrees: one worktree and branch per session, a commit per turn,
//! review, and integration when the session ends.
//!
//! - **delegate** with `isolation: "worktree"` makes `<state>/worktrees/<id>` on a new branch
//!   `zwarm/<id8>` from `base` ([`Manager::isolate`]); the session's `working_dir` is the
//!   worktree, and [`Isolation::project_dir`] keeps the directory it was asked to work in.
//! - **Every turn's end** commits what changed in the worktree onto the branch
//!   ([`commit_turn`], unless `worktree_commit_turns` is off), before the turn is reported.
//! - **end_session** integrates ([`Manager::end_integrated`]): `merge` merges the branch into
//!   the project's checkout (nothing changes there when it conflicts or would touch uncommitted
//!   files: the session stays open), `keep` removes the worktree and keeps the branch,
//!   `discard` removes both.
//! - **Start-up** prunes stale worktree records and reports orphans, after `initialize`.
//!
//! Git runs on the blocking pool with deadlines ([`crate::worktree`]); worktree creation,
//! removal and merges are serialised within a server.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::registry::Handle;
use super::{Inner, Manager, ManagerError, blocking};
use crate::event::FileChange;
use crate::log_event::LogEvent;
use crate::model::{Isolation, Session, WorktreeState, now};
use crate::worktree::{self, Commit, GitError};

/// Serialises worktree creation (with its count against `max_worktrees`), removal and merges.
pub(super) static GIT_ADMIN: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Longest a turn-end commit may take while the server shuts down.
const SHUTDOWN_COMMIT: Duration = Duration::from_secs(1);

/// How end_session leaves a worktree session's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrate {
    Merge,
    Keep,
    Discard,
}

impl Integrate {
    pub fn parse(s: &str) -> Option<Integrate> {
        match s.trim().to_ascii_lowercase().as_str() {
            "merge" => Some(Integrate::Merge),
            "keep" => Some(Integrate::Keep),
            "discard" => Some(Integrate::Discard),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Integrate::Merge => "merge",
            Integrate::Keep => "keep",
            Integrate::Discard => "discard",
        }
    }
}

/// What end_session did to a worktree session's branch.
#[derive(Debug, Clone)]
pub struct Integrated {
    /// `merge`, `keep` or `discard`; `None` when the worktree was left as it is (verdict
    /// failed without `integrate`: the session may still converse).
    pub integrate: Option<Integrate>,
    pub merged: bool,
    /// The commit the project's branch points to after the merge.
    pub commit: Option<String>,
    pub branch: String,
    /// The worktree's state now.
    pub state: WorktreeState,
    /// Something that went wrong after the session was ended (e.g. a worktree that could not
    /// be removed), for the result.
    pub warning: Option<String>,
    /// Symlinks pointing outside the repository that a merge brought (accepted by the caller).
    pub outside_links: Vec<worktree::Link>,
}

/// The directory under the state dir that holds every session worktree.
pub fn worktrees_dir(state: &Path) -> PathBuf {
    state.join("worktrees")
}

pub(super) fn git_err(what: &str, e: GitError) -> ManagerError {
    ManagerError::Git(format!("{what}: {e}"))
}

/// The first 8 characters of a session id (branch names, commit messages).
pub(super) fn id8(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Why a worktree session's worktree cannot be used (each is recorded as a turn's failure or
/// returned as a refusal; the texts are the ones the session shows).
#[derive(Debug, thiserror::Error)]
pub enum WorktreeCheck {
    #[error(
        "the session's stored worktree record (worktree `{worktree}`, branch `{branch}`) is not one zwarm made; zwarm does not act on it"
    )]
    NotOurs { worktree: String, branch: String },
    #[error(
        "the session's worktree was removed at end_session ({state}); its branch `{branch}` keeps its work. Delegate a new session with base `{branch}` to go on."
    )]
    Removed { state: &'static str, branch: String },
    #[error(
        "the session's worktree `{worktree}` no longer exists (removed outside zwarm?); zwarm does not run the turn anywhere else. Its branch `{branch}` holds every committed turn: end the session, and delegate a new one with base `{branch}` to go on."
    )]
    Gone { worktree: String, branch: String },
    #[error("the session's working_dir `{dir}` cannot be used: {err}")]
    Unusable { dir: String, err: std::io::Error },
    #[error(
        "the session's working_dir `{dir}` now resolves to `{now}`, outside its worktree (a symlink was put in its place?); zwarm does not follow it."
    )]
    Escaped { dir: String, now: String },
    /// The worktree's `.git` no longer leads to the git dir zwarm made for it (or git could
    /// not say).
    #[error("{0}")]
    Git(#[from] GitError),
}

/// A stored isolation record is read from disk, so it is checked before zwarm acts on it: the
/// worktree must be `<state>/worktrees/<session id>` and the branch `zwarm/<id8>`.
fn check_record(state: &Path, id: &str, iso: &Isolation) -> Result<(), WorktreeCheck> {
    let root = worktrees_dir(state);
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let wt = Path::new(&iso.worktree);
    let branch = format!("zwarm/{}", id8(id));
    if wt.parent() != Some(root.as_path())
        || wt.file_name().and_then(|n| n.to_str()) != Some(id)
        || iso.branch != branch
        || !crate::worktree::valid_rev(&iso.base)
    {
        return Err(WorktreeCheck::NotOurs {
            worktree: crate::text::one_line(&iso.worktree, 200),
            branch: crate::text::one_line(&iso.branch, 100),
        });
    }
    Ok(())
}

/// Why a worktree session's diff cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Its stored worktree record is not one zwarm made.
    #[error("{0}")]
    Record(#[from] WorktreeCheck),
    #[error("the branch `{0}` no longer exists (discarded), so there is no diff")]
    Discarded(String),
    #[error("cannot compute the diff: {0}")]
    Git(#[from] GitError),
    #[error("zwarm is shutting down")]
    ShuttingDown,
}

/// Where a worktree session's diff is read from: its worktree (committed or not) while it
/// exists, else its branch. Checks the record first. Blocking.
fn diff_source(
    state: &Path,
    id: &str,
    iso: &Isolation,
) -> Result<(PathBuf, Option<PathBuf>), DiffError> {
    check_record(state, id, iso)?;
    let repo = PathBuf::from(&iso.repo);
    let wt = PathBuf::from(&iso.worktree);
    let wt = (iso.state == WorktreeState::Active && wt.join(".git").exists()).then_some(wt);
    if wt.is_none() && !worktree::branch_exists(&repo, &iso.branch).unwrap_or(false) {
        return Err(DiffError::Discarded(iso.branch.clone()));
    }
    Ok((repo, wt))
}

/// The whole unified diff of a worktree session against its base: the worktree's state
/// (committed or not) while it exists, else the branch. Blocking (runs git); used by the
/// diff resource and by `zwarm diff`, which reads the state without an engine.
pub fn session_diff(state: &Path, id: &str, iso: &Isolation) -> Result<String, DiffError> {
    let (repo, wt) = diff_source(state, id, iso)?;
    Ok(worktree::diff_text(
        &repo,
        wt.as_deref(),
        &iso.base,
        &iso.branch,
    )?)
}

impl Manager {
    /// Make a session's worktree when `isolation` (or the config's default) says so. Returns
    /// the isolation record and the directory the session's turns run in.
    pub(super) async fn isolate(
        &self,
        id: &str,
        dir: &Path,
        isolation: Option<&str>,
        base: Option<&str>,
    ) -> Result<Option<(Isolation, PathBuf)>, ManagerError> {
        let mode = isolation
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or(&self.inner.cfg.isolation)
            .to_ascii_lowercase();
        let base = base.map(str::trim).filter(|b| !b.is_empty());
        match mode.as_str() {
            "none" => {
                if let Some(b) = base {
                    return Err(ManagerError::BaseWithoutWorktree(b.to_string()));
                }
                return Ok(None);
            }
            "worktree" => {}
            other => return Err(ManagerError::BadIsolation(other.to_string())),
        }
        let base_ref = base.unwrap_or("HEAD").to_string();
        if !worktree::valid_rev(&base_ref) {
            return Err(ManagerError::BadBase {
                base: base_ref,
                reason: "it is not a ref zwarm passes to git (no leading `-`, no `..`, no spaces)"
                    .into(),
            });
        }
        let id = id.to_string();
        let dir = dir.to_path_buf();
        let state = self.inner.store.root().to_path_buf();
        let max = self.inner.cfg.max_worktrees;
        let id2 = id.clone();
        let made = blocking(move || -> Result<(Isolation, PathBuf), ManagerError> {
            let id = id2;
            let shown = dir.display().to_string();
            let repo = worktree::toplevel(&dir)
                .map_err(|e| git_err("cannot look for the git repository", e))?
                .ok_or_else(|| ManagerError::NotGitRepo(shown.clone()))?;
            let repo = std::fs::canonicalize(&repo).unwrap_or(repo);
            let sha = worktree::resolve_commit(&repo, &base_ref)
                .map_err(|e| git_err("cannot resolve base", e))?
                .ok_or_else(|| ManagerError::BadBase {
                    base: base_ref.clone(),
                    reason: format!(
                        "it names no commit in {} (a repository without commits has no HEAD yet: commit first)",
                        repo.display()
                    ),
                })?;
            let root = worktrees_dir(&state);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| ManagerError::Git(format!("cannot create {}: {e}", root.display())))?;
            let _admin = GIT_ADMIN.lock();
            let existing = std::fs::read_dir(&root)
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0);
            if existing >= max {
                return Err(ManagerError::TooManyWorktrees { n: existing, max });
            }
            let branch = format!("zwarm/{}", id8(&id));
            if worktree::branch_exists(&repo, &branch)
                .map_err(|e| git_err("cannot list branches", e))?
            {
                return Err(ManagerError::Git(format!(
                    "branch `{branch}` already exists in {} (left by an earlier session?); delete it (`git branch -D {branch}`) or delegate again",
                    repo.display()
                )));
            }
            let path = root.join(&id);
            worktree::add(&repo, &path, &branch, &sha)
                .map_err(|e| git_err("cannot create the session's worktree", e))?;
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            // The same place inside the worktree as `dir` is inside the project.
            let working = match dir.strip_prefix(&repo) {
                Ok(rel) if !rel.as_os_str().is_empty() => {
                    let w = path.join(rel);
                    let _ = std::fs::create_dir_all(&w);
                    w
                }
                _ => path.clone(),
            };
            Ok((
                Isolation {
                    branch,
                    base_ref,
                    base: sha,
                    worktree: path.display().to_string(),
                    project_dir: shown,
                    repo: repo.display().to_string(),
                    state: WorktreeState::Active,
                    merged_commit: None,
                },
                working,
            ))
        })
        .await
        .ok_or(ManagerError::ShuttingDown)??;
        let (iso, _) = &made;
        tracing::info!(session = %id, branch = %iso.branch, worktree = %iso.worktree, "worktree created");
        self.inner.log(
            LogEvent::WorktreeCreated {
                branch: iso.branch.clone(),
                base: iso.base.clone(),
                base_ref: iso.base_ref.clone(),
                worktree: iso.worktree.clone(),
                repo: iso.repo.clone(),
            },
            Some(&id),
        );
        Ok(Some(made))
    }

    /// Undo [`Manager::isolate`] for a session that did not start.
    pub(super) async fn unisolate(&self, id: &str, iso: Isolation) {
        let r = blocking(move || {
            let _admin = GIT_ADMIN.lock();
            let repo = PathBuf::from(&iso.repo);
            worktree::remove(&repo, Path::new(&iso.worktree))?;
            worktree::delete_branch(&repo, &iso.branch)
        })
        .await;
        if let Some(Err(e)) = r {
            tracing::warn!(session = %id, error = %e, "cannot remove the worktree of a session that did not start");
        }
    }

    /// [`check_record`] off the async workers (it resolves paths on disk).
    pub(super) async fn checked(&self, id: &str, iso: &Isolation) -> Result<(), ManagerError> {
        let state = self.inner.store.root().to_path_buf();
        let (id, iso) = (id.to_string(), iso.clone());
        blocking(move || check_record(&state, &id, &iso))
            .await
            .ok_or(ManagerError::ShuttingDown)?
            .map_err(|e| ManagerError::Git(e.to_string()))
    }

    /// Refuse a turn of a worktree session whose worktree is gone (it never runs elsewhere).
    pub(super) async fn worktree_ready(&self, h: &Arc<Handle>) -> Result<(), ManagerError> {
        let (iso, status) = {
            let l = h.live.lock();
            (l.session.isolation.clone(), l.session.status)
        };
        let Some(iso) = iso else { return Ok(()) };
        if status.is_final() {
            return Ok(()); // "has ended" says it better
        }
        self.checked(&h.id, &iso).await?;
        if iso.state != WorktreeState::Active {
            return Err(ManagerError::WorktreeRemoved {
                id: h.id.clone(),
                state: iso.state.as_str(),
                branch: iso.branch,
            });
        }
        let wt = PathBuf::from(&iso.worktree);
        let present = blocking(move || wt.join(".git").exists())
            .await
            .unwrap_or(false);
        if !present {
            self.inner.log(
                LogEvent::WorktreeMissing {
                    worktree: iso.worktree.clone(),
                    branch: iso.branch.clone(),
                },
                Some(&h.id),
            );
            return Err(ManagerError::WorktreeGone {
                id: h.id.clone(),
                path: iso.worktree,
                branch: iso.branch,
            });
        }
        Ok(())
    }

    /// Record a changed isolation state (a status change: committed before it is reported).
    pub(super) async fn save_isolation(&self, h: &Arc<Handle>, iso: Isolation) {
        let ((), r) = self
            .inner
            .commit(h, |l, w| {
                l.session.isolation = Some(iso);
                l.session.updated_at = now();
                w.extend(l.images(&[]));
            })
            .await;
        if let Err(e) = r {
            tracing::error!(session = %h.id, error = %e, "cannot save the worktree's state");
            self.inner.publish(h);
        }
    }

    /// What a worktree session changed versus its base; `full_diff` is where the caller
    /// shows the whole diff (the engine names no addresses). `None`: not a worktree session.
    pub async fn diff_stat_at(
        &self,
        s: &Session,
        full_diff: String,
    ) -> Option<Result<worktree::DiffStat, DiffError>> {
        let iso = s.isolation.clone()?;
        let state = self.inner.store.root().to_path_buf();
        let id = s.id.clone();
        Some(
            blocking(move || {
                let (repo, wt) = diff_source(&state, &id, &iso)?;
                Ok(worktree::diff_stat(
                    &repo,
                    wt.as_deref(),
                    &iso.base,
                    &iso.branch,
                    full_diff,
                )?)
            })
            .await
            .unwrap_or(Err(DiffError::ShuttingDown)),
        )
    }

    /// The whole unified diff of a worktree session.
    /// The whole unified diff of a worktree session (resource `zwarm://sessions/{id}/diff`).
    pub async fn diff_text(&self, id: &str) -> Result<String, ManagerError> {
        let s = self.get(id).await?;
        let Some(iso) = s.isolation.clone() else {
            return Err(ManagerError::NotIsolated {
                id: s.id,
                integrate: "diff",
            });
        };
        let state = self.inner.store.root().to_path_buf();
        blocking(move || {
            session_diff(&state, &s.id, &iso).map_err(|e| ManagerError::Git(e.to_string()))
        })
        .await
        .ok_or(ManagerError::ShuttingDown)?
    }

    /// After start-up (never in the way of `initialize`): `git worktree prune` in the
    /// repositories the state dir's worktrees belong to (and the project's), and report
    /// worktrees no open session owns.
    pub(super) fn spawn_worktree_cleanup(&self) {
        let m = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let root = worktrees_dir(m.inner.store.root());
            let cwd = m.inner.cwd.clone();
            let Some(found) = blocking(move || {
                let mut repos: Vec<PathBuf> = Vec::new();
                if !root.is_dir() {
                    return Vec::new(); // this state dir never had a worktree
                }
                if let Ok(Some(r)) = worktree::toplevel(&cwd) {
                    repos.push(r);
                }
                let mut dirs = Vec::new();
                for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                    let p = e.path();
                    if !p.is_dir() {
                        continue;
                    }
                    let repo = worktree::repo_of_worktree(&p);
                    if let Some(r) = &repo
                        && !repos.contains(r)
                    {
                        repos.push(r.clone());
                    }
                    dirs.push((e.file_name().to_string_lossy().into_owned(), p, repo));
                }
                for r in &repos {
                    if let Err(e) = worktree::prune(r) {
                        tracing::warn!(repo = %r.display(), error = %e, "git worktree prune failed");
                    }
                }
                dirs
            })
            .await
            else {
                return;
            };
            for (name, path, repo) in found {
                let reason = if !crate::model::valid_id(&name) {
                    Some("its name is not a session id".to_string())
                } else if repo.is_none() {
                    Some("it is not a git worktree (no `.git` file)".to_string())
                } else {
                    match m.load(&name).await {
                        Err(ManagerError::UnknownSession(_)) => {
                            Some("no session has this id".to_string())
                        }
                        Err(e) => {
                            tracing::warn!(session = %name, error = %e, "cannot check a worktree's session");
                            None
                        }
                        Ok((s, _)) => match &s.isolation {
                            Some(i) if i.state == WorktreeState::Active && !s.status.is_final() => {
                                None
                            }
                            Some(i) => Some(format!(
                                "its session is {} and its worktree was to be removed ({})",
                                s.status.as_str(),
                                i.state.as_str()
                            )),
                            None => Some("its session has no worktree".to_string()),
                        },
                    }
                };
                if let Some(reason) = reason {
                    let shown = path.display().to_string();
                    tracing::warn!(worktree = %shown, %reason, "orphaned session worktree (remove it with `git worktree remove --force`)");
                    let sid = crate::model::valid_id(&name).then_some(name.as_str());
                    m.inner.log(
                        LogEvent::WorktreeOrphaned {
                            worktree: shown.clone(),
                            reason: reason.clone(),
                        },
                        sid,
                    );
                }
            }
        });
    }
}

/// At a turn's end, before it is reported: commit what changed in the session's worktree onto
/// its branch. Files the executor did not report are taken from the commit, so the watchers
/// judge them. Returns why the turn must fail: its worktree was redirected away from the git
/// dir zwarm made for it (the turn's work cannot be trusted onto the branch).
pub(super) async fn commit_turn(inner: &Arc<Inner>, h: &Arc<Handle>, index: u32) -> Option<String> {
    if !inner.cfg.worktree_commit_turns {
        return None;
    }
    let (iso, prompt) = {
        let l = h.live.lock();
        let t = l.session.turn(index)?;
        if t.ended_at.is_some() {
            return None;
        }
        (l.session.isolation.clone(), t.prompt.clone())
    };
    let iso = iso?;
    if iso.state != WorktreeState::Active {
        return None;
    }
    let timeout = if inner.shutdown.is_cancelled() {
        SHUTDOWN_COMMIT
    } else {
        worktree::GIT_TIMEOUT
    };
    let first = prompt.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let message = format!(
        "zwarm {} turn {index}: {}\n\nsession {}, turn {index}",
        id8(&h.id),
        crate::text::one_line(first.trim(), 60),
        h.id
    );
    let wt = PathBuf::from(&iso.worktree);
    let branch = iso.branch.clone();
    let r = blocking(move || {
        if !wt.join(".git").exists() {
            return Ok(Commit::Skipped("the worktree no longer exists".into()));
        }
        worktree::commit_all(&wt, &branch, &message, timeout)
    })
    .await;
    match r {
        Some(Ok(Commit::Made { sha, files })) => {
            tracing::info!(session = %h.id, turn = index, commit = %sha, files = files.len(), "turn committed");
            inner.log(
                LogEvent::TurnCommitted {
                    turn: index,
                    commit: sha.clone(),
                    branch: iso.branch.clone(),
                    files: files.len(),
                },
                Some(&h.id),
            );
            let mut l = h.live.lock();
            if let Some(t) = l.session.turn_mut(index)
                && t.files_changed.is_empty()
            {
                let root = Path::new(&iso.worktree);
                t.files_changed = files
                    .into_iter()
                    .take(1000)
                    .map(|(st, p)| FileChange {
                        path: root.join(p).display().to_string(),
                        kind: match st {
                            'A' => "add",
                            'D' => "delete",
                            _ => "update",
                        }
                        .to_string(),
                    })
                    .collect();
            }
            None
        }
        Some(Ok(Commit::Nothing)) => None,
        Some(Ok(Commit::Skipped(why))) => {
            tracing::warn!(session = %h.id, turn = index, reason = %why, "turn not committed");
            inner.log(
                LogEvent::TurnCommitSkipped {
                    turn: index,
                    reason: why.clone(),
                },
                Some(&h.id),
            );
            None
        }
        Some(Err(e)) => {
            tracing::warn!(session = %h.id, turn = index, error = %e, "cannot commit the turn");
            inner.log(
                LogEvent::TurnCommitFailed {
                    turn: index,
                    error: e.to_string(),
                },
                Some(&h.id),
            );
            matches!(e, GitError::Redirected { .. }).then(|| e.to_string())
        }
        None => None,
    }
}

/// Before a turn of a worktree session: its working dir must still be inside its worktree,
/// which must still be under the state dir. Blocking.
pub(super) fn check_turn_dir(
    inner: &Inner,
    id: &str,
    iso: &Isolation,
    working_dir: &str,
) -> Result<PathBuf, WorktreeCheck> {
    if iso.state != WorktreeState::Active {
        return Err(WorktreeCheck::Removed {
            state: iso.state.as_str(),
            branch: iso.branch.clone(),
        });
    }
    check_record(inner.store.root(), id, iso)?;
    let wt = Path::new(&iso.worktree);
    if !wt.join(".git").exists() {
        return Err(WorktreeCheck::Gone {
            worktree: iso.worktree.clone(),
            branch: iso.branch.clone(),
        });
    }
    // A worktree whose `.git` was pointed elsewhere never starts a turn.
    crate::worktree::check_worktree(wt)?;
    let root = worktrees_dir(inner.store.root());
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let dir = std::fs::canonicalize(working_dir).map_err(|err| WorktreeCheck::Unusable {
        dir: working_dir.to_string(),
        err,
    })?;
    if dir.display().to_string() != working_dir || !dir.starts_with(wt) || !wt.starts_with(&root) {
        return Err(WorktreeCheck::Escaped {
            dir: working_dir.to_string(),
            now: dir.display().to_string(),
        });
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(worktree: &str, branch: &str) -> Isolation {
        Isolation {
            branch: branch.into(),
            base_ref: "HEAD".into(),
            base: "0123456789abcdef0123456789abcdef01234567".into(),
            worktree: worktree.into(),
            project_dir: "/p".into(),
            repo: "/p".into(),
            state: WorktreeState::Active,
            merged_commit: None,
        }
    }

    #[test]
    fn only_records_zwarm_made_are_acted_on() {
        let state = Path::new("/nonexistent-zwarm-state");
        let id = "6883c685-0000-4000-8000-000000000001";
        let wt = format!("/nonexistent-zwarm-state/worktrees/{id}");
        assert!(check_record(state, id, &iso(&wt, "zwarm/6883c685")).is_ok());
        // Another place, another session's directory, another branch: refused.
        for (w, b) in [
            ("/home/me/src/project", "zwarm/6883c685"),
            (
                "/nonexistent-zwarm-state/worktrees/6883c685-0000-4000-8000-000000000002",
                "zwarm/6883c685",
            ),
            (
                &format!("/nonexistent-zwarm-state/worktrees/{id}/.."),
                "zwarm/6883c685",
            ),
            (wt.as_str(), "main"),
        ] {
            assert!(check_record(state, id, &iso(w, b)).is_err(), "{w} {b}");
        }
    }
}
