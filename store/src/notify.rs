//! [`OutboxNotifier`]: wakes relays after commits, outside the commit.
//!
//! A transaction that runs `NOTIFY` takes a database-wide lock while it
//! commits, so notifying from the outbox trigger serialised every command's
//! commit (it halved throughput, docs/benchmarks.md). Instead a writer pokes
//! this notifier after its commit; a relay in the same process is woken
//! directly, and relays in other processes through one coalesced
//! `pg_notify` at a time from this task. The relay's periodic sweep covers
//! writers that poke nobody.

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The channel relays `LISTEN` on.
pub const CHANNEL: &str = "opmas_outbox";

/// Cheap-to-clone handle: [`OutboxNotifier::poke`] after a commit.
#[derive(Clone, Debug)]
pub struct OutboxNotifier {
    tx: watch::Sender<u64>,
}

impl OutboxNotifier {
    /// Starts the task forwarding pokes to `pg_notify` (until `cancel`).
    pub fn spawn(pool: PgPool, cancel: CancellationToken) -> Self {
        let (tx, mut rx) = watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
                rx.mark_unchanged();
                if let Err(err) = sqlx::query("select pg_notify($1, '')")
                    .bind(CHANNEL)
                    .execute(&pool)
                    .await
                {
                    debug!(error = %err, "outbox notify failed; relays will sweep");
                }
            }
        });
        Self { tx }
    }

    /// Says that new outbox rows are committed.
    pub fn poke(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes on every poke (for an in-process relay).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
