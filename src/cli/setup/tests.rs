//! Unit tests of `zwarm setup`'s file handling.

use super::*;

fn args() -> Vec<String> {
    vec!["serve".into()]
}

#[test]
fn codex_setup_keeps_comments_and_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("config.toml");
    let before = "# my settings\nmodel = \"gpt-5.5\" # the model\n\n[mcp_servers.other]\ncommand = \"x\"\n\n[mcp_servers.zwarm]\ncommand = \"/old/zwarm\"\ntool_timeout_sec = 900 # long\nenv_vars = [\"MY_VAR\"]\n";
    std::fs::write(&f, before).unwrap();
    let o = setup_codex(&f, "/new/zwarm", &args()).unwrap();
    assert!(o.backup.is_some());
    assert!(!o.changes.is_empty());
    let after = std::fs::read_to_string(&f).unwrap();
    assert!(
        after.starts_with("# my settings\nmodel = \"gpt-5.5\" # the model\n"),
        "{after}"
    );
    assert!(
        after.contains("[mcp_servers.other]\ncommand = \"x\""),
        "{after}"
    );
    assert!(after.contains("tool_timeout_sec = 300 # long"), "{after}");
    let doc: toml::Table = after.parse().unwrap();
    let z = &doc["mcp_servers"]["zwarm"];
    assert_eq!(z["command"].as_str(), Some("/new/zwarm"));
    assert_eq!(z["required"].as_bool(), Some(true));
    assert_eq!(z["supports_parallel_tool_calls"].as_bool(), Some(true));
    assert_eq!(z["default_tools_approval_mode"].as_str(), Some("approve"));
    let env: Vec<&str> = z["env_vars"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(env, ["MY_VAR", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"]);
    let again = setup_codex(&f, "/new/zwarm", &args()).unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), after);
}

#[test]
fn codex_setup_creates_a_missing_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("home").join("config.toml");
    let o = setup_codex(&f, "/z", &args()).unwrap();
    assert!(o.backup.is_none());
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.starts_with("[mcp_servers.zwarm]\n"), "{text}");
    assert!(!text.contains("[mcp_servers]\n"), "{text}");
}

#[test]
fn desktop_merge_keeps_other_keys_in_order() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("claude_desktop_config.json");
    let before = "{\n  \"zeta\": {\"b\": 1, \"a\": 2},\n  \"mcpServers\": {\n    \"other\": {\"command\": \"o\"}\n  },\n  \"alpha\": true\n}\n";
    std::fs::write(&f, before).unwrap();
    let o = setup_desktop(&f, "/z", &args()).unwrap();
    assert!(o.backup.is_some());
    let after = std::fs::read_to_string(&f).unwrap();
    let v: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(v["mcpServers"]["zwarm"]["command"], "/z");
    assert_eq!(v["mcpServers"]["other"]["command"], "o");
    assert!(after.contains("\"zeta\": {\"b\": 1, \"a\": 2}"), "{after}");
    let (z, m, a) = (
        after.find("zeta").unwrap(),
        after.find("mcpServers").unwrap(),
        after.find("alpha").unwrap(),
    );
    assert!(z < m && m < a, "{after}");
    let again = setup_desktop(&f, "/z", &args()).unwrap();
    assert!(again.changes.is_empty());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), after);
}

#[test]
fn a_symlinked_config_stays_a_link_and_a_dangling_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("dotfiles").join("config.toml");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "model = \"m\"\n").unwrap();
    let link = d.path().join("config.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let o = setup_codex(&link, "/z", &args()).unwrap();
    assert!(!o.changes.is_empty());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let text = std::fs::read_to_string(&real).unwrap();
    assert!(text.contains("[mcp_servers.zwarm]"), "{text}");

    for (name, setup) in [
        (
            "config.toml",
            setup_codex as fn(&Path, &str, &[String]) -> _,
        ),
        ("claude_desktop_config.json", setup_desktop),
    ] {
        let dangling = d.path().join(format!("dangling-{name}"));
        std::os::unix::fs::symlink(d.path().join("gone").join(name), &dangling).unwrap();
        let e = format!("{:#}", setup(&dangling, "/z", &args()).unwrap_err());
        assert!(
            e.contains("is a symlink to") && e.contains("remove the link"),
            "{e}"
        );
        assert!(
            std::fs::symlink_metadata(&dangling)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link was replaced"
        );
    }
    let e = format!(
        "{:#}",
        setup_claude_code(
            &d.path().join("dangling-config.toml"),
            Scope::User,
            "/z",
            &args()
        )
        .unwrap_err()
    );
    assert!(e.contains("is a symlink to"), "{e}");
}

#[test]
fn no_claude_on_path_says_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let e = format!("{:#}", claude_binary(Some(d.path().into())).unwrap_err());
    assert!(
        e.contains("npm install -g @anthropic-ai/claude-code") && !e.contains("binary path"),
        "{e}"
    );
}
