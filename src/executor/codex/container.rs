//! codex in a container or a pod ([`crate::executor::portable`]).
//!
//! codex's Linux sandbox (bwrap) needs namespaces a container does not grant: with
//! `-s workspace-write` or `-s read-only` every command fails ("bwrap: No permissions to create
//! a new namespace") and every patch is refused. So in a container codex always runs with
//! `-s danger-full-access`, and what `codex.sandbox` asked for is enforced by the container:
//! `read-only` mounts the working dir read-only, the other two read-write. `codex.sandbox` can
//! only be tightened by the project file, so a project can make the mount read-only but never
//! reach past it.

use crate::executor::{ImageRecipe, Portable, StateDir};

pub(super) fn portable() -> Portable {
    Portable {
        state_dir: Some(StateDir {
            name: "codex",
            env: "CODEX_HOME",
            home_default: ".codex",
            carried: &["config.toml", "auth.json"],
            pod_config: Some("config.toml"),
        }),
        // npm's `@openai/codex` ships a static musl binary under `<triple>/bin/` with the rest
        // of its platform package beside it (`codex-path/` holds its `rg`).
        image: ImageRecipe {
            package_dirs: &["codex-resources", "codex-path"],
            native_hint: "reinstall it with `npm install -g @openai/codex`, which ships a native binary",
            bridge: false,
        },
        container_args: Some(without_own_sandbox),
    }
}

/// Switch codex's own sandbox off; `true` when it was asked to be read-only.
fn without_own_sandbox(args: &mut [String]) -> bool {
    let mut read_only = false;
    let mut i = 0;
    while i < args.len() {
        // Everything after `--` is positional (the prompt, a thread id).
        if args[i] == "--" {
            break;
        }
        if let Some(mode) = args[i].strip_prefix("--sandbox=") {
            read_only |= mode == "read-only";
            args[i] = "--sandbox=danger-full-access".into();
        } else if (args[i] == "-s" || args[i] == "--sandbox") && i + 1 < args.len() {
            read_only |= args[i + 1] == "read-only";
            args[i + 1] = "danger-full-access".into();
            i += 1;
        }
        i += 1;
    }
    read_only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn codex_runs_without_its_own_sandbox_and_the_mount_enforces_the_mode() {
        let mut a = v(&["exec", "-C", "/w", "-s", "workspace-write", "--", "-"]);
        assert!(!without_own_sandbox(&mut a));
        assert_eq!(a[4], "danger-full-access");

        let mut a = v(&["exec", "-s", "read-only", "-o", "/x", "--", "-"]);
        assert!(without_own_sandbox(&mut a));
        assert_eq!(a[2], "danger-full-access");

        let mut a = v(&["exec", "--sandbox=read-only", "--", "-"]);
        assert!(without_own_sandbox(&mut a));
        assert_eq!(a[1], "--sandbox=danger-full-access");

        let mut a = v(&["exec", "-s", "danger-full-access", "--", "-"]);
        assert!(!without_own_sandbox(&mut a));
    }

    #[test]
    fn positional_arguments_are_left_alone() {
        // A thread id or prompt after `--` is never read as a flag.
        let mut a = v(&["exec", "resume", "--", "-s", "read-only"]);
        assert!(!without_own_sandbox(&mut a));
        assert_eq!(a[4], "read-only");
    }
}
