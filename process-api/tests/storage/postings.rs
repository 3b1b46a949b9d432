//! The ERP outbox as a delivery queue, on every backend: order per key,
//! backoff holding a key back, dead letters blocking their key until
//! replayed or discarded, leases running out after a crash, and two
//! replicas never holding postings of one key at once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use process_api::storage::postings::{ClaimedPosting, PostingFilter, RetryPolicy, Settlement};
use process_api::storage::{Clock, Store, now_micros};

use crate::backends;
use crate::reservations::{receive, seed};

const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_micros: 1_000_000,
    max_micros: 4_000_000,
};

const LEASE: Duration = Duration::from_secs(60);

fn ids(claimed: &[ClaimedPosting]) -> Vec<(String, i64)> {
    claimed
        .iter()
        .map(|c| (format!("{}/{}", c.location_id, c.sku), c.quantity))
        .collect()
}

fn posted(claimed: &[ClaimedPosting]) -> Vec<Settlement> {
    claimed
        .iter()
        .map(|c| Settlement::Posted {
            posting_id: c.posting_id,
            erp_ref: None,
        })
        .collect()
}

#[tokio::test]
async fn postings_go_in_order_per_key_and_wait_behind_failures() {
    for t in backends::all().await {
        let clock = Clock::manual(now_micros());
        let store = t.store.clone().with_clock(clock.clone());
        seed(&store, &["A", "B"], &["X"], 0).await;
        receive(&store, "a1", "A", "X", 1).await;
        receive(&store, "a2", "A", "X", 2).await;
        receive(&store, "b1", "B", "X", 5).await;
        receive(&store, "a3", "A", "X", 3).await;
        clock.advance(Duration::from_secs(30));
        let counts = store.posting_counts().await.expect("counts");
        assert_eq!(
            (counts.pending, counts.in_flight, counts.dead, counts.posted),
            (4, 0, 0, 0),
            "{}",
            t.name
        );
        assert!(
            (counts.oldest_pending_age_seconds - 30.0).abs() < 1e-6,
            "{} {}",
            t.name,
            counts.oldest_pending_age_seconds
        );

        // One batch carries every due posting, each key in order.
        let claimed = store.claim_postings(10, LEASE).await.expect("claim");
        assert_eq!(
            ids(&claimed),
            [
                ("A/X".into(), 1),
                ("A/X".into(), 2),
                ("B/X".into(), 5),
                ("A/X".into(), 3)
            ],
            "{}",
            t.name
        );
        // Claimed postings are nobody else's.
        assert!(
            store
                .claim_postings(10, LEASE)
                .await
                .expect("claim")
                .is_empty()
        );

        // a1 fails transiently: a2 and a3 were not tried; b1 went through.
        let settle = vec![
            Settlement::Failed {
                posting_id: claimed[0].posting_id,
                error: "flaky".into(),
                permanent: false,
            },
            Settlement::NotAttempted {
                posting_id: claimed[1].posting_id,
                error: None,
                retry_at: store.now(),
            },
            Settlement::Posted {
                posting_id: claimed[2].posting_id,
                erp_ref: Some("x".into()),
            },
            Settlement::NotAttempted {
                posting_id: claimed[3].posting_id,
                error: None,
                retry_at: store.now(),
            },
        ];
        store
            .settle_postings(&settle, POLICY)
            .await
            .expect("settle");
        // A's key waits for a1's backoff, a2 and a3 included.
        assert!(
            store
                .claim_postings(10, LEASE)
                .await
                .expect("claim")
                .is_empty(),
            "{}",
            t.name
        );
        clock.advance(Duration::from_secs(2));
        let again = store.claim_postings(10, LEASE).await.expect("claim");
        assert_eq!(
            ids(&again),
            [("A/X".into(), 1), ("A/X".into(), 2), ("A/X".into(), 3)]
        );
        assert_eq!(again[0].attempts, 2, "the failed attempt counted");
        assert_eq!(again[1].attempts, 1, "the untried ones did not");
        store
            .settle_postings(&posted(&again), POLICY)
            .await
            .expect("settle");
        let counts = store.posting_counts().await.expect("counts");
        assert_eq!(
            (counts.pending, counts.in_flight, counts.posted),
            (0, 0, 4),
            "{}",
            t.name
        );
    }
}

#[tokio::test]
async fn a_dead_posting_blocks_its_key_until_replayed_or_discarded() {
    for t in backends::all().await {
        let clock = Clock::manual(now_micros());
        let store = t.store.clone().with_clock(clock.clone());
        seed(&store, &["A", "B"], &["X", "Y"], 0).await;
        receive(&store, "x1", "A", "X", 1).await;
        receive(&store, "x2", "A", "X", 2).await;
        receive(&store, "y1", "A", "Y", 7).await;

        let claimed = store.claim_postings(1, LEASE).await.expect("claim");
        assert_eq!(ids(&claimed), [("A/X".into(), 1)]);
        store
            .settle_postings(
                &[Settlement::Failed {
                    posting_id: claimed[0].posting_id,
                    error: "product blocked".into(),
                    permanent: true,
                }],
                POLICY,
            )
            .await
            .expect("settle");
        clock.advance(Duration::from_secs(3600));
        // Only the other key moves; x2 waits behind the dead x1.
        let claimed_y = store.claim_postings(10, LEASE).await.expect("claim");
        assert_eq!(ids(&claimed_y), [("A/Y".into(), 7)], "{}", t.name);
        store
            .settle_postings(&posted(&claimed_y), POLICY)
            .await
            .expect("settle");
        assert!(
            store
                .claim_postings(10, LEASE)
                .await
                .expect("claim")
                .is_empty()
        );
        let counts = store.posting_counts().await.expect("counts");
        assert_eq!((counts.dead, counts.blocked_by_dead), (1, 1), "{}", t.name);
        let dead = store
            .list_postings(&PostingFilter {
                status: Some("dead".into()),
                limit: 10,
                ..PostingFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(dead[0].waiting_behind, Some(1));
        assert_eq!(dead[0].last_error.as_deref(), Some("product blocked"));

        // Replay: x1 then x2, in order.
        let dead_id = dead[0].posting_id;
        store
            .replay_posting(dead_id, "ops", None)
            .await
            .expect("db")
            .expect("replayed");
        assert!(
            store
                .replay_posting(dead_id, "ops", None)
                .await
                .expect("db")
                .is_err()
        );
        let claimed = store.claim_postings(10, LEASE).await.expect("claim");
        assert_eq!(
            ids(&claimed),
            [("A/X".into(), 1), ("A/X".into(), 2)],
            "{}",
            t.name
        );

        // Retry budget: three transient failures make it dead too.
        for attempt in 1..=3 {
            let batch = if attempt == 1 {
                claimed.clone()
            } else {
                clock.advance(Duration::from_secs(10));
                store.claim_postings(10, LEASE).await.expect("claim")
            };
            assert_eq!(batch[0].attempts, attempt, "{}", t.name);
            let mut settle = vec![Settlement::Failed {
                posting_id: batch[0].posting_id,
                error: "flaky".into(),
                permanent: false,
            }];
            settle.extend(batch[1..].iter().map(|c| Settlement::NotAttempted {
                posting_id: c.posting_id,
                error: None,
                retry_at: store.now(),
            }));
            store
                .settle_postings(&settle, POLICY)
                .await
                .expect("settle");
        }
        clock.advance(Duration::from_secs(10));
        assert!(
            store
                .claim_postings(10, LEASE)
                .await
                .expect("claim")
                .is_empty()
        );
        // Discarded: the key moves on without it.
        store
            .discard_posting(dead_id, "ops", Some("posted by hand"))
            .await
            .expect("db")
            .expect("discarded");
        let claimed = store.claim_postings(10, LEASE).await.expect("claim");
        assert_eq!(ids(&claimed), [("A/X".into(), 2)], "{}", t.name);
    }
}

#[tokio::test]
async fn a_crashed_workers_claim_runs_out_and_is_taken_over() {
    for t in backends::all().await {
        let clock = Clock::manual(now_micros());
        let store = t.store.clone().with_clock(clock.clone());
        seed(&store, &["A"], &["X"], 0).await;
        receive(&store, "x1", "A", "X", 1).await;
        let first = store.claim_postings(10, LEASE).await.expect("claim");
        assert_eq!(first.len(), 1);
        // The worker dies without settling.
        clock.advance(LEASE / 2);
        assert!(
            store
                .claim_postings(10, LEASE)
                .await
                .expect("claim")
                .is_empty()
        );
        clock.advance(LEASE);
        let second = store.claim_postings(10, LEASE).await.expect("claim");
        assert_eq!(second[0].posting_id, first[0].posting_id, "{}", t.name);
        assert_eq!(second[0].attempts, 2);
    }
}

/// Two replicas claim and settle concurrently; a key is never held by both
/// at once, and each key's postings are settled in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_never_hold_one_key_at_once() {
    for (a, b, _) in backends::replica_pairs().await {
        seed(&a, &["A", "B", "C"], &["X", "Y"], 0).await;
        let mut n = 0;
        for round in 0..30 {
            for location in ["A", "B", "C"] {
                for sku in ["X", "Y"] {
                    n += 1;
                    receive(&a, &format!("e{n}"), location, sku, round + 1).await;
                }
            }
        }
        let held: std::sync::Arc<std::sync::Mutex<HashSet<String>>> = Default::default();
        let order: std::sync::Arc<std::sync::Mutex<HashMap<String, Vec<i64>>>> = Default::default();
        let worker = |store: Store| {
            let held = held.clone();
            let order = order.clone();
            async move {
                let mut idle = 0;
                while idle < 20 {
                    let claimed = store.claim_postings(4, LEASE).await.expect("claim");
                    if claimed.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    idle = 0;
                    let keys: HashSet<String> = claimed
                        .iter()
                        .map(|c| format!("{}/{}", c.location_id, c.sku))
                        .collect();
                    {
                        let mut held = held.lock().expect("lock");
                        for key in &keys {
                            assert!(held.insert(key.clone()), "{key} held by two replicas");
                        }
                        let mut order = order.lock().expect("lock");
                        for c in &claimed {
                            order
                                .entry(format!("{}/{}", c.location_id, c.sku))
                                .or_default()
                                .push(c.posting_id);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    {
                        let mut held = held.lock().expect("lock");
                        for key in &keys {
                            held.remove(key);
                        }
                    }
                    store
                        .settle_postings(&posted(&claimed), POLICY)
                        .await
                        .expect("settle");
                }
            }
        };
        tokio::join!(worker(a.clone()), worker(b.clone()));
        let order = order.lock().expect("lock");
        assert_eq!(order.values().map(Vec::len).sum::<usize>(), n);
        for (key, ids) in order.iter() {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{key}: {ids:?}");
        }
    }
}

#[tokio::test]
async fn postings_exceptions_and_parked_events_filter_by_location_before_the_limit() {
    use process_api::inventory::event::EventInput;
    use process_api::storage::ledger::EventStatus;
    use process_api::storage::reconciliation::Mismatch;

    for t in backends::all().await {
        let store = &t.store;
        seed(store, &["A", "B", "C"], &["X"], 0).await;
        // B's postings come first, so a filter applied after the limit
        // would leave A's first page empty.
        receive(store, "b1", "B", "X", 1).await;
        receive(store, "b2", "B", "X", 2).await;
        receive(store, "a1", "A", "X", 3).await;
        receive(store, "c1", "C", "X", 4).await;
        receive(store, "a2", "A", "X", 5).await;
        let bound = Some(vec!["A".to_owned(), "C".to_owned()]);
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .list_postings(&PostingFilter {
                    locations: bound.clone(),
                    after,
                    limit: 2,
                    ..PostingFilter::default()
                })
                .await
                .expect("list");
            seen.extend(page.iter().map(|p| (p.location_id.clone(), p.quantity)));
            match page.last() {
                Some(last) if page.len() == 2 => after = last.posting_id,
                _ => break,
            }
        }
        assert_eq!(
            seen,
            [("A".into(), 3), ("C".into(), 4), ("A".into(), 5)],
            "{}",
            t.name
        );
        let none = store
            .list_postings(&PostingFilter {
                locations: Some(Vec::new()),
                limit: 10,
                ..PostingFilter::default()
            })
            .await
            .expect("list");
        assert!(none.is_empty(), "{}", t.name);

        let run = store
            .start_reconciliation("on_demand", "t")
            .await
            .expect("run");
        for location in ["B", "A"] {
            store
                .record_mismatch(
                    run,
                    &Mismatch {
                        location_id: location.into(),
                        sku: "X".into(),
                        platform_on_hand: 1,
                        erp_quantity: 9,
                        unit_cost: None,
                        currency: None,
                    },
                )
                .await
                .expect("mismatch");
        }
        let only_a = ["A".to_owned()];
        let exceptions = store
            .reconciliation_exceptions(Some("open"), Some(&only_a), 1)
            .await
            .expect("exceptions");
        assert_eq!(exceptions.len(), 1, "{}", t.name);
        assert_eq!(exceptions[0].location_id, "A", "{}", t.name);
        let all = store
            .reconciliation_exceptions(None, None, 10)
            .await
            .expect("exceptions");
        assert_eq!(all.len(), 2, "{}", t.name);

        // An unknown product parks events at B then A.
        let parked = |id: &str, location: &str| EventInput {
            event_id: id.into(),
            r#type: "receipt".into(),
            location_id: location.into(),
            sku: "UNKNOWN".into(),
            quantity: 1,
            occurred_at: "2026-11-20T08:00:00Z".into(),
            source: "test".into(),
            reference: None,
            reason: None,
            counterparty_location_id: None,
            disposition: None,
        };
        let (results, _) = store
            .ingest(
                &[parked("p1", "B"), parked("p2", "A")],
                &crate::reservations::ctx(),
            )
            .await
            .expect("ingest");
        assert!(
            results.iter().all(|r| r.status == EventStatus::Parked),
            "{results:?}"
        );
        let page = store.parked(None, 1, Some(&only_a)).await.expect("parked");
        assert_eq!(page.len(), 1, "{}", t.name);
        assert_eq!(page[0].event_id, "p2", "{}", t.name);
        assert_eq!(
            store.parked_count_at(Some(&only_a)).await.expect("count"),
            1
        );
        assert_eq!(store.parked_count_at(None).await.expect("count"), 2);
    }
}
