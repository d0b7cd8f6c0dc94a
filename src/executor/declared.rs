//! Executors declared in the configuration (`[executors.NAME]`, trusted layers only): an ACP
//! agent's command line, run like the built-in ACP agents ([`super::acp::AcpExecutor`]).
//!
//! The registry makes them once, at its first use; their few strings live as long as the
//! process (an [`super::Executor`] hands out `&'static str`).

use super::acp::{AcpAgentSpec, AcpExecutor};
use super::api::Executor;
use crate::config::executors::DeclaredExecutor;

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn leak_all(items: impl Iterator<Item = &'static str>) -> &'static [&'static str] {
    Box::leak(items.collect::<Vec<_>>().into_boxed_slice())
}

/// The variable that names a declared executor's binary: `ZWARM_<NAME>_BIN`, as for the
/// built-in ACP agents.
pub fn bin_env(name: &str) -> String {
    format!("ZWARM_{}_BIN", name.to_ascii_uppercase().replace('-', "_"))
}

/// The agent spec of a declaration (checked by the configuration: a valid name, a program).
pub fn spec(name: &str, d: &DeclaredExecutor) -> AcpAgentSpec {
    let program = d.command.first().map(String::as_str).unwrap_or(name);
    AcpAgentSpec {
        name: leak(name),
        program: leak(program),
        args: leak_all(d.command.iter().skip(1).map(|a| leak(a))),
        // What doctor's advice installs: the program, by its name.
        package: leak(program),
        provider: leak(name),
        env_bin: leak(&bin_env(name)),
        // No version range is tested: any version is accepted.
        tested: ("0.0.0", "x"),
        env: Box::leak(
            d.env
                .iter()
                .map(|(k, v)| (leak(k), leak(v)))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        ),
        auth_env: leak_all(d.auth_env.iter().map(|a| leak(a))),
        auth_files: &[],
    }
}

/// The executor of a declaration.
pub fn executor(name: &str, d: &DeclaredExecutor) -> &'static dyn Executor {
    let spec: &'static AcpAgentSpec = Box::leak(Box::new(spec(name, d)));
    Box::leak(Box::new(AcpExecutor::new(spec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_becomes_an_acp_agent_spec() {
        let d: DeclaredExecutor = toml::from_str(
            r#"protocol = "acp"
command = ["copilot", "--acp", "--stdio"]
env = { COPILOT_MODE = "agent" }
auth_env = ["GH_TOKEN"]
"#,
        )
        .unwrap();
        let s = spec("my-agent", &d);
        assert_eq!(s.name, "my-agent");
        assert_eq!(s.program, "copilot");
        assert_eq!(s.args, ["--acp", "--stdio"]);
        assert_eq!(s.env, [("COPILOT_MODE", "agent")]);
        assert_eq!(s.auth_env, ["GH_TOKEN"]);
        assert_eq!(s.env_bin, "ZWARM_MY_AGENT_BIN");
        let e = executor("my-agent", &d);
        assert_eq!(e.name(), "my-agent");
        assert_eq!(e.adapter().as_str(), "my-agent");
        assert_eq!(e.doctor_spec().flags, ["--acp", "--stdio"]);
    }
}
