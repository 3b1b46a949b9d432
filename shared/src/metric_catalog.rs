//! Every metric the platform emits, with the help text `/metrics` shows
//! for it.
//!
//! One list for the three services: the all-in-one launcher runs them in
//! one process behind one recorder, and a name described twice keeps its
//! first text. A test reads the workspace's sources and fails when a
//! metric is emitted without an entry here.

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// A value that is set.
    Gauge,
    /// Observations in buckets (or a summary when no buckets are set).
    Histogram,
}

/// Name, kind and help text of every metric.
pub const METRICS: &[(&str, Kind, &str)] = &[
    // HTTP, every service.
    (
        "http_requests_total",
        Kind::Counter,
        "Requests answered, by service, method (OTHER for non-standard methods), \
         route template (unmatched when no route matched) and status.",
    ),
    (
        "http_request_duration_seconds",
        Kind::Histogram,
        "Time from receiving a request to its response head, by service, method, \
         route template and status.",
    ),
    (
        "build_info",
        Kind::Gauge,
        "Always 1; labels name the service and the build version.",
    ),
    // Governance layers, every service.
    (
        "jwks_fetch_failures_total",
        Kind::Counter,
        "Failed fetches of the JSON Web Key Set.",
    ),
    (
        "client_retries_total",
        Kind::Counter,
        "Retried calls to another layer, by the layer called.",
    ),
    (
        "rate_limit_redis_fallback_total",
        Kind::Counter,
        "Rate-limit decisions taken in process because Redis did not answer.",
    ),
    (
        "rate_limited_total",
        Kind::Counter,
        "Requests refused with 429, by route class (unauthenticated: the \
         per-address budget before verification).",
    ),
    (
        "audit_unauthenticated_total",
        Kind::Counter,
        "State-changing requests without a valid token: counted, not audited, by service.",
    ),
    (
        "idempotency_completions_failed_total",
        Kind::Counter,
        "Answers of keyed requests that could not be stored after every retry, by service.",
    ),
    (
        "ledger_event_id_conflicts_total",
        Kind::Counter,
        "Events rejected because their event_id is taken by an event that means \
         something else (event-id-conflict).",
    ),
    (
        "sse_streams_expired_total",
        Kind::Counter,
        "Event streams closed because the caller's token expired.",
    ),
    (
        "sse_streams_refused_total",
        Kind::Counter,
        "Event streams refused with 429: the client already held its cap of streams.",
    ),
    (
        "audit_dropped_total",
        Kind::Counter,
        "Audit entries lost because the audit queue was full or the sink failed.",
    ),
    (
        "idempotency_keys_total",
        Kind::Counter,
        "Requests carrying an Idempotency-Key, by service and outcome.",
    ),
    (
        "idempotency_redis_fallback_total",
        Kind::Counter,
        "Idempotency records kept in process memory because Redis did not answer.",
    ),
    // system-api.
    (
        "pos_transactions_total",
        Kind::Counter,
        "POS transactions received as JSON.",
    ),
    (
        "pos_poslog_documents_total",
        Kind::Counter,
        "POSLog XML documents received.",
    ),
    (
        "pos_batch_rows_total",
        Kind::Counter,
        "Rows of POS CSV batches read.",
    ),
    (
        "wms_documents_total",
        Kind::Counter,
        "WMS documents received, by kind.",
    ),
    (
        "erp_adapter_postings_total",
        Kind::Counter,
        "Postings handed to the ERP backend, by backend and result.",
    ),
    (
        "erp_call_duration_seconds",
        Kind::Histogram,
        "Duration of calls to the ERP backend, by backend, operation and outcome.",
    ),
    // process-api.
    (
        "inventory_events_total",
        Kind::Counter,
        "Inventory events received, by type, source and result.",
    ),
    (
        "reservations_total",
        Kind::Counter,
        "Reservation requests, by result.",
    ),
    (
        "reservation_closures_total",
        Kind::Counter,
        "Reservations committed or released, by action and result.",
    ),
    (
        "reservations_expired_total",
        Kind::Counter,
        "Reservations released by the expiry worker.",
    ),
    (
        "transfers_total",
        Kind::Counter,
        "Transfer steps taken, by step.",
    ),
    (
        "transfer_exceptions_total",
        Kind::Counter,
        "Discrepancies recorded when transfers were received.",
    ),
    (
        "returns_total",
        Kind::Counter,
        "Customer returns, by result.",
    ),
    (
        "promises_total",
        Kind::Counter,
        "Promise requests, by fulfilment method and whether any node can serve.",
    ),
    (
        "erp_postings_total",
        Kind::Counter,
        "ERP postings delivered, by outcome.",
    ),
    (
        "erp_postings",
        Kind::Gauge,
        "ERP postings in the outbox, by status.",
    ),
    (
        "erp_postings_blocked_by_dead",
        Kind::Gauge,
        "Pending ERP postings held back by a dead posting of the same key.",
    ),
    (
        "erp_postings_oldest_pending_age_seconds",
        Kind::Gauge,
        "Age of the oldest pending ERP posting.",
    ),
    (
        "erp_dead_letters_resolved_total",
        Kind::Counter,
        "Dead ERP postings resolved by an operator, by action.",
    ),
    (
        "reconciliation_runs_total",
        Kind::Counter,
        "ERP reconciliation runs, by final status.",
    ),
    (
        "reconciliation_mismatches_total",
        Kind::Counter,
        "Quantity mismatches found by ERP reconciliation.",
    ),
    (
        "feed_changes_published_total",
        Kind::Counter,
        "Availability changes published on the change feed.",
    ),
    (
        "feed_streams_opened_total",
        Kind::Counter,
        "Change-feed streams opened.",
    ),
    (
        "feed_backlog",
        Kind::Gauge,
        "Changes waiting to be published on the feed.",
    ),
    (
        "feed_backlog_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest change waiting to be published.",
    ),
    (
        "feed_head",
        Kind::Gauge,
        "Sequence number of the newest published change.",
    ),
    (
        "parked_events",
        Kind::Gauge,
        "Events parked until their master data arrives.",
    ),
    (
        "webhook_deliveries_total",
        Kind::Counter,
        "Webhook delivery attempts, by outcome.",
    ),
    (
        "webhook_changes_delivered_total",
        Kind::Counter,
        "Changes delivered by webhooks.",
    ),
    (
        "webhook_delivery_duration_seconds",
        Kind::Histogram,
        "Duration of webhook delivery attempts.",
    ),
    (
        "webhook_dead_letters",
        Kind::Gauge,
        "Webhook deliveries given up and awaiting an operator.",
    ),
    (
        "webhook_dead_letters_resolved_total",
        Kind::Counter,
        "Dead webhook deliveries resolved by an operator, by action.",
    ),
    (
        "availability_propagation_duration_seconds",
        Kind::Histogram,
        "Time from a stock change to its publication (stage published) or its arrival \
         at experience-api (stage edge).",
    ),
    (
        "sqlite_group_commit_writes",
        Kind::Histogram,
        "Writes per grouped SQLite transaction.",
    ),
    (
        "sqlite_group_commit_sync_seconds",
        Kind::Histogram,
        "Duration of a grouped SQLite transaction's commit.",
    ),
    (
        "sqlite_group_commit_duration_seconds",
        Kind::Histogram,
        "Duration of a grouped SQLite transaction, writes and commit.",
    ),
    (
        "sqlite_page_cache_truncations_total",
        Kind::Counter,
        "WAL truncations seen by the page cache, by outcome.",
    ),
    (
        "pg_table_maintenance_total",
        Kind::Counter,
        "PostgreSQL tables analyzed or vacuumed by the maintenance worker, by action and table.",
    ),
    // experience-api.
    (
        "read_model_reads_total",
        Kind::Counter,
        "Availability reads, by where they were answered from (hit, shared, miss).",
    ),
    (
        "read_model_shared_epochs_total",
        Kind::Counter,
        "Epochs of the shared read model opened by this replica.",
    ),
    (
        "availability_fast_reads_total",
        Kind::Counter,
        "Availability reads answered ahead of the middleware stack.",
    ),
    (
        "availability_streams_opened_total",
        Kind::Counter,
        "Availability change streams opened.",
    ),
    (
        "feed_relay_reconnects_total",
        Kind::Counter,
        "Reconnections of the relay to process-api's change feed.",
    ),
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe_all() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    rust_files(&path, found);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// The names given to `counter!`, `gauge!` and `histogram!` in `text`.
    fn emitted(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = text[at + macro_name.len()..].trim_start();
                if let Some(quoted) = rest.strip_prefix('"')
                    && let Some(end) = quoted.find('"')
                    && !quoted[..end].is_empty()
                    && quoted[..end]
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    names.push(quoted[..end].to_owned());
                }
            }
        }
        names
    }

    #[test]
    fn every_emitted_metric_has_help_text() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let mut files = Vec::new();
        rust_files(workspace, &mut files);
        let described: BTreeSet<&str> = METRICS.iter().map(|m| m.0).collect();
        let mut missing = BTreeSet::new();
        let mut seen = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for name in emitted(&text) {
                seen += 1;
                if !described.contains(name.as_str()) {
                    missing.insert(name);
                }
            }
        }
        assert!(seen > 40, "the scan found the workspace's metrics ({seen})");
        assert!(missing.is_empty(), "metrics without help text: {missing:?}");
    }

    #[test]
    fn each_metric_is_described_once() {
        let names: BTreeSet<&str> = METRICS.iter().map(|m| m.0).collect();
        assert_eq!(names.len(), METRICS.len());
    }
}
