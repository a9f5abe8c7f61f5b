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
    // Secrets are shown as `***`, as the API shows them: env values named in
    // `secret_env`, config fields the (latest) schema marks `x-secret`.
    let mut schema: Option<serde_json::Value> = None;
    let mut payloads = Vec::with_capacity(events.len());
    for e in &events {
        let mut value = serde_json::to_value(&e.event)?;
        if let Some(s) = value
            .pointer("/AgentRegistered/spec/config_schema")
            .or_else(|| value.pointer("/PackageUpdated/spec/config_schema"))
        {
            schema = Some(s.clone()).filter(|s| !s.is_null());
        }
        if let serde_json::Value::Object(map) = &mut value {
            for inner in map.values_mut() {
                opmas_api::routes::audit::redact_event(inner, schema.as_ref());
            }
        }
        payloads.push(value);
    }
    let as_of = as_of.map(|mut s| {
        if let Some(spec) = &mut s.agent.spec {
            *spec = spec.redacted();
        }
        if let Some(schema) = s
            .agent
            .spec
            .as_ref()
            .and_then(|sp| sp.config_schema.clone())
        {
            for config in &mut s.agent.configs {
                opmas_domain::spec::redact_secrets(&schema, config);
            }
        }
        s
    });
    if args.output == Output::Json {
        let events: Vec<serde_json::Value> = events
            .iter()
            .zip(&payloads)
            .map(|(e, p)| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["event"] = p.clone();
                v
            })
            .collect();
        let json = serde_json::json!({ "events": events, "as_of": as_of });
        println_out(&serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (e, payload) in events.iter().zip(&payloads) {
        let payload = serde_json::to_string(payload)?;
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
