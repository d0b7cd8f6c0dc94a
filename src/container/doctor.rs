//! What `zwarm doctor` checks of the container runner: the daemon, the image, and the executor
//! CLIs inside the image.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{ContainerConfig, ContainerRunner, TurnSpec};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
    /// What to do when it is not ok.
    pub fix: Option<String>,
}

/// Check the daemon and the image of `cfg`, then run `<cli> --version` inside the image for
/// each of `clis` (`codex`, `claude`). `state_root` is where the runner keeps session state
/// (a scratch session is made and removed there).
pub async fn check(cfg: &ContainerConfig, state_root: &Path, clis: &[&str]) -> Vec<Check> {
    let r = match ContainerRunner::connect(cfg.clone(), state_root.to_path_buf()).await {
        Ok(r) => r,
        Err(e) => {
            return vec![Check {
                ok: false,
                detail: e.to_string(),
                fix: Some(
                    "see docs/containers.md: start a daemon, build the image, or set runner.kind = \"local\""
                        .into(),
                ),
            }];
        }
    };
    let mut out = vec![Check {
        ok: true,
        detail: format!(
            "Docker daemon {}, image `{}`",
            r.daemon_version().await.unwrap_or_else(|| "?".into()),
            cfg.image
        ),
        fix: None,
    }];
    for cli in clis {
        out.push(match r.cli_version(cli).await {
            Some(v) => Check {
                ok: true,
                detail: format!("{cli} in the image: {v}"),
                fix: None,
            },
            None => Check {
                ok: false,
                detail: format!("{cli} does not run in the image `{}`", cfg.image),
                fix: Some(format!(
                    "rebuild the image with {cli} on its PATH (docs/containers.md, \"Images\")"
                )),
            },
        });
    }
    out
}

impl ContainerRunner {
    /// The daemon's version, e.g. `20.10.24+dfsg1`.
    pub async fn daemon_version(&self) -> Option<String> {
        self.docker.version().await.ok().and_then(|v| v.version)
    }

    /// `<cli> --version` run in a container of the image, without network; `None` when it
    /// does not run or fails.
    pub async fn cli_version(&self, cli: &str) -> Option<String> {
        let session = format!("doctor-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let spec = TurnSpec {
            program: cli.into(),
            args: vec!["--version".into()],
            // A scratch dir of its own: nothing of the host is mounted for this.
            cwd: self.state_root.join(&session).join("home"),
            label: format!("{session}.1"),
            ..TurnSpec::default()
        };
        let mut t = self.start_turn(spec).await.ok()?;
        let mut out = t.take_stdout()?;
        let mut text = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), out.read_to_string(&mut text));
        let _ = read.await;
        t.stop(Duration::ZERO, None).await;
        let f = t.finish().await;
        let dir = self.state_root.join(&session);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        let ok = f.exit.and_then(|e| e.code()) == Some(0);
        let line = text.lines().next().unwrap_or_default().trim().to_string();
        (ok && !line.is_empty()).then_some(line)
    }
}
