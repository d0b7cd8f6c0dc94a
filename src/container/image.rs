//! `zwarm image build`: the executor image from this machine's own files, no registry needed.
//!
//! The image's root filesystem is a tar stream made here and imported by the daemon (the
//! Engine API's `docker import`): this machine's `bash`, coreutils, `git` and friends with
//! every shared library they load (as `ldd` lists them) and the dynamic loader; codex's native
//! binary with the files of its platform package beside it (`codex-resources/`,
//! `codex-path/`) under `/opt/codex`; claude's native binary with its libraries; the native
//! ACP agents found (opencode) with the `zwarm-acp` bridge that runs them; a minimal
//! `/etc`. `PATH=/usr/local/bin:/usr/bin:/bin`, `HOME=/tmp`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use crate::executor::ImageRecipe;

/// Programs the executors' tool commands commonly need.
pub const PROGRAMS: &[&str] = &[
    "bash", "sh", "dash", "env", "cat", "ls", "mkdir", "rm", "cp", "mv", "touch", "echo", "printf",
    "head", "tail", "tr", "sleep", "true", "false", "pwd", "id", "grep", "sed", "wc", "sort",
    "uniq", "find", "xargs", "dirname", "basename", "readlink", "realpath", "stat", "test",
    "chmod", "ln", "date", "uname", "tee", "timeout", "kill", "ps", "diff", "cut", "awk", "git",
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "{cli} at {path} is not a native binary (a script?), and the image has no interpreter: {hint}"
    )]
    NotNative {
        cli: String,
        path: String,
        hint: &'static str,
    },
    #[error("reading {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("the path {0} is too long for the image's tar stream")]
    LongPath(String),
    #[error("no executor CLI to put in the image: install codex or claude first")]
    NoCli,
    #[error("the daemon refused the image: {0}")]
    Import(String),
    #[error("{0}")]
    Daemon(#[from] super::ContainerError),
}

/// One file of the image.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Dir(u32),
    /// A host file copied (links resolved), with its mode.
    File(PathBuf, u32),
    Text(String, u32),
    Link(String),
}

/// What goes into the image: paths inside it (absolute, `/`-separated) and their contents.
#[derive(Debug, Default)]
pub struct Plan {
    entries: BTreeMap<String, Entry>,
    /// What each executor CLI is in the image, for the report.
    pub clis: Vec<(String, String)>,
}

impl Plan {
    /// The base system: the programs found on this machine, the loader, `/etc`.
    pub fn base() -> Plan {
        let mut p = Plan::default();
        for d in [
            "/bin",
            "/usr/bin",
            "/usr/local/bin",
            "/tmp",
            "/etc",
            "/root",
            "/proc",
            "/sys",
            "/dev",
        ] {
            p.entries.insert(d.into(), Entry::Dir(0o755));
        }
        p.entries.insert("/tmp".into(), Entry::Dir(0o1777));
        for name in PROGRAMS {
            if let Ok(f) = which::which(name)
                && let Ok(real) = std::fs::canonicalize(&f)
            {
                p.add_program(&real, &format!("/usr/bin/{name}"));
            }
        }
        for name in ["bash", "sh"] {
            p.entries.insert(
                format!("/bin/{name}"),
                Entry::Link(format!("/usr/bin/{name}")),
            );
        }
        if let Ok(o) = std::process::Command::new("git")
            .arg("--exec-path")
            .output()
        {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if dir.starts_with('/') {
                p.entries.insert(dir, Entry::Dir(0o755));
            }
        }
        let text = |s: &str| Entry::Text(s.into(), 0o644);
        p.entries.insert(
            "/etc/passwd".into(),
            text("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n"),
        );
        p.entries
            .insert("/etc/group".into(), text("root:x:0:\nnogroup:x:65534:\n"));
        p.entries
            .insert("/etc/nsswitch.conf".into(), text("hosts: files dns\n"));
        p.entries.insert(
            "/etc/hosts".into(),
            text("127.0.0.1 localhost\n::1 localhost\n"),
        );
        // TLS roots, so the CLIs can reach a real provider when the network allows it.
        let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if let Ok(real) = std::fs::canonicalize(ca) {
            p.entries
                .insert(ca.display().to_string(), Entry::File(real, 0o644));
        }
        p
    }

    /// A host program at `dest`, with every shared library it loads at its own path.
    fn add_program(&mut self, real: &Path, dest: &str) {
        let mode = std::fs::metadata(real)
            .map(|m| m.mode() & 0o7777)
            .unwrap_or(0o755);
        self.entries
            .insert(dest.into(), Entry::File(real.to_path_buf(), mode));
        for lib in shared_libraries(real) {
            if let Ok(r) = std::fs::canonicalize(&lib) {
                self.entries
                    .entry(lib.display().to_string())
                    .or_insert(Entry::File(r, 0o755));
            }
        }
    }

    /// An executor's program as `/usr/local/bin/<name>`, by its [`ImageRecipe`]: its native
    /// binary with its libraries, or, where the binary sits in a platform package (codex's
    /// `<triple>/bin/codex` beside `codex-resources/`), the whole package under `/opt/<name>`
    /// with a link to the binary. A script is refused with what to install instead (the image
    /// has no interpreter).
    pub fn add_executor(
        &mut self,
        name: &str,
        program: &Path,
        recipe: &ImageRecipe,
    ) -> Result<(), ImageError> {
        let real = native_binary(name, program, recipe.native_hint)?;
        let dest = format!("/usr/local/bin/{name}");
        let pkg = real.parent().and_then(Path::parent);
        let file = real.file_name().map(|f| f.to_string_lossy().into_owned());
        match (pkg, file) {
            (Some(pkg), Some(file)) if recipe.package_dirs.iter().any(|d| pkg.join(d).is_dir()) => {
                let opt = format!("/opt/{name}");
                self.add_tree(pkg, &opt)?;
                self.entries
                    .insert(dest, Entry::Link(format!("{opt}/bin/{file}")));
            }
            _ => self.add_program(&real, &dest),
        }
        self.clis.push((name.into(), real.display().to_string()));
        Ok(())
    }

    /// The ACP bridge (`zwarm-acp`), which runs the ACP agents' turns, with its libraries.
    pub fn add_bridge(&mut self, bridge: &Path) -> Result<(), ImageError> {
        let real = std::fs::canonicalize(bridge).map_err(|err| read_err(bridge, err))?;
        self.add_program(
            &real,
            &format!("/usr/local/bin/{}", crate::executor::acp::BRIDGE_NAME),
        );
        Ok(())
    }

    fn add_tree(&mut self, from: &Path, to: &str) -> Result<(), ImageError> {
        self.entries.insert(to.into(), Entry::Dir(0o755));
        let rd = std::fs::read_dir(from).map_err(|err| read_err(from, err))?;
        for e in rd.flatten() {
            let path = e.path();
            let dest = format!("{to}/{}", e.file_name().to_string_lossy());
            let meta = std::fs::metadata(&path).map_err(|err| read_err(&path, err))?;
            if meta.is_dir() {
                self.add_tree(&path, &dest)?;
            } else if meta.is_file() {
                let real = std::fs::canonicalize(&path).map_err(|err| read_err(&path, err))?;
                self.entries
                    .insert(dest, Entry::File(real, meta.mode() & 0o7777));
            }
        }
        Ok(())
    }

    /// The root filesystem as a tar stream, written to `out` in chunks.
    pub fn write_tar(&self, out: &mut dyn FnMut(Bytes) -> bool) -> Result<(), ImageError> {
        let mut dirs_done = std::collections::BTreeSet::new();
        for (path, entry) in &self.entries {
            // Parents first (the map is sorted, but a file's parent may not be listed).
            let mut parents = Vec::new();
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| *d != Path::new("/")) {
                parents.push(d.display().to_string());
                p = d.parent();
            }
            for d in parents.into_iter().rev() {
                if dirs_done.insert(d.clone()) && !self.entries.contains_key(&d) {
                    out(header(&d, b'5', 0o755, 0, "")?);
                }
            }
            match entry {
                Entry::Dir(mode) => {
                    dirs_done.insert(path.clone());
                    out(header(path, b'5', *mode, 0, "")?);
                }
                Entry::Text(t, mode) => {
                    out(header(path, b'0', *mode, t.len() as u64, "")?);
                    out(padded(Bytes::from(t.clone().into_bytes())));
                }
                Entry::Link(target) => {
                    out(header(path, b'2', 0o777, 0, target)?);
                }
                Entry::File(src, mode) => {
                    let mut f = std::fs::File::open(src).map_err(|err| read_err(src, err))?;
                    let len = f.metadata().map_err(|err| read_err(src, err))?.len();
                    if !out(header(path, b'0', *mode, len, "")?) {
                        return Ok(());
                    }
                    let mut left = len;
                    let mut buf = vec![0u8; 1 << 20];
                    while left > 0 {
                        let want = left.min(buf.len() as u64) as usize;
                        f.read_exact(&mut buf[..want])
                            .map_err(|err| read_err(src, err))?;
                        left -= want as u64;
                        let chunk = Bytes::copy_from_slice(&buf[..want]);
                        let chunk = if left == 0 { padded(chunk) } else { chunk };
                        if !out(chunk) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        out(Bytes::from(vec![0u8; 1024]));
        Ok(())
    }
}

fn read_err(path: &Path, err: std::io::Error) -> ImageError {
    ImageError::Read {
        path: path.display().to_string(),
        err,
    }
}

/// `path` resolved, if it is an ELF binary.
fn native_binary(cli: &str, path: &Path, hint: &'static str) -> Result<PathBuf, ImageError> {
    let real = std::fs::canonicalize(path).map_err(|err| read_err(path, err))?;
    let mut magic = [0u8; 4];
    let is_elf = std::fs::File::open(&real)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if !is_elf {
        return Err(ImageError::NotNative {
            cli: cli.into(),
            path: real.display().to_string(),
            hint,
        });
    }
    Ok(real)
}

/// The shared libraries (and loader) a dynamic binary loads, as `ldd` lists them; none for a
/// static one.
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let Ok(o) = std::process::Command::new("ldd").arg(program).output() else {
        return vec![];
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn padded(b: Bytes) -> Bytes {
    let pad = (512 - b.len() % 512) % 512;
    if pad == 0 {
        return b;
    }
    let mut v = Vec::with_capacity(b.len() + pad);
    v.extend_from_slice(&b);
    v.resize(b.len() + pad, 0);
    Bytes::from(v)
}

/// A ustar header for `path` (absolute in the image; stored relative, `./…`).
fn header(path: &str, kind: u8, mode: u32, size: u64, link: &str) -> Result<Bytes, ImageError> {
    let rel = format!(".{path}");
    let mut h = [0u8; 512];
    let (prefix, name) = if rel.len() <= 100 {
        ("", rel.as_str())
    } else {
        // Split at a `/` so that the name fits 100 bytes and the prefix 155.
        let cut = rel
            .char_indices()
            .filter(|(i, c)| *c == '/' && *i <= 155 && rel.len() - i - 1 <= 100)
            .map(|(i, _)| i)
            .next()
            .ok_or_else(|| ImageError::LongPath(path.into()))?;
        (&rel[..cut], &rel[cut + 1..])
    };
    if link.len() > 100 {
        return Err(ImageError::LongPath(link.into()));
    }
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"00000000000\0");
    h[156] = kind;
    put(&mut h, 157, link.as_bytes());
    put(&mut h, 257, b"ustar\x0000");
    put(&mut h, 345, prefix.as_bytes());
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    Ok(Bytes::copy_from_slice(&h))
}

/// Import `plan` as the image `tag` on the daemon at `host` (else `DOCKER_HOST`, else the
/// local socket). Returns the image's id.
pub async fn build(plan: Plan, tag: &str, host: Option<&str>) -> Result<String, ImageError> {
    let docker = super::connect_daemon(host).await?;
    let (repo, version) = match tag.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
        Some((r, t)) => (r.to_string(), t.to_string()),
        None => (tag.to_string(), "latest".to_string()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let tx2 = tx.clone();
        let r = plan.write_tar(&mut |b| tx.blocking_send(Ok(b)).is_ok());
        if let Err(e) = &r {
            let _ = tx2.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        r
    });
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let options = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo),
        tag: Some(version),
        changes: vec![
            "ENV PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "ENV HOME=/tmp".into(),
            "CMD [\"/bin/bash\"]".into(),
        ],
        ..Default::default()
    };
    // An import of several hundred MB takes longer than the client's default timeout.
    let docker = docker.with_timeout(std::time::Duration::from_secs(3600));
    let mut progress =
        docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    let mut last = None;
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(ImageError::Import(e));
                }
                if let Some(s) = info.status {
                    last = Some(s);
                }
            }
            Err(e) => return Err(ImageError::Import(e.to_string())),
        }
    }
    match writer.await {
        Ok(r) => r?,
        Err(e) => return Err(ImageError::Import(e.to_string())),
    }
    let id = docker
        .inspect_image(tag)
        .await
        .map_err(|e| ImageError::Import(format!("{e} (after: {})", last.unwrap_or_default())))?
        .id
        .unwrap_or_default();
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const RECIPE: ImageRecipe = ImageRecipe {
        package_dirs: &["resources"],
        native_hint: "install a native build",
        bridge: true,
    };

    fn tar_of(p: &Plan) -> Vec<u8> {
        let mut v = Vec::new();
        p.write_tar(&mut |b| {
            v.extend_from_slice(&b);
            true
        })
        .unwrap();
        v
    }

    #[test]
    fn the_tar_stream_is_read_by_tar_with_modes_links_and_long_paths() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("prog");
        std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut p = Plan::default();
        p.entries
            .insert("/usr/local/bin/prog".into(), Entry::File(f.clone(), 0o755));
        p.entries
            .insert("/bin/sh".into(), Entry::Link("/usr/bin/dash".into()));
        p.entries.insert(
            "/etc/hosts".into(),
            Entry::Text("127.0.0.1 localhost\n".into(), 0o644),
        );
        let long = format!("/opt/{}/{}", "d".repeat(90), "f".repeat(60));
        p.entries
            .insert(long.clone(), Entry::Text("x".into(), 0o600));
        let tar = t.path().join("root.tar");
        std::fs::write(&tar, tar_of(&p)).unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let prog = out.join("usr/local/bin/prog");
        assert_eq!(
            std::fs::read_to_string(&prog).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::metadata(&prog).unwrap().mode() & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(out.join("bin/sh")).unwrap(),
            Path::new("/usr/bin/dash")
        );
        assert_eq!(std::fs::read_to_string(out.join(&long[1..])).unwrap(), "x");
    }

    #[test]
    fn a_script_is_not_taken_for_a_native_cli() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("claude");
        std::fs::write(&f, "#!/usr/bin/env node\n").unwrap();
        let e = Plan::default()
            .add_executor("claude", &f, &RECIPE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a native binary"), "{e}");
    }

    #[test]
    fn a_native_acp_agent_and_the_bridge_go_in_a_node_script_does_not() {
        let t = tempfile::tempdir().unwrap();
        let script = t.path().join("gemini.js");
        std::fs::write(&script, "#!/usr/bin/env node\n").unwrap();
        let mut p = Plan::default();
        let e = p
            .add_executor("gemini", &script, &RECIPE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a native binary"), "{e}");
        let bash = which::which("bash").unwrap();
        p.add_executor("opencode", &bash, &RECIPE).unwrap();
        p.add_bridge(&bash).unwrap();
        assert!(matches!(
            p.entries.get("/usr/local/bin/opencode"),
            Some(Entry::File(..))
        ));
        assert!(matches!(
            p.entries.get("/usr/local/bin/zwarm-acp"),
            Some(Entry::File(..))
        ));
        assert_eq!(p.clis.len(), 1);
    }

    #[test]
    fn the_base_has_a_shell_with_its_libraries() {
        let p = Plan::base();
        assert!(matches!(
            p.entries.get("/usr/bin/bash"),
            Some(Entry::File(..))
        ));
        // bash is dynamic here: its loader comes along.
        assert!(
            p.entries.keys().any(|k| k.contains("ld-linux")),
            "{:?}",
            p.entries.keys()
        );
    }
}
