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

/// What the daemon says about the runner's setup.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The daemon's version, e.g. `20.10.24+dfsg1`.
    pub daemon: String,
    /// Each CLI asked for, with the first line of its `--version` inside the image (`None`:
    /// it does not run there).
    pub clis: Vec<(String, Option<String>)>,
}

/// Connect to the daemon of `cfg`, check its image, then run `<cli> --version` inside the
/// image for each of `clis`. `scratch` is a directory for the scratch session these runs
/// need (nothing else of the host is mounted); what they make there is removed.
pub async fn inspect(
    cfg: &ContainerConfig,
    scratch: &Path,
    clis: &[&str],
) -> Result<Inspection, super::ContainerError> {
    let r = ContainerRunner::connect(cfg.clone(), scratch.to_path_buf()).await?;
    let daemon = r.daemon_version().await.unwrap_or_else(|| "?".into());
    let mut out = Vec::new();
    for cli in clis {
        out.push((cli.to_string(), r.cli_version(cli).await));
    }
    Ok(Inspection { daemon, clis: out })
}

/// What to do when the daemon or the image cannot be used.
pub const SETUP_FIX: &str = "start Docker (or Podman's API service) and build the image with `zwarm image build` (docs/containers.md), or set runner.kind = \"local\"";

/// [`inspect`] as findings: the daemon and image, then each CLI.
pub async fn check(cfg: &ContainerConfig, scratch: &Path, clis: &[&str]) -> Vec<Check> {
    let i = match inspect(cfg, scratch, clis).await {
        Ok(i) => i,
        Err(e) => {
            return vec![Check {
                ok: false,
                detail: e.to_string(),
                fix: Some(SETUP_FIX.into()),
            }];
        }
    };
    let mut out = vec![Check {
        ok: true,
        detail: format!("Docker daemon {}, image `{}`", i.daemon, cfg.image),
        fix: None,
    }];
    for (cli, version) in i.clis {
        out.push(match version {
            Some(v) => Check {
                ok: true,
                detail: format!("{cli} in the image: {v}"),
                fix: None,
            },
            None => Check {
                ok: false,
                detail: format!("{cli} does not run in the image `{}`", cfg.image),
                fix: Some(format!(
                    "rebuild the image with {cli} on its PATH: `zwarm image build` (docs/containers.md, \"Images\")"
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
