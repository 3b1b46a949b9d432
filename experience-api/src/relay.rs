//! The change feed at the edge.
//!
//! One task per replica follows process-api's change stream
//! (`GET /v1/inventory/changes/stream`), resuming with `Last-Event-ID`
//! after any interruption, and keeps the newest `[feed] relay_buffer`
//! changes in memory, in seq order. Channel streams read that buffer; a
//! client resuming from a point the buffer no longer holds is served from
//! process-api's feed pages first. Either way a client sees every change
//! after its `Last-Event-ID` once, in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use retail_shared::sse::SseParser;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

/// A change as the feed carries it (process-api's `Change`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedChange {
    /// Feed seq.
    pub seq: i64,
    /// Location.
    pub location_id: String,
    /// Sku.
    pub sku: String,
    /// Sellable units now.
    pub available: i64,
    /// Physical units.
    pub on_hand: i64,
    /// Held by reservations.
    pub reserved: i64,
    /// When the change was accepted (RFC 3339).
    pub changed_at: String,
    /// When the feed published it (RFC 3339).
    pub published_at: String,
}

/// A page of process-api's feed.
#[derive(Debug, Deserialize)]
pub struct FeedPage {
    /// Changes.
    pub changes: Vec<FeedChange>,
    /// Newest seq.
    pub head: i64,
    /// Oldest seq kept.
    pub tail: i64,
}

/// The buffered changes: complete for every seq above `covered_from`
/// (-1: not following yet).
#[derive(Debug)]
struct Buffer {
    changes: VecDeque<Arc<FeedChange>>,
    covered_from: i64,
}

/// The relay's state.
#[derive(Debug)]
pub struct Relay {
    buffer: RwLock<Buffer>,
    capacity: usize,
    head: watch::Sender<i64>,
    connected: AtomicBool,
    /// When process-api last said the relay had every change (a `head`
    /// event at or below the last change received).
    fresh_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Changes are also applied to the read model.
    model: Option<Arc<crate::read_model::ReadModel>>,
}

impl Relay {
    /// An empty relay keeping `capacity` changes.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_model(capacity, None)
    }

    /// A relay that also keeps `model` current.
    pub fn with_model(
        capacity: usize,
        model: Option<Arc<crate::read_model::ReadModel>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            buffer: RwLock::new(Buffer {
                changes: VecDeque::with_capacity(capacity.min(1 << 16)),
                covered_from: -1,
            }),
            capacity: capacity.max(1),
            head: watch::Sender::new(0),
            connected: AtomicBool::new(false),
            fresh_at: std::sync::Mutex::new(None),
            model,
        })
    }

    /// The newest seq received.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Wakes on every new head.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Whether the relay knows where it follows from (its buffer answers
    /// reads after that point).
    pub fn following(&self) -> bool {
        self.buffer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .covered_from
            >= 0
    }

    /// The seq after which the buffer holds every change (-1: not
    /// following yet).
    pub fn covered_from(&self) -> i64 {
        self.buffer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .covered_from
    }

    /// How long ago the relay was known to hold every change (`None`:
    /// never).
    pub fn staleness(&self) -> Option<Duration> {
        self.fresh_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|at| at.elapsed())
    }

    fn mark_fresh(&self) {
        *self
            .fresh_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
    }

    /// Whether the upstream stream is open.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Buffer> {
        self.buffer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts (or restarts, after a gap) following at `seq`.
    fn start_at(&self, seq: i64) {
        {
            let mut buffer = self.write();
            buffer.changes.clear();
            buffer.covered_from = seq;
        }
        // Whatever came before may have been missed.
        *self
            .fresh_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        if let Some(model) = &self.model {
            model.clear();
        }
        self.head.send_if_modified(|head| {
            let moved = *head != seq;
            *head = seq;
            moved
        });
    }

    /// Receives a change as if from the stream (unit tests).
    #[cfg(test)]
    pub(crate) fn push_for_test(&self, change: FeedChange) {
        self.push(change);
    }

    /// Starts following at `seq` (unit tests).
    #[cfg(test)]
    pub(crate) fn start_for_test(&self, seq: i64) {
        self.start_at(seq);
    }

    fn push(&self, change: FeedChange) {
        let seq = change.seq;
        let change = Arc::new(change);
        {
            let mut buffer = self.write();
            let last = buffer.changes.back().map_or(buffer.covered_from, |c| c.seq);
            if seq <= last {
                return; // a repeat after a reconnect
            }
            if buffer.changes.len() == self.capacity
                && let Some(evicted) = buffer.changes.pop_front()
            {
                buffer.covered_from = evicted.seq;
            }
            buffer.changes.push_back(change.clone());
        }
        // After the buffer's lock is released (the model, loading a sku,
        // reads the buffer under its own lock). A load that saw this change
        // in the buffer has it already; applying it again changes nothing.
        if let Some(model) = &self.model {
            model.apply(&change);
        }
        self.head.send_replace(seq);
    }

    /// The buffered changes after `after` that `keep` accepts (at most
    /// `limit`), and the seq scanned up to; `None` when the buffer does not
    /// reach back to `after` (read process-api's pages instead).
    pub fn read_after(
        &self,
        after: i64,
        limit: usize,
        keep: impl Fn(&FeedChange) -> bool,
    ) -> Option<(Vec<Arc<FeedChange>>, i64)> {
        let buffer = self
            .buffer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buffer.covered_from < 0 || after < buffer.covered_from {
            return None;
        }
        let start = buffer.changes.partition_point(|c| c.seq <= after);
        let mut out = Vec::new();
        let mut scanned = after;
        for change in buffer.changes.range(start..) {
            scanned = change.seq;
            if keep(change) {
                out.push(change.clone());
                if out.len() == limit {
                    break;
                }
            }
        }
        Some((out, scanned))
    }
}

/// Follows process-api's change stream until `stop`.
pub async fn follow(
    relay: Arc<Relay>,
    process: crate::process_client::ProcessClient,
    keep_alive: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let silence = keep_alive * 3;
    let mut delay = Duration::from_millis(100);
    let mut last: Option<i64> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if last.is_none() {
            // Start at the feed's head: the buffer holds what follows it.
            let correlation = retail_shared::correlation::Correlation::new_root();
            let ctx = retail_shared::client::CallContext {
                principal: None,
                correlation: &correlation,
            };
            match process.changes(i64::MAX - 1, &[], &[], ctx).await {
                Ok(page) => {
                    relay.start_at(page.head);
                    last = Some(page.head);
                }
                Err(error) => {
                    tracing::info!(%error, "cannot read the change feed's head; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let opened = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            opened = process.layer().open_stream(
                "/v1/inventory/changes/stream",
                &[],
                &["inventory:read"],
                last,
            ) => opened,
        };
        match opened {
            Ok(response) => {
                relay.connected.store(true, Ordering::Relaxed);
                delay = Duration::from_millis(100);
                let mut body = response.bytes_stream();
                let mut parser = SseParser::default();
                loop {
                    let chunk = tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        chunk = tokio::time::timeout(silence, body.next()) => chunk,
                    };
                    let bytes = match chunk {
                        Ok(Some(Ok(bytes))) => bytes,
                        Ok(Some(Err(error))) => {
                            tracing::info!(%error, "the change stream broke; resuming");
                            break;
                        }
                        Ok(None) => {
                            tracing::info!("process-api ended the change stream; resuming");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("the change stream went silent; reconnecting");
                            break;
                        }
                    };
                    for event in parser.feed(&bytes) {
                        match event.event.as_str() {
                            "change" => match serde_json::from_str::<FeedChange>(&event.data) {
                                Ok(change) => {
                                    record_propagation(&change);
                                    last = Some(change.seq);
                                    relay.push(change);
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "an unreadable change; skipped");
                                }
                            },
                            "head" => {
                                let head = serde_json::from_str::<serde_json::Value>(&event.data)
                                    .ok()
                                    .and_then(|v| v["head"].as_i64());
                                if head.is_some_and(|h| h <= relay.head()) {
                                    relay.mark_fresh();
                                }
                            }
                            "reset" => {
                                // The feed was pruned past our resume point
                                // (or never reached it): the stream goes on
                                // from the oldest kept change. Start over
                                // there: the buffer and the read model would
                                // span a gap.
                                tracing::warn!(
                                    "the change feed was pruned past the relay's position"
                                );
                                let from = serde_json::from_str::<serde_json::Value>(&event.data)
                                    .ok()
                                    .and_then(|v| v["resume_after"].as_i64());
                                match from {
                                    Some(from) => {
                                        relay.start_at(from);
                                        last = Some(from);
                                    }
                                    None => last = None,
                                }
                            }
                            _ => {}
                        }
                    }
                    if last.is_none() {
                        break;
                    }
                }
            }
            Err(error) => {
                tracing::info!(%error, "cannot open the change stream; retrying");
            }
        }
        relay.connected.store(false, Ordering::Relaxed);
        metrics::counter!("feed_relay_reconnects_total").increment(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn record_propagation(change: &FeedChange) {
    let Ok(at) = time::OffsetDateTime::parse(
        &change.changed_at,
        &time::format_description::well_known::Rfc3339,
    ) else {
        return;
    };
    let seconds = (time::OffsetDateTime::now_utc() - at)
        .as_seconds_f64()
        .max(0.0);
    metrics::histogram!("availability_propagation_duration_seconds", "stage" => "edge")
        .record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64, sku: &str) -> FeedChange {
        FeedChange {
            seq,
            location_id: "S001".into(),
            sku: sku.into(),
            available: 1,
            on_hand: 1,
            reserved: 0,
            changed_at: String::new(),
            published_at: String::new(),
        }
    }

    #[test]
    fn the_buffer_answers_only_what_it_covers() {
        let relay = Relay::new(3);
        assert!(
            relay.read_after(0, 10, |_| true).is_none(),
            "not following yet"
        );
        relay.start_at(0);
        for seq in 1..=5 {
            relay.push(change(seq, if seq % 2 == 0 { "A" } else { "B" }));
        }
        // Holds 3, 4, 5.
        assert!(relay.read_after(1, 10, |_| true).is_none());
        let (all, scanned) = relay.read_after(2, 10, |_| true).expect("covered");
        assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(scanned, 5);
        let (a, scanned) = relay.read_after(2, 10, |c| c.sku == "A").expect("covered");
        assert_eq!(a.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(scanned, 5);
        let (none, scanned) = relay.read_after(5, 10, |_| true).expect("covered");
        assert!(none.is_empty());
        assert_eq!(scanned, 5);
        // Repeats after a reconnect are dropped.
        relay.push(change(4, "A"));
        assert_eq!(relay.head(), 5);
    }
}
