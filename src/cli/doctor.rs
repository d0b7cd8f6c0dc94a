//! `zwarm doctor`: is this machine ready to run zwarm's executors, and if not, what to do.
//!
//! For each executor: found (where), its version against the range zwarm's tests cover
//! ([`TESTED`]), the flags zwarm passes still listed in its `--help`, a login or API key, and
//! a sandbox that works. Then containment, the state dir, and the config layers (with keys
//! ignored). Every external command runs with a timeout. Exit 1 when a check fails; warnings
//! (an untested version, process-group containment, an ignored key) do not fail.

mod runner;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use super::StateArgs;
use crate::config::Config;
use crate::executor::{self, Executor, ExecutorError, Finding, Health, LaunchContext, TurnPlan};
use crate::store::readonly::ReadOnlyStore;

pub use crate::executor::probe::{COMMAND_TIMEOUT, Output, run_with_timeout};

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
        // A fix the detail already says is not repeated.
        if let Some(f) = &c.fix
            && !c.detail.contains(f.as_str())
        {
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
        crate::executor::check_config(&cfg)?;
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
    // The executors in parallel (each runs a few commands with timeouts).
    let mut per: Vec<(&'static str, Vec<Check>)> = std::thread::scope(|s| {
        let handles: Vec<_> = executor::REGISTRY
            .iter()
            .map(|ex| (ex.name(), s.spawn(|| executor_checks(*ex, &base))))
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| (n, h.join().unwrap_or_default()))
            .collect()
    });
    soften_missing(&mut per);
    let mut all: Vec<Check> = per.into_iter().flat_map(|(_, c)| c).collect();
    all.extend(containment_checks(&base));
    if base.runner.kind == crate::runner::config::RunnerKind::Container {
        runner::container_checks(&base, &mut all);
    }
    if let Some(cfg) = &cfg {
        all.extend(state_checks(&cfg.state_dir));
        all.extend(config_checks(cfg, sources.as_ref()));
    }
    all.extend(out);
    all
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

fn from_finding(name: String, f: Finding) -> Check {
    let status = match f.health {
        Health::Ok => Status::Ok,
        Health::Warn => Status::Warn,
        Health::Fail => Status::Fail,
    };
    Check {
        group: "executors".into(),
        name,
        status,
        detail: f.detail,
        fix: f.fix,
    }
}

/// The checks of one executor: found, version, flags, auth, sandbox, and host configurations
/// that register zwarm (which its turns are kept from loading).
pub fn executor_checks(ex: &dyn Executor, cfg: &Config) -> Vec<Check> {
    let cli = ex.name();
    let package = ex.package();
    let g = "executors";
    let mut out = Vec::new();
    let plan = TurnPlan {
        working_dir: cfg.project_dir.clone(),
        prompt: "doctor".into(),
        resume_id: None,
    };
    let ctx = LaunchContext {
        scratch: PathBuf::from("/dev/null"),
        ..LaunchContext::default()
    };
    let built = executor::build_launch(ex.adapter(), cfg, &plan, &ctx);
    // A setting zwarm refuses (a bad sandbox or permission mode) is reported under
    // "sandbox"; the binary is still located on its own.
    let (program, misconfigured) = match built {
        Ok(l) => (l.program, None),
        Err(ExecutorError::Misconfigured(why)) => match ex.resolve(cfg) {
            Ok(p) => (p, Some(why)),
            Err(e) => {
                out.push(check(
                    g,
                    &format!("{cli} found"),
                    Status::Fail,
                    e.to_string(),
                ));
                return out;
            }
        },
        // The error says how to install it or point zwarm at it: no separate fix.
        Err(e) => {
            out.push(check(
                g,
                &format!("{cli} found"),
                Status::Fail,
                e.to_string(),
            ));
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
    let spec = ex.doctor_spec();
    let (lo, hi) = spec.tested;
    // A declared executor (`[executors.NAME]`) has no tested range and no npm package.
    let declared = (lo, hi) == ("0.0.0", "x");
    let reinstall = |what: &str| {
        if declared {
            format!("check the program in `executors.{cli}.command`")
        } else {
            format!("{what}: npm install -g {package}@{lo}")
        }
    };
    let v = run_with_timeout(&program, &["--version"], None, COMMAND_TIMEOUT);
    let version = parse_version(&v.stdout);
    out.push(match (v.ok(), version) {
        (true, Some(ver)) if declared => check(
            g,
            &format!("{cli} version"),
            Status::Ok,
            format!(
                "{}.{}.{} (declared in the configuration: no tested range)",
                ver.0, ver.1, ver.2
            ),
        ),
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
        .fix(reinstall("for a tested version")),
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
        .fix(reinstall("reinstall it")),
    });

    // Flags zwarm passes.
    let what = format!("{cli} {}", spec.help_args.join(" "));
    let h = run_with_timeout(&program, spec.help_args, None, COMMAND_TIMEOUT);
    let help = format!("{}\n{}", h.stdout, h.stderr);
    let missing: Vec<&str> = spec
        .flags
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
        .fix(reinstall("reinstall it"))
    } else if missing.is_empty() {
        check(
            g,
            &format!("{cli} flags"),
            Status::Ok,
            format!("`{what}` lists {}", spec.flags.join(" ")),
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
        .fix(reinstall("install a tested version"))
    });

    out.push(from_finding(
        format!("{cli} auth"),
        ex.doctor_auth(&program),
    ));
    out.push(match misconfigured {
        Some(why) => check(g, &format!("{cli} sandbox"), Status::Fail, why),
        None => from_finding(format!("{cli} sandbox"), ex.doctor_sandbox(&program, cfg)),
    });

    // Host configurations that register zwarm where this CLI reads them: without zwarm's
    // exclusion every turn would load zwarm. zwarm's turns exclude it, so this is said, not
    // failed.
    let found = ex.host_registrations();
    if !found.is_empty() {
        out.push(check(
            g,
            &format!("{cli} host config"),
            Status::Ok,
            format!(
                "zwarm is registered for {cli} in {}; zwarm's turns do not load it (an executor never gets zwarm's tools), but a {cli} you start yourself does",
                found.join("; ")
            ),
        ));
    }
    out
}

/// One executor missing is a warning, not a failure, as long as another one works: a codex-only
/// user has a working zwarm.
fn soften_missing(per_executor: &mut [(&'static str, Vec<Check>)]) {
    let works =
        |checks: &Vec<Check>| !checks.is_empty() && checks.iter().all(|c| c.status != Status::Fail);
    let working: Vec<&str> = per_executor
        .iter()
        .filter(|(_, c)| works(c))
        .map(|(n, _)| *n)
        .collect();
    if working.is_empty() {
        return;
    }
    for (name, checks) in per_executor.iter_mut() {
        if let [only] = checks.as_mut_slice()
            && only.name == format!("{name} found")
            && only.status == Status::Fail
        {
            only.status = Status::Warn;
            only.detail = format!(
                "{} (not needed: {} works; install it only to use it)",
                only.detail,
                working.join(" and ")
            );
        }
    }
}

fn containment_checks(cfg: &Config) -> Vec<Check> {
    // Probing needs no reaper: no turn runs here.
    let runner = crate::runner::local::LocalRunner::with(crate::process::Containment::new(
        super::containment_pref(cfg),
    ));
    let mode = runner.mode_name();
    let detail = runner.detail();
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

    fn c(name: &str, status: Status) -> Check {
        check("executors", name, status, format!("{name} detail"))
    }

    #[test]
    fn one_missing_executor_is_a_warning_while_another_works() {
        let mut per = vec![
            (
                "codex",
                vec![c("codex found", Status::Ok), c("codex auth", Status::Ok)],
            ),
            ("claude", vec![c("claude found", Status::Fail)]),
        ];
        soften_missing(&mut per);
        assert_eq!(per[1].1[0].status, Status::Warn);
        assert!(
            per[1].1[0].detail.contains("codex works"),
            "{:?}",
            per[1].1[0]
        );
        // Neither works: both stay failures.
        let mut per = vec![
            ("codex", vec![c("codex found", Status::Fail)]),
            ("claude", vec![c("claude found", Status::Fail)]),
        ];
        soften_missing(&mut per);
        assert!(per.iter().all(|(_, c)| c[0].status == Status::Fail));
        // A found executor that fails another check is not "missing": it stays a failure.
        let mut per = vec![
            (
                "codex",
                vec![c("codex found", Status::Ok), c("codex flags", Status::Fail)],
            ),
            ("claude", vec![c("claude found", Status::Fail)]),
        ];
        soften_missing(&mut per);
        assert_eq!(per[1].1[0].status, Status::Fail);
        assert_eq!(per[0].1[1].status, Status::Fail);
    }

    #[test]
    fn a_fix_the_detail_already_says_is_not_repeated() {
        let said = check(
            "g",
            "x found",
            Status::Fail,
            "not found. Install it with `npm i x`",
        )
        .fix("npm i x");
        let new = check("g", "y auth", Status::Fail, "not logged in").fix("run `y login`");
        let out = render(&[said, new]);
        assert!(!out.contains("fix: npm i x"), "{out}");
        assert!(out.contains("fix: run `y login`"), "{out}");
    }
}
