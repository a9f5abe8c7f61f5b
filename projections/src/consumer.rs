//! The loop shared by every projector: a durable JetStream pull consumer
//! whose ready messages are written as one batch, in one transaction that
//! also stores the consumer's checkpoint and lag; the batch is acked only
//! after that commit, by one ack of its last message (`AckPolicy::All`). A
//! failed batch is retried as is (never skipped), so a checkpoint never
//! passes an unwritten message; a durable holding messages delivered but
//! not written (a run killed mid-batch, a delivery lost) is replaced by one
//! starting after the checkpoint, so no ack ever covers them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;

/// Writes one batch of messages inside the consumer's transaction.
pub trait Sink: Send + Sync {
    /// `after` is the stream sequence already written (telemetry sinks skip
    /// messages at or below it; the events sink checkpoints per agent).
    fn write(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
        after: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Lag of one consumer, as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsumerLag {
    pub stream: String,
    /// Stream sequence of the last message written.
    pub stream_sequence: u64,
    /// Messages in the stream not yet delivered to the consumer.
    pub pending: u64,
    /// Messages written since this process started.
    pub processed: u64,
}

/// Lag of every consumer of a projector; cheap to clone (for the API's
/// metrics endpoint). Also stored in `projection_consumers`.
#[derive(Debug, Clone, Default)]
pub struct Lag(Arc<Mutex<BTreeMap<String, ConsumerLag>>>);

impl Lag {
    /// Consumer name → lag.
    pub fn snapshot(&self) -> BTreeMap<String, ConsumerLag> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, name: &str, stream: &str, sequence: u64, pending: u64, n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let lag = map.entry(name.to_owned()).or_default();
        lag.stream = stream.to_owned();
        lag.stream_sequence = sequence;
        lag.pending = pending;
        lag.processed += n;
    }
}

/// One durable consumer and where it writes.
pub struct Consumer<S> {
    pub pool: PgPool,
    pub js: jetstream::Context,
    /// Durable consumer name, also its row in `projection_consumers`.
    pub name: String,
    pub stream: String,
    /// Most messages per transaction.
    pub batch: usize,
    /// Redelivery delay of unacked messages.
    pub ack_wait: Duration,
    pub retry_delay: Duration,
    pub lag: Lag,
    pub sink: S,
}

/// How often a running consumer checks that it still holds its lock.
const LOCK_CHECK: Duration = Duration::from_secs(5);

const CHECKPOINT: &str = "
insert into projection_consumers (name, stream) values ($1, $2)
on conflict (name) do update set stream = excluded.stream
returning stream_sequence";

const SAVE: &str = "
update projection_consumers
set stream_sequence = greatest(stream_sequence, $2), pending = $3,
    processed = processed + $4, updated_at = now()
where name = $1";

impl<S: Sink> Consumer<S> {
    /// Consumes until `cancel`; reconnects after NATS errors.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        while !cancel.is_cancelled() {
            if let Err(err) = self.consume(&cancel).await {
                warn!(consumer = %self.name, error = %err, "consumer failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(self.retry_delay) => {}
                }
            }
        }
        Ok(())
    }

    async fn consume(&self, cancel: &CancellationToken) -> Result<(), Error> {
        // One active run per durable (a second projector stands by): one
        // ack covers every earlier message, so two runs sharing a durable
        // would ack each other's unwritten messages. The lock is a session
        // advisory lock on a connection of its own: it goes when this run
        // does, however it ends.
        let Some(mut lock) = self.lead(cancel).await? else {
            return Ok(());
        };
        let result = self.follow(&mut lock, cancel).await;
        let _ = lock.close().await;
        result
    }

    /// Waits for the consumer's advisory lock; `None` if cancelled first.
    async fn lead(&self, cancel: &CancellationToken) -> Result<Option<PgConnection>, Error> {
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let key = format!("opmas_projection:{}", self.name);
        let mut waited = false;
        let busy = |refusals| {
            if refusals == 1 {
                info!(consumer = %self.name, "another projector is active; standing by");
            }
            waited = true;
        };
        if !opmas_store::leader::acquire(&mut conn, &key, self.retry_delay, cancel, busy).await? {
            return Ok(None);
        }
        if waited {
            info!(consumer = %self.name, "projector active (the other one stopped)");
        }
        Ok(Some(conn))
    }

    /// Consumes while `lock` (the advisory lock's connection) is alive.
    async fn follow(
        &self,
        lock: &mut PgConnection,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(Error::nats)?;
        let mut config = pull::Config {
            durable_name: Some(self.name.clone()),
            // One ack per batch: acking its last message acks the batch.
            ack_policy: AckPolicy::All,
            ack_wait: self.ack_wait,
            max_ack_pending: i64::try_from(self.batch.saturating_mul(4)).unwrap_or(i64::MAX),
            ..Default::default()
        };
        // Acking a message acks every earlier one (`AckPolicy::All`), so the
        // durable must never hold a message that was delivered but not
        // written: a later ack would drop it. That happens when a run dies
        // with batches in flight, or when the durable comes from an earlier
        // version that acked each message (NATS cannot change a consumer's
        // ack policy). Then the durable is replaced by one that starts after
        // the checkpoint in Postgres, which is written in the same
        // transaction as the models (a recreated stream that no longer
        // reaches the checkpoint is read whole).
        let mut expected = 1;
        if let Ok(info) = stream.consumer_info(&self.name).await {
            let checkpoint: i64 = sqlx::query_scalar(CHECKPOINT)
                .bind(&self.name)
                .bind(&self.stream)
                .fetch_one(&self.pool)
                .await?;
            let done = u64::try_from(checkpoint).unwrap_or(0);
            let stale =
                info.config.ack_policy != AckPolicy::All || info.delivered.stream_sequence > done;
            if stale {
                let last = stream
                    .get_info()
                    .await
                    .map_err(Error::nats)?
                    .state
                    .last_sequence;
                if done > 0 && done <= last {
                    config.deliver_policy = DeliverPolicy::ByStartSequence {
                        start_sequence: done + 1,
                    };
                }
                info!(
                    consumer = %self.name,
                    checkpoint,
                    delivered = info.delivered.stream_sequence,
                    "replacing the durable consumer: it is ahead of the checkpoint or acks each message"
                );
                stream
                    .delete_consumer(&self.name)
                    .await
                    .map_err(Error::nats)?;
            } else {
                expected = info.delivered.consumer_sequence + 1;
            }
        }
        let consumer = stream
            .get_or_create_consumer(&self.name, config)
            .await
            .map_err(Error::nats)?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(Error::nats)?
            .ready_chunks(self.batch);
        let mut check = tokio::time::interval(LOCK_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = check.tick() => {
                    // A lost connection is a lost lock: stop, and queue for
                    // it again behind any projector that took it meanwhile.
                    lock.ping().await?;
                    continue;
                }
                chunk = messages.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(Error::Nats("message stream ended".into()));
            };
            let mut batch = Vec::with_capacity(chunk.len());
            let mut gap = None;
            for item in chunk {
                match item {
                    Ok(msg) => {
                        // Deliveries (redeliveries too) are numbered without
                        // holes; a hole is a message this run never got, and
                        // an ack past it would drop it.
                        let delivery = msg.info().map(|i| i.consumer_sequence).unwrap_or(0);
                        if delivery > expected {
                            gap = Some((expected, delivery));
                            break;
                        }
                        expected = expected.max(delivery + 1);
                        batch.push(msg);
                    }
                    Err(err) => debug!(consumer = %self.name, error = %err, "pull status"),
                }
            }
            if let Some(last) = batch.last() {
                if !self.write_until_done(&batch, cancel).await {
                    return Ok(()); // cancelled: unacked, replaced at the next run
                }
                if let Err(err) = last.ack().await {
                    warn!(consumer = %self.name, error = %err, "ack failed (will be redelivered)");
                }
            }
            if let Some((expected, got)) = gap {
                // Start over from the checkpoint (the durable is replaced).
                return Err(Error::Nats(format!(
                    "delivery {got} arrived where {expected} was due: a message was lost"
                )));
            }
        }
    }

    /// Retries the batch until it is written (true), or cancelled (false:
    /// then it is not acked and will be redelivered).
    async fn write_until_done(&self, batch: &[Message], cancel: &CancellationToken) -> bool {
        loop {
            match self.write(batch).await {
                Ok(()) => return true,
                Err(err) => warn!(consumer = %self.name, error = %err, "batch failed; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(self.retry_delay) => {}
            }
        }
    }

    async fn write(&self, batch: &[Message]) -> Result<(), Error> {
        let (mut sequence, mut pending) = (0, 0);
        for msg in batch {
            if let Ok(info) = msg.info() {
                sequence = sequence.max(info.stream_sequence);
                pending = info.pending;
            }
        }
        let mut tx = self.pool.begin().await?;
        let after: i64 = sqlx::query_scalar(CHECKPOINT)
            .bind(&self.name)
            .bind(&self.stream)
            .fetch_one(&mut *tx)
            .await?;
        self.sink
            .write(&mut tx, batch, u64::try_from(after).unwrap_or(0))
            .await?;
        let n = batch.len() as u64;
        sqlx::query(SAVE)
            .bind(&self.name)
            .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
            .bind(i64::try_from(pending).unwrap_or(i64::MAX))
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.lag
            .record(&self.name, &self.stream, sequence, pending, n);
        Ok(())
    }
}

/// The stream sequence of a message (0 if it carries no JetStream info).
pub fn stream_sequence(msg: &Message) -> u64 {
    msg.info().map(|i| i.stream_sequence).unwrap_or(0)
}
