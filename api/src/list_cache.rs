//! Answers of `GET /agents`, kept while nothing they show has changed.
//!
//! Every request first reads a cheap version of the read models — the
//! number of status rows, the sum of their per-agent sequences (every event
//! raises it), the latest live heartbeat — and the current second (uptimes
//! are computed in seconds). An answer cached under the same query and
//! version is returned as is: never stale, and a list of 1,000 agents costs
//! one small aggregate query instead of 1,000 rows to read and serialize.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What the list shows depends on nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    rows: i64,
    sequences: i64,
    heartbeat: Option<DateTime<Utc>>,
    second: i64,
}

impl Version {
    /// The current version (one aggregate query).
    pub async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let (rows, sequences, heartbeat): (i64, i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "select count(*), coalesce(sum(last_sequence), 0)::bigint, \
             (select max(last_seen) from agent_heartbeats) from agent_status",
        )
        .fetch_one(pool)
        .await?;
        Ok(Self {
            rows,
            sequences,
            heartbeat,
            second: Utc::now().timestamp(),
        })
    }
}

/// Most distinct queries kept.
const MAX_ENTRIES: usize = 64;

/// Serialized answers by query.
#[derive(Default)]
pub struct ListCache {
    entries: Mutex<HashMap<String, (Version, Bytes)>>,
}

impl ListCache {
    /// The answer to `query` at `version`, if cached.
    pub fn get(&self, query: &str, version: &Version) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(query)
            .filter(|(v, _)| v == version)
            .map(|(_, body)| body.clone())
    }

    /// Keeps `body` as the answer to `query` at `version`.
    pub fn put(&self, query: String, version: Version, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&query) {
            entries.clear();
        }
        entries.insert(query, (version, body));
    }
}
