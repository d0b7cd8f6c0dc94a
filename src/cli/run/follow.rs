//! `zwarm run --session ID TASK`: continue an open session from the terminal.
//!
//! When a live server owns the session, that server runs the turn: it is asked through the
//! store ([`crate::cli::end::remote`]), and this command follows the turn read-only (the
//! commands it runs as they are recorded, then the same summary and answer as `run`). Ctrl-C
//! asks the owner to interrupt the turn. Otherwise the engine runs here, adopts the session
//! (as `run` and `end` do when its server is gone) and runs the turn itself.

use std::time::Duration;

use super::{Origin, Progress, follow_turn, report, say};
use crate::cli::end::remote::{self, Asked};
use crate::cli::{open_state, short_id};
use crate::config::Config;
use crate::model::Session;
use crate::sessions::Manager;
use crate::store::readonly::ReadOnlyStore;
use crate::store::requests::{self, Ask};

/// How long the owner has to start the turn.
const START_WAIT: Duration = Duration::from_secs(30);
/// How often the followed turn is read.
const READ_EVERY: Duration = Duration::from_millis(200);

pub fn main(cfg: Config, prefix: &str, task: String) -> anyhow::Result<i32> {
    let id = {
        let store = open_state(&cfg)?;
        let id = store.resolve(prefix)?;
        if let Some(owner) = remote::live_owner(&store, &id)?
            && let Some(code) = through_owner(&store, &id, &owner, task.clone())?
        {
            return Ok(code);
        }
        id
    };
    let rt = crate::cli::runtime()?;
    let manager = crate::cli::start_engine(&rt, cfg)?;
    let r = rt.block_on(here(&manager, &id, task));
    rt.block_on(manager.shutdown(Duration::from_millis(1700)));
    rt.shutdown_timeout(Duration::from_millis(200));
    r
}

/// Continue the session with this process's engine (no live server owns it).
async fn here(manager: &Manager, id: &str, task: String) -> anyhow::Result<i32> {
    let notices = manager.subscribe();
    // The watchers see a converse from the terminal like a host's.
    let call = crate::watch::Call::Converse {
        session_id: id.to_string(),
        message: task.clone(),
        mode: crate::model::Mode::Sync,
    };
    let notes = manager
        .check_call(&call, false)
        .await
        .map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    let (sid, turn) = manager.converse(id, &task).await?;
    let progress = Progress::new();
    progress.line(&format!(
        "zwarm: session {sid}: turn {turn} started (see it with `zwarm show {}`)",
        short_id(&sid)
    ));
    progress.status("starting the executor…", false);
    follow_turn(
        manager,
        &sid,
        turn,
        notices,
        &notes,
        progress,
        Origin::Continued,
    )
    .await
}

/// Ask the owner to run the turn and follow it. `None`: the owner exited before answering.
fn through_owner(
    store: &ReadOnlyStore,
    id: &str,
    owner: &remote::Owner,
    task: String,
) -> anyhow::Result<Option<i32>> {
    say(&format!(
        "zwarm: session {} belongs to a running zwarm server (pid {}); asking it to run the turn…",
        short_id(id),
        owner.pid
    ));
    let o = match remote::ask(
        store,
        id,
        owner,
        Ask::Converse { message: task },
        START_WAIT,
    )? {
        Asked::Answered(o) => o,
        Asked::OwnerGone => {
            say("zwarm: that server exited before it answered; continuing the session here");
            return Ok(None);
        }
        Asked::NoAnswer(why) => {
            say(&format!("zwarm: {why}"));
            return Ok(Some(1));
        }
    };
    if let Some(e) = o.error {
        say(&format!(
            "zwarm: the server that owns it (pid {}): {e}",
            o.server_pid
        ));
        return Ok(Some(1));
    }
    let Some(turn) = o.turn else {
        anyhow::bail!("the server that owns session {id} started no turn");
    };
    for n in &o.notes {
        say(&format!("zwarm: {n}"));
    }
    let progress = Progress::new();
    progress.line(&format!(
        "zwarm: session {id}: turn {turn} started by the server that owns it (pid {}); following it (see it with `zwarm show {}`)",
        o.server_pid,
        short_id(id)
    ));
    progress.status("waiting for the executor…", false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (s, interrupted) = rt.block_on(watch_turn(store, id, owner, turn, &progress))?;
    progress.done();
    let cut = crate::cli::show::unfinished(store.root(), &s)
        .remove(&turn)
        .unwrap_or_default();
    Ok(Some(report(&s, interrupted, Origin::Continued, &cut)))
}

/// Read the session until turn `turn` has ended, showing its commands as they are recorded.
/// Ctrl-C asks the owner to interrupt the turn (a second one exits at once).
async fn watch_turn(
    store: &ReadOnlyStore,
    id: &str,
    owner: &remote::Owner,
    turn: u32,
    progress: &Progress,
) -> anyhow::Result<(Session, bool)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupted = false;
    let mut shown = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(READ_EVERY) => {}
            _ = async { tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} } } => {
                if interrupted {
                    progress.done();
                    say("zwarm: second interrupt, exiting now (the turn goes on in its server)");
                    std::process::exit(130);
                }
                interrupted = true;
                progress.line("zwarm: asking the server to interrupt the turn (again to stop following at once)…");
                // The turn ending is what this loop waits for; the answer itself is not needed.
                if let Err(e) = requests::send(store.root(), &owner.instance, id, Ask::Interrupt { turn: Some(turn) }) {
                    say(&format!("zwarm: could not ask for the interrupt: {e}"));
                }
            }
        }
        let Some(s) = store.load_session(id)? else {
            anyhow::bail!("session {id} is gone from the state database");
        };
        let Some(t) = s.turns.iter().find(|t| t.index == turn) else {
            continue;
        };
        for c in t.commands.iter().skip(shown) {
            let exit = c
                .exit_code
                .map(|e| format!("exit {e}"))
                .unwrap_or_else(|| "no exit code".into());
            progress.status(
                &format!("ran `{}` ({exit})", crate::text::one_line(&c.command, 120)),
                true,
            );
        }
        shown = shown.max(t.commands.len());
        if t.ended_at.is_some() && !s.status.is_active() {
            return Ok((s, interrupted));
        }
        if !store.owner_alive(&owner.instance) {
            anyhow::bail!(
                "the zwarm server that ran the turn (pid {}) exited before the turn ended; the next zwarm to start on this state records the turn (see `zwarm show {}`)",
                owner.pid,
                short_id(id)
            );
        }
    }
}
