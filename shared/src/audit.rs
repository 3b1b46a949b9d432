//! Audit log of state-changing requests: who (client and end user), what
//! (method and path), when, the correlation ids and the outcome (status).
//!
//! The middleware hands each entry to a background writer over a bounded
//! channel, which writes them to the service's [`AuditSink`] in batches
//! (every 200 ms or 200 entries), so auditing never adds a database commit
//! to a request. Entries still queued when the process dies are lost; a
//! full queue drops entries and counts them (`audit_dropped_total`).
//! Operators read the log at `GET /v1/ops/audit`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::correlation::Correlation;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Monotonic id within the sink (the paging cursor); 0 before storing.
    pub id: i64,
    /// When the request finished (unix µs).
    #[serde(skip)]
    pub at_micros: i64,
    /// When the request finished (RFC 3339).
    pub at: String,
    /// The service that handled it.
    pub service: String,
    /// The end user (the token's `on_behalf_of`, else its `sub`).
    pub actor: String,
    /// The token's `sub` (a client or a calling service).
    pub client: String,
    /// HTTP method.
    pub method: String,
    /// The route template the request matched (`unmatched` for none).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// `X-Request-Id`.
    pub request_id: String,
    /// W3C trace id.
    pub trace_id: String,
}

/// Filters of `GET /v1/ops/audit`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this request id.
    pub request_id: Option<String>,
    /// Entries with an id above this (the previous page's last id).
    pub after: Option<i64>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Where audit entries are kept.
#[async_trait]
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Stores entries (ids are assigned by the sink).
    async fn record(&self, entries: &[AuditEntry]) -> anyhow::Result<()>;
    /// Reads entries in id order.
    async fn query(&self, query: &AuditQuery, limit: u32) -> anyhow::Result<Vec<AuditEntry>>;
}

/// A bounded in-memory sink (the newest `capacity` entries) for services
/// without a database.
#[derive(Debug)]
pub struct MemoryAudit {
    entries: Mutex<(i64, VecDeque<AuditEntry>)>,
    capacity: usize,
}

impl MemoryAudit {
    /// A sink keeping the newest `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new((0, VecDeque::with_capacity(capacity.min(1024)))),
            capacity,
        }
    }
}

#[async_trait]
impl AuditSink for MemoryAudit {
    async fn record(&self, entries: &[AuditEntry]) -> anyhow::Result<()> {
        let mut guard = self
            .entries
            .lock()
            .map_err(|_| anyhow::anyhow!("audit log poisoned"))?;
        for entry in entries {
            guard.0 += 1;
            let mut entry = entry.clone();
            entry.id = guard.0;
            if guard.1.len() == self.capacity {
                guard.1.pop_front();
            }
            guard.1.push_back(entry);
        }
        Ok(())
    }

    async fn query(&self, query: &AuditQuery, limit: u32) -> anyhow::Result<Vec<AuditEntry>> {
        let guard = self
            .entries
            .lock()
            .map_err(|_| anyhow::anyhow!("audit log poisoned"))?;
        Ok(guard
            .1
            .iter()
            .filter(|e| e.id > query.after.unwrap_or(0))
            .filter(|e| query.actor.as_ref().is_none_or(|a| &e.actor == a))
            .filter(|e| query.request_id.as_ref().is_none_or(|r| &e.request_id == r))
            .take(limit as usize)
            .cloned()
            .collect())
    }
}

/// The middleware's handle: the queue to the background writer.
#[derive(Debug, Clone)]
pub struct Auditor {
    service: &'static str,
    queue: mpsc::Sender<AuditEntry>,
}

impl Auditor {
    /// Starts the background writer for `sink` (call within a Tokio runtime).
    /// The writer drains the queue and ends when every `Auditor` is dropped;
    /// await the returned handle on shutdown so no entry is left unwritten.
    pub fn start(
        service: &'static str,
        sink: Arc<dyn AuditSink>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, mut receiver) = mpsc::channel::<AuditEntry>(10_000);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(200);
            loop {
                let first = receiver.recv().await;
                let Some(first) = first else { break };
                batch.push(first);
                let deadline = tokio::time::sleep(Duration::from_millis(200));
                tokio::pin!(deadline);
                while batch.len() < 200 {
                    tokio::select! {
                        next = receiver.recv() => match next {
                            Some(entry) => batch.push(entry),
                            None => break,
                        },
                        () = &mut deadline => break,
                    }
                }
                if let Err(error) = sink.record(&batch).await {
                    tracing::error!(%error, lost = batch.len(), "audit entries could not be written");
                    metrics::counter!("audit_dropped_total").increment(batch.len() as u64);
                }
                batch.clear();
            }
        });
        (Self { service, queue }, writer)
    }

    /// Waits (at most `limit`) for the writer to store what is queued; call
    /// after the last [`Auditor`] clone (the router's) is dropped.
    pub async fn drain(writer: tokio::task::JoinHandle<()>, limit: Duration) {
        if tokio::time::timeout(limit, writer).await.is_err() {
            tracing::warn!("audit writer did not finish in time; some entries may be lost");
        }
    }
}

/// Middleware: records every authenticated request that is not GET, HEAD
/// or OPTIONS, with the route template it matched (`/v1/reservations/{id}`,
/// or `unmatched`), never the raw path: an entry's size is bounded by the
/// code, not by the caller. Requests without a valid token are counted
/// (`audit_unauthenticated_total`), not recorded: an anonymous caller
/// leaves nothing lasting.
pub async fn audit(
    axum::extract::State(auditor): axum::extract::State<Auditor>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        metrics::counter!("audit_unauthenticated_total", "service" => auditor.service).increment(1);
        return next.run(request).await;
    };
    // Only the methods axum routes to a handler: anything else is `OTHER`.
    let method = match *request.method() {
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE => request.method().as_str(),
        _ => "OTHER",
    }
    .to_owned();
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", axum::extract::MatchedPath::as_str)
        .to_owned();
    let correlation = request.extensions().get::<Correlation>().cloned();
    let response = next.run(request).await;
    let now = time::OffsetDateTime::now_utc();
    let entry = AuditEntry {
        id: 0,
        at_micros: i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX),
        at: now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        service: auditor.service.to_owned(),
        actor: principal.actor().to_owned(),
        client: principal.subject,
        method,
        path,
        status: response.status().as_u16(),
        request_id: correlation
            .as_ref()
            .map(|c| c.request_id.clone())
            .unwrap_or_default(),
        trace_id: correlation.map(|c| c.trace_id).unwrap_or_default(),
    };
    if auditor.queue.try_send(entry).is_err() {
        metrics::counter!("audit_dropped_total").increment(1);
        tracing::warn!("audit queue full; an entry was dropped");
    }
    response
}
