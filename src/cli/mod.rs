//! zwarm for people: terminal commands to see and steer sessions.
//!
//! Every command finds the state the way `zwarm serve` started in the current directory would
//! (the same config layers, [`crate::config::load`]), or uses `--state-dir`. Commands that only
//! look (`ps`, `show`, `logs`, `diff`, `top`, `doctor`) open the database read-only
//! ([`crate::store::readonly`]): no lock, no writer, short reads, so they work while servers
//! run on that state and never hold them up (`prune` reads the same way and removes only
//! files and branches of ended sessions). Commands that act (`run`, `end`) run the session
//! engine in-process, like a server without MCP: what they do is recorded like any other
//! session, and a session a live server owns is left to that server.
//!
//! One file per command; the shared pieces (config loading, formatting) are here.

pub mod activity;
pub mod approve;
pub mod doctor;
pub mod end;
pub mod image;
pub mod logs;
pub mod prune;
pub mod ps;
pub mod run;
pub mod setup;
pub mod show;
pub mod top;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::config::{Config, Sources};
use crate::store::readonly::ReadOnlyStore;

/// The terminal commands (flattened into the binary's subcommands next to `serve`).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Delegate one task from the terminal and wait for the answer (stdout); progress goes
    /// to stderr. The session is ended when the turn is over unless --keep (a worktree
    /// session stays open for review). Exit 0 when the turn finished, 1 when it failed.
    Run(run::RunArgs),
    /// List sessions: id prefix, status, adapter, age (since created), turns, tokens, cost,
    /// branch, task.
    Ps(ps::PsArgs),
    /// Show a session's transcript: each turn's prompt, commands (also those cut off), files,
    /// tool errors, answer, usage, watcher notes.
    Show(show::ShowArgs),
    /// Print the event log (of every server on the state dir, or one session) with what the
    /// executors did: commands and exit codes, file changes, messages, tool errors; -f follows.
    Logs(logs::LogsArgs),
    /// End a session with a verdict (a running turn is interrupted first).
    End(end::EndArgs),
    /// Answer the permission request an ACP agent's turn waits on (status needs_approval):
    /// allow it, or --deny.
    Approve(approve::ApproveArgs),
    /// Print a session's diff (sessions with their own worktree).
    Diff(end::DiffArgs),
    /// Remove ended sessions' turn logs and the branches of merged or discarded worktree
    /// sessions (--older-than D: only sessions ended longer ago); says what it removed.
    Prune(prune::PruneArgs),
    /// A live dashboard of running and recent sessions (q quits).
    Top(top::TopArgs),
    /// Check the executors, their versions, flags and logins, containment, the state dir
    /// and the config. Exit 1 when a check fails.
    Doctor(doctor::DoctorArgs),
    /// Add zwarm to a host's MCP configuration (claude-code, codex, claude-desktop).
    Setup(setup::SetupArgs),
    /// The executor image for the container runner (`zwarm image build`).
    Image(image::ImageArgs),
}

/// Where the state and config come from: the same options as `zwarm serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StateArgs {
    /// State directory. Default: the one `zwarm serve` started here would use
    /// ($XDG_STATE_HOME/zwarm/<project-slug>, else ~/.local/state/zwarm/<project-slug>).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A trusted TOML config file, layered over the user and project config files.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config key, e.g. --set codex.sandbox=read-only (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl StateArgs {
    /// The configuration `zwarm serve` would load here with these options.
    pub fn load(&self) -> anyhow::Result<Config> {
        let sources = self.sources()?;
        crate::config::load(&sources)
            .and_then(|c| crate::executor::check_config(&c).map(|()| c))
            .context("loading configuration")
    }

    pub fn sources(&self) -> anyhow::Result<Sources> {
        Sources::from_process_env(
            self.config.clone(),
            self.state_dir.clone(),
            self.sets.clone(),
        )
        .context("reading the current directory")
    }

    /// The same options as arguments, for a child `zwarm` (with the state dir resolved).
    pub fn to_args(&self, state_dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--state-dir".into(), state_dir.into()];
        if let Some(c) = &self.config {
            a.push("--config".into());
            a.push(c.into());
        }
        for s in &self.sets {
            a.push("--set".into());
            a.push(s.into());
        }
        a
    }
}

/// Run a terminal command; returns the process exit code. Errors are printed here.
pub fn main(cmd: Command) -> i32 {
    // Commands that print for pipes (`zwarm ps | head`) end quietly when the reader goes away.
    if matches!(
        cmd,
        Command::Ps(_)
            | Command::Show(_)
            | Command::Logs(_)
            | Command::Diff(_)
            | Command::Doctor(_)
    ) {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let r = match cmd {
        Command::Run(a) => run::main(a),
        Command::Ps(a) => ps::main(a),
        Command::Show(a) => show::main(a),
        Command::Logs(a) => logs::main(a),
        Command::End(a) => end::main(a),
        Command::Approve(a) => approve::main(a),
        Command::Diff(a) => end::diff_main(a),
        Command::Prune(a) => prune::main(a),
        Command::Top(a) => top::main(a),
        Command::Doctor(a) => doctor::main(a),
        Command::Setup(a) => setup::main(a),
        Command::Image(a) => image::main(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "zwarm: {e:#}");
            if crate::config::is_config_error(&e) {
                crate::config::EXIT_CONFIG
            } else {
                1
            }
        }
    }
}

/// Open the state dir read-only; a state dir no server has used yet is a clear error.
pub fn open_state(cfg: &Config) -> anyhow::Result<ReadOnlyStore> {
    if !ReadOnlyStore::exists(&cfg.state_dir) {
        anyhow::bail!(
            "no zwarm state in {} yet: no server has run for this project (start one from your agent, or `zwarm run TASK`), or pass --state-dir DIR",
            cfg.state_dir.display()
        );
    }
    ReadOnlyStore::open(&cfg.state_dir)
        .with_context(|| format!("opening the state in {}", cfg.state_dir.display()))
}

/// Start the session engine in this process (for `run` and `end`), with the same containment
/// as a server.
pub fn start_engine(
    rt: &tokio::runtime::Runtime,
    cfg: Config,
) -> anyhow::Result<crate::sessions::Manager> {
    crate::process::become_subreaper();
    rt.block_on(async {
        let runner = runner_for(&cfg).await?;
        start_manager(cfg, runner).await
    })
}

/// How long a start waits for a state database that another process holds locked: the
/// store's busy timeout.
pub const LOCKED_DB_WAIT: Duration = Duration::from_secs(10);

/// Start the session engine on `runner`. A state database locked by another process is
/// waited for (up to [`LOCKED_DB_WAIT`]; SQLite gives up at once in some lock states, e.g.
/// when another connection holds a write lock while this one switches the journal mode), then
/// is a clear error.
pub async fn start_manager(
    cfg: Config,
    runner: Arc<dyn crate::runner::Runner>,
) -> anyhow::Result<crate::sessions::Manager> {
    let project_dir = cfg.project_dir.clone();
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + LOCKED_DB_WAIT;
    let mut pause = Duration::from_millis(50);
    let mut said = false;
    loop {
        let e = match crate::sessions::Manager::start_with(
            cfg.clone(),
            project_dir.clone(),
            runner.clone(),
        )
        .await
        {
            Ok(m) => return Ok(m),
            Err(e) => e,
        };
        let Some(db) = locked_db(&e) else {
            return Err(anyhow::Error::new(e).context("opening the state directory"));
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            anyhow::bail!(
                "the state database {db} is locked by another process (waited {} s for it): another program holds a lock on it, e.g. a sqlite3 shell or a backup tool with an open transaction. Close that program, or pass --state-dir DIR for a separate state, and start zwarm again.",
                started.elapsed().as_secs()
            );
        }
        if !said {
            tracing::warn!(
                database = %db,
                "the state database is locked by another process; waiting up to {} s",
                LOCKED_DB_WAIT.as_secs()
            );
            said = true;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The database path, when `e` says the state database is locked by another connection.
fn locked_db(e: &crate::sessions::ManagerError) -> Option<String> {
    use crate::sessions::ManagerError;
    use crate::store::StoreError;
    let (ManagerError::StoreRead(StoreError::Db { path, err })
    | ManagerError::Store(StoreError::Db { path, err })) = e
    else {
        return None;
    };
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
    .then(|| path.clone())
}

/// The runner `[runner] kind` asks for, ready for turns; an error says why it cannot be used
/// and what to change.
pub async fn runner_for(cfg: &Config) -> anyhow::Result<Arc<dyn crate::runner::Runner>> {
    use crate::runner::config::RunnerKind;
    match cfg.runner.kind {
        RunnerKind::Local => {
            // Starting the reaper blocks for a moment; the containment is probed in the
            // background (see `local_runner`).
            let c = cfg.clone();
            let runner = tokio::task::spawn_blocking(move || local_runner(&c))
                .await
                .context("setting up executor containment")?;
            Ok(Arc::new(runner))
        }
        RunnerKind::Container => {
            let r = crate::container::from_config(&cfg.runner.container, &cfg.state_dir)
                .await
                .context("runner.kind is `container`")?;
            tracing::info!(image = %cfg.runner.container.image, "turns run in containers");
            Ok(r)
        }
        RunnerKind::Kubernetes => {
            let k = &cfg.runner.kubernetes;
            let r = crate::kube::from_config(k)
                .await
                .context("runner.kind is `kubernetes`")?;
            tracing::info!(namespace = %k.namespace, image = %k.image, "turns run as Kubernetes Jobs");
            Ok(r)
        }
    }
}

/// The local runner as the config asks for it, with a [`crate::process::Reaper`] (a helper
/// process that kills the running turns if this process dies). Blocking: probes the
/// containment mode and starts the helper. Without the helper (it cannot be started), turns
/// still get the parent-death signal; the reason is logged.
pub fn local_runner(cfg: &Config) -> crate::runner::local::LocalRunner {
    let containment = crate::process::Containment::new(containment_pref(cfg));
    match crate::process::Reaper::start() {
        Ok(r) => {
            tracing::debug!(pid = r.pid(), "reaper started");
            containment.set_reaper(Arc::new(r));
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot start the reaper: a turn's processes may outlive zwarm if it is killed"
        ),
    }
    // The probe moves a forked child into a new cgroup, and the kernel's first cgroup move in
    // a while waits for an RCU grace period (milliseconds): done on a thread of its own, it
    // does not delay the server's first reply. It holds the containment's state meanwhile,
    // so the first turn waits for its answer (or probes itself if it comes first).
    let c = containment.clone();
    let probe = move || {
        tracing::info!(containment = c.probe(), "executor containment");
    };
    if let Err(e) = std::thread::Builder::new()
        .name("zwarm-probe".into())
        .spawn(probe.clone())
    {
        tracing::debug!(error = %e, "no thread for the containment probe; probing now");
        probe();
    }
    crate::runner::local::LocalRunner::with(containment)
}

/// The containment the config asks for (as `zwarm serve` reads it).
pub fn containment_pref(cfg: &Config) -> crate::process::ContainmentPreference {
    use crate::process::ContainmentPreference;
    match (cfg.containment.as_str(), &cfg.cgroup_parent) {
        ("process-group", _) => ContainmentPreference::ProcessGroup,
        (_, Some(dir)) => ContainmentPreference::CgroupParent(dir.clone()),
        _ => ContainmentPreference::Auto,
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Parse an RFC 3339 time as zwarm stores them.
pub fn parse_time(ts: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(ts.trim()).ok()
}

/// Seconds from `ts` to `now` (0 when in the future or unreadable).
pub fn secs_since(ts: &str, now: SystemTime) -> Option<u64> {
    let t = parse_time(ts)?;
    Some(now.duration_since(t).unwrap_or(Duration::ZERO).as_secs())
}

/// A short duration: `42s`, `5m`, `3h`, `2d`.
pub fn fmt_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A short age: `42s`, `5m`, `3h`, `2d` (one unit).
pub fn fmt_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Tokens compactly: `950`, `12.3k`, `4.5M`.
pub fn fmt_tokens(n: u64) -> String {
    match n {
        n if n < 1000 => n.to_string(),
        n if n < 1_000_000 => format!("{:.1}k", n as f64 / 1000.0),
        n => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

/// A cost in USD, or `-` when the executor reported none.
pub fn fmt_cost(c: Option<f64>) -> String {
    match c {
        Some(c) if c >= 100.0 => format!("${c:.0}"),
        Some(c) if c >= 1.0 => format!("${c:.2}"),
        Some(c) => format!("${c:.4}"),
        None => "-".into(),
    }
}

/// The first 8 characters of a session id.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Local display of a stored time: `2026-12-01 07:16:22` (UTC, as stored).
pub fn fmt_time(ts: &str) -> String {
    let t = ts.trim();
    match (t.get(..10), t.get(11..19)) {
        (Some(d), Some(h)) if t.len() >= 19 => format!("{d} {h}"),
        _ => t.to_string(),
    }
}

/// Cut to `max` characters on one line.
pub fn one_line(s: &str, max: usize) -> String {
    crate::text::one_line(s, max)
}

/// Write to stdout; a closed pipe ends the command quietly.
pub fn out(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_short() {
        assert_eq!(fmt_duration(42), "42s");
        assert_eq!(fmt_duration(125), "2m05s");
        assert_eq!(fmt_duration(3 * 3600 + 60), "3h01m");
        assert_eq!(fmt_age(7200), "2h");
        assert_eq!(fmt_tokens(950), "950");
        assert_eq!(fmt_tokens(12_345), "12.3k");
        assert_eq!(fmt_tokens(4_500_000), "4.5M");
        assert_eq!(fmt_cost(None), "-");
        assert_eq!(fmt_cost(Some(0.0123)), "$0.0123");
        assert_eq!(fmt_cost(Some(2.5)), "$2.50");
        assert_eq!(short_id("0123456789"), "01234567");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(fmt_time("2026-12-01T07:16:22.392Z"), "2026-12-01 07:16:22");
        let now = parse_time("2026-12-01T07:16:22.392Z").unwrap();
        assert_eq!(secs_since("2026-12-01T07:15:22.392Z", now), Some(60));
        assert_eq!(secs_since("garbage", now), None);
    }
}
