//! The crate's error type: variants say what a caller should do.

/// Errors of the projectors, replay and audit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL is unreachable or failed a statement: retry later.
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// NATS or JetStream is unreachable or refused a request: retry later.
    #[error("nats unavailable: {0}")]
    Nats(String),
    /// A stored event or message could not be decoded: a bug or a missing
    /// upcaster; the event store holds the original.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The caller asked for something that does not exist (an unknown
    /// projection name, an unknown agent): fix the request.
    #[error("not found: {0}")]
    NotFound(String),
}

impl Error {
    pub(crate) fn nats(err: impl std::fmt::Display) -> Self {
        Self::Nats(err.to_string())
    }

    pub(crate) fn corrupt(err: impl std::fmt::Display) -> Self {
        Self::Corrupt(err.to_string())
    }
}

impl From<opmas_store::Error> for Error {
    fn from(err: opmas_store::Error) -> Self {
        match err {
            opmas_store::Error::Database(e) => Self::Database(e),
            opmas_store::Error::Nats(e) => Self::Nats(e),
            other => Self::Corrupt(other.to_string()),
        }
    }
}
