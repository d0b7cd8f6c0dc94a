use super::project::SLUG_READABLE_MAX;
use super::*;

/// Sources with a temp project dir, state and XDG homes inside a temp dir.
struct T {
    dir: tempfile::TempDir,
    src: Sources,
}

fn t(env: &[(&str, &str)], sets: &[&str]) -> T {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let mut vars = vec![
        (
            "XDG_CONFIG_HOME".to_string(),
            dir.path().join("config").display().to_string(),
        ),
        (
            "XDG_STATE_HOME".to_string(),
            dir.path().join("state").display().to_string(),
        ),
    ];
    vars.extend(env.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    let src = Sources {
        config_file: None,
        state_dir: None,
        env: vars,
        sets: sets.iter().map(|s| s.to_string()).collect(),
        cwd: project,
    };
    T { dir, src }
}

fn load_err(t: &T) -> String {
    load(&t.src).unwrap_err().to_string()
}

#[test]
fn layers_in_order() {
    let mut t = t(
        &[("ZWARM_CODEX_MODEL", "m2"), ("ZWARM_CODEX_BIN", "/x/codex")],
        &["max_running=5"],
    );
    let f = t.dir.path().join("c.toml");
    std::fs::write(
        &f,
        "max_running = 3\n[codex]\nsandbox = \"read-only\"\nmodel = \"m1\"\n",
    )
    .unwrap();
    t.src.config_file = Some(f);
    let c = load(&t.src).unwrap();
    assert_eq!(c.codex.sandbox, "read-only");
    assert_eq!(c.codex.model.as_deref(), Some("m2"));
    assert_eq!(c.codex.binary, Some(PathBuf::from("/x/codex")));
    assert_eq!(c.max_running, 5);
}

#[test]
fn state_dir_config_file_is_not_read() {
    let mut t = t(&[], &[]);
    let state = t.dir.path().join("chosen");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("config.toml"), "max_running = 2\n").unwrap();
    t.src.state_dir = Some(state.clone());
    let c = load(&t.src).unwrap();
    assert_eq!(c.max_running, Config::default().max_running);
    assert_eq!(c.state_dir, state);
}

#[test]
fn relative_state_dir_is_under_the_project() {
    let t = t(&[], &["state_dir=./s"]);
    let c = load(&t.src).unwrap();
    assert!(c.state_dir.is_absolute());
    assert_eq!(c.state_dir, c.project_dir.join("s"));
    assert!(c.warnings.iter().any(|w| w.contains("inside the project")));
}

#[test]
fn unknown_keys_are_named() {
    let mut t = t(&[], &[]);
    let f = t.dir.path().join("c.toml");
    std::fs::write(&f, "[codex]\nsandox = \"x\"\n").unwrap();
    t.src.config_file = Some(f);
    let e = load_err(&t);
    assert!(e.contains("codex.sandox") && e.contains("c.toml"), "{e}");
    t.src.config_file = None;
    t.src.sets = vec!["nope=1".into()];
    assert!(load_err(&t).contains("nope"));
    t.src.sets = vec!["max_running=lots".into()];
    assert!(load_err(&t).contains("whole number"));
}

#[test]
fn mode_values_are_checked_in_every_layer() {
    let mut t = t(&[("ZWARM_SANDBOX", "full")], &[]);
    let e = load_err(&t);
    assert!(
        e.contains("ZWARM_SANDBOX") && e.contains("danger-full-access"),
        "{e}"
    );
    t.src.env.pop();
    t.src.sets = vec!["claude.permission_mode=yolo".into()];
    let e = load_err(&t);
    assert!(
        e.contains("claude.permission_mode") && e.contains("yolo"),
        "{e}"
    );
    t.src.sets = vec!["claude.permission_mode=manual".into()];
    assert_eq!(load(&t.src).unwrap().claude.permission_mode, "manual");
}

#[test]
fn watcher_settings_layer_and_are_checked() {
    let mut t = t(
        &[("ZWARM_WATCHERS_QUALITY_ENABLED", "false")],
        &["watchers.budget.max_tokens=1000"],
    );
    let f = t.dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[watchers.budget]\nmax_cost_usd = 2.5\n[watchers.budget.prices.\"gpt-5.5\"]\ninput_per_million = 1.0\noutput_per_million = 8.0\n[[watchers.pattern.rules]]\nname = \"no-sleep\"\nregex = \"sleep\"\naction = \"abort\"\n",
    )
    .unwrap();
    t.src.config_file = Some(f);
    let c = load(&t.src).unwrap();
    assert_eq!(c.watchers.budget.max_cost_usd, Some(2.5));
    assert_eq!(c.watchers.budget.max_tokens, Some(1000));
    assert_eq!(c.watchers.budget.prices["gpt-5.5"].output_per_million, 8.0);
    assert_eq!(c.watchers.pattern.rules[0].action, "abort");
    assert!(!c.watchers.quality.enabled);
    t.src.config_file = None;
    t.src.sets = vec!["watchers.budget.max_cost=1".into()];
    assert!(load_err(&t).contains("watchers.budget.max_cost"));
    t.src.sets = vec!["watchers.scope.action=explode".into()];
    assert!(load_err(&t).contains("explode"));
}

#[test]
fn lists_from_env() {
    let t = t(
        &[("ZWARM_CLAUDE_ALLOWED_TOOLS", "Bash, Write")],
        &["codex.extra_args=[\"-c\", \"a=1\"]"],
    );
    let c = load(&t.src).unwrap();
    assert_eq!(c.claude.allowed_tools, vec!["Bash", "Write"]);
    assert_eq!(c.codex.extra_args, vec!["-c", "a=1"]);
}

#[test]
fn project_mode_may_not_widen_the_user_file() {
    let t = t(&[], &[]);
    let user = t.dir.path().join("config/zwarm");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(
        user.join("config.toml"),
        "[codex]\nsandbox = \"read-only\"\n",
    )
    .unwrap();
    let project = t.src.cwd.join(".zwarm");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("config.toml"),
        "[codex]\nsandbox = \"workspace-write\"\n",
    )
    .unwrap();
    let c = load(&t.src).unwrap();
    assert_eq!(c.codex.sandbox, "read-only");
    assert_eq!(c.ignored.len(), 1);
    assert!(
        c.ignored[0].reason.contains("user config"),
        "{:?}",
        c.ignored
    );
}

#[test]
fn slug_is_stable_readable_and_bounded() {
    // Pinned: a different slug would orphan every project's existing state.
    assert_eq!(
        project_slug(Path::new("/home/me/src/proj")),
        "home-me-src-proj-90c1ba2b"
    );
    assert_ne!(
        project_slug(Path::new("/home/me/src/proj")),
        project_slug(Path::new("/home/me/src-proj"))
    );
    assert!(project_slug(Path::new("/")).starts_with("root-"));
    let long = format!("/{}/the-project", "very-long-directory-name/".repeat(6));
    let slug = project_slug(Path::new(&long));
    assert!(slug.len() <= SLUG_READABLE_MAX + 9, "{slug}");
    assert!(slug.contains("the-project"), "{slug}");
    let odd = project_slug(Path::new("/tmp/a b/ü"));
    assert!(odd.starts_with("tmp-a_b-_-"), "{odd}");
}

#[test]
fn the_key_table_is_whole() {
    use keys::Trust;
    // Every section's fields are listed, and every key lies in a listed section.
    for s in keys::all()
        .iter()
        .filter(|k| matches!(k.trust, Trust::Section))
    {
        let prefix = format!("{}.", s.key);
        assert!(
            keys::all().iter().any(|k| k.key.starts_with(&prefix)),
            "section `{}` has no fields listed: add a fields! block for it",
            s.key
        );
    }
    for k in keys::table() {
        if let Some((parent, _)) = k.key.rsplit_once('.') {
            assert!(keys::is_section(parent), "{}", k.key);
        }
        assert!(!k.doc.is_empty(), "{} has no documentation", k.key);
        assert_eq!(keys::from_env_name(&k.env_name()).as_deref(), Some(k.key));
    }
    // Variable names are unique, aliases name keys.
    let mut names: Vec<String> = keys::table().map(|k| k.env_name()).collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n);
    for (alias, key) in keys::ENV_ALIASES {
        assert!(keys::find(key).is_some(), "{alias}");
        assert_eq!(keys::from_env_name(alias).as_deref(), Some(*key));
    }
    // Every default serialises back to a config that loads.
    let mut t = toml::Table::new();
    for k in keys::table() {
        if let Some(v) = &k.default {
            layers::insert_path(&mut t, k.key, v.clone()).unwrap();
        }
    }
    let c: Config = toml::Value::Table(t).try_into().unwrap();
    settings::validate(&c).unwrap();
}

#[test]
fn suggestions_are_near_misses_only() {
    assert_eq!(keys::suggest("defualt_adapter"), Some("default_adapter"));
    assert_eq!(
        keys::suggest("watchers.budget.max_cost"),
        Some("watchers.budget.max_cost_usd")
    );
    assert_eq!(keys::suggest("zzz"), None);
    assert_eq!(
        keys::suggest_env("ZWARM_MAX_RUNING").as_deref(),
        Some("ZWARM_MAX_RUNNING")
    );
}

#[test]
fn declared_executors_from_the_trusted_layers() {
    let t = t(
        &[
            ("ZWARM_EXECUTORS_MY_AGENT_PROTOCOL", "acp"),
            ("ZWARM_EXECUTORS_MY_AGENT_COMMAND", "[\"agent\", \"--acp\"]"),
            ("ZWARM_EXECUTORS_MY_AGENT_AUTH_ENV", "AGENT_KEY"),
            ("ZWARM_EXECUTORS_MY_AGENT_ENV", "{ MODE = \"ask\" }"),
        ],
        &[
            "executors.other.protocol=acp",
            "executors.other.command=other,acp",
        ],
    );
    let user = t.dir.path().join("config/zwarm/config.toml");
    std::fs::create_dir_all(user.parent().unwrap()).unwrap();
    std::fs::write(
        &user,
        "[executors.copilot]\nprotocol = \"acp\"\ncommand = [\"copilot\", \"--acp\", \"--stdio\"]\n",
    )
    .unwrap();
    let c = load(&t.src).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let d = &c.executors.declared;
    assert_eq!(d["copilot"].command, ["copilot", "--acp", "--stdio"]);
    assert_eq!(d["my_agent"].command, ["agent", "--acp"]);
    assert_eq!(d["my_agent"].auth_env, ["AGENT_KEY"]);
    assert_eq!(d["my_agent"].env["MODE"], "ask");
    assert_eq!(d["other"].command, ["other", "acp"]);
    assert_eq!(
        keys::from_env_name("ZWARM_EXECUTORS_A_B_AUTH_ENV").as_deref(),
        Some("executors.a_b.auth_env")
    );
    assert_eq!(keys::from_env_name("ZWARM_EXECUTORS_A_NOPE"), None);
}

#[test]
fn declared_executors_in_the_project_file_are_ignored() {
    let t = t(&[], &[]);
    let file = project_config_file(&t.src.cwd);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        "max_running = 2\n[executors.evil]\nprotocol = \"acp\"\ncommand = [\"sh\", \"-c\", \"x\"]\n",
    )
    .unwrap();
    let c = load(&t.src).unwrap();
    assert!(c.executors.declared.is_empty());
    assert_eq!(c.max_running, 2, "the rest applies");
    assert_eq!(c.ignored.len(), 1, "{:?}", c.ignored);
    assert_eq!(c.ignored[0].key, "executors.evil");
    assert!(
        c.ignored[0]
            .reason
            .contains("only a trusted layer may declare the executor `evil`"),
        "{:?}",
        c.ignored
    );
}

#[test]
fn bad_declarations_in_trusted_layers_stop_loading() {
    let e = load_err(&t(&[], &["executors.Bad.command=x"]));
    assert!(e.contains("cannot name an executor"), "{e}");
    let e = load_err(&t(&[], &["executors.a.command=x"]));
    assert!(e.contains("executors.a.protocol"), "{e}");
    let e = load_err(&t(&[], &["executors.a.protocol=mcp"]));
    assert!(
        e.contains("executors.a.protocol") && e.contains("acp"),
        "{e}"
    );
    let e = load_err(&t(&[], &["executors.a.program=x"]));
    assert!(
        e.contains("unknown config key `executors.a.program`"),
        "{e}"
    );
    let e = load_err(&t(&[], &["executors.mcp_server=x"]));
    assert!(e.contains("did you mean `executors.mcp_servers`?"), "{e}");
}

#[test]
fn executor_binary_variables_are_not_unknown_keys() {
    let t = t(
        &[
            ("ZWARM_GEMINI_BIN", "/x/gemini"),
            ("ZWARM_MY_AGENT_BIN", "/x/agent"),
            ("ZWARM_ACP_BRIDGE", "/x/zwarm-acp"),
            ("ZWARM_CODEX_BIN", "/x/codex"),
            ("ZWARM_NOT_A_KEY", "1"),
            ("ZWARM__BIN", "1"),
        ],
        &[],
    );
    let c = load(&t.src).unwrap();
    assert_eq!(
        c.codex.binary.as_deref(),
        Some(std::path::Path::new("/x/codex"))
    );
    let unknown: Vec<&String> = c
        .warnings
        .iter()
        .filter(|w| w.contains("unknown"))
        .collect();
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    assert!(unknown.iter().any(|w| w.contains("ZWARM_NOT_A_KEY")));
    assert!(unknown.iter().any(|w| w.contains("ZWARM__BIN")));
}
