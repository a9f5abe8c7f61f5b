//! [`AgentId`]: the validated name of an agent.
//!
//! An id is a DNS-label-like slug: 1 to 63 characters, lowercase ASCII
//! letters, digits and `-`, starting with a letter, not ending with `-` and
//! without `--`. It is used in URLs, subjects and file names, so it is checked
//! once, at the edge, and trusted afterwards: deserializing validates too.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest id accepted, in characters.
pub const MAX_LEN: usize = 63;

/// A validated agent id; see the [module docs](self) for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

/// Why a string is not an [`AgentId`]. Positions are 1-based characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("agent id is empty: use 1 to {MAX_LEN} lowercase letters, digits and '-'")]
    Empty,
    #[error("agent id `{id}` is {len} characters long: at most {MAX_LEN} are allowed")]
    TooLong { id: String, len: usize },
    #[error(
        "agent id `{id}` has an upper-case letter at {position}: \
         use lowercase letters, digits and '-'"
    )]
    UpperCase { id: String, position: usize },
    #[error(
        "agent id `{id}` has the character {found:?} at {position}: \
         use lowercase letters, digits and '-'"
    )]
    InvalidChar {
        id: String,
        found: char,
        position: usize,
    },
    #[error("agent id `{id}` must start with a lowercase letter")]
    BadStart { id: String },
    #[error("agent id `{id}` has \"--\" at {position}: use a single '-'")]
    DoubleHyphen { id: String, position: usize },
    #[error("agent id `{id}` must not end with '-'")]
    TrailingHyphen { id: String },
}

impl AgentId {
    /// Checks `s` against the id rules.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let id = || s.to_owned();
        let len = s.chars().count();
        if len == 0 {
            return Err(IdError::Empty);
        }
        if len > MAX_LEN {
            return Err(IdError::TooLong { id: id(), len });
        }
        let mut previous = None;
        for (index, c) in s.chars().enumerate() {
            let position = index + 1;
            if c.is_uppercase() {
                return Err(IdError::UpperCase { id: id(), position });
            }
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return Err(IdError::InvalidChar {
                    id: id(),
                    found: c,
                    position,
                });
            }
            if c == '-' && previous == Some('-') {
                return Err(IdError::DoubleHyphen {
                    id: id(),
                    position: index,
                });
            }
            previous = Some(c);
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(IdError::BadStart { id: id() });
        }
        if s.ends_with('-') {
            return Err(IdError::TrailingHyphen { id: id() });
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgentId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for AgentId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slugs() {
        for ok in [
            "a",
            "web-1",
            "a1b2",
            "x".repeat(63).as_str(),
            "etl-worker-7",
        ] {
            let id = AgentId::parse(ok).expect(ok);
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
            assert_eq!(id.as_ref(), ok);
            assert_eq!(ok.parse::<AgentId>(), Ok(id));
        }
    }

    #[test]
    fn rejects_with_a_reason() {
        let err = |s: &str| AgentId::parse(s).expect_err(s);
        assert_eq!(err(""), IdError::Empty);
        assert!(matches!(
            err(&"a".repeat(64)),
            IdError::TooLong { len: 64, .. }
        ));
        assert_eq!(
            err("Foo").to_string(),
            "agent id `Foo` has an upper-case letter at 1: use lowercase letters, digits and '-'"
        );
        assert!(matches!(
            err("ab_c"),
            IdError::InvalidChar {
                found: '_',
                position: 3,
                ..
            }
        ));
        assert!(matches!(
            err("a b"),
            IdError::InvalidChar { found: ' ', .. }
        ));
        assert!(matches!(err("é"), IdError::InvalidChar { found: 'é', .. }));
        assert!(matches!(err("1abc"), IdError::BadStart { .. }));
        assert!(matches!(err("-abc"), IdError::BadStart { .. }));
        assert!(matches!(err("ab-"), IdError::TrailingHyphen { .. }));
        assert_eq!(
            err("a--b"),
            IdError::DoubleHyphen {
                id: "a--b".into(),
                position: 2
            }
        );
        assert_eq!(
            err("a--b").to_string(),
            "agent id `a--b` has \"--\" at 2: use a single '-'"
        );
    }

    #[test]
    fn serde_is_a_validated_string() {
        let id = AgentId::parse("web-1").expect("valid");
        assert_eq!(serde_json::to_string(&id).expect("ser"), "\"web-1\"");
        let back: AgentId = serde_json::from_str("\"web-1\"").expect("de");
        assert_eq!(back, id);
        let bad = serde_json::from_str::<AgentId>("\"Web\"").expect_err("invalid");
        assert!(bad.to_string().contains("upper-case letter at 1"), "{bad}");
    }
}
