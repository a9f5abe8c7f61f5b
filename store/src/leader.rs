//! One active worker per role and database: a session advisory lock, held
//! on a connection of the worker's own (not a pooled one), so it goes with
//! the worker however the worker ends. Used by the relay and by each
//! projection consumer; the others wait and take over.

use std::time::Duration;

use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

/// Waits until this session holds the advisory lock named `key`, trying
/// every `retry`; `busy(n)` is called after the n-th refusal. Returns
/// false if `cancel` came first.
pub async fn acquire(
    conn: &mut PgConnection,
    key: &str,
    retry: Duration,
    cancel: &CancellationToken,
    mut busy: impl FnMut(u32),
) -> Result<bool, sqlx::Error> {
    let mut refusals = 0;
    loop {
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            return Ok(true);
        }
        refusals += 1;
        busy(refusals);
        tokio::select! {
            () = cancel.cancelled() => return Ok(false),
            () = tokio::time::sleep(retry) => {}
        }
    }
}
