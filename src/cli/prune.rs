//! `zwarm prune [--older-than D]`: remove what ended sessions leave behind.
//!
//! For every session ended as completed or cancelled (final: it takes no more turns), last
//! updated before `--older-than` ago (default: any time):
//! - its raw turn logs (`turns/<id>/` in the state dir) are removed; the session's record,
//!   transcript and events stay in the database (`zwarm show` still works);
//! - a worktree session's branch is deleted when the session was merged and the branch holds
//!   nothing the merge did not take (its tip is an ancestor of the recorded merge commit), or
//!   when it was discarded and the branch is still there. A branch kept with
//!   `--integrate keep` is yours and stays.
//!
//! It reads the state read-only and changes only files and branches; it says what it removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{StateArgs, open_state, short_id};
use crate::model::{Isolation, WorktreeState};
use crate::store::readonly::ReadOnlyStore;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Only sessions last updated longer ago than this (e.g. `7d`, `12h`, `30m`).
    #[arg(long, value_name = "D", value_parser = parse_age)]
    pub older_than: Option<Duration>,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}): write it like 7d, 12h or 30m"))
}

/// What prune did (or, with --dry-run, would do).
#[derive(Debug, Default)]
struct Report {
    logs: Vec<(String, u64)>,
    branches: Vec<String>,
    kept: Vec<String>,
}

pub fn main(a: PruneArgs) -> anyhow::Result<i32> {
    let cfg = a.state.load()?;
    if !ReadOnlyStore::exists(&cfg.state_dir) {
        super::out(&format!(
            "nothing to prune: no zwarm state in {} yet\n",
            cfg.state_dir.display()
        ))?;
        return Ok(0);
    }
    let store = open_state(&cfg)?;
    let cutoff = a.older_than.and_then(|d| SystemTime::now().checked_sub(d));
    let mut report = Report::default();
    let mut offset = 0;
    loop {
        let (rows, total) = store.page(None, 200, offset)?;
        offset += rows.len();
        for r in rows {
            if !r.status.is_final() {
                continue;
            }
            let updated = super::parse_time(&r.updated_at);
            if let Some(c) = cutoff
                && updated.is_none_or(|u| u > c)
            {
                continue;
            }
            prune_session(&store, &r.session_id, a.dry_run, &mut report)?;
        }
        if offset >= total || offset == 0 {
            break;
        }
    }
    super::out(&describe(&report, a.dry_run))?;
    Ok(0)
}

fn prune_session(
    store: &ReadOnlyStore,
    id: &str,
    dry_run: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    if !crate::model::valid_id(id) {
        return Ok(());
    }
    let turns = store.root().join("turns");
    let stored = store.load_session(id)?;
    // The session's raw logs (`turns/<id>.<n>.*`, one pair per turn it had) and its own
    // folder (`turns/<id>/`: ACP's files, and the logs of zwarm 0.4.0 and earlier).
    let dir = turns.join(id);
    // (path, size) of each one that is a plain file.
    let files: Vec<(PathBuf, u64)> = stored
        .as_ref()
        .map(|s| {
            (1..=u32::try_from(s.turns.len()).unwrap_or(u32::MAX))
                .flat_map(|n| {
                    let (out, err) = crate::store::logs::files(&turns, id, n);
                    [out, err]
                })
                .filter_map(|p| {
                    let m = std::fs::symlink_metadata(&p).ok().filter(|m| m.is_file())?;
                    Some((p, m.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut size: u64 = files.iter().map(|(_, len)| len).sum();
    let has_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
    if has_dir {
        size += dir_size(&dir);
    }
    if has_dir || !files.is_empty() {
        if !dry_run {
            for (f, _) in &files {
                std::fs::remove_file(f)
                    .map_err(|e| anyhow::anyhow!("removing {}: {e}", f.display()))?;
            }
            if has_dir {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
            }
        }
        report.logs.push((id.to_string(), size));
    }
    let Some(s) = stored else {
        return Ok(());
    };
    if let Some(iso) = &s.isolation {
        match branch_to_delete(id, iso) {
            Ok(Some((repo, branch))) => {
                if !dry_run {
                    crate::worktree::delete_branch(&repo, &branch).map_err(|e| {
                        anyhow::anyhow!("deleting branch {branch} in {}: {e}", repo.display())
                    })?;
                }
                report
                    .branches
                    .push(format!("{branch} (in {})", repo.display()));
            }
            Ok(None) => {}
            Err(why) => report.kept.push(why),
        }
    }
    Ok(())
}

/// The branch of a merged or discarded session that may go: `Ok(None)` when there is none
/// (kept on purpose, or gone already), `Err` with the reason when it stays.
fn branch_to_delete(id: &str, iso: &Isolation) -> Result<Option<(PathBuf, String)>, String> {
    if !matches!(iso.state, WorktreeState::Merged | WorktreeState::Discarded) {
        return Ok(None);
    }
    // Only the branch zwarm made for this session.
    if iso.branch != format!("zwarm/{}", short_id(id)) {
        return Ok(None);
    }
    let repo = PathBuf::from(&iso.repo);
    if !repo.is_dir() {
        return Ok(None);
    }
    match crate::worktree::branch_exists(&repo, &iso.branch) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => return Err(format!("{} (cannot read it: {e})", iso.branch)),
    }
    if iso.state == WorktreeState::Discarded {
        return Ok(Some((repo, iso.branch.clone())));
    }
    let Some(merged) = iso
        .merged_commit
        .as_deref()
        .filter(|c| crate::worktree::valid_rev(c))
    else {
        return Err(format!("{}: no merge commit recorded", iso.branch));
    };
    let r = format!("refs/heads/{}", iso.branch);
    match crate::worktree::run(
        &repo,
        &["merge-base", "--is-ancestor", &r, merged],
        crate::worktree::GIT_TIMEOUT,
    ) {
        Ok(o) if o.success() => Ok(Some((repo, iso.branch.clone()))),
        Ok(_) => Err(format!(
            "{}: it has commits its merge did not take; delete it yourself once you do not need them (`git branch -D {}`)",
            iso.branch, iso.branch
        )),
        Err(e) => Err(format!("{} (cannot compare it: {e})", iso.branch)),
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn describe(r: &Report, dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut o = String::new();
    if r.logs.is_empty() && r.branches.is_empty() {
        o.push_str("nothing to prune: no ended session has turn logs or a merged or discarded branch left\n");
    }
    if !r.logs.is_empty() {
        let bytes: u64 = r.logs.iter().map(|(_, b)| b).sum();
        o.push_str(&format!(
            "{verb} the turn logs of {} ended session(s) ({}):",
            r.logs.len(),
            fmt_bytes(bytes)
        ));
        for (id, _) in &r.logs {
            o.push(' ');
            o.push_str(short_id(id));
        }
        o.push('\n');
    }
    for b in &r.branches {
        o.push_str(&format!("{verb} branch {b}\n"));
    }
    for k in &r.kept {
        o.push_str(&format!("kept branch {k}\n"));
    }
    o
}

fn fmt_bytes(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_and_bad_ones_say_how() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_age("soon").is_err_and(|e| e.contains("7d")));
    }

    #[test]
    fn the_report_names_what_went() {
        let r = Report {
            logs: vec![("0123456789".into(), 2048)],
            branches: vec!["zwarm/01234567 (in /p)".into()],
            kept: vec![],
        };
        let t = describe(&r, false);
        assert!(
            t.contains("removed the turn logs of 1 ended session(s) (2.0 KiB): 01234567"),
            "{t}"
        );
        assert!(t.contains("removed branch zwarm/01234567"), "{t}");
        assert!(describe(&Report::default(), true).starts_with("nothing to prune"));
    }
}
