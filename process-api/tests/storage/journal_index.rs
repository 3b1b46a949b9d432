//! The journal's (location_id, occurred_at) index (migration 0012) and the
//! count rule that reads it: a count installs "its quantity plus every
//! effect at the position after it", reading the journal only when the
//! position has an event after the count.

use process_api::inventory::event::EventInput;
use process_api::storage::Store;
use process_api::storage::ledger::{EventStatus, IngestContext};
use process_api::storage::master::ChangeContext;
use retail_shared::model::{LocationInput, LocationType, ProductInput};
use rust_decimal::Decimal;

use crate::backends;

const BASE: i64 = 1_790_000_000; // seconds

fn event(id: &str, kind: &str, location: &str, quantity: i64, minute: i64) -> EventInput {
    EventInput {
        event_id: id.into(),
        r#type: kind.into(),
        location_id: location.into(),
        sku: "S".into(),
        quantity,
        occurred_at: time::OffsetDateTime::from_unix_timestamp(BASE + minute * 60)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format"),
        source: "test".into(),
        reference: None,
        reason: None,
        counterparty_location_id: None,
        disposition: None,
    }
}

async fn seed(store: &Store) -> IngestContext {
    let change = ChangeContext {
        actor: "test".into(),
        request_id: "r".into(),
    };
    let locations: Vec<LocationInput> = ["L1", "L2"]
        .into_iter()
        .map(|id| LocationInput {
            location_id: id.into(),
            name: id.into(),
            r#type: LocationType::Store,
            latitude: None,
            longitude: None,
            capabilities: vec![],
            safety_stock_default: 0,
        })
        .collect();
    store
        .upsert_locations(&locations, &change)
        .await
        .expect("locations");
    store
        .upsert_products(
            &[ProductInput {
                sku: "S".into(),
                name: "S".into(),
                unit_cost: Decimal::new(100, 2),
                currency: "USD".into(),
                gtin: None,
                safety_stock: None,
            }],
            &change,
        )
        .await
        .expect("products");
    IngestContext {
        actor: "test".into(),
        request_id: "r".into(),
        trace_id: "t".into(),
        span_id: None,
    }
}

async fn on_hand(store: &Store, location: &str) -> i64 {
    store
        .position_figures("S")
        .await
        .expect("positions")
        .into_iter()
        .find(|(at, _)| at == location)
        .map(|(_, figures)| figures.on_hand)
        .expect("position")
}

async fn ingest(store: &Store, ctx: &IngestContext, events: &[EventInput]) {
    let (results, _) = store.ingest(events, ctx).await.expect("ingest");
    for result in results {
        assert_eq!(result.status, EventStatus::Applied, "{result:?}");
    }
}

/// Counts that arrive after, between and before journalled events, each in
/// a batch of its own (so the effects after them come from the journal,
/// not from the batch), with another location's events interleaved in the
/// same index range.
#[tokio::test]
async fn a_count_adds_the_journalled_effects_after_it_and_only_those() {
    for backends::TestStore { name, store, .. } in backends::all().await {
        let ctx = seed(&store).await;
        ingest(
            &store,
            &ctx,
            &[
                event("r10", "receipt", "L1", 10, 10),
                event("x15", "receipt", "L2", 100, 15),
                event("s30", "sale", "L1", 3, 30),
                event("x45", "sale", "L2", 7, 45),
                event("s50", "sale", "L1", 2, 50),
            ],
        )
        .await;
        assert_eq!(on_hand(&store, "L1").await, 5, "{name}");

        // A count at minute 40 arrives late: the sale at 50 (journalled)
        // happened after it and counts; the receipt and sale before it do
        // not; L2's events in between are another position's.
        ingest(&store, &ctx, &[event("c40", "count", "L1", 20, 40)]).await;
        assert_eq!(on_hand(&store, "L1").await, 18, "{name}: late count");

        // A count older than the installed one changes nothing.
        ingest(&store, &ctx, &[event("c20", "count", "L1", 99, 20)]).await;
        assert_eq!(on_hand(&store, "L1").await, 18, "{name}: older count");

        // A count after every event of the position: nothing is added.
        ingest(&store, &ctx, &[event("c60", "count", "L1", 7, 60)]).await;
        assert_eq!(on_hand(&store, "L1").await, 7, "{name}: newest count");

        // Events before that count do not move it; one after it does.
        ingest(
            &store,
            &ctx,
            &[
                event("s55", "sale", "L1", 4, 55),
                event("s70", "sale", "L1", 1, 70),
            ],
        )
        .await;
        assert_eq!(on_hand(&store, "L1").await, 6, "{name}: after the count");

        // A count between the count at 60 and the sale at 70 that arrived
        // first: the journalled sale at 70 is added.
        ingest(&store, &ctx, &[event("c65", "count", "L1", 30, 65)]).await;
        assert_eq!(on_hand(&store, "L1").await, 29, "{name}: count before sale");
        assert_eq!(on_hand(&store, "L2").await, 93, "{name}: other location");

        let report = store.rebuild(false).await.expect("rebuild");
        assert_eq!(report.mismatches, 0, "{name}: rebuild equals live");
    }
}

/// On SQLite the statements that look for a position's entries go through
/// the (location_id, occurred_at) index, not a scan of the journal.
#[tokio::test]
async fn position_lookups_in_the_journal_use_the_location_time_index() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("process.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .expect("store");
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    for statement in [
        "SELECT CAST(COALESCE(SUM(on_hand_effect), 0) AS BIGINT) FROM journal \
         WHERE location_id = 'L1' AND sku = 'S' AND occurred_at > 5",
        "SELECT seq FROM journal j WHERE j.seq > 0 AND j.location_id = 'L1' \
         AND j.sku = 'S' ORDER BY j.seq LIMIT 100",
    ] {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT detail FROM (EXPLAIN QUERY PLAN {statement})"
        )))
        .fetch_all(&mut connection)
        .await
        .unwrap_or_default();
        let plan = if plan.is_empty() {
            // Older SQLite builds do not allow EXPLAIN in a subquery.
            use sqlx::Row;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {statement}"
            )))
            .fetch_all(&mut connection)
            .await
            .expect("plan")
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
        } else {
            plan
        };
        assert!(
            plan.iter()
                .any(|step| step.contains("journal_location_time")),
            "{statement}: {plan:?}"
        );
    }
    store.close().await;
}
