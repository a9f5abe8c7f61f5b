//! Writing a [`Batch`] into a set of [`Tables`]: one statement per table,
//! rows passed as one JSON array (`json_populate_recordset` maps them by
//! column name). Idempotent: rows are keyed by `(agent_id, sequence)`
//! and status rows only move forward.

use serde::Serialize;
use sqlx::PgConnection;

use crate::Error;
use crate::fold::Batch;

/// The event-sourced read models, in the order they are written.
pub const EVENT_TABLES: [&str; 6] = [
    "agent_status",
    "agent_status_history",
    "agent_recovery_attempts",
    "agent_errors",
    "agent_error_groups",
    "agent_configs",
];

/// Names of the event-sourced tables a batch is written to: the live ones,
/// or the fresh copies `opmas replay` builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    suffix: String,
}

impl Tables {
    /// The live tables.
    pub fn live() -> Self {
        Self {
            suffix: String::new(),
        }
    }

    /// `<table><suffix>` for every table (e.g. `_rebuild`).
    pub fn suffixed(suffix: &str) -> Self {
        Self {
            suffix: suffix.to_owned(),
        }
    }

    /// The name of `table` in this set.
    pub fn name(&self, table: &str) -> String {
        format!("{table}{}", self.suffix)
    }
}

/// Status columns replaced when a newer event arrives.
const STATUS_UPDATE: &str = "last_sequence, last_event_type, registered, deregistered, \
    agent_type, package_version, desired_state, status, health, recovery_status, \
    recovery_attempts, node, pid, started_at, restart_count, heartbeat_lost, \
    last_error, spec_version, config_version, state, updated_at";

async fn exec<T: Serialize>(
    conn: &mut PgConnection,
    sql: &str,
    rows: impl IntoIterator<Item = T>,
) -> Result<(), Error> {
    let rows: Vec<T> = rows.into_iter().collect();
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(&rows).map_err(Error::corrupt)?;
    sqlx::query(sql).bind(json).execute(conn).await?;
    Ok(())
}

/// Writes `batch` into `tables` on `conn` (inside the caller's transaction).
pub async fn write(conn: &mut PgConnection, tables: &Tables, batch: Batch) -> Result<(), Error> {
    let t = |name: &str| tables.name(name);
    let rows = |name: &str| {
        format!(
            "select * from json_populate_recordset(null::{}, $1::json)",
            t(name)
        )
    };
    let status = t("agent_status");
    let set = STATUS_UPDATE
        .split(',')
        .map(|c| format!("{0} = excluded.{0}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    exec(
        conn,
        &format!(
            "insert into {status} as s {} on conflict (agent_id) do update \
             set {set}, \
                 last_heartbeat_at = coalesce(excluded.last_heartbeat_at, s.last_heartbeat_at) \
             where s.last_sequence < excluded.last_sequence",
            rows("agent_status")
        ),
        batch.status.into_values(),
    )
    .await?;
    exec(
        conn,
        &format!(
            "insert into {} {} on conflict do nothing",
            t("agent_status_history"),
            rows("agent_status_history")
        ),
        batch.history,
    )
    .await?;
    exec(
        conn,
        &format!(
            "insert into {} {} on conflict do nothing",
            t("agent_recovery_attempts"),
            rows("agent_recovery_attempts")
        ),
        batch.recovery,
    )
    .await?;
    exec(
        conn,
        &format!(
            "update {r} r set completed_sequence = c.completed_sequence, \
               completed_at = c.completed_at, outcome = c.outcome, error = c.error, \
               updated_at = c.updated_at \
             from ({c}) c \
             where r.agent_id = c.agent_id and r.outcome = 'in_progress' \
               and r.sequence < c.completed_sequence",
            r = t("agent_recovery_attempts"),
            c = rows("agent_recovery_attempts"),
        ),
        batch.completions,
    )
    .await?;
    exec(
        conn,
        &format!(
            "insert into {} {} on conflict do nothing",
            t("agent_errors"),
            rows("agent_errors")
        ),
        batch.errors,
    )
    .await?;
    exec(
        conn,
        &format!(
            "insert into {g} as g {rows} on conflict (agent_id, fingerprint) do update \
             set count = g.count + excluded.count, severity = excluded.severity, \
                 last_seen = excluded.last_seen, last_sequence = excluded.last_sequence, \
                 updated_at = excluded.updated_at \
             where g.last_sequence < excluded.first_sequence",
            g = t("agent_error_groups"),
            rows = rows("agent_error_groups"),
        ),
        batch.groups.into_values(),
    )
    .await?;
    exec(
        conn,
        &format!(
            "insert into {} {} on conflict do nothing",
            t("agent_configs"),
            rows("agent_configs")
        ),
        batch.configs,
    )
    .await
}
