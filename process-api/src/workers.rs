//! Background work of process-api. Each worker stops at the next boundary
//! between units of work when told to, so a shutdown never leaves a
//! transaction half done (every unit is one transaction anyway).

use std::time::Duration;

use tokio::sync::watch;

use crate::storage::Store;

/// How often parked events are retried besides after master data changes.
pub const PARKED_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Retries parked events on a schedule (master data can also arrive by
/// another replica or straight in the database).
pub async fn parked_sweeper(store: Store, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        match store.replay_parked().await {
            Ok(0) => {}
            Ok(applied) => tracing::info!(applied, "parked sweeper applied events"),
            Err(error) => tracing::warn!(%error, "parked sweeper failed; retrying later"),
        }
        if let Err(error) = store.purge_idempotency_keys(store.now()).await {
            tracing::warn!(%error, "purging expired idempotency keys failed");
        }
    }
}

/// Records the `expired` status of reservations past their expiry (they
/// stopped counting at `expires_at` already; this frees their rows and
/// notifies the change feed).
pub async fn reservation_sweeper(
    store: Store,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        match store.expire_due().await {
            Ok(0) => {}
            Ok(expired) => {
                metrics::counter!("reservations_expired_total").increment(expired as u64);
                tracing::debug!(expired, "reservations expired");
            }
            Err(error) => tracing::warn!(%error, "reservation sweeper failed; retrying later"),
        }
    }
}
