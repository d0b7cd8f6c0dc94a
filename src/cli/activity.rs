//! What an executor did in a turn, read back from the turn's raw log on the state dir
//! (`turns/<id>.<n>.jsonl`, the executor's stdout, and `turns/<id>.<n>.stderr`), with the executor's own
//! parser. The session record keeps what finished (commands with their exit codes, files,
//! messages); the raw log also holds what started and never finished (a command cut off by
//! `end` or Ctrl-C), and it is written as the executor prints, so `logs -f` can follow it.
//!
//! Read-only: nothing here writes to the state dir.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::event::ExecutorEvent;
use crate::executor::{Parser, parse_stderr_line};
use crate::model::Adapter;

/// Most bytes one [`TurnReader::read_new`] call reads from each file.
const READ_MAX: u64 = 4 * 1024 * 1024;
/// Longest line kept (longer lines are cut; the parser then skips them).
const LINE_MAX: usize = 1024 * 1024;

/// The raw log files of one turn: (stdout as JSON lines, stderr).
pub fn turn_files(state: &Path, id: &str, turn: u32) -> Option<(PathBuf, PathBuf)> {
    if !crate::model::valid_id(id) {
        return None;
    }
    Some(crate::store::logs::existing_files(
        &state.join("turns"),
        id,
        turn,
    ))
}

/// One file read from where the last read stopped, in whole lines.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The whole lines appended since the last call (a missing file has none yet).
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let n = match f.take(READ_MAX).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(_) => return Vec::new(),
        };
        self.offset += n as u64;
        let mut out = Vec::new();
        let mut rest = buf.as_slice();
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let room = LINE_MAX.saturating_sub(self.partial.len());
            self.partial.extend_from_slice(&rest[..nl.min(room)]);
            out.push(String::from_utf8_lossy(&self.partial).into_owned());
            self.partial.clear();
            rest = &rest[nl + 1..];
        }
        let room = LINE_MAX.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&rest[..rest.len().min(room)]);
        out
    }
}

/// Follows one turn's raw log: each call returns the executor events logged since the last.
pub struct TurnReader {
    adapter: Adapter,
    parser: Parser,
    out: Tail,
    err: Tail,
}

impl TurnReader {
    /// `None` for an id that is not a session id (nothing outside the state dir is read).
    pub fn new(state: &Path, id: &str, turn: u32, adapter: Adapter) -> Option<TurnReader> {
        let (out, err) = turn_files(state, id, turn)?;
        Some(TurnReader {
            adapter,
            parser: Parser::new(adapter),
            out: Tail::new(out),
            err: Tail::new(err),
        })
    }

    /// The events in what was appended since the last call: stdout's first, then the tool
    /// errors codex logs only on stderr.
    pub fn read_new(&mut self) -> Vec<ExecutorEvent> {
        let mut evs = Vec::new();
        for l in self.out.lines() {
            evs.extend(self.parser.parse_line(&l));
        }
        for l in self.err.lines() {
            if let Some(ev) = parse_stderr_line(self.adapter, &l) {
                evs.push(ev);
            }
        }
        evs
    }
}

/// Every event of a turn's raw log (empty when it is gone, e.g. after `zwarm prune`).
pub fn read_turn(state: &Path, id: &str, turn: u32, adapter: Adapter) -> Vec<ExecutorEvent> {
    let Some(mut r) = TurnReader::new(state, id, turn, adapter) else {
        return Vec::new();
    };
    let mut all = Vec::new();
    loop {
        let before = (r.out.offset, r.err.offset);
        all.extend(r.read_new());
        if (r.out.offset, r.err.offset) == before {
            return all;
        }
    }
}

/// The commands that started and never finished, in order.
pub fn unfinished_commands(events: &[ExecutorEvent]) -> Vec<String> {
    let mut open: Vec<(String, String)> = Vec::new();
    for ev in events {
        match ev {
            ExecutorEvent::CommandStarted { id, command } => {
                open.push((id.clone(), command.clone()))
            }
            ExecutorEvent::CommandFinished { id, .. } => open.retain(|(i, _)| i != id),
            _ => {}
        }
    }
    open.into_iter().map(|(_, c)| c).collect()
}

/// An event as one line of activity for a person (`logs`), or `None` for the ones that only
/// say something is happening (a command starting, reasoning, a turn's start and end, which
/// the event log records).
pub fn activity_line(adapter: &str, ev: &ExecutorEvent) -> Option<String> {
    match ev {
        ExecutorEvent::CommandFinished { .. }
        | ExecutorEvent::FilesChanged { .. }
        | ExecutorEvent::AgentMessage { .. }
        | ExecutorEvent::ToolCall { .. }
        | ExecutorEvent::PermissionDenied(_)
        | ExecutorEvent::ToolFailed(_)
        | ExecutorEvent::Warning { .. } => ev.summary(adapter),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_never_finished_is_found() {
        let evs = vec![
            ExecutorEvent::CommandStarted {
                id: "a".into(),
                command: "ls".into(),
            },
            ExecutorEvent::CommandFinished {
                id: "a".into(),
                command: "ls".into(),
                exit_code: Some(0),
                output: String::new(),
                ok: true,
            },
            ExecutorEvent::CommandStarted {
                id: "b".into(),
                command: "sleep 60".into(),
            },
        ];
        assert_eq!(unfinished_commands(&evs), vec!["sleep 60".to_string()]);
    }

    #[test]
    fn lines_are_read_whole_and_only_once() {
        let dir = std::env::temp_dir().join(format!("zwarm-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("1.jsonl");
        std::fs::write(&p, "one\ntw").expect("write");
        let mut t = Tail::new(p.clone());
        assert_eq!(t.lines(), vec!["one".to_string()]);
        std::fs::write(&p, "one\ntwo\n").expect("write");
        assert_eq!(t.lines(), vec!["two".to_string()]);
        assert!(t.lines().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(turn_files(&dir, "../x", 1).is_none());
    }
}
