//! The Job a turn runs as, and the script its pod runs.
//!
//! The pod's one container runs `sh -c SCRIPT zwarm-turn <executor argv>`. The script checks the
//! session's branch out of the git remote into the workspace (the same path as the session's
//! worktree on zwarm's machine), checks the executor's state out of `refs/zwarm/state/<session>`
//! (a home and each executor's state dir, `ZWARM_STATE_DIRS` = `name=VARIABLE …` from
//! [`crate::executor::StateDir`]: codex's `CODEX_HOME`, claude's config dir), writes the
//! executor's config file there (`ZWARM_EXECUTOR_CONFIG_FILE`, `ZWARM_EXECUTOR_CONFIG`), runs the executor with the prompt on its
//! stdin and its JSONL on stdout (the pod log; its stderr goes to a file), commits the turn,
//! pushes the branch back (a fast-forward: a rejected push fails the turn) and pushes the state.
//! Its own failures (fetch, push) are written to the termination message and end it with
//! [`FAILED_SETUP`] or [`FAILED_PUSH`]; otherwise it exits with the executor's code.

use serde_json::{Value, json};

use crate::runner::config::KubeConfig;

/// Exit code of the pod script when it could not set the turn up (fetch, checkout).
pub const FAILED_SETUP: i32 = 97;
/// Exit code of the pod script when the turn's push was rejected.
pub const FAILED_PUSH: i32 = 98;
/// The argument the script replaces with the workspace path.
pub const WS_ARG: &str = "@@ZWARM_WS@@";
/// Prefix of the arguments the script replaces with a read-back file path (`…_<n>@@`).
pub const OUT_ARG: &str = "@@ZWARM_OUT_";
/// Name of the pod's container.
pub const CONTAINER: &str = "turn";

/// The pod's entry point (POSIX sh, git on PATH).
pub const SCRIPT: &str = r#"set -u
R="${ZWARM_POD_ROOT:-}"
WS="$R$ZWARM_CWD"
ST="$R/zwarm-state"
TL="${ZWARM_TERMINATION_LOG:-/dev/termination-log}"
fail() { printf '%s' "$1" > "$TL" 2>/dev/null; exit "$2"; }
G() { git -c core.hooksPath=/dev/null -c credential.helper= -c commit.gpgSign=false -c gc.auto=0 -c user.name=zwarm -c user.email=zwarm@localhost "$@"; }
# A remote on a path (a shared volume) is served by git's builtins: images with git but without
# its git-upload-pack/git-receive-pack programs still reach it.
L=; case "$ZWARM_GIT_REMOTE" in /*|file://*) L=1 ;; esac
F() { if [ -n "$L" ]; then G fetch --upload-pack="git upload-pack" "$@"; else G fetch "$@"; fi; }
P() { if [ -n "$L" ]; then G push --receive-pack="git receive-pack" "$@"; else G push "$@"; fi; }
mkdir -p "$WS" "$ST" || fail "cannot create the workspace $WS in the pod" 97
cd "$WS" && G init -q . >/dev/null 2>&1 || fail "git init failed in the pod" 97
o=$(F -q --no-tags "$ZWARM_GIT_REMOTE" "refs/heads/$ZWARM_BRANCH" 2>&1) || fail "the pod could not fetch the session's branch $ZWARM_BRANCH from $ZWARM_GIT_REMOTE: $o" 97
o=$(G checkout -q -f -B "$ZWARM_BRANCH" FETCH_HEAD 2>&1) || fail "the pod could not check out $ZWARM_BRANCH: $o" 97
cd "$ST" && G init -q . >/dev/null 2>&1 || fail "git init failed in the pod" 97
if F -q --no-tags "$ZWARM_GIT_REMOTE" "refs/zwarm/state/$ZWARM_SESSION" >/dev/null 2>&1; then
  G checkout -q -f --detach FETCH_HEAD >/dev/null 2>&1 || fail "the pod could not check out the executor's state" 97
fi
mkdir -p home out && rm -f out/* stderr
for d in ${ZWARM_STATE_DIRS:-}; do
  mkdir -p "${d%%=*}" && export "${d#*=}=$ST/${d%%=*}"
done
[ -n "${ZWARM_EXECUTOR_CONFIG_FILE:-}" ] && printf '%s\n' "${ZWARM_EXECUTOR_CONFIG:-}" > "$ZWARM_EXECUTOR_CONFIG_FILE"
export HOME="$ST/home"
for a do
  shift
  case "$a" in
    @@ZWARM_WS@@) a="$WS" ;;
    @@ZWARM_OUT_*@@) n="${a#@@ZWARM_OUT_}"; a="$ST/out/${n%@@}" ;;
  esac
  set -- "$@" "$a"
done
cd "$WS"
if [ -n "${ZWARM_STDIN_SET:-}" ]; then
  printf '%s' "${ZWARM_STDIN:-}" | "$@" 2>"$ST/stderr"
else
  "$@" </dev/null 2>"$ST/stderr"
fi
code=$?
cd "$WS" && G add -A >/dev/null 2>&1
G commit -q --no-verify -m "zwarm: turn $ZWARM_LABEL" >/dev/null 2>&1
o=$(P -q "$ZWARM_GIT_REMOTE" "HEAD:refs/heads/$ZWARM_BRANCH" 2>&1) || fail "the turn's push to $ZWARM_BRANCH on $ZWARM_GIT_REMOTE was rejected: $o" 98
cd "$ST" && tail -c 65536 stderr > stderr.tail 2>/dev/null; mv -f stderr.tail stderr
G add -A >/dev/null 2>&1; G commit -q --no-verify --allow-empty -m "zwarm: state after $ZWARM_LABEL" >/dev/null 2>&1
o=$(P -q -f "$ZWARM_GIT_REMOTE" "HEAD:refs/zwarm/state/$ZWARM_SESSION" 2>&1) || fail "pushing the executor's state to $ZWARM_GIT_REMOTE failed: $o" 98
exit $code
"#;

/// Everything a turn's Job is made of.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    /// `<session>.<turn>`.
    pub label: String,
    pub session: String,
    /// This zwarm's server label value.
    pub server: String,
    pub branch: String,
    pub git_remote: String,
    /// The workspace path (the session's worktree on zwarm's machine).
    pub cwd: String,
    /// The executor's argv, the program first, placeholders for paths already in.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    /// `activeDeadlineSeconds`: the turn's timeout, when it has one.
    pub deadline_seconds: Option<u64>,
}

pub const LABEL: &str = "zwarm.dev/label";
pub const LABEL_SESSION: &str = "zwarm.dev/session";
pub const LABEL_SERVER: &str = "zwarm.dev/server";

/// The Job manifest (`batch/v1`).
pub fn job(cfg: &KubeConfig, s: &JobSpec) -> Value {
    let labels = json!({
        LABEL: s.label,
        LABEL_SESSION: s.session,
        LABEL_SERVER: s.server,
        "app.kubernetes.io/managed-by": "zwarm",
    });
    let mut env: Vec<Value> = Vec::new();
    let mut add = |k: &str, v: &str| env.push(json!({"name": k, "value": v}));
    add("ZWARM_LABEL", &s.label);
    add("ZWARM_SESSION", &s.session);
    add("ZWARM_BRANCH", &s.branch);
    add("ZWARM_GIT_REMOTE", &s.git_remote);
    add("ZWARM_CWD", &s.cwd);
    if let Some(i) = &s.stdin {
        add("ZWARM_STDIN_SET", "1");
        add("ZWARM_STDIN", i);
    }
    for (k, v) in &s.env {
        add(k, v);
    }
    let mut container = json!({
        "name": CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", SCRIPT, "zwarm-turn"],
        "args": s.argv,
        "env": env,
        "terminationMessagePolicy": "File",
        "securityContext": {"allowPrivilegeEscalation": false},
    });
    if let Some(secret) = &cfg.secret {
        // The Secret's keys become environment variables in the pod; the values never pass
        // through zwarm or the Job spec.
        container["envFrom"] = json!([{"secretRef": {"name": secret}}]);
    }
    let mut quantities = serde_json::Map::new();
    if let Some(c) = &cfg.cpu {
        quantities.insert("cpu".into(), json!(c));
    }
    if let Some(m) = &cfg.memory {
        quantities.insert("memory".into(), json!(m));
    }
    if !quantities.is_empty() {
        container["resources"] = json!({"requests": quantities, "limits": quantities});
    }
    let mut pod = json!({
        "restartPolicy": "Never",
        "containers": [container],
        "automountServiceAccountToken": false,
    });
    if let Some(sa) = &cfg.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    if !cfg.node_selector.is_empty() {
        pod["nodeSelector"] = json!(cfg.node_selector);
    }
    let mut spec = json!({
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    });
    if let Some(d) = s.deadline_seconds {
        spec["activeDeadlineSeconds"] = json!(d);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": s.name, "namespace": cfg.namespace, "labels": labels},
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            name: "zwarm-6883c685-1-ab12".into(),
            label: "6883c685-0000-4000-8000-000000000000.1".into(),
            session: "6883c685-0000-4000-8000-000000000000".into(),
            server: "node-42-1234".into(),
            branch: "zwarm/6883c685".into(),
            git_remote: "git@example.com:team/project.git".into(),
            cwd: "/state/worktrees/6883c685".into(),
            argv: vec![
                "codex".into(),
                "exec".into(),
                "-C".into(),
                WS_ARG.into(),
                "-".into(),
            ],
            env: vec![("ZWARM_TURN".into(), "6883c685.1".into())],
            stdin: Some("do it".into()),
            deadline_seconds: Some(1800),
        }
    }

    /// The whole manifest, as a snapshot: a change here is a change of what runs on clusters.
    #[test]
    fn job_manifest_snapshot() {
        let mut cfg = KubeConfig {
            namespace: "agents".into(),
            image: "registry.example.com/zwarm-exec:1".into(),
            service_account: Some("zwarm-turns".into()),
            cpu: Some("2".into()),
            memory: Some("4Gi".into()),
            secret: Some("zwarm-keys".into()),
            ..Default::default()
        };
        cfg.node_selector.insert("pool".into(), "agents".into());
        let mut j = job(&cfg, &spec());
        // The script is checked on its own (it is long).
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["command"][2],
            SCRIPT
        );
        j["spec"]["template"]["spec"]["containers"][0]["command"][2] = json!("SCRIPT");
        let want = json!({
          "apiVersion": "batch/v1",
          "kind": "Job",
          "metadata": {
            "name": "zwarm-6883c685-1-ab12",
            "namespace": "agents",
            "labels": {
              "zwarm.dev/label": "6883c685-0000-4000-8000-000000000000.1",
              "zwarm.dev/session": "6883c685-0000-4000-8000-000000000000",
              "zwarm.dev/server": "node-42-1234",
              "app.kubernetes.io/managed-by": "zwarm"
            }
          },
          "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 1800,
            "template": {
              "metadata": {"labels": {
                "zwarm.dev/label": "6883c685-0000-4000-8000-000000000000.1",
                "zwarm.dev/session": "6883c685-0000-4000-8000-000000000000",
                "zwarm.dev/server": "node-42-1234",
                "app.kubernetes.io/managed-by": "zwarm"
              }},
              "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "serviceAccountName": "zwarm-turns",
                "nodeSelector": {"pool": "agents"},
                "containers": [{
                  "name": "turn",
                  "image": "registry.example.com/zwarm-exec:1",
                  "imagePullPolicy": "IfNotPresent",
                  "command": ["/bin/sh", "-c", "SCRIPT", "zwarm-turn"],
                  "args": ["codex", "exec", "-C", "@@ZWARM_WS@@", "-"],
                  "env": [
                    {"name": "ZWARM_LABEL", "value": "6883c685-0000-4000-8000-000000000000.1"},
                    {"name": "ZWARM_SESSION", "value": "6883c685-0000-4000-8000-000000000000"},
                    {"name": "ZWARM_BRANCH", "value": "zwarm/6883c685"},
                    {"name": "ZWARM_GIT_REMOTE", "value": "git@example.com:team/project.git"},
                    {"name": "ZWARM_CWD", "value": "/state/worktrees/6883c685"},
                    {"name": "ZWARM_STDIN_SET", "value": "1"},
                    {"name": "ZWARM_STDIN", "value": "do it"},
                    {"name": "ZWARM_TURN", "value": "6883c685.1"}
                  ],
                  "envFrom": [{"secretRef": {"name": "zwarm-keys"}}],
                  "resources": {
                    "requests": {"cpu": "2", "memory": "4Gi"},
                    "limits": {"cpu": "2", "memory": "4Gi"}
                  },
                  "terminationMessagePolicy": "File",
                  "securityContext": {"allowPrivilegeEscalation": false}
                }]
              }
            }
          }
        });
        assert_eq!(j, want, "{}", serde_json::to_string_pretty(&j).unwrap());
    }

    #[test]
    fn minimal_manifest_has_no_optional_parts() {
        let mut s = spec();
        s.stdin = None;
        s.deadline_seconds = None;
        let j = job(&KubeConfig::default(), &s);
        let c = &j["spec"]["template"]["spec"]["containers"][0];
        assert!(c.get("envFrom").is_none() && c.get("resources").is_none());
        assert!(j["spec"].get("activeDeadlineSeconds").is_none());
        assert!(j["spec"]["template"]["spec"].get("nodeSelector").is_none());
        let env = c["env"].to_string();
        assert!(!env.contains("ZWARM_STDIN"), "{env}");
    }
}
