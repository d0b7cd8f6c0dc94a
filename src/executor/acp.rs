//! ACP executors: Gemini CLI, Qwen Code, OpenCode (and any agent speaking the Agent Client
//! Protocol), each turn run through the `zwarm-acp` bridge ([`crate::acp::bridge`]).
//!
//! The launch is the bridge with a JSON job on stdin (the agent's command line, the prompt,
//! the agent session to continue, the permission level, the transcript file); the bridge's
//! stdout is already zwarm's event vocabulary, one [`ExecutorEvent`] a line, so the parser
//! only decodes it. See docs/acp.md.

use std::path::{Path, PathBuf};

use super::api::{
    ConfigKey, DoctorSpec, Executor, ExecutorError, FailureContext, Finding, Health, Launch,
    LaunchContext, StreamParser, TurnPlan,
};
use crate::acp::Level;
use crate::acp::job::BridgeJob;
use crate::config::Config;
use crate::event::{ExecutorEvent, UsageScope};

/// The environment variable naming the bridge binary (default: `zwarm-acp` beside zwarm).
pub const BRIDGE_ENV: &str = "ZWARM_ACP_BRIDGE";
/// The bridge binary's name.
pub const BRIDGE_NAME: &str = "zwarm-acp";
/// The transcript the bridge keeps in the session's turn directory.
pub const TRANSCRIPT_FILE: &str = "acp-turns.jsonl";

/// What differs between ACP agents.
#[derive(Debug)]
pub struct AcpAgentSpec {
    /// Its name in tools, config and logs.
    pub name: &'static str,
    /// The executable's default name.
    pub program: &'static str,
    /// The arguments that make it speak ACP on stdio.
    pub args: &'static [&'static str],
    pub package: &'static str,
    pub provider: &'static str,
    /// The environment variable that names its binary.
    pub env_bin: &'static str,
    /// The versions zwarm's tests cover.
    pub tested: (&'static str, &'static str),
    /// Environment that makes it ask before it acts, and run headless.
    pub env: &'static [(&'static str, &'static str)],
    /// Where its credentials can be: environment variables, files under the home directory.
    pub auth_env: &'static [&'static str],
    pub auth_files: &'static [&'static str],
}

pub static GEMINI: AcpAgentSpec = AcpAgentSpec {
    name: "gemini",
    program: "gemini",
    args: &["--acp"],
    package: "@google/gemini-cli",
    provider: "gemini",
    env_bin: "ZWARM_GEMINI_BIN",
    tested: ("0.61.0", "0.61.x"),
    // Headless, gemini refuses an untrusted folder; the session's working dir is the one the
    // orchestrator chose for it.
    env: &[("GEMINI_CLI_TRUST_WORKSPACE", "true")],
    auth_env: &[
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ],
    auth_files: &[".gemini/oauth_creds.json", ".gemini/settings.json"],
};

pub static QWEN: AcpAgentSpec = AcpAgentSpec {
    name: "qwen",
    program: "qwen",
    args: &["--acp"],
    package: "@qwen-code/qwen-code",
    provider: "openai",
    env_bin: "ZWARM_QWEN_BIN",
    tested: ("0.24.4", "0.24.x"),
    // Its sessions start in `auto`; the client switches them to `default` (it asks).
    env: &[],
    auth_env: &["OPENAI_API_KEY", "DASHSCOPE_API_KEY"],
    auth_files: &[".qwen/oauth_creds.json", ".qwen/settings.json"],
};

pub static OPENCODE: AcpAgentSpec = AcpAgentSpec {
    name: "opencode",
    program: "opencode",
    args: &["acp"],
    package: "opencode-ai",
    provider: "opencode",
    env_bin: "ZWARM_OPENCODE_BIN",
    tested: ("1.18.33", "1.18.x"),
    // OpenCode asks nothing unless its permission config says `ask` (merged over the user's).
    env: &[(
        "OPENCODE_CONFIG_CONTENT",
        r#"{"permission":{"edit":"ask","bash":"ask","webfetch":"ask"}}"#,
    )],
    auth_env: &[
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_GENERATIVE_AI_API_KEY",
    ],
    auth_files: &[
        ".local/share/opencode/auth.json",
        ".config/opencode/opencode.json",
    ],
};

/// An ACP agent as an executor.
#[derive(Debug)]
pub struct AcpExecutor {
    pub spec: &'static AcpAgentSpec,
}

/// Gemini CLI (`gemini --acp`).
pub static GEMINI_EXECUTOR: AcpExecutor = AcpExecutor::new(&GEMINI);
/// Qwen Code (`qwen --acp`).
pub static QWEN_EXECUTOR: AcpExecutor = AcpExecutor::new(&QWEN);
/// OpenCode (`opencode acp`).
pub static OPENCODE_EXECUTOR: AcpExecutor = AcpExecutor::new(&OPENCODE);

impl AcpExecutor {
    pub const fn new(spec: &'static AcpAgentSpec) -> AcpExecutor {
        AcpExecutor { spec }
    }

    /// [`Executor::launch`] with the agent and bridge binaries given.
    pub fn launch_with(
        &self,
        cfg: &Config,
        plan: &TurnPlan,
        ctx: &LaunchContext,
        agent: PathBuf,
        bridge: PathBuf,
    ) -> Result<Launch, ExecutorError> {
        // The session's turn directory (under the state dir): it outlives a restart, and
        // every runner gives it to the turn.
        let turn_dir = ctx.turn_dir.clone();
        let transcript = turn_dir.as_ref().map(|d| d.join(TRANSCRIPT_FILE));
        // The pool of this `zwarm serve` (started for the local runner only): the agent stays
        // up between the session's turns.
        let pool = (cfg.acp.agent_idle_seconds > 0 && ctx.session_id.is_some())
            .then(crate::acp::pool::socket)
            .flatten();
        let (pool, pool_token) = match pool {
            Some((p, t)) => (Some(p), Some(t)),
            None => (None, None),
        };
        let job = BridgeJob {
            program: agent,
            args: self.spec.args.iter().map(|a| a.to_string()).collect(),
            env_set: self
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env_remove: vec![],
            cwd: plan.working_dir.clone(),
            prompt: plan.prompt.clone(),
            resume_id: plan.resume_id.clone(),
            earlier: vec![],
            transcript,
            level: level_of(cfg),
            rules: cfg.acp.rules.clone(),
            init_timeout_secs: cfg.acp.init_timeout_seconds.max(1),
            cancel_grace_secs: cfg.interrupt_grace_seconds.max(1),
            ask_timeout_secs: cfg.acp.ask_timeout_seconds,
            approvals: turn_dir,
            session: ctx.session_id.clone(),
            pool,
            pool_token,
            agent_idle_secs: cfg.acp.agent_idle_seconds,
        };
        let stdin = serde_json::to_vec(&job)
            .map_err(|e| ExecutorError::Misconfigured(format!("the ACP job: {e}")))?;
        Ok(Launch {
            program: bridge,
            args: vec![],
            cwd: plan.working_dir.clone(),
            env_set: vec![],
            env_remove: vec![],
            stdin: Some(stdin),
            read_back: vec![],
            label: String::new(),
        })
    }
}

/// The bridge binary: `ZWARM_ACP_BRIDGE`, else `zwarm-acp` beside the running zwarm.
pub fn bridge_program() -> Result<PathBuf, ExecutorError> {
    if let Some(p) = std::env::var_os(BRIDGE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| {
        ExecutorError::Misconfigured(format!(
            "cannot find zwarm's own executable to start {BRIDGE_NAME} beside it: {e}. Set {BRIDGE_ENV}."
        ))
    })?;
    let bridge = exe.with_file_name(BRIDGE_NAME);
    if bridge.is_file() {
        Ok(bridge)
    } else {
        Err(ExecutorError::Misconfigured(format!(
            "the ACP bridge `{}` is missing: it is installed with zwarm (`cargo install` puts both binaries in place). Set {BRIDGE_ENV} to its path.",
            bridge.display()
        )))
    }
}

/// The session's permission level: `acp.level`, else zwarm's sandbox setting
/// (`codex.sandbox`, default `workspace-write`).
pub fn level_of(cfg: &Config) -> Level {
    cfg.acp.level(&cfg.codex.sandbox)
}

/// Decodes the bridge's lines.
pub struct BridgeParser;

impl StreamParser for BridgeParser {
    fn parse_line(&mut self, line: &str) -> Vec<ExecutorEvent> {
        let line = line.trim();
        if line.is_empty() {
            return vec![];
        }
        match serde_json::from_str::<ExecutorEvent>(line) {
            Ok(ev) => vec![ev],
            Err(_) => vec![ExecutorEvent::Other {
                kind: "acp bridge: unreadable line".into(),
            }],
        }
    }
}

const CONFIG_KEYS: &[ConfigKey] = &[];

/// How long doctor waits for an agent's `initialize` answer.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Start the agent and `initialize` it (then end it): what it says about itself. Runs on a
/// thread of its own with its own runtime, so it may be called from sync code inside or
/// outside a tokio runtime.
/// `env` is set in addition to the spec's environment.
pub fn handshake(
    spec: &AcpAgentSpec,
    program: &Path,
    cwd: &Path,
    env: &[(String, String)],
) -> Result<crate::acp::AgentInfo, String> {
    let cmd = crate::acp::AgentCommand {
        program: program.to_path_buf(),
        args: spec.args.iter().map(Into::into).collect(),
        cwd: cwd.to_path_buf(),
        env_set: spec
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(env.iter().cloned())
            .collect(),
        env_remove: vec![],
        share_group: false,
    };
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let agent = crate::acp::AcpAgent::start(&cmd, HANDSHAKE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let info = agent.info.clone();
            agent.stop(std::time::Duration::from_secs(3)).await;
            Ok(info)
        })
    });
    worker
        .join()
        .unwrap_or_else(|_| Err("the handshake thread panicked".into()))
}

/// Where the agent's credentials are (an environment variable or a file), if anywhere.
fn auth_present(spec: &AcpAgentSpec) -> Option<String> {
    if let Some(v) = spec
        .auth_env
        .iter()
        .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
    {
        return Some(format!("${v}"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    spec.auth_files
        .iter()
        .find(|f| home.join(f).is_file())
        .map(|f| format!("~/{f}"))
}

/// Doctor's finding about the ACP handshake.
fn handshake_finding(spec: &AcpAgentSpec, program: &Path) -> Finding {
    let cwd = std::env::temp_dir();
    match handshake(spec, program, &cwd, &[]) {
        Ok(info) if info.protocol_version == crate::acp::client::PROTOCOL_VERSION => Finding::new(
            Health::Ok,
            format!(
                "ACP handshake answered: protocol {}, session/load {}, sign-in methods: {}",
                info.protocol_version,
                if info.load_session {
                    "offered"
                } else {
                    "not offered (later turns start from a summary)"
                },
                if info.auth_methods.is_empty() {
                    "none".to_string()
                } else {
                    info.auth_methods.join(", ")
                }
            ),
        ),
        Ok(info) => Finding::new(
            Health::Fail,
            format!(
                "ACP handshake answered protocol {}; zwarm speaks {}",
                info.protocol_version,
                crate::acp::client::PROTOCOL_VERSION
            ),
        )
        .fix(format!(
            "install a {} version in the tested range",
            spec.package
        )),
        Err(e) => Finding::new(Health::Fail, format!("ACP handshake failed: {e}")).fix(format!(
            "run `{} {}` by hand and check that it starts",
            spec.program,
            spec.args.join(" ")
        )),
    }
}

impl Executor for AcpExecutor {
    fn name(&self) -> &'static str {
        self.spec.name
    }
    fn package(&self) -> &'static str {
        self.spec.package
    }
    fn provider(&self) -> &'static str {
        self.spec.provider
    }
    fn usage_scope(&self) -> UsageScope {
        UsageScope::Invocation
    }
    fn reports_cost(&self) -> bool {
        false
    }
    fn asks_approval(&self) -> bool {
        true
    }
    fn keeps_session_files(&self) -> bool {
        true
    }
    fn resolve(&self, _cfg: &Config) -> Result<PathBuf, ExecutorError> {
        let configured = std::env::var_os(self.spec.env_bin).map(PathBuf::from);
        super::binary::resolve_binary(
            configured.as_deref(),
            self.spec.program,
            self.spec.name,
            self.spec.package,
            self.spec.env_bin,
            "binary",
        )
    }
    fn launch(
        &self,
        cfg: &Config,
        plan: &TurnPlan,
        ctx: &LaunchContext,
    ) -> Result<Launch, ExecutorError> {
        let agent = self.resolve(cfg)?;
        let bridge = bridge_program()?;
        let mut launch = self.launch_with(cfg, plan, ctx, agent.clone(), bridge)?;
        if ctx.scratch == Path::new("/dev/null") {
            // A dry run (delegate's up-front check, doctor): what is checked is the agent the
            // bridge will start (its `#!` interpreter, version, flags, handshake).
            launch.program = agent;
            launch.args = self.spec.args.iter().map(Into::into).collect();
            launch.stdin = None;
        }
        Ok(launch)
    }
    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(BridgeParser)
    }
    fn explain_failure(&self, text: &str, _s: FailureContext<'_>) -> Option<String> {
        text.contains("did not start").then(|| {
            format!(
                " Check that `{} {}` runs and is logged in (zwarm doctor).",
                self.spec.program,
                self.spec.args.join(" ")
            )
        })
    }
    fn doctor_spec(&self) -> DoctorSpec {
        DoctorSpec {
            tested: self.spec.tested,
            help_args: &["--help"],
            flags: self.spec.args,
        }
    }
    fn doctor_auth(&self, program: &Path) -> Finding {
        let f = handshake_finding(self.spec, program);
        if f.health != Health::Ok {
            return f;
        }
        match auth_present(self.spec) {
            Some(how) => Finding::new(Health::Ok, format!("{}; credentials: {how}", f.detail)),
            None => Finding::new(Health::Warn, format!("{}; no credentials found", f.detail)).fix(
                format!(
                    "set one of {} where zwarm runs, or sign in once with `{}`",
                    self.spec.auth_env.join(", "),
                    self.spec.program
                ),
            ),
        }
    }
    fn doctor_sandbox(&self, _program: &Path, cfg: &Config) -> Finding {
        Finding::new(
            Health::Ok,
            format!(
                "permission requests answered by zwarm's policy at level {}",
                level_of(cfg).as_str()
            ),
        )
    }
    fn host_registrations(&self) -> Vec<String> {
        vec![]
    }
    fn config_section(&self) -> (&'static str, &'static [ConfigKey]) {
        (self.spec.name, CONFIG_KEYS)
    }
    /// In an image: its native binary (a Node script is left out: the image has no Node),
    /// with the `zwarm-acp` bridge beside it, which runs its turns.
    fn portable(&self) -> crate::executor::Portable {
        crate::executor::Portable {
            state_dir: None,
            image: crate::executor::ImageRecipe {
                package_dirs: &[],
                native_hint: "use a native build of it, or an image built `FROM node` with it installed (`runner.container.image`)",
                bridge: true,
            },
            container_args: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_decodes_bridge_lines_and_keeps_the_rest() {
        let mut p = BridgeParser;
        let ev = p.parse_line(r#"{"event":"agent_message","text":"hi"}"#);
        assert_eq!(ev, vec![ExecutorEvent::AgentMessage { text: "hi".into() }]);
        assert!(p.parse_line("").is_empty());
        assert!(matches!(
            p.parse_line("not json").as_slice(),
            [ExecutorEvent::Other { .. }]
        ));
    }
}
