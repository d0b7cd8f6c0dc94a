//! `zwarm setup claude-code|codex|claude-desktop`: add zwarm to a host's MCP configuration.
//!
//! - **Claude Code**: through its own CLI, `claude mcp add zwarm --scope user|project --
//!   <this zwarm> serve`; the resulting entry is read back from Claude Code's config file
//!   (`~/.claude.json`, or `$CLAUDE_CONFIG_DIR/.claude.json`; `.mcp.json` for the project
//!   scope) to tell whether anything needs doing.
//! - **Codex**: `[mcp_servers.zwarm]` in `$CODEX_HOME/config.toml` (default
//!   `~/.codex/config.toml`), edited with `toml_edit` so comments, formatting and every other
//!   setting stay as they are.
//! - **Claude Desktop**: `mcpServers.zwarm` merged into `claude_desktop_config.json`, keeping
//!   the other keys, their order and their text.
//!
//! Every run is idempotent: when the entry is already right nothing is written and it says
//! so. Before a file is changed it is copied to `<file>.bak-<timestamp>`; the new text is
//! written to a temporary file and renamed over the old one, with the old file's mode.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::StateArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Host {
    ClaudeCode,
    Codex,
    ClaudeDesktop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Every project of this user.
    User,
    /// This project only (`.mcp.json`, shared with the repository).
    Project,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "--state-dir, --config and --set are passed on to `zwarm serve` in the entry; Claude Desktop gets a state dir of its own ($XDG_STATE_HOME/zwarm/claude-desktop) by default. The entry runs this zwarm binary by its absolute path. A second run changes nothing; a changed file is first copied to <file>.bak-<timestamp>."
)]
pub struct SetupArgs {
    /// The host to configure.
    #[arg(value_enum)]
    pub host: Host,
    /// Claude Code: where the server is added.
    #[arg(long, value_enum, default_value = "user")]
    pub scope: Scope,
    /// The host's config file, instead of its usual place.
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// What a setup did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub file: PathBuf,
    /// One line per change; empty when nothing needed changing.
    pub changes: Vec<String>,
    pub backup: Option<PathBuf>,
}

pub fn main(a: SetupArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("finding this zwarm binary")?;
    let mut args = vec!["serve".to_string()];
    let state_dir = match (&a.state.state_dir, a.host) {
        (Some(d), _) => Some(std::path::absolute(d).context("making --state-dir absolute")?),
        (None, Host::ClaudeDesktop) => Some(desktop_state_dir()?),
        (None, _) => None,
    };
    if let Some(d) = &state_dir {
        args.push("--state-dir".into());
        args.push(d.display().to_string());
    }
    if let Some(c) = &a.state.config {
        args.push("--config".into());
        args.push(
            std::path::absolute(c)
                .context("making --config absolute")?
                .display()
                .to_string(),
        );
    }
    for s in &a.state.sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    let command = exe.display().to_string();
    let outcome = match a.host {
        Host::Codex => {
            let file = match &a.config_file {
                Some(f) => f.clone(),
                None => codex_config_file()?,
            };
            setup_codex(&file, &command, &args)?
        }
        Host::ClaudeDesktop => {
            let file = match &a.config_file {
                Some(f) => f.clone(),
                None => desktop_config_file()?,
            };
            setup_desktop(&file, &command, &args)?
        }
        Host::ClaudeCode => {
            let file = match &a.config_file {
                Some(f) => f.clone(),
                None => claude_code_config_file(a.scope)?,
            };
            setup_claude_code(&file, a.scope, &command, &args)?
        }
    };
    let mut text = String::new();
    if outcome.changes.is_empty() {
        text.push_str(&format!(
            "{} already runs this zwarm ({}); nothing changed.\n",
            outcome.file.display(),
            command
        ));
    } else {
        text.push_str(&format!("updated {}:\n", outcome.file.display()));
        for c in &outcome.changes {
            text.push_str(&format!("  {c}\n"));
        }
        if let Some(b) = &outcome.backup {
            text.push_str(&format!("backup of the previous file: {}\n", b.display()));
        }
    }
    text.push_str(match a.host {
        Host::ClaudeCode => "Next: start `claude` in a project; `/mcp` lists zwarm. `zwarm doctor` checks the executors.\n",
        Host::Codex => "Next: start `codex` in a project; zwarm's tools are in the mcp__zwarm namespace. `zwarm doctor` checks the executors.\n",
        Host::ClaudeDesktop => "Next: restart Claude Desktop. It does not start servers in a project: pass working_dir to delegate, and list your source directories in allowed_roots (~/.config/zwarm/config.toml). `zwarm doctor` checks the executors.\n",
    });
    super::out(&text)?;
    Ok(0)
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set: pass --config-file PATH")
}

fn codex_config_file() -> anyhow::Result<PathBuf> {
    match std::env::var_os("CODEX_HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join("config.toml")),
        None => Ok(home()?.join(".codex").join("config.toml")),
    }
}

fn desktop_config_file() -> anyhow::Result<PathBuf> {
    if cfg!(target_os = "macos") {
        return Ok(home()?
            .join("Library")
            .join("Application Support")
            .join("Claude")
            .join("claude_desktop_config.json"));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(Ok)
        .unwrap_or_else(|| home().map(|h| h.join(".config")))?;
    Ok(base.join("Claude").join("claude_desktop_config.json"))
}

/// Claude Desktop starts servers outside any project, so its sessions get a state dir of
/// their own: `$XDG_STATE_HOME/zwarm/claude-desktop` (else `~/.local/state/zwarm/claude-desktop`).
fn desktop_state_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(Ok)
        .unwrap_or_else(|| home().map(|h| h.join(".local").join("state")))?;
    Ok(base.join("zwarm").join("claude-desktop"))
}

fn claude_code_config_file(scope: Scope) -> anyhow::Result<PathBuf> {
    match scope {
        Scope::Project => Ok(std::env::current_dir()
            .context("reading the current directory")?
            .join(".mcp.json")),
        Scope::User => match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()) {
            Some(d) => Ok(PathBuf::from(d).join(".claude.json")),
            None => Ok(home()?.join(".claude.json")),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// The file to write for `path`: the target of a symlink, so a dotfile manager's link stays a
/// link and the file it points to is what changes. A link that leads nowhere is refused (with
/// the reason): writing there would replace the link with a file.
fn real_path(path: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).map_err(|e| {
            let to = std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            anyhow::anyhow!(
                "{} is a symlink to {to}, which cannot be reached ({e}); zwarm does not replace the link with a file: create the file it points to (an empty one will do), or remove the link, then run setup again",
                path.display()
            )
        }),
        _ => Ok(path.to_path_buf()),
    }
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `<file>.bak-<UTC timestamp>` (with `-N` added if that exists), a copy of `path`.
pub fn backup(path: &Path) -> anyhow::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut b = dir.join(format!("{name}.bak-{stamp}"));
    let mut n = 1;
    while b.exists() {
        b = dir.join(format!("{name}.bak-{stamp}-{n}"));
        n += 1;
    }
    std::fs::copy(path, &b)
        .with_context(|| format!("backing up {} to {}", path.display(), b.display()))?;
    Ok(b)
}

/// Replace `path` with `text` (a temporary file renamed over it), keeping its mode; a new
/// file is private (0600) and its directory is created.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let mut tmp = tempfile::Builder::new()
        .prefix(".zwarm-setup-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Write `text` to `path` when it changed, with a backup of an existing file first.
fn commit(path: &Path, existed: bool, text: &str) -> anyhow::Result<Option<PathBuf>> {
    let b = if existed { Some(backup(path)?) } else { None };
    write_atomically(path, text)?;
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// Codex

/// The `[mcp_servers.zwarm]` settings zwarm wants (see README: Add zwarm to your agent).
const CODEX_ENV_VARS: &[&str] = &["ANTHROPIC_API_KEY", "OPENAI_API_KEY"];

pub fn setup_codex(path: &Path, command: &str, args: &[String]) -> anyhow::Result<Outcome> {
    use toml_edit::{Array, DocumentMut, Item, Table, Value as TValue};
    let path = real_path(path)?;
    let old = read_optional(&path)?;
    let mut doc: DocumentMut = old
        .as_deref()
        .unwrap_or("")
        .parse()
        .with_context(|| format!("{} is not valid TOML; fix it first", path.display()))?;
    let root = doc.as_table_mut();
    if !root.contains_key("mcp_servers") {
        let mut t = Table::new();
        t.set_implicit(true);
        root.insert("mcp_servers", Item::Table(t));
    }
    let servers = root
        .get_mut("mcp_servers")
        .and_then(Item::as_table_like_mut)
        .with_context(|| format!("`mcp_servers` in {} is not a table", path.display()))?;
    if !servers.contains_key("zwarm") {
        servers.insert("zwarm", Item::Table(Table::new()));
    }
    let zw = servers
        .get_mut("zwarm")
        .and_then(Item::as_table_like_mut)
        .with_context(|| {
            format!(
                "`mcp_servers.zwarm` in {} is not a table; fix it by hand",
                path.display()
            )
        })?;
    let mut changes = Vec::new();
    let strings = |v: &[&str]| {
        let mut a = Array::new();
        for s in v {
            a.push(*s);
        }
        TValue::Array(a)
    };
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    // env_vars: zwarm's two are added to whatever the user listed.
    let mut env_vars: Vec<String> = zw
        .get("env_vars")
        .and_then(Item::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for v in CODEX_ENV_VARS {
        if !env_vars.iter().any(|e| e == v) {
            env_vars.push((*v).to_string());
        }
    }
    let env_ref: Vec<&str> = env_vars.iter().map(String::as_str).collect();
    let wanted: Vec<(&str, TValue)> = vec![
        ("command", TValue::from(command)),
        ("args", strings(&args_ref)),
        ("required", TValue::from(true)),
        ("default_tools_approval_mode", TValue::from("approve")),
        ("tool_timeout_sec", TValue::from(300i64)),
        ("supports_parallel_tool_calls", TValue::from(true)),
        ("env_vars", strings(&env_ref)),
    ];
    for (key, mut want) in wanted {
        let current = zw.get(key).and_then(Item::as_value);
        if current.is_some_and(|c| toml_equal(c, &want)) {
            continue;
        }
        match current {
            Some(c) => {
                changes.push(format!(
                    "~ mcp_servers.zwarm.{key} = {} (was {})",
                    want.to_string().trim(),
                    c.to_string().trim()
                ));
                // Keep a comment after the old value.
                *want.decor_mut() = c.decor().clone();
            }
            None => changes.push(format!(
                "+ mcp_servers.zwarm.{key} = {}",
                want.to_string().trim()
            )),
        }
        zw.insert(key, Item::Value(want));
    }
    let backup = if changes.is_empty() {
        None
    } else {
        commit(&path, old.is_some(), &doc.to_string())?
    };
    Ok(Outcome {
        file: path,
        changes,
        backup,
    })
}

/// Whether two TOML values are the same data (formatting aside).
fn toml_equal(a: &toml_edit::Value, b: &toml_edit::Value) -> bool {
    use toml_edit::Value as V;
    match (a, b) {
        (V::String(x), V::String(y)) => x.value() == y.value(),
        (V::Integer(x), V::Integer(y)) => x.value() == y.value(),
        (V::Boolean(x), V::Boolean(y)) => x.value() == y.value(),
        (V::Float(x), V::Float(y)) => x.value() == y.value(),
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| toml_equal(p, q))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON files (Claude Desktop, Claude Code's own config)

/// A JSON object read with its keys in order and each value's text untouched.
struct Obj(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Obj {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Obj, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Obj;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Obj, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                    // A repeated key: the last one wins, as JSON.parse does.
                    out.retain(|(x, _): &(String, Box<RawValue>)| x != &k);
                    out.push((k, v));
                }
                Ok(Obj(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Obj {
    fn parse(text: &str, what: &str) -> anyhow::Result<Obj> {
        if text.trim().is_empty() {
            return Ok(Obj(Vec::new()));
        }
        serde_json::from_str(text)
            .with_context(|| format!("{what} is not a JSON object; fix it first"))
    }

    fn get(&self, k: &str) -> Option<&RawValue> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_ref())
    }

    fn set(&mut self, k: &str, v: Box<RawValue>) {
        match self.0.iter_mut().find(|(x, _)| x == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
    }

    /// Pretty text at nesting `depth` (2 spaces a level); values keep their own text.
    fn render(&self, depth: usize) -> String {
        if self.0.is_empty() {
            return "{}".into();
        }
        let pad = "  ".repeat(depth + 1);
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{pad}{}: {}", Value::String(k.clone()), v.get().trim()))
            .collect();
        format!("{{\n{}\n{}}}", items.join(",\n"), "  ".repeat(depth))
    }
}

/// Pretty JSON for a value placed at nesting `depth`.
fn raw_at(v: &Value, depth: usize) -> anyhow::Result<Box<RawValue>> {
    let pretty = serde_json::to_string_pretty(v)?;
    let pad = "  ".repeat(depth);
    let text = pretty
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(RawValue::from_string(text)?)
}

/// The `mcpServers.zwarm` entry of a JSON config, if any.
fn json_entry(text: &str, what: &str) -> anyhow::Result<Option<Value>> {
    let top = Obj::parse(text, what)?;
    let Some(servers) = top.get("mcpServers") else {
        return Ok(None);
    };
    let servers = Obj::parse(servers.get(), &format!("`mcpServers` in {what}"))?;
    servers
        .get("zwarm")
        .map(|z| serde_json::from_str(z.get()).context("reading mcpServers.zwarm"))
        .transpose()
}

/// Whether an entry runs `command` with `args`.
fn entry_matches(entry: &Value, command: &str, args: &[String]) -> bool {
    entry["command"].as_str() == Some(command)
        && entry["args"].as_array().is_some_and(|a| {
            a.iter()
                .map(Value::as_str)
                .eq(args.iter().map(|s| Some(s.as_str())))
        })
}

pub fn setup_desktop(path: &Path, command: &str, args: &[String]) -> anyhow::Result<Outcome> {
    let path = real_path(path)?;
    let what = path.display().to_string();
    let old = read_optional(&path)?;
    let text = old.clone().unwrap_or_default();
    let existing = json_entry(&text, &what)?;
    if existing
        .as_ref()
        .is_some_and(|e| entry_matches(e, command, args))
    {
        return Ok(Outcome {
            file: path,
            changes: vec![],
            backup: None,
        });
    }
    // Keep whatever else the entry has (env, …); set command and args.
    let mut entry = match existing.clone() {
        Some(Value::Object(o)) => Value::Object(o),
        _ => serde_json::json!({}),
    };
    entry["command"] = Value::String(command.to_string());
    entry["args"] = Value::Array(args.iter().cloned().map(Value::String).collect());
    let mut top = Obj::parse(&text, &what)?;
    let mut servers = match top.get("mcpServers") {
        Some(s) => Obj::parse(s.get(), &format!("`mcpServers` in {what}"))?,
        None => Obj(Vec::new()),
    };
    servers.set("zwarm", raw_at(&entry, 2)?);
    top.set("mcpServers", RawValue::from_string(servers.render(1))?);
    let mut new_text = top.render(0);
    new_text.push('\n');
    // What is written must read back as the same data.
    let check: Value = serde_json::from_str(&new_text).context("re-reading the merged config")?;
    anyhow::ensure!(
        check["mcpServers"]["zwarm"] == entry,
        "the merged config did not keep the entry; nothing was written"
    );
    let change = match existing {
        Some(_) => format!(
            "~ mcpServers.zwarm: command {command}, args {}",
            serde_json::to_string(args)?
        ),
        None => format!(
            "+ mcpServers.zwarm: command {command}, args {}",
            serde_json::to_string(args)?
        ),
    };
    let backup = commit(&path, old.is_some(), &new_text)?;
    Ok(Outcome {
        file: path,
        changes: vec![change],
        backup,
    })
}

// ---------------------------------------------------------------------------------------------
// Claude Code

/// The `claude` CLI on `path`, or what to do when there is none.
fn claude_binary(path: Option<std::ffi::OsString>) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    which::which_in("claude", path, cwd).map_err(|_| {
        anyhow::anyhow!(
            "`zwarm setup claude-code` adds zwarm through the `claude` CLI, and no `claude` is on PATH. Install Claude Code (`npm install -g @anthropic-ai/claude-code`), or put the folder holding `claude` on PATH, then run `zwarm setup claude-code` again"
        )
    })
}

pub fn setup_claude_code(
    path: &Path,
    scope: Scope,
    command: &str,
    args: &[String],
) -> anyhow::Result<Outcome> {
    let path = real_path(path)?;
    let what = path.display().to_string();
    let old = read_optional(&path)?;
    let existing = json_entry(old.as_deref().unwrap_or(""), &what)?;
    if existing
        .as_ref()
        .is_some_and(|e| entry_matches(e, command, args))
    {
        return Ok(Outcome {
            file: path,
            changes: vec![],
            backup: None,
        });
    }
    let claude = claude_binary(std::env::var_os("PATH"))?;
    let scope_name = match scope {
        Scope::User => "user",
        Scope::Project => "project",
    };
    let backup = match old {
        Some(_) => Some(backup(&path)?),
        None => None,
    };
    let run = |argv: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new(&claude)
            .args(argv)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", claude.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "`claude {}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    let mut changes = Vec::new();
    if existing.is_some() {
        // `claude mcp add` refuses a name that exists: replace the old entry.
        run(&["mcp", "remove", "zwarm", "--scope", scope_name])?;
        changes.push(format!("- the old zwarm entry ({scope_name} scope)"));
    }
    let mut argv = vec!["mcp", "add", "zwarm", "--scope", scope_name, "--", command];
    argv.extend(args.iter().map(String::as_str));
    run(&argv)?;
    changes.push(format!(
        "+ zwarm ({scope_name} scope): {command} {}",
        args.join(" ")
    ));
    Ok(Outcome {
        file: path,
        changes,
        backup,
    })
}

#[cfg(test)]
mod tests;
