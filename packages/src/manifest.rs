//! The `agent.toml` manifest as written by a package author. Every table
//! refuses unknown keys (a typo is an error with its line, never ignored);
//! absent keys take the defaults of [`opmas_domain::AgentSpec`]. Durations
//! are strings such as `"250ms"`, `"5s"`, `"2m"`; sizes are bytes or
//! strings such as `"256MiB"`. `package.rs` turns a manifest into specs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::Value;

/// The whole `agent.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Agent id (or id prefix with `instances > 1`).
    pub name: String,
    #[serde(rename = "type")]
    pub agent_type: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// `./bin/agent` (in the package) or a bare program name on `PATH`.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Relative to the package directory (default: the package directory).
    pub working_dir: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Keys of `env` whose values are secret.
    #[serde(default)]
    pub secret_env: BTreeSet<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub node: Option<String>,
    /// How many copies run; ids `name-1..name-N` when more than one.
    pub instances: Option<u32>,
    /// Agent ids that must be healthy before this one starts.
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub heartbeat: Heartbeat,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default)]
    pub recovery: Recovery,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub stop: Stop,
    #[serde(default)]
    pub config: Config,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<Bytes>,
    pub cpu_percent: Option<f64>,
    pub cpu_seconds: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub enabled: Option<bool>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub startup_grace: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    pub mode: Option<opmas_domain::RestartMode>,
    pub initial_delay: Option<Dur>,
    pub max_delay: Option<Dur>,
    pub multiplier: Option<f64>,
    pub jitter: Option<f64>,
    pub reset_after: Option<Dur>,
    pub intensity: Option<u32>,
    pub period: Option<Dur>,
    pub failed_cooldown: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    pub strategy: Option<opmas_domain::RecoveryStrategy>,
    pub auto: Option<bool>,
    pub max_attempts: Option<u32>,
}

/// Kind of health probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    #[default]
    Heartbeat,
    Exec,
    Http,
    Tcp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub kind: CheckKind,
    /// `exec`: program (`./check.sh` in the package, or on `PATH`).
    pub command: Option<String>,
    /// `exec`: its arguments.
    pub args: Option<Vec<String>>,
    /// `http`: URL answered with 2xx when healthy.
    pub url: Option<String>,
    /// `tcp`: host and port that accept a connection when healthy.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub failure_threshold: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    pub signal: Option<String>,
    pub grace: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How a running agent takes a new config.
    pub reload: Option<opmas_domain::ReloadMode>,
    /// JSON Schema: a path to a JSON file in the package, or an inline table.
    pub schema: Option<Value>,
}

/// A duration written as `"5s"`, `"250ms"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// Milliseconds, saturating.
    pub fn ms(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                humantime::parse_duration(s).map(Dur).map_err(|_| {
                    E::custom(format!(
                        "`{s}` is not a duration: write e.g. \"5s\", \"250ms\" or \"2m\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A size in bytes: an integer, or a string with a unit (`"512KiB"`,
/// `"256MiB"`, `"1GiB"`, `"1GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

/// Parses `"256MiB"`-style sizes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    for (unit, factor) in UNITS {
        if let Some(number) = s.strip_suffix(unit) {
            return number.trim().parse::<u64>().ok()?.checked_mul(*factor);
        }
    }
    s.parse().ok()
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes or a string such as \"256MiB\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Bytes, E> {
                u64::try_from(n)
                    .map(Bytes)
                    .map_err(|_| E::custom(format!("{n} is negative: a size is 0 or more bytes")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Bytes, E> {
                Ok(Bytes(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bytes, E> {
                parse_bytes(s).map(Bytes).ok_or_else(|| {
                    E::custom(format!(
                        "`{s}` is not a size: write bytes or e.g. \"512KiB\", \"256MiB\", \"1GiB\""
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_bytes("256MiB"), Some(256 << 20));
        assert_eq!(parse_bytes("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("12B"), Some(12));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("99999999999TiB"), None, "overflow");
    }
}
