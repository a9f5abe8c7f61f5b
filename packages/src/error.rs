//! The crate's errors: [`Invalid`] says where a package is wrong (file,
//! line, field) and why; [`Error`] is what a caller of the service handles.

use std::fmt;
use std::path::PathBuf;

/// A package that cannot be used, and exactly why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// The file at fault (`agent.toml`, a config file, the schema file), or
    /// the package directory when no file is.
    pub file: PathBuf,
    /// 1-based line in `file`, when the fault has a place.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `heartbeat.timeout` or
    /// `config.db.port`; empty when the whole file is at fault.
    pub field: String,
    /// Why, in words a package author acts on.
    pub message: String,
}

impl Invalid {
    pub fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    /// `path/agent.toml:7: `heartbeat.timeout`: must be at least ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A dependency cycle among agents' `requires`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`requires` forms a cycle: {}", .cycle.join(" -> "))]
pub struct Cycle {
    /// The agents on the cycle, the first repeated at the end
    /// (`a -> b -> c -> a`).
    pub cycle: Vec<String>,
}

/// Errors of discovery as a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event store refused or could not take a command: retry later.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}
