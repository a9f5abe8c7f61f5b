//! The store's error type: variants say what a caller should do.

/// Errors of the event store, relay and audit check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Postgres is unreachable or failed: retry later.
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// NATS or JetStream is unreachable or refused a request: retry later.
    #[error("nats unavailable: {0}")]
    Nats(String),
    /// Stored data could not be decoded (a bug or a missing upcaster).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    pub(crate) fn nats(err: impl std::fmt::Display) -> Self {
        Self::Nats(err.to_string())
    }
}
