//! The engine in-process on the in-memory runner: a crash after every commit of a session's
//! life, and a runner's own reason for ending a turn. No process, no CLI, no fixed sleeps: each
//! test waits on the engine's own conditions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

// The in-process support only: the rest of tests/support (mock servers, the `zwarm serve`
// harness) is not needed here.
#[path = "support/memory.rs"]
mod memory;

use std::sync::Arc;
use std::time::Duration;

use memory::{codex_turn, quick, task, thread_of};
use tokio_util::sync::CancellationToken;
use zwarm::model::{Session, SessionStatus, TurnStatus};
use zwarm::runner::memory::{MemoryRunner, Script};
use zwarm::sessions::Manager;

async fn start(dir: &std::path::Path, runner: &Arc<MemoryRunner>) -> Manager {
    memory::start_on(dir, |_| {}, runner).await
}

/// What the calls of one session's life reported before the crash.
#[derive(Debug, Default)]
struct Reported {
    id: Option<String>,
    /// The executor's thread id, once a reported state showed it.
    thread: Option<String>,
    /// Turns reported completed, with their answers.
    done: Vec<(u32, Option<String>)>,
    conversed: bool,
    ended: bool,
}

impl Reported {
    fn saw(&mut self, s: &Session) {
        if s.native_id.is_some() {
            self.thread = s.native_id.clone();
        }
        for t in &s.turns {
            if t.status == TurnStatus::Completed && !self.done.iter().any(|(i, _)| *i == t.index) {
                self.done.push((t.index, t.response.clone()));
            }
        }
    }
}

/// A session's life: delegate, its turn's end, converse, that turn's end, end_session. Each
/// step counts only once its call answered; the crash (`halted`) stops the life wherever it
/// is.
async fn live(m: &Manager, halted: &CancellationToken) -> Reported {
    let mut r = Reported::default();
    let never = CancellationToken::new();
    let life = async {
        let id = m.delegate(task("first")).await.ok()?;
        r.id = Some(id.clone());
        let s = m.wait(&id, Duration::from_secs(30), &never).await.ok()?;
        r.saw(&s);
        m.converse(&id, "more").await.ok()?;
        r.conversed = true;
        let s = m.wait(&id, Duration::from_secs(30), &never).await.ok()?;
        r.saw(&s);
        let (s, _) = m
            .end(&id, SessionStatus::Completed, Some("all done".into()))
            .await
            .ok()?;
        r.ended = true;
        r.saw(&s);
        Some(())
    };
    tokio::select! {
        _ = life => {}
        _ = halted.cancelled() => {}
    }
    r
}

/// The engine stops as a crash would after its n-th commit, for every n over a session's whole
/// life (delegate, the executor's thread id, the turn's end, converse, its thread id, its end,
/// end_session, and the progress batches in between). A new engine on the same state dir must
/// then show everything a call reported, nothing still running, a turn cut by the crash
/// interrupted (its leftovers cleaned up by label), and a session that can go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_commit_loses_nothing_reported_and_recovers() {
    let mut whole_life = false;
    // How many crashes cut a turn, and how many came after a reported turn: the sweep must
    // have hit both.
    let (mut cut_turns, mut after_done) = (0, 0);
    for n in 0..60u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let r1 = MemoryRunner::new(quick);
        let m1 = start(dir.path(), &r1).await;
        let halted = m1.store().crash_after(n);
        let rep = live(&m1, &halted).await;
        // A life cut short was cut by the crash (whose writer may still be finishing its last
        // transaction): wait until it has stopped.
        let crashed = rep.ended && halted.is_cancelled()
            || !rep.ended
                && tokio::time::timeout(Duration::from_secs(30), halted.cancelled())
                    .await
                    .is_ok();
        assert!(
            crashed || rep.ended,
            "a call failed without a crash: {rep:?}"
        );
        // The server dies: nothing more is written, and its lock is gone.
        m1.store().crash_after(0);
        for f in std::fs::read_dir(dir.path().join("state/locks")).expect("locks") {
            std::fs::remove_file(f.expect("entry").path()).expect("rm lock");
        }
        m1.shutdown(Duration::from_secs(5)).await;
        drop(m1);

        let r2 = MemoryRunner::new(quick);
        let m2 = start(dir.path(), &r2).await;
        let page = m2.list(None, 100, 0).await.expect("list");
        let what = format!("crash after {n} commits, reported {rep:?}");
        let Some(id) = rep.id.clone() else {
            // delegate never answered: its session may or may not be on disk, but if it is,
            // it is not left running.
            assert!(page.total <= 1, "{what}");
            for row in &page.sessions {
                let s = m2.get(&row.session_id).await.expect("get");
                assert!(!s.status.is_active(), "{what}: {s:?}");
            }
            continue;
        };
        assert_eq!(page.total, 1, "{what}");
        let s = m2.get(&id).await.expect("the delegated session is there");
        assert!(!s.status.is_active(), "{what}: left running: {s:?}");
        for t in &s.turns {
            assert!(t.ended_at.is_some(), "{what}: turn {} not ended", t.index);
        }
        if rep.thread.is_some() {
            assert_eq!(s.native_id, rep.thread, "{what}: the thread id was lost");
        }
        for (i, response) in &rep.done {
            let t = s
                .turn(*i)
                .unwrap_or_else(|| panic!("{what}: turn {i} lost"));
            assert_eq!(t.status, TurnStatus::Completed, "{what}: turn {i}");
            assert_eq!(&t.response, response, "{what}: turn {i}'s answer");
        }
        if rep.conversed {
            assert!(s.turns.len() >= 2, "{what}: the second turn was lost");
        }
        if rep.ended {
            assert_eq!(s.status, SessionStatus::Completed, "{what}");
        }
        // A turn the crash cut is interrupted, and what it left is cleaned up by its label.
        let cut: Vec<String> = s
            .turns
            .iter()
            .filter(|t| t.status == TurnStatus::Interrupted)
            .map(|t| format!("{id}.{}", t.index))
            .collect();
        assert!(cut.len() <= 1, "{what}: {:?}", s.turns);
        cut_turns += cut.len();
        after_done += usize::from(!rep.done.is_empty());
        eprintln!("{what}: cut {cut:?}, status {}", s.status.as_str());
        assert_eq!(r2.cleaned(), cut, "{what}");
        if !cut.is_empty() {
            assert_eq!(s.status, SessionStatus::Failed, "{what}");
        }
        // Each status change is logged once.
        m2.store().sync().await;
        let events = m2.recent_events(1000).await.expect("events");
        for idx in 1..=s.turns.len() {
            let count = |kind: &str| {
                events
                    .iter()
                    .filter(|v| v["event"] == kind && v["session_id"] == id.as_str())
                    .filter(|v| v["turn"] == idx)
                    .count()
            };
            assert!(count("turn_started") <= 1, "{what}: turn {idx}");
            assert!(count("turn_finished") <= 1, "{what}: turn {idx}");
        }
        // The session goes on where it can: resumed on its thread, or started over.
        if !s.status.is_final() {
            let (_, next) = m2.converse(&id, "after the crash").await.expect("converse");
            let s = m2
                .wait(&id, Duration::from_secs(30), &CancellationToken::new())
                .await
                .expect("wait");
            let t = s.turn(next).expect("the new turn");
            assert_eq!(t.status, TurnStatus::Completed, "{what}: {t:?}");
        }
        m2.shutdown(Duration::from_secs(5)).await;
        if !crashed {
            // The whole life fitted in n commits: every step was crashed after.
            assert!(rep.ended, "{what}");
            whole_life = true;
            break;
        }
    }
    assert!(whole_life, "a session's life took more than 60 commits");
    assert!(
        cut_turns >= 2 && after_done >= 2,
        "{cut_turns} cut, {after_done} after a turn"
    );
}

/// A runner that ends a turn for a reason of its own (a container killed for its memory, a
/// pod never scheduled) fails the turn with that reason rather than the exit status; a turn
/// the executor completed stays completed whatever the runner says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_the_runner_ends_with_a_cause_fails_with_that_text() {
    const OOM: &str = "the container ran out of memory (limit 512m) and was killed";
    let dir = tempfile::tempdir().expect("tempdir");
    let runner = MemoryRunner::new(|l| {
        let complete = l.stdin.as_deref() == Some(b"complete".as_slice());
        let lines = codex_turn(&thread_of(l), "answer");
        Script {
            stdout: if complete { lines } else { lines[..2].to_vec() },
            exit_code: if complete { 0 } else { 137 },
            stderr: "Killed\n".into(),
            cause: Some(OOM.into()),
            ..Default::default()
        }
    });
    let m = start(dir.path(), &runner).await;
    let never = CancellationToken::new();
    let id = m.delegate(task("cut")).await.expect("delegate");
    let s = m
        .wait(&id, Duration::from_secs(30), &never)
        .await
        .expect("wait");
    let t = &s.turns[0];
    assert_eq!(t.status, TurnStatus::Failed, "{t:?}");
    assert_eq!(t.error.as_deref(), Some(OOM), "{t:?}");
    assert_eq!(s.status, SessionStatus::Failed);
    let id = m.delegate(task("complete")).await.expect("delegate");
    let s = m
        .wait(&id, Duration::from_secs(30), &never)
        .await
        .expect("wait");
    let t = &s.turns[0];
    assert_eq!(t.status, TurnStatus::Completed, "{t:?}");
    assert_eq!(t.response.as_deref(), Some("answer"));
    m.shutdown(Duration::from_secs(5)).await;
}

/// A stored session whose executor this build does not know is listed as unreadable, with
/// the reason, and never as another executor's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_session_of_an_unknown_executor_is_listed_unreadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runner = MemoryRunner::new(quick);
    let m = start(dir.path(), &runner).await;
    let id = m.delegate(task("first")).await.expect("delegate");
    m.wait(&id, Duration::from_secs(30), &CancellationToken::new())
        .await
        .expect("wait");
    m.shutdown(Duration::from_secs(5)).await;
    drop(m);
    let db = rusqlite::Connection::open(dir.path().join("state/zwarm.db")).expect("db");
    db.execute(
        "UPDATE sessions SET adapter = 'no-such-executor' WHERE id = ?1",
        [&id],
    )
    .expect("update");
    drop(db);
    let m = start(dir.path(), &runner).await;
    let page = m.list(None, 10, 0).await.expect("list");
    assert_eq!(page.total, 1);
    let row = &page.sessions[0];
    assert_eq!(row.status, SessionStatus::Unreadable, "{row:?}");
    assert!(
        row.task
            .contains("executor `no-such-executor` is not one zwarm knows"),
        "{}",
        row.task
    );
    m.shutdown(Duration::from_secs(5)).await;
}
