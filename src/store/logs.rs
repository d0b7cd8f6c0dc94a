//! The executor's raw output for each turn: `turns/<id>.<n>.jsonl` (stdout) and
//! `turns/<id>.<n>.stderr` (made only when the executor writes to stderr), in one folder for
//! all sessions: a new file costs an inode, a new folder an inode and a block, and on a
//! filesystem without a journal each allocation first skips every inode deleted in the last
//! half-minute, so a trivial turn's cost grew with every file made for it (docs/benchmarks.md).
//! Logs of zwarm 0.4.0 and earlier (`turns/<id>/<n>.jsonl`) are still read
//! ([`existing_files`]).
//!
//! These files are append-only and written by one thread for all turns ([`Writer`],
//! `zwarm-logs`), so a turn's supervisor only hands lines over a channel and never waits on
//! the disk. Lines are handed over in batches: [`TurnLog::out`] gathers them,
//! [`TurnLog::flush`] sends what was gathered (the supervisor calls it whenever the executor
//! has nothing more to read at once), so a burst of lines costs the writer one wake-up, not one
//! per line; the writer drains what all turns sent before it flushes. One thread, not one per
//! turn: a thread per running turn grew the blocking pool (and the contention on its lock)
//! with the number of turns, and cost a hand-off per turn to start. The price: a disk that
//! stalls holds every turn's log at once; it holds no turn, since a turn's end waits for its
//! log at most 2 s ([`TurnLog::close`]).
//!
//! They are created and opened without following symlinks, inside the folder zwarm made for
//! them (`turns`, 0700, refused when it or the state dir is a symlink or not a folder of this
//! user), so nothing found there can send a turn's output into another file. (Codex's
//! `-o` file is not here: see [`super::scratch`].)

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::{StoreError, create_private_dir, io};

/// Gathered stdout bytes that are handed to the writer without waiting for a flush.
pub const FLUSH_AT: usize = 64 * 1024;

enum Msg {
    Open(u64, Box<Open>),
    Out(u64, Vec<u8>),
    Err(u64, Vec<u8>),
    /// Everything of this log before it is written: the files are closed, and the sender
    /// told (none when the log was dropped without [`TurnLog::close`]).
    Close(u64, Option<tokio::sync::oneshot::Sender<()>>),
}

/// A turn's files, as the writer holds them.
struct Open {
    dir: File,
    out: BufWriter<File>,
    /// Made on the first stderr bytes: most turns write none, and a file creation is a large
    /// part of a trivial turn's cost (see docs/benchmarks.md).
    err: Option<BufWriter<File>>,
    /// Where stderr goes; taken when its file is made (tried once: a file that cannot be made
    /// is reported, not retried for every chunk).
    err_path: Option<PathBuf>,
    failed: bool,
}

impl Open {
    fn report(&mut self, e: &dyn std::fmt::Display) {
        if !self.failed {
            self.failed = true;
            tracing::error!(error = %e, "cannot write a turn log");
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
        if let Some(w) = self.err.as_mut() {
            let _ = w.flush();
        }
    }
}

/// The thread that writes every turn's raw log, started on first use; it ends when the store
/// (and every log) is gone.
#[derive(Default)]
pub(super) struct Writer {
    tx: std::sync::OnceLock<Result<mpsc::Sender<Msg>, String>>,
    next: std::sync::atomic::AtomicU64,
}

impl Writer {
    fn sender(&self) -> Result<mpsc::Sender<Msg>, StoreError> {
        self.tx
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Msg>();
                std::thread::Builder::new()
                    .name("zwarm-logs".into())
                    .spawn(move || write_logs(rx))
                    .map(|_| tx)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| io(Path::new("the turn-log writer thread"))(std::io::Error::other(e)))
    }
}

/// The writer's loop: whatever all turns sent is drained, then the files written to are
/// flushed, then it waits again.
fn write_logs(rx: mpsc::Receiver<Msg>) {
    let mut open: std::collections::HashMap<u64, Open> = std::collections::HashMap::new();
    let mut touched: Vec<u64> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Open(id, f) => {
                    open.insert(id, *f);
                }
                Msg::Out(id, b) => {
                    if let Some(f) = open.get_mut(&id) {
                        if let Err(e) = f.out.write_all(&b) {
                            f.report(&e);
                        }
                        touched.push(id);
                    }
                }
                Msg::Err(id, b) => {
                    if let Some(f) = open.get_mut(&id) {
                        if let Some(p) = f.err_path.take() {
                            match append(&f.dir, &p) {
                                Ok(file) => f.err = Some(BufWriter::new(file)),
                                Err(e) => f.report(&e),
                            }
                        }
                        if let Some(Err(e)) = f.err.as_mut().map(|w| w.write_all(&b)) {
                            f.report(&e);
                        }
                        touched.push(id);
                    }
                }
                Msg::Close(id, done) => {
                    if let Some(mut f) = open.remove(&id) {
                        f.flush();
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        for id in touched.drain(..) {
            if let Some(f) = open.get_mut(&id) {
                f.flush();
            }
        }
    }
}

/// The open log files of one running turn.
pub struct TurnLog {
    id: u64,
    tx: Option<mpsc::Sender<Msg>>,
    /// Stdout lines gathered since the last [`TurnLog::flush`].
    pending: parking_lot::Mutex<Vec<u8>>,
}

/// Where the raw log of turn `turn` of session `session` goes: `turns/<id>.<n>.jsonl` and
/// `turns/<id>.<n>.stderr`, side by side in one folder (a folder per session cost a directory
/// creation per new session; see the module doc).
pub fn files(turns: &Path, session: &str, turn: u32) -> (PathBuf, PathBuf) {
    (
        turns.join(format!("{session}.{turn}.jsonl")),
        turns.join(format!("{session}.{turn}.stderr")),
    )
}

/// [`files`], or where zwarm 0.4.0 and earlier wrote them (`turns/<id>/<n>.jsonl` and
/// `<n>.stderr`) when only those exist: what reading a turn's log looks at.
pub fn existing_files(turns: &Path, session: &str, turn: u32) -> (PathBuf, PathBuf) {
    let now = files(turns, session, turn);
    let old = turns.join(session);
    let was = (
        old.join(format!("{turn}.jsonl")),
        old.join(format!("{turn}.stderr")),
    );
    if std::fs::symlink_metadata(&now.0).is_err() && std::fs::symlink_metadata(&was.0).is_ok() {
        was
    } else {
        now
    }
}

/// The folder `dir` (made when missing), opened without following a symlink; refused unless
/// it and its parent are real folders of this user.
pub(super) fn own_dir(dir: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    create_private_dir(dir)?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let m = std::fs::symlink_metadata(d).map_err(io(d))?;
        if !m.is_dir() || m.uid() != uid {
            return Err(io(d)(std::io::Error::other(
                "not a folder zwarm made (a symlink, or another user's); zwarm writes no turn log through it",
            )));
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(io(dir))
}

/// Open `name` inside the open folder `dir` without following a symlink.
pub(super) fn open_in(dir: &File, path: &Path, flags: i32) -> Result<File, StoreError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = path
        .file_name()
        .map(|n| std::ffi::CString::new(n.as_encoded_bytes()))
        .and_then(Result::ok)
        .ok_or_else(|| io(path)(std::io::Error::other("not a file name")))?;
    // SAFETY: a valid folder descriptor and a NUL-terminated name; the descriptor returned is
    // ours alone.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(io(path)(if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other("it is a symlink; zwarm writes no turn log through one")
        } else {
            e
        }));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn append(dir: &File, p: &Path) -> Result<File, StoreError> {
    open_in(dir, p, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT)
}

impl TurnLog {
    /// Create the files (blocking: call from `spawn_blocking` or a non-async context); what is
    /// written to them goes through `writer`.
    /// `at`: the stdout and stderr files ([`files`], or [`existing_files`] to go on with a
    /// log), in a folder of zwarm's.
    pub(super) fn open(writer: &Writer, at: (PathBuf, PathBuf)) -> Result<TurnLog, StoreError> {
        let (out_path, err_path) = at;
        let folder = out_path.parent().unwrap_or(Path::new("/"));
        let d = own_dir(folder)?;
        let out = append(&d, &out_path)?;
        let tx = writer.sender()?;
        let id = writer
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let files = Open {
            dir: d,
            out: BufWriter::new(out),
            err: None,
            err_path: Some(err_path),
            failed: false,
        };
        tx.send(Msg::Open(id, Box::new(files))).map_err(|_| {
            io(Path::new("the turn-log writer thread"))(std::io::Error::other("it has stopped"))
        })?;
        Ok(TurnLog {
            id,
            tx: Some(tx),
            pending: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Append one stdout line (a newline is added). Gathered until [`TurnLog::flush`] (or
    /// until [`FLUSH_AT`] bytes are waiting).
    pub fn out(&self, line: &[u8]) {
        let full = {
            let mut p = self.pending.lock();
            p.extend_from_slice(line);
            p.push(b'\n');
            p.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    /// Whether stdout lines are waiting for [`TurnLog::flush`].
    pub fn has_pending(&self) -> bool {
        !self.pending.lock().is_empty()
    }

    /// Hand the gathered stdout lines to the writer.
    pub fn flush(&self) {
        let b = std::mem::take(&mut *self.pending.lock());
        if let Some(tx) = self.tx.as_ref().filter(|_| !b.is_empty()) {
            let _ = tx.send(Msg::Out(self.id, b));
        }
    }

    /// Append raw stderr bytes.
    pub fn err(&self, bytes: &[u8]) {
        if let Some(tx) = self.tx.as_ref().filter(|_| !bytes.is_empty()) {
            let _ = tx.send(Msg::Err(self.id, bytes.to_vec()));
        }
    }

    /// A second handle for the stderr reader task.
    pub fn stderr_sink(&self) -> StderrSink {
        StderrSink(self.id, self.tx.clone())
    }

    /// Flush and close (waits until everything handed over is written). Stderr bytes handed
    /// over after this (a grandchild that kept the pipe) are not written.
    pub async fn close(mut self) {
        self.flush();
        if let Some(tx) = self.tx.take() {
            let (done_tx, done) = tokio::sync::oneshot::channel();
            if tx.send(Msg::Close(self.id, Some(done_tx))).is_ok() {
                // Bounded: a writer stuck on a slow disk does not hold the turn's end.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), done).await;
            }
        }
    }
}

impl Drop for TurnLog {
    /// A log given up without [`TurnLog::close`] (a turn that failed before its executor
    /// started) still has its files closed by the writer.
    fn drop(&mut self) {
        // After `close` there is nothing gathered and no sender left: this does nothing.
        self.flush();
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Close(self.id, None));
        }
    }
}

/// Where the stderr reader hands its bytes.
pub struct StderrSink(u64, Option<mpsc::Sender<Msg>>);

impl StderrSink {
    pub fn write(&self, bytes: &[u8]) {
        if let Some(tx) = self.1.as_ref().filter(|_| !bytes.is_empty()) {
            let _ = tx.send(Msg::Err(self.0, bytes.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test
    use super::*;

    /// Lines are gathered until a flush (or until FLUSH_AT bytes wait), then written in
    /// order; close writes what is still gathered.
    #[tokio::test]
    async fn lines_are_gathered_then_written_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let turns = dir.path().join("turns");
        create_private_dir(&turns).expect("turns");
        let writer = Writer::default();
        let log = TurnLog::open(&writer, files(&turns, "s1", 1)).expect("open");
        assert!(!log.has_pending());
        log.out(b"{\"a\":1}");
        log.out(b"{\"b\":2}");
        assert!(log.has_pending());
        log.flush();
        assert!(!log.has_pending());
        // A burst past FLUSH_AT is handed over without waiting for a flush.
        let big = vec![b'x'; FLUSH_AT];
        log.out(&big);
        assert!(!log.has_pending());
        log.out(b"{\"c\":3}");
        assert!(log.has_pending());
        log.close().await;
        let text = std::fs::read(turns.join("s1.1.jsonl")).expect("read");
        let mut want = b"{\"a\":1}\n{\"b\":2}\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"\n{\"c\":3}\n");
        assert_eq!(text, want);
    }

    /// One writer serves every turn: two logs open at once, written in turns, each get only
    /// their own lines; a stderr file is made only for the turn that wrote to stderr; a log
    /// closed early does not hold up the other.
    #[tokio::test]
    async fn one_writer_keeps_each_turns_lines_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let turns = dir.path().join("turns");
        create_private_dir(&turns).expect("turns");
        let writer = Writer::default();
        let a = TurnLog::open(&writer, files(&turns, "sa", 1)).expect("open a");
        let b = TurnLog::open(&writer, files(&turns, "sb", 3)).expect("open b");
        for i in 0..50 {
            a.out(format!("a{i}").as_bytes());
            b.out(format!("b{i}").as_bytes());
            if i % 7 == 0 {
                a.flush();
                b.flush();
            }
        }
        b.stderr_sink().write(b"warning: b\n");
        a.close().await;
        let read = |p: &str| std::fs::read_to_string(turns.join(p)).expect(p);
        let want = |k: &str| (0..50).map(|i| format!("{k}{i}\n")).collect::<String>();
        assert_eq!(read("sa.1.jsonl"), want("a"));
        assert!(!turns.join("sa.1.stderr").exists());
        b.out(b"b-last");
        b.close().await;
        assert_eq!(read("sb.3.jsonl"), want("b") + "b-last\n");
        assert_eq!(read("sb.3.stderr"), "warning: b\n");
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["sb.3.stderr", "sb.3.jsonl"] {
                let m = std::fs::metadata(turns.join(f)).expect(f);
                assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
            }
        }

        // A log dropped without close: what it gathered is written, and the writer lets its
        // files go (the next close, queued behind, returns once that is done).
        let c = TurnLog::open(&writer, files(&turns, "sc", 1)).expect("open c");
        c.out(b"gathered");
        drop(c);
        TurnLog::open(&writer, files(&turns, "sd", 1))
            .expect("open d")
            .close()
            .await;
        assert_eq!(read("sc.1.jsonl"), "gathered\n");
    }

    /// A turn's log is read (and a turn a dead server started goes on) where this version
    /// writes it, or where 0.4.0 and earlier wrote it when only that exists.
    #[tokio::test]
    async fn logs_are_read_from_the_old_layout_when_only_it_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let turns = dir.path();
        let (now, now_err) = files(turns, "s", 2);
        assert_eq!(now, turns.join("s.2.jsonl"));
        assert_eq!(now_err, turns.join("s.2.stderr"));
        assert_eq!(
            existing_files(turns, "s", 2).0,
            now,
            "neither: where it will be"
        );
        std::fs::create_dir(turns.join("s")).expect("old folder");
        std::fs::write(turns.join("s").join("2.jsonl"), "old\n").expect("old log");
        let (was, was_err) = existing_files(turns, "s", 2);
        assert_eq!(was, turns.join("s").join("2.jsonl"));
        assert_eq!(was_err, turns.join("s").join("2.stderr"));
        // A turn a dead server of 0.4.0 started goes on in its log.
        let writer = Writer::default();
        let log = TurnLog::open(&writer, existing_files(turns, "s", 2)).expect("open");
        log.out(b"more");
        log.close().await;
        assert_eq!(
            std::fs::read_to_string(turns.join("s").join("2.jsonl")).expect("read"),
            "old\nmore\n"
        );
        std::fs::write(&now, "new\n").expect("new log");
        assert_eq!(existing_files(turns, "s", 2).0, now, "both: this version's");
    }
}
