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

/// Many keys claimed and answered at once (on SQLite in shared batches):
/// each key replays its own answer, never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keys_keep_their_own_answers() {
    for backend in backends::all().await {
        let name = backend.name;
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = backend.store.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("key-{i}");
                assert_eq!(
                    store.begin(&key, "f", clock(0)).await.expect("begin"),
                    Begin::Started
                );
                let response = StoredResponse {
                    status: 200 + i,
                    content_type: (i % 2 == 0).then(|| "application/json".into()),
                    body: format!("answer {i}").into_bytes(),
                };
                store.complete(&key, &response).await.expect("complete");
                response
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let response = task.await.expect("task");
            assert_eq!(
                backend
                    .store
                    .begin(&format!("key-{i}"), "f", clock(1))
                    .await
                    .expect("begin"),
                Begin::Replay(response),
                "{name}"
            );
        }
    }
}
