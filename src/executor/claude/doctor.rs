//! doctor's check of claude: a key or a login.

use std::path::PathBuf;

use crate::executor::api::{Finding, Health};

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

pub(super) fn auth() -> Finding {
    for var in [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CLAUDE_CODE_USE_BEDROCK",
        "CLAUDE_CODE_USE_VERTEX",
    ] {
        if env_set(var) {
            return Finding::new(Health::Ok, format!("{var} is set"));
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let config_dir = std::env::var_os("CLAUDE_CONFIG_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let dir = config_dir
        .clone()
        .or_else(|| home.as_ref().map(|h| h.join(".claude")));
    if let Some(d) = &dir
        && d.join(".credentials.json").is_file()
    {
        return Finding::new(
            Health::Ok,
            format!("logged in ({})", d.join(".credentials.json").display()),
        );
    }
    let state = match (&config_dir, &home) {
        (Some(d), _) => Some(d.join(".claude.json")),
        (None, Some(h)) => Some(h.join(".claude.json")),
        _ => None,
    };
    if let Some(p) = &state
        && let Ok(text) = std::fs::read_to_string(p)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && (v.get("oauthAccount").is_some_and(|a| !a.is_null())
            || v.get("primaryApiKey").is_some_and(|a| !a.is_null()))
    {
        return Finding::new(Health::Ok, format!("logged in ({})", p.display()));
    }
    if cfg!(target_os = "macos") {
        return Finding::new(Health::Warn, "no API key in the environment; a login would be in the macOS keychain, which zwarm does not read",
        )
        .fix("if `claude -p hi` asks you to log in, run `claude` and /login");
    }
    Finding::new(
        Health::Fail,
        "no ANTHROPIC_API_KEY and no login in claude's config dir",
    )
    .fix("run `claude` once and /login, or set ANTHROPIC_API_KEY where zwarm runs")
}
