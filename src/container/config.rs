//! `[runner.container]`'s limits in the Docker Engine API's units. The section itself is typed
//! with the other runners' ([`crate::runner::config`]): the configuration reads it without
//! knowing the container runner.

pub use crate::runner::config::{ContainerConfig, Network};

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
}
