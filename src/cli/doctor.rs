//! `zwarm doctor`: is this machine ready to run zwarm's executors, and if not, what to do.
//!
//! For each executor: found (where), its version against the range zwarm's tests cover
//! ([`TESTED`]), the flags zwarm passes still listed in its `--help`, a login or API key, and
//! a sandbox that works. Then containment, the state dir, and the config layers (with keys
//! ignored). Every external command runs with a timeout. Exit 1 when a check fails; warnings
//! (an untested version, process-group containment, an ignored key) do not fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::StateArgs;
use crate::config::Config;
use crate::executor::{self, Adapter, ExecutorError, TurnPlan};
use crate::store::readonly::ReadOnlyStore;

/// The executor versions zwarm's tests cover, in one place: `(cli, lowest, highest)`; `x` in
/// the highest matches any number.
pub const TESTED: &[(&str, &str, &str)] = &[
    ("codex", "0.169.0", "0.171.x"),
    ("claude", "2.1.197", "2.1.332"),
];

/// Flags zwarm passes to `codex exec` (see `executor::codex`).
pub const CODEX_FLAGS: &[&str] = &["--json", "-C", "-s", "--skip-git-repo-check", "-o"];
/// Flags zwarm passes to `claude` (see `executor::claude`).
pub const CLAUDE_FLAGS: &[&str] = &[
    "-p",
    "--output-format",
    "--verbose",
    "--permission-mode",
    "--resume",
];

/// How long one external command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub group: String,
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(group: &str, name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        group: group.into(),
        name: name.into(),
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

pub fn main(a: DoctorArgs) -> anyhow::Result<i32> {
    let checks = run_checks(&a.state);
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    if a.json {
        let v = json!({
            "ok": failed == 0,
            "zwarm_version": env!("CARGO_PKG_VERSION"),
            "failed": failed,
            "warnings": warned,
            "checks": checks,
        });
        super::out(&format!("{v}\n"))?;
    } else {
        super::out(&render(&checks))?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The checks as text: one line each, grouped, with the fix under a failure or warning.
pub fn render(checks: &[Check]) -> String {
    let mut o = format!("zwarm doctor (zwarm {})\n", env!("CARGO_PKG_VERSION"));
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut group = "";
    for c in checks {
        if c.group != group {
            group = &c.group;
            o.push_str(&format!("\n{group}\n"));
        }
        o.push_str(&format!(
            "  {} {:<width$}  {}\n",
            c.status.mark(),
            c.name,
            c.detail
        ));
        if let Some(f) = &c.fix {
            o.push_str(&format!("      fix: {f}\n"));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    o.push('\n');
    o.push_str(&match (failed, warned) {
        (0, 0) => "All checks passed.\n".to_string(),
        (0, w) => format!("No check failed ({w} warning(s)).\n"),
        (f, w) => format!("{f} check(s) failed, {w} warning(s).\n"),
    });
    o
}

/// Every check, in display order.
pub fn run_checks(state: &StateArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let loaded = state.sources().and_then(|src| {
        let cfg = crate::config::load(&src)?;
        Ok((src, cfg))
    });
    let (sources, cfg) = match loaded {
        Ok((s, c)) => (Some(s), Some(c)),
        Err(e) => {
            out.push(
                check("config", "config", Status::Fail, format!("{e:#}"))
                    .fix("correct the key or file named above; the executors are checked with the built-in defaults"),
            );
            (None, None)
        }
    };
    let base = cfg.clone().unwrap_or_else(|| Config {
        project_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        ..Config::default()
    });
    // The two executors in parallel (each runs a few commands with timeouts).
    let (codex, claude) = std::thread::scope(|s| {
        let c1 = s.spawn(|| executor_checks(Adapter::Codex, &base));
        let c2 = s.spawn(|| executor_checks(Adapter::Claude, &base));
        (c1.join().unwrap_or_default(), c2.join().unwrap_or_default())
    });
    let mut all = codex;
    all.extend(claude);
    all.extend(containment_checks(&base));
    if let Some(cfg) = &cfg {
        all.extend(state_checks(&cfg.state_dir));
        all.extend(config_checks(cfg, sources.as_ref()));
    }
    all.extend(out);
    all
}

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
        let tail: Vec<&str> = text.trim().lines().rev().take(3).collect();
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

/// `major.minor.patch` in a version text.
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let re = regex::Regex::new(r"(\d+)\.(\d+)\.(\d+)").ok()?;
    let c = re.captures(text)?;
    let n = |i: usize| c.get(i).and_then(|m| m.as_str().parse().ok());
    Some((n(1)?, n(2)?, n(3)?))
}

/// Whether `v` is inside `[low, high]`, `x` in `high` matching any number.
pub fn in_range(v: (u64, u64, u64), low: &str, high: &str) -> bool {
    let Some(lo) = parse_version(low) else {
        return false;
    };
    let hi: Vec<Option<u64>> = high.split('.').map(|p| p.parse().ok()).collect();
    let bound = |i: usize| hi.get(i).copied().flatten().unwrap_or(u64::MAX);
    v >= lo && v <= (bound(0), bound(1), bound(2))
}

/// Whether a help text lists `flag` as an option (`-C, --cd`, `--json`, `-o, --output…`).
pub fn help_has_flag(help: &str, flag: &str) -> bool {
    let pat = format!(r"(^|[\s,\[(]){}([\s,=<\[)]|$)", regex::escape(flag));
    regex::Regex::new(&pat)
        .map(|re| help.lines().any(|l| re.is_match(l)))
        .unwrap_or(false)
}

fn tested(cli: &str) -> (&'static str, &'static str) {
    TESTED
        .iter()
        .find(|(c, _, _)| *c == cli)
        .map(|(_, lo, hi)| (*lo, *hi))
        .unwrap_or(("?", "?"))
}

fn package(adapter: Adapter) -> &'static str {
    match adapter {
        Adapter::Codex => "@openai/codex",
        Adapter::Claude => "@anthropic-ai/claude-code",
    }
}

/// The checks of one executor: found, version, flags, auth, sandbox.
pub fn executor_checks(adapter: Adapter, cfg: &Config) -> Vec<Check> {
    let cli = adapter.as_str();
    let g = "executors";
    let mut out = Vec::new();
    let plan = TurnPlan {
        working_dir: cfg.project_dir.clone(),
        prompt: "doctor".into(),
        resume_id: None,
    };
    let built = executor::build_process(adapter, cfg, &plan, None, Path::new("/dev/null"));
    // A setting zwarm refuses (a bad sandbox or permission mode) is reported under
    // "sandbox"; the binary is still located with the defaults.
    let (program, misconfigured) = match built {
        Ok(l) => (l.spec.program.clone(), None),
        Err(ExecutorError::Misconfigured(why)) => {
            let mut d = cfg.clone();
            d.codex.sandbox = crate::config::SANDBOX_MODE.default.into();
            d.claude.permission_mode = crate::config::PERMISSION_MODE.default.into();
            match executor::build_process(adapter, &d, &plan, None, Path::new("/dev/null")) {
                Ok(l) => (l.spec.program.clone(), Some(why)),
                Err(e) => {
                    out.push(check(
                        g,
                        &format!("{cli} found"),
                        Status::Fail,
                        e.to_string(),
                    ));
                    return out;
                }
            }
        }
        Err(e) => {
            out.push(
                check(g, &format!("{cli} found"), Status::Fail, e.to_string()).fix(format!(
                    "npm install -g {}, or set {}.binary in your user config",
                    package(adapter),
                    cli
                )),
            );
            return out;
        }
    };
    let on_path = which::which(cli).ok();
    let where_ = match &on_path {
        Some(p) if p != &program && std::fs::canonicalize(p).ok() != Some(program.clone()) => {
            format!(
                "{} (the native binary of {})",
                program.display(),
                p.display()
            )
        }
        _ => program.display().to_string(),
    };
    out.push(check(g, &format!("{cli} found"), Status::Ok, where_));

    // Version.
    let (lo, hi) = tested(cli);
    let v = run_with_timeout(&program, &["--version"], None, COMMAND_TIMEOUT);
    let version = parse_version(&v.stdout);
    out.push(match (v.ok(), version) {
        (true, Some(ver)) if in_range(ver, lo, hi) => check(
            g,
            &format!("{cli} version"),
            Status::Ok,
            format!("{}.{}.{} (tested: {lo} to {hi})", ver.0, ver.1, ver.2),
        ),
        (true, Some(ver)) => check(
            g,
            &format!("{cli} version"),
            Status::Warn,
            format!(
                "{}.{}.{} is outside the versions zwarm's tests cover ({lo} to {hi}); it may work",
                ver.0, ver.1, ver.2
            ),
        )
        .fix(format!(
            "npm install -g {}@{lo} for a tested version",
            package(adapter)
        )),
        (true, None) => check(
            g,
            &format!("{cli} version"),
            Status::Warn,
            format!(
                "`{cli} --version` printed no version: {}",
                crate::text::one_line(&v.stdout, 120)
            ),
        ),
        (false, _) => check(
            g,
            &format!("{cli} version"),
            Status::Fail,
            format!("`{} --version` failed ({})", program.display(), v.why()),
        )
        .fix(format!(
            "reinstall it: npm install -g {}@{lo}",
            package(adapter)
        )),
    });

    // Flags zwarm passes.
    let (help_args, flags, what): (&[&str], &[&str], String) = match adapter {
        Adapter::Codex => (
            &["exec", "--help"],
            CODEX_FLAGS,
            format!("{cli} exec --help"),
        ),
        Adapter::Claude => (&["--help"], CLAUDE_FLAGS, format!("{cli} --help")),
    };
    let h = run_with_timeout(&program, help_args, None, COMMAND_TIMEOUT);
    let help = format!("{}\n{}", h.stdout, h.stderr);
    let missing: Vec<&str> = flags
        .iter()
        .copied()
        .filter(|f| !help_has_flag(&help, f))
        .collect();
    out.push(if !h.ok() && h.stdout.trim().is_empty() {
        check(
            g,
            &format!("{cli} flags"),
            Status::Fail,
            format!("`{what}` failed ({})", h.why()),
        )
        .fix(format!(
            "reinstall it: npm install -g {}@{lo}",
            package(adapter)
        ))
    } else if missing.is_empty() {
        check(
            g,
            &format!("{cli} flags"),
            Status::Ok,
            format!("`{what}` lists {}", flags.join(" ")),
        )
    } else {
        check(
            g,
            &format!("{cli} flags"),
            Status::Fail,
            format!(
                "`{what}` no longer lists {}: zwarm's command line will not work with this version",
                missing.join(" ")
            ),
        )
        .fix(format!(
            "install a tested version: npm install -g {}@{lo}",
            package(adapter)
        ))
    });

    // Authentication.
    out.push(match adapter {
        Adapter::Codex => codex_auth(&program),
        Adapter::Claude => claude_auth(),
    });

    // Sandbox.
    out.push(match (adapter, misconfigured) {
        (_, Some(why)) => check(g, &format!("{cli} sandbox"), Status::Fail, why),
        (Adapter::Codex, None) => codex_sandbox(&program, &cfg.codex.sandbox),
        (Adapter::Claude, None) => {
            let mode = cfg.claude.permission_mode.as_str();
            if mode == "bypassPermissions" {
                check(g, "claude sandbox", Status::Warn, "permission mode bypassPermissions: claude runs every tool without asking, and its Bash tool has no OS sandbox")
                    .fix("use it only inside a disposable container or VM")
            } else {
                check(
                    g,
                    "claude sandbox",
                    Status::Ok,
                    format!("permission mode {mode} (claude's Bash tool has no OS sandbox; its permission checks apply)"),
                )
            }
        }
    });
    out
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn codex_home() -> Option<PathBuf> {
    std::env::var_os("CODEX_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".codex")))
}

fn codex_auth(program: &Path) -> Check {
    let g = "executors";
    let s = run_with_timeout(program, &["login", "status"], None, COMMAND_TIMEOUT);
    if s.ok() {
        let said = format!("{} {}", s.stdout, s.stderr);
        let line = said
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("WARNING"))
            .unwrap_or("logged in");
        return check(
            g,
            "codex auth",
            Status::Ok,
            format!("`codex login status`: {line}"),
        );
    }
    for var in ["CODEX_API_KEY", "OPENAI_API_KEY"] {
        if env_set(var) {
            return check(g, "codex auth", Status::Ok, format!("{var} is set"));
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
                return check(
                    g,
                    "codex auth",
                    Status::Ok,
                    format!("model provider `{provider}` takes its key from ${k}, which is set"),
                );
            }
            None => {
                return check(
                    g,
                    "codex auth",
                    Status::Ok,
                    format!("model provider `{provider}` needs no key"),
                );
            }
            Some(_) => {}
        }
    }
    check(
        g,
        "codex auth",
        Status::Fail,
        format!("not logged in ({})", s.why()),
    )
    .fix("run `codex login` (or set OPENAI_API_KEY where zwarm runs; Codex as a host passes only the variables in its server entry's env_vars)")
}

fn claude_auth() -> Check {
    let g = "executors";
    for var in [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CLAUDE_CODE_USE_BEDROCK",
        "CLAUDE_CODE_USE_VERTEX",
    ] {
        if env_set(var) {
            return check(g, "claude auth", Status::Ok, format!("{var} is set"));
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let config_dir = std::env::var_os("CLAUDE_CONFIG_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let dir = config_dir
        .clone()
        .or_else(|| home.as_ref().map(|h| h.join(".claude")));
    if let Some(d) = &dir
        && d.join(".credentials.json").is_file()
    {
        return check(
            g,
            "claude auth",
            Status::Ok,
            format!("logged in ({})", d.join(".credentials.json").display()),
        );
    }
    let state = match (&config_dir, &home) {
        (Some(d), _) => Some(d.join(".claude.json")),
        (None, Some(h)) => Some(h.join(".claude.json")),
        _ => None,
    };
    if let Some(p) = &state
        && let Ok(text) = std::fs::read_to_string(p)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && (v.get("oauthAccount").is_some_and(|a| !a.is_null())
            || v.get("primaryApiKey").is_some_and(|a| !a.is_null()))
    {
        return check(
            g,
            "claude auth",
            Status::Ok,
            format!("logged in ({})", p.display()),
        );
    }
    if cfg!(target_os = "macos") {
        return check(
            g,
            "claude auth",
            Status::Warn,
            "no API key in the environment; a login would be in the macOS keychain, which zwarm does not read",
        )
        .fix("if `claude -p hi` asks you to log in, run `claude` and /login");
    }
    check(
        g,
        "claude auth",
        Status::Fail,
        "no ANTHROPIC_API_KEY and no login in claude's config dir",
    )
    .fix("run `claude` once and /login, or set ANTHROPIC_API_KEY where zwarm runs")
}

fn codex_sandbox(program: &Path, sandbox: &str) -> Check {
    let g = "executors";
    if sandbox == "danger-full-access" {
        return check(
            g,
            "codex sandbox",
            Status::Warn,
            "codex.sandbox is danger-full-access: commands run without a sandbox",
        )
        .fix("use it only inside a disposable container or VM");
    }
    let Ok(dir) = tempfile::Builder::new().prefix("zwarm-doctor-").tempdir() else {
        return check(
            g,
            "codex sandbox",
            Status::Warn,
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
        return check(
            g,
            "codex sandbox",
            Status::Ok,
            format!("{sandbox}: a sandboxed command ran and wrote in its directory"),
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
        return check(
            g,
            "codex sandbox",
            Status::Warn,
            "could not probe the sandbox with this codex version (`codex sandbox` takes other arguments)",
        );
    }
    check(
        g,
        "codex sandbox",
        Status::Fail,
        format!("a command in codex's {sandbox} sandbox failed ({})", r.why()),
    )
    .fix("codex's Linux sandbox needs landlock/seccomp and user namespaces; in a container that blocks them, run zwarm with codex.sandbox = \"danger-full-access\" in a trusted config, inside the container only")
}

fn containment_checks(cfg: &Config) -> Vec<Check> {
    let mode = crate::process::configure_containment(super::containment_pref(cfg));
    let detail = crate::process::containment_detail();
    vec![if mode == "cgroup" {
        check("containment", "containment", Status::Ok, detail)
    } else {
        check("containment", "containment", Status::Warn, detail).fix(
            "for cgroup containment run zwarm as root or inside a delegated cgroup v2 subtree (e.g. a systemd unit with Delegate=yes); process groups still stop every turn's processes except ones that leave the group and clear their environment",
        )
    }]
}

fn state_checks(dir: &Path) -> Vec<Check> {
    use std::os::unix::fs::PermissionsExt;
    let g = "state";
    let mut out = Vec::new();
    match std::fs::metadata(dir) {
        Err(_) => {
            let parent = dir.ancestors().skip(1).find(|p| p.exists());
            let writable = parent.is_some_and(|p| {
                tempfile::Builder::new()
                    .prefix(".zwarm-doctor-")
                    .tempfile_in(p)
                    .is_ok()
            });
            out.push(if writable {
                check(
                    g,
                    "state dir",
                    Status::Ok,
                    format!("{} (created 0700 on first start)", dir.display()),
                )
            } else {
                check(
                    g,
                    "state dir",
                    Status::Fail,
                    format!("{} does not exist and cannot be created", dir.display()),
                )
                .fix("create it (mkdir -m 700 -p DIR) or choose another with --state-dir / state_dir")
            });
            return out;
        }
        Ok(m) if !m.is_dir() => {
            out.push(
                check(
                    g,
                    "state dir",
                    Status::Fail,
                    format!("{} is not a directory", dir.display()),
                )
                .fix("choose another with --state-dir / state_dir"),
            );
            return out;
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            out.push(if mode & 0o077 == 0 {
                check(
                    g,
                    "state dir",
                    Status::Ok,
                    format!("{} (private, {mode:o})", dir.display()),
                )
            } else {
                check(
                    g,
                    "state dir",
                    Status::Fail,
                    format!(
                        "{} has mode {mode:o}: other users can read its transcripts",
                        dir.display()
                    ),
                )
                .fix(format!("chmod 700 {}", dir.display()))
            });
        }
    }
    let probe = tempfile::Builder::new()
        .prefix(".zwarm-doctor-")
        .tempfile_in(dir);
    out.push(match probe {
        Ok(_) => check(
            g,
            "state writable",
            Status::Ok,
            "a file can be created there",
        ),
        Err(e) => check(
            g,
            "state writable",
            Status::Fail,
            format!("cannot create a file in {}: {e}", dir.display()),
        )
        .fix("fix its owner and permissions, or choose another with --state-dir"),
    });
    if ReadOnlyStore::exists(dir) {
        let r = ReadOnlyStore::open(dir).and_then(|s| {
            let (_, total) = s.page(None, 1, 0)?;
            let active = s.active()?.len();
            Ok((total, active))
        });
        out.push(match r {
            Ok((total, active)) => check(
                g,
                "state database",
                Status::Ok,
                format!("{total} session(s), {active} running or queued"),
            ),
            Err(e) => check(g, "state database", Status::Fail, e.to_string())
                .fix("check the disk and the file's permissions; a server logs the same error when it starts"),
        });
    } else {
        out.push(check(
            g,
            "state database",
            Status::Ok,
            "none yet (made by the first server or `zwarm run`)",
        ));
    }
    out
}

fn config_checks(cfg: &Config, sources: Option<&crate::config::Sources>) -> Vec<Check> {
    let g = "config";
    let mut out = Vec::new();
    let mut layers = vec!["defaults".to_string()];
    if let Some(src) = sources {
        if let Some(user) = src.user_config_file().filter(|p| p.is_file()) {
            layers.push(format!("user file {}", user.display()));
        }
        let project = crate::config::project_config_file(&cfg.project_dir);
        if project.is_file() {
            layers.push(format!("project file {} (untrusted)", project.display()));
        }
        if let Some(f) = &src.config_file {
            layers.push(format!("--config {}", f.display()));
        }
        let vars: Vec<&str> = src
            .env
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("ZWARM_") && *k != "ZWARM_LOG")
            .collect();
        if !vars.is_empty() {
            layers.push(format!("environment {}", vars.join(" ")));
        }
        if !src.sets.is_empty() {
            layers.push(format!("--set {}", src.sets.join(" --set ")));
        }
    }
    out.push(check(g, "config layers", Status::Ok, layers.join(" < ")));
    for i in &cfg.ignored {
        out.push(
            check(
                g,
                "ignored key",
                Status::Warn,
                format!("`{}` in {}: {}", i.key, i.file.display(), i.reason),
            )
            .fix("move it to your user config file, --config FILE, a ZWARM_* variable or --set"),
        );
    }
    for w in &cfg.warnings {
        out.push(check(g, "warning", Status::Warn, w.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn versions_and_ranges() {
        assert_eq!(parse_version("codex-cli 0.169.0"), Some((0, 169, 0)));
        assert_eq!(parse_version("2.1.197 (Claude Code)"), Some((2, 1, 197)));
        assert_eq!(parse_version("nothing"), None);
        assert!(in_range((0, 169, 0), "0.169.0", "0.171.x"));
        assert!(in_range((0, 171, 9), "0.169.0", "0.171.x"));
        assert!(!in_range((0, 172, 0), "0.169.0", "0.171.x"));
        assert!(!in_range((0, 168, 9), "0.169.0", "0.171.x"));
        assert!(in_range((2, 1, 332), "2.1.197", "2.1.332"));
        assert!(!in_range((2, 1, 333), "2.1.197", "2.1.332"));
    }

    #[test]
    fn flags_are_found_as_options_only() {
        let help = "Options:\n  -C, --cd <DIR>\n      --json\n          Print events\n  -o, --output-last-message <FILE>\n      --json-schema <F>\n  -p, --print   Print response (via -p, or when --output-format=stream-json)";
        for f in ["-C", "--json", "-o", "-p", "--output-format"] {
            assert!(help_has_flag(help, f), "{f}");
        }
        assert!(!help_has_flag("      --json-schema <F>", "--json"));
        assert!(!help_has_flag("  -s, --sandbox", "--skip-git-repo-check"));
        assert!(help_has_flag("  -s, --sandbox <MODE>", "-s"));
    }

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
