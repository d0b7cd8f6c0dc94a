//! The `zwarm` binary: a thin runner around the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "zwarm",
    version,
    about = "MCP server that runs coding agents (codex, claude) for an orchestrating agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MCP server on stdio (stdout carries JSON-RPC only; logs go to stderr).
    ///
    /// The project is the top level of the git repository holding the current directory
    /// (else the current directory). Config layers, lowest first:
    ///   1. the user file: $XDG_CONFIG_HOME/zwarm/config.toml, else ~/.config/zwarm/config.toml
    ///   2. the project file .zwarm/config.toml, untrusted: it may not choose what runs or what
    ///      goes into an executor's command line or prompt, and may only tighten limits, modes
    ///      and watchers; what it may not set, unknown keys and bad values are ignored there
    ///      (with a warning)
    ///   3. --config FILE
    ///   4. ZWARM_<KEY> environment variables (e.g. ZWARM_CODEX_SANDBOX)
    ///   5. --set KEY=VALUE and --state-dir DIR
    ///
    /// Every key: docs/configuration.md. A configuration error exits with status 2.
    #[command(verbatim_doc_comment)]
    Serve {
        /// State directory. Default: $XDG_STATE_HOME/zwarm/<project-slug>, else
        /// ~/.local/state/zwarm/<project-slug>, outside the project. A config.toml in it is
        /// not read.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// A trusted TOML config file, layered over the user and project config files.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Override one config key, e.g. --set codex.sandbox=read-only (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// The terminal commands: run, ps, show, logs, end, diff, top, doctor, setup.
    #[command(flatten)]
    Cli(zwarm::cli::Command),
}

fn main() {
    // The helper that kills a dead server's turns (started by the server itself).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(zwarm::process::REAPER_ARG))
    {
        std::process::exit(zwarm::process::run_reaper());
    }
    let cli = Cli::parse();
    // Terminal commands log only warnings (their output is the point); `serve` installs its
    // own subscriber below (with the trace exporter when configured).
    if matches!(cli.command, Command::Cli(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("ZWARM_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    match cli.command {
        Command::Serve {
            state_dir,
            config,
            sets,
        } => {
            // Loading the config logs to stderr; the process-wide subscriber comes next, with
            // the trace exporter when the config asks for it.
            let loaded =
                tracing::subscriber::with_default(zwarm::telemetry::stderr_subscriber(), || {
                    let sources = zwarm::config::Sources::from_process_env(config, state_dir, sets)
                        .context("reading the current directory")?;
                    zwarm::config::load(&sources)
                        .and_then(|c| zwarm::executor::check_config(&c).map(|()| c))
                        .context("loading configuration")
                });
            let cfg = loaded.unwrap_or_else(|e| fail(zwarm::config::EXIT_CONFIG, &e));
            let telemetry = zwarm::telemetry::install(&cfg.telemetry);
            let code = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")
                .and_then(|rt| {
                    let code = rt.block_on(serve(cfg, telemetry));
                    rt.shutdown_timeout(Duration::from_millis(200));
                    code
                })
                .unwrap_or_else(|e| fail(1, &e));
            std::process::exit(code);
        }
        Command::Cli(cmd) => std::process::exit(zwarm::cli::main(cmd)),
    }
}

/// Say what went wrong, with its causes, on one line of stderr (no backtrace, whatever
/// `RUST_BACKTRACE` says: the message is for a person), and exit with `code`.
fn fail(code: i32, e: &anyhow::Error) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "zwarm: {e:#}");
    std::process::exit(code)
}

/// Stop the pooled ACP agent of a session as soon as the session ends (`end_session`): no
/// turn will come for it, so it should not wait for its idle time.
async fn release_ended_sessions(manager: zwarm::sessions::Manager) {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = manager.subscribe_changes();
    loop {
        let id = match changes.recv().await {
            Ok(id) => id,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        if zwarm::acp::pool::holds(&id) && manager.get(&id).await.is_ok_and(|s| s.status.is_final())
        {
            zwarm::acp::pool::release(&id).await;
        }
    }
}

async fn serve(
    cfg: zwarm::config::Config,
    telemetry: Option<zwarm::telemetry::Telemetry>,
) -> anyhow::Result<i32> {
    zwarm::process::become_subreaper();
    // The runner `[runner]` asks for (the local one: its own containment and reaper).
    let runner = zwarm::cli::runner_for(&cfg).await?;
    // ACP agents that stay up between a session's turns: reached by the turn's bridge over a
    // local socket, so only for turns that run on this machine.
    let acp_pool = if cfg.runner.kind == zwarm::runner::config::RunnerKind::Local {
        zwarm::acp::pool::Pool::start(true)
            .map_err(|e| tracing::warn!(error = %e, "no ACP agent pool: every ACP turn starts its agent"))
            .ok()
    } else {
        None
    };
    let manager = zwarm::cli::start_manager(cfg, runner).await?;
    if acp_pool.is_some() {
        tokio::spawn(release_ended_sessions(manager.clone()));
    }
    tracing::info!(state_dir = %manager.state_dir().display(), version = env!("CARGO_PKG_VERSION"), "zwarm serving MCP on stdio");
    let ct = CancellationToken::new();
    tokio::spawn(cancel_on_signal(ct.clone()));
    let server = zwarm::mcp::ZwarmServer::new(manager.clone()).with_shutdown(ct.clone());
    // stdio_pipes: a pending stdin read does not pin the process after a signal. EOF on stdin
    // cancels at once (rmcp alone would wait up to 5 s for in-flight calls first).
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    let stdin_closed = Arc::new(AtomicBool::new(false));
    let stdin = EofCancels {
        inner: stdin,
        ct: ct.clone(),
        closed: stdin_closed.clone(),
    };
    // serve_framed: malformed, oversized or non-UTF-8 lines get JSON-RPC errors, not silence.
    let service = match server.serve_framed((stdin, stdout), ct.clone()).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "MCP initialization failed");
            None
        }
    };
    if let Some(service) = service {
        // Ends on stdin EOF or when a signal cancels `ct`.
        let quit = tokio::select! {
            q = service.waiting() => format!("{q:?}"),
            _ = ct.cancelled() => if stdin_closed.load(Ordering::SeqCst) {
                "stdin closed".to_string()
            } else {
                "signal".to_string()
            },
        };
        tracing::info!(reason = %quit, "shutting down");
    }
    let stopping = std::time::Instant::now();
    manager.shutdown(Duration::from_millis(1700)).await;
    if let Some(pool) = acp_pool {
        pool.shutdown().await;
    }
    if let Some(t) = telemetry {
        // The spans of the turns just stopped, within the same 2 s: at most 300 ms.
        let left = Duration::from_millis(1800).saturating_sub(stopping.elapsed());
        let flush = left.min(Duration::from_millis(300));
        let _ = tokio::task::spawn_blocking(move || t.shutdown(flush)).await;
    }
    Ok(0)
}

async fn cancel_on_signal(ct: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    tracing::info!("signal received; stopping (a second signal forces exit)");
    ct.cancel();
    // A second signal: the person (or host) means it. Leave at once; the executors get their
    // parent-death signal, and the next server adopts and records what was running.
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// A reader that cancels the server when its input ends: a host closing stdin means "stop".
struct EofCancels<R> {
    inner: R,
    ct: CancellationToken,
    /// Set before `ct` is cancelled, so the shutdown log can say why it stopped.
    closed: Arc<AtomicBool>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofCancels<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &r
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            tracing::info!("stdin closed");
            self.closed.store(true, Ordering::SeqCst);
            self.ct.cancel();
        }
        r
    }
}
