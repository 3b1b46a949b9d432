//! Several process-api replicas on one database: concurrent batches that
//! overlap (the same events sent to both replicas, in different orders)
//! apply every event exactly once, and positions equal a single replica's.

use std::collections::BTreeMap;

use process_api::inventory::event::EventInput;
use process_api::storage::Store;
use process_api::storage::ledger::{EventStatus, IngestContext};
use process_api::storage::master::ChangeContext;
use retail_shared::model::{LocationInput, LocationType, ProductInput};
use rust_decimal::Decimal;

use crate::backends;

pub(crate) fn events(n: usize) -> Vec<EventInput> {
    (0..n)
        .map(|i| {
            let kind = ["receipt", "sale", "adjustment", "count", "transfer_out"][i % 5];
            EventInput {
                event_id: format!("ev-{i:05}"),
                r#type: kind.into(),
                location_id: format!("L{}", i % 3),
                sku: format!("S{}", i % 4),
                quantity: if kind == "count" {
                    40
                } else {
                    1 + (i % 7) as i64
                },
                occurred_at: format!("2026-11-20T10:{:02}:{:02}Z", (i / 60) % 60, i % 60),
                source: "replica-test".into(),
                reference: None,
                reason: None,
                counterparty_location_id: (kind == "transfer_out")
                    .then(|| format!("L{}", (i + 1) % 3)),
                disposition: None,
            }
        })
        .collect()
}

pub(crate) async fn seed(store: &Store) {
    let ctx = ChangeContext {
        actor: "t".into(),
        request_id: "r".into(),
    };
    let locations: Vec<_> = (0..3)
        .map(|i| LocationInput {
            location_id: format!("L{i}"),
            name: format!("L{i}"),
            r#type: LocationType::Store,
            latitude: None,
            longitude: None,
            capabilities: vec![],
            safety_stock_default: 0,
        })
        .collect();
    store
        .upsert_locations(&locations, &ctx)
        .await
        .expect("locations");
    let products: Vec<_> = (0..4)
        .map(|i| ProductInput {
            sku: format!("S{i}"),
            name: format!("S{i}"),
            unit_cost: Decimal::ONE,
            currency: "USD".into(),
            gtin: None,
            safety_stock: None,
        })
        .collect();
    store
        .upsert_products(&products, &ctx)
        .await
        .expect("products");
}

async fn all_positions(store: &Store) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for i in 0..4 {
        let sku = format!("S{i}");
        for (location, figures) in store.position_figures(&sku).await.expect("positions") {
            out.insert(format!("{location}/{sku}"), format!("{figures:?}"));
        }
    }
    out
}

#[tokio::test]
async fn two_replicas_apply_each_event_exactly_once() {
    let all = events(600);
    for (replica_a, replica_b, single) in backends::replica_pairs().await {
        seed(&replica_a).await;
        let ctx = IngestContext {
            actor: "t".into(),
            request_id: "r".into(),
            trace_id: "t".into(),
            span_id: None,
        };
        // Replica A gets every event in order, replica B the same events
        // reversed, in batches of 50, all at once.
        let forward: Vec<Vec<EventInput>> = all.chunks(50).map(<[_]>::to_vec).collect();
        let mut reversed = all.clone();
        reversed.reverse();
        let backward: Vec<Vec<EventInput>> = reversed.chunks(50).map(<[_]>::to_vec).collect();
        let a = {
            let store = replica_a.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut applied = Vec::new();
                for batch in forward {
                    let (results, _) = store.ingest(&batch, &ctx).await.expect("ingest a");
                    applied.extend(
                        results
                            .into_iter()
                            .filter(|r| r.status == EventStatus::Applied)
                            .map(|r| r.event_id),
                    );
                }
                applied
            })
        };
        let b = {
            let store = replica_b.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut applied = Vec::new();
                for batch in backward {
                    let (results, _) = store.ingest(&batch, &ctx).await.expect("ingest b");
                    applied.extend(
                        results
                            .into_iter()
                            .filter(|r| r.status == EventStatus::Applied)
                            .map(|r| r.event_id),
                    );
                }
                applied
            })
        };
        let mut applied = a.await.expect("a");
        applied.extend(b.await.expect("b"));
        applied.sort();
        let before = applied.len();
        applied.dedup();
        assert_eq!(
            before,
            applied.len(),
            "an event was applied by both replicas"
        );
        assert_eq!(applied.len(), all.len(), "an event was lost");
        assert_eq!(
            replica_a.journal_len().await.expect("len"),
            all.len() as i64
        );

        // The same events through one replica give the same positions.
        seed(&single).await;
        for batch in all.chunks(50) {
            single.ingest(batch, &ctx).await.expect("single");
        }
        assert_eq!(
            all_positions(&replica_a).await,
            all_positions(&single).await
        );
        assert_eq!(
            replica_b.rebuild(false).await.expect("rebuild").mismatches,
            0
        );
    }
}
