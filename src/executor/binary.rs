//! Finding an executor's binary: a configured path, or a bare name on the absolute entries of
//! PATH; the npm wrapper of codex replaced by its native binary.

use std::path::{Path, PathBuf};

use super::api::ExecutorError;

/// Given the npm wrapper `…/node_modules/@openai/codex/bin/codex.js`, find the native binary
/// shipped in the platform package next to it.
pub fn native_codex_for(wrapper: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(wrapper).ok()?;
    if real.extension().and_then(|e| e.to_str()) != Some("js") {
        return None;
    }
    let pkg = real.parent()?.parent()?; // …/@openai/codex
    let (plat, triple) = match std::env::consts::ARCH {
        "x86_64" => ("codex-linux-x64", "x86_64-unknown-linux-musl"),
        "aarch64" => ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
        _ => return None,
    };
    let candidates = [
        pkg.parent()?.join(plat),
        pkg.join("node_modules").join("@openai").join(plat),
    ];
    candidates
        .iter()
        .map(|c| c.join("vendor").join(triple).join("bin").join("codex"))
        .find(|p| p.is_file())
}

pub(crate) fn resolve_binary(
    configured: Option<&Path>,
    default_name: &str,
    cli: &'static str,
    package: &'static str,
    env: &'static str,
    key: &'static str,
) -> Result<PathBuf, ExecutorError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    resolve_binary_in(configured, default_name, &path_var)
        .and_then(|p| check_interpreter(&p, &path_var).map(|()| p))
        .map_err(|e| match e {
        Lookup::NotFound {
            wanted,
            skipped,
            on_path,
        } => {
            if skipped.is_empty() {
                ExecutorError::NotInstalled {
                    cli,
                    binary: wanted,
                    looked: if on_path {
                        "on PATH (absolute entries only)"
                    } else {
                        "at that path"
                    },
                    package,
                    env,
                    key,
                }
            } else {
                ExecutorError::BadBinary {
                    cli,
                    path: wanted,
                    problem: format!(
                        "was not found as an executable on PATH (ignored: {})",
                        skipped.join("; ")
                    ),
                    fix: format!(
                        "Install it with `npm install -g {package}`, put its directory on PATH as an absolute path, or configure the absolute path of the executable"
                    ),
                    env,
                    key,
                }
            }
        }
        Lookup::Bad { path, problem, fix } => ExecutorError::BadBinary {
            cli,
            path,
            problem,
            fix,
            env,
            key,
        },
    })
}

/// A script's `#!` line must name an interpreter that can run: otherwise the kernel refuses
/// every turn with "bad interpreter", and `delegate` should say so before a session exists.
/// `#!/usr/bin/env NAME` also needs NAME on PATH (absolute entries only, as for the CLI).
fn check_interpreter(p: &Path, path_var: &std::ffi::OsStr) -> Result<(), Lookup> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = match std::fs::File::open(p).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => n,
        // Unreadable but executable: leave it to the kernel.
        Err(_) => return Ok(()),
    };
    let Some(rest) = head[..n].strip_prefix(b"#!") else {
        return Ok(());
    };
    let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = String::from_utf8_lossy(&rest[..line_end])
        .trim()
        .to_string();
    let mut words = line.split_whitespace();
    let bad = |problem: String| Lookup::Bad {
        path: p.display().to_string(),
        problem,
        fix: "Reinstall the CLI, or point the setting at an executable that runs".into(),
    };
    let Some(interp) = words.next() else {
        return Err(bad("starts with `#!` but names no interpreter".into()));
    };
    let interp_path = Path::new(interp);
    if !interp_path.is_absolute() {
        return Err(bad(format!(
            "starts with `#!{line}`: the interpreter `{interp}` is not an absolute path"
        )));
    }
    if check_executable(interp_path).is_err() {
        return Err(bad(format!(
            "starts with `#!{line}`, but its interpreter {interp} is missing or not executable"
        )));
    }
    if interp_path.file_name().is_some_and(|f| f == "env")
        && let Some(name) = words.find(|w| !w.starts_with('-'))
    {
        // The same lookup as the CLI's own: absolute PATH entries only.
        if resolve_binary_in(None, name, path_var).is_err() {
            return Err(bad(format!(
                "starts with `#!{line}`, but `{name}` is not on PATH"
            )));
        }
    }
    Ok(())
}

/// Why a binary lookup failed.
#[derive(Debug, PartialEq)]
enum Lookup {
    /// No executable of that name; `skipped` lists candidates that were passed over and why.
    NotFound {
        wanted: String,
        skipped: Vec<String>,
        /// Looked up on PATH (rather than a configured path that does not exist).
        on_path: bool,
    },
    /// A configured path that exists but cannot be run.
    Bad {
        path: String,
        problem: String,
        fix: String,
    },
}

/// Find the executable: a configured path (with a `/`) is used as is (made absolute against
/// the current directory); a bare name is looked up in the absolute entries of `path_var`.
/// Relative and empty PATH entries (which mean the current directory) are ignored, so a file
/// in whatever directory zwarm was started from can never stand in for the CLI.
fn resolve_binary_in(
    configured: Option<&Path>,
    default_name: &str,
    path_var: &std::ffi::OsStr,
) -> Result<PathBuf, Lookup> {
    let wanted = configured.unwrap_or_else(|| Path::new(default_name));
    let shown = wanted.display().to_string();
    if wanted.as_os_str().is_empty() {
        return Err(Lookup::Bad {
            path: shown,
            problem: "is empty".into(),
            fix: "Set it to the executable's absolute path, or remove the setting to use PATH"
                .into(),
        });
    }
    if wanted.components().count() > 1 || wanted.is_absolute() {
        let abs = std::path::absolute(wanted).unwrap_or_else(|_| wanted.to_path_buf());
        return match check_executable(&abs) {
            Ok(()) => Ok(abs),
            Err(Problem::Missing) => Err(Lookup::NotFound {
                wanted: abs.display().to_string(),
                skipped: vec![],
                on_path: false,
            }),
            Err(Problem::Directory) => Err(Lookup::Bad {
                path: abs.display().to_string(),
                problem: "is a directory, not an executable".into(),
                fix: format!(
                    "Point it at the executable file inside, e.g. {}",
                    abs.join("bin").join(default_name).display()
                ),
            }),
            Err(Problem::NotExecutable(mode)) => Err(Lookup::Bad {
                path: abs.display().to_string(),
                problem: format!("is a file that is not executable (mode {mode:o})"),
                fix: format!(
                    "Make it executable (`chmod +x {}`) or point the setting at the real executable",
                    abs.display()
                ),
            }),
        };
    }
    let mut skipped = Vec::new();
    for dir in std::env::split_paths(path_var) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let candidate = dir.join(wanted);
        if !dir.is_absolute() {
            if candidate.exists() {
                skipped.push(format!(
                    "`{}` (relative PATH entry `{}`)",
                    candidate.display(),
                    dir.display()
                ));
            }
            continue;
        }
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Problem::Missing) => {}
            Err(Problem::Directory) => {
                skipped.push(format!("`{}` (a directory)", candidate.display()))
            }
            Err(Problem::NotExecutable(mode)) => skipped.push(format!(
                "`{}` (not executable, mode {mode:o})",
                candidate.display()
            )),
        }
    }
    Err(Lookup::NotFound {
        wanted: shown,
        skipped,
        on_path: true,
    })
}

enum Problem {
    Missing,
    Directory,
    NotExecutable(u32),
}

fn check_executable(p: &Path) -> Result<(), Problem> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).map_err(|_| Problem::Missing)?;
    if meta.is_dir() {
        return Err(Problem::Directory);
    }
    let mode = meta.permissions().mode();
    if !meta.is_file() || mode & 0o111 == 0 {
        return Err(Problem::NotExecutable(mode & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn touch(p: &Path, mode: u32) {
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_script_whose_interpreter_cannot_run_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path_var = std::ffi::OsString::from("/usr/bin:/bin");
        let script = |name: &str, first: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, format!("{first}\necho hi\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let ok = script("ok", "#!/bin/sh");
        assert_eq!(check_interpreter(&ok, &path_var), Ok(()));
        let env_ok = script("env_ok", "#!/usr/bin/env sh");
        assert_eq!(check_interpreter(&env_ok, &path_var), Ok(()));
        let binary = d.path().join("binary");
        std::fs::write(&binary, b"\x7fELF").unwrap();
        assert_eq!(check_interpreter(&binary, &path_var), Ok(()));
        for (name, first, says) in [
            ("missing", "#!/nonexistent/interp", "is missing"),
            ("relative", "#!sh", "not an absolute path"),
            ("empty", "#!", "names no interpreter"),
            (
                "env_missing",
                "#!/usr/bin/env no-such-interpreter-zw",
                "is not on PATH",
            ),
        ] {
            let p = script(name, first);
            match check_interpreter(&p, &path_var) {
                Err(Lookup::Bad { problem, .. }) => assert!(problem.contains(says), "{problem}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn path_lookup_ignores_relative_and_empty_entries() {
        let d = tempfile::tempdir().unwrap();
        let abs = d.path().join("abs");
        std::fs::create_dir(&abs).unwrap();
        touch(&abs.join("codex"), 0o755);
        // A relative entry that would resolve (from the test's cwd) is skipped, and so is an
        // empty one; the absolute entry wins.
        let path = std::ffi::OsString::from(format!("::.:src:{}", abs.display()));
        assert_eq!(
            resolve_binary_in(None, "codex", &path),
            Ok(abs.join("codex"))
        );
        // Only relative entries: not found, and the message says what was ignored.
        let here = std::env::current_dir().unwrap();
        let rel_dir = tempfile::tempdir_in(&here).unwrap();
        touch(&rel_dir.path().join("codex"), 0o755);
        let rel = rel_dir.path().strip_prefix(&here).unwrap();
        let path = std::ffi::OsString::from(format!(":{}", rel.display()));
        match resolve_binary_in(None, "codex", &path) {
            Err(Lookup::NotFound { skipped, .. }) => {
                assert_eq!(skipped.len(), 1, "{skipped:?}");
                assert!(skipped[0].contains("relative PATH entry"), "{skipped:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn path_lookup_skips_non_executables_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir_all(a.join("claude")).unwrap();
        std::fs::create_dir(&b).unwrap();
        touch(&b.join("claude"), 0o644);
        let path = std::env::join_paths([&a, &b]).unwrap();
        match resolve_binary_in(None, "claude", &path) {
            Err(Lookup::NotFound { skipped, .. }) => {
                assert!(skipped[0].contains("a directory"), "{skipped:?}");
                assert!(skipped[1].contains("not executable"), "{skipped:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn configured_directories_and_non_executables_get_their_own_message() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("codex-dir");
        std::fs::create_dir(&dir).unwrap();
        let e = resolve_binary(
            Some(&dir),
            "codex",
            "codex",
            "@openai/codex",
            "ZWARM_CODEX_BIN",
            "codex.binary",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("is a directory") && e.contains("codex.binary"),
            "{e}"
        );
        let file = d.path().join("codex");
        touch(&file, 0o644);
        let e = resolve_binary(
            Some(&file),
            "codex",
            "codex",
            "@openai/codex",
            "ZWARM_CODEX_BIN",
            "codex.binary",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not executable") && e.contains("chmod +x"),
            "{e}"
        );
        let e = resolve_binary(
            Some(&d.path().join("missing")),
            "codex",
            "codex",
            "@openai/codex",
            "ZWARM_CODEX_BIN",
            "codex.binary",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("was not found") && e.contains("at that path"),
            "{e}"
        );
        touch(&file, 0o755);
        assert!(
            resolve_binary(Some(&file), "codex", "codex", "p", "E", "k").is_ok(),
            "an executable file is accepted"
        );
    }
}
