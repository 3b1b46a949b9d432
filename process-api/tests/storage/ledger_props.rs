//! Property test: random interleavings of every event type, re-sent
//! duplicates, out-of-order arrival and late master data, checked after
//! every batch against a reference model written straight from DESIGN.md
//! §5; two arrival orders of the same events must give the same positions.
//! Runs on every available backend.

use std::collections::{BTreeMap, BTreeSet};

use process_api::inventory::event::EventInput;
use process_api::inventory::position::PositionFigures;
use process_api::storage::Store;
use process_api::storage::ledger::{EventStatus, IngestContext};
use process_api::storage::master::ChangeContext;
use proptest::prelude::*;
use retail_shared::model::{LocationInput, LocationType, ProductInput};
use rust_decimal::Decimal;

use crate::backends;

const LOCATIONS: [&str; 3] = ["L1", "L2", "L3"];
const SKUS: [&str; 3] = ["A", "B", "C"];
const TYPES: [&str; 9] = [
    "sale",
    "return",
    "receipt",
    "adjustment",
    "count",
    "damage",
    "write_off",
    "transfer_out",
    "transfer_in",
];
const BASE_TIME: i64 = 1_790_000_000; // 2026-09-21, seconds

#[derive(Debug, Clone)]
struct Spec {
    kind: usize,
    location: usize,
    sku: usize,
    quantity: i64,
    minute: i64,
    other: usize,
    flag: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..9usize,
        0..3usize,
        0..3usize,
        1..12i64,
        0..8i64,
        1..3usize,
        any::<bool>(),
    )
        .prop_map(
            |(kind, location, sku, quantity, minute, other, flag)| Spec {
                kind,
                location,
                sku,
                quantity,
                minute,
                other,
                flag,
            },
        )
}

fn to_input(index: usize, spec: &Spec) -> EventInput {
    let kind = TYPES[spec.kind];
    let location = LOCATIONS[spec.location];
    let other = LOCATIONS[(spec.location + spec.other) % 3];
    let quantity = match kind {
        "adjustment" if spec.flag => -spec.quantity,
        "count" => spec.quantity - 1,
        _ => spec.quantity,
    };
    let seconds = BASE_TIME + spec.minute * 60;
    EventInput {
        event_id: format!("e{index:03}"),
        r#type: kind.into(),
        location_id: location.into(),
        sku: SKUS[spec.sku].into(),
        quantity,
        occurred_at: time::OffsetDateTime::from_unix_timestamp(seconds)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format"),
        source: "proptest".into(),
        reference: None,
        reason: None,
        counterparty_location_id: match kind {
            "transfer_out" => Some(other.into()),
            "transfer_in" if spec.flag => Some(other.into()),
            _ => None,
        },
        disposition: (kind == "return" && spec.flag).then(|| "damaged".into()),
    }
}

/// The reference model: DESIGN.md §5 computed from scratch.
fn reference(
    events: &[EventInput],
    safety: impl Fn(&str, &str) -> i64,
) -> BTreeMap<(String, String), PositionFigures> {
    let mut keys = BTreeSet::new();
    for e in events {
        keys.insert((e.location_id.clone(), e.sku.clone()));
        if e.r#type == "transfer_out"
            && let Some(other) = &e.counterparty_location_id
        {
            keys.insert((other.clone(), e.sku.clone()));
        }
    }
    let time_of = |e: &EventInput| {
        time::OffsetDateTime::parse(
            &e.occurred_at,
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time")
        .unix_timestamp()
    };
    keys.into_iter()
        .map(|(location, sku)| {
            let here: Vec<&EventInput> = events
                .iter()
                .filter(|e| e.location_id == location && e.sku == sku)
                .collect();
            let latest_count = here
                .iter()
                .filter(|e| e.r#type == "count")
                .max_by(|a, b| (time_of(a), &a.event_id).cmp(&(time_of(b), &b.event_id)));
            let delta = |e: &EventInput| match e.r#type.as_str() {
                "sale" | "write_off" | "transfer_out" => -e.quantity,
                "return" | "receipt" | "adjustment" | "transfer_in" => e.quantity,
                _ => 0,
            };
            let on_hand = match latest_count {
                Some(count) => {
                    count.quantity
                        + here
                            .iter()
                            .filter(|e| time_of(e) > time_of(count))
                            .map(|e| delta(e))
                            .sum::<i64>()
                }
                None => here.iter().map(|e| delta(e)).sum(),
            };
            let unsellable_raw: i64 = here
                .iter()
                .map(|e| match (e.r#type.as_str(), e.disposition.as_deref()) {
                    ("damage", _) | ("return", Some("damaged")) => e.quantity,
                    ("write_off", _) => -e.quantity,
                    _ => 0,
                })
                .sum();
            let shipped: i64 = events
                .iter()
                .filter(|e| {
                    e.r#type == "transfer_out"
                        && e.sku == sku
                        && e.counterparty_location_id.as_deref() == Some(location.as_str())
                })
                .map(|e| e.quantity)
                .sum();
            let received: i64 = here
                .iter()
                .filter(|e| e.r#type == "transfer_in")
                .map(|e| e.quantity)
                .sum();
            let unsellable = unsellable_raw.clamp(0, on_hand.max(0));
            let safety_stock = safety(&location, &sku);
            let figures = PositionFigures {
                on_hand,
                unsellable,
                reserved: 0,
                safety_stock,
                in_transit: (shipped - received).max(0),
                available: (on_hand - unsellable - safety_stock).max(0),
            };
            ((location, sku), figures)
        })
        .collect()
}

/// L1 default 1, L2 default 0, L3 default 2; product B has its own 3.
fn safety(location: &str, sku: &str) -> i64 {
    if sku == "B" {
        return 3;
    }
    match location {
        "L1" => 1,
        "L3" => 2,
        _ => 0,
    }
}

fn location(id: &str, default: i64) -> LocationInput {
    LocationInput {
        location_id: id.into(),
        name: id.into(),
        r#type: LocationType::Store,
        latitude: None,
        longitude: None,
        capabilities: vec![],
        safety_stock_default: default,
    }
}

fn product(sku: &str, safety: Option<i64>) -> ProductInput {
    ProductInput {
        sku: sku.into(),
        name: sku.into(),
        unit_cost: Decimal::new(100, 2),
        currency: "USD".into(),
        gtin: None,
        safety_stock: safety,
    }
}

fn ctx() -> (IngestContext, ChangeContext) {
    (
        IngestContext {
            actor: "proptest".into(),
            request_id: "r".into(),
            trace_id: "t".into(),
            span_id: None,
        },
        ChangeContext {
            actor: "proptest".into(),
            request_id: "r".into(),
        },
    )
}

async fn snapshot(store: &Store) -> BTreeMap<(String, String), PositionFigures> {
    let mut all = BTreeMap::new();
    for sku in SKUS {
        for (location, figures) in store.position_figures(sku).await.expect("positions") {
            all.insert((location, sku.to_owned()), figures);
        }
    }
    all
}

/// Feeds `arrivals` (indices into `events`, repeats are re-sends) in
/// batches, checking the model after each; then the missing master data
/// arrives. Returns the final positions.
async fn run(
    store: &Store,
    events: &[EventInput],
    arrivals: &[usize],
    batch_sizes: &[usize],
) -> BTreeMap<(String, String), PositionFigures> {
    let (ingest, change) = ctx();
    store
        .upsert_locations(&[location("L1", 1), location("L2", 0)], &change)
        .await
        .expect("locations");
    store
        .upsert_products(&[product("A", None), product("B", Some(3))], &change)
        .await
        .expect("products");
    let known = |e: &EventInput| {
        e.sku != "C" && e.location_id != "L3" && e.counterparty_location_id.as_deref() != Some("L3")
    };
    let mut seen = BTreeSet::new();
    let mut applied: Vec<EventInput> = Vec::new();
    let mut cursor = 0;
    let mut sizes = batch_sizes.iter().cycle();
    while cursor < arrivals.len() {
        let size = (*sizes.next().unwrap_or(&1)).min(arrivals.len() - cursor);
        let batch: Vec<EventInput> = arrivals[cursor..cursor + size]
            .iter()
            .map(|i| events[*i].clone())
            .collect();
        cursor += size;
        let (results, _) = store.ingest(&batch, &ingest).await.expect("ingest");
        for (input, result) in batch.iter().zip(&results) {
            let first = seen.insert(input.event_id.clone());
            let expected = match (first, known(input)) {
                (false, _) => EventStatus::Duplicate,
                (true, true) => EventStatus::Applied,
                (true, false) => EventStatus::Parked,
            };
            assert_eq!(result.status, expected, "{input:?}: {result:?}");
            if expected == EventStatus::Applied {
                applied.push(input.clone());
            }
        }
        assert_eq!(
            snapshot(store).await,
            reference(&applied, safety),
            "after a batch"
        );
    }
    // The missing master data arrives: parked events apply.
    store
        .upsert_locations(&[location("L3", 2)], &change)
        .await
        .expect("late location");
    store
        .upsert_products(&[product("C", None)], &change)
        .await
        .expect("late product");
    store.replay_parked().await.expect("replay");
    assert_eq!(store.parked_count().await.expect("count"), 0);
    let unique: Vec<EventInput> = seen
        .iter()
        .filter_map(|id| events.iter().find(|e| &e.event_id == id).cloned())
        .collect();
    let positions = snapshot(store).await;
    assert_eq!(positions, reference(&unique, safety), "after master data");
    let report = store.rebuild(false).await.expect("rebuild");
    assert_eq!(
        report.mismatches, 0,
        "rebuild equals live: {:?}",
        report.examples
    );
    positions
}

fn scenario() -> impl Strategy<Value = (Vec<EventInput>, Vec<usize>, Vec<usize>, Vec<usize>)> {
    prop::collection::vec(spec(), 1..30).prop_flat_map(|specs| {
        let events: Vec<EventInput> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| to_input(i, s))
            .collect();
        let n = events.len();
        let order: Vec<usize> = (0..n).collect();
        (
            Just(events),
            Just(order.clone()).prop_shuffle(),
            Just(order).prop_shuffle(),
            prop::collection::vec(0..n, 0..6),
            prop::collection::vec(1..8usize, 1..4),
        )
            .prop_map(|(events, first, second, resend, sizes)| {
                // Re-sends land right after a random point of the first order.
                let mut arrivals = first;
                for (k, index) in resend.iter().enumerate() {
                    let at = (k * 7 + index) % (arrivals.len() + 1);
                    arrivals.insert(at, *index);
                }
                (events, arrivals, second, sizes)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn positions_match_the_reference_model_in_any_arrival_order(
        (events, arrivals, second_order, sizes) in scenario()
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            for (first, second) in backends::all().await.into_iter().zip(backends::all().await) {
                let a = run(&first.store, &events, &arrivals, &sizes).await;
                let b = run(&second.store, &events, &second_order, &[3]).await;
                assert_eq!(a, b, "{}: arrival order changed the positions", first.name);
            }
        });
    }
}
