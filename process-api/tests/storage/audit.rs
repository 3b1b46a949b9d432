//! The audit log's retention.

use retail_shared::audit::{AuditEntry, AuditQuery, AuditSink};

use crate::backends;

fn entry(at_micros: i64, request_id: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        at_micros,
        at: String::new(),
        service: "process-api".into(),
        actor: "ops".into(),
        client: "ops".into(),
        method: "POST".into(),
        path: "/v1/inventory/events".into(),
        status: 200,
        request_id: request_id.into(),
        trace_id: "t".into(),
    }
}

#[tokio::test]
async fn entries_past_retention_are_pruned_and_newer_ones_kept() {
    for backend in backends::all().await {
        let store = &backend.store;
        store
            .record(&[
                entry(1_000, "old-1"),
                entry(2_000, "old-2"),
                entry(5_000, "new-1"),
            ])
            .await
            .expect("record");
        store
            .record(&[entry(6_000, "new-2")])
            .await
            .expect("record");
        assert_eq!(
            store.prune_audit(3_000).await.expect("prune"),
            2,
            "{}",
            backend.name
        );
        let left: Vec<String> = store
            .query(&AuditQuery::default(), 100)
            .await
            .expect("query")
            .into_iter()
            .map(|e| e.request_id)
            .collect();
        assert_eq!(left, ["new-1", "new-2"], "{}", backend.name);
        // Everything old: all of it goes; nothing left: nothing to do.
        assert_eq!(store.prune_audit(10_000).await.expect("prune"), 2);
        assert_eq!(store.prune_audit(10_000).await.expect("prune"), 0);
    }
}
