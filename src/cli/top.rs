//! `zwarm top`: a live dashboard of running and recent sessions.
//!
//! The state dir is read read-only, at most every [`REFRESH`]; between refreshes the loop
//! blocks on terminal input with a timeout, so an idle dashboard costs nothing. The screen is
//! redrawn only when the data changed or a key was pressed. Drawing is a pure function of
//! [`App`] ([`render`]), so it is tested with ratatui's `TestBackend`.
//!
//! Keys: ↑/↓ (or k/j) select, Enter shows the transcript, `e` ends the selected session after
//! a confirmation (through `zwarm end`: a session a live server owns is ended by that server,
//! which interrupts a running turn first), `q` quits. The cursor stays on the same session
//! (by id) as the list changes.

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};

use super::{StateArgs, fmt_cost, fmt_duration, fmt_tokens, one_line, short_id};
use crate::config::Config;
use crate::store::readonly::ReadOnlyStore;

/// How often the state database is read.
pub const REFRESH: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// How many recent sessions to show (running ones always show).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[command(flatten)]
    pub state: StateArgs,
}

/// One session line.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub id: String,
    /// As a person reads it (`stale` for a running session whose server is gone).
    pub status: String,
    pub active: bool,
    pub is_final: bool,
    pub adapter: String,
    /// A worktree session's branch.
    pub branch: Option<String>,
    /// Running: since the turn started; otherwise the session's whole span.
    pub elapsed: Option<u64>,
    /// Seconds since the session last changed.
    pub updated: Option<u64>,
    pub last: String,
    pub tokens: u64,
    pub cost: Option<f64>,
    pub task: String,
}

/// What the dashboard shows, read from the state dir.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub state_dir: String,
    pub rows: Vec<TopRow>,
    pub sessions: usize,
    pub running: usize,
    pub tokens: u64,
    pub cost: f64,
    /// "cost $0.12 of $5.00 (2%)", one per budget limit set.
    pub budget: Vec<String>,
    /// Why the last read failed (the previous rows stay).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum View {
    List,
    Transcript {
        id: String,
        lines: Vec<String>,
        scroll: u16,
    },
    ConfirmEnd {
        id: String,
        status: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub snap: Snapshot,
    pub selected: usize,
    pub view: View,
    /// A line for the footer (the outcome of `e`, an error).
    pub message: Option<String>,
}

impl App {
    pub fn new(snap: Snapshot) -> App {
        App {
            snap,
            selected: 0,
            view: View::List,
            message: None,
        }
    }

    fn selected_row(&self) -> Option<&TopRow> {
        self.snap.rows.get(self.selected)
    }

    /// Take a new snapshot, keeping the cursor on the same session wherever it moved (an
    /// ended session moves up the list: the cursor goes with it, so a second `e` finds it
    /// ended rather than ending its neighbour).
    pub fn replace_snap(&mut self, snap: Snapshot) {
        let id = self.selected_row().map(|r| r.id.clone());
        self.snap = snap;
        let n = self.snap.rows.len();
        self.selected = id
            .and_then(|id| self.snap.rows.iter().position(|r| r.id == id))
            .unwrap_or(self.selected.min(n.saturating_sub(1)));
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing (pure)

fn status_style(status: &str) -> Style {
    match status {
        "running" => Style::default()
            .fg(Color::Green)
            .add_modifier(Modifier::BOLD),
        "queued" | "needs_approval" => Style::default().fg(Color::Yellow),
        "failed" | "stale" | "unreadable" => Style::default().fg(Color::Red),
        "completed" => Style::default().fg(Color::Blue),
        "cancelled" => Style::default().fg(Color::DarkGray),
        _ => Style::default(),
    }
}

/// Draw the dashboard.
pub fn render(f: &mut Frame, app: &App) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let s = &app.snap;
    let mut line2 = vec![Span::raw(format!(
        "{} session{} · {} running · tokens {} · cost {}",
        s.sessions,
        if s.sessions == 1 { "" } else { "s" },
        s.running,
        fmt_tokens(s.tokens),
        fmt_cost((s.cost > 0.0).then_some(s.cost))
    ))];
    line2.push(Span::raw(if s.budget.is_empty() {
        " · budget: no limits".to_string()
    } else {
        format!(" · budget: {}", s.budget.join(", "))
    }));
    if let Some(e) = &s.error {
        line2.push(Span::styled(
            format!(" · read failed: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    let header = Paragraph::new(vec![
        Line::from(vec![
            Span::styled("zwarm top", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(" · {}", s.state_dir)),
        ]),
        Line::from(line2),
    ]);
    f.render_widget(header, head);

    match &app.view {
        View::Transcript { id, lines, scroll } => {
            let text: Vec<Line> = lines.iter().map(|l| Line::raw(l.as_str())).collect();
            let p = Paragraph::new(text)
                .block(
                    Block::default()
                        .borders(Borders::TOP)
                        .title(format!(" transcript {} ", short_id(id))),
                )
                .wrap(Wrap { trim: false })
                .scroll((*scroll, 0));
            f.render_widget(p, body);
        }
        View::List | View::ConfirmEnd { .. } => render_table(f, app, body),
    }
    if let View::ConfirmEnd { id, status } = &app.view {
        let area = centered(body, 64, 5);
        f.render_widget(Clear, area);
        let text = vec![
            Line::raw(format!("End session {} ({status})?", short_id(id))),
            Line::raw("A running turn is interrupted first."),
            Line::styled(
                "[y] end as completed   [c] end as cancelled   [n] keep it",
                Style::default().add_modifier(Modifier::BOLD),
            ),
        ];
        f.render_widget(
            Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" end ")),
            area,
        );
    }
    let keys = match app.view {
        // The selected session waits for an answer: say how to give it.
        View::List
            if app
                .selected_row()
                .is_some_and(|r| r.status == "needs_approval") =>
        {
            "↑↓ select · a allow · d deny the ask · Enter transcript · e end · q quit"
        }
        View::List => "↑↓ select · Enter transcript · e end · q quit",
        View::Transcript { .. } => "↑↓ PgUp PgDn scroll · e end · Esc back · q quit",
        View::ConfirmEnd { .. } => "y / c end · n keep",
    };
    let mut foot_spans = vec![Span::styled(keys, Style::default().fg(Color::DarkGray))];
    if let Some(m) = &app.message {
        foot_spans.push(Span::raw(format!("  {m}")));
    }
    f.render_widget(Paragraph::new(Line::from(foot_spans)), foot);
}

fn render_table(f: &mut Frame, app: &App, area: Rect) {
    let s = &app.snap;
    if s.rows.is_empty() {
        f.render_widget(
            Paragraph::new("no sessions yet: delegate from your agent, or `zwarm run TASK`")
                .block(Block::default().borders(Borders::TOP)),
            area,
        );
        return;
    }
    let header = Row::new(
        [
            "ID",
            "STATUS",
            "ADAPTER",
            "BRANCH",
            "ELAPSED",
            "TOKENS",
            "COST",
            "LAST ACTIVITY",
            "TASK",
        ]
        .map(Cell::from),
    )
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = s.rows.iter().map(|r| {
        let last = match r.updated {
            Some(u) if !r.last.is_empty() => format!("{} ago · {}", super::fmt_age(u), r.last),
            Some(u) => format!("{} ago", super::fmt_age(u)),
            None => r.last.clone(),
        };
        Row::new(vec![
            Cell::from(short_id(&r.id).to_string()),
            Cell::from(r.status.clone()).style(status_style(&r.status)),
            Cell::from(r.adapter.clone()),
            Cell::from(r.branch.clone().unwrap_or_else(|| "-".into())),
            Cell::from(r.elapsed.map(fmt_duration).unwrap_or_else(|| "-".into())),
            Cell::from(fmt_tokens(r.tokens)),
            Cell::from(fmt_cost(r.cost)),
            Cell::from(last),
            Cell::from(r.task.clone()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(14),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Fill(3),
            Constraint::Fill(2),
        ],
    )
    .header(header)
    .block(Block::default().borders(Borders::TOP))
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(Some(app.selected.min(s.rows.len() - 1)));
    f.render_stateful_widget(table, area, &mut state);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The dashboard drawn into a plain-text grid (tests, the README capture).
pub fn render_to_text(app: &App, width: u16, height: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let Ok(mut term) = ratatui::Terminal::new(backend);
    if term.draw(|f| render(f, app)).is_err() {
        return String::new();
    }
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Keys

/// What a key press asks the loop to do beyond changing the view.
#[derive(Debug, PartialEq)]
pub enum Action {
    None,
    Quit,
    Open(String),
    End {
        id: String,
        verdict: &'static str,
    },
    /// Answer the permission request the session's turn waits on.
    Approve {
        id: String,
        allow: bool,
    },
}

/// Apply a key to the app (pure: no I/O).
pub fn on_key(app: &mut App, k: KeyEvent, page: u16) -> Action {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    let n = app.snap.rows.len();
    match &mut app.view {
        View::List => match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => app.selected = app.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                app.selected = (app.selected + 1).min(n.saturating_sub(1))
            }
            KeyCode::PageUp => app.selected = app.selected.saturating_sub(page as usize),
            KeyCode::PageDown => {
                app.selected = (app.selected + page as usize).min(n.saturating_sub(1))
            }
            KeyCode::Home => app.selected = 0,
            KeyCode::End => app.selected = n.saturating_sub(1),
            KeyCode::Enter => {
                if let Some(r) = app.selected_row() {
                    return Action::Open(r.id.clone());
                }
            }
            KeyCode::Char('e') => confirm_end(app),
            KeyCode::Char(c @ ('a' | 'd')) => match app.selected_row() {
                Some(r) if r.status == "needs_approval" => {
                    return Action::Approve {
                        id: r.id.clone(),
                        allow: c == 'a',
                    };
                }
                Some(r) => {
                    app.message = Some(format!(
                        "{} is not waiting for an approval",
                        short_id(&r.id)
                    ))
                }
                None => {}
            },
            _ => {}
        },
        View::Transcript { scroll, .. } => match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc | KeyCode::Left | KeyCode::Backspace => app.view = View::List,
            KeyCode::Up | KeyCode::Char('k') => *scroll = scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => *scroll = scroll.saturating_add(1),
            KeyCode::PageUp => *scroll = scroll.saturating_sub(page),
            KeyCode::PageDown | KeyCode::Char(' ') => *scroll = scroll.saturating_add(page),
            KeyCode::Home => *scroll = 0,
            KeyCode::Char('e') => confirm_end(app),
            _ => {}
        },
        View::ConfirmEnd { id, .. } => {
            let id = id.clone();
            app.view = View::List;
            let verdict = match k.code {
                KeyCode::Char('y') => "completed",
                KeyCode::Char('c') => "cancelled",
                _ => {
                    app.message = Some("kept".into());
                    return Action::None;
                }
            };
            app.message = Some(format!("ending {}…", short_id(&id)));
            return Action::End { id, verdict };
        }
    }
    Action::None
}

fn confirm_end(app: &mut App) {
    let target = match &app.view {
        View::Transcript { id, .. } => app.snap.rows.iter().find(|r| &r.id == id),
        _ => app.selected_row(),
    };
    match target {
        Some(r) if r.is_final => {
            app.message = Some(format!("{} has ended already", short_id(&r.id)))
        }
        Some(r) => {
            app.view = View::ConfirmEnd {
                id: r.id.clone(),
                status: r.status.clone(),
            }
        }
        None => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The loop

pub fn main(a: TopArgs) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let cfg = a.state.load()?;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("`zwarm top` needs a terminal; use `zwarm ps` (or `ps --json`) in scripts");
    }
    // The state may not exist yet: wait for the first server, showing an empty dashboard.
    let mut store: Option<ReadOnlyStore> = None;
    let mut totals = Totals::default();
    let mut app = App::new(Snapshot {
        state_dir: cfg.state_dir.display().to_string(),
        ..Default::default()
    });
    crossterm::terminal::enable_raw_mode()?;
    let _guard = TerminalGuard;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |p| {
        restore_terminal();
        hook(p);
    }));
    crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::EnterAlternateScreen,
        crossterm::cursor::Hide
    )?;
    let mut term =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut last_read: Option<Instant> = None;
    let mut dirty = true;
    loop {
        if last_read.is_none_or(|t| t.elapsed() >= REFRESH) {
            last_read = Some(Instant::now());
            if store.is_none() && ReadOnlyStore::exists(&cfg.state_dir) {
                store = ReadOnlyStore::open(&cfg.state_dir).ok();
            }
            if let Some(st) = &store {
                let snap = match snapshot(st, &mut totals, &cfg, a.limit.max(1), SystemTime::now())
                {
                    Ok(s) => s,
                    Err(e) => Snapshot {
                        error: Some(e.to_string()),
                        ..app.snap.clone()
                    },
                };
                if snap != app.snap {
                    app.replace_snap(snap);
                    dirty = true;
                }
                // A running session's transcript follows it.
                if let View::Transcript { id, lines, .. } = &mut app.view
                    && app.snap.rows.iter().any(|r| &r.id == id && r.active)
                    && let Ok(Some(s)) = st.load_session(id)
                {
                    let cut = super::show::unfinished(st.root(), &s);
                    let new = super::show::transcript_with(&s, false, &cut);
                    if &new != lines {
                        *lines = new;
                        dirty = true;
                    }
                }
            }
        }
        while let Ok(msg) = rx.try_recv() {
            app.message = Some(msg);
            last_read = None;
            dirty = true;
        }
        if dirty {
            term.draw(|f| render(f, &app))?;
            dirty = false;
        }
        let wait = last_read
            .map(|t| REFRESH.saturating_sub(t.elapsed()))
            .unwrap_or(Duration::ZERO);
        if !event::poll(wait)? {
            continue;
        }
        // Every event already queued is handled before the next draw (a held key redraws
        // once per burst, not once per repeat).
        loop {
            let quit = match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    dirty = true;
                    let page = term
                        .size()
                        .map(|s| s.height.saturating_sub(6))
                        .unwrap_or(10);
                    let action = on_key(&mut app, k, page.max(1));
                    act(action, &mut app, store.as_ref(), &a.state, &cfg, &tx)
                }
                Event::Resize(..) => {
                    dirty = true;
                    false
                }
                _ => false,
            };
            if quit {
                drop(term);
                return Ok(0);
            }
            if !event::poll(Duration::ZERO)? {
                break;
            }
        }
    }
}

/// Carry out what a key asked for; true to quit.
fn act(
    action: Action,
    app: &mut App,
    store: Option<&ReadOnlyStore>,
    state: &StateArgs,
    cfg: &Config,
    tx: &mpsc::Sender<String>,
) -> bool {
    match action {
        Action::None => {}
        Action::Quit => return true,
        Action::Open(id) => match store.map(|st| st.load_session(&id)) {
            Some(Ok(Some(s))) => {
                // Commands cut off mid-run show too (read from the turn's log).
                let cut = store
                    .map(|st| super::show::unfinished(st.root(), &s))
                    .unwrap_or_default();
                app.view = View::Transcript {
                    id,
                    lines: super::show::transcript_with(&s, false, &cut),
                    scroll: 0,
                }
            }
            Some(Err(e)) => app.message = Some(format!("cannot read it: {e}")),
            _ => app.message = Some("that session is gone".into()),
        },
        Action::End { id, verdict } => spawn_end(state, cfg, id, verdict, tx.clone()),
        Action::Approve { id, allow } => {
            use crate::acp::approval::{self, ApprovalDecision};
            let decision = if allow {
                ApprovalDecision::Allow
            } else {
                ApprovalDecision::Deny
            };
            let dir = approval::turn_dir(&cfg.state_dir, &id);
            app.message = Some(match approval::answer(&dir, None, decision, "person") {
                Ok(p) => format!(
                    "{} {}: {}",
                    if allow { "allowed" } else { "denied" },
                    short_id(&id),
                    p.title
                ),
                Err(e) => format!("{}: {e}", short_id(&id)),
            });
        }
    }
    false
}

/// End a session through `zwarm end` in a child process (the dashboard keeps drawing).
fn spawn_end(state: &StateArgs, cfg: &Config, id: String, verdict: &str, tx: mpsc::Sender<String>) {
    let exe = std::env::current_exe();
    let mut args: Vec<std::ffi::OsString> = vec!["end".into(), id.clone().into()];
    args.push("--verdict".into());
    args.push(verdict.into());
    args.extend(state.to_args(&cfg.state_dir));
    let cwd = cfg.project_dir.clone();
    std::thread::spawn(move || {
        let msg = match exe.and_then(|exe| {
            std::process::Command::new(exe)
                .args(&args)
                .current_dir(&cwd)
                .stdin(std::process::Stdio::null())
                .output()
        }) {
            Ok(o) => {
                let text = if o.status.success() {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                } else {
                    String::from_utf8_lossy(&o.stderr).into_owned()
                };
                one_line(text.trim().trim_start_matches("zwarm: "), 200)
            }
            Err(e) => format!("could not run `zwarm end`: {e}"),
        };
        let _ = tx.send(msg);
    });
}

mod read;
mod terminal;
#[cfg(test)]
mod tests;

pub use read::{Totals, snapshot};

use terminal::{TerminalGuard, restore_terminal};
