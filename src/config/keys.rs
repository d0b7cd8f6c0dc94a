//! The one table of config keys.
//!
//! [`table`] destructures every config struct without `..`, so a field added to any of them
//! fails the build until it is listed here with its trust rule ([`Trust`]) and a line of
//! documentation. Everything else is derived from this table: the known keys (and "did you mean"
//! suggestions), each key's value type (from the field's Rust type, [`KeyType`]), the `ZWARM_*`
//! variable names, how `--set` and the environment parse a value, what the untrusted project
//! file may set, and the key reference in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Serialize;
use toml::Value;

use super::{AcpConfig, ClaudeConfig, CodexConfig, Config, ExecutorsConfig, IgnoredKey};
use crate::container::{ContainerConfig, Network};
use crate::runner::config::{KubeConfig, RunnerConfig, RunnerKind};
use crate::telemetry::TelemetryConfig;
use crate::watch::{
    BudgetConfig, PatternConfig, PatternRule, ProgressConfig, QualityConfig, ScopeConfig,
    WatchersConfig,
};

/// How a value is written in `ZWARM_*` variables and `--set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// A TOML array of strings, or a comma-separated list.
    StrList,
    /// A table or array checked by serde only (price tables, pattern rules), as a TOML value.
    Free,
    /// A table of keys (`[codex]`): not a key itself.
    Section,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Int => "integer",
            Kind::Float => "number",
            Kind::Bool => "boolean",
            Kind::StrList => "list of strings",
            Kind::Free => "TOML value",
            Kind::Section => "table",
        }
    }
}

/// The [`Kind`] of a config field's Rust type: a field of a new type fails the build until it
/// says how it is written.
pub trait KeyType {
    const KIND: Kind;
}

macro_rules! key_types {
    ($($kind:ident: $($ty:ty),*;)*) => {
        $($(impl KeyType for $ty { const KIND: Kind = Kind::$kind; })*)*
    };
}

key_types! {
    Str: String, PathBuf, RunnerKind, Network;
    Int: u32, u64, usize, i32;
    Float: f64;
    Bool: bool;
    StrList: Vec<String>, Vec<PathBuf>;
    Free: Vec<PatternRule>, Vec<IgnoredKey>, Vec<crate::acp::Rule>;
    Section: CodexConfig, ClaudeConfig, ExecutorsConfig, AcpConfig, WatchersConfig, ProgressConfig,
        BudgetConfig, ScopeConfig, PatternConfig, QualityConfig, TelemetryConfig, RunnerConfig,
        KubeConfig, ContainerConfig;
}

impl<V> KeyType for BTreeMap<String, V> {
    const KIND: Kind = Kind::Free;
}

impl<T: KeyType> KeyType for Option<T> {
    const KIND: Kind = T::KIND;
}

/// What the untrusted project file (`<project>/.zwarm/config.toml`) may do with a key. The
/// other layers are the user's own and may set anything.
#[derive(Debug, Clone, Copy)]
pub enum Trust {
    /// The project file may set it: it neither changes what runs nor loosens a limit.
    Free,
    /// Only a trusted layer may set it; the text says why.
    TrustedOnly(&'static str),
    /// The project file may only make it stricter than the layers below it.
    TightenOnly(Tighten),
    /// Not a key: a table of keys.
    Section,
    /// Not a key: a fact `load` finds.
    NotAKey,
}

/// Which way a key tightens.
#[derive(Debug, Clone, Copy)]
pub enum Tighten {
    /// `true` is stricter.
    On,
    /// A number where lower is stricter. An unset value below means no limit, or
    /// (`Some(n)`) at most `n`.
    Lower(Option<u64>),
    /// A count where lower is stricter, down to 1 (0 turns the check off).
    Count,
    /// A watcher action: continue < nudge < pause < abort.
    Action,
    /// One of a mode's values; narrower is stricter.
    Mode(&'static ModeKey),
    /// A list the project's entries are added to (never replace).
    Add,
    /// Paths that must lie inside those below (an empty list means anywhere).
    WithinPaths,
    /// Entries that must be among those below (an empty list means any).
    Subset,
    /// Prices: never lower than those below.
    Prices,
    /// Permission rules: the project's deny and ask rules are added (they win only when
    /// stricter); its allow rules are dropped.
    Rules,
}

impl Trust {
    /// The rule as the key reference shows it.
    pub fn describe(&self) -> String {
        match self {
            Trust::Free => "yes".into(),
            Trust::TrustedOnly(_) => "no (trusted layers only)".into(),
            Trust::TightenOnly(t) => format!(
                "only {}",
                match t {
                    Tighten::On => "to turn it on".to_string(),
                    Tighten::Lower(_) | Tighten::Count => "lower".to_string(),
                    Tighten::Action => "a stronger action".to_string(),
                    Tighten::Mode(m) => format!("narrower ({})", m.order()),
                    Tighten::Add => "adds entries".to_string(),
                    Tighten::WithinPaths => "paths inside those below".to_string(),
                    Tighten::Subset => "entries among those below".to_string(),
                    Tighten::Prices => "prices no lower than those below".to_string(),
                    Tighten::Rules => "adds deny and ask rules".to_string(),
                }
            ),
            Trust::Section | Trust::NotAKey => String::new(),
        }
    }
}

/// A key whose values are ordered from narrowest to widest.
#[derive(Debug)]
pub struct ModeKey {
    pub key: &'static str,
    pub default: &'static str,
    /// Every accepted value with its width; values of equal width grant the same.
    pub values: &'static [(&'static str, u8)],
    /// The accepted values, for error messages.
    pub expected: &'static str,
}

impl ModeKey {
    /// Width of `value`, `None` when it is not a known value.
    pub fn width(&self, value: &str) -> Option<u8> {
        self.values
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, w)| *w)
    }

    /// Whether `value` grants more than the default.
    pub fn is_wide(&self, value: &str) -> bool {
        self.width(value) > self.width(self.default)
    }

    /// `a` < `b` = `c` < ...: the values from narrowest to widest.
    fn order(&self) -> String {
        let mut s = String::new();
        let mut last = None;
        for (v, w) in self.values {
            match last {
                None => {}
                Some(l) if l == *w => s.push_str(" = "),
                Some(_) => s.push_str(" < "),
            }
            s.push_str(&format!("`{v}`"));
            last = Some(*w);
        }
        s
    }
}

/// `codex.sandbox`.
pub const SANDBOX_MODE: ModeKey = ModeKey {
    key: "codex.sandbox",
    default: "workspace-write",
    values: &[
        ("read-only", 0),
        ("workspace-write", 1),
        ("danger-full-access", 2),
    ],
    expected: "one of read-only, workspace-write, danger-full-access",
};

/// `claude.permission_mode`. Claude Code renamed `default` to `manual`; both are accepted.
pub const PERMISSION_MODE: ModeKey = ModeKey {
    key: "claude.permission_mode",
    default: "acceptEdits",
    values: &[
        ("plan", 0),
        ("default", 1),
        ("manual", 1),
        ("acceptEdits", 2),
        ("dontAsk", 3),
        ("auto", 3),
        ("bypassPermissions", 3),
    ],
    expected: "one of plan, default, manual, acceptEdits, dontAsk, auto, bypassPermissions",
};

/// `isolation`: a worktree per session keeps executors out of the project checkout.
pub const ISOLATION_MODE: ModeKey = ModeKey {
    key: "isolation",
    default: "none",
    values: &[("worktree", 0), ("none", 1)],
    expected: "one of none, worktree",
};

/// `containment`.
pub const CONTAINMENT_MODE: ModeKey = ModeKey {
    key: "containment",
    default: "auto",
    values: &[("auto", 0), ("process-group", 1)],
    expected: "one of auto, process-group",
};

/// One config key.
#[derive(Debug)]
pub struct KeyDef {
    /// Dotted key, e.g. `codex.sandbox`.
    pub key: &'static str,
    pub kind: Kind,
    pub trust: Trust,
    /// The built-in default, `None` when unset.
    pub default: Option<Value>,
    pub doc: &'static str,
}

impl KeyDef {
    fn new<T: KeyType + Serialize>(
        key: &'static str,
        value: &T,
        trust: Trust,
        doc: &'static str,
    ) -> KeyDef {
        let default = match T::KIND {
            Kind::Section => None,
            _ => Value::try_from(value).ok(),
        };
        KeyDef {
            key,
            kind: T::KIND,
            trust,
            default,
            doc,
        }
    }

    /// The `ZWARM_*` variable for the key: `codex.sandbox` is `ZWARM_CODEX_SANDBOX`.
    pub fn env_name(&self) -> String {
        format!("ZWARM_{}", self.key.replace('.', "_").to_ascii_uppercase())
    }

    /// Whether it is a key (not a section, not a fact `load` finds).
    pub fn is_key(&self) -> bool {
        !matches!(self.trust, Trust::Section | Trust::NotAKey)
    }

    /// The mode whose values the key must take, if any.
    pub fn mode(&self) -> Option<&'static ModeKey> {
        MODE_KEYS.iter().copied().find(|m| m.key == self.key)
    }
}

/// Keys whose value must be one of a few words, ordered by how much they grant.
pub const MODE_KEYS: &[&ModeKey] = &[
    &SANDBOX_MODE,
    &PERMISSION_MODE,
    &ISOLATION_MODE,
    &CONTAINMENT_MODE,
    &super::ACP_LEVEL,
];

/// Short aliases of `ZWARM_*` variables (kept for configurations written for 0.2).
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("ZWARM_CODEX_BIN", "codex.binary"),
    ("ZWARM_CLAUDE_BIN", "claude.binary"),
    ("ZWARM_SANDBOX", "codex.sandbox"),
];

/// Environment variables that are not config keys but are still zwarm's.
pub const ENV_RESERVED: &[&str] = &["ZWARM_LOG", "ZWARM_TURN"];

/// List a struct's fields, exhaustively: a field missing here is a build error.
macro_rules! fields {
    ($out:ident, $prefix:literal, $ty:ident { $($field:ident: $trust:expr, $doc:expr;)* }) => {{
        let $ty { $($field),* } = <$ty as Default>::default();
        $( $out.push(KeyDef::new(concat!($prefix, stringify!($field)), &$field, $trust, $doc)); )*
    }};
}

use Tighten::*;
use Trust::{Free, NotAKey, Section, TightenOnly, TrustedOnly};

const RUNS: &str = "it chooses the program zwarm runs";
const ARGS: &str = "it goes into the executor's command line";
const RUNNER: &str = "it chooses where executors run and what they can reach";
const PROMPT: &str = "it goes into every executor's prompt";
const MODEL: &str = "it goes into the executor's command line and chooses what a turn costs";
const PRIORITY: &str =
    "Order among watchers whose actions are equally strong (the strongest action always wins).";

/// Every config struct field, in file order; see the module doc.
fn build() -> Vec<KeyDef> {
    let mut out = Vec::new();
    fields!(out, "", Config {
        default_adapter: Free, "Executor used when `delegate` names none: a registered executor's name (`zwarm doctor` lists them).";
        state_dir: TrustedOnly("it chooses where zwarm keeps its state"), "Where sessions, turn logs and events live. Relative: under the project. Unset: outside the project (see below).";
        allowed_roots: TrustedOnly("it widens where sessions may work"), "Directories a session's `working_dir` must be inside. Empty: the project.";
        sync_wait_seconds: TightenOnly(Lower(Some(45))), "How long a sync `delegate`/`converse` waits before answering `running`. Unset: a margin under the calling host's tool timeout (45 s for unknown hosts).";
        turn_timeout_seconds: TightenOnly(Lower(None)), "A turn running longer is interrupted and failed.";
        max_running: TightenOnly(Lower(None)), "Turns running at once; more are queued.";
        interrupt_grace_seconds: TightenOnly(Lower(None)), "Seconds between SIGINT and SIGTERM when a turn is interrupted.";
        max_response_chars: TightenOnly(Lower(None)), "Longest executor answer placed in a tool result (longer ones keep head and tail).";
        list_page_size: TightenOnly(Lower(None)), "Default page size of `list_sessions`.";
        hold_idle_seconds: TightenOnly(Lower(None)), "Seconds an unused session at rest stays in memory.";
        max_task_bytes: TightenOnly(Lower(None)), "Largest task or message accepted, in bytes.";
        containment: TrustedOnly("it chooses how an executor's processes are contained"), "`auto` (a cgroup per turn where cgroup v2 is writable) or `process-group`.";
        cgroup_parent: TrustedOnly("it chooses where executors' cgroups live"), "Where turn cgroups are created. Unset: a `zwarm` cgroup next to zwarm's own.";
        isolation: TightenOnly(Mode(&ISOLATION_MODE)), "Default `isolation` of `delegate`: `none` or `worktree` (a git worktree and branch per session).";
        worktree_commit_turns: TightenOnly(On), "Commit what changed in a session's worktree at the end of every turn.";
        max_worktrees: TightenOnly(Lower(None)), "Most session worktrees at once.";
        codex: Section, "";
        claude: Section, "";
        executors: Section, "";
        acp: Section, "";
        watchers: Section, "";
        telemetry: Section, "";
        runner: Section, "";
        project_dir: NotAKey, "";
        cwd: NotAKey, "";
        legacy_state_dir: NotAKey, "";
        ignored: NotAKey, "";
        warnings: NotAKey, "";
    });
    fields!(out, "watchers.", WatchersConfig {
        progress: Section, "";
        budget: Section, "";
        scope: Section, "";
        pattern: Section, "";
        quality: Section, "";
    });
    fields!(out, "codex.", CodexConfig {
        binary: TrustedOnly(RUNS), "Path or name of the codex binary. Unset: `codex` on PATH.";
        model: TrustedOnly(MODEL), "Model passed to codex. Unset: codex's own default.";
        sandbox: TightenOnly(Mode(&SANDBOX_MODE)), "`read-only`, `workspace-write` or `danger-full-access`.";
        extra_args: TrustedOnly(ARGS), "Extra arguments placed before the prompt, e.g. `[\"-c\", \"key=value\"]`.";
    });
    fields!(out, "claude.", ClaudeConfig {
        binary: TrustedOnly(RUNS), "Path or name of the claude binary. Unset: `claude` on PATH.";
        model: TrustedOnly(MODEL), "Model passed to claude. Unset: claude's own default.";
        permission_mode: TightenOnly(Mode(&PERMISSION_MODE)), "`plan`, `default` (also `manual`), `acceptEdits`, `dontAsk`, `auto` or `bypassPermissions`.";
        max_turns: TightenOnly(Count), "`--max-turns` of every claude turn. Unset: no limit.";
        allowed_tools: TrustedOnly("it lets claude run tools without asking"), "Tools claude may use without asking (`--allowedTools`).";
        append_system_prompt: TrustedOnly(PROMPT), "Text appended to claude's system prompt.";
        extra_args: TrustedOnly(ARGS), "Extra arguments for claude.";
    });
    fields!(out, "executors.", ExecutorsConfig {
        mcp_servers: TrustedOnly("it chooses the MCP servers (programs) executors load"), "Names of the MCP servers (from the executors' own configuration) that executors may load; zwarm itself never is one. Empty: none.";
    });
    fields!(out, "acp.", AcpConfig {
        level: TightenOnly(Mode(&super::ACP_LEVEL)), "Permission level of ACP agents' sessions (gemini, qwen, opencode): `read-only`, `workspace-write` or `full-access`. Unset: follows `codex.sandbox`.";
        rules: TightenOnly(Rules), "`[[acp.rules]]` with `verdict` (`allow`, `deny`, `ask`), `kinds` (ACP tool kinds: `read`, `edit`, `delete`, `move`, `search`, `execute`, `fetch`, ...; empty: all) and `pattern` (regex over the command and paths). The first matching rule decides, before the level's defaults; the project file's rules only deny or ask, and win only when stricter.";
        ask_timeout_seconds: TightenOnly(Lower(None)), "How long a permission request answered `ask` waits for the orchestrator or a person (`zwarm approve`); no answer in time is a denial.";
        init_timeout_seconds: TightenOnly(Lower(None)), "How long an ACP agent gets to answer `initialize` and open its session.";
        agent_idle_seconds: TightenOnly(Lower(None)), "How long an ACP agent process stays up after a turn for the session's next one before it is stopped; 0: a new agent process every turn.";
    });
    fields!(out, "watchers.progress.", ProgressConfig {
        enabled: TightenOnly(On), "Nudge on repeated calls, stalls and repeated commands.";
        priority: Free, PRIORITY;
        repeat_calls: TightenOnly(Count), "Identical delegate/converse/end_session calls in a row before it fires.";
        stalled_calls: TightenOnly(Count), "Tool calls without any turn finishing (while sessions run) before it fires.";
        repeat_commands: TightenOnly(Count), "Identical commands within one turn before it fires.";
        action: TightenOnly(Action), "`continue`, `nudge`, `pause` or `abort`.";
    });
    fields!(out, "watchers.budget.", BudgetConfig {
        enabled: TightenOnly(On), "Stop sessions past the limits below.";
        priority: Free, PRIORITY;
        max_sessions: TightenOnly(Lower(None)), "Most sessions started by one server. Unset: no limit.";
        max_running: TightenOnly(Lower(None)), "Most sessions running at once. Unset: no limit.";
        max_turns_per_session: TightenOnly(Lower(None)), "Most turns in one session. Unset: no limit.";
        max_tokens: TightenOnly(Lower(None)), "Most tokens over all sessions. Unset: no limit.";
        max_cost_usd: TightenOnly(Lower(None)), "Most cost over all sessions, in US dollars. Unset: no limit.";
        warn_percent: TightenOnly(Lower(None)), "Nudge when a total reaches this percentage of its limit.";
        action: TightenOnly(Action), "What to do past a limit.";
        prices: TightenOnly(Prices), "Per-model prices: `[watchers.budget.prices.\"MODEL\"]` with `input_per_million`, `output_per_million`, `cached_input_per_million`.";
    });
    fields!(out, "watchers.scope.", ScopeConfig {
        enabled: TightenOnly(On), "Nudge on tasks off the focus, on avoided topics, on files outside the allowed paths.";
        priority: Free, PRIORITY;
        focus: TightenOnly(Subset), "Keywords: a task mentioning none of them fires.";
        avoid: TightenOnly(Add), "Keywords: a task mentioning one of them fires.";
        allowed_paths: TightenOnly(WithinPaths), "Paths files may be changed in (relative to the working dir, or absolute). Empty: any.";
        action: TightenOnly(Action), "What to do when it fires.";
    });
    fields!(out, "watchers.pattern.", PatternConfig {
        enabled: TightenOnly(On), "Match commands and messages against rules.";
        priority: Free, PRIORITY;
        builtin_rules: TightenOnly(On), "Keep the built-in rules in addition to `rules`.";
        rules: TightenOnly(Add), "`[[watchers.pattern.rules]]` with `name`, `regex`, `action`.";
    });
    fields!(out, "watchers.quality.", QualityConfig {
        enabled: TightenOnly(On), "Look at what a turn changed.";
        priority: Free, PRIORITY;
        max_files: TightenOnly(Lower(None)), "More changed files in one turn fires.";
        require_tests: TightenOnly(On), "Fire when code changed but no test file did.";
    });
    fields!(out, "telemetry.", TelemetryConfig {
        enabled: TrustedOnly("it decides whether traces of your sessions leave the machine"), "`true`: export traces; `false`: never. Unset: export when an endpoint is configured (here or by `OTEL_EXPORTER_OTLP_*`).";
        endpoint: TrustedOnly("it chooses where traces of your sessions are sent"), "OTLP/HTTP traces URL; a URL without a path gets `/v1/traces`.";
        headers: TrustedOnly("it chooses the credentials sent with traces"), "Extra request headers, `name=value` pairs separated by commas, values percent-encoded. Never logged.";
        service_name: Free, "`service.name` of the spans. Unset: `OTEL_SERVICE_NAME`, else `zwarm`.";
    });
    fields!(out, "runner.", RunnerConfig {
        kind: TrustedOnly(RUNNER), "Where turns run: `local` (child processes here), `container` (a container per turn, `[runner.container]`) or `kubernetes` (a Job per turn, `[runner.kubernetes]`).";
        container: Section, "";
        kubernetes: Section, "";
    });
    fields!(out, "runner.container.", ContainerConfig {
        image: TrustedOnly(RUNNER), "Image holding the executor CLIs (see docs/containers.md, \"Images\").";
        network: TrustedOnly(RUNNER), "`host` (the host's network, loopback included), `bridge` or `none`.";
        memory: TrustedOnly(RUNNER), "Memory limit of a turn's container, e.g. `2g`. Unset: none.";
        cpus: TrustedOnly(RUNNER), "CPU limit in cores, e.g. `2.0`. Unset: none.";
        pids: TrustedOnly(RUNNER), "Most processes and threads in a turn's container.";
        user: TrustedOnly(RUNNER), "`uid[:gid]` the executor runs as. Unset: zwarm's own.";
        env: TrustedOnly("it chooses which of zwarm's environment (API keys) a container gets"), "Names of zwarm's environment variables passed into containers (API keys); nothing else goes in.";
        host: TrustedOnly(RUNNER), "Docker endpoint (`unix:///…`, `tcp://…`). Unset: `DOCKER_HOST`, else the local socket.";
    });
    fields!(out, "runner.kubernetes.", KubeConfig {
        kubeconfig: TrustedOnly(RUNNER), "The kubeconfig file. Unset: `KUBECONFIG`, else `~/.kube/config`.";
        context: TrustedOnly(RUNNER), "The kubeconfig context. Unset: its current context.";
        namespace: TrustedOnly(RUNNER), "Namespace the Jobs run in.";
        image: TrustedOnly(RUNNER), "Image holding git and the executor CLIs.";
        service_account: TrustedOnly(RUNNER), "Service account of the Jobs' pods.";
        cpu: TrustedOnly(RUNNER), "CPU request and limit of a turn's pod, e.g. `\"2\"`.";
        memory: TrustedOnly(RUNNER), "Memory request and limit of a turn's pod, e.g. `\"2Gi\"`.";
        node_selector: TrustedOnly(RUNNER), "Node labels a turn's pod must run on.";
        secret: TrustedOnly("it chooses the credentials executors get"), "Secret whose keys become the executor's environment (API keys); never written into the Job.";
        git_remote: TrustedOnly("it chooses where a session's code is pushed"), "Git remote the cluster fetches a session's branch from and pushes it back to.";
        schedule_timeout_seconds: TrustedOnly(RUNNER), "A turn's pod not running within this time fails the turn.";
        ttl_seconds_after_finished: TrustedOnly(RUNNER), "`ttlSecondsAfterFinished` of every Job.";
    });
    out
}

/// Every field of the config structs, sections and facts included.
pub fn all() -> &'static [KeyDef] {
    static TABLE: OnceLock<Vec<KeyDef>> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// Every config key a layer may set.
pub fn table() -> impl Iterator<Item = &'static KeyDef> {
    all().iter().filter(|k| k.is_key())
}

/// The key named `key`.
pub fn find(key: &str) -> Option<&'static KeyDef> {
    table().find(|k| k.key == key)
}

/// Whether `path` is a section (`codex`, `watchers.budget`).
pub fn is_section(path: &str) -> bool {
    all()
        .iter()
        .any(|k| matches!(k.trust, Trust::Section) && k.key == path)
}

/// The key a `ZWARM_*` variable sets.
pub fn from_env_name(name: &str) -> Option<&'static KeyDef> {
    ENV_ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .and_then(|(_, key)| find(key))
        .or_else(|| table().find(|k| k.env_name() == name))
}

/// The known key closest to `key`, when it is close enough to be a likely typo.
pub fn suggest(key: &str) -> Option<&'static str> {
    closest(key, table().map(|k| k.key))
}

/// The known variable closest to `name`.
pub fn suggest_env(name: &str) -> Option<String> {
    let names: Vec<String> = table()
        .map(|k| k.env_name())
        .chain(ENV_ALIASES.iter().map(|(a, _)| a.to_string()))
        .collect();
    closest(name, names.iter().map(String::as_str)).map(str::to_string)
}

fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 4);
    candidates
        .map(|c| (crate::text::edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The key reference of `docs/configuration.md`, as markdown.
pub fn reference_markdown() -> String {
    let mut s = String::from(
        "| key | type | default | variable | project file may set | what it does |\n|---|---|---|---|---|---|\n",
    );
    for k in table() {
        let default = match (&k.default, k.kind) {
            (None, _) => "unset".to_string(),
            (Some(Value::String(s)), _) if s.is_empty() => "unset".to_string(),
            (Some(Value::Array(a)), _) if a.is_empty() => "`[]`".to_string(),
            (Some(Value::Table(t)), _) if t.is_empty() => "`{}`".to_string(),
            (Some(v), _) => format!("`{v}`"),
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | `{}` | {} | {} |\n",
            k.key,
            k.kind.name(),
            default,
            k.env_name(),
            k.trust.describe(),
            k.doc.replace('|', "\\|")
        ));
    }
    s
}
