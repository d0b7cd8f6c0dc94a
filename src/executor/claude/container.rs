//! claude in a container or a pod ([`crate::executor::portable`]). Its permission modes are its
//! own checks, not an OS sandbox: they work in a container as on the host and are passed
//! through unchanged (the container runner sets `IS_SANDBOX=1`, so `bypassPermissions`, which
//! only trusted config can choose, also works as root).

use crate::executor::{ImageRecipe, Portable, StateDir};

pub(super) fn portable() -> Portable {
    Portable {
        state_dir: Some(StateDir {
            name: "claude",
            env: "CLAUDE_CONFIG_DIR",
            home_default: ".claude",
            carried: &["settings.json", ".credentials.json"],
            pod_config: Some("settings.json"),
        }),
        // Claude Code 2.x ships a native binary (`bin/claude.exe`, glibc).
        image: ImageRecipe {
            package_dirs: &[],
            native_hint: "reinstall it with `npm install -g @anthropic-ai/claude-code` (2.x ships a native binary)",
            bridge: false,
        },
        container_args: None,
    }
}
