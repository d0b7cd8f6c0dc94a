//! The one table of config keys.
//!
//! [`table`] destructures every config struct without `..` (the `fields!` macro), so a
//! field added to any of them fails the build until it is listed with its trust rule ([`Trust`])
//! and a line of documentation: here, or beside the section where an executor owns it
//! (`crate::executor::codex::config::key_defs`), gathered here. [`named`] holds the keys of
//! tables the user names (`[executors.NAME]`). Everything else is derived from these: the known
//! keys (and "did you mean" suggestions), each key's value type (from the field's Rust type,
//! [`KeyType`]), the `ZWARM_*` variable names, how `--set` and the environment parse a value,
//! what the untrusted project file may set, and the key reference in `docs/configuration.md`.

use std::sync::OnceLock;

use toml::Value;

use super::acp::{ACP_LEVEL, AcpConfig};
use super::executors;
pub use super::schema::{KeyDef, KeyType, Kind, ModeKey, Tighten, Trust};
use super::schema::{fields, key_types};
use super::settings::{Config, IgnoredKey};
use crate::executor::{claude::config as claude, codex::config as codex};
use crate::runner::config::{ContainerConfig, KubeConfig, Network, RunnerConfig, RunnerKind};
use crate::telemetry::TelemetryConfig;
use crate::watch::{
    BudgetConfig, PatternConfig, PatternRule, ProgressConfig, QualityConfig, ScopeConfig,
    WatchersConfig,
};

key_types! {
    Str: RunnerKind, Network;
    Free: Vec<PatternRule>, Vec<IgnoredKey>, Vec<crate::acp::Rule>;
    Section: AcpConfig, WatchersConfig, ProgressConfig, BudgetConfig, ScopeConfig,
        PatternConfig, QualityConfig, TelemetryConfig, RunnerConfig, KubeConfig, ContainerConfig;
}

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

impl KeyDef {
    /// The mode whose values the key must take, if any.
    pub fn mode(&self) -> Option<&'static ModeKey> {
        MODE_KEYS.iter().copied().find(|m| m.key == self.key)
    }
}

/// Keys whose value must be one of a few words, ordered by how much they grant.
pub const MODE_KEYS: &[&ModeKey] = &[
    &codex::SANDBOX_MODE,
    &claude::PERMISSION_MODE,
    &ISOLATION_MODE,
    &CONTAINMENT_MODE,
    &ACP_LEVEL,
    &executors::PROTOCOL,
];

/// Short aliases of `ZWARM_*` variables (kept for configurations written for 0.2).
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("ZWARM_CODEX_BIN", "codex.binary"),
    ("ZWARM_CLAUDE_BIN", "claude.binary"),
    ("ZWARM_SANDBOX", "codex.sandbox"),
];

/// Environment variables that are not config keys but are still zwarm's.
pub const ENV_RESERVED: &[&str] = &["ZWARM_LOG", "ZWARM_TURN", "ZWARM_ACP_BRIDGE"];

/// `ZWARM_<EXECUTOR>_BIN`: the path of an executor's program (`ZWARM_GEMINI_BIN`, or
/// `ZWARM_MY_AGENT_BIN` for a declared `[executors.my-agent]`), read by the executor itself,
/// not a config key. The ones that are config keys (`ZWARM_CODEX_BIN`) are aliases above.
pub fn is_executor_binary_env(name: &str) -> bool {
    name.strip_prefix("ZWARM_")
        .and_then(|n| n.strip_suffix("_BIN"))
        .is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
}

use Tighten::*;
use Trust::{Free, NotAKey, Section, TightenOnly, TrustedOnly};

const RUNNER: &str = "it chooses where executors run and what they can reach";
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
    codex::key_defs(&mut out);
    claude::key_defs(&mut out);
    executors::key_defs(&mut out);
    fields!(out, "acp.", AcpConfig {
        level: TightenOnly(Mode(&ACP_LEVEL)), "Permission level of ACP agents' sessions (gemini, qwen, opencode): `read-only`, `workspace-write` or `full-access`. Unset: follows `codex.sandbox`.";
        rules: TightenOnly(Rules), "`[[acp.rules]]` with `verdict` (`allow`, `deny`, `ask`), `kinds` (ACP tool kinds: `read`, `edit`, `delete`, `move`, `search`, `execute`, `fetch`, ...; empty: all) and `pattern` (regex over the command and paths). The first matching rule decides, before the level's defaults; the project file's rules only deny or ask, and win only when stricter.";
        ask_timeout_seconds: TightenOnly(Lower(None)), "How long a permission request answered `ask` waits for the orchestrator or a person (`zwarm approve`); no answer in time is a denial.";
        init_timeout_seconds: TightenOnly(Lower(None)), "How long an ACP agent gets to answer `initialize` and open its session.";
        agent_idle_seconds: TightenOnly(Lower(None)), "How long an ACP agent process stays up after a turn for the session's next one before it is stopped (with the local runner under `zwarm serve`; in containers and pods each turn starts its agent); 0: a new agent process every turn.";
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

/// Every config key a layer may set (the keys of named tables aside: [`named`]).
pub fn table() -> impl Iterator<Item = &'static KeyDef> {
    all().iter().filter(|k| k.is_key())
}

/// The keys of a named table, `executors.<name>.KEY` (`<name>` stands for any name): one
/// `[executors.NAME]` table declares an executor.
pub fn named() -> &'static [KeyDef] {
    static NAMED: OnceLock<Vec<KeyDef>> = OnceLock::new();
    NAMED.get_or_init(|| {
        let mut out = Vec::new();
        executors::named_key_defs(&mut out);
        out
    })
}

/// Where named tables are: `executors.NAME`.
const NAMED_PARENT: &str = "executors";

/// `NAME` when `path` is `executors.NAME` and not a key of `[executors]` itself.
pub fn named_table(path: &str) -> Option<&str> {
    let name = path.strip_prefix(NAMED_PARENT)?.strip_prefix('.')?;
    (!name.is_empty() && !name.contains('.') && find_fixed(path).is_none()).then_some(name)
}

fn find_fixed(key: &str) -> Option<&'static KeyDef> {
    table().find(|k| k.key == key)
}

/// The key named `key`; `executors.NAME.command` is the named key `executors.<name>.command`.
pub fn find(key: &str) -> Option<&'static KeyDef> {
    find_fixed(key).or_else(|| {
        let (table, field) = key.rsplit_once('.')?;
        named_table(table)?;
        named()
            .iter()
            .find(|k| k.key.rsplit_once('.').is_some_and(|(_, f)| f == field))
    })
}

/// Whether `path` is a section (`codex`, `watchers.budget`); a named table is not one
/// ([`named_table`]).
pub fn is_section(path: &str) -> bool {
    all()
        .iter()
        .any(|k| matches!(k.trust, Trust::Section) && k.key == path)
}

/// The dotted key a `ZWARM_*` variable sets: `ZWARM_EXECUTORS_MY_AGENT_COMMAND` is
/// `executors.my_agent.command`.
pub fn from_env_name(name: &str) -> Option<String> {
    let fixed = ENV_ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .and_then(|(_, key)| find(key))
        .or_else(|| table().find(|k| k.env_name() == name));
    if let Some(k) = fixed {
        return Some(k.key.to_string());
    }
    let rest = name
        .strip_prefix("ZWARM_")?
        .strip_prefix(&format!("{}_", NAMED_PARENT.to_ascii_uppercase()))?;
    // The longest field first: `_AUTH_ENV` before `_ENV`.
    let mut fields: Vec<&str> = named()
        .iter()
        .filter_map(|k| k.key.rsplit_once('.').map(|(_, f)| f))
        .collect();
    fields.sort_by_key(|f| std::cmp::Reverse(f.len()));
    fields.into_iter().find_map(|field| {
        let table = rest.strip_suffix(&format!("_{}", field.to_ascii_uppercase()))?;
        let key = format!("{NAMED_PARENT}.{}.{field}", table.to_ascii_lowercase());
        find(&key).map(|_| key)
    })
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
    for k in table().chain(named()) {
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
