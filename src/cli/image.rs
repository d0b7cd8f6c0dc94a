//! `zwarm image build`: the executor image for the container runner, from the CLIs installed
//! on this machine (no registry, no Dockerfile): see [`crate::container::image`].

use anyhow::Context;

use super::StateArgs;
use crate::container::image::{Plan, build};
use crate::executor;

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the image from this machine's codex and claude (as zwarm finds them: PATH or
    /// codex.binary / claude.binary), its native ACP agents (opencode) with the zwarm-acp
    /// bridge, its shell, coreutils and git, and import it into the
    /// Docker daemon (runner.container.host, else DOCKER_HOST). Prints the image id.
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The image's name. Default: runner.container.image of the config.
    #[arg(long, value_name = "NAME[:TAG]")]
    pub tag: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn main(a: ImageArgs) -> anyhow::Result<i32> {
    let ImageCommand::Build(b) = a.command;
    let cfg = b.state.load()?;
    let tag = b
        .tag
        .clone()
        .unwrap_or_else(|| cfg.runner.container.image.clone());
    let mut plan = Plan::base();
    let mut acp = false;
    for ex in executor::REGISTRY {
        let found = match ex.resolve(&cfg) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("zwarm: {} is left out of the image: {e}", ex.name());
                continue;
            }
        };
        let recipe = ex.portable().image;
        match plan.add_executor(ex.name(), &found, &recipe) {
            Ok(()) => acp |= recipe.bridge,
            Err(e) => eprintln!("zwarm: {} is left out of the image: {e}", ex.name()),
        }
    }
    // Executors whose turns run through the bridge (the ACP agents): it goes in beside them.
    if acp {
        match executor::acp::bridge_program() {
            Ok(bridge) => {
                plan.add_bridge(&bridge)?;
                eprintln!("zwarm: zwarm-acp: {}", bridge.display());
            }
            Err(e) => eprintln!(
                "zwarm: warning: the ACP agents in the image cannot run without the bridge: {e}"
            ),
        }
    }
    if plan.clis.is_empty() {
        return Err(crate::container::image::ImageError::NoCli.into());
    }
    for (cli, path) in &plan.clis {
        eprintln!("zwarm: {cli}: {path}");
    }
    eprintln!("zwarm: importing `{tag}` into the Docker daemon");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let id = rt.block_on(build(plan, &tag, cfg.runner.container.host.as_deref()))?;
    super::out(&format!("{id}\n"))?;
    Ok(0)
}
