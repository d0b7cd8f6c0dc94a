//! `zwarm doctor` with `runner.kind = "container"`: the daemon, the image, and each executor's
//! CLI inside the image against the versions zwarm's tests cover.

use super::{Check, Status, check, in_range, parse_version};
use crate::config::Config;
use crate::container::doctor::{SETUP_FIX, inspect};
use crate::executor;

const GROUP: &str = "runner";

/// Adjust the host's checks for turns that run in containers and add the runner's own.
/// codex's sandbox is not used there (the container is the boundary: docs/containers.md), so
/// its check on this machine is replaced; the host's process containment does not apply.
pub fn container_checks(cfg: &Config, all: &mut Vec<Check>) {
    for c in all.iter_mut() {
        if c.name == "codex sandbox" {
            c.status = Status::Ok;
            c.detail = format!(
                "not used in a container: codex runs there without its own sandbox and codex.sandbox = {} is enforced by the container's mounts",
                cfg.codex.sandbox
            );
            c.fix = None;
        }
    }
    all.retain(|c| c.group != "containment");
    all.extend(runner_checks(cfg));
    all.extend(key_checks(cfg));
}

/// API keys zwarm has that its containers would not get: only names listed in
/// `runner.container.env` go in (logins in the executors' config dirs are copied in).
fn key_checks(cfg: &Config) -> Vec<Check> {
    let passed = &cfg.runner.container.env;
    let missing: Vec<&str> = ["OPENAI_API_KEY", "CODEX_API_KEY", "ANTHROPIC_API_KEY"]
        .into_iter()
        .filter(|k| std::env::var_os(k).is_some() && !passed.iter().any(|p| p == k))
        .collect();
    if missing.is_empty() {
        return vec![];
    }
    vec![
        check(
            GROUP,
            "keys passed in",
            Status::Warn,
            format!(
                "{} set here but not in runner.container.env: executors in containers do not get it",
                missing.join(", ")
            ),
        )
        .fix(format!(
            "add it to runner.container.env in a trusted config, e.g. env = [{}]",
            missing
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    ]
}

fn runner_checks(cfg: &Config) -> Vec<Check> {
    let image = &cfg.runner.container.image;
    let failed =
        |why: String| vec![check(GROUP, "container runner", Status::Fail, why).fix(SETUP_FIX)];
    // The `--version` runs need a scratch session dir (mounted into their containers); the
    // state dir is left alone.
    let scratch = match tempfile::Builder::new().prefix("zwarm-doctor-").tempdir() {
        Ok(d) => d,
        Err(e) => return failed(format!("cannot make a scratch dir: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(format!("cannot start a runtime: {e}")),
    };
    let clis: Vec<&str> = executor::REGISTRY.iter().map(|e| e.name()).collect();
    let found = match rt.block_on(inspect(&cfg.runner.container, scratch.path(), &clis)) {
        Ok(i) => i,
        Err(e) => return failed(e.to_string()),
    };
    let mut out = vec![check(
        GROUP,
        "container runner",
        Status::Ok,
        format!("Docker daemon {}, image `{image}`", found.daemon),
    )];
    for (cli, version) in found.clis {
        let name = format!("{cli} in the image");
        let Some(ex) = executor::by_name(&cli) else {
            continue;
        };
        let (lo, hi) = ex.doctor_spec().tested;
        let rebuild = format!(
            "install a tested {cli} ({lo} to {hi}) on this machine and rebuild the image: `zwarm image build --tag {image}`"
        );
        out.push(match version {
            None => check(
                GROUP,
                &name,
                Status::Fail,
                format!("`{cli} --version` does not run in the image `{image}`"),
            )
            .fix(rebuild),
            Some(v) => match parse_version(&v) {
                Some(ver) if in_range(ver, lo, hi) => {
                    check(GROUP, &name, Status::Ok, format!("{v} (tested: {lo} to {hi})"))
                }
                _ => check(
                    GROUP,
                    &name,
                    Status::Warn,
                    format!("{v} is outside the versions zwarm's tests cover ({lo} to {hi}); it may work"),
                )
                .fix(rebuild),
            },
        });
    }
    out
}
