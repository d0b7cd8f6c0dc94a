//! Running an executor's CLI for a check (doctor): stdin closed, its own process group, killed
//! after a timeout, output bounded.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How long one external command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// What a command printed, and how it ended.
#[derive(Debug, Default)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub spawn_error: Option<String>,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// A short account of a failure.
    pub fn why(&self) -> String {
        if let Some(e) = &self.spawn_error {
            return format!("could not start it: {e}");
        }
        if self.timed_out {
            return format!("it did not finish within {}s", COMMAND_TIMEOUT.as_secs());
        }
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        // The CLI's notices about itself (codex: "WARNING: proceeding, even though we could
        // not create PATH aliases…") are not why it failed.
        let tail: Vec<&str> = text
            .trim()
            .lines()
            .filter(|l| !l.trim_start().starts_with("WARNING"))
            .rev()
            .take(3)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "exit {}: {}",
            self.code
                .map(|c| c.to_string())
                .unwrap_or("by a signal".into()),
            crate::text::one_line(&tail.join(" "), 300)
        )
    }
}

/// Run a command with stdin closed, in its own process group, killed (group and all) after
/// `timeout` ([`crate::process::run_bounded`]; at most 4 MiB of each output kept).
pub fn run_with_timeout(
    program: &Path,
    args: &[&str],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("CLAUDECODE");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    match crate::process::run_bounded(&mut cmd, timeout, 4 << 20) {
        Ok(b) => Output {
            code: b.status.and_then(|s| s.code()),
            stdout: String::from_utf8_lossy(&b.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&b.stderr).into_owned(),
            timed_out: b.status.is_none(),
            spawn_error: None,
        },
        Err(e) => Output {
            spawn_error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let t = Instant::now();
        let o = run_with_timeout(
            Path::new("/bin/sh"),
            &["-c", "sleep 30"],
            None,
            Duration::from_millis(300),
        );
        assert!(o.timed_out);
        assert!(t.elapsed() < Duration::from_secs(5));
        let o = run_with_timeout(
            Path::new("/bin/sh"),
            &["-c", "echo hi"],
            None,
            COMMAND_TIMEOUT,
        );
        assert!(o.ok() && o.stdout.trim() == "hi", "{o:?}");
        let o = run_with_timeout(Path::new("/nonexistent/x"), &[], None, COMMAND_TIMEOUT);
        assert!(o.spawn_error.is_some());
    }
}
