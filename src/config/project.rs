//! The project: which directory it is, where its state lives, and what its own config file
//! (`<project>/.zwarm/config.toml`, untrusted) may set.

use std::path::{Path, PathBuf};

use toml::Value;

use super::error::ConfigError;
use super::keys::{self, Trust};
use super::layers::{get_path, insert_path, problems, read_file, remove_path};
use super::settings::{self, Config, IgnoredKey};

/// Longest readable part of a [`project_slug`].
pub(super) const SLUG_READABLE_MAX: usize = 48;

/// Where a key the project file may not set may be set instead (in every ignored reason).
const TRUSTED_LAYERS: &str = "executors can write the project file; set it in the user config file, --config FILE, a ZWARM_* variable or --set";

/// The project that `cwd` (canonical) belongs to: the top level of the git work tree that
/// contains it, else `cwd` itself.
///
/// No program runs: the directories from `cwd` up are searched for a `.git` entry, as git
/// does, and one counts only when it looks like a repository (a directory holding `HEAD`, or a
/// file saying `gitdir: DIR` of a directory holding `HEAD`), so a stray `.git` file or an empty
/// directory is passed over.
pub fn project_root(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .find(|dir| is_git_top(dir))
        .unwrap_or(cwd)
        .to_path_buf()
}

fn is_git_top(dir: &Path) -> bool {
    let dot_git = dir.join(".git");
    let Ok(meta) = std::fs::metadata(&dot_git) else {
        return false;
    };
    if meta.is_dir() {
        return dot_git.join("HEAD").is_file();
    }
    if !meta.is_file() || meta.len() > 4096 {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(&dot_git) else {
        return false;
    };
    let Some(target) = text.lines().next().and_then(|l| l.strip_prefix("gitdir:")) else {
        return false;
    };
    let target = Path::new(target.trim());
    dir.join(target).join("HEAD").is_file()
}

/// `<project>/.zwarm/config.toml`: the untrusted project config file.
pub fn project_config_file(project_dir: &Path) -> PathBuf {
    project_dir.join(".zwarm").join("config.toml")
}

/// A directory name for a project's state: the end of its path, readable (`/` becomes `-`,
/// other unusual characters `_`, at most 48 characters, cut at a `-`), then `-` and 8 hex digits
/// of an FNV-1a hash of the whole path, so two paths never share one by accident.
/// Stable across versions: changing it would lose every project's state.
pub fn project_slug(project_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in project_dir.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = (hash ^ (hash >> 32)) as u32;
    // Every character becomes one ASCII byte, so byte offsets below are char boundaries.
    let readable: String = project_dir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
            _ => '_',
        })
        .collect();
    let mut tail = &readable[readable.len().saturating_sub(SLUG_READABLE_MAX)..];
    if tail.len() < readable.len()
        && let Some((_, rest)) = tail.split_once('-')
        && !rest.is_empty()
    {
        tail = rest;
    }
    let tail = tail.trim_start_matches(['-', '.']);
    let name = if tail.is_empty() { "root" } else { tail };
    format!("{name}-{folded:08x}")
}

/// `<project>/.zwarm` when it holds a zwarm 0.2 state and is not the chosen state dir.
pub(super) fn legacy_state_dir(project_dir: &Path, state_dir: &Path) -> Option<PathBuf> {
    let legacy = project_dir.join(".zwarm");
    let holds_state = legacy.join("sessions").is_dir() || legacy.join("events.jsonl").is_file();
    if !holds_state {
        return None;
    }
    let same = legacy == state_dir
        || matches!(
            (std::fs::canonicalize(&legacy), std::fs::canonicalize(state_dir)),
            (Ok(a), Ok(b)) if a == b
        );
    (!same).then_some(legacy)
}

/// The project file as a layer: what of it applies, and what does not and why. Never an
/// error: an executor can write the file, so nothing in it may stop zwarm. An unreadable file,
/// an unknown key, a bad value, a key only a trusted layer may set and a setting that would
/// loosen what the layers below say (`user`: the user config file) are all left out and listed.
pub(super) fn project_layer(
    file: &Path,
    user: Option<&toml::Table>,
) -> (Option<toml::Table>, Vec<IgnoredKey>) {
    let mut ignored = Vec::new();
    let mut ignore = |key: &str, reason: String| {
        ignored.push(IgnoredKey {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        });
    };
    if !file.is_file() {
        return (None, ignored);
    }
    let mut t = match read_file(file) {
        Ok(t) => t,
        Err(e) => {
            ignore("*", format!("the whole file is ignored: {e}"));
            return (None, ignored);
        }
    };
    let source_name = file.display().to_string();
    for (key, e) in problems(&t, "", &source_name) {
        remove_path(&mut t, &key);
        ignore(&key, e.to_string());
    }
    for k in keys::table() {
        if let Trust::TrustedOnly(why) = k.trust
            && remove_path(&mut t, k.key).is_some()
        {
            ignore(
                k.key,
                format!(
                    "only a trusted layer may set `{}`: {why}; {TRUSTED_LAYERS}",
                    k.key
                ),
            );
        }
    }
    // `[executors.NAME]` declares an executor: a program zwarm would run.
    let named: Vec<String> = match t.get("executors") {
        Some(Value::Table(e)) => e
            .keys()
            .map(|name| format!("executors.{name}"))
            .filter(|path| keys::named_table(path).is_some())
            .collect(),
        _ => vec![],
    };
    for path in named {
        remove_path(&mut t, &path);
        let name = path.trim_start_matches("executors.");
        ignore(
            &path,
            format!(
                "only a trusted layer may declare the executor `{name}`: {}; {TRUSTED_LAYERS}",
                super::executors::DECLARE
            ),
        );
    }
    for (key, why) in super::guardrails::tighten_only(&mut t, user) {
        ignore(
            &key,
            format!("the project file may only tighten `{key}`: {why}; {TRUSTED_LAYERS}"),
        );
    }
    // Values of the wrong type or out of range: each key is tried alone over the defaults.
    for k in keys::table() {
        let Some(value) = get_path(&t, k.key).cloned() else {
            continue;
        };
        let mut alone = toml::Table::new();
        let tried = insert_path(&mut alone, k.key, value).and_then(|()| {
            let cfg: Config = Value::Table(alone)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
            settings::validate(&cfg)
        });
        if let Err(e) = tried {
            remove_path(&mut t, k.key);
            ignore(
                k.key,
                format!(
                    "bad value in {source_name}: {}",
                    crate::text::one_line(&e.to_string(), 300)
                ),
            );
        }
    }
    for i in &ignored {
        tracing::warn!(file = %i.file.display(), key = %i.key, reason = %i.reason, "ignored a key of the project config file");
    }
    (Some(t), ignored)
}
