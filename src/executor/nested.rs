//! Executors never see zwarm: a turn's CLI must not load zwarm's own MCP server, whatever the
//! user's host configuration says (`zwarm setup codex` and `zwarm setup claude-code` register
//! zwarm where the executor CLIs read it too), and a `zwarm serve` that starts inside a turn
//! anyway can tell from [`TURN_ENV`]. Also the per-turn files codex writes and zwarm reads
//! back, opened without following symlinks.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::api::ExecutorError;

/// Set in every executor turn's environment to the session id (`1` when unknown). A
/// `zwarm serve` that finds it is running inside an executor's turn.
pub const TURN_ENV: &str = "ZWARM_EXECUTOR_TURN";

/// The MCP server name `zwarm setup` registers.
pub const SERVER_NAME: &str = "zwarm";

/// Whether an MCP server entry runs zwarm: its command's file name is `zwarm`.
pub fn runs_zwarm(command: &str) -> bool {
    Path::new(command.trim())
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "zwarm" || n.starts_with("zwarm-"))
}

/// The names of the MCP servers in a `mcpServers` JSON object (Claude Code, Claude Desktop)
/// that run zwarm, or are called `zwarm`.
pub fn zwarm_servers_json(servers: &serde_json::Value) -> Vec<String> {
    let Some(map) = servers.as_object() else {
        return vec![];
    };
    map.iter()
        .filter(|(name, def)| {
            name.as_str() == SERVER_NAME
                || def
                    .get("command")
                    .and_then(|c| c.as_str())
                    .is_some_and(runs_zwarm)
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// The names of the `[mcp_servers.*]` in a codex `config.toml` that run zwarm, or are called
/// `zwarm`.
pub fn zwarm_servers_toml(text: &str) -> Vec<String> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return vec![];
    };
    let Some(servers) = doc.get("mcp_servers").and_then(|s| s.as_table()) else {
        return vec![];
    };
    servers
        .iter()
        .filter(|(name, def)| {
            name.as_str() == SERVER_NAME
                || def
                    .get("command")
                    .and_then(|c| c.as_str())
                    .is_some_and(runs_zwarm)
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// A server name as a codex `-c` key segment: bare when it is a TOML bare key, else quoted.
pub fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        let escaped: String = name
            .chars()
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                c if c.is_control() => vec![],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// Create (or empty) the file a CLI will write for zwarm to read back, refusing to follow a
/// symlink there and refusing a directory that is not zwarm's own (a symlink, or writable by
/// others). `/dev/null` (a dry run) is accepted as it is.
pub fn prepare_read_back(path: &Path) -> Result<(), ExecutorError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    if path == Path::new("/dev/null") {
        return Ok(());
    }
    let refuse = |why: String| {
        ExecutorError::Misconfigured(format!(
            "the turn's file {} {why}; zwarm does not write through it. Remove it (or the state directory's turn folder) and try again.",
            path.display()
        ))
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    match std::fs::symlink_metadata(parent) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(refuse("lies in a folder that is a symbolic link".into()));
        }
        Ok(m) if !m.is_dir() => {
            return Err(refuse("lies in something that is not a folder".into()));
        }
        // SAFETY: geteuid has no preconditions.
        Ok(m) if m.uid() != unsafe { libc::geteuid() } || m.mode() & 0o022 != 0 => {
            return Err(refuse(
                "lies in a folder zwarm did not create (another owner, or writable by others)"
                    .into(),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(refuse(format!("cannot be created ({e})"))),
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refuse("is a symbolic link".into())
            } else {
                refuse(format!("cannot be created ({e})"))
            }
        })?;
    let m = f
        .metadata()
        .map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if !m.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    f.set_len(0)
        .map_err(|e| refuse(format!("cannot be emptied ({e})")))
}

/// Read at most `max` bytes of a regular file without following a symlink at `path`.
pub fn read_no_follow(path: &Path, max: usize) -> Option<String> {
    read_regular(path, max, false)
}

/// [`read_no_follow`], then the file is emptied, not removed: the next turn's
/// [`prepare_read_back`] finds it in place, and a turn costs no file deletion (on an ext4
/// without a journal every recently deleted inode slows the next creations in its group; see
/// docs/benchmarks.md). `None` when it is missing, empty or not a plain file.
pub fn take_read_back(path: &Path, max: usize) -> Option<String> {
    read_regular(path, max, true).filter(|s| !s.trim().is_empty())
}

/// Open `path` without following a symlink (and without blocking on a FIFO); only a regular
/// file is read, at most `max` bytes, and emptied afterwards when `empty`.
fn read_regular(path: &Path, max: usize, empty: bool) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
    };
    // A file the executor made read-only is still read (and left as it is).
    let f = open(empty).or_else(|_| open(false)).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    let read = (&f).take(max as u64).read_to_end(&mut buf);
    if empty {
        let _ = f.set_len(0);
    }
    read.ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// `$CODEX_HOME`, else `~/.codex`.
pub fn codex_home() -> Option<PathBuf> {
    std::env::var_os("CODEX_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".codex")))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Claude Code's user state file: `$CLAUDE_CONFIG_DIR/.claude.json`, else `~/.claude.json`.
pub fn claude_state_file() -> Option<PathBuf> {
    match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()) {
        Some(d) => Some(PathBuf::from(d).join(".claude.json")),
        None => home().map(|h| h.join(".claude.json")),
    }
}

/// Host configuration files that register zwarm for Claude Code: the user state file (user
/// scope, and local scope per project) and the project's `.mcp.json`. One line each.
pub fn claude_registrations(project: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = claude_state_file()
        && let Ok(text) = std::fs::read_to_string(&p)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        let user = zwarm_servers_json(&v["mcpServers"]);
        if !user.is_empty() {
            out.push(format!("{} (user scope: {})", p.display(), user.join(", ")));
        }
        if let Some(projects) = v.get("projects").and_then(|p| p.as_object()) {
            for (dir, pv) in projects {
                let local = zwarm_servers_json(&pv["mcpServers"]);
                if !local.is_empty() {
                    out.push(format!(
                        "{} (local scope of {dir}: {})",
                        p.display(),
                        local.join(", ")
                    ));
                }
            }
        }
    }
    if let Some(dir) = project {
        let p = dir.join(".mcp.json");
        if let Ok(text) = std::fs::read_to_string(&p)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let names = zwarm_servers_json(&v["mcpServers"]);
            if !names.is_empty() {
                out.push(format!(
                    "{} (project scope: {})",
                    p.display(),
                    names.join(", ")
                ));
            }
        }
    }
    out
}

/// The user-scope definitions of the MCP servers a claude executor may load (`allowed`, by
/// name), never zwarm's, as the `--mcp-config` JSON claude takes.
pub fn claude_allowed_config(allowed: &[String]) -> String {
    if allowed.is_empty() {
        return allowed_config_from(None, allowed);
    }
    allowed_config_from(claude_state_file().as_deref(), allowed)
}

/// [`claude_allowed_config`] with the user state file given.
fn allowed_config_from(state: Option<&Path>, allowed: &[String]) -> String {
    let mut servers = serde_json::Map::new();
    if !allowed.is_empty()
        && let Some(p) = state
        && let Ok(text) = std::fs::read_to_string(p)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(defs) = v.get("mcpServers").and_then(|s| s.as_object())
    {
        let zwarm = zwarm_servers_json(&v["mcpServers"]);
        for name in allowed {
            if let Some(def) = defs.get(name)
                && !zwarm.contains(name)
            {
                servers.insert(name.clone(), def.clone());
            }
        }
    }
    serde_json::json!({ "mcpServers": servers }).to_string()
}

/// The `-c` settings that keep codex from starting zwarm for a turn: `mcp_servers.zwarm`, and
/// any other server in the user's codex config that runs zwarm, replaced by a disabled entry.
/// (Setting only `enabled = false` on a server that is not configured makes codex refuse its
/// config: "invalid transport".)
pub fn codex_overrides() -> Vec<String> {
    let mut names = vec![SERVER_NAME.to_string()];
    if let Some(home) = codex_home()
        && let Ok(text) = std::fs::read_to_string(home.join("config.toml"))
    {
        for n in zwarm_servers_toml(&text) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    let mut out = Vec::new();
    for n in names {
        out.push("-c".to_string());
        out.push(format!(
            "mcp_servers.{}={{command=\"zwarm\",enabled=false}}",
            toml_key(&n)
        ));
    }
    out
}

/// Host configuration files that register zwarm for codex (`$CODEX_HOME/config.toml`).
pub fn codex_registrations() -> Vec<String> {
    let Some(home) = codex_home() else {
        return vec![];
    };
    let p = home.join("config.toml");
    match std::fs::read_to_string(&p) {
        Ok(text) => {
            let names = zwarm_servers_toml(&text);
            if names.is_empty() {
                vec![]
            } else {
                vec![format!("{} ({})", p.display(), names.join(", "))]
            }
        }
        Err(_) => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zwarm_entries_are_found_by_name_or_command() {
        let toml = "[mcp_servers.zwarm]\ncommand = \"/x/zwarm\"\n[mcp_servers.other]\ncommand = \"node\"\n[mcp_servers.\"my zw\"]\ncommand = \"/usr/local/bin/zwarm\"\nargs = [\"serve\"]\n";
        assert_eq!(zwarm_servers_toml(toml), ["my zw", "zwarm"]);
        let json = serde_json::json!({"zwarm": {"command": "x"}, "dev": {"command": "/opt/zwarm"}, "fs": {"command": "npx"}});
        let mut found = zwarm_servers_json(&json);
        found.sort();
        assert_eq!(found, ["dev", "zwarm"]);
        assert_eq!(toml_key("my zw"), "\"my zw\"");
        assert_eq!(toml_key("a_b-c"), "a_b-c");
    }

    #[test]
    fn only_allowed_servers_reach_claude_and_never_zwarm() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join(".claude.json");
        std::fs::write(
            &state,
            r#"{"mcpServers": {"zwarm": {"command": "/x/zwarm", "args": ["serve"]},
                "fs": {"command": "npx", "args": ["fs"]}, "web": {"command": "web"}}}"#,
        )
        .unwrap();
        let allowed = vec!["fs".to_string(), "zwarm".to_string(), "missing".to_string()];
        let cfg: serde_json::Value =
            serde_json::from_str(&allowed_config_from(Some(&state), &allowed)).unwrap();
        let names: Vec<&String> = cfg["mcpServers"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["fs"]);
        assert_eq!(cfg["mcpServers"]["fs"]["args"][0], "fs");
        assert_eq!(claude_allowed_config(&[]), r#"{"mcpServers":{}}"#);
    }

    #[test]
    fn read_back_files_are_never_followed_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let link = d.path().join("1.last-message");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = prepare_read_back(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(read_no_follow(&link, 100), None);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        // A folder that is a symlink is refused too.
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let ldir = d.path().join("ldir");
        std::os::unix::fs::symlink(&real, &ldir).unwrap();
        let e = prepare_read_back(&ldir.join("1.last-message"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("folder that is a symbolic link"), "{e}");
        // A plain file is created empty, and read back bounded.
        let ok = d.path().join("2.last-message");
        std::fs::write(&ok, "stale").unwrap();
        prepare_read_back(&ok).unwrap();
        assert_eq!(std::fs::read_to_string(&ok).unwrap(), "");
        std::fs::write(&ok, "hello world").unwrap();
        assert_eq!(read_no_follow(&ok, 5).as_deref(), Some("hello"));
        assert!(prepare_read_back(Path::new("/dev/null")).is_ok());
        // Taken back at the turn's end: read, then emptied in place (not removed); through a
        // planted link nothing is read, and the link's target is neither read nor emptied.
        assert_eq!(take_read_back(&ok, 1 << 20).as_deref(), Some("hello world"));
        assert_eq!(std::fs::read_to_string(&ok).unwrap(), "");
        assert_eq!(take_read_back(&ok, 1 << 20), None, "empty reads as none");
        assert_eq!(take_read_back(&link, 1 << 20), None);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert_eq!(take_read_back(&d.path().join("missing"), 1 << 20), None);
    }
}
