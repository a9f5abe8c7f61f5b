//! `opmas migrate`: apply database migrations.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::Global;

/// Applies pending migrations and says how many are applied in total.
pub async fn run(global: &Global) -> anyhow::Result<ExitCode> {
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&pool)
        .await?;
    crate::println_out(&format!(
        "migrations applied: {applied} of {}",
        opmas_store::db::MIGRATOR.iter().count()
    ));
    Ok(ExitCode::SUCCESS)
}
