//! `opmas audit <agent> [--since] [--until] [--as-of]`: an agent's events
//! with actor and reason, and optionally its state at an instant.

use std::process::ExitCode;

use anyhow::Context;
use opmas_projections::audit;

use crate::cli::{AuditArgs, Global, Output};
use crate::println_out;

/// Prints the audit trail (and the state as of `--as-of`).
pub async fn run(global: &Global, args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let pool = crate::infra::database(global).await?;
    let events = audit::events(&pool, &args.agent, args.since, args.until)
        .await
        .context("reading the event store")?;
    let as_of = match args.as_of {
        Some(at) => Some(audit::state_as_of(&pool, &args.agent, at).await?),
        None => None,
    };
    if args.output == Output::Json {
        let json = serde_json::json!({ "events": events, "as_of": as_of });
        println_out(&serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &events {
        let payload = serde_json::to_string(&e.event)?;
        println_out(&format!(
            "{:>6}  {}  {:<22} actor={} reason={}  {}",
            e.sequence,
            e.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            e.event.name(),
            e.actor(),
            e.reason().unwrap_or("-"),
            payload
        ));
    }
    println_out(&format!("{} events", events.len()));
    if let Some(s) = as_of {
        println_out(&format!(
            "state as of {}: sequence {}, {}",
            args.as_of.map(|t| t.to_rfc3339()).unwrap_or_default(),
            s.sequence,
            serde_json::to_string(&s.agent)?
        ));
    }
    Ok(ExitCode::SUCCESS)
}
