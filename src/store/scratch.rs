//! The files an executor writes for zwarm to read back after its turn (codex's `-o` last
//! message): `scratch/<instance>-<n>.last-message`, kept in a pool and used again by later
//! turns.
//!
//! Why a pool: such a file holds nothing once read (the runner empties it), and making a new
//! file for every turn was a large part of a trivial turn's cost: a file creation allocates an
//! inode, and on a filesystem without a journal each allocation first skips every inode
//! deleted in the last half-minute, so a state dir that saw many deletions paid up to a
//! millisecond per file (docs/benchmarks.md). A file taken from the pool costs one open, a
//! check and a truncate.
//!
//! A [`Scratch`] goes back to the pool when dropped; the engine drops it only after the
//! turn's leftover processes are gone, so nothing of one turn writes into the next turn's
//! file. The files are named after the server instance, so two servers on one state dir never
//! share one; a crashed server's files are removed by the next server to start
//! ([`super::Store::sweep_scratch`]). Taking a file never writes through whatever is found at its name: a symlink,
//! a folder, or a file with another link (planted to make zwarm empty its target) is removed
//! and replaced by a new private file; only a plain file of zwarm's own is emptied in place.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{StoreError, io, logs};

/// The pool of one server's read-back files.
pub(super) struct Pool {
    dir: PathBuf,
    prefix: String,
    free: parking_lot::Mutex<Vec<PathBuf>>,
    made: std::sync::atomic::AtomicU64,
    /// The folder, opened once made and checked (a failure is tried again at the next take:
    /// a folder that could not be made once, a full disk say, does not fail every later turn).
    opened: std::sync::OnceLock<File>,
}

/// One read-back file, lent to a turn until dropped.
pub struct Scratch {
    path: PathBuf,
    pool: Arc<Pool>,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let p = std::mem::take(&mut self.path);
        self.pool.free.lock().push(p);
    }
}

impl Pool {
    pub(super) fn new(dir: PathBuf, instance: &str) -> Pool {
        Pool {
            dir,
            prefix: instance.to_string(),
            free: parking_lot::Mutex::new(Vec::new()),
            made: std::sync::atomic::AtomicU64::new(0),
            opened: std::sync::OnceLock::new(),
        }
    }

    fn folder(&self) -> Result<&File, StoreError> {
        if let Some(f) = self.opened.get() {
            return Ok(f);
        }
        let f = logs::own_dir(&self.dir)?;
        Ok(self.opened.get_or_init(|| f))
    }

    /// An empty private file for one turn (blocking: call it off the async workers).
    pub(super) fn take(self: &Arc<Self>) -> Result<Scratch, StoreError> {
        let dir = self.folder()?;
        let reused = self.free.lock().pop();
        let path = match reused {
            Some(p) => p,
            None => {
                let n = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.dir.join(format!("{}-{n}.last-message", self.prefix))
            }
        };
        let taken = Scratch {
            path,
            pool: self.clone(),
        };
        ready(dir, taken.path())?;
        Ok(taken)
    }
}

impl Drop for Pool {
    /// The server's files go with it (best effort: a crash leaves a few empty files).
    fn drop(&mut self) {
        for p in self.free.get_mut().drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Remove the files of servers that are gone (a crash leaves its pool behind): every
/// `<instance>-<k>.last-message` in `dir` whose instance `alive` says is not running. Nothing
/// else there is touched, and nothing is followed. Returns how many were removed.
pub(super) fn sweep(dir: &Path, alive: impl Fn(&str) -> bool) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(instance) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".last-message"))
            .and_then(|n| n.rsplit_once('-'))
            .filter(|(i, k)| {
                super::valid_instance(i) && !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())
            })
            .map(|(i, _)| i)
        else {
            continue;
        };
        if !alive(instance) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Make `path` (in `dir`) an empty plain file of this user's, linked once, without writing
/// through anything found there.
fn ready(dir: &File, path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let name = path
        .file_name()
        .map(|n| CString::new(n.as_encoded_bytes()))
        .and_then(Result::ok)
        .ok_or_else(|| io(path)(std::io::Error::other("not a file name")))?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if let Ok(f) = logs::open_in(dir, path, libc::O_WRONLY | libc::O_NONBLOCK)
        && let Ok(m) = f.metadata()
        && m.is_file()
        && m.nlink() == 1
        && m.uid() == uid
    {
        return f.set_len(0).map_err(io(path));
    }
    // SAFETY: a valid folder descriptor and a NUL-terminated name.
    unsafe {
        libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0);
    }
    logs::open_in(dir, path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).map(drop)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test
    use super::*;

    /// A returned file is lent again, emptied; files in use are never shared.
    #[test]
    fn a_returned_file_is_lent_again_empty_and_files_in_use_are_distinct() {
        let d = tempfile::tempdir().unwrap();
        let pool = Arc::new(Pool::new(d.path().join("scratch"), "inst"));
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path(), "an answer").unwrap();
        let first = a.path().to_path_buf();
        drop(a);
        let c = pool.take().unwrap();
        assert_eq!(c.path(), first, "the returned file is used again");
        assert_eq!(std::fs::read(c.path()).unwrap(), b"", "and emptied");
        assert!(
            c.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("inst-")
        );
        drop((b, c));
        drop(pool);
        assert_eq!(
            std::fs::read_dir(d.path().join("scratch")).unwrap().count(),
            0,
            "a server's files go with it"
        );
    }

    /// Whatever was planted at a pooled name (a link to another file, a second hard link to
    /// one) is replaced, never emptied through.
    #[test]
    fn a_planted_link_is_replaced_not_written_through() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let pool = Arc::new(Pool::new(d.path().join("scratch"), "inst"));
        let victim = d.path().join("victim");
        for plant in ["symlink", "hard link"] {
            std::fs::write(&victim, "precious").unwrap();
            let a = pool.take().unwrap();
            let p = a.path().to_path_buf();
            drop(a);
            std::fs::remove_file(&p).unwrap();
            match plant {
                "symlink" => std::os::unix::fs::symlink(&victim, &p).unwrap(),
                _ => std::fs::hard_link(&victim, &p).unwrap(),
            }
            let b = pool.take().unwrap();
            assert_eq!(b.path(), p);
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert!(m.is_file() && m.nlink() == 1 && m.len() == 0, "{plant}");
            assert_eq!(
                std::fs::read_to_string(&victim).unwrap(),
                "precious",
                "{plant}"
            );
        }
    }

    /// A gone server's files are removed; a live one's, and anything else, stay.
    #[test]
    fn the_files_of_gone_servers_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let live = "11111111-1111-4111-8111-111111111111";
        let gone = "22222222-2222-4222-8222-222222222222";
        for n in [
            format!("{live}-0.last-message"),
            format!("{gone}-0.last-message"),
            format!("{gone}-12.last-message"),
            "notes.txt".to_string(),
            format!("{gone}-x.last-message"),
            "notes-1.last-message".to_string(),
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        assert_eq!(sweep(d.path(), |i| i == live), 2);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!("{live}-0.last-message"),
                format!("{gone}-x.last-message"),
                "notes-1.last-message".to_string(),
                "notes.txt".to_string()
            ]
        );
    }

    /// A folder that cannot be made at one take is tried again at the next.
    #[test]
    fn a_folder_that_could_not_be_made_is_tried_again() {
        let d = tempfile::tempdir().unwrap();
        let blocker = d.path().join("state");
        std::fs::write(&blocker, "not a folder").unwrap();
        let pool = Arc::new(Pool::new(blocker.join("scratch"), "inst"));
        assert!(pool.take().is_err());
        std::fs::remove_file(&blocker).unwrap();
        std::fs::create_dir(&blocker).unwrap();
        let a = pool.take().expect("taken once the folder can be made");
        assert!(a.path().is_file());
    }
}
