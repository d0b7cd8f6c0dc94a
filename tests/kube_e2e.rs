//! `zwarm serve` with `[runner] kind = "kubernetes"` against the simulated control plane and
//! node of tests/support/mock_kube.rs, driving the real `codex` (scripted model server): every
//! turn is a Job whose pod checks the session's branch out of a bare git remote, runs codex,
//! and pushes the turn back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{Env, Zwarm, git, keyed_script, wait_done};
use support::mock_anthropic::AnthropicMock;
use support::mock_kube::{DockerNode, MockKube, Node, NodeOpts};
use support::mock_openai::OpenAiMock;

const NS: &str = "agents";
const IMAGE: &str = "zwarm-exec:test";
const LIMIT: Duration = Duration::from_secs(60);

struct Cluster {
    mock: OpenAiMock,
    env: Env,
    kube: MockKube,
    _node: Node,
    remote: PathBuf,
}

/// How a test's cluster is set up: a project repository, a bare remote, the simulated
/// cluster with one node (label `pool=agents`, image `zwarm-exec:test`) and a Secret with the
/// model key; zwarm configured for it through the environment (a trusted layer).
/// [`Fixture::docker`]: the node runs each pod's container with the real Docker daemon
/// (`DOCKER_HOST`) and the executor image (as .ci/run sets them up); [`Fixture::set`]: a config
/// change, as its environment variable.
#[derive(Default)]
struct Fixture {
    docker: bool,
    set: Vec<(&'static str, String)>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::default()
    }

    fn docker(mut self) -> Fixture {
        self.docker = true;
        self
    }

    fn set(mut self, key: &'static str, value: &str) -> Fixture {
        self.set.push((key, value.to_string()));
        self
    }

    /// The cluster and `zwarm serve` on it.
    async fn serve(self) -> (Cluster, Zwarm) {
        let c = self.build();
        let z = c.serve().await;
        (c, z)
    }

    fn build(self) -> Cluster {
        let mock = OpenAiMock::start(json!({}));
        let mut env = Env::new(Some(&mock), None);
        mock.set_script(keyed_script("codex_keyed.json", &env.work));
        git(&env.work, &["init", "-q", "-b", "main"]);
        std::fs::write(env.work.join("README"), "project\n").unwrap();
        git(&env.work, &["add", "-A"]);
        git(&env.work, &["commit", "-q", "-m", "initial"]);
        let remote = env.dir.path().join("remote.git");
        git(
            env.dir.path(),
            &["init", "-q", "--bare", remote.to_str().unwrap()],
        );

        let kube = MockKube::start();
        // The model key reaches the pod only through the Secret.
        kube.put_secret(NS, "zwarm-keys", &[("MOCK_KEY", "x")]);
        let path = env
            .vars
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap();
        let node = Node::start(
            &kube,
            NodeOpts {
                labels: [("pool".to_string(), "agents".to_string())].into(),
                images: vec![IMAGE.into()],
                path,
                root: env.dir.path().join("node"),
                docker: self.docker.then(|| DockerNode {
                    docker: bollard::Docker::connect_with_local_defaults().unwrap_or_else(|e| {
                        panic!(
                            "the Docker node needs a Docker daemon: {e}\n\
                             eval \"$(bash .ci/setup)\""
                        )
                    }),
                    mounts: vec![remote.clone()],
                }),
            },
        );
        let kubeconfig = env.dir.path().join("kubeconfig.json");
        std::fs::write(&kubeconfig, kube.kubeconfig(NS)).unwrap();
        let mut set = vec![
            ("ZWARM_RUNNER_KIND", "kubernetes".to_string()),
            (
                "ZWARM_RUNNER_KUBERNETES_KUBECONFIG",
                kubeconfig.display().to_string(),
            ),
            ("ZWARM_RUNNER_KUBERNETES_NAMESPACE", NS.into()),
            ("ZWARM_RUNNER_KUBERNETES_IMAGE", IMAGE.into()),
            ("ZWARM_RUNNER_KUBERNETES_SECRET", "zwarm-keys".into()),
            (
                "ZWARM_RUNNER_KUBERNETES_GIT_REMOTE",
                remote.display().to_string(),
            ),
        ];
        if self.docker {
            // The container is the sandbox: codex's own cannot work inside one.
            set.push(("ZWARM_CODEX_SANDBOX", "danger-full-access".into()));
        }
        for (k, v) in self.set {
            set.retain(|(a, _)| *a != k);
            set.push((k, v));
        }
        for (k, v) in set {
            env.set(k, &v);
        }
        Cluster {
            mock,
            env,
            kube,
            _node: node,
            remote,
        }
    }
}

impl Cluster {
    /// `zwarm serve` on the cluster (another one on the same state after a crash).
    async fn serve(&self) -> Zwarm {
        Zwarm::start(&self.env, &[]).await
    }

    /// A worktree session whose pod runs `@@slowcmd` (a command of a minute), once the pod
    /// runs: its id.
    async fn slow_session(&self, z: &Zwarm) -> String {
        let r = z
            .ok(
                "delegate",
                json!({"task": "@@slowcmd", "isolation": "worktree", "mode": "async"}),
            )
            .await;
        self.kube.until(LIMIT, "a running pod", running_pod).await;
        s(&r["session_id"]).to_string()
    }

    /// The raw log zwarm keeps of a turn's stdout (its pod's log).
    fn raw_log(&self, id: &str, turn: u32) -> String {
        std::fs::read_to_string(self.env.state.join(format!("turns/{id}.{turn}.jsonl")))
            .unwrap_or_default()
    }
}

/// A worktree session's first turn, `task`, waited for.
async fn delegate(z: &Zwarm, task: &str) -> Value {
    z.ok("delegate", json!({"task": task, "isolation": "worktree"}))
        .await
}

/// Lines that occur more than once.
fn repeated(log: &str) -> Vec<&str> {
    let mut seen = std::collections::BTreeSet::new();
    log.lines().filter(|l| !seen.insert(*l)).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// API requests other than watches and log streams.
fn plain_requests(k: &MockKube) -> usize {
    k.requests()
        .iter()
        .filter(|(_, t)| !t.contains("watch=true") && !t.contains("/log"))
        .count()
}

fn running_pod(k: &MockKube) -> bool {
    k.pods(NS).iter().any(|p| p["status"]["phase"] == "Running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_session_runs_its_turns_as_jobs_resumes_and_merges_back() {
    lifecycle(Fixture::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_each_pod_in_a_real_container() {
    lifecycle(Fixture::new().docker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_for_memory_fails_the_turn_as_out_of_memory() {
    // 24 MiB hold sh and git, not codex.
    let (_c, z) = Fixture::new()
        .docker()
        .set("ZWARM_RUNNER_KUBERNETES_MEMORY", "24Mi")
        .serve()
        .await;
    let r = delegate(&z, "@@tools please").await;
    assert_eq!(r["status"], "failed", "{r}");
    let err = s(&r["error"]);
    assert!(err.contains("ran out of memory (limit 24Mi)"), "{r}");
}

async fn lifecycle(f: Fixture) {
    let (c, z) = f.serve().await;
    let before = plain_requests(&c.kube);

    let r = delegate(&z, "@@tools please").await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    assert_eq!(r["response"], "Done: ran a command and created hello.py");
    let id = s(&r["session_id"]).to_string();
    let branch = format!("zwarm/{}", &id[..8]);
    assert_eq!(r["branch"], branch.as_str());
    // The pod's work came back into the session's worktree, not into the checkout.
    let wt = PathBuf::from(s(&r["worktree"]));
    let hello = std::fs::read_to_string(wt.join("hello.py")).expect("hello.py came back");
    assert!(hello.contains("hi from apply_patch"));
    assert!(wt.join("from_shell.txt").exists());
    assert!(!c.env.work.join("hello.py").exists());
    // The engine committed the turn on the session's branch, as for a local turn.
    assert!(
        git(&c.env.work, &["show", &format!("{branch}:hello.py")]).contains("hi from apply_patch")
    );
    // The remote carries the branch and the executor's state.
    git(
        &c.remote,
        &["rev-parse", "--verify", &format!("refs/heads/{branch}")],
    );
    let state = git(
        &c.remote,
        &[
            "ls-tree",
            "-r",
            "--name-only",
            &format!("refs/zwarm/state/{id}"),
        ],
    );
    assert!(state.contains("codex/sessions/"), "{state}");
    assert!(!state.contains("auth.json"), "{state}");
    // The Job is gone once the turn has ended; the spec carried no key.
    assert!(c.kube.jobs(NS).is_empty());
    let creates: Vec<(String, String)> = c
        .kube
        .requests()
        .into_iter()
        .filter(|(m, _)| m == "POST")
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");

    // Review works as for a worktree session.
    let chk = z.ok("check_session", json!({"session_id": id})).await;
    let d = &chk["diff"];
    assert!(
        d["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "hello.py"),
        "{chk}"
    );
    assert_eq!(d["uncommitted"], false, "{chk}");

    // converse: a new pod resumes the codex thread from the state ref.
    let n = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "and now say hello"}),
        )
        .await;
    assert_eq!(n["status"], "idle", "{n}\n{}", z.stderr());
    assert_eq!(n["turn"], 2);
    assert_eq!(n["response"], "Hello from mock model");
    let reqs = c.mock.model_requests();
    let last = reqs.last().unwrap().body["input"].to_string();
    assert!(
        last.contains("@@tools please"),
        "turn 2 did not resume: {last}"
    );
    assert_eq!(
        reqs.last().unwrap().header("thread-id"),
        reqs[0].header("thread-id")
    );
    // Two turns: each costs a create and a delete; the watch is shared.
    let per_turn = (plain_requests(&c.kube) - before) as f64 / 2.0;
    assert!(per_turn <= 10.0, "{per_turn} API requests per turn");
    let watches = c
        .kube
        .requests()
        .iter()
        .filter(|(_, t)| t.contains("watch=true"))
        .count();
    assert_eq!(watches, 1, "one shared watch");

    // integrate merge brings the pod's work into the project.
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "integrate": "merge", "summary": "done"}),
        )
        .await;
    assert_eq!(e["integrate"], "merge", "{e}");
    let merged = std::fs::read_to_string(c.env.work.join("hello.py")).expect("merged");
    assert!(merged.contains("hi from apply_patch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_running_session_deletes_its_job() {
    let (c, z) = Fixture::new().serve().await;
    let id = c.slow_session(&z).await;
    // The Job is bounded by the turn's timeout (the default 3600 s) plus slack for the pod's
    // checkout and push.
    assert_eq!(
        c.kube.jobs(NS)[0]["spec"]["activeDeadlineSeconds"],
        3720,
        "{}",
        c.kube.jobs(NS)[0]
    );
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled", "summary": "stop"}),
        )
        .await;
    assert_eq!(e["interrupted_turn"], true, "{e}");
    c.kube
        .until(LIMIT, "the Job and its pod deleted", |k| {
            k.jobs(NS).is_empty() && k.pods(NS).is_empty()
        })
        .await;
    let deletes: Vec<(String, String)> = c
        .kube
        .requests()
        .into_iter()
        .filter(|(m, _)| m == "DELETE")
        .collect();
    assert!(
        deletes[0].1.contains("propagationPolicy=Foreground"),
        "{deletes:?}"
    );
    let chk = z.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(chk["turns"][0]["status"], "interrupted", "{chk}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_re_attaches_to_the_job_its_dead_predecessor_left() {
    let (c, z) = Fixture::new().serve().await;
    let id = c.slow_session(&z).await;
    // The dead server logged the start of the turn (the thread, the command it runs).
    c.kube
        .until(LIMIT, "the turn's start in the raw log", |_| {
            c.raw_log(&id, 1).contains("thread.started")
        })
        .await;
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
        .await;
    assert_eq!(c.kube.jobs(NS).len(), 1, "the Job outlives its server");

    // The new server follows the Job to its end instead of failing the turn, from where the
    // raw log ends: the log holds each line once, the progress each command once.
    let z2 = c.serve().await;
    let done = wait_done(&z2, &id).await;
    assert_eq!(done["status"], "idle", "{done}\n{}", z2.stderr());
    let chk = z2.ok("check_session", json!({"session_id": id})).await;
    assert_eq!(chk["turns"][0]["status"], "completed", "{chk}");
    assert_eq!(chk["turns"][0]["response"], "slow done", "{chk}");
    let log = c.raw_log(&id, 1);
    assert_eq!(repeated(&log), Vec::<&str>::new(), "{log}");
    assert!(log.contains("turn.completed"), "{log}");
    let progress: Vec<&str> = chk["recent_progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(repeated(&progress.join("\n")), Vec::<&str>::new(), "{chk}");
    c.kube
        .until(LIMIT, "the followed Job deleted", |k| {
            k.jobs(NS).is_empty() && k.pods(NS).is_empty()
        })
        .await;
    // The branch came back and the session goes on: converse resumes the codex thread.
    git(
        &c.remote,
        &[
            "rev-parse",
            "--verify",
            &format!("refs/heads/zwarm/{}", &id[..8]),
        ],
    );
    let n = z2
        .ok(
            "converse",
            json!({"session_id": id, "message": "and now say hello"}),
        )
        .await;
    assert_eq!(n["status"], "idle", "{n}\n{}", z2.stderr());
    assert_eq!(n["turn"], 2);
    assert_eq!(n["response"], "Hello from mock model");
}

/// The runner's half of re-attaching after a restart: a runner of a new server finds the Job
/// its dead predecessor left by its label, follows its pod's log from the start and, when it
/// ends, brings the turn's branch back into the worktree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runner_re_attaches_to_the_job_a_dead_server_left() {
    use tokio::io::AsyncReadExt;
    use zwarm::runner::Runner;
    let (c, z) = Fixture::new().serve().await;
    let id = c.slow_session(&z).await;
    c.kube
        .until(LIMIT, "the turn's start in the raw log", |_| {
            c.raw_log(&id, 1).contains("thread.started")
        })
        .await;
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
        .await;
    // What the dead server logged, in whole lines.
    let logged = c.raw_log(&id, 1);
    let logged = &logged[..logged.rfind('\n').map_or(0, |n| n + 1)];
    let job = c.kube.jobs(NS)[0].clone();
    let label = s(&job["metadata"]["labels"]["zwarm.dev/label"]).to_string();
    assert!(label.starts_with(&id), "{label}");
    let cwd = job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ZWARM_CWD")
        .map(|e| PathBuf::from(s(&e["value"])))
        .unwrap();

    let text = std::fs::read_to_string(c.env.dir.path().join("kubeconfig.json")).unwrap();
    let ep = zwarm::kube::api::Endpoint::from_kubeconfig(&text, None).unwrap();
    let cfg = zwarm::runner::config::KubeConfig {
        namespace: NS.into(),
        image: IMAGE.into(),
        secret: Some("zwarm-keys".into()),
        git_remote: Some(c.remote.display().to_string()),
        ..Default::default()
    };
    let runner = zwarm::kube::KubeRunner::connect(cfg, ep).await.unwrap();
    assert!(runner.adopt("no-such-turn.1", &[], 0).await.is_none());
    let mut turn = runner
        .adopt(&label, &[], logged.len() as u64)
        .await
        .expect("the dead server's Job is found by its label");
    let mut out = String::new();
    turn.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    turn.control.wait().await;
    let end = turn.control.finish().await;
    assert!(end.cause.is_none(), "{:?}", end.cause);
    assert_eq!(end.exit.and_then(|e| e.code()), Some(0), "{out}");
    // The log from where the dead server's raw log ends, the end-of-turn event once the
    // branch was back: together, each line once.
    assert!(!out.contains("thread.started"), "{out}");
    assert!(out.contains("slow done"), "{out}");
    assert!(out.contains("turn.completed"), "{out}");
    let whole = format!("{logged}{out}");
    assert_eq!(repeated(&whole), Vec::<&str>::new(), "{whole}");
    assert!(whole.contains("thread.started"), "{whole}");
    // The pod pushed the turn back and it was fetched into the worktree (a failed push or
    // fetch is the turn's cause, checked above).
    assert!(cwd.is_dir(), "{}", cwd.display());
    c.kube
        .until(LIMIT, "the followed Job deleted", |k| k.jobs(NS).is_empty())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_is_never_scheduled_fails_the_turn_with_the_reason() {
    let (c, z) = Fixture::new()
        .set("ZWARM_RUNNER_KUBERNETES_NODE_SELECTOR", "{pool = \"gpu\"}")
        .set("ZWARM_RUNNER_KUBERNETES_SCHEDULE_TIMEOUT_SECONDS", "1")
        .serve()
        .await;
    let r = delegate(&z, "@@tools please").await;
    assert_eq!(r["status"], "failed", "{r}");
    let err = r["error"].to_string();
    assert!(err.contains("never scheduled"), "{err}");
    assert!(err.contains("Unschedulable"), "{err}");
    c.kube
        .until(LIMIT, "the unschedulable Job deleted", |k| {
            k.jobs(NS).is_empty()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_fails_the_turn_with_the_reason() {
    let (_c, z) = Fixture::new()
        .set(
            "ZWARM_RUNNER_KUBERNETES_IMAGE",
            "registry.invalid/zwarm-exec:none",
        )
        .serve()
        .await;
    let r = delegate(&z, "@@tools please").await;
    assert_eq!(r["status"], "failed", "{r}");
    let err = r["error"].to_string();
    assert!(err.contains("could not pull the image"), "{err}");
    assert!(err.contains("ErrImagePull"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_cluster_loses_fails_the_turn() {
    let (c, z) = Fixture::new().serve().await;
    let id = c.slow_session(&z).await;
    let job = s(&c.kube.jobs(NS)[0]["metadata"]["name"]).to_string();
    c.kube.lose_job(NS, &job);
    let done = support::harness::wait_done(&z, &id).await;
    let err = done["turns"][0]["error"].to_string() + &done["error"].to_string();
    assert!(err.contains("deleted before it ended"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_a_worktree_is_refused_with_what_to_do() {
    let (c, z) = Fixture::new().serve().await;
    let r = z.ok("delegate", json!({"task": "@@tools please"})).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        s(&r["error"]).contains("needs isolation \"worktree\""),
        "{r}"
    );
    assert!(c.kube.jobs(NS).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_push_and_a_failed_fetch_fail_the_turn_with_gits_reason() {
    // The remote takes zwarm's push of the branch, then refuses the next one (the pod's).
    let c = Fixture::new().build();
    let hook = c.remote.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nn=$(cat pushes 2>/dev/null || echo 0); n=$((n+1)); echo $n > pushes\n\
         if [ $n -ge 2 ]; then echo 'branch is protected' >&2; exit 1; fi\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let z = c.serve().await;
    let r = delegate(&z, "@@tools please").await;
    assert_eq!(r["status"], "failed", "{r}");
    let err = s(&r["error"]);
    assert!(err.contains("push to zwarm/"), "{r}");
    assert!(err.contains("was rejected"), "{r}");
    assert!(err.contains("branch is protected"), "{r}");
    // The turn's work is not in the worktree: it never came back.
    let wt = PathBuf::from(s(&r["worktree"]));
    assert!(!wt.join("hello.py").exists());
    std::fs::remove_file(&hook).unwrap();

    // The remote hides the session branches from fetches: the pod cannot check its branch out.
    git(
        &c.remote,
        &["config", "uploadpack.hideRefs", "refs/heads/zwarm"],
    );
    let r = delegate(&z, "@@tools please").await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        s(&r["error"]).contains("could not fetch the session's branch"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_session_resumes_across_pods() {
    let c = Fixture::new().build();
    let anthropic = AnthropicMock::start(json!({}));
    anthropic.set_script(keyed_script("claude_keyed.json", &c.env.work));
    // What claude needs in the pod comes from the Secret, like the key.
    c.kube.put_secret(
        NS,
        "zwarm-keys",
        &[
            ("ANTHROPIC_API_KEY", "sk-test"),
            ("ANTHROPIC_BASE_URL", &anthropic.base_url()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ],
    );
    let z = c.serve().await;
    let r = z
        .ok(
            "delegate",
            json!({"task": "@@bashonly", "adapter": "claude", "isolation": "worktree"}),
        )
        .await;
    assert_eq!(r["status"], "idle", "{r}\n{}", z.stderr());
    let id = s(&r["session_id"]).to_string();
    let wt = PathBuf::from(s(&r["worktree"]));
    assert!(wt.join("out.txt").exists(), "{r}");

    let n = z
        .ok(
            "converse",
            json!({"session_id": id, "message": "and one more thing"}),
        )
        .await;
    assert_eq!(n["status"], "idle", "{n}\n{}", z.stderr());
    assert_eq!(n["response"], "Hello from mock claude");
    let reqs = anthropic.model_requests();
    let msgs = reqs.last().unwrap().body["messages"].to_string();
    assert!(msgs.contains("@@bashonly"), "turn 2 did not resume: {msgs}");
    assert!(c.kube.jobs(NS).is_empty());
}
