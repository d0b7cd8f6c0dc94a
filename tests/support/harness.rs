//! Test harness: a hermetic environment (temp work dir, state dir, CODEX_HOME, claude config
//! dir) pointed at the scripted model servers, and `zwarm serve` driven by rmcp's client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use tempfile::TempDir;

use super::mock_anthropic::AnthropicMock;
use super::mock_openai::OpenAiMock;

/// Find a CLI: in `ZWARM_TEST_CLI_DIR` when set (`.ci/run` points it at `.tools-latest/` for
/// the pass against the newest CLIs), else on PATH, or in `.tools/` where `.ci/install-clis`
/// puts the pinned ones. Missing is a failure, never a skip.
pub fn cli_dir(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ZWARM_TEST_CLI_DIR").filter(|d| !d.is_empty()) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        assert!(
            dir.join(name).exists(),
            "`{name}` not found in ZWARM_TEST_CLI_DIR={}: run `bash .ci/install-clis`",
            dir.display()
        );
        return dir;
    }
    if let Ok(p) = which::which(name) {
        return p.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node_modules/.bin");
    if local.join(name).exists() {
        return local;
    }
    panic!(
        "`{name}` not found on PATH or in .tools/: run `bash .ci/run` once (it installs the pinned codex and claude CLIs into .tools/), or put them on PATH"
    );
}

pub struct Env {
    pub dir: TempDir,
    pub work: PathBuf,
    pub state: PathBuf,
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new(openai: Option<&OpenAiMock>, anthropic: Option<&AnthropicMock>) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("zwarm-test-")
            .tempdir()
            .expect("tempdir");
        let work = dir.path().join("work");
        let state = dir.path().join("state");
        let codex_home = dir.path().join("codex-home");
        let claude_home = dir.path().join("claude-home");
        for d in [&work, &codex_home, &claude_home] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let work = std::fs::canonicalize(&work).expect("canonicalize");
        let codex_url = openai
            .map(|m| m.base_url())
            .unwrap_or_else(|| "http://127.0.0.1:9/v1".into());
        std::fs::write(
            codex_home.join("config.toml"),
            super::codex_config_toml(&codex_url),
        )
        .expect("write codex config");
        let path = format!(
            "{}:{}:{}",
            cli_dir("codex").display(),
            cli_dir("claude").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("ZWARM_LOG".into(), "debug".into()),
            ("CODEX_HOME".into(), codex_home.display().to_string()),
            ("MOCK_KEY".into(), "x".into()),
            ("HOME".into(), claude_home.display().to_string()),
            (
                "CLAUDE_CONFIG_DIR".into(),
                claude_home.display().to_string(),
            ),
            ("ANTHROPIC_API_KEY".into(), "sk-test".into()),
            (
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
                "1".into(),
            ),
            ("DISABLE_AUTOUPDATER".into(), "1".into()),
            // The user's own zwarm config and state never leak into a test.
            (
                "XDG_CONFIG_HOME".into(),
                dir.path().join("xdg-config").display().to_string(),
            ),
            (
                "XDG_STATE_HOME".into(),
                dir.path().join("xdg-state").display().to_string(),
            ),
            ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
        ];
        if let Some(a) = anthropic {
            vars.push(("ANTHROPIC_BASE_URL".into(), a.base_url()));
        }
        Env {
            dir,
            work,
            state,
            vars,
        }
    }

    /// A hermetic environment for tests that run no real CLI (a fake executor, config only):
    /// a work dir, a private HOME and XDG dirs, the runner's PATH, and nothing else.
    pub fn without_clis(prefix: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        let work = dir.path().join("work");
        let home = dir.path().join("home");
        for d in [&work, &home] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let work = std::fs::canonicalize(&work).expect("canonicalize");
        let state = dir.path().join("state");
        let p = |s: &str| dir.path().join(s).display().to_string();
        let vars: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), home.display().to_string()),
            ("XDG_CONFIG_HOME".into(), p("xdg-config")),
            ("XDG_STATE_HOME".into(), p("xdg-state")),
            ("ZWARM_LOG".into(), "info".into()),
        ];
        Env {
            dir,
            work,
            state,
            vars,
        }
    }

    /// The event log in the state database, one JSON object per line (oldest first), as
    /// `{"event": kind, "session_id": …, …data}`.
    pub fn events(&self) -> String {
        let conn = self.db(false);
        let mut st = conn
            .prepare("SELECT kind, session_id, data, ts, server FROM events ORDER BY seq")
            .expect("query events");
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .expect("read events");
        let mut out = String::new();
        for row in rows {
            let (kind, sid, data, ts, server) = row.expect("event row");
            let mut v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if !v.is_object() {
                v = serde_json::json!({});
            }
            v["event"] = Value::String(kind);
            v["ts"] = Value::String(ts);
            v["server"] = Value::String(server);
            if let Some(id) = sid {
                v["session_id"] = Value::String(id);
            }
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }

    fn db(&self, write: bool) -> rusqlite::Connection {
        let db = self.state.join("zwarm.db");
        let flags = if write {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let conn = rusqlite::Connection::open_with_flags(&db, flags)
            .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    /// Ids of the sessions in the state database (empty before the first server started).
    pub fn session_ids(&self) -> Vec<String> {
        if !self.state.join("zwarm.db").exists() {
            return vec![];
        }
        let conn = self.db(false);
        let Ok(mut st) = conn.prepare("SELECT id FROM sessions ORDER BY id") else {
            return vec![];
        };
        st.query_map([], |r| r.get::<_, String>(0))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }

    /// The stored record of a session (its row's JSON, without turns).
    pub fn session_meta(&self, id: &str) -> Value {
        let meta: String = self
            .db(false)
            .query_row("SELECT meta FROM sessions WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap_or_else(|e| panic!("session {id}: {e}"));
        serde_json::from_str(&meta).unwrap_or_else(|e| panic!("session {id} meta: {e}"))
    }

    /// Copy a session under another id, directly in the database (as another server might
    /// have written it).
    pub fn clone_session(&self, from: &str, to: &str) {
        let conn = self.db(true);
        conn.execute(
            "INSERT INTO sessions SELECT ?2, version, rev + 1000, status, adapter, mode, model, task_head, created_at,
               updated_at, owner_instance, owner_pid, turns, finished_turns, input_tokens,
               cached_input_tokens, output_tokens, reasoning_output_tokens, cost_usd,
               replace(meta, ?1, ?2) FROM sessions WHERE id = ?1",
            [from, to],
        )
        .expect("clone session row");
        conn.execute(
            "INSERT INTO turns SELECT ?2, idx, version, status, data FROM turns WHERE session_id = ?1",
            [from, to],
        )
        .expect("clone turns");
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(a, _)| a != k);
        self.vars.push((k.into(), v.into()));
    }

    pub fn command(&self, extra_args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_zwarm"));
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra_args)
            .current_dir(&self.work);
        for (k, _) in std::env::vars() {
            if k.starts_with("ZWARM_") || k == "IS_SANDBOX" || k == "CLAUDECODE" || k == "RUST_LOG"
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }
}

#[derive(Clone, Default)]
pub struct Recorder {
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    pub updated: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.progress.lock().unwrap().push(p);
    }
    async fn on_resource_updated(
        &self,
        p: rmcp::model::ResourceUpdatedNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.updated.lock().unwrap().push(p.uri);
    }
}

pub struct Zwarm {
    pub client: RunningService<RoleClient, Recorder>,
    pub recorder: Recorder,
    pub pid: u32,
    pub stderr_path: PathBuf,
}

impl Zwarm {
    pub async fn start(env: &Env, extra_args: &[&str]) -> Zwarm {
        // One file per server, whatever else starts at the same moment (counting the files
        // already there gave two servers started at once the same one).
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = env
            .dir
            .path()
            .join(format!("zwarm-{}-{n}.stderr", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let cmd = env.command(extra_args).configure(|_| {});
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn zwarm");
        let pid = transport.id().expect("pid");
        let recorder = Recorder::default();
        let client = recorder.clone().serve(transport).await.expect("initialize");
        Zwarm {
            client,
            recorder,
            pid,
            stderr_path,
        }
    }

    pub async fn call(&self, tool: &str, args: Value) -> CallToolResult {
        let Value::Object(map) = args else {
            panic!("args must be an object")
        };
        let fut = self
            .client
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(map));
        match tokio::time::timeout(Duration::from_secs(120), fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!(
                "{tool} failed at the protocol level: {e}\n{}",
                self.stderr()
            ),
            Err(_) => panic!("{tool} did not answer within 120 s\n{}", self.stderr()),
        }
    }

    /// Call a tool that must succeed; returns its structuredContent.
    pub async fn ok(&self, tool: &str, args: Value) -> Value {
        let r = self.call(tool, args.clone()).await;
        assert_ne!(
            r.is_error,
            Some(true),
            "{tool}({args}) returned an error: {:?}\n{}",
            r.content,
            self.stderr()
        );
        r.structured_content
            .unwrap_or_else(|| panic!("{tool} returned no structuredContent"))
    }

    /// Call a tool that must fail; returns its error text.
    pub async fn err(&self, tool: &str, args: Value) -> String {
        let r = self.call(tool, args.clone()).await;
        assert_eq!(
            r.is_error,
            Some(true),
            "{tool}({args}) should have failed: {:?}",
            r.structured_content
        );
        r.content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn stderr(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let start = s.len().saturating_sub(6000);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!("--- zwarm stderr (tail) ---\n{}", &s[start..])
    }

    /// Send a signal to the server process and wait (up to `limit`) for it to exit.
    pub async fn signal_and_wait(&self, sig: i32, limit: Duration) -> Duration {
        let start = std::time::Instant::now();
        // SAFETY: sending a signal to the child we spawned.
        unsafe {
            libc::kill(self.pid as i32, sig);
        }
        while zwarm::process::pid_alive(self.pid as i32) {
            if start.elapsed() > limit {
                panic!(
                    "zwarm did not exit within {limit:?} after signal {sig}\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }
}

/// Wait for a session to leave running/queued through check_session (wait_seconds).
pub async fn wait_done(z: &Zwarm, id: &str) -> Value {
    for _ in 0..60 {
        let s = z
            .ok(
                "check_session",
                serde_json::json!({"session_id": id, "wait_seconds": 5}),
            )
            .await;
        // `needs_approval` is a running turn waiting for an answer: not done yet.
        if s["status"] != "running" && s["status"] != "queued" && s["status"] != "needs_approval" {
            return s;
        }
    }
    panic!("session {id} still running after 5 minutes");
}

/// Pids of processes whose environment marks them as part of a session's turn.
pub fn turn_pids(session_id: &str) -> Vec<i32> {
    let needle = format!("ZWARM_TURN={session_id}.");
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env
                .split(|b| *b == 0)
                .any(|kv| kv.starts_with(needle.as_bytes()))
            && zwarm::process::pid_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Command line of a process (for assertions and messages).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The keyed mock script from tests/fixtures/scripts with placeholders filled in.
pub fn keyed_script(name: &str, cwd: &Path) -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/scripts")
            .join(name),
    )
    .expect("script");
    let outside = std::env::temp_dir().join("zwarm-outside");
    super::script_with_placeholders(&text, cwd, &outside)
}

/// `git <args>` in `dir` as a test user; panics with git's message when it fails. Its stdout,
/// trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .expect("run git");
    assert!(
        o.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
