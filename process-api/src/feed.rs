//! The change feed's live side: the publisher worker, the replica's view
//! of the feed head (what SSE streams wait on), and the rolling figures
//! operators see (ingest rate, propagation latency).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::storage::Store;

/// Samples kept for the propagation percentiles.
const MAX_SAMPLES: usize = 20_000;
/// Window of the rolling figures.
const WINDOW: Duration = Duration::from_secs(60);
/// Shortest time between publishing runs.
const MIN_RUN_GAP: Duration = Duration::from_millis(25);
/// How often old feed entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Feed entries deleted per write when pruning (SQLite's writer is held
/// for one page at a time).
const PRUNE_PAGE: i64 = 20_000;

/// The replica's feed state, shared by the publisher, the ingest routes
/// and the SSE streams.
#[derive(Debug)]
pub struct FeedHub {
    head: watch::Sender<i64>,
    wake: Notify,
    stats: Mutex<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    /// (when published, propagation seconds).
    propagation: VecDeque<(Instant, f64)>,
    /// (when accepted, events applied).
    ingested: VecDeque<(Instant, u64)>,
}

/// Rolling figures of the last minute on this replica.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rolling {
    /// Events applied per second.
    pub events_per_second: f64,
    /// Events applied.
    pub events_last_minute: u64,
    /// Median propagation (ms), event accepted → published in the feed.
    pub propagation_p50_ms: Option<f64>,
    /// 99th percentile propagation (ms).
    pub propagation_p99_ms: Option<f64>,
}

impl Default for FeedHub {
    fn default() -> Self {
        Self {
            head: watch::Sender::new(0),
            wake: Notify::new(),
            stats: Mutex::default(),
        }
    }
}

impl FeedHub {
    /// Asks the publisher to run now (a write committed changes).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The newest seq this replica knows of.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Waits for the head to pass `seq` (returns at once if it has).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    fn advance(&self, seq: i64) {
        self.head.send_if_modified(|head| {
            if seq > *head {
                *head = seq;
                true
            } else {
                false
            }
        });
    }

    /// Counts applied events for the ingest rate.
    pub fn record_ingest(&self, applied: u64) {
        if applied == 0 {
            return;
        }
        let now = Instant::now();
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stats.ingested.push_back((now, applied));
        trim(&mut stats.ingested, now);
    }

    fn record_propagation(&self, seconds: &[f64]) {
        let now = Instant::now();
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &s in seconds {
            stats.propagation.push_back((now, s));
        }
        while stats.propagation.len() > MAX_SAMPLES {
            stats.propagation.pop_front();
        }
        trim(&mut stats.propagation, now);
    }

    /// The last minute's figures.
    pub fn rolling(&self) -> Rolling {
        let now = Instant::now();
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        trim(&mut stats.ingested, now);
        trim(&mut stats.propagation, now);
        let events: u64 = stats.ingested.iter().map(|(_, n)| n).sum();
        let span = stats
            .ingested
            .front()
            .map_or(WINDOW, |(first, _)| {
                now.duration_since(*first).max(Duration::from_secs(1))
            })
            .min(WINDOW);
        let mut samples: Vec<f64> = stats.propagation.iter().map(|(_, s)| *s * 1000.0).collect();
        samples.sort_by(f64::total_cmp);
        Rolling {
            events_per_second: events as f64 / span.as_secs_f64(),
            events_last_minute: events,
            propagation_p50_ms: percentile(&samples, 0.50),
            propagation_p99_ms: percentile(&samples, 0.99),
        }
    }
}

fn trim<T>(window: &mut VecDeque<(Instant, T)>, now: Instant) {
    while window
        .front()
        .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
    {
        window.pop_front();
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Middleware: after a successful write (any method but GET and HEAD),
/// wakes the publisher so the change reaches the feed without waiting for
/// its poll.
pub async fn wake_after_writes(
    axum::extract::State(hub): axum::extract::State<std::sync::Arc<FeedHub>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let write = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let response = next.run(request).await;
    if write && response.status().is_success() {
        hub.wake();
    }
    response
}

/// Publishes committed changes into the feed: at once when this replica's
/// writes wake it, else every `poll` (changes committed by other replicas).
/// Also prunes old entries.
pub async fn publisher(
    store: Store,
    hub: std::sync::Arc<FeedHub>,
    settings: retail_shared::config::FeedSettings,
    mut stop: watch::Receiver<bool>,
) {
    let poll = Duration::from_millis(settings.poll_interval_ms.max(1));
    let mut last_prune = Instant::now();
    if let Ok(head) = store.feed_head().await {
        hub.advance(head);
    }
    // When the last run that found work started.
    let mut last_busy_run: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = hub.wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
        // Under a stream of writes, runs at most every MIN_RUN_GAP so one
        // commit publishes several writes' changes (each commit is an
        // fsync the writers wait behind on SQLite).
        if let Some(since) = last_busy_run.map(|at| at.elapsed())
            && since < MIN_RUN_GAP
        {
            tokio::time::sleep(MIN_RUN_GAP - since).await;
        }
        let run_started = Instant::now();
        let mut published_any = false;
        loop {
            match store.publish_changes().await {
                Ok(published) => {
                    if let Some(last) = published.changes.last() {
                        published_any = true;
                        let now = store.now();
                        let seconds: Vec<f64> = published
                            .changes
                            .iter()
                            .map(|c| (now - c.changed_at_micros).max(0) as f64 / 1e6)
                            .collect();
                        let histogram = metrics::histogram!(
                            "availability_propagation_duration_seconds",
                            "stage" => "published"
                        );
                        for s in &seconds {
                            histogram.record(*s);
                        }
                        metrics::counter!("feed_changes_published_total")
                            .increment(published.changes.len() as u64);
                        hub.record_propagation(&seconds);
                        hub.advance(last.seq);
                    }
                    // A long backlog (seeding publishes a change per
                    // position) must not hold up shutdown.
                    if !published.more || *stop.borrow() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "publishing availability changes failed; retrying");
                    break;
                }
            }
        }
        last_busy_run = published_any.then_some(run_started);
        if !published_any {
            // Another replica may have published.
            if let Ok(head) = store.feed_head().await {
                hub.advance(head);
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            let now = store.now();
            let micros = |s: u64| i64::try_from(s).unwrap_or(i64::MAX / 2_000_000) * 1_000_000;
            match store
                .prune_feed(
                    now - micros(settings.retention_seconds),
                    now - micros(settings.max_retention_seconds),
                    PRUNE_PAGE,
                )
                .await
            {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "change feed pruned"),
                Err(error) => tracing::warn!(%error, "pruning the change feed failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), Some(50.0));
        assert_eq!(percentile(&samples, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn head_only_moves_forward() {
        let hub = FeedHub::default();
        hub.advance(5);
        hub.advance(3);
        assert_eq!(hub.head(), 5);
    }
}
