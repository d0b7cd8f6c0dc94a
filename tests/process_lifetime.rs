//! No process outlives its turn, not even past zwarm's death.
//!
//! - Executors get a parent-death signal (`PR_SET_PDEATHSIG`), which Linux delivers when the
//!   *thread* that started them exits: they are started from one dedicated thread, so the
//!   signal means "zwarm died", never "some thread was retired". They are started with
//!   `clone(CLONE_VM | CLONE_VFORK)` (the server is not forked), and the child sets the signal
//!   and moves into the turn's cgroup before it execs the executor.
//! - That signal reaches the executor only. After `kill -9` of `zwarm serve`, its reaper (a
//!   helper process holding a pipe from the server) kills everything the running turns left —
//!   a real codex turn's shell command, a fake executor's forked, `setsid`, signal-proof
//!   grandchildren, and one that moved itself out of the turn's cgroup — within 2 s.
//! - A process that leaves its turn's cgroup is killed when the turn ends.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::harness::{Env, Zwarm, cmdline, keyed_script, turn_pids};
use support::mock_openai::OpenAiMock;
use zwarm::process::{
    Containment, ContainmentPreference, Launch, ProcessSpec, REAPER_ARG, Reaper, forget_executor,
    pid_alive,
};

/// How long a turn's processes may outlive a killed server.
const AFTER_DEATH: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_outlives_the_thread_that_asked_for_it() {
    let spec = ProcessSpec {
        program: "sleep".into(),
        args: vec!["30".into()],
        cwd: "/".into(),
        env_set: vec![],
        env_remove: vec![],
    };
    let c = Containment::new(ContainmentPreference::ProcessGroup);
    let handle = tokio::runtime::Handle::current();
    // Ask for the process from a thread that exits right afterwards.
    let c2 = c.clone();
    let mut child = std::thread::spawn(move || handle.block_on(c2.spawn(&spec, "lifetime-test")))
        .join()
        .expect("thread")
        .expect("spawn");
    let pid = child.id().expect("pid") as i32;
    // The signal would be sent as the thread exits; give it a moment to arrive.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) && pid_alive(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive = pid_alive(pid);
    let _ = child.start_kill();
    let _ = child.wait().await;
    assert!(alive, "the executor died with the thread that started it");
}

/// With a reaper, an executor starts the same way alone and while another one runs: in the
/// turn's cgroup, with its stdin, its output (nothing else on stdout), SIGPIPE at its default,
/// the turn's marker, and a missing program or working directory is the same error
/// `std::process::Command` gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_start_alike_alone_and_beside_others() {
    require_cgroup_mode();
    let c = Containment::new(ContainmentPreference::Auto);
    let reaper = Reaper::start_program(Path::new(env!("CARGO_BIN_EXE_zwarm")), &[REAPER_ARG])
        .expect("reaper");
    assert!(c.set_reaper(std::sync::Arc::new(reaper)));
    start_and_check(&c, "start-alone").await;
    let sleeper = ProcessSpec {
        program: "sleep".into(),
        args: vec!["30".into()],
        cwd: "/".into(),
        ..Default::default()
    };
    let mut running = c.spawn(&sleeper, "start-sleeper").await.expect("sleep");
    start_and_check(&c, "start-beside").await;
    let pid = running.id();
    let _ = running.start_kill();
    let _ = running.wait().await;
    forget_executor(pid);
    c.cleanup_after_exit(pid, "start-sleeper");
}

async fn start_and_check(c: &std::sync::Arc<Containment>, marker: &str) {
    let script = "cat /proc/self/cgroup; grep -E '^(SigIgn|SigBlk)' /proc/self/status; echo \"marker=$ZWARM_TURN\"; echo \"pid=$$ pgid=$(cut -d' ' -f5 /proc/$$/stat)\"; cat";
    let launch = Launch {
        spec: ProcessSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: "/".into(),
            ..Default::default()
        },
        stdin: Some(b"the prompt\n".to_vec()),
    };
    let child = c.spawn(&launch, marker).await.expect("spawn");
    let pid = child.id();
    let out = child.wait_with_output().await.expect("output");
    // As the runner does once the executor is reaped.
    forget_executor(pid);
    c.cleanup_after_exit(pid, marker);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{marker}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().next().is_some_and(|l| l.contains(":/")),
        "{marker}: something else came first on stdout: {text:?}"
    );
    assert!(
        text.lines().any(|l| l == format!("marker={marker}")),
        "{marker}: no turn marker: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&format!("/turn-{marker}"))),
        "{marker}: not in the turn's cgroup: {text}"
    );
    assert!(text.ends_with("the prompt\n"), "{marker}: stdin: {text:?}");
    let ignored = text
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigIgn");
    // zwarm blocks every signal around the start: none may stay blocked in the executor.
    let blocked = text
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigBlk");
    assert_eq!(blocked, 0, "{marker}: signals left blocked: {text}");
    let ids = text
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .expect("pid line");
    let (p, g) = ids.split_once(" pgid=").expect("pgid");
    assert_eq!(
        p, g,
        "{marker}: not the leader of its own process group: {ids}"
    );
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "{marker}: SIGPIPE is ignored"
    );
    // A missing program, and a missing working directory: ENOENT, as std's Command says.
    for (what, program, cwd) in [
        ("missing", "/nonexistent/zwarm-no-such-program", "/"),
        ("nowhere", "sh", "/nonexistent/zwarm-no-such-dir"),
    ] {
        let spec = ProcessSpec {
            program: program.into(),
            cwd: cwd.into(),
            ..Default::default()
        };
        let e = c
            .spawn(&spec, &format!("{marker}-{what}"))
            .await
            .expect_err(what);
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::NotFound,
            "{marker}, {what}: {e}"
        );
    }
    // Neither failure gave up on cgroups.
    assert_eq!(c.mode_name(), "cgroup", "{marker}: {}", c.detail());
}

/// An executor dropped before it exited (a cancelled turn) is killed and reaped: no process,
/// no zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_executor_is_killed_and_reaped() {
    let c = Containment::new(ContainmentPreference::ProcessGroup);
    let spec = ProcessSpec {
        program: "sleep".into(),
        args: vec!["30".into()],
        cwd: "/".into(),
        ..Default::default()
    };
    let child = c.spawn(&spec, "drop-test").await.expect("spawn");
    let pid = child.id().expect("pid") as i32;
    assert!(pid_alive(pid), "not running after the start");
    drop(child);
    let start = Instant::now();
    // Gone entirely: neither running nor a zombie (`kill(pid, 0)` fails once it is reaped).
    // SAFETY: signal 0 only checks for existence.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a dropped executor was not killed and reaped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.cleanup_after_exit(Some(pid as u32), "drop-test");
}

/// Fail (never skip) when this machine cannot give each turn its own cgroup.
fn require_cgroup_mode() {
    let c = Containment::new(ContainmentPreference::Auto);
    assert_eq!(
        c.probe(),
        "cgroup",
        "this test needs cgroup v2 containment: {}. Run it as root or in a delegated, \
         writable cgroup v2 subtree.",
        c.detail()
    );
}

/// The cgroup v2 mount point (its root cgroup).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if !right.starts_with("cgroup2 ") {
                return None;
            }
            let f: Vec<&str> = left.split_whitespace().collect();
            (f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
        })
        .expect("a cgroup2 mount of the root cgroup")
}

fn fake_executor(env: &Env, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = env.dir.path().join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}")).expect("write fake");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod fake");
    p
}

/// Wait (up to 20 s) until `path` holds one pid per line, `n` of them.
async fn read_pids(path: &Path, n: usize, z: &Zwarm) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} holds {pids:?}, expected {n} pids\n{}",
            path.display(),
            z.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait until none of `pids` is alive, failing once `since + limit` has passed.
async fn assert_dead_by(pids: &[i32], since: Instant, limit: Duration, what: &str) -> Duration {
    loop {
        let alive: Vec<(i32, String)> = pids
            .iter()
            .filter(|p| pid_alive(**p))
            .map(|p| (*p, cmdline(*p)))
            .collect();
        if alive.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{what}: still alive {limit:?} after: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until `pid` is in the root cgroup (it moved itself there).
async fn wait_escaped(pid: i32) {
    let start = Instant::now();
    loop {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.lines().any(|l| l == "0::/") && cmdline(pid).starts_with("sleep") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{pid} never left its cgroup: {cg} ({})",
            cmdline(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// kill -9 of the server; returns when it is dead, and the instant of the kill.
async fn kill_9(z: &Zwarm) -> Instant {
    let at = Instant::now();
    z.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .await;
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_zwarm_mid_codex_turn_kills_the_running_command_within_2_s() {
    let mock = OpenAiMock::start(json!({}));
    let env = Env::new(Some(&mock), None);
    let mut script = keyed_script("codex_keyed.json", &env.work);
    script["scenarios"]["longcmd"] = json!([
        {"items": [{"function_call": {"name": "exec_command", "arguments": {"cmd": "sleep 600; echo finished > slept.txt", "yield_time_ms": 120000}}}]},
        {"items": [{"message": "slept"}]}
    ]);
    mock.set_script(script);
    // danger-full-access: codex does not confine its commands, so they outlive codex itself.
    let z = Zwarm::start(&env, &["--set", "codex.sandbox=danger-full-access"]).await;
    let r = z
        .ok("delegate", json!({"task": "@@longcmd", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let pids = loop {
        let pids = turn_pids(&id);
        if pids.iter().any(|p| cmdline(*p).starts_with("sleep 600")) {
            break pids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the codex turn never ran its command: {:?}\n{}",
            pids.iter().map(|p| cmdline(*p)).collect::<Vec<_>>(),
            z.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        pids.iter().any(|p| cmdline(*p).contains("codex")),
        "{:?}",
        pids.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
    );
    let at = kill_9(&z).await;
    let took = assert_dead_by(&pids, at, AFTER_DEATH, "the codex turn after kill -9").await;
    println!(
        "{} processes of the codex turn gone {took:?} after kill -9",
        pids.len()
    );
    assert!(turn_pids(&id).is_empty(), "{:?}", turn_pids(&id));
    assert!(!env.work.join("slept.txt").exists());
    // The killed server's read-back file (codex's -o) is left behind; the next server to
    // start removes it.
    let left: Vec<PathBuf> = std::fs::read_dir(env.state.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let next = Zwarm::start(&env, &[]).await;
    let start = Instant::now();
    while left[0].exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a dead server's read-back file was not removed\n{}",
            next.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fake codex that forks: a plain background child, a `setsid` one, one that ignores
/// SIGTERM and SIGHUP, and (with `escape`) one that leaves the group (`setsid`) and clears
/// its environment (`env -i`), and one that does both and moves itself into the root cgroup
/// after a second: only the reaper, which saw it in the turn's cgroup, knows it then. Their pids go to `pids.txt`.
fn forking_fake(env: &Env, escape: bool) -> PathBuf {
    let d = env.dir.path().display().to_string();
    let root = cgroup2_root().display().to_string();
    let extra = if escape {
        format!(
            r#"setsid env -i sleep 1001 < /dev/null > /dev/null 2>&1 &
echo $! >> "{d}/pids.txt"
setsid sh -c 'echo $$ >> "{d}/pids.txt"; sleep 1; echo $$ > "{root}/cgroup.procs" && exec env -i sleep 1002' < /dev/null > /dev/null 2>&1 &
"#
        )
    } else {
        String::new()
    };
    fake_executor(
        env,
        "fake-codex-forks.sh",
        &format!(
            r#"cat > /dev/null
echo $$ >> "{d}/pids.txt"
sleep 1003 < /dev/null > /dev/null 2>&1 &
echo $! >> "{d}/pids.txt"
setsid sleep 1004 < /dev/null > /dev/null 2>&1 &
echo $! >> "{d}/pids.txt"
sh -c 'trap "" TERM HUP INT; echo $$ >> "{d}/pids.txt"; while :; do sleep 1; done' < /dev/null > /dev/null 2>&1 &
{extra}echo '{{"type":"thread.started","thread_id":"0199a000-0000-7000-8000-00000000f0c5"}}'
echo '{{"type":"turn.started"}}'
while :; do sleep 1; done
"#
        ),
    )
}

async fn start_forking_turn(env: &Env, fake: &Path, extra: &[&str]) -> (Zwarm, String) {
    let bin = format!("codex.binary={}", fake.display());
    let mut args = vec!["--set", bin.as_str()];
    args.extend_from_slice(extra);
    let z = Zwarm::start(env, &args).await;
    let r = z
        .ok("delegate", json!({"task": "fork a lot", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    (z, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_zwarm_kills_forked_and_escaped_grandchildren_within_2_s_in_cgroup_mode() {
    require_cgroup_mode();
    let env = Env::new(None, None);
    let fake = forking_fake(&env, true);
    let (z, id) = start_forking_turn(&env, &fake, &[]).await;
    let pids = read_pids(&env.dir.path().join("pids.txt"), 6, &z).await;
    // The last one moves itself out of the turn's cgroup (after the reaper has seen it).
    let escaped = *pids
        .iter()
        .max_by_key(|p| cmdline(**p).contains("sleep 1002"))
        .unwrap();
    wait_escaped(escaped).await;
    let mut all = pids.clone();
    all.extend(turn_pids(&id));
    let at = kill_9(&z).await;
    let took = assert_dead_by(&all, at, AFTER_DEATH, "cgroup mode, after kill -9").await;
    println!("{} processes gone {took:?} after kill -9", all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_zwarm_kills_forked_grandchildren_within_2_s_in_process_group_mode() {
    let env = Env::new(None, None);
    let fake = forking_fake(&env, false);
    let (z, id) = start_forking_turn(&env, &fake, &["--set", "containment=process-group"]).await;
    let pids = read_pids(&env.dir.path().join("pids.txt"), 4, &z).await;
    let mut all = pids.clone();
    all.extend(turn_pids(&id));
    // Every one of them is running before the kill (the signal-proof one included).
    let start = Instant::now();
    while !pids.iter().all(|p| pid_alive(*p)) || turn_pids(&id).len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(10), "{pids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = kill_9(&z).await;
    let took = assert_dead_by(&all, at, AFTER_DEATH, "process-group mode, after kill -9").await;
    println!("{} processes gone {took:?} after kill -9", all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_left_the_turn_cgroup_is_killed_when_the_turn_ends() {
    require_cgroup_mode();
    let env = Env::new(None, None);
    let fake = forking_fake(&env, true);
    let (z, id) = start_forking_turn(&env, &fake, &[]).await;
    let pids = read_pids(&env.dir.path().join("pids.txt"), 6, &z).await;
    let escaped = *pids
        .iter()
        .max_by_key(|p| cmdline(**p).contains("sleep 1002"))
        .unwrap();
    wait_escaped(escaped).await;
    let e = z
        .ok(
            "end_session",
            json!({"session_id": id, "verdict": "cancelled", "summary": "stop"}),
        )
        .await;
    assert_eq!(e["status"], "cancelled", "{e}");
    let at = Instant::now();
    assert_dead_by(&pids, at, Duration::from_secs(5), "after end_session").await;
    // The server is still running: it was the turn's end that killed them.
    assert!(pid_alive(z.pid as i32));
}

/// The server's reaper helper (a child of `server` running with the hidden argument).
fn reaper_of(server: u32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmd = cmdline(*pid);
            ppid == Some(server) && cmd.contains(zwarm::process::REAPER_ARG) && pid_alive(*pid)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_reaper_is_replaced_before_the_next_turn_needs_it() {
    let env = Env::new(None, None);
    let fake = forking_fake(&env, false);
    let bin = format!("codex.binary={}", fake.display());
    let z = Zwarm::start(&env, &["--set", &bin]).await;
    let first = reaper_of(z.pid).expect("the server has a reaper");
    // SAFETY: killing the helper our own test server started.
    unsafe {
        libc::kill(first, libc::SIGKILL);
    }
    let start = Instant::now();
    while pid_alive(first) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the reaper survived SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = z
        .ok("delegate", json!({"task": "fork a lot", "mode": "async"}))
        .await;
    let id = r["session_id"].as_str().unwrap().to_string();
    let pids = read_pids(&env.dir.path().join("pids.txt"), 4, &z).await;
    let second = reaper_of(z.pid).expect("a new reaper");
    assert_ne!(first, second);
    let mut all = pids.clone();
    all.extend(turn_pids(&id));
    let at = kill_9(&z).await;
    assert_dead_by(
        &all,
        at,
        AFTER_DEATH,
        "after kill -9, with a replaced reaper",
    )
    .await;
}

/// The local runner hands back what the executor wrote to its read-back file (codex's `-o`)
/// and leaves the file in place, emptied; a link planted there is not followed: its target is
/// neither read (it would become the turn's answer) nor emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_runner_reads_back_without_following_a_link_and_keeps_the_file() {
    use zwarm::runner::{Runner, local::LocalRunner};
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("secret");
    std::fs::write(&secret, "do not leak").unwrap();
    let runner = LocalRunner::new();
    let cases = [
        (
            "1.last-message",
            "printf 'the answer' > \"$1\"",
            Some("the answer"),
        ),
        (
            "2.last-message",
            "rm -f \"$1\" && ln -s secret \"$1\"",
            None,
        ),
    ];
    for (i, (name, script, want)) in cases.into_iter().enumerate() {
        let file = d.path().join(name);
        std::fs::write(&file, "").unwrap();
        let launch = zwarm::runner::Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "sh".into(), file.clone().into()],
            cwd: d.path().to_path_buf(),
            env_set: vec![],
            env_remove: vec![],
            stdin: None,
            read_back: vec![file.clone()],
            label: format!("read-back-{}.{i}", std::process::id()),
        };
        let mut running = runner.start(launch).await.expect("start");
        tokio::time::timeout(Duration::from_secs(20), running.control.wait())
            .await
            .expect("the script ends");
        let finished = running.control.finish().await;
        assert_eq!(finished.file(&file), want, "{name}");
    }
    let kept = std::fs::symlink_metadata(d.path().join("1.last-message")).unwrap();
    assert!(
        kept.is_file() && kept.len() == 0,
        "read back, then emptied in place"
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "do not leak");
}

/// At a turn's end the local runner removes its cgroup: at once when the executor left it
/// empty, after killing what it left running otherwise, and with the sub-cgroups the executor
/// made in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_cgroup_is_removed_empty_busy_or_with_sub_cgroups() {
    use zwarm::runner::{Runner, local::LocalRunner};
    require_cgroup_mode();
    let root = cgroup2_root();
    let d = tempfile::tempdir().unwrap();
    let runner = LocalRunner::new();
    // Each script writes its cgroup's path (from /proc/self/cgroup) to `where`.
    let cases = [
        ("empty", ""),
        ("busy", "sleep 1003 & echo $! > \"$2\""),
        ("nested", "mkdir \"$c/sub\" && mkdir \"$c/sub/deeper\""),
    ];
    for (i, (name, script)) in cases.into_iter().enumerate() {
        let at = d.path().join(format!("{name}.where"));
        let pid_file = d.path().join(format!("{name}.pid"));
        let body = format!(
            "c={}$(sed -n 's/^0:://p' /proc/self/cgroup); echo \"$c\" > \"$1\"; {script}",
            root.display()
        );
        let launch = zwarm::runner::Launch {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                body.into(),
                "sh".into(),
                at.clone().into(),
                pid_file.clone().into(),
            ],
            cwd: d.path().to_path_buf(),
            env_set: vec![],
            env_remove: vec![],
            stdin: None,
            read_back: vec![],
            label: format!("cg-end-{}.{i}", std::process::id()),
        };
        let mut running = runner.start(launch).await.expect("start");
        tokio::time::timeout(Duration::from_secs(20), running.control.wait())
            .await
            .expect("the script ends");
        running.control.finish().await;
        let cg = PathBuf::from(std::fs::read_to_string(&at).unwrap().trim());
        assert!(
            cg.starts_with(&root) && cg != root,
            "{name}: the turn ran in a cgroup of its own: {}",
            cg.display()
        );
        assert!(!cg.exists(), "{name}: {} is left", cg.display());
        if let Ok(p) = std::fs::read_to_string(&pid_file) {
            let pid: i32 = p.trim().parse().unwrap();
            let what = format!("{name}: what the turn left running, after its end");
            assert_dead_by(&[pid], Instant::now(), Duration::from_secs(5), &what).await;
        }
    }
}

/// A server that exits or is killed during its containment probe (which runs beside its
/// start-up) leaves an empty `probe-<pid>` cgroup: the next probe removes it, and never one
/// whose server is still alive.
#[test]
fn a_probe_removes_the_probe_cgroups_of_servers_that_are_gone() {
    require_cgroup_mode();
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .trim_start_matches('/')
        .to_string();
    let parent = cgroup2_root().join(rel).join("zwarm");
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let dead = gone.id();
    gone.wait().expect("wait");
    let mut alive = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let stale = parent.join(format!("probe-{dead}"));
    let live = parent.join(format!("probe-{}", alive.id()));
    std::fs::create_dir(&stale).expect("stale probe cgroup");
    std::fs::create_dir(&live).expect("live probe cgroup");
    let c = Containment::new(ContainmentPreference::Auto);
    assert_eq!(c.probe(), "cgroup");
    let kept = live.exists();
    let _ = std::fs::remove_dir(&live);
    let _ = alive.kill();
    let _ = alive.wait();
    assert!(
        !stale.exists(),
        "the probe cgroup of a server that is gone is removed"
    );
    assert!(kept, "a live server's probe cgroup is kept");
}
