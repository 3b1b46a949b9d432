//! `Idempotency-Key`s of ingest requests, claimed and answered in the
//! transaction that journals the events, on every backend: a retry long
//! past the in-flight lease is answered with the first answer and journals
//! nothing; a key reused for other events journals nothing; on SQLite,
//! keyed requests sharing a group commit are each decided as if alone.

use std::sync::Arc;

use process_api::inventory::event::EventInput;
use process_api::storage::idempotency::Keyed;
use process_api::storage::ingest_keys::IngestRender;
use process_api::storage::ledger::{EventResult, EventStatus};
use retail_shared::idempotency::{Begin, StoredResponse};

use crate::backends;
use crate::keyed::claim;
use crate::reservations::{ctx, figures_full, seed};

/// The answer kept: each event's id and status.
fn render() -> IngestRender {
    Arc::new(|results: &[EventResult]| StoredResponse {
        status: 200,
        content_type: None,
        body: results
            .iter()
            .map(|r| format!("{}={:?};", r.event_id, r.status))
            .collect::<String>()
            .into_bytes(),
    })
}

fn receipt(id: &str, quantity: i64) -> EventInput {
    EventInput {
        event_id: id.into(),
        r#type: "receipt".into(),
        location_id: "A".into(),
        sku: "X".into(),
        quantity,
        occurred_at: "2026-11-20T08:00:00Z".into(),
        source: "test".into(),
        reference: None,
        reason: None,
        counterparty_location_id: None,
        disposition: None,
    }
}

#[tokio::test]
async fn a_keyed_ingest_keeps_its_first_answer_with_the_events() {
    for t in backends::all().await {
        let (name, store) = (t.name, &t.store);
        seed(store, &["A"], &["X"], 0).await;
        let events = [receipt("e-1", 4), receipt("e-2", 3)];
        let first = store
            .ingest_keyed(&events, &ctx(), Some((&claim("pos|k-1", "fp-1"), render())))
            .await
            .expect("ingest");
        let Keyed::Decided((results, _), Some(stored)) = first else {
            panic!("{name}: a new key journals and keeps its answer: {first:?}");
        };
        assert!(
            results.iter().all(|r| r.status == EventStatus::Applied),
            "{name}"
        );
        assert_eq!(stored.body, b"e-1=Applied;e-2=Applied;", "{name}");

        // The retry: the first answer (not `duplicate`), nothing journalled.
        match store
            .ingest_keyed(&events, &ctx(), Some((&claim("pos|k-1", "fp-1"), render())))
            .await
            .expect("retry")
        {
            Keyed::Key(Begin::Replay(again)) => assert_eq!(again, stored, "{name}"),
            other => panic!("{name}: a retry is answered from its key: {other:?}"),
        }
        // The key reused for other events: refused, nothing journalled.
        match store
            .ingest_keyed(
                &[receipt("e-3", 100)],
                &ctx(),
                Some((&claim("pos|k-1", "fp-2"), render())),
            )
            .await
            .expect("reuse")
        {
            Keyed::Key(Begin::Mismatch) => {}
            other => panic!("{name}: a reused key is refused: {other:?}"),
        }
        assert_eq!(figures_full(store, "X", "A").await, (7, 0), "{name}");
    }
}

/// Many keyed requests at once, on SQLite sharing group commits: each key
/// new once, every retry among them answered from its key (never found in
/// flight: a key is only ever seen with its answer), every request's events
/// journalled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keyed_ingests_journal_each_request_once() {
    for t in backends::all().await {
        let (name, store) = (t.name, &t.store);
        seed(store, &["A"], &["X"], 0).await;
        let mut tasks = Vec::new();
        for request in 0..20 {
            // Each request is sent three times with its key.
            for _ in 0..3 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let events = [receipt(&format!("c-{request}"), 1)];
                    let key = format!("pos|c-{request}");
                    let written = store
                        .ingest_keyed(&events, &ctx(), Some((&claim(&key, "fp"), render())))
                        .await
                        .expect("ingest");
                    (request, written)
                }));
            }
        }
        let mut kept = std::collections::BTreeMap::new();
        let mut replays = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                (request, Keyed::Decided((results, _), Some(stored))) => {
                    assert_eq!(results[0].status, EventStatus::Applied, "{name}");
                    assert!(
                        kept.insert(request, stored).is_none(),
                        "{name}: request {request} journalled twice"
                    );
                }
                (request, Keyed::Key(Begin::Replay(stored))) => replays.push((request, stored)),
                (request, other) => panic!("{name}: request {request}: {other:?}"),
            }
        }
        assert_eq!(kept.len(), 20, "{name}");
        for (request, stored) in replays {
            assert_eq!(kept[&request], stored, "{name}: the first answer");
        }
        assert_eq!(figures_full(store, "X", "A").await, (20, 0), "{name}");
    }
}
