//! `opmas replay`: rebuilds the event-sourced read models from the Postgres
//! event store into fresh tables and swaps them in atomically.
//!
//! Everything happens in one transaction, so readers never see the fresh
//! tables before they are complete, and a failed replay leaves nothing:
//! 1. create `<table>_rebuild` for each model (`like <table> including all`),
//!    then drop its secondary indexes (kept: primary keys and unique ones);
//! 2. fold every event through a cursor, writing batches into them, then
//!    create the secondary indexes again (one sorted build each);
//! 3. catch up with events committed meanwhile;
//! 4. lock the live tables against writes (`exclusive`: reads go on), catch
//!    up again (the live projector is now held), then rename: the live tables
//!    are dropped and the fresh ones take their names (and index names).
//!
//! The live projector resumes on the fresh tables: their checkpoints are at
//! least as far as the old ones, so what it had applied is not applied twice.

use std::time::{Duration, Instant};

use opmas_domain::Agent;
use sqlx::{PgConnection, Row};

use crate::Error;
use crate::envelope::{COLUMNS, Envelope};
use crate::fold::Batch;
use crate::write::{EVENT_TABLES, Tables, write};

/// Where a replay is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub events: u64,
    /// Events in the store when the replay started.
    pub total: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Estimated time left at the current rate.
    pub fn eta(&self) -> Duration {
        let left = self.total.saturating_sub(self.events) as f64;
        Duration::from_secs_f64(left / self.rate().max(1e-9))
    }
}

/// Events folded per written batch.
pub const BATCH_EVENTS: usize = 5_000;

/// The projections `opmas replay --projection` accepts. The event-sourced
/// models share one checkpoint per agent and are always rebuilt together.
pub const PROJECTIONS: [&str; 1] = ["agents"];

/// Rebuilds and swaps in every event-sourced model; `progress` is called
/// about once a second. Returns the events folded.
pub async fn replay(
    conn: &mut PgConnection,
    mut progress: impl FnMut(Progress),
) -> Result<u64, Error> {
    let started = Instant::now();
    let total: i64 =
        sqlx::query_scalar("select count(*) from events where aggregate_type = 'Agent'")
            .fetch_one(&mut *conn)
            .await?;
    let total = u64::try_from(total).unwrap_or(0);
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let fresh = Tables::suffixed("_rebuild");
    let mut deferred = Vec::new();
    for table in EVENT_TABLES {
        let name = fresh.name(table);
        sqlx::query(&format!("create table {name} (like {table} including all)"))
            .execute(&mut *tx)
            .await?;
        deferred.extend(defer_secondary_indexes(&mut tx, &name).await?);
    }
    let source = format!(
        "select {COLUMNS} from events e where e.aggregate_type = 'Agent' order by e.aggregate_id, e.sequence"
    );
    let mut events = build(&mut tx, &fresh, &source, |n| {
        progress(Progress {
            events: n,
            total,
            elapsed: started.elapsed(),
        })
    })
    .await?;
    // One sorted build per index instead of an insert into each per row.
    for definition in &deferred {
        sqlx::query(definition).execute(&mut *tx).await?;
    }
    events += catch_up(&mut tx, &fresh).await?;
    for table in EVENT_TABLES {
        sqlx::query(&format!("lock table {table} in exclusive mode"))
            .execute(&mut *tx)
            .await?;
    }
    events += catch_up(&mut tx, &fresh).await?;
    for table in EVENT_TABLES {
        swap(&mut tx, table, &fresh.name(table)).await?;
    }
    tx.commit().await?;
    progress(Progress {
        events,
        total,
        elapsed: started.elapsed(),
    });
    Ok(events)
}

/// Folds the events `source` selects (ordered by agent and sequence) into
/// `tables` through a cursor; calls `progress` about once a second.
///
/// Pipelined: while batch k is written (PostgreSQL's work), batch k+1 is
/// already fetched and folded on a blocking thread (ours), so the two
/// overlap instead of taking turns. Folding stays sequential, as an agent's
/// state runs on from one batch into the next.
pub async fn build(
    conn: &mut PgConnection,
    tables: &Tables,
    source: &str,
    mut progress: impl FnMut(u64),
) -> Result<u64, Error> {
    sqlx::query(&format!(
        "declare replay_source no scroll cursor for {source}"
    ))
    .execute(&mut *conn)
    .await?;
    let mut folder = Folder::default();
    let (mut events, mut last_report) = (0_u64, Instant::now());
    let mut ready: Option<Batch> = None;
    loop {
        let rows = sqlx::query(&format!("fetch forward {BATCH_EVENTS} from replay_source"))
            .fetch_all(&mut *conn)
            .await?;
        let fetched = rows.len() as u64;
        if fetched == 0 {
            break;
        }
        let folding = tokio::task::spawn_blocking(move || {
            let batch = folder.fold(&rows);
            (folder, batch)
        });
        if let Some(batch) = ready.take() {
            write(conn, tables, batch).await?;
        }
        let (next_folder, batch) = folding
            .await
            .map_err(|e| Error::Corrupt(format!("replay fold panicked: {e}")))?;
        folder = next_folder;
        ready = Some(batch?);
        events += fetched;
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(events);
            last_report = Instant::now();
        }
    }
    if let Some(batch) = ready {
        write(conn, tables, batch).await?;
    }
    sqlx::query("close replay_source")
        .execute(&mut *conn)
        .await?;
    Ok(events)
}

/// The agent being folded, carried from one batch into the next.
#[derive(Default)]
struct Folder {
    agent: Agent,
    current: String,
}

impl Folder {
    fn fold(&mut self, rows: &[sqlx::postgres::PgRow]) -> Result<Batch, Error> {
        let mut batch = Batch::default();
        for row in rows {
            let env = Envelope::from_row(row)?;
            if env.agent_id != self.current {
                self.current.clone_from(&env.agent_id);
                self.agent = Agent::default();
            }
            batch.apply(&mut self.agent, &env);
        }
        Ok(batch)
    }
}

/// Drops the indexes of `table` that no write relies on (neither primary
/// key nor unique: the upserts need those) and returns their definitions,
/// to be created again once the table is loaded.
async fn defer_secondary_indexes(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<String>, Error> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index \
         where indrelid = $1::regclass and not indisprimary and not indisunique",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let mut definitions = Vec::with_capacity(indexes.len());
    for (name, definition) in indexes {
        sqlx::query(&format!("drop index {name}"))
            .execute(&mut *conn)
            .await?;
        definitions.push(definition);
    }
    Ok(definitions)
}

/// Applies to `tables` the events past their checkpoints (committed since
/// the build's snapshot), starting from each agent's stored state.
async fn catch_up(conn: &mut PgConnection, tables: &Tables) -> Result<u64, Error> {
    let status = tables.name("agent_status");
    let rows = sqlx::query(&format!(
        "select {COLUMNS}, s.state from events e left join {status} s on s.agent_id = e.aggregate_id \
         where e.aggregate_type = 'Agent' and e.sequence > coalesce(s.last_sequence, 0) \
         order by e.aggregate_id, e.sequence"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut batch = Batch::default();
    let (mut agent, mut current) = (Agent::default(), String::new());
    for row in &rows {
        let env = Envelope::from_row(row)?;
        if env.agent_id != current {
            current.clone_from(&env.agent_id);
            let state: Option<serde_json::Value> = row.try_get("state")?;
            agent = match state {
                Some(state) => serde_json::from_value(state).map_err(Error::corrupt)?,
                None => Agent::default(),
            };
        }
        batch.apply(&mut agent, &env);
    }
    write(conn, tables, batch).await?;
    Ok(rows.len() as u64)
}

/// Replaces `live` by `fresh`, renaming the fresh indexes to the live names.
async fn swap(conn: &mut PgConnection, live: &str, fresh: &str) -> Result<(), Error> {
    sqlx::query(&format!("drop table {live}"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("alter table {fresh} rename to {live}"))
        .execute(&mut *conn)
        .await?;
    let indexes: Vec<String> = sqlx::query_scalar(
        "select indexrelid::regclass::text from pg_index where indrelid = $1::regclass",
    )
    .bind(live)
    .fetch_all(&mut *conn)
    .await?;
    for index in indexes {
        if let Some(rest) = index.strip_prefix(fresh) {
            sqlx::query(&format!("alter index {index} rename to {live}{rest}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}
