//! `[runner.container]`: what a container turn may use. Trusted layers only: every key changes
//! what an executor can reach (network, the host's environment) or how much of the machine.

use serde::{Deserialize, Serialize};

/// `[runner.container] network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace: the executor reaches what the host reaches, loopback
    /// included (a model server or proxy on 127.0.0.1).
    #[default]
    Host,
    /// Docker's default bridge: its own loopback, outbound through NAT.
    Bridge,
    /// No network at all (a model API is then unreachable: for tests and offline tools).
    None,
}

impl Network {
    pub fn mode(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::Bridge => "bridge",
            Network::None => "none",
        }
    }
}

/// `[runner.container]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    /// The image holding the executor CLIs (`codex`, `claude` on its PATH).
    pub image: String,
    pub network: Network,
    /// Memory limit, e.g. `2g`, `512m` (swap is not added on top).
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. `2.0`.
    pub cpus: Option<f64>,
    /// Limit on processes and threads in the container.
    pub pids: Option<u64>,
    /// `uid[:gid]` or a name known to the image; default: zwarm's own uid:gid, so files
    /// written into the worktree belong to the same user as with the local runner.
    pub user: Option<String>,
    /// Names of zwarm's environment variables passed into the container (API keys, proxy
    /// settings). Nothing else of zwarm's environment goes in.
    pub env: Vec<String>,
    /// Docker endpoint (`unix:///…`, `tcp://…`); default: `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            image: "zwarm-exec:latest".into(),
            network: Network::Host,
            memory: None,
            cpus: None,
            pids: Some(4096),
            user: None,
            env: Vec::new(),
            host: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimitError {
    #[error(
        "runner.container.memory is `{0}`: use a number of bytes with an optional unit k, m or g (e.g. `512m`, `2g`)"
    )]
    Memory(String),
    #[error("runner.container.cpus is `{0}`: use a positive number of cores (e.g. `2.0`)")]
    Cpus(f64),
    #[error("runner.container.pids is `{0}`: use a positive number")]
    Pids(u64),
    #[error("runner.container.image is empty: name an image with the executor CLIs")]
    Image,
}

/// The limits in the Engine API's units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
}

impl ContainerConfig {
    /// Check the values and convert them; an error says which key and what to write.
    pub fn limits(&self) -> Result<Limits, LimitError> {
        if self.image.trim().is_empty() {
            return Err(LimitError::Image);
        }
        let memory_bytes = match &self.memory {
            None => None,
            Some(m) => Some(parse_bytes(m).ok_or_else(|| LimitError::Memory(m.clone()))?),
        };
        let nano_cpus = match self.cpus {
            None => None,
            Some(c) if c.is_finite() && c > 0.0 && c < 1e6 => Some((c * 1e9) as i64),
            Some(c) => return Err(LimitError::Cpus(c)),
        };
        let pids = match self.pids {
            Some(p) if p == 0 || p > i64::MAX as u64 => return Err(LimitError::Pids(p)),
            p => p.map(|p| p as i64),
        };
        Ok(Limits {
            memory_bytes,
            nano_cpus,
            pids,
        })
    }
}

/// `512m`, `2g`, `1048576`, `64k` (binary units, case-insensitive, optional trailing `b`).
pub fn parse_bytes(s: &str) -> Option<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1i64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    let v = n * mult as f64;
    // Docker refuses less than 6 MiB; anything that large is surely a typo below that too.
    (1.0..9.0e18).contains(&v).then_some(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::config::{RunnerConfig, RunnerKind};

    #[test]
    fn bytes_with_units() {
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("64kb"), Some(64 << 10));
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("g"), None);
        assert_eq!(parse_bytes("-1g"), None);
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn limits_say_which_key_is_wrong() {
        let mut c = ContainerConfig {
            memory: Some("2 gigs".into()),
            ..ContainerConfig::default()
        };
        assert!(c.limits().unwrap_err().to_string().contains("memory"));
        c.memory = Some("2g".into());
        c.cpus = Some(0.0);
        assert!(c.limits().unwrap_err().to_string().contains("cpus"));
        c.cpus = Some(1.5);
        let l = c.limits().unwrap();
        assert_eq!(l.memory_bytes, Some(2 << 30));
        assert_eq!(l.nano_cpus, Some(1_500_000_000));
        c.image = " ".into();
        assert_eq!(c.limits(), Err(LimitError::Image));
    }

    #[test]
    fn section_parses_from_toml() {
        let r: RunnerConfig = toml::from_str(
            r#"kind = "container"
[container]
image = "zwarm-exec:1"
network = "none"
memory = "1g"
cpus = 2.0
pids = 256
env = ["OPENAI_API_KEY"]
"#,
        )
        .unwrap();
        assert_eq!(r.kind, RunnerKind::Container);
        assert_eq!(r.container.network, Network::None);
        assert_eq!(r.container.env, vec!["OPENAI_API_KEY".to_string()]);
        assert!(toml::from_str::<RunnerConfig>("kind = \"vm\"").is_err());
        assert!(toml::from_str::<RunnerConfig>("[container]\nimage2 = \"x\"").is_err());
    }
}
