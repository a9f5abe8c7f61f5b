//! Deletes the streams that tests and benchmarks left on the shared
//! nats-server (names like `OPMAS_EVENTS_<TAG>`; a test that panics does not
//! clean up). JetStream reserves each stream's size limit up front, so
//! leftovers can exhaust its storage. `scripts/test.sh` runs this before the
//! tests, as it drops leftover test databases; never while tests run.
//! With an argument, deletes only the test streams whose name contains it
//! (a script cleaning up its own streams).
#![allow(clippy::unwrap_used)]

use futures::StreamExt;

#[tokio::main]
async fn main() {
    let client = async_nats::connect(opmas_testkit::nats_url())
        .await
        .unwrap();
    let only = std::env::args().nth(1).map(|s| s.to_uppercase());
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        let isolated = ["OPMAS_EVENTS_", "OPMAS_METRICS_", "OPMAS_LOGS_"]
            .iter()
            .any(|p| name.starts_with(p));
        if isolated && only.as_ref().is_none_or(|o| name.contains(o.as_str())) {
            stale.push(name);
        }
    }
    for name in &stale {
        let _ = js.delete_stream(name).await;
    }
    println!(
        "sweep-test-streams: deleted {} leftover test streams",
        stale.len()
    );
}
