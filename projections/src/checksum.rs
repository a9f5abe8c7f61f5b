//! Proof that a rebuild equals the live models: `opmas replay --check`
//! folds the event store, up to each agent's live checkpoint, into temporary
//! tables inside one repeatable-read transaction (the same snapshot as the
//! live rows it compares with) and compares checksums of whole rows.

use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::Error;
use crate::envelope::COLUMNS;
use crate::replay::build;
use crate::write::{EVENT_TABLES, Tables};

/// Row count and md5 of one table's rows (as text, sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checksum {
    pub table: String,
    pub rows: i64,
    pub md5: String,
}

/// Checksums of `tables`.
pub async fn checksums(conn: &mut PgConnection, tables: &Tables) -> Result<Vec<Checksum>, Error> {
    let mut out = Vec::with_capacity(EVENT_TABLES.len());
    for table in EVENT_TABLES {
        let row = sqlx::query(&format!(
            "select count(*) as n, md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) as md5 \
             from {} t",
            tables.name(table)
        ))
        .fetch_one(&mut *conn)
        .await?;
        out.push(Checksum {
            table: table.to_owned(),
            rows: row.try_get("n")?,
            md5: row.try_get("md5")?,
        });
    }
    Ok(out)
}

/// One table, live and rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    pub live: Checksum,
    pub rebuilt: Checksum,
}

impl Comparison {
    pub fn equal(&self) -> bool {
        self.live == self.rebuilt
    }
}

/// Rebuilds into temporary tables up to the live checkpoints and compares.
/// Changes nothing (the transaction is rolled back).
pub async fn check(conn: &mut PgConnection) -> Result<Vec<Comparison>, Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("set transaction isolation level repeatable read")
        .execute(&mut *tx)
        .await?;
    let scratch = Tables::suffixed("_check");
    for table in EVENT_TABLES {
        sqlx::query(&format!(
            "create temp table {} (like {table} including all) on commit drop",
            scratch.name(table)
        ))
        .execute(&mut *tx)
        .await?;
    }
    let source = format!(
        "select {COLUMNS} from events e join agent_status s on s.agent_id = e.aggregate_id \
         where e.aggregate_type = 'Agent' and e.sequence <= s.last_sequence \
         order by e.aggregate_id, e.sequence"
    );
    build(&mut tx, &scratch, &source, |_| {}).await?;
    let live = checksums(&mut tx, &Tables::live()).await?;
    let rebuilt = checksums(&mut tx, &scratch).await?;
    tx.rollback().await?;
    Ok(live
        .into_iter()
        .zip(rebuilt)
        .map(|(live, rebuilt)| Comparison { live, rebuilt })
        .collect())
}
