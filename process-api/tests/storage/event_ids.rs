//! Event ids are never silently swallowed: the same id with another
//! meaning is `rejected` (`event-id-conflict`), not a `duplicate`.

use process_api::inventory::event::EventInput;
use process_api::storage::Store;
use process_api::storage::ledger::{EventResult, EventStatus};

use crate::backends;
use crate::reservations::{ctx, seed as seed_master};

/// Stores S001 and S002 and the sku SKU-1, no safety stock.
async fn seed(store: &Store) {
    seed_master(store, &["S001", "S002"], &["SKU-1"], 0).await;
}

fn sale(id: &str, location: &str, sku: &str, quantity: i64, at: &str) -> EventInput {
    EventInput {
        event_id: id.into(),
        r#type: "sale".into(),
        location_id: location.into(),
        sku: sku.into(),
        quantity,
        occurred_at: at.into(),
        source: "pos".into(),
        reference: None,
        reason: None,
        counterparty_location_id: None,
        disposition: None,
    }
}

async fn one(store: &Store, event: EventInput) -> EventResult {
    let (results, _) = store.ingest(&[event], &ctx()).await.expect("ingest");
    results.into_iter().next().expect("one result")
}

async fn on_hand(store: &Store, location: &str) -> i64 {
    store
        .positions("SKU-1", Some(location))
        .await
        .expect("positions")
        .first()
        .map_or(0, |p| p.figures.on_hand)
}

fn is_conflict(result: &EventResult) -> bool {
    result.status == EventStatus::Rejected
        && result
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("event-id-conflict"))
}

#[tokio::test]
async fn another_stores_event_under_a_taken_id_is_a_conflict_not_a_duplicate() {
    for backend in backends::all().await {
        let store = &backend.store;
        seed(store).await;
        let id = "pos:S001:T01:000123:1";
        // A client bound to store S002 posts S001's id first, at S002.
        let first = one(store, sale(id, "S002", "SKU-1", 1, "2026-12-01T10:00:00Z")).await;
        assert_eq!(first.status, EventStatus::Applied, "{}", backend.name);
        // S001's real sale arrives: visible as a conflict, not lost as a
        // duplicate.
        let real = one(store, sale(id, "S001", "SKU-1", 1, "2026-12-01T10:00:00Z")).await;
        assert!(is_conflict(&real), "{}: {real:?}", backend.name);
        // A real retry of the first (even re-stamped) is a duplicate.
        let retry = one(store, sale(id, "S002", "SKU-1", 1, "2026-12-01T10:05:00Z")).await;
        assert_eq!(retry.status, EventStatus::Duplicate, "{}", backend.name);
        // Another quantity under the same id is a conflict too.
        let more = one(store, sale(id, "S002", "SKU-1", 2, "2026-12-01T10:00:00Z")).await;
        assert!(is_conflict(&more), "{}: {more:?}", backend.name);
        // Nothing of the conflicts was applied.
        assert_eq!(on_hand(store, "S002").await, -1, "{}", backend.name);
        assert_eq!(on_hand(store, "S001").await, 0, "{}", backend.name);
    }
}

#[tokio::test]
async fn a_parked_events_id_conflicts_too_and_within_one_request() {
    for backend in backends::all().await {
        let store = &backend.store;
        seed(store).await;
        // Unknown sku: parked.
        let parked = one(
            store,
            sale("e-1", "S001", "NEW-SKU", 1, "2026-12-01T10:00:00Z"),
        )
        .await;
        assert_eq!(parked.status, EventStatus::Parked, "{}", backend.name);
        let other = one(
            store,
            sale("e-1", "S002", "NEW-SKU", 1, "2026-12-01T10:00:00Z"),
        )
        .await;
        assert!(is_conflict(&other), "{}: {other:?}", backend.name);
        let same = one(
            store,
            sale("e-1", "S001", "NEW-SKU", 1, "2026-12-01T10:00:00Z"),
        )
        .await;
        assert_eq!(same.status, EventStatus::Duplicate, "{}", backend.name);
        // One request carrying the same id twice with two meanings.
        let (results, summary) = store
            .ingest(
                &[
                    sale("e-2", "S001", "SKU-1", 1, "2026-12-01T10:00:00Z"),
                    sale("e-2", "S002", "SKU-1", 1, "2026-12-01T10:00:00Z"),
                    sale("e-2", "S001", "SKU-1", 1, "2026-12-01T10:00:00Z"),
                ],
                &ctx(),
            )
            .await
            .expect("ingest");
        assert_eq!(results[0].status, EventStatus::Applied, "{}", backend.name);
        assert!(
            is_conflict(&results[1]),
            "{}: {:?}",
            backend.name,
            results[1]
        );
        assert_eq!(
            results[2].status,
            EventStatus::Duplicate,
            "{}",
            backend.name
        );
        assert_eq!(summary.applied, 1);
        assert_eq!(on_hand(store, "S002").await, 0, "{}", backend.name);
    }
}
