//! quality: after a turn, code changed without tests, or too many files changed at once.
//!
//! The changed files are the executor's file-change events plus, when the working dir is a git
//! repository, `git status --porcelain` (commands can change files without a file event).

use std::path::Path;
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::{Action, Finding, Watcher};
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

fn git(dir: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Files `git status` reports as changed or new that were modified since `since` (so a repo
/// that was already dirty does not count against this turn), relative to `dir`.
fn git_changed(dir: &str, since: std::time::SystemTime) -> Vec<String> {
    let Some(root) = git(dir, &["rev-parse", "--show-toplevel"]) else {
        return vec![];
    };
    let root = Path::new(root.trim());
    // --no-optional-locks: never take index.lock, which would make another session's
    // `git commit` in the same repo fail. -z: exact paths, no quoting of unusual names.
    let Some(status) = git(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "-z",
            "--untracked-files=all",
        ],
    ) else {
        return vec![];
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

impl Watcher for Quality {
    fn name(&self) -> &'static str {
        "quality"
    }

    fn after_turn(&self, session: &Session, _sessions: &[Session]) -> Result<Finding, String> {
        let Some(turn) = session.last_turn() else {
            return Ok(None);
        };
        let wd = session.working_dir.trim_end_matches('/');
        let mut files: Vec<String> = turn
            .files_changed
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(wd)
                    .map(|p| p.trim_start_matches('/').to_string())
                    .unwrap_or_else(|| f.path.clone())
            })
            .collect();
        if let Ok(since) = humantime::parse_rfc3339_weak(&turn.started_at) {
            // Whole-second precision is enough; allow for the timestamp's rounding.
            let since = since - std::time::Duration::from_secs(1);
            files.extend(git_changed(wd, since));
        }
        files.sort();
        files.dedup();
        if files.len() > self.cfg.max_files {
            return Ok(Some((
                Action::Nudge,
                format!(
                    "{} files changed in one turn (more than {}). Review the diff carefully, or split the work into smaller delegations.",
                    files.len(),
                    self.cfg.max_files
                ),
            )));
        }
        if self.cfg.require_tests {
            let code: Vec<&String> = files
                .iter()
                .filter(|f| is_code_file(f) && !is_test_file(f))
                .collect();
            if !code.is_empty() && !files.iter().any(|f| is_test_file(f)) {
                let list: Vec<&str> = code.iter().take(5).map(|s| s.as_str()).collect();
                return Ok(Some((
                    Action::Nudge,
                    format!(
                        "code changed ({}) but no test file was touched. Ask the executor to add or update tests, or verify the change another way before ending the session as completed.",
                        list.join(", ")
                    ),
                )));
            }
        }
        Ok(None)
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
}
