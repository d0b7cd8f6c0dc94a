//! The container runner against a real Docker daemon, with the real codex and claude inside
//! the image against the scripted model servers on loopback (`network = "host"`).
//!
//! Needs a daemon (`DOCKER_HOST`) and the executor image (`ZWARM_TEST_IMAGE`, default
//! `zwarm-exec:test`). `.ci/run` sets both up:
//!   eval "$(bash .ci/docker start)" && bash .ci/image .tools zwarm-exec:test
//! Without them every test here fails saying so; none is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{Env, keyed_script};
use support::mock_anthropic::AnthropicMock;
use support::mock_openai::OpenAiMock;
use tokio::io::AsyncReadExt;
use zwarm::container::{
    ContainerConfig, ContainerFinished, ContainerRunner, ContainerTurn, LABEL, Network, TurnSpec,
};

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
             Set them up with: eval \"$(bash .ci/docker start)\" && bash .ci/image .tools {}\n\
             (.ci/run does this)",
            image()
        ),
    }
}

async fn runner(state: &Path) -> ContainerRunner {
    runner_with(state, |_| {}).await
}

/// A unique label `<session>.<turn>` for one test's session.
fn session() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

struct Ran {
    stdout: String,
    stderr: String,
    finished: ContainerFinished,
}

/// Run a turn to its end, collecting both streams.
async fn run(r: &ContainerRunner, spec: TurnSpec) -> Ran {
    let mut t = r
        .start_turn(spec)
        .await
        .expect("start the turn's container");
    let (out, err) = streams(&mut t);
    t.wait().await;
    let finished = t.finish().await;
    Ran {
        stdout: out.await.expect("stdout reader"),
        stderr: err.await.expect("stderr reader"),
        finished,
    }
}

fn streams(
    t: &mut ContainerTurn,
) -> (
    tokio::task::JoinHandle<String>,
    tokio::task::JoinHandle<String>,
) {
    let read = |s: Option<zwarm::container::Output>| {
        tokio::spawn(async move {
            let mut v = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut v).await;
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    (read(t.take_stdout()), read(t.take_stderr()))
}

fn codex_home(env: &Env) -> String {
    env.dir.path().join("codex-home").display().to_string()
}

/// `codex exec` as zwarm launches it (the prompt on stdin, never in argv), with the container
/// as the sandbox.
fn codex_spec(env: &Env, label: &str, last: &Path, resume: Option<&str>, prompt: &str) -> TurnSpec {
    let mut a = args(&["exec", "--json", "--skip-git-repo-check", "-C"]);
    a.push(env.work.clone().into_os_string());
    a.extend(args(&["-s", "danger-full-access", "-o"]));
    a.push(last.into());
    if let Some(thread) = resume {
        a.extend(args(&["resume", "--", thread]));
    } else {
        a.push("--".into());
    }
    a.push("-".into());
    TurnSpec {
        program: PathBuf::from("/somewhere/on/the/host/codex"),
        args: a,
        cwd: env.work.clone(),
        env_set: vec![
            ("CODEX_HOME".into(), codex_home(env)),
            ("MOCK_KEY".into(), "x".into()),
        ],
        env_remove: vec!["RUST_BACKTRACE".into()],
        stdin: Some(prompt.as_bytes().to_vec()),
        read_back: vec![last.to_path_buf()],
        label: label.into(),
    }
}

fn thread_id(stdout: &str) -> String {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "thread.started")
        .and_then(|v| v["thread_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no thread.started in codex's output:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_in_a_container_writes_into_the_workspace_and_resumes() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    let r = runner(&env.dir.path().join("containers")).await;
    let s = session();
    let last = env.dir.path().join("scratch/last-1.txt");

    let one = run(
        &r,
        codex_spec(&env, &format!("{s}.1"), &last, None, "@@tools please"),
    )
    .await;
    assert_eq!(
        one.finished.exit.and_then(|e| e.code()),
        Some(0),
        "stdout: {}\nstderr: {}",
        one.stdout,
        one.stderr
    );
    assert!(!one.finished.oom_killed);
    // codex ran the command and applied the patch in the mounted worktree.
    let hello = std::fs::read_to_string(env.work.join("hello.py")).unwrap_or_else(|e| {
        panic!(
            "hello.py not in the workspace ({e}); stdout:\n{}",
            one.stdout
        )
    });
    assert!(hello.contains("hi from apply_patch"));
    assert!(env.work.join("from_shell.txt").exists());
    // stdout is codex's JSONL, line for line, stderr separate.
    assert!(
        one.stdout.contains(r#""type":"turn.completed""#),
        "{}",
        one.stdout
    );
    assert!(
        one.stdout
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "stdout carries only codex's JSONL: {}",
        one.stdout
    );
    // The -o file came back under the name codex was given, and is gone from disk.
    assert_eq!(
        one.finished.files,
        vec![(
            last.clone(),
            Some("Done: ran a command and created hello.py".to_string())
        )]
    );
    let thread = thread_id(&one.stdout);
    assert!(r.containers(LABEL, &format!("{s}.1")).await.is_empty());

    // Turn 2 in a new container resumes the thread: its state lives in the session's dir.
    let two = run(
        &r,
        codex_spec(
            &env,
            &format!("{s}.2"),
            &last,
            Some(&thread),
            "and now say hello",
        ),
    )
    .await;
    assert_eq!(
        two.finished.exit.and_then(|e| e.code()),
        Some(0),
        "{}",
        two.stderr
    );
    assert_eq!(thread_id(&two.stdout), thread);
    let reqs = mock.model_requests();
    let input = reqs.last().expect("model requests").body["input"].to_string();
    assert!(
        input.contains("@@tools please"),
        "resumed turn lacks the first prompt"
    );
    assert!(input.contains("and now say hello"));
    assert_eq!(
        two.finished.files[0].1.as_deref(),
        Some("Hello from mock model")
    );
    // When the session ends for good its state goes.
    let state = env.dir.path().join("containers").join(&s);
    assert!(
        state.join("codex/sessions").is_dir(),
        "codex kept its thread there"
    );
    r.forget_session(&s).await.expect("forget");
    assert!(!state.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_in_a_container_writes_into_the_workspace_and_resumes() {
    let mock = AnthropicMock::start(json!({}));
    let env = Env::new(None, Some(&mock));
    mock.set_script(keyed_script("claude_keyed.json", &env.work));
    let r = runner(&env.dir.path().join("containers")).await;
    let s = session();
    let spec = |turn: u32, tail: &[&str]| {
        let mut a = args(&[
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
        ]);
        a.extend(args(tail));
        TurnSpec {
            program: PathBuf::from("/host/node_modules/@anthropic-ai/claude-code/bin/claude.exe"),
            args: a,
            cwd: env.work.clone(),
            env_set: vec![
                ("ANTHROPIC_BASE_URL".into(), mock.base_url()),
                ("ANTHROPIC_API_KEY".into(), "sk-test".into()),
                (
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
                    "1".into(),
                ),
                ("DISABLE_AUTOUPDATER".into(), "1".into()),
                ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
            ],
            env_remove: vec!["CLAUDECODE".into()],
            stdin: None,
            read_back: vec![],
            label: format!("{s}.{turn}"),
        }
    };
    let one = run(&r, spec(1, &["--", "@@tools"])).await;
    assert_eq!(
        one.finished.exit.and_then(|e| e.code()),
        Some(0),
        "{}",
        one.stderr
    );
    let result = one
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "result")
        .unwrap_or_else(|| panic!("no result line:\n{}", one.stdout));
    assert_eq!(result["is_error"], false, "{result}");
    let id = result["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    // claude's Bash and Write tools wrote into the mounted worktree.
    let written: Vec<String> = std::fs::read_dir(&env.work)
        .expect("workspace")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(written.iter().any(|n| n == "out.txt"), "{written:?}");

    let two = run(&r, spec(2, &["--resume", &id, "--", "and one more thing"])).await;
    assert_eq!(
        two.finished.exit.and_then(|e| e.code()),
        Some(0),
        "{}",
        two.stderr
    );
    assert!(
        two.stdout.contains("Hello from mock claude"),
        "{}",
        two.stdout
    );
    let last = mock.requests().last().expect("requests").body.to_string();
    assert!(
        last.contains("@@tools"),
        "resumed turn lacks the first prompt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_sees_the_worktree_and_nothing_else_of_the_host() {
    let env = Env::new(None, None);
    let state = env.dir.path().join("containers");
    let r = runner_with(&state, |c| c.env = vec!["CARGO_PKG_NAME".into()]).await;
    // Host files outside the mount: beside the worktree, another session's state.
    let secret = env.dir.path().join("secret.txt");
    std::fs::write(&secret, "host secret").expect("write");
    let other = state.join("other-session/codex");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("auth.json"), "{}").expect("write");
    std::fs::write(env.work.join("in-tree.txt"), "mine").expect("write");
    let script = format!(
        "for f in {secret} {other}/auth.json {work}/in-tree.txt; do \
           if [ -e \"$f\" ]; then echo \"visible $f\"; else echo \"hidden $f\"; fi; done; \
         echo made > {work}/made-inside.txt; env",
        secret = secret.display(),
        other = other.display(),
        work = env.work.display(),
    );
    let ran = run(
        &r,
        TurnSpec {
            program: "bash".into(),
            args: args(&["-c", &script]),
            cwd: env.work.clone(),
            env_set: vec![("SET_BY_EXECUTOR".into(), "1".into())],
            label: format!("{}.1", session()),
            ..TurnSpec::default()
        },
    )
    .await;
    assert_eq!(
        ran.finished.exit.and_then(|e| e.code()),
        Some(0),
        "{}",
        ran.stderr
    );
    let out = &ran.stdout;
    assert!(
        out.contains(&format!("hidden {}", secret.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("hidden {}/auth.json", other.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("visible {}/in-tree.txt", env.work.display())),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(env.work.join("made-inside.txt")).expect("written inside"),
        "made\n"
    );
    // The environment: the executor's own, the allow-listed names, the state dirs; nothing
    // else of this process's (cargo sets CARGO_* for tests).
    assert!(out.contains("SET_BY_EXECUTOR=1"), "{out}");
    assert!(out.contains("CARGO_PKG_NAME=zwarm"), "{out}");
    assert!(!out.contains("CARGO_MANIFEST_DIR"), "{out}");
    assert!(
        out.contains(&format!("CODEX_HOME={}", state.display())),
        "{out}"
    );
}

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
    assert!(again.clean_dead_servers().await >= 1);
    assert!(again.containers(LABEL, &label2).await.is_empty());
    assert_eq!(again.containers(LABEL, &label3).await.len(), 1);
    live.stop(Duration::ZERO, None).await;
    live.finish().await;
    assert!(r.containers(LABEL, &label3).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_and_reported_as_out_of_memory() {
    let env = Env::new(None, None);
    let r = runner_with(&env.dir.path().join("containers"), |c| {
        c.memory = Some("64m".into())
    })
    .await;
    // `tail` keeps the whole of a newline-free input in memory.
    let ran = run(
        &r,
        TurnSpec {
            program: "bash".into(),
            args: args(&["-c", "head -c 2G /dev/zero | tail -n 1 >/dev/null"]),
            cwd: env.work.clone(),
            label: format!("{}.1", session()),
            ..TurnSpec::default()
        },
    )
    .await;
    assert!(ran.finished.oom_killed, "{:?} {}", ran.finished, ran.stderr);
    // bash reports its killed pipeline as 128 + SIGKILL: a death by signal 9.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(ran.finished.exit.and_then(|e| e.signal()), Some(9));
    assert!(
        ran.stderr
            .contains("ran out of memory (runner.container.memory = 64m)"),
        "{}",
        ran.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// The engine on the container runner: the same Manager a server runs, the real executor
// launch (codex's flags, the prompt on stdin, the -o file read back), turns in containers.

mod engine {
    use std::time::{Duration, Instant};

    use serde_json::json;
    use tokio_util::sync::CancellationToken;
    use zwarm::container::{ContainerRuns, LABEL_SESSION};
    use zwarm::sessions::{DelegateRequest, Manager};

    use super::*;

    /// codex pointed at the mock by flags (the container gets no config file of the host's):
    /// the key comes from an allow-listed variable this process has.
    fn config(env: &Env, mock: &OpenAiMock) -> zwarm::config::Config {
        let mut codex = zwarm::config::Config::default().codex;
        codex.binary = Some(support::harness::cli_dir("codex").join("codex"));
        // The container is the sandbox: codex's own cannot work inside one.
        codex.sandbox = "danger-full-access".into();
        codex.extra_args = [
            "-c",
            "model_provider=mock",
            "-c",
            &format!(
                "model_providers.mock={{name=\"mock\",base_url=\"{}\",wire_api=\"responses\",env_key=\"CARGO_PKG_NAME\",request_max_retries=0,stream_max_retries=0}}",
                mock.base_url()
            ),
            "-c",
            "model=\"gpt-5.5\"",
            "-c",
            "analytics.enabled=false",
            "--disable",
            "plugins",
            "--disable",
            "unbounded_connection_retries",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        zwarm::config::Config {
            state_dir: env.state.clone(),
            allowed_roots: vec![env.dir.path().to_path_buf()],
            default_adapter: "codex".into(),
            interrupt_grace_seconds: 1,
            codex,
            ..Default::default()
        }
    }

    async fn manager(env: &Env, mock: &OpenAiMock) -> (Manager, ContainerRunner) {
        let r = runner_with(&env.dir.path().join("containers"), |c| {
            c.env = vec!["CARGO_PKG_NAME".into()];
        })
        .await;
        let m = Manager::start_with(
            config(env, mock),
            env.work.clone(),
            ContainerRuns::new(r.clone()),
        )
        .await
        .expect("engine starts");
        (m, r)
    }

    fn task(t: &str, env: &Env) -> DelegateRequest {
        DelegateRequest {
            task: t.into(),
            adapter: Some("codex".into()),
            mode: Some(zwarm::model::Mode::Async),
            model: None,
            working_dir: Some(env.work.display().to_string()),
            isolation: None,
            base: None,
        }
    }

    async fn settled(m: &Manager, id: &str) -> zwarm::model::Session {
        m.wait(id, Duration::from_secs(60), &CancellationToken::new())
            .await
            .expect("wait")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_codex_session_runs_its_turns_in_containers_through_the_engine() {
        let mock = OpenAiMock::start(json!({}));
        let env = Env::new(Some(&mock), None);
        mock.set_script(keyed_script("codex_keyed.json", &env.work));
        let (m, r) = manager(&env, &mock).await;

        let id = m
            .delegate(task("@@tools please", &env))
            .await
            .expect("delegate");
        let s = settled(&m, &id).await;
        assert_eq!(s.status.as_str(), "idle", "{:?}", s.error);
        let t = &s.turns[0];
        assert_eq!(
            t.response.as_deref(),
            Some("Done: ran a command and created hello.py")
        );
        assert!(env.work.join("hello.py").exists());
        assert!(s.native_id.is_some());

        let (_, n) = m
            .converse(&id, "and now say hello")
            .await
            .expect("converse");
        assert_eq!(n, 2);
        let s = settled(&m, &id).await;
        assert_eq!(s.status.as_str(), "idle", "{:?}", s.error);
        assert_eq!(
            s.turns[1].response.as_deref(),
            Some("Hello from mock model")
        );
        let last = mock.model_requests().last().expect("requests").body["input"].to_string();
        assert!(
            last.contains("@@tools please"),
            "turn 2 did not resume the thread"
        );
        assert!(r.containers(LABEL_SESSION, &id).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interrupt_and_shutdown_leave_no_container() {
        let mock = OpenAiMock::start(json!({}));
        let env = Env::new(Some(&mock), None);
        mock.set_script(keyed_script("codex_keyed.json", &env.work));
        let (m, r) = manager(&env, &mock).await;

        // Interrupt a turn that runs `sleep 60` inside its container.
        let id = m.delegate(task("@@slowcmd", &env)).await.expect("delegate");
        until_container(&r, &id).await;
        assert!(m.interrupt(&id, "test").await.expect("interrupt"));
        let s = settled(&m, &id).await;
        assert!(!s.status.is_active(), "{:?}", s.status);
        assert!(r.containers(LABEL_SESSION, &id).await.is_empty());

        // Shutdown with a turn running: within 2 s, and no container left.
        let id = m.delegate(task("@@slowcmd", &env)).await.expect("delegate");
        until_container(&r, &id).await;
        let t = Instant::now();
        m.shutdown(Duration::from_secs(2)).await;
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(r.containers(LABEL_SESSION, &id).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worktree_session_in_containers_merges_back_like_a_local_one() {
        let mock = OpenAiMock::start(json!({}));
        let env = Env::new(Some(&mock), None);
        mock.set_script(keyed_script("codex_keyed.json", &env.work));
        let g = support::harness::git;
        g(&env.work, &["init", "-q", "-b", "main"]);
        std::fs::write(env.work.join("README"), "project\n").expect("write");
        g(&env.work, &["add", "-A"]);
        g(&env.work, &["commit", "-q", "-m", "initial"]);
        let (m, _r) = manager(&env, &mock).await;

        let mut req = task("@@tools please", &env);
        req.isolation = Some("worktree".into());
        let id = m.delegate(req).await.expect("delegate");
        let s = settled(&m, &id).await;
        assert_eq!(s.status.as_str(), "idle", "{:?}", s.error);
        // The turn wrote into the session's worktree (mounted), not into the checkout.
        assert!(!env.work.join("hello.py").exists());
        let (_, _, integrated) = m
            .end_integrated(
                &id,
                zwarm::model::SessionStatus::Completed,
                Some("done".into()),
                Some("merge"),
            )
            .await
            .expect("end with merge");
        let i = integrated.expect("a worktree session integrates");
        assert!(i.merged, "not merged");
        let hello = std::fs::read_to_string(env.work.join("hello.py")).expect("merged hello.py");
        assert!(hello.contains("hi from apply_patch"));
    }

    /// Wait until the session's turn runs in a container and codex has started its command.
    async fn until_container(r: &ContainerRunner, id: &str) {
        let until = Instant::now() + Duration::from_secs(30);
        while r.containers(LABEL_SESSION, id).await.is_empty() {
            assert!(Instant::now() < until, "no container for {id} within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_daemon_the_image_and_the_clis_in_it() {
    let env = Env::new(None, None);
    let state = env.dir.path().join("containers");
    let cfg = ContainerConfig {
        image: image(),
        ..ContainerConfig::default()
    };
    let checks = zwarm::container::doctor::check(&cfg, &state, &["codex", "claude"]).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    assert!(checks[1].detail.contains("codex-cli"), "{checks:#?}");
    assert!(checks[2].detail.contains("Claude Code"), "{checks:#?}");
    // The scratch sessions are gone.
    assert_eq!(std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0), 0);

    let missing = ContainerConfig {
        image: "zwarm-no-such-image:0".into(),
        ..ContainerConfig::default()
    };
    let checks = zwarm::container::doctor::check(&missing, &state, &["codex"]).await;
    assert_eq!(checks.len(), 1, "{checks:#?}");
    assert!(!checks[0].ok);
    assert!(
        checks[0]
            .detail
            .contains("`zwarm-no-such-image:0` is not on the Docker daemon"),
        "{checks:#?}"
    );
}
