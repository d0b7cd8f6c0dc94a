//! Tests of `zwarm top`: snapshot, rendering and keys.

use super::*;

fn row(id: &str, status: &str, task: &str) -> TopRow {
    TopRow {
        id: id.into(),
        status: status.into(),
        active: status == "running",
        is_final: status == "completed",
        adapter: "codex".into(),
        branch: None,
        elapsed: Some(75),
        updated: Some(3),
        last: "codex runs `cargo test`".into(),
        tokens: 12_345,
        cost: Some(0.0123),
        task: task.into(),
    }
}

pub fn sample() -> App {
    App::new(Snapshot {
        state_dir: "/home/me/.local/state/zwarm/home-me-src-proj-90c1ba2b".into(),
        rows: vec![
            row(
                "0f3e7c1d-7b52-4a9a-8f3e-7c1d7b52a9a0",
                "running",
                "fix the failing tests in src/parser",
            ),
            row(
                "5d54d971-04ac-4fc5-8706-cc9e722763be",
                "idle",
                "add a --json flag to the export command",
            ),
            row(
                "9a0f3e7c-1d7b-4529-a0f3-e7c1d7b52a9b",
                "completed",
                "write the changelog",
            ),
        ],
        sessions: 3,
        running: 1,
        tokens: 37_035,
        cost: 0.0369,
        budget: vec!["cost $0.0369 of $5.00 (1%)".into()],
        error: None,
    })
}

#[test]
fn the_table_shows_the_sessions() {
    let text = render_to_text(&sample(), 120, 12);
    println!("{text}");
    assert!(text.contains("zwarm top"), "{text}");
    assert!(text.contains("3 sessions · 1 running"), "{text}");
    assert!(
        text.contains("budget: cost $0.0369 of $5.00 (1%)"),
        "{text}"
    );
    for (id, status) in [
        ("0f3e7c1d", "running"),
        ("5d54d971", "idle"),
        ("9a0f3e7c", "completed"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id}: {text}"));
        assert!(line.contains(status), "{line}");
        assert!(line.contains("12.3k") && line.contains("$0.0123"), "{line}");
    }
    assert!(
        text.contains("▶ 0f3e7c1d"),
        "the first row is selected: {text}"
    );
    assert!(text.contains("q quit"), "{text}");
}

#[test]
fn keys_select_open_and_confirm() {
    let mut app = sample();
    let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
    assert_eq!(on_key(&mut app, key(KeyCode::Down), 10), Action::None);
    assert_eq!(app.selected, 1);
    assert_eq!(
        on_key(&mut app, key(KeyCode::Enter), 10),
        Action::Open("5d54d971-04ac-4fc5-8706-cc9e722763be".into())
    );
    on_key(&mut app, key(KeyCode::Char('e')), 10);
    assert!(matches!(app.view, View::ConfirmEnd { .. }));
    let text = render_to_text(&app, 120, 14);
    assert!(text.contains("End session 5d54d971 (idle)?"), "{text}");
    assert_eq!(on_key(&mut app, key(KeyCode::Char('n')), 10), Action::None);
    assert_eq!(app.view, View::List);
    on_key(&mut app, key(KeyCode::Char('e')), 10);
    assert_eq!(
        on_key(&mut app, key(KeyCode::Char('y')), 10),
        Action::End {
            id: "5d54d971-04ac-4fc5-8706-cc9e722763be".into(),
            verdict: "completed"
        }
    );
    // A completed session cannot be ended again.
    on_key(&mut app, key(KeyCode::End), 10);
    on_key(&mut app, key(KeyCode::Char('e')), 10);
    assert_eq!(app.view, View::List);
    assert!(
        app.message
            .as_deref()
            .is_some_and(|m| m.contains("ended already"))
    );
    assert_eq!(on_key(&mut app, key(KeyCode::Char('q')), 10), Action::Quit);
}

/// The capture in README.md is this rendering: the test fails when the dashboard's look
/// changes and README was not updated with it.
#[test]
fn the_readme_capture_is_what_top_draws() {
    let mut app = sample();
    app.snap.rows[0].last = "codex runs `cargo test -p parser`".into();
    app.snap.rows[0].elapsed = Some(222);
    app.snap.rows[0].updated = Some(2);
    app.snap.rows[0].cost = None;
    app.snap.rows[1].adapter = "claude".into();
    app.snap.rows[1].branch = Some("zwarm/5d54d971".into());
    app.snap.rows[1].cost = Some(0.0412);
    app.snap.tokens = 37_035;
    app.snap.cost = 0.0412;
    app.snap.budget = vec!["cost $0.0412 of $5.00 (1%)".into()];
    app.snap.rows[1].last = "claude says: Added --json; tests pass.".into();
    app.snap.rows[1].elapsed = Some(94);
    app.snap.rows[1].updated = Some(720);
    app.snap.rows[1].tokens = 18_204;
    app.snap.rows[2].last = "codex: turn finished".into();
    app.snap.rows[2].elapsed = Some(41);
    app.snap.rows[2].updated = Some(3900);
    app.snap.rows[2].tokens = 6_486;
    app.snap.rows[2].cost = None;
    let drawn: Vec<String> = render_to_text(&app, 110, 10)
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect();
    let readme = include_str!("../../../README.md");
    let block: Vec<String> = readme
        .split("```\nzwarm top · ")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .map(|b| format!("zwarm top · {b}"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect();
    let drawn = drawn.join("\n").trim_end().to_string();
    let block = block.join("\n").trim_end().to_string();
    assert_eq!(
        block, drawn,
        "README's `zwarm top` capture differs from what top draws"
    );
}

#[test]
fn the_cursor_stays_on_its_session_as_the_list_changes() {
    let mut app = sample();
    let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
    on_key(&mut app, key(KeyCode::Down), 10);
    on_key(&mut app, key(KeyCode::Char('e')), 10);
    let ended = "5d54d971-04ac-4fc5-8706-cc9e722763be";
    assert_eq!(
        on_key(&mut app, key(KeyCode::Char('y')), 10),
        Action::End {
            id: ended.into(),
            verdict: "completed"
        }
    );
    // Once ended, the session is the most recently updated: it moves to the top. The cursor
    // goes with it, so a second `e` does not end the session that took its place.
    let mut snap = app.snap.clone();
    let mut row = snap.rows.remove(1);
    row.status = "completed".into();
    row.is_final = true;
    snap.rows.insert(0, row);
    app.replace_snap(snap);
    assert_eq!(app.selected, 0);
    assert_eq!(app.selected_row().map(|r| r.id.as_str()), Some(ended));
    on_key(&mut app, key(KeyCode::Char('e')), 10);
    assert_eq!(app.view, View::List, "no second end");
    assert!(
        app.message
            .as_deref()
            .is_some_and(|m| m.contains("ended already"))
    );
    // A session that is gone from the list: the cursor stays in range.
    let mut snap = app.snap.clone();
    snap.rows.truncate(1);
    snap.rows[0].id = "00000000-0000-4000-8000-000000000000".into();
    app.selected = 2;
    app.replace_snap(snap);
    assert_eq!(app.selected, 0);
}

#[test]
fn the_table_shows_branches() {
    let mut app = sample();
    app.snap.rows[1].branch = Some("zwarm/5d54d971".into());
    let text = render_to_text(&app, 140, 12);
    assert!(text.contains("BRANCH"), "{text}");
    let line = text.lines().find(|l| l.contains("5d54d971 idle")).unwrap();
    assert!(line.contains("zwarm/5d54d971"), "{line}");
    let line = text.lines().find(|l| l.contains("0f3e7c1d")).unwrap();
    assert!(line.contains(" - "), "no branch: {line}");
}

#[test]
fn an_empty_state_says_how_to_start() {
    let text = render_to_text(&App::new(Snapshot::default()), 80, 8);
    assert!(text.contains("no sessions yet"), "{text}");
}

#[test]
fn a_and_d_answer_an_ask_of_the_selected_session() {
    let mut app = sample();
    let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
    // Not waiting: said so, nothing sent.
    assert_eq!(on_key(&mut app, key(KeyCode::Char('a')), 10), Action::None);
    assert!(
        app.message
            .as_deref()
            .is_some_and(|m| m.contains("not waiting"))
    );
    app.snap.rows[0].status = "needs_approval".into();
    app.selected = 0;
    assert_eq!(
        on_key(&mut app, key(KeyCode::Char('d')), 10),
        Action::Approve {
            id: "0f3e7c1d-7b52-4a9a-8f3e-7c1d7b52a9a0".into(),
            allow: false
        }
    );
    assert_eq!(
        on_key(&mut app, key(KeyCode::Char('a')), 10),
        Action::Approve {
            id: "0f3e7c1d-7b52-4a9a-8f3e-7c1d7b52a9a0".into(),
            allow: true
        }
    );
}
