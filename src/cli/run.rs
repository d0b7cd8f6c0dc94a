//! `zwarm run TASK`: one delegation from the terminal, with the engine in this process.
//!
//! The session is created and recorded exactly like one a host delegates (same state dir,
//! same watchers, same event log), so `zwarm ps`, `show` and an orchestrator see it. Progress
//! (what the executor runs and edits) goes to stderr, as a spinner line on a terminal and as
//! plain lines otherwise; the final answer goes to stdout. Exit 0 when the turn finished,
//! 1 when it failed, 130 when it was interrupted with Ctrl-C.
//!
//! A closed stdout or stderr (`zwarm run … 2>&1 | head -c 1`) never stops `run`: what it
//! cannot print is dropped, the turn runs to its end and is recorded. When the turn is over
//! the session is ended (completed, failed or cancelled, as the turn ended) unless `--keep`
//! leaves it open for `converse`; a worktree session stays open for its review
//! (`zwarm diff`, then `zwarm end --integrate`).
//!
//! `--session ID` continues an open session instead ([`follow`]): when a live server owns it
//! (a host's `zwarm serve`, a `zwarm run` elsewhere) that server is asked to start the turn
//! (through the store, like `zwarm end`) and `run` follows the turn read-only; otherwise the
//! engine here adopts the session and runs the turn, as for a new one. Either way the session
//! stays open afterwards.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

mod follow;

use super::{StateArgs, fmt_cost, short_id};
use crate::event::ExecutorEvent;
use crate::model::{Session, SessionStatus, TurnStatus};
use crate::sessions::{DelegateRequest, MAX_WAIT, Manager};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// Work directly in the working directory (the default unless the config's `isolation`
    /// says otherwise).
    None,
    /// Run the session in its own git worktree and branch.
    Worktree,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A registered executor: `codex`, `claude`, `gemini`, `qwen`, `opencode` (default: the
    /// config's default_adapter).
    #[arg(long, value_name = "A")]
    pub adapter: Option<String>,
    /// Model for the executor (default: the config's, else the executor's own).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// `worktree`: the session works in a git worktree and branch of its own; `none`: in the
    /// working directory itself (default: the config's `isolation`, itself `none`).
    #[arg(long, value_enum, value_name = "MODE")]
    pub isolation: Option<Isolation>,
    /// For a worktree session (`--isolation worktree`, or the config's `isolation`): the
    /// commit or branch the session's branch starts from (default: the checkout's HEAD).
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// Directory the executor works in (default: the current directory). Must be inside the
    /// allowed roots.
    #[arg(long, value_name = "D")]
    pub working_dir: Option<PathBuf>,
    /// Leave the session open when the turn is over (for `converse` from a host); by
    /// default `run` ends it (completed, failed or cancelled, as the turn ended). A worktree
    /// session always stays open for its review: end it with `zwarm end ID --integrate …`.
    #[arg(long)]
    pub keep: bool,
    /// Continue session ID (an id or unique prefix of 8+ characters) with TASK as its next
    /// message, instead of starting a new session. When a running zwarm server owns it, that
    /// server runs the turn (it is asked to) and `run` follows it. The session stays open.
    #[arg(long, value_name = "ID", conflicts_with_all = ["adapter", "model", "isolation", "base", "working_dir", "keep"])]
    pub session: Option<String>,
    /// The task (several words are joined with spaces); `-` reads it from stdin.
    #[arg(required = true, num_args = 1.., value_name = "TASK")]
    pub task: Vec<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn main(a: RunArgs) -> anyhow::Result<i32> {
    let task = if a.task.len() == 1 && a.task[0] == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .context("reading the task from stdin")?;
        t
    } else {
        a.task.join(" ")
    };
    if task.trim().is_empty() {
        anyhow::bail!("the task is empty: say what the executor should do");
    }
    let cfg = a.state.load()?;
    if let Some(prefix) = &a.session {
        return follow::main(cfg, prefix, task);
    }
    let rt = super::runtime()?;
    let manager = super::start_engine(&rt, cfg)?;
    let req = Request {
        task,
        adapter: a.adapter,
        model: a.model,
        working_dir: a.working_dir.map(|d| d.display().to_string()),
        isolation: a.isolation.map(|i| match i {
            Isolation::None => "none".to_string(),
            Isolation::Worktree => "worktree".to_string(),
        }),
        base: a.base,
        keep: a.keep,
    };
    let r = rt.block_on(run_one(&manager, req));
    rt.block_on(manager.shutdown(Duration::from_millis(1700)));
    rt.shutdown_timeout(Duration::from_millis(200));
    r
}

struct Request {
    task: String,
    adapter: Option<String>,
    model: Option<String>,
    working_dir: Option<String>,
    isolation: Option<String>,
    base: Option<String>,
    keep: bool,
}

/// A line on stderr; a closed stderr drops it (never a panic, never an exit mid-turn).
fn say(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{text}");
}

/// Where progress goes: a spinner on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    /// A line that stays (above the spinner).
    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => say(text),
        }
    }

    /// What is happening now (the spinner's message; a plain line without a terminal).
    fn status(&self, text: &str, keep: bool) {
        match &self.bar {
            Some(b) => {
                if keep {
                    b.println(format!("  {text}"));
                }
                b.set_message(text.to_string());
            }
            None => say(&format!("  {text}")),
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

async fn run_one(manager: &Manager, req: Request) -> anyhow::Result<i32> {
    // Subscribe before the turn starts, so no progress is missed.
    let notices = manager.subscribe();
    let call = crate::watch::Call::Delegate {
        task: req.task.clone(),
        mode: crate::model::Mode::Sync,
        adapter: req.adapter.clone(),
        model: req.model.clone(),
        working_dir: req.working_dir.clone(),
        isolation: req.isolation.clone(),
        base: req.base.clone(),
    };
    let notes = manager
        .check_call(&call, false)
        .await
        .map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    let id = manager
        .delegate(DelegateRequest {
            task: req.task,
            adapter: req.adapter,
            mode: None,
            model: req.model,
            working_dir: req.working_dir,
            isolation: req.isolation,
            base: req.base,
        })
        .await?;
    let progress = Progress::new();
    progress.line(&format!(
        "zwarm: session {id} started (see it with `zwarm show {}`)",
        short_id(&id)
    ));
    if let Ok(Session {
        isolation: Some(iso),
        ..
    }) = manager.get(&id).await
    {
        progress.line(&format!(
            "zwarm: working on branch {} in its own worktree ({}); your checkout is untouched",
            iso.branch, iso.worktree
        ));
    }
    follow_turn(
        manager,
        &id,
        1,
        notices,
        &notes,
        progress,
        Origin::Made { keep: req.keep },
    )
    .await
}

/// Follow turn `turn` of session `id` (run by this process's engine) to its end, then report;
/// A session `run` made is ended after the turn unless kept (see [`Origin`]).
async fn follow_turn(
    manager: &Manager,
    id: &str,
    turn: u32,
    notices: tokio::sync::broadcast::Receiver<crate::sessions::Notice>,
    notes: &[crate::model::WatcherNote],
    progress: Progress,
    origin: Origin,
) -> anyhow::Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let id = id.to_string();
    let mut notices = Some(notices);
    progress.status("starting the executor…", false);
    let cancel = CancellationToken::new();
    let wait = manager.wait(&id, MAX_WAIT, &cancel);
    tokio::pin!(wait);
    let mut int = signal(SignalKind::interrupt()).context("installing a Ctrl-C handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupted = false;
    let session = loop {
        let next_notice = async {
            match notices.as_mut() {
                Some(rx) => Some(rx.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = &mut wait => break s?,
            n = next_notice => match n {
                Some(Ok(n)) if n.session_id == id => {
                    let text = n.message.clone().or_else(|| n.event.summary("executor"));
                    if let Some(text) = text {
                        let keep = matches!(
                            n.event,
                            ExecutorEvent::CommandFinished { .. } | ExecutorEvent::FilesChanged { .. }
                                | ExecutorEvent::PermissionDenied(_) | ExecutorEvent::TurnFailed { .. }
                        );
                        progress.status(&text, keep);
                    }
                }
                Some(Ok(_)) | Some(Err(RecvError::Lagged(_))) => {}
                Some(Err(RecvError::Closed)) | None => notices = None,
            },
            _ = async { tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} } } => {
                if interrupted {
                    progress.done();
                    say("zwarm: second interrupt, exiting now");
                    std::process::exit(130);
                }
                interrupted = true;
                progress.line("zwarm: interrupting the turn (again to exit at once)…");
                let m = manager.clone();
                let sid = id.clone();
                tokio::spawn(async move {
                    let _ = m.interrupt(&sid, "interrupted from the terminal").await;
                });
            }
        }
    };
    progress.done();
    manager.attach_notes(&id, Some(turn), notes).await;
    let session = if origin != (Origin::Made { keep: false }) || session.isolation.is_some() {
        session
    } else {
        end_after_turn(manager, session).await
    };
    // Commands the turn started and never finished (cut off by Ctrl-C or a failure).
    let cut = match session.turns.last() {
        Some(t) if t.status != TurnStatus::Completed => {
            let evs = super::activity::read_turn(
                manager.state_dir(),
                &session.id,
                t.index,
                session.adapter,
            );
            super::activity::unfinished_commands(&evs)
        }
        _ => Vec::new(),
    };
    Ok(report(&session, interrupted, origin, &cut))
}

/// The verdict a finished turn gives its session when `run` ends it.
fn verdict_of(t: Option<TurnStatus>) -> Option<SessionStatus> {
    match t? {
        TurnStatus::Completed => Some(SessionStatus::Completed),
        TurnStatus::Failed => Some(SessionStatus::Failed),
        TurnStatus::Interrupted => Some(SessionStatus::Cancelled),
        TurnStatus::Queued | TurnStatus::Running => None,
    }
}

/// Whose session a followed turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Made by this `run`: ended when the turn is over unless `keep`.
    Made { keep: bool },
    /// Continued (`--session`): it stays open.
    Continued,
}

/// End the session `run` made, as its turn ended; the session as it is afterwards.
async fn end_after_turn(manager: &Manager, s: Session) -> Session {
    // Ended meanwhile (`zwarm end` from another terminal asked this process to).
    if s.status.is_final() {
        return s;
    }
    let Some(verdict) = verdict_of(s.turns.last().map(|t| t.status)) else {
        return s;
    };
    let summary = Some("ended by `zwarm run` when its turn was over".to_string());
    match manager.end(&s.id, verdict, summary).await {
        Ok((ended, _)) => ended,
        // Being ended from elsewhere (`zwarm end` asked this process): show how it ended.
        Err(crate::sessions::ManagerError::Ended { .. }) => ended_elsewhere(manager, s).await,
        Err(e) => {
            say(&format!(
                "zwarm: warning: the session stays {}: {e}",
                s.status.as_str()
            ));
            s
        }
    }
}

/// The session once the end someone else asked for is recorded (at most a few seconds).
async fn ended_elsewhere(manager: &Manager, s: Session) -> Session {
    let mut changes = manager.subscribe_changes();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(now) = manager.get(&s.id).await
            && now.status.is_final()
        {
            return now;
        }
        tokio::select! {
            _ = changes.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::time::sleep_until(until) => return s,
        }
    }
}

/// Print the outcome (answer on stdout, the rest on stderr) and choose the exit code.
fn report(s: &Session, interrupted: bool, origin: Origin, cut: &[String]) -> i32 {
    let Some(t) = s.turns.last() else {
        say(&format!("zwarm: session {} has no turn", s.id));
        return 1;
    };
    let u = s.total_usage();
    say(&format!(
        "zwarm: session {} {} · {} command(s), {} file(s) changed{} · tokens in {} out {} · cost {}",
        short_id(&s.id),
        s.status.as_str(),
        t.commands.len(),
        t.files_changed.len(),
        match t.tool_errors.len() {
            0 => String::new(),
            n => format!(", {n} tool error(s)"),
        },
        u.input_tokens,
        u.output_tokens,
        fmt_cost(s.total_cost()),
    ));
    for e in &t.tool_errors {
        say(&format!("zwarm: {}", super::show::tool_error_line(e)));
    }
    for c in cut {
        say(&format!(
            "zwarm: cut off before it finished: {}",
            crate::text::one_line(c, 200)
        ));
    }
    for n in &s.watcher_notes {
        say(&format!("zwarm: watcher {}: {}", n.watcher, n.message));
    }
    for d in &t.permission_denials {
        say(&format!("zwarm: permission denied: {} {}", d.tool, d.input));
    }
    let id = short_id(&s.id);
    if let Some(iso) = &s.isolation {
        say(&format!(
            "zwarm: the changes are on branch {} (worktree {}); review them with `zwarm diff {id}`, then `zwarm end {id} --integrate merge` (or keep, discard)",
            iso.branch, iso.worktree
        ));
    } else if origin != (Origin::Made { keep: false }) && !s.status.is_final() {
        say(&format!(
            "zwarm: session {id} stays open{}; continue it with `zwarm run --session {id} TASK`, end it with `zwarm end {id}`",
            if origin == (Origin::Made { keep: true }) {
                " (--keep)"
            } else {
                ""
            }
        ));
    }
    match t.status {
        TurnStatus::Completed => {
            let answer = t.response.clone().unwrap_or_default();
            let nl = if answer.ends_with('\n') { "" } else { "\n" };
            // A closed stdout: the answer is recorded (`zwarm show`); the exit code says the
            // turn finished.
            let mut o = std::io::stdout().lock();
            let _ = o
                .write_all(format!("{answer}{nl}").as_bytes())
                .and_then(|_| o.flush());
            0
        }
        _ => {
            let why = t
                .error
                .clone()
                .or_else(|| s.error.clone())
                .unwrap_or_else(|| format!("the turn ended {:?}", t.status));
            say(&format!("zwarm: the turn failed: {why}"));
            if interrupted { 130 } else { 1 }
        }
    }
}
