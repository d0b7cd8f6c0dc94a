//! The container runner against a real Docker daemon, with the real codex and claude inside
//! the image against the scripted model servers on loopback (`network = "host"`).
//!
//! Most tests drive `zwarm serve` with `[runner] kind = "container"` in its trusted config, as
//! a user runs it; a few drive the runner directly for what the server cannot show (a turn
//! dropped by its supervisor, containers of dead servers) and the doctor checks.
//!
//! Needs a daemon (`DOCKER_HOST`) and the executor image (`ZWARM_TEST_IMAGE`, default
//! `zwarm-exec:test`). `.ci/run` sets both up:
//!   eval "$(bash .ci/setup)"
//! Without them every test here fails saying so; none is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, cmdline, git, keyed_script, turn_pids, wait_done};
use support::mock_anthropic::AnthropicMock;
use support::mock_gemini::{GeminiMock, contents_text};
use support::mock_openai::OpenAiMock;
use tokio::io::AsyncReadExt;
use zwarm::container::{ContainerConfig, ContainerRunner, LABEL, LABEL_SESSION, Network, TurnSpec};

fn image() -> String {
    std::env::var("ZWARM_TEST_IMAGE").unwrap_or_else(|_| "zwarm-exec:test".into())
}

async fn runner_with(state: &Path, tune: impl FnOnce(&mut ContainerConfig)) -> ContainerRunner {
    let mut cfg = ContainerConfig {
        image: image(),
        network: Network::Host,
        ..ContainerConfig::default()
    };
    tune(&mut cfg);
    match ContainerRunner::connect(cfg, state.to_path_buf()).await {
        Ok(r) => r,
        Err(e) => panic!(
            "the container tests need a Docker daemon and the executor image: {e}\n\
             Set them up with: eval \"$(bash .ci/setup)\" (the image {}; .ci/run does this)",
            image()
        ),
    }
}

async fn runner(state: &Path) -> ContainerRunner {
    runner_with(state, |_| {}).await
}

/// A unique session name for the runner-level tests.
fn session() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

// ---------------------------------------------------------------------------------------------
// `zwarm serve` with `[runner] kind = "container"`.

/// The names of the server's environment its containers get: the model servers' settings.
const PASSED_ENV: &[&str] = &[
    "MOCK_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "DISABLE_AUTOUPDATER",
    "CLAUDE_CODE_MAX_RETRIES",
    "OPENCODE_DISABLE_MODELS_FETCH",
    "OPENCODE_DISABLE_AUTOUPDATE",
    "OPENCODE_DISABLE_LSP_DOWNLOAD",
    "OPENCODE_DISABLE_SHARE",
    "OPENCODE_DISABLE_CLAUDE_CODE",
];

/// A trusted config file choosing the container runner; `top` and `container` are more lines
/// for the top level and for `[runner.container]`.
fn container_config(env: &Env, top: &str, container: &str) -> PathBuf {
    let n = std::fs::read_dir(env.dir.path())
        .map(|d| d.count())
        .unwrap_or(0);
    let path = env.dir.path().join(format!("zwarm-{n}.toml"));
    let names: Vec<String> = PASSED_ENV.iter().map(|n| format!("{n:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "interrupt_grace_seconds = 1\n{top}\n\n[runner]\nkind = \"container\"\n\n\
             [runner.container]\nimage = {image:?}\nnetwork = \"host\"\nenv = [{names}]\n{container}\n",
            image = image(),
            names = names.join(", "),
        ),
    )
    .expect("write config");
    path
}

async fn serve(env: &Env, config: &Path) -> Zwarm {
    let z = Zwarm::start(env, &["--config", config.to_str().expect("utf-8 path")]).await;
    // A server that could not reach the daemon or find the image says so and exits.
    let l = z.call("list_sessions", json!({})).await;
    assert_ne!(l.is_error, Some(true), "{:?}\n{}", l.content, z.stderr());
    z
}

/// A client of the daemon for looking at containers (the tests' own, not the server's).
async fn docker(env: &Env) -> ContainerRunner {
    runner(&env.dir.path().join("probe")).await
}

async fn containers_of(d: &ContainerRunner, id: &str) -> Vec<String> {
    d.containers(LABEL_SESSION, id).await
}

/// Wait until codex's `sleep` runs in the session's container (its processes carry the
/// session's `ZWARM_TURN` in their environment, visible in the host's /proc).
async fn wait_for_sleep(id: &str) {
    let start = Instant::now();
    while !turn_pids(id)
        .iter()
        .any(|p| cmdline(*p).starts_with("sleep "))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no `sleep` ran in the container of {id} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the session has no container (its turn's end removes it; after a restart the
/// new server removes it).
async fn wait_until_no_container(d: &ContainerRunner, id: &str) {
    let start = Instant::now();
    while !containers_of(d, id).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the container of session {id} is still there after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exec_step(cmd: &str) -> Value {
    json!({"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": cmd}}}]})
}

fn message_step(text: &str) -> Value {
    json!({"items": [{"message": text}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_through_serve_writes_the_workspace_sees_nothing_else_and_resumes() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    // Host files outside the mounts: beside the worktree, zwarm's database, another session's
    // container state.
    let secret = env.dir.path().join("secret.txt");
    std::fs::write(&secret, "host secret").expect("write");
    let other = env.state.join("containers/other-session/codex");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("auth.json"), "{}").expect("write");
    let peek = format!(
        "for f in {secret} {db} {other}/auth.json {work}/hello.py; do \
           if [ -e \"$f\" ]; then echo \"visible $f\"; else echo \"hidden $f\"; fi; \
         done > peek.txt; env | sort > env.txt",
        secret = secret.display(),
        db = env.state.join("zwarm.db").display(),
        other = other.display(),
        work = env.work.display(),
    );
    let mut script = keyed_script("codex_keyed.json", &env.work);
    script["scenarios"]["peek"] = json!([exec_step(&peek), message_step("peeked")]);
    mock.set_script(script);
    let d = docker(&env).await;
    let z = serve(&env, &container_config(&env, "", "")).await;

    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["response"], "Done: ran a command and created hello.py");
    // codex ran the command and applied the patch (codex.sandbox is the default
    // workspace-write: the container enforces it) in the mounted working dir, whose paths are
    // the host's.
    let hello = std::fs::read_to_string(env.work.join("hello.py")).expect("hello.py");
    assert!(hello.contains("hi from apply_patch"));
    assert!(env.work.join("from_shell.txt").exists());
    assert!(
        r["files_changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |f| f["path"] == env.work.join("hello.py").display().to_string()
                    && f["kind"] == "add"
            ),
        "{r}"
    );
    assert_eq!(r["commands"][0]["exit_code"], 0, "{r}");
    let id = r["session_id"].as_str().unwrap().to_string();
    assert!(containers_of(&d, &id).await.is_empty());

    // Turn 2 runs in a new container and resumes the thread (codex's state is the session's).
    let c = z
        .ok("converse", json!({"session_id": id, "message": "@@peek"}))
        .await;
    assert_eq!(c["status"], "idle", "{c}\n{}", z.stderr());
    assert_eq!(c["response"], "peeked");
    let last = mock.model_requests().last().unwrap().body["input"].to_string();
    assert!(last.contains("@@tools please"), "not resumed: {last}");
    let seen = std::fs::read_to_string(env.work.join("peek.txt")).expect("peek.txt");
    for hidden in [
        secret.clone(),
        env.state.join("zwarm.db"),
        other.join("auth.json"),
    ] {
        assert!(
            seen.contains(&format!("hidden {}", hidden.display())),
            "{seen}"
        );
    }
    assert!(
        seen.contains(&format!("visible {}/hello.py", env.work.display())),
        "{seen}"
    );
    // The environment: the executor's own, the allow-listed names and the state dirs; nothing
    // else of the server's (cargo's variables, the test's XDG dirs).
    let vars = std::fs::read_to_string(env.work.join("env.txt")).expect("env.txt");
    assert!(vars.contains(&format!("ZWARM_TURN={id}.2")), "{vars}");
    assert!(vars.contains("IS_SANDBOX=1"), "{vars}");
    let state = env.state.join("containers").join(&id);
    assert!(
        vars.contains(&format!("CODEX_HOME={}", state.join("codex").display())),
        "{vars}"
    );
    for absent in ["CARGO_MANIFEST_DIR=", "XDG_STATE_HOME=", "ZWARM_LOG="] {
        assert!(!vars.contains(absent), "{absent} leaked in: {vars}");
    }
    assert!(
        state.join("codex/sessions").is_dir(),
        "codex keeps its thread in the session's state"
    );
    assert!(containers_of(&d, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_through_serve_writes_the_workspace_and_resumes() {
    let mock = AnthropicMock::start(json!({}));
    let env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    let d = docker(&env).await;
    let z = serve(&env, &container_config(&env, "", "")).await;

    let r = z
        .ok("delegate", json!({"task": "@@tools", "adapter": "claude"}))
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["response"], "Done: created out.txt and written.txt");
    // claude's permission mode (acceptEdits) applies inside the container as outside.
    assert_eq!(
        std::fs::read_to_string(env.work.join("written.txt")).expect("written.txt"),
        "written by Write tool\n"
    );
    assert!(env.work.join("out.txt").exists());
    assert_eq!(r["commands"][0]["exit_code"], 0, "{r}");
    let id = r["session_id"].as_str().unwrap().to_string();

    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "and one more thing"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}\n{}", z.stderr());
    assert_eq!(c["response"], "Hello from mock claude");
    let last = mock.requests().last().expect("requests").body.to_string();
    assert!(last.contains("@@tools"), "not resumed: {last}");
    assert!(containers_of(&d, &id).await.is_empty());
}

/// opencode as the build found it (`.tools-acp/`, else PATH): the host side resolves it; the
/// container runs the image's copy through the image's `zwarm-acp`.
fn opencode_cli() -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools-acp/node_modules/.bin/opencode");
    if local.exists() {
        return local;
    }
    which::which("opencode").expect("opencode: run `bash .ci/install-acp-clis`")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acp_agent_through_serve_writes_the_workspace_and_converses() {
    let env0 = Env::new(None, None);
    let target = env0.work.join("hello.txt");
    let mock = GeminiMock::start(json!({"turns": [
        {"call": {"name": "write", "args": {"filePath": target.display().to_string(), "content": "hello from opencode\n"}}},
        {"text": "I wrote hello.txt."},
        {"text": "You asked me to write hello.txt; I did."},
    ]}));
    let mut env = env0;
    env.set("ZWARM_OPENCODE_BIN", &opencode_cli().display().to_string());
    env.set("ZWARM_ACP_BRIDGE", env!("CARGO_BIN_EXE_zwarm-acp"));
    for k in &PASSED_ENV[PASSED_ENV.len() - 5..] {
        env.set(k, "1");
    }
    // The project's opencode config (the workspace is all of the host the agent sees).
    std::fs::write(
        env.work.join("opencode.json"),
        json!({
            "provider": {"google": {"options": {"baseURL": format!("{}/v1beta", mock.base_url()), "apiKey": "x"}}},
            "model": "google/gemini-2.5-flash",
            "small_model": "google/gemini-2.5-flash",
            "autoupdate": false,
            "share": "disabled",
        })
        .to_string(),
    )
    .expect("opencode.json");
    let d = docker(&env).await;
    let z = serve(&env, &container_config(&env, "", "")).await;

    let r = z
        .ok(
            "delegate",
            json!({"task": "write hello.txt", "adapter": "opencode", "mode": "sync", "wait_seconds": 120}),
        )
        .await;
    let id = r["session_id"].as_str().expect("session_id").to_string();
    let r = if r["status"] == "running" {
        wait_done(&z, &id).await
    } else {
        r
    };
    assert_eq!(r["status"], "idle", "{r:#}\n{}", z.stderr());
    assert_eq!(
        std::fs::read_to_string(&target).expect("hello.txt written in the container"),
        "hello from opencode\n"
    );

    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "what did I ask?", "wait_seconds": 120}),
        )
        .await;
    let c = if c["status"] == "running" {
        wait_done(&z, &id).await
    } else {
        c
    };
    assert_eq!(c["status"], "idle", "{c:#}\n{}", z.stderr());
    let last = contents_text(&mock.model_requests().last().expect("a request").body);
    assert!(
        last.contains("write hello.txt"),
        "history not carried: {last}"
    );
    assert!(containers_of(&d, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_timeout_and_shutdown_through_serve_leave_no_container() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    let d = docker(&env).await;
    let z = serve(&env, &container_config(&env, "", "")).await;

    // Interrupt: end_session while codex's `sleep 60` runs in the container.
    let r = z
        .ok("delegate", json!({"task": "@@slowcmd", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    wait_for_sleep(&id).await;
    assert_eq!(containers_of(&d, &id).await.len(), 1);
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled"}),
        )
        .await;
    assert_eq!(e["interrupted_turn"], true, "{e}");
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["turns"][0]["status"], "interrupted", "{s}");
    assert!(containers_of(&d, &id).await.is_empty());
    assert!(!env.work.join("slow.txt").exists());

    // Shutdown (SIGTERM) with a turn running: the server is gone within 2 s, and so is the
    // container.
    let r = z
        .ok("delegate", json!({"task": "@@slowcmd", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    wait_for_sleep(&id).await;
    let took = z
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .await;
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert!(containers_of(&d, &id).await.is_empty());
    drop(z);

    // Timeout: a turn longer than turn_timeout_seconds is stopped and failed with the reason.
    let cfg = container_config(&env, "turn_timeout_seconds = 3", "");
    let z = serve(&env, &cfg).await;
    let r = z
        .ok("delegate", json!({"task": "@@slowcmd", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let s = wait_done(&z, &id).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("turn_timeout_seconds"),
        "{s}"
    );
    assert!(containers_of(&d, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_removes_a_killed_servers_container_and_resumes() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    let d = docker(&env).await;
    let cfg = container_config(&env, "", "");
    let z = serve(&env, &cfg).await;
    let r = z
        .ok("delegate", json!({"task": "@@slowcmd", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    wait_for_sleep(&id).await;
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
        .await;
    drop(z);
    // Nothing on the host stops a container when its server is killed: it runs on until a
    // zwarm on this node starts or does its housekeeping (another test's server may be the
    // one that does, as they share the daemon). The restarted server finds it by its labels
    // (a dead server's, this session's turn) and removes it; the session's turn is failed with
    // the reason and the thread resumes.
    let z = serve(&env, &cfg).await;
    wait_until_no_container(&d, &id).await;
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("stopped before it finished"),
        "{s}"
    );
    let c = z
        .ok("converse", json!({"session_id": id, "message": "go on"}))
        .await;
    assert_eq!(c["status"], "idle", "{c}\n{}", z.stderr());
    let last = mock.model_requests().last().unwrap().body["input"].to_string();
    assert!(last.contains("@@slowcmd"), "not resumed: {last}");
    assert!(containers_of(&d, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_and_the_turn_says_it_ran_out_of_memory() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    // The hog makes codex (the container's first process) the OOM killer's choice, as when
    // the executor itself grows past the limit; `tail` keeps a newline-free input in memory.
    let hog = "echo 1000 > /proc/1/oom_score_adj; head -c 4G /dev/zero | tail -n 1 >/dev/null; \
               echo survived > survived.txt";
    let mut script = keyed_script("codex_keyed.json", &env.work);
    script["scenarios"]["hog"] = json!([exec_step(hog), message_step("hogged")]);
    mock.set_script(script);
    let d = docker(&env).await;
    let z = serve(&env, &container_config(&env, "", "memory = \"256m\"")).await;

    let r = z.ok("delegate", json!({"task": "@@hog"})).await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let s = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(s["status"], "failed", "{s}\n{}", z.stderr());
    assert_eq!(s["turns"][0]["status"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("ran out of memory") && error.contains("runner.container.memory"),
        "{s}"
    );
    assert!(!env.work.join("survived.txt").exists());
    assert!(containers_of(&d, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_session_in_containers_merges_back_like_a_local_one() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let poke = "R=git-report.txt; git status --short >/dev/null && echo 'status ok' >> $R; \
                (echo 'gitdir: /tmp' > .git) 2>/dev/null || echo 'refused .git' >> $R; \
                C=$(git rev-parse --git-common-dir); \
                (printf '[core]\\n\\tfsmonitor = touch /tmp/x\\n' >> $C/config) 2>/dev/null \
                  || echo 'refused config' >> $R; \
                (echo 'touch /tmp/x' > $C/hooks/pre-commit) 2>/dev/null || echo 'refused hook' >> $R";
    let mut script = keyed_script("codex_keyed.json", &env.work);
    script["scenarios"]["gitpoke"] = json!([exec_step(poke), message_step("poked")]);
    mock.set_script(script);
    git(&env.work, &["init", "-q", "-b", "main"]);
    std::fs::write(env.work.join("README"), "project\n").expect("write");
    git(&env.work, &["add", "-A"]);
    git(&env.work, &["commit", "-q", "-m", "initial"]);
    let d = docker(&env).await;
    let z = serve(&env, &container_config(&env, "", "")).await;

    let r = z
        .ok(
            "delegate",
            json!({"task": "@@tools please", "isolation": "worktree"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    let id = r["session_id"].as_str().unwrap().to_string();
    let worktree = PathBuf::from(r["worktree"].as_str().expect("worktree"));
    // The turn wrote into the session's worktree (mounted), not into the checkout.
    assert!(worktree.join("hello.py").exists());
    assert!(!env.work.join("hello.py").exists());
    // git works inside (status, diff) but its metadata is read-only: zwarm runs git on the
    // host there, so nothing planted in it may run outside the container.
    let c = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "@@gitpoke"}),
        )
        .await;
    assert_eq!(c["status"], "idle", "{c}\n{}", z.stderr());
    let report = std::fs::read_to_string(worktree.join("git-report.txt")).expect("report");
    assert!(report.contains("status ok"), "{report}");
    assert!(report.contains("refused .git"), "{report}");
    assert!(report.contains("refused config"), "{report}");
    assert!(report.contains("refused hook"), "{report}");
    let config = std::fs::read_to_string(env.work.join(".git/config")).expect("config");
    assert!(!config.contains("fsmonitor"), "{config}");
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "integrate": "merge", "summary": "done"}),
        )
        .await;
    assert_eq!(e["merged"], true, "{e}");
    let hello = std::fs::read_to_string(env.work.join("hello.py")).expect("merged hello.py");
    assert!(hello.contains("hi from apply_patch"));
    assert_eq!(git(&env.work, &["status", "--porcelain"]), "");
    assert!(containers_of(&d, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_project_file_can_make_the_mount_read_only_but_not_leave_the_container() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    // In a container the command fails on the read-only mount (exit 1); on the host it would
    // exit 7.
    let probe = "if [ \"$IS_SANDBOX\" = 1 ]; then touch probe.txt; else exit 7; fi";
    let mut script = keyed_script("codex_keyed.json", &env.work);
    script["scenarios"]["probe"] = json!([exec_step(probe), message_step("probed")]);
    mock.set_script(script);
    // The project file tightens codex.sandbox; choosing the runner is not its to do.
    std::fs::create_dir_all(env.work.join(".zwarm")).expect("mkdir");
    std::fs::write(
        env.work.join(".zwarm/config.toml"),
        "[codex]\nsandbox = \"read-only\"\n\n[runner]\nkind = \"local\"\n",
    )
    .expect("write");
    let z = serve(&env, &container_config(&env, "", "")).await;
    let r = z.ok("delegate", json!({"task": "@@probe"})).await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["commands"][0]["exit_code"], 1, "{r}");
    assert!(!env.work.join("probe.txt").exists());
}

// ---------------------------------------------------------------------------------------------
// The runner itself: what a server cannot show.

/// A turn that runs until stopped: it prints a line, then sleeps.
fn sleeper(env: &Env, label: &str) -> TurnSpec {
    TurnSpec {
        program: "bash".into(),
        args: args(&["-c", "echo started; exec sleep 600"]),
        cwd: env.work.clone(),
        label: label.into(),
        ..TurnSpec::default()
    }
}

async fn first_line(out: &mut zwarm::container::Output) -> String {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), out.read(&mut buf))
        .await
        .expect("the turn printed nothing within 30 s")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_timeout_and_a_dropped_turn_leave_no_container() {
    let env = Env::new(None, None);
    let r = runner(&env.dir.path().join("containers")).await;
    let s = session();

    // Interrupt: SIGINT, a grace period, then SIGKILL (sleep ignores neither, bash as PID 1
    // ignores SIGINT: the hard stop is what ends it).
    let label = format!("{s}.1");
    let mut t = r.start_turn(sleeper(&env, &label)).await.expect("start");
    let mut out = t.take_stdout().expect("stdout");
    assert_eq!(first_line(&mut out).await, "started\n");
    assert_eq!(r.containers(LABEL, &label).await.len(), 1);
    let began = tokio::time::Instant::now();
    t.stop(
        Duration::from_millis(200),
        Some(began + Duration::from_secs(5)),
    )
    .await;
    let f = t.finish().await;
    assert!(f.exit.is_some(), "{f:?}");
    assert!(
        r.containers(LABEL, &label).await.is_empty(),
        "interrupted turn left its container"
    );

    // Timeout: the engine stops with a deadline, the same path; here the deadline is shorter
    // than the grace period and still holds.
    let label = format!("{s}.2");
    let mut t = r.start_turn(sleeper(&env, &label)).await.expect("start");
    let mut out = t.take_stdout().expect("stdout");
    first_line(&mut out).await;
    let by = tokio::time::Instant::now() + Duration::from_millis(1500);
    t.stop(Duration::from_secs(30), Some(by)).await;
    t.finish().await;
    assert!(r.containers(LABEL, &label).await.is_empty());

    // A turn whose supervisor is gone (dropped without finish) is removed anyway.
    let label = format!("{s}.3");
    let mut t = r.start_turn(sleeper(&env, &label)).await.expect("start");
    let mut out = t.take_stdout().expect("stdout");
    first_line(&mut out).await;
    drop(t);
    wait_until_gone(&r, &label).await;
}

async fn wait_until_gone(r: &ContainerRunner, label: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !r.containers(LABEL, label).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < until,
            "the container of {label} is still there after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_removes_what_turns_and_dead_servers_left() {
    let env = Env::new(None, None);
    let state = env.dir.path().join("containers");
    let r = runner(&state).await;
    let s = session();

    // A turn left running (its server "crashed": the turn is forgotten, not finished).
    let label = format!("{s}.1");
    let mut t = r.start_turn(sleeper(&env, &label)).await.expect("start");
    first_line(&mut t.take_stdout().expect("stdout")).await;
    std::mem::forget(t);
    // A new runner (the restarted server) removes it by its label.
    let again = runner(&state).await;
    assert_eq!(again.remove_turn(&label).await, 1);
    assert!(again.containers(LABEL, &label).await.is_empty());

    // A container of a server that is gone: same node, a pid that is not alive with that
    // start time.
    let dead = format!(
        "{}/{}/1",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("hostname")
            .trim(),
        std::process::id()
    );
    let docker = bollard::Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("version");
    let label2 = format!("{s}.2");
    docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec!["true".into()]),
                labels: Some(
                    [
                        (LABEL.to_string(), label2.clone()),
                        (zwarm::container::LABEL_SERVER.to_string(), dead),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
        )
        .await
        .expect("create a dead server's container");
    // And one of a live server (this one): kept.
    let label3 = format!("{s}.3");
    let mut live = r.start_turn(sleeper(&env, &label3)).await.expect("start");
    first_line(&mut live.take_stdout().expect("stdout")).await;
    // (Another test's server starting now may remove it first: they share the daemon.)
    again.clean_dead_servers().await;
    assert!(again.containers(LABEL, &label2).await.is_empty());
    assert_eq!(again.containers(LABEL, &label3).await.len(), 1);
    live.stop(Duration::ZERO, None).await;
    live.finish().await;
    assert!(r.containers(LABEL, &label3).await.is_empty());
}

/// `zwarm doctor --json` with a config, in the test's environment.
fn doctor(env: &Env, config: &Path) -> (i32, Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zwarm"));
    cmd.arg("doctor")
        .arg("--json")
        .arg("--state-dir")
        .arg(&env.state)
        .arg("--config")
        .arg(config)
        .current_dir(&env.work)
        .stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("ZWARM_") || k == "IS_SANDBOX" || k == "CLAUDECODE" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.vars.iter().map(|(k, v)| (k, v)));
    let o = cmd.output().expect("run zwarm doctor");
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

fn find<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}`: {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_daemon_the_image_and_the_clis_in_it() {
    let env = Env::new(None, None);
    let (_, v) = doctor(&env, &container_config(&env, "", ""));
    let daemon = find(&v, "container runner");
    assert_eq!(daemon["status"], "ok", "{v:#}");
    assert!(
        daemon["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("image `{}`", image())),
        "{v:#}"
    );
    let codex = find(&v, "codex in the image");
    assert_eq!(codex["status"], "ok", "{v:#}");
    assert!(
        codex["detail"].as_str().unwrap().contains("codex-cli"),
        "{v:#}"
    );
    let claude = find(&v, "claude in the image");
    assert_eq!(claude["status"], "ok", "{v:#}");
    assert!(
        claude["detail"].as_str().unwrap().contains("Claude Code"),
        "{v:#}"
    );
    // codex's own sandbox is not used in a container: its probe on this machine is not run.
    let sandbox = find(&v, "codex sandbox");
    assert_eq!(sandbox["status"], "ok", "{v:#}");
    assert!(
        sandbox["detail"]
            .as_str()
            .unwrap()
            .contains("not used in a container"),
        "{v:#}"
    );
    // The scratch sessions of the `--version` runs are gone; the state dir was not touched.
    assert!(!env.state.join("containers").exists());

    // An image the daemon does not have: the check fails and says what to do.
    let missing = env.dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        "[runner]\nkind = \"container\"\n[runner.container]\nimage = \"zwarm-no-such-image:0\"\n",
    )
    .expect("write");
    let (code, v) = doctor(&env, &missing);
    assert_eq!(code, 1, "{v:#}");
    let daemon = find(&v, "container runner");
    assert_eq!(daemon["status"], "fail", "{v:#}");
    assert!(
        daemon["detail"]
            .as_str()
            .unwrap()
            .contains("`zwarm-no-such-image:0` is not on the Docker daemon"),
        "{v:#}"
    );
    assert!(
        daemon["fix"]
            .as_str()
            .unwrap()
            .contains("zwarm image build"),
        "{v:#}"
    );
    // That config passes no names in: the key zwarm has would not reach the executors.
    let keys = find(&v, "keys passed in");
    assert_eq!(keys["status"], "warn", "{v:#}");
    assert!(
        keys["detail"]
            .as_str()
            .unwrap()
            .contains("ANTHROPIC_API_KEY"),
        "{v:#}"
    );
}
