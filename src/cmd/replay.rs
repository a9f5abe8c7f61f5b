//! `opmas replay [--projection NAME] [--check]`: rebuild the event-sourced
//! read models from the event store and swap them in atomically, or prove
//! that a rebuild equals the live models.

use std::process::ExitCode;

use anyhow::Context;
use opmas_projections::checksum;
use opmas_projections::replay::{self, PROJECTIONS, Progress};

use crate::cli::{Global, Output, ReplayArgs};
use crate::println_out;

/// Runs the replay or the check.
pub async fn run(global: &Global, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    if !PROJECTIONS.contains(&args.projection.as_str()) {
        anyhow::bail!(
            "unknown projection `{}`: use one of {PROJECTIONS:?} (telemetry models are \
             not event-sourced and cannot be replayed)",
            args.projection
        );
    }
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool).await?;
    let mut conn = pool.acquire().await?;
    if args.check {
        return check(&mut conn, args.output).await;
    }
    let events = replay::replay(&mut conn, report)
        .await
        .context("replaying the event store")?;
    println_out(&format!("replayed {events} events; read models swapped in"));
    Ok(ExitCode::SUCCESS)
}

fn report(p: Progress) {
    eprintln!(
        "replay: {}/{} events, {:.0} events/s, eta {}",
        p.events,
        p.total,
        p.rate(),
        humantime::format_duration(std::time::Duration::from_secs(p.eta().as_secs())),
    );
}

async fn check(conn: &mut sqlx::PgConnection, output: Output) -> anyhow::Result<ExitCode> {
    let comparisons = checksum::check(conn)
        .await
        .context("rebuilding into temporary tables")?;
    let equal = comparisons.iter().all(checksum::Comparison::equal);
    if output == Output::Json {
        println_out(&serde_json::to_string_pretty(&comparisons)?);
    } else {
        for c in &comparisons {
            println_out(&format!(
                "{:<26} live {:>9} rows {}  rebuilt {:>9} rows {}  {}",
                c.live.table,
                c.live.rows,
                c.live.md5,
                c.rebuilt.rows,
                c.rebuilt.md5,
                if c.equal() { "ok" } else { "DIFFERENT" }
            ));
        }
    }
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
