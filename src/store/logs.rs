//! The executor's raw output for each turn: `turns/<id>/<n>.jsonl` (stdout) and `<n>.stderr`
//! (made only when the executor writes to stderr).
//!
//! These files are append-only and written by a blocking task of their own, so the turn's
//! supervisor only hands lines over a channel and never waits on the disk. Lines are handed
//! over in batches: [`TurnLog::out`] gathers them, [`TurnLog::flush`] sends what was gathered
//! (the supervisor calls it whenever the executor has nothing more to read at once), so a
//! burst of lines costs the writer one wake-up, not one per line.
//!
//! They are created and opened without following symlinks, inside the folder zwarm made for
//! the session (`turns/<id>`, 0700, refused when it or `turns` is a symlink or not a folder of
//! this user), so nothing found there can send a turn's output into another file. The same
//! holds for codex's `-o` file: zwarm creates it empty before the turn.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::{StoreError, create_private_dir, io};

/// Gathered stdout bytes that are handed to the writer without waiting for a flush.
pub const FLUSH_AT: usize = 64 * 1024;

enum Msg {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

/// The open log files of one running turn.
pub struct TurnLog {
    tx: Option<mpsc::Sender<Msg>>,
    /// Stdout lines gathered since the last [`TurnLog::flush`].
    pending: parking_lot::Mutex<Vec<u8>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Where codex writes its final message (`-o`).
    pub last_message: PathBuf,
}

/// The folder `dir` (made when missing), opened without following a symlink; refused unless
/// it and its parent are real folders of this user.
fn own_dir(dir: &Path) -> Result<File, StoreError> {
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
fn open_in(dir: &File, path: &Path, flags: i32) -> Result<File, StoreError> {
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

/// Make codex's `-o` file: whatever is at `p` is removed, and an empty private file made.
fn fresh(dir: &File, p: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    if let Some(name) = p
        .file_name()
        .and_then(|n| std::ffi::CString::new(n.as_encoded_bytes()).ok())
    {
        // SAFETY: a valid folder descriptor and a NUL-terminated name.
        unsafe {
            libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0);
        }
    }
    open_in(dir, p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).map(drop)
}

impl TurnLog {
    /// Create the files (blocking: call from `spawn_blocking` or a non-async context).
    pub fn open(dir: &Path, turn: u32) -> Result<TurnLog, StoreError> {
        let d = own_dir(dir)?;
        let out = append(&d, &dir.join(format!("{turn}.jsonl")))?;
        let mut err_path = Some(dir.join(format!("{turn}.stderr")));
        let last_message = dir.join(format!("{turn}.last-message"));
        fresh(&d, &last_message)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let write = move || {
            let mut out = BufWriter::new(out);
            // Made on the first stderr bytes: most turns write none, and a file creation is
            // a large part of a trivial turn's cost (see docs/benchmarks.md).
            let mut err: Option<BufWriter<File>> = None;
            let mut failed = false;
            let mut report = |e: &dyn std::fmt::Display| {
                if !failed {
                    failed = true;
                    tracing::error!(error = %e, "cannot write a turn log");
                }
            };
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some(m) = next {
                    match m {
                        Msg::Out(b) => {
                            if let Err(e) = out.write_all(&b) {
                                report(&e);
                            }
                        }
                        Msg::Err(b) => {
                            // Tried once: a file that cannot be made is reported, not retried
                            // for every chunk.
                            if let Some(p) = err_path.take() {
                                match append(&d, &p) {
                                    Ok(f) => err = Some(BufWriter::new(f)),
                                    Err(e) => report(&e),
                                }
                            }
                            if let Some(Err(e)) = err.as_mut().map(|w| w.write_all(&b)) {
                                report(&e);
                            }
                        }
                    }
                    next = rx.try_recv().ok();
                }
                let _ = out.flush();
                if let Some(w) = err.as_mut() {
                    let _ = w.flush();
                }
            }
            let _ = out.flush();
            if let Some(w) = err.as_mut() {
                let _ = w.flush();
            }
            let _ = done_tx.send(());
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(write);
            }
            Err(_) => {
                std::thread::spawn(write);
            }
        }
        Ok(TurnLog {
            tx: Some(tx),
            pending: parking_lot::Mutex::new(Vec::new()),
            done: Some(done),
            last_message,
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
            let _ = tx.send(Msg::Out(b));
        }
    }

    /// Append raw stderr bytes.
    pub fn err(&self, bytes: &[u8]) {
        if let Some(tx) = self.tx.as_ref().filter(|_| !bytes.is_empty()) {
            let _ = tx.send(Msg::Err(bytes.to_vec()));
        }
    }

    /// A second handle for the stderr reader task.
    pub fn stderr_sink(&self) -> StderrSink {
        StderrSink(self.tx.clone())
    }

    /// Flush and close (waits until everything handed over is written).
    pub async fn close(mut self) {
        self.flush();
        self.tx = None;
        if let Some(done) = self.done.take() {
            // A grandchild may still hold stderr open (and with it a sender): do not wait
            // for it past a short bound; what was handed over is written either way.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), done).await;
        }
    }
}

/// Where the stderr reader hands its bytes.
pub struct StderrSink(Option<mpsc::Sender<Msg>>);

impl StderrSink {
    pub fn write(&self, bytes: &[u8]) {
        if let Some(tx) = self.0.as_ref().filter(|_| !bytes.is_empty()) {
            let _ = tx.send(Msg::Err(bytes.to_vec()));
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
        let log = TurnLog::open(&turns.join("s1"), 1).expect("open");
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
        let text = std::fs::read(turns.join("s1").join("1.jsonl")).expect("read");
        let mut want = b"{\"a\":1}\n{\"b\":2}\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"\n{\"c\":3}\n");
        assert_eq!(text, want);
    }
}
