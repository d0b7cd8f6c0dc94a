//! The per-session state dir a container turn sees: the executor's home and config dirs, kept
//! between turns so `codex exec resume` and `claude --resume` find their threads, and the
//! files zwarm reads back.

use std::path::{Path, PathBuf};

use crate::executor::StateDir;

#[derive(Debug, Clone)]
pub(crate) struct SessionDirs {
    pub root: PathBuf,
    pub home: PathBuf,
    /// Each registered executor's state dir, in this session's state.
    pub executors: Vec<(StateDir, PathBuf)>,
    pub out: PathBuf,
}

impl SessionDirs {
    pub fn new(state_root: &Path, session: &str) -> SessionDirs {
        let root = state_root.join(session);
        SessionDirs {
            home: root.join("home"),
            executors: crate::executor::portable::state_dirs()
                .into_iter()
                .map(|d| (d, root.join(d.name)))
                .collect(),
            out: root.join("out"),
            root,
        }
    }

    /// Create the dirs (private to zwarm's user) and copy each executor's carried config in
    /// (the model provider, the login; nothing else of the user's config dirs). `env_set` is
    /// the executor's own environment for the turn, which may name its config dirs.
    pub fn prepare(&self, env_set: &[(String, String)]) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(&self.root)?;
        let dirs = [&self.home, &self.out]
            .into_iter()
            .chain(self.executors.iter().map(|(_, p)| p));
        for d in dirs {
            // The executor can replace these with links (they are writable inside its
            // container); zwarm writes into them, so a link is removed, never followed.
            if std::fs::symlink_metadata(d).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(d)?;
            }
            b.create(d)?;
        }
        for (d, to) in &self.executors {
            copy_files(d.source(env_set).as_deref(), to, d.carried)?;
        }
        Ok(())
    }
}

fn copy_files(from: Option<&Path>, to: &Path, names: &[&str]) -> std::io::Result<()> {
    let Some(from) = from else { return Ok(()) };
    if from == to {
        return Ok(());
    }
    for name in names {
        let src = from.join(name);
        if std::fs::metadata(&src).is_ok_and(|m| m.is_file()) {
            let dst = to.join(name);
            // Never through a link the executor may have planted in its state.
            let _ = std::fs::remove_file(&dst);
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Read a file the executor wrote for zwarm: a regular file only (no link followed), at most
/// `limit` bytes; removed afterwards. `None` when missing, empty or not a plain file.
pub(crate) fn read_back(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // The container is gone by now; its out dir must still be a dir, not a link it left
    // (which would lead the read and the removal outside).
    let parent_is_dir = path
        .parent()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.is_dir());
    if !parent_is_dir {
        return None;
    }
    let text = (|| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let mut s = String::new();
        f.take(limit).read_to_string(&mut s).ok()?;
        Some(s).filter(|s| !s.trim().is_empty())
    })();
    let _ = std::fs::remove_file(path);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session's dir of the executor that `var` points at.
    fn dir_of(d: &SessionDirs, var: &str) -> PathBuf {
        d.executors
            .iter()
            .find(|(s, _)| s.env == var)
            .map(|(_, p)| p.clone())
            .unwrap()
    }

    #[test]
    fn prepare_copies_only_the_listed_config() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("codex-src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("config.toml"), "model = \"x\"").unwrap();
        std::fs::write(src.join("history.jsonl"), "secret").unwrap();
        let d = SessionDirs::new(&t.path().join("state"), "s1");
        d.prepare(&[("CODEX_HOME".into(), src.display().to_string())])
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir_of(&d, "CODEX_HOME").join("config.toml")).unwrap(),
            "model = \"x\""
        );
        assert!(!dir_of(&d, "CODEX_HOME").join("history.jsonl").exists());
        assert!(d.out.is_dir() && d.home.is_dir() && dir_of(&d, "CLAUDE_CONFIG_DIR").is_dir());
    }

    #[test]
    fn a_state_dir_replaced_by_a_link_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("users-codex");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("config.toml"), "the user's").unwrap();
        let d = SessionDirs::new(&t.path().join("state"), "s1");
        d.prepare(&[]).unwrap();
        std::fs::remove_dir(dir_of(&d, "CODEX_HOME")).unwrap();
        std::os::unix::fs::symlink(&victim, dir_of(&d, "CODEX_HOME")).unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("config.toml"), "zwarm's copy").unwrap();
        d.prepare(&[("CODEX_HOME".into(), src.display().to_string())])
            .unwrap();
        assert!(
            std::fs::symlink_metadata(dir_of(&d, "CODEX_HOME"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(
            std::fs::read_to_string(victim.join("config.toml")).unwrap(),
            "the user's"
        );
        assert_eq!(
            std::fs::read_to_string(dir_of(&d, "CODEX_HOME").join("config.toml")).unwrap(),
            "zwarm's copy"
        );
    }

    #[test]
    fn read_back_refuses_links_and_removes_the_file() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        let link = t.path().join("last");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(read_back(&link, 1 << 20), None);
        assert!(secret.exists());
        let f = t.path().join("msg");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_back(&f, 3).as_deref(), Some("hel"));
        assert!(!f.exists());
    }
}
