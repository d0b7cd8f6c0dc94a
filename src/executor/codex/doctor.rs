//! doctor's checks of codex: a login or key, and a sandbox that works.

use std::path::Path;

use crate::executor::api::{Finding, Health};
use crate::executor::nested::codex_home;
use crate::executor::probe::{COMMAND_TIMEOUT, run_with_timeout};

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Lines of codex's output that are about codex itself, not the answer: its PATH-alias notice
/// (`WARNING: proceeding, even though we could not create PATH aliases…`) and the like.
fn is_noise(line: &str) -> bool {
    let l = line.trim();
    l.is_empty() || l.starts_with("WARNING") || l.starts_with("Reading additional input")
}

pub(super) fn auth(program: &Path) -> Finding {
    let s = run_with_timeout(program, &["login", "status"], None, COMMAND_TIMEOUT);
    let said = format!("{}\n{}", s.stdout, s.stderr);
    let first = said.lines().map(str::trim).find(|l| !is_noise(l));
    if s.ok() {
        return Finding::new(
            Health::Ok,
            format!("`codex login status`: {}", first.unwrap_or("logged in")),
        );
    }
    for var in ["CODEX_API_KEY", "OPENAI_API_KEY"] {
        if env_set(var) {
            return Finding::new(Health::Ok, format!("{var} is set"));
        }
    }
    // A custom model provider that takes its key from the environment.
    if let Some(home) = codex_home()
        && let Ok(text) = std::fs::read_to_string(home.join("config.toml"))
        && let Ok(doc) = text.parse::<toml::Table>()
        && let Some(provider) = doc.get("model_provider").and_then(|v| v.as_str())
    {
        let key = doc
            .get("model_providers")
            .and_then(|p| p.get(provider))
            .and_then(|p| p.get("env_key"))
            .and_then(|k| k.as_str());
        match key {
            Some(k) if env_set(k) => {
                return Finding::new(
                    Health::Ok,
                    format!("model provider `{provider}` takes its key from ${k}, which is set"),
                );
            }
            None => {
                return Finding::new(
                    Health::Ok,
                    format!("model provider `{provider}` needs no key"),
                );
            }
            Some(_) => {}
        }
    }
    let why = match (&s.spawn_error, s.timed_out, first) {
        (Some(e), _, _) => format!("could not run `codex login status`: {e}"),
        (_, true, _) => format!(
            "`codex login status` did not finish within {}s",
            COMMAND_TIMEOUT.as_secs()
        ),
        (_, _, Some(line)) => format!("`codex login status`: {}", crate::text::one_line(line, 200)),
        (_, _, None) => "`codex login status` says nothing".into(),
    };
    Finding::new(Health::Fail, format!("not logged in ({why})"))
        .fix("run `codex login` (or set OPENAI_API_KEY where zwarm runs; Codex as a host passes only the variables in its server entry's env_vars)")
}

pub(super) fn sandbox(program: &Path, sandbox: &str) -> Finding {
    if sandbox == "danger-full-access" {
        return Finding::new(
            Health::Warn,
            "codex.sandbox is danger-full-access: commands run without a sandbox",
        )
        .fix("use it only inside a disposable container or VM");
    }
    let Ok(dir) = tempfile::Builder::new().prefix("zwarm-doctor-").tempdir() else {
        return Finding::new(
            Health::Warn,
            "could not make a temporary directory to probe it",
        );
    };
    let r = run_with_timeout(
        program,
        &[
            "sandbox",
            "-P",
            ":workspace",
            "-C",
            &dir.path().display().to_string(),
            "--",
            "sh",
            "-c",
            "echo ok > probe && cat probe",
        ],
        Some(dir.path()),
        COMMAND_TIMEOUT,
    );
    if r.ok() && r.stdout.contains("ok") {
        let what = if sandbox == "read-only" {
            "turns run read-only: commands may read the project, not change it"
        } else {
            "turns may change files in their working directory only"
        };
        return Finding::new(
            Health::Ok,
            format!(
                "{sandbox}: codex's sandbox works on this machine (a probe command ran inside it); {what}"
            ),
        );
    }
    let said = format!("{}{}", r.stdout, r.stderr);
    if [
        "unexpected argument",
        "required argument",
        "unrecognized",
        "Usage:",
    ]
    .iter()
    .any(|p| said.contains(p))
    {
        return Finding::new(
            Health::Warn,
            "could not probe the sandbox with this codex version (`codex sandbox` takes other arguments)",
        );
    }
    Finding::new(
        Health::Fail,
        format!("a command in codex's {sandbox} sandbox failed ({})", r.why()),
    )
    .fix("codex's Linux sandbox needs landlock/seccomp and user namespaces; in a container that blocks them, run zwarm with codex.sandbox = \"danger-full-access\" in a trusted config, inside the container only")
}
