//! Background work of process-api. Each worker stops at the next boundary
//! between units of work when told to, so a shutdown never leaves a
//! transaction half done (every unit is one transaction anyway).

use std::time::Duration;

use tokio::sync::watch;

use crate::storage::Store;

/// A ticker that skips the ticks a slow pass missed.
fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Waits for the next tick; false once `stop` is set.
async fn tick(ticker: &mut tokio::time::Interval, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => false,
        _ = ticker.tick() => true,
    }
}

/// How often parked events are retried besides after master data changes.
pub const PARKED_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Retries parked events on a schedule (master data can also arrive by
/// another replica or straight in the database); on the same schedule,
/// drops expired idempotency keys and audit entries older than
/// `audit_retention`.
pub async fn parked_sweeper(
    store: Store,
    interval: Duration,
    audit_retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = ticker(interval);
    let retention = i64::try_from(audit_retention.as_micros()).unwrap_or(i64::MAX);
    while tick(&mut ticker, &mut stop).await {
        match store
            .prune_audit(store.now().saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "audit entries past retention deleted"),
            Err(error) => tracing::warn!(%error, "pruning the audit log failed"),
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
    let mut ticker = ticker(interval);
    while tick(&mut ticker, &mut stop).await {
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

/// The ERP schedules: master data pulled on start and every
/// `master_sync_interval_seconds`, reconciliation every
/// `interval_seconds` (a replica skips its turn when another one ran a
/// reconciliation within the last half interval).
pub async fn erp_schedules(state: crate::AppState, mut stop: watch::Receiver<bool>) {
    let master_every = state.reconciliation.master_sync_interval_seconds;
    let reconcile_every = state.reconciliation.interval_seconds;
    let now = tokio::time::Instant::now();
    let mut next_master = if state.reconciliation.master_sync_on_start {
        Some(now)
    } else {
        (master_every > 0).then(|| now + Duration::from_secs(master_every))
    };
    let mut next_reconcile =
        (reconcile_every > 0).then(|| now + Duration::from_secs(reconcile_every));
    loop {
        let next = [next_master, next_reconcile].into_iter().flatten().min();
        let Some(next) = next else {
            let _ = stop.wait_for(|stop| *stop).await;
            return;
        };
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let correlation = retail_shared::correlation::Correlation::new_root();
        let now = tokio::time::Instant::now();
        if next_master.is_some_and(|at| at <= now) {
            let ctx = crate::storage::master::ChangeContext {
                actor: "erp-master-sync".into(),
                request_id: correlation.request_id.clone(),
            };
            match crate::erp::master_sync::pull(&state.store, &state.erp, &ctx, &correlation).await
            {
                Ok(report) => {
                    tracing::info!(?report, "ERP master data pulled");
                    if report.products_changed > 0 || report.locations_added > 0 {
                        let _ = state.store.replay_parked().await;
                    }
                }
                Err(error) => tracing::warn!(%error, "pulling ERP master data failed"),
            }
            next_master = (master_every > 0).then(|| now + Duration::from_secs(master_every));
        }
        if next_reconcile.is_some_and(|at| at <= now) {
            next_reconcile = Some(now + Duration::from_secs(reconcile_every));
            let half = i64::try_from(reconcile_every).unwrap_or(i64::MAX / 2_000_000) * 500_000;
            let recent = state
                .store
                .reconciliation_runs(1)
                .await
                .ok()
                .and_then(|runs| runs.into_iter().next())
                .and_then(|run| {
                    time::OffsetDateTime::parse(
                        &run.started_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok()
                })
                .is_some_and(|started| {
                    let started = i64::try_from(started.unix_timestamp_nanos() / 1000).unwrap_or(0);
                    state.store.now() - started < half
                });
            if recent {
                continue;
            }
            let ctx = crate::storage::ledger::IngestContext {
                actor: "reconciliation".into(),
                request_id: correlation.request_id.clone(),
                trace_id: correlation.trace_id.clone(),
                span_id: Some(correlation.span_id.clone()),
            };
            match state.reconciler().run("schedule", &ctx, &correlation).await {
                Ok(report) => tracing::info!(
                    mismatches = report.run.mismatches,
                    compared = report.run.compared,
                    "reconciliation finished"
                ),
                Err(error) => tracing::warn!(%error, "reconciliation failed"),
            }
        }
    }
}

/// How often PostgreSQL table maintenance looks at the tables.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// PostgreSQL table maintenance (`storage::maintenance`): a pass every
/// `interval`; says once at start when the server's autovacuum is off.
pub async fn table_maintenance(
    store: Store,
    mode: retail_shared::config::TableMaintenance,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    match store.autovacuum_on().await {
        Ok(Some(false)) if mode != retail_shared::config::TableMaintenance::Off => {
            tracing::warn!(
                "PostgreSQL's autovacuum is off: process-api analyses and vacuums its own tables"
            );
        }
        Ok(None) => return,
        _ => {}
    }
    let mut ticker = ticker(interval);
    while tick(&mut ticker, &mut stop).await {
        match store.maintain_tables(mode).await {
            Ok(done) => {
                for (action, tables) in [("analyze", &done.analyzed), ("vacuum", &done.vacuumed)] {
                    for table in tables {
                        let labels = [("action", action.to_owned()), ("table", table.clone())];
                        metrics::counter!("pg_table_maintenance_total", &labels).increment(1);
                    }
                }
                if !done.analyzed.is_empty() {
                    tracing::debug!(?done, "table maintenance");
                }
            }
            Err(error) => tracing::warn!(%error, "PostgreSQL table maintenance failed"),
        }
    }
}

/// How often the backlog gauges are refreshed.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Refreshes the gauges of queues that live in the database (ERP outbox
/// by status and its oldest age, change feed backlog, parked events,
/// webhook dead letters): every replica reports the same shared figures.
pub async fn backlog_gauges(store: Store, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = ticker(interval);
    while tick(&mut ticker, &mut stop).await {
        if let Err(error) = refresh_gauges(&store).await {
            tracing::debug!(%error, "refreshing backlog gauges failed");
        }
    }
}

async fn refresh_gauges(store: &Store) -> Result<(), sqlx::Error> {
    let counts = store.posting_counts().await?;
    for (status, n) in [
        ("pending", counts.pending),
        ("in_flight", counts.in_flight),
        ("dead", counts.dead),
        ("posted", counts.posted),
        ("discarded", counts.discarded),
    ] {
        metrics::gauge!("erp_postings", "status" => status).set(n as f64);
    }
    metrics::gauge!("erp_postings_blocked_by_dead").set(counts.blocked_by_dead as f64);
    metrics::gauge!("erp_postings_oldest_pending_age_seconds")
        .set(counts.oldest_pending_age_seconds);
    let backlog = store.feed_backlog().await?;
    let now = store.now();
    metrics::gauge!("feed_backlog").set(backlog.rows as f64);
    metrics::gauge!("feed_backlog_oldest_age_seconds").set(
        backlog
            .oldest
            .map_or(0.0, |at| (now - at).max(0) as f64 / 1e6),
    );
    metrics::gauge!("feed_head").set(store.feed_head().await? as f64);
    metrics::gauge!("parked_events").set(store.parked_count().await? as f64);
    metrics::gauge!("webhook_dead_letters").set(store.webhook_dead_letter_count().await? as f64);
    Ok(())
}
