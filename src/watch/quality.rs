//! quality: after a turn, code changed without tests, or too many files changed at once.
//!
//! The changed files are the executor's file-change events. When a turn reported none (a shell
//! command can change files without a file event), one bounded `git status` scan runs after the
//! turn's result is reported, off the request path, and its nudge reaches the session then. So
//! a 20,000-file repository costs nothing on the tool call.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Action, Finding, Watcher};
use crate::fleet::Fleet;
use crate::model::Session;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    pub enabled: bool,
    pub priority: i32,
    /// More changed files than this in one turn → nudge.
    pub max_files: usize,
    /// Nudge when code files changed but no test file did.
    pub require_tests: bool,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            enabled: true,
            priority: 0,
            max_files: 15,
            require_tests: true,
        }
    }
}

pub struct Quality {
    cfg: QualityConfig,
}

const CODE_EXT: &[&str] = &[
    "rs", "py", "ts", "tsx", "js", "jsx", "mjs", "go", "java", "kt", "c", "cc", "cpp", "h", "hpp",
    "rb", "php", "cs", "swift", "scala", "ex", "exs",
];

pub fn is_test_file(path: &str) -> bool {
    let p = path.replace('\\', "/").to_lowercase();
    let name = p.rsplit('/').next().unwrap_or(&p);
    p.contains("/tests/")
        || p.starts_with("tests/")
        || p.contains("/test/")
        || p.starts_with("test/")
        || p.contains("/__tests__/")
        || p.contains("/spec/")
        || name.starts_with("test_")
        || name.contains("_test.")
        || name.contains(".test.")
        || name.contains(".spec.")
        || name.contains("_spec.")
}

pub fn is_code_file(path: &str) -> bool {
    Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CODE_EXT.contains(&e.to_ascii_lowercase().as_str()))
}

/// Longest a git scan may take, and most output read from it.
const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const GIT_MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// Files `git status` reports as changed or new that were modified since `since` (so a repo
/// that was already dirty does not count against this turn), relative to `dir`. git runs the
/// way zwarm always runs it ([`crate::git`]: no hook, fsmonitor, filter or other program the
/// repository's config or attributes name, which the executor can write), with a deadline
/// and an output cap; nothing on failure, timeout or overflow.
fn git_changed(dir: &str, since: std::time::SystemTime) -> Vec<String> {
    let Ok(Some(g)) = crate::git::Git::open(Path::new(dir), GIT_TIMEOUT) else {
        return vec![];
    };
    let Some(root) = g.work_tree().map(Path::to_path_buf) else {
        return vec![];
    };
    // --no-optional-locks: never take index.lock, which would make another session's
    // `git commit` in the same repo fail. -z: exact paths, no quoting of unusual names.
    let status = g.run(
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "-z",
            "--untracked-files=all",
            "--ignore-submodules=dirty",
        ],
        GIT_TIMEOUT,
        GIT_MAX_OUTPUT,
    );
    let status = match status {
        Ok(o) if o.success() => o.text(),
        _ => return vec![],
    };
    let mut paths = Vec::new();
    let mut entries = status.split('\0');
    while let Some(e) = entries.next() {
        let (Some(xy), Some(path)) = (e.get(..2), e.get(3..)) else {
            continue;
        };
        if xy.contains('R') || xy.contains('C') {
            entries.next(); // the rename's source path
        }
        // Deleted files have no mtime to tell whether this turn removed them; the executor's
        // own file events report its deletions.
        if !xy.contains('D') {
            paths.push(path.to_string());
        }
    }
    paths
        .iter()
        .filter_map(|rel| {
            let abs = root.join(rel);
            let modified = std::fs::metadata(&abs).and_then(|m| m.modified()).ok()?;
            (modified >= since).then(|| {
                abs.strip_prefix(dir)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| abs.display().to_string())
            })
        })
        .collect()
}

impl Quality {
    pub fn new(cfg: &QualityConfig) -> Quality {
        Quality { cfg: cfg.clone() }
    }
}

impl Quality {
    fn judge(&self, files: &mut Vec<String>) -> Finding {
        files.sort();
        files.dedup();
        if files.len() > self.cfg.max_files {
            return Some((
                Action::Nudge,
                format!(
                    "{} files changed in one turn (more than {}). Review the diff carefully, or split the work into smaller delegations.",
                    files.len(),
                    self.cfg.max_files
                ),
            ));
        }
        if self.cfg.require_tests {
            let code: Vec<&String> = files
                .iter()
                .filter(|f| is_code_file(f) && !is_test_file(f))
                .collect();
            if !code.is_empty() && !files.iter().any(|f| is_test_file(f)) {
                let list: Vec<&str> = code.iter().take(5).map(|s| s.as_str()).collect();
                return Some((
                    Action::Nudge,
                    format!(
                        "code changed ({}) but no test file was touched. Ask the executor to add or update tests, or verify the change another way before ending the session as completed.",
                        list.join(", ")
                    ),
                ));
            }
        }
        None
    }
}

/// The files the executor reported for the session's last turn, relative to its working dir.
fn reported(session: &Session) -> Vec<String> {
    let Some(turn) = session.last_turn() else {
        return vec![];
    };
    let wd = session.working_dir.trim_end_matches('/');
    turn.files_changed
        .iter()
        .map(|f| {
            f.path
                .strip_prefix(wd)
                .map(|p| p.trim_start_matches('/').to_string())
                .unwrap_or_else(|| f.path.clone())
        })
        .collect()
}

impl Watcher for Quality {
    fn name(&self) -> &'static str {
        "quality"
    }

    fn after_turn(&self, session: &Session, _fleet: &Fleet) -> Result<Finding, String> {
        let mut files = reported(session);
        if files.is_empty() {
            return Ok(None);
        }
        Ok(self.judge(&mut files))
    }

    fn wants_background(&self, session: &Session) -> bool {
        session
            .last_turn()
            .is_some_and(|t| t.files_changed.is_empty())
    }

    /// Only for turns that reported no file changes: one bounded git scan.
    fn after_turn_background(&self, session: &Session) -> Result<Finding, String> {
        let Some(turn) = session.last_turn() else {
            return Ok(None);
        };
        if !turn.files_changed.is_empty() {
            return Ok(None);
        }
        let Ok(since) = humantime::parse_rfc3339_weak(&turn.started_at) else {
            return Ok(None);
        };
        // Whole-second precision is enough; allow for the timestamp's rounding.
        let since = since - std::time::Duration::from_secs(1);
        let mut files = git_changed(session.working_dir.trim_end_matches('/'), since);
        if files.is_empty() {
            return Ok(None);
        }
        Ok(self.judge(&mut files))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_tests_and_code() {
        for t in [
            "tests/it.rs",
            "src/foo_test.go",
            "pkg/test_x.py",
            "web/a.test.ts",
            "spec/x_spec.rb",
            "crate/tests/a.rs",
        ] {
            assert!(is_test_file(t), "{t}");
        }
        for c in ["src/lib.rs", "app/main.py", "README.md"] {
            assert!(!is_test_file(c), "{c}");
        }
        assert!(is_code_file("src/lib.rs"));
        assert!(!is_code_file("README.md"));
    }

    /// The scan runs git in the executor's workspace, whose `.git/config` the executor can
    /// write: an fsmonitor or hook set there must not run.
    #[test]
    fn the_git_scan_runs_nothing_the_repository_config_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).expect("mkdir");
        let pwned = dir.path().join("pwned");
        let sh = |cmd: &str| {
            let ok = std::process::Command::new("sh")
                .args(["-c", cmd])
                .current_dir(&repo)
                .status()
                .expect("sh")
                .success();
            assert!(ok, "{cmd}");
        };
        sh("git init -q . && echo a > a.rs");
        let hook = format!("touch {}", pwned.display());
        sh(&format!("git config core.fsmonitor '{hook}'"));
        let since = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let changed = git_changed(&repo.display().to_string(), since);
        assert_eq!(changed, vec!["a.rs".to_string()]);
        assert!(!pwned.exists(), "the repository's fsmonitor ran");
    }

    /// The git scan (and the blocking thread it runs on) is wanted only for a turn that
    /// reported no file changes.
    #[test]
    fn the_background_scan_is_wanted_only_without_reported_changes() {
        let session = |files: serde_json::Value| -> Session {
            serde_json::from_value(serde_json::json!({
                "id": "s1", "adapter": "codex", "mode": "sync", "status": "idle", "task": "t",
                "working_dir": "/w", "model": null, "native_id": null,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "turns": [{
                    "index": 1, "prompt": "p", "status": "completed", "response": "done",
                    "error": null, "api_status": null, "usage": {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "reasoning_output_tokens": 0}, "cost_usd": null,
                    "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:00:01Z",
                    "commands": [], "files_changed": files, "permission_denials": [],
                    "messages": []
                }],
                "error": null, "summary": null, "owner": {"pid": 1, "instance": "i"}
            }))
            .expect("a session")
        };
        let q = Quality::new(&QualityConfig::default());
        assert!(q.wants_background(&session(serde_json::json!([]))));
        assert!(!q.wants_background(&session(
            serde_json::json!([{"path": "src/lib.rs", "kind": "update"}])
        )));
        let mut none = session(serde_json::json!([]));
        none.turns.clear();
        assert!(!q.wants_background(&none));
    }
}
