//! The executor's raw output for each turn: `turns/<id>/<n>.jsonl` (stdout) and `<n>.stderr`.
//!
//! These files are append-only and written by a blocking task of their own, so the turn's
//! supervisor only hands lines over a channel and never waits on the disk.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::{StoreError, create_private_dir, io};

enum Msg {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

/// The open log files of one running turn.
pub struct TurnLog {
    tx: Option<mpsc::Sender<Msg>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Where codex writes its final message (`-o`).
    pub last_message: PathBuf,
}

fn append(p: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
        .map_err(io(p))
}

impl TurnLog {
    /// Create the files (blocking: call from `spawn_blocking` or a non-async context).
    pub fn open(dir: &Path, turn: u32) -> Result<TurnLog, StoreError> {
        create_private_dir(dir)?;
        let out = append(&dir.join(format!("{turn}.jsonl")))?;
        let err = append(&dir.join(format!("{turn}.stderr")))?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let write = move || {
            let mut out = BufWriter::new(out);
            let mut err = BufWriter::new(err);
            let mut failed = false;
            let mut put = |w: &mut BufWriter<File>, b: &[u8]| {
                if let Err(e) = w.write_all(b)
                    && !failed
                {
                    failed = true;
                    tracing::error!(error = %e, "cannot write a turn log");
                }
            };
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some(m) = next {
                    match m {
                        Msg::Out(b) => put(&mut out, &b),
                        Msg::Err(b) => put(&mut err, &b),
                    }
                    next = rx.try_recv().ok();
                }
                let _ = out.flush();
                let _ = err.flush();
            }
            let _ = out.flush();
            let _ = err.flush();
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
            done: Some(done),
            last_message: dir.join(format!("{turn}.last-message")),
        })
    }

    /// Append one stdout line (a newline is added).
    pub fn out(&self, line: &[u8]) {
        let mut b = Vec::with_capacity(line.len() + 1);
        b.extend_from_slice(line);
        b.push(b'\n');
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Out(b));
        }
    }

    /// Append raw stderr bytes.
    pub fn err(&self, bytes: &[u8]) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Err(bytes.to_vec()));
        }
    }

    /// A second handle for the stderr reader task.
    pub fn stderr_sink(&self) -> StderrSink {
        StderrSink(self.tx.clone())
    }

    /// Flush and close (waits until everything handed over is written).
    pub async fn close(mut self) {
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
        if let Some(tx) = &self.0 {
            let _ = tx.send(Msg::Err(bytes.to_vec()));
        }
    }
}
