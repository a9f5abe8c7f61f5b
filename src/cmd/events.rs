//! `opmas events verify [--repair]`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use opmas_store::verify::{self, Report};
use opmas_store::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::{Global, Output, VerifyArgs};
use crate::println_out;

/// Compares store and stream; with `--repair`, re-publishes and checks again.
/// Exits 1 when differences remain.
pub async fn verify(global: &Global, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let pool = crate::infra::database(global).await?;
    let client = crate::infra::nats(global, false).await?;
    let js = async_nats::jetstream::new(client.clone());
    let settings = global.stream();
    let mut report = verify::verify(&pool, &js, &settings)
        .await
        .context("verifying the event log")?;
    if args.repair && !report.is_clean() {
        print(&report, args.output);
        let queued = verify::repair(&pool, &js, &settings, &report).await?;
        eprintln!("repair: {queued} events queued for re-publication; publishing...");
        drain(pool.clone(), client, global).await?;
        report = verify::verify(&pool, &js, &settings).await?;
    }
    print(&report, args.output);
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs a relay until the outbox is empty (another active relay may do the work).
async fn drain(
    pool: sqlx::PgPool,
    client: async_nats::Client,
    global: &Global,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let config = RelayConfig {
        stream: global.stream(),
        ..RelayConfig::default()
    };
    let relay = tokio::spawn(Relay::new(pool.clone(), client, config).run(cancel.clone()));
    let started = tokio::time::Instant::now();
    loop {
        let left = opmas_store::relay::backlog(&pool).await?;
        if left == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            cancel.cancel();
            anyhow::bail!("{left} events still in the outbox after 5 minutes: is NATS reachable?");
        }
        eprintln!("repair: {left} events left to publish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cancel.cancel();
    let _ = relay.await;
    Ok(())
}

fn print(report: &Report, output: Output) {
    if output == Output::Json {
        println_out(&serde_json::to_string_pretty(report).unwrap_or_default());
        return;
    }
    println_out(&format!(
        "agents: {}  events in store: {}  messages in stream: {}  pending in outbox: {}",
        report.agents, report.store_events, report.stream_messages, report.pending
    ));
    if report.is_clean() {
        println_out("ok: the stream holds every published event once, in per-agent order");
        return;
    }
    for d in &report.diffs {
        let mut parts = Vec::new();
        if !d.missing.is_empty() {
            parts.push(format!("missing {}", ranges(&d.missing)));
        }
        if !d.unexpected.is_empty() {
            parts.push(format!("not in store {}", ranges(&d.unexpected)));
        }
        if !d.duplicates.is_empty() {
            parts.push(format!("duplicated {}", ranges(&d.duplicates)));
        }
        if d.out_of_order {
            parts.push("out of order".into());
        }
        println_out(&format!("{}: {}", d.agent_id, parts.join("; ")));
    }
    println_out(&format!(
        "{} agents differ; run `opmas events verify --repair` to re-publish from the event store",
        report.diffs.len()
    ));
}

/// `1-3,7,9-10`
fn ranges(seqs: &[i64]) -> String {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}
