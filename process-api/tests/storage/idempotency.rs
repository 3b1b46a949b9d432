//! The SQL Idempotency-Key store on every backend, including claims racing
//! from two replicas.

use retail_shared::idempotency::{Begin, Clock, IdempotencyStore, StoredResponse};

use crate::backends;

fn clock(now: i64) -> Clock {
    Clock {
        now,
        lease_until: now + 10,
        expires_at: now + 100,
    }
}

#[tokio::test]
async fn the_sql_store_follows_the_draft() {
    for backend in backends::all().await {
        let store = &backend.store;
        let name = backend.name;
        assert_eq!(
            store.begin("k", "f1", clock(0)).await.ok(),
            Some(Begin::Started),
            "{name}"
        );
        assert_eq!(
            store.begin("k", "f1", clock(1)).await.ok(),
            Some(Begin::InFlight)
        );
        assert_eq!(
            store.begin("k", "f2", clock(1)).await.ok(),
            Some(Begin::Mismatch)
        );
        let response = StoredResponse {
            status: 201,
            content_type: Some("application/json".into()),
            body: br#"{"ok":true}"#.to_vec(),
        };
        store.complete("k", &response).await.expect("complete");
        assert_eq!(
            store.begin("k", "f1", clock(2)).await.ok(),
            Some(Begin::Replay(response)),
            "{name}"
        );
        assert_eq!(
            store.begin("k", "f2", clock(500)).await.ok(),
            Some(Begin::Started)
        );
        store.abandon("k").await.expect("abandon");
        assert_eq!(
            store.begin("k", "f3", clock(501)).await.ok(),
            Some(Begin::Started)
        );
        assert_eq!(
            store.purge_idempotency_keys(10_000).await.expect("purge"),
            1
        );
    }
}

#[tokio::test]
async fn concurrent_claims_from_two_replicas_start_once() {
    for (a, b, _) in backends::replica_pairs().await {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                store.begin("race", "f", clock(0)).await.expect("begin")
            }));
        }
        let mut started = 0;
        for task in tasks {
            if task.await.expect("task") == Begin::Started {
                started += 1;
            }
        }
        assert_eq!(started, 1);
    }
}
