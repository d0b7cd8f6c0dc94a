//! What running a turn in a container costs, side by side with the local runner in one run.
//!
//! `cargo bench --bench container` (needs DOCKER_HOST and the executor image, see
//! docs/containers.md: `eval "$(bash .ci/docker start)" && zwarm image build --tag zwarm-exec:test`).
//!
//! Three views, interleaved so load on the machine hits all variants alike:
//! - through the engine: a codex session on each runner (`Manager`, as `zwarm serve` runs it),
//!   one trivial turn (`converse`, then wait for the answer) at a time;
//! - the runner alone, for a trivial program (`true`: the runner's own cost) and a trivial codex
//!   turn: local, a container per turn (create, attach, start, wait, inspect, remove), and a
//!   container per session (one long-lived container, each turn a `docker exec` into it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failed run

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use futures::StreamExt;
use serde_json::json;
use support::harness::{Env, keyed_script};
use support::mock_openai::OpenAiMock;
use zwarm::container::{ContainerConfig, ContainerRunner, ContainerRuns, Network};
use zwarm::runner::local::LocalRunner;
use zwarm::runner::{Launch, Runner};
use zwarm::sessions::{DelegateRequest, Manager};

const RUNS: usize = 12;

fn image() -> String {
    std::env::var("ZWARM_TEST_IMAGE").unwrap_or_else(|_| "zwarm-exec:test".into())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn codex_args(work: &Path) -> Vec<String> {
    vec![
        "exec".into(),
        "--json".into(),
        "--skip-git-repo-check".into(),
        "--dangerously-bypass-approvals-and-sandbox".into(),
        "--ephemeral".into(),
        "-C".into(),
        work.display().to_string(),
        "say hello".into(),
    ]
}

/// The native codex binary of the pinned npm install.
fn native_codex() -> PathBuf {
    let wrapper = support::harness::cli_dir("codex").join("codex");
    zwarm::executor::native_codex_for(&wrapper).unwrap_or(wrapper)
}

/// One turn on a runner, as the engine drives it: start, drain both streams, wait, finish.
async fn turn(r: &dyn Runner, launch: Launch) -> Duration {
    let t = Instant::now();
    let running = r.start(launch).await.expect("start");
    let (mut out, mut err, mut control) = (running.stdout, running.stderr, running.control);
    let drain = tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        if let Some(o) = out.as_mut() {
            let _ = tokio::io::copy(o, &mut sink).await;
        }
        if let Some(e) = err.as_mut() {
            let _ = tokio::io::copy(e, &mut sink).await;
        }
    });
    control.wait().await;
    let f = control.finish().await;
    let _ = drain.await;
    assert_eq!(
        f.exit.and_then(|e| e.code()),
        Some(0),
        "{} turn failed",
        r.name()
    );
    t.elapsed()
}

async fn per_session(docker: &Docker, id: &str, cmd: Vec<String>, env: Vec<String>) -> Duration {
    let t = Instant::now();
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd),
                env: Some(env),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.expect("start exec")
    {
        while output.next().await.is_some() {}
    }
    let code = docker
        .inspect_exec(&exec.id)
        .await
        .expect("inspect exec")
        .exit_code;
    assert_eq!(code, Some(0), "exec failed");
    t.elapsed()
}

fn main() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    mock.set_script(keyed_script("codex_keyed.json", &env.work));
    // The engine's local turns inherit this process's environment: codex's config (the mock)
    // and key. The container runner copies the same config in and passes MOCK_KEY by name.
    // SAFETY: no other thread runs yet.
    unsafe {
        std::env::set_var("CODEX_HOME", env.dir.path().join("codex-home"));
        std::env::set_var("MOCK_KEY", "x");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(mock, env));
}

/// A manager on `runner` with its own state dir, and a codex session that has had one turn.
async fn engine(env: &Env, name: &str, runner: std::sync::Arc<dyn Runner>) -> (Manager, String) {
    let mut codex = zwarm::config::Config::default().codex;
    codex.binary = Some(support::harness::cli_dir("codex").join("codex"));
    let cfg = zwarm::config::Config {
        state_dir: env.dir.path().join(format!("state-{name}")),
        allowed_roots: vec![env.dir.path().to_path_buf()],
        default_adapter: "codex".into(),
        codex,
        ..Default::default()
    };
    let m = Manager::start_with(cfg, env.work.clone(), runner)
        .await
        .expect("engine starts");
    let id = m
        .delegate(DelegateRequest {
            task: "say hello".into(),
            adapter: Some("codex".into()),
            mode: Some(zwarm::model::Mode::Async),
            model: None,
            working_dir: Some(env.work.display().to_string()),
            isolation: None,
            base: None,
        })
        .await
        .expect("delegate");
    settle(&m, &id).await;
    (m, id)
}

async fn settle(m: &Manager, id: &str) {
    let s = m
        .wait(
            id,
            Duration::from_secs(120),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("wait");
    assert_eq!(s.status.as_str(), "idle", "{:?}", s.error);
}

/// One trivial turn through the engine: converse, then the answer.
async fn engine_turn(m: &Manager, id: &str) -> Duration {
    let t = Instant::now();
    m.converse(id, "say hello again").await.expect("converse");
    settle(m, id).await;
    t.elapsed()
}

async fn run(mock: OpenAiMock, env: Env) {
    let _mock = mock;
    let codex_home = env.dir.path().join("codex-home");
    let state = env.dir.path().join("containers");
    let r = ContainerRunner::connect(
        ContainerConfig {
            image: image(),
            network: Network::Host,
            ..ContainerConfig::default()
        },
        state.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: see docs/containers.md for the set-up"));
    r.remove_turn("bench.session").await;
    let docker = Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version");

    // The per-session container: sleeps until removed, with the same mounts.
    let work = env.work.display().to_string();
    let home = codex_home.display().to_string();
    let session = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec!["sleep".into(), "infinity".into()]),
                // Labelled like a turn, so a failed run's leftover goes at the next start.
                labels: Some(
                    [(
                        zwarm::container::LABEL.to_string(),
                        "bench.session".to_string(),
                    )]
                    .into(),
                ),
                host_config: Some(HostConfig {
                    binds: Some(vec![format!("{work}:{work}"), format!("{home}:{home}")]),
                    network_mode: Some("host".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("create the session container")
        .id;
    docker
        .start_container(&session, None)
        .await
        .expect("start the session container");

    let codex = native_codex();
    let codex_env = vec![
        ("CODEX_HOME".to_string(), home.clone()),
        ("MOCK_KEY".to_string(), "x".to_string()),
    ];
    let exec_env: Vec<String> = codex_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cargs = codex_args(&env.work);
    let launch = |n: usize, program: &Path, args: &[String], env_set: &[(String, String)]| Launch {
        program: program.to_path_buf(),
        args: args.iter().map(Into::into).collect(),
        cwd: env.work.clone(),
        env_set: env_set.to_vec(),
        label: format!("bench.{n}"),
        ..Launch::default()
    };
    let local = LocalRunner::new();
    let containers = ContainerRuns::new(r);
    let truth = PathBuf::from("/bin/true");

    // Through the engine: a session on each runner, turns alternating.
    let engine_runner = ContainerRunner::connect(
        ContainerConfig {
            image: image(),
            network: Network::Host,
            env: vec!["MOCK_KEY".into()],
            ..ContainerConfig::default()
        },
        env.dir.path().join("engine-containers"),
    )
    .await
    .expect("connect");
    let (lm, lid) = engine(&env, "local", std::sync::Arc::new(LocalRunner::new())).await;
    let (cm, cid) = engine(&env, "container", ContainerRuns::new(engine_runner)).await;
    let (mut le, mut ce) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        le.push(engine_turn(&lm, &lid).await);
        ce.push(engine_turn(&cm, &cid).await);
    }
    lm.shutdown(Duration::from_secs(2)).await;
    cm.shutdown(Duration::from_secs(2)).await;
    let (l, c) = (median(le), median(ce));
    println!("trivial codex turn through the engine (converse + answer, median of {RUNS}):");
    println!("  local runner             {:8.1} ms", ms(l));
    println!(
        "  container runner         {:8.1} ms  (+{:.1} ms, {:.2}x)",
        ms(c),
        ms(c) - ms(l),
        ms(c) / ms(l)
    );

    let (mut lt, mut ct, mut st) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lc, mut cc, mut sc) = (Vec::new(), Vec::new(), Vec::new());
    // Warm-up: one of each, not counted.
    turn(&*containers, launch(0, &truth, &[], &[])).await;
    turn(&local, launch(0, &truth, &[], &[])).await;
    per_session(&docker, &session, vec!["true".into()], vec![]).await;
    // Interleaved, so load on the machine hits all variants alike.
    for i in 0..RUNS {
        lt.push(turn(&local, launch(2 * i + 1, &truth, &[], &[])).await);
        ct.push(turn(&*containers, launch(2 * i + 1, &truth, &[], &[])).await);
        st.push(per_session(&docker, &session, vec!["true".into()], vec![]).await);
        lc.push(turn(&local, launch(2 * i + 2, &codex, &cargs, &codex_env)).await);
        cc.push(turn(&*containers, launch(2 * i + 2, &codex, &cargs, &codex_env)).await);
        let mut cmd = vec!["codex".to_string()];
        cmd.extend(cargs.iter().cloned());
        sc.push(per_session(&docker, &session, cmd, exec_env.clone()).await);
    }
    zwarm::container::remove_container(&docker, &session).await;

    let report = |what: &str, l: Vec<Duration>, c: Vec<Duration>, s: Vec<Duration>| {
        let (l, c, s) = (median(l), median(c), median(s));
        println!("{what} (median of {RUNS}):");
        println!("  local runner             {:8.1} ms", ms(l));
        println!(
            "  container per turn       {:8.1} ms  (+{:.1} ms, {:.2}x)",
            ms(c),
            ms(c) - ms(l),
            ms(c) / ms(l)
        );
        println!(
            "  container per session    {:8.1} ms  (+{:.1} ms, {:.2}x)",
            ms(s),
            ms(s) - ms(l),
            ms(s) / ms(l)
        );
    };
    report("trivial program `true`", lt, ct, st);
    report("trivial codex turn", lc, cc, sc);
}
