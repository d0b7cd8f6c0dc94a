//! end_session for a worktree session: integrate its branch (`merge`, `keep`, `discard`)
//! and remove its worktree ([`Manager::end_integrated`]). Split from [`super::isolation`],
//! which creates worktrees, commits turns and checks them.

use std::path::PathBuf;
use std::sync::Arc;

use super::isolation::{GIT_ADMIN, Integrate, Integrated, id8};
use super::registry::Handle;
use super::{Manager, ManagerError, blocking};
use crate::log_event::LogEvent;
use crate::model::{Isolation, Session, SessionStatus, WorktreeState};
use crate::worktree::{self, Commit, Refused};

impl Manager {
    /// End a session and integrate its worktree (see [`Integrate`]). Sessions without a
    /// worktree end as [`Manager::end`] ends them.
    pub async fn end_integrated(
        &self,
        id: &str,
        verdict: SessionStatus,
        summary: Option<String>,
        integrate: Option<&str>,
    ) -> Result<(Session, bool, Option<Integrated>), ManagerError> {
        self.end_integrated_with(id, verdict, summary, integrate, false)
            .await
    }

    /// [`Manager::end_integrated`], saying whether a merge may bring symlinks that point
    /// outside the repository (`accept_outside_links`; refused otherwise). The links a merge
    /// brought are in [`Integrated::outside_links`] and the `worktree_merged` event.
    pub async fn end_integrated_with(
        &self,
        id: &str,
        verdict: SessionStatus,
        summary: Option<String>,
        integrate: Option<&str>,
        accept_outside_links: bool,
    ) -> Result<(Session, bool, Option<Integrated>), ManagerError> {
        let how = match integrate.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(v) => {
                Some(Integrate::parse(v).ok_or_else(|| ManagerError::BadIntegrate(v.to_string()))?)
            }
        };
        let h = self.owned(id).await?;
        let (iso, status) = {
            let l = h.live.lock();
            (l.session.isolation.clone(), l.session.status)
        };
        let Some(iso) = iso else {
            if let Some(i @ (Integrate::Merge | Integrate::Discard)) = how {
                return Err(ManagerError::NotIsolated {
                    id: h.id.clone(),
                    integrate: i.as_str(),
                });
            }
            let (s, interrupted) = self.end(&h.id, verdict, summary).await?;
            return Ok((s, interrupted, None));
        };
        if status.is_final() {
            return Err(ManagerError::Ended {
                id: h.id.clone(),
                status: status.as_str(),
            });
        }
        self.checked(&h.id, &iso).await?;
        // Verdict failed is not final (converse may retry): without an explicit `integrate`,
        // the worktree stays for that.
        let how = match how {
            Some(h) => h,
            None if verdict.is_final() => Integrate::Keep,
            None => {
                let (s, interrupted) = self.end(&h.id, verdict, summary).await?;
                return Ok((
                    s,
                    interrupted,
                    Some(Integrated {
                        integrate: None,
                        merged: false,
                        commit: None,
                        branch: iso.branch.clone(),
                        state: iso.state,
                        warning: None,
                        outside_links: Vec::new(),
                    }),
                ));
            }
        };
        match how {
            Integrate::Merge => {
                self.end_merging(&h, iso, verdict, summary, accept_outside_links)
                    .await
            }
            Integrate::Keep | Integrate::Discard => {
                let (s, interrupted) = self.end(&h.id, verdict, summary).await?;
                let mut warning = None;
                let mut state = iso.state;
                if iso.state != WorktreeState::Discarded {
                    match self.remove_worktree(&h, &iso, how).await {
                        Ok(st) => state = st,
                        Err(e) => warning = Some(e),
                    }
                }
                let s = if state != iso.state {
                    let mut new = iso.clone();
                    new.state = state;
                    self.save_isolation(&h, new).await;
                    h.snapshot().0
                } else {
                    s
                };
                Ok((
                    s,
                    interrupted,
                    Some(Integrated {
                        integrate: Some(how),
                        merged: false,
                        commit: None,
                        branch: iso.branch,
                        state,
                        warning,
                        outside_links: Vec::new(),
                    }),
                ))
            }
        }
    }

    /// `integrate: "merge"`: merge first (refused, with everything kept and the session open,
    /// on conflicts or uncommitted files in the way), then end the session.
    pub(super) async fn end_merging(
        &self,
        h: &Arc<Handle>,
        iso: Isolation,
        verdict: SessionStatus,
        summary: Option<String>,
        accept_outside_links: bool,
    ) -> Result<(Session, bool, Option<Integrated>), ManagerError> {
        if iso.state == WorktreeState::Discarded {
            return Err(ManagerError::WorktreeRemoved {
                id: h.id.clone(),
                state: iso.state.as_str(),
                branch: iso.branch,
            });
        }
        {
            let mut l = h.live.lock();
            if l.session.status.is_active() {
                return Err(ManagerError::MergeBusy(h.id.clone()));
            }
            if l.ending {
                return Err(ManagerError::Ended {
                    id: h.id.clone(),
                    status: "being ended",
                });
            }
            // No turn starts while the merge runs.
            l.ending = true;
        }
        let guard = super::api::EndingGuard {
            h: h.clone(),
            armed: true,
        };
        let id8 = id8(&h.id).to_string();
        let sid = h.id.clone();
        let iso2 = iso.clone();
        let res = blocking(move || -> Result<worktree::Merged, String> {
            let _admin = GIT_ADMIN.lock();
            let wt = PathBuf::from(&iso2.worktree);
            if iso2.state == WorktreeState::Active && wt.join(".git").exists() {
                // Whatever the last turns left uncommitted goes in too.
                let msg = format!("zwarm {id8}: uncommitted work at end_session\n\nsession {sid}");
                match worktree::commit_all(&wt, &iso2.branch, &msg, worktree::GIT_TIMEOUT) {
                    Ok(Commit::Skipped(why)) => {
                        return Err(format!(
                            "merge refused: {why}. Nothing in the project checkout was changed; the branch `{}` and the worktree are kept and the session stays open. Converse with the session to finish, then call end_session with integrate merge again.",
                            iso2.branch
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("merge refused: cannot commit the worktree's last changes: {e}. Nothing in the project checkout was changed.")),
                }
            }
            let msg = format!(
                "Merge zwarm session {id8} (branch {})\n\nsession {sid}",
                iso2.branch
            );
            let project = PathBuf::from(&iso2.repo);
            match worktree::merge_with(&project, &iso2.branch, &msg, accept_outside_links) {
                Ok(m) => Ok(m),
                Err(Refused::Conflicts { target, head, files }) => {
                    // The resolution is prepared in the session's worktree (outside the
                    // executor's sandbox, which may not let it write git's metadata): the
                    // project's commit merged in, conflict markers in the files.
                    let prepared = iso2.state == WorktreeState::Active
                        && wt.join(".git").exists()
                        && match worktree::start_merge(&wt, &head) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot prepare the merge in the worktree");
                                false
                            }
                        };
                    Err(conflict_refusal(&iso2, &target, &files, prepared))
                }
                Err(r) => Err(refusal(&iso2, r)),
            }
        })
        .await
        .ok_or(ManagerError::ShuttingDown)?;
        let merged = match res {
            Ok(m) => m,
            Err(msg) => {
                drop(guard);
                tracing::info!(session = %h.id, reason = %msg, "merge refused");
                self.inner.log(
                    LogEvent::MergeRefused {
                        branch: iso.branch.clone(),
                        reason: msg.clone(),
                    },
                    Some(&h.id),
                );
                return Err(ManagerError::MergeRefused(msg));
            }
        };
        tracing::info!(session = %h.id, branch = %iso.branch, commit = %merged.commit, into = %merged.target, "session branch merged");
        self.inner.log(
            LogEvent::WorktreeMerged {
                branch: iso.branch.clone(),
                into: serde_json::json!(merged.target),
                commit: serde_json::json!(merged.commit),
                fast_forward: serde_json::json!(merged.fast_forward),
                already_merged: serde_json::json!(merged.already),
                outside_links: merged.outside_links.iter().map(|l| l.to_string()).collect(),
            },
            Some(&h.id),
        );
        let mut warning = None;
        let mut new = iso.clone();
        new.merged_commit = Some(merged.commit.clone());
        new.state = WorktreeState::Merged;
        if iso.state == WorktreeState::Active
            && let Err(e) = self.remove_worktree(h, &iso, Integrate::Merge).await
        {
            warning = Some(e);
            new.state = WorktreeState::Active;
        }
        {
            let mut l = h.live.lock();
            l.session.isolation = Some(new.clone());
        }
        // The session may end now.
        drop(guard);
        let (s, interrupted) = self.end(&h.id, verdict, summary).await?;
        Ok((
            s,
            interrupted,
            Some(Integrated {
                integrate: Some(Integrate::Merge),
                merged: true,
                commit: Some(merged.commit),
                branch: iso.branch,
                state: new.state,
                warning,
                outside_links: merged.outside_links,
            }),
        ))
    }

    /// Remove the worktree (and, for discard, the branch); uncommitted work is committed to
    /// the branch first unless it is discarded. Returns the new state, or what went wrong.
    pub(super) async fn remove_worktree(
        &self,
        h: &Arc<Handle>,
        iso: &Isolation,
        how: Integrate,
    ) -> Result<WorktreeState, String> {
        let iso2 = iso.clone();
        let id8 = id8(&h.id).to_string();
        let sid = h.id.clone();
        let r = blocking(move || -> Result<WorktreeState, String> {
            let _admin = GIT_ADMIN.lock();
            let repo = PathBuf::from(&iso2.repo);
            let wt = PathBuf::from(&iso2.worktree);
            if how != Integrate::Discard && wt.join(".git").exists() {
                let msg = format!("zwarm {id8}: uncommitted work at end_session\n\nsession {sid}");
                if let Err(e) = worktree::commit_all(&wt, &iso2.branch, &msg, worktree::GIT_TIMEOUT)
                {
                    return Err(format!(
                        "the worktree {} was kept: its last changes could not be committed ({e})",
                        iso2.worktree
                    ));
                }
            }
            worktree::remove(&repo, &wt)
                .map_err(|e| format!("the worktree {} could not be removed: {e}", iso2.worktree))?;
            if how == Integrate::Discard {
                worktree::delete_branch(&repo, &iso2.branch)
                    .map_err(|e| format!("the branch {} could not be deleted: {e}", iso2.branch))?;
                return Ok(WorktreeState::Discarded);
            }
            Ok(match how {
                Integrate::Merge => WorktreeState::Merged,
                _ => WorktreeState::Kept,
            })
        })
        .await
        .unwrap_or_else(|| Err("zwarm is shutting down".into()));
        match &r {
            Ok(st) => {
                self.inner.log(
                    LogEvent::WorktreeRemoved {
                        worktree: iso.worktree.clone(),
                        branch: iso.branch.clone(),
                        integrate: how.as_str().into(),
                        branch_deleted: *st == WorktreeState::Discarded,
                    },
                    Some(&h.id),
                );
            }
            Err(e) => {
                tracing::warn!(session = %h.id, error = %e, "cannot remove a session worktree");
                self.inner.log(
                    LogEvent::WorktreeOrphaned {
                        worktree: iso.worktree.clone(),
                        reason: e.clone(),
                    },
                    Some(&h.id),
                );
            }
        }
        r
    }
}

/// The refusal text for a merge that conflicts.
fn conflict_refusal(iso: &Isolation, target: &str, files: &[String], prepared: bool) -> String {
    let files = files.join(", ");
    let head = format!(
        "merge refused: merging `{}` into `{target}` conflicts in {files}. Nothing in the project checkout was changed; the branch `{}` is kept and the session stays open.",
        iso.branch, iso.branch
    );
    if prepared {
        format!(
            "{head} zwarm has merged `{target}` into the session's worktree without committing: {files} now hold conflict markers there. Converse with the session to resolve them, e.g. \"resolve the merge conflicts in {files}: keep both changes\"; zwarm commits the resolution (the merge commit) at the end of that turn. Then call end_session with integrate merge again. To give up instead: end_session with integrate keep or discard."
        )
    } else {
        format!(
            "{head} Converse with the session to resolve it, e.g. \"merge `{target}` into your branch and resolve the conflicts in {files}\" (zwarm commits the resolution at the end of the turn), then call end_session with integrate merge again."
        )
    }
}

/// The refusal text for a merge that was not done (nothing in the checkout changed).
fn refusal(iso: &Isolation, r: Refused) -> String {
    let kept = format!(
        "Nothing in the project checkout was changed; the branch `{}` and its worktree are kept and the session stays open.",
        iso.branch
    );
    match r {
        Refused::Conflicts { target, files, .. } => conflict_refusal(iso, &target, &files, false),
        Refused::Dirty { target, files } => format!(
            "merge refused: it would change files with uncommitted changes in the project checkout {} (on `{target}`): {}. {kept} Commit or stash those changes in the project (ask the user if they are not yours), then call end_session with integrate merge again.",
            iso.repo,
            files.join(", ")
        ),
        Refused::Git(e) => format!(
            "merge refused: {e}. {kept} Fix the cause, then call end_session with integrate merge again."
        ),
    }
}
