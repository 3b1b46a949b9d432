//! The change feed on every backend: committed changes become entries of a
//! gapless, ascending sequence carrying the positions' figures; two
//! replicas publishing at once never hand out a number twice or skip one,
//! and every position's newest entry is its current state.

use std::collections::HashMap;

use process_api::inventory::event::EventInput;
use process_api::storage::Store;
use process_api::storage::feed::{Change, FeedFilter};
use process_api::storage::ledger::EventStatus;

use crate::backends;
use crate::reservations::{ctx, receive, seed};

async fn all_changes(store: &Store) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    loop {
        let page = store
            .changes(&FeedFilter {
                after: out.last().map_or(0, |c| c.seq),
                limit: 1000,
                ..FeedFilter::default()
            })
            .await
            .expect("changes");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

#[tokio::test]
async fn the_feed_is_gapless_and_ends_at_the_current_figures() {
    for (a, b, _) in backends::replica_pairs().await {
        let locations = ["L1", "L2", "L3"];
        let skus = ["K1", "K2", "K3", "K4"];
        seed(&a, &locations, &skus, 1).await;
        // Writers on both replicas while both publish.
        let writer = |store: Store, tag: &'static str| async move {
            for i in 0..60 {
                let location = ["L1", "L2", "L3"][i % 3];
                let sku = ["K1", "K2", "K3", "K4"][i % 4];
                receive(
                    &store,
                    &format!("{tag}-{i}"),
                    location,
                    sku,
                    1 + i as i64 % 5,
                )
                .await;
            }
        };
        let publisher = |store: Store| async move {
            let mut published = 0;
            for _ in 0..400 {
                published += store
                    .publish_changes()
                    .await
                    .expect("publish")
                    .changes
                    .len();
                tokio::task::yield_now().await;
            }
            published
        };
        let (_, _, pa, pb) = tokio::join!(
            writer(a.clone(), "a"),
            writer(b.clone(), "b"),
            publisher(a.clone()),
            publisher(b.clone())
        );
        // Whatever is left.
        let mut rest = 0;
        loop {
            let published = a.publish_changes().await.expect("publish");
            rest += published.changes.len();
            if published.rows == 0 {
                break;
            }
        }
        let changes = all_changes(&a).await;
        assert_eq!(changes.len(), pa + pb + rest, "each entry published once");
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        let expected: Vec<i64> = (1..=changes.len() as i64).collect();
        assert_eq!(seqs, expected, "gapless and ascending");
        assert_eq!(a.feed_head().await.expect("head"), changes.len() as i64);
        assert_eq!(a.feed_backlog().await.expect("backlog").rows, 0);

        let mut newest: HashMap<(String, String), &Change> = HashMap::new();
        for change in &changes {
            newest.insert((change.location_id.clone(), change.sku.clone()), change);
        }
        assert_eq!(newest.len(), 12, "every position touched is in the feed");
        for ((location, sku), change) in newest {
            let position = a
                .positions(&sku, Some(&location))
                .await
                .expect("positions")
                .pop()
                .expect("position");
            assert_eq!(change.on_hand, position.figures.on_hand, "{location}/{sku}");
            assert_eq!(
                change.available, position.figures.available,
                "{location}/{sku}"
            );
            assert_eq!(change.safety_stock, 1);
        }

        // Master data moving safety stock moves availability: the feed
        // carries every affected position.
        let head = a.feed_head().await.expect("head");
        seed(&a, &["L1", "L2", "L3"], &["K1"], 4).await;
        loop {
            if a.publish_changes().await.expect("publish").rows == 0 {
                break;
            }
        }
        let moved = a
            .changes(&FeedFilter {
                after: head,
                limit: 1000,
                ..FeedFilter::default()
            })
            .await
            .expect("changes");
        // Every position of the three locations (default 1 → 4).
        assert_eq!(moved.len(), 12, "{moved:?}");
        for change in &moved {
            assert_eq!(change.safety_stock, 4);
            let position = a
                .positions(&change.sku, Some(&change.location_id))
                .await
                .expect("positions")
                .pop()
                .expect("position");
            assert_eq!(change.available, position.figures.available);
        }

        // Filters.
        let k2 = a
            .changes(&FeedFilter {
                after: 0,
                skus: vec!["K2".into()],
                location_ids: vec!["L1".into(), "L3".into()],
                limit: 1000,
            })
            .await
            .expect("filtered");
        assert!(!k2.is_empty());
        assert!(k2.iter().all(|c| c.sku == "K2" && c.location_id != "L2"));
    }
}

#[tokio::test]
async fn one_replica_at_a_time_moves_a_webhook_cursor() {
    use process_api::storage::webhooks::{DeliveryOutcome, NewSubscription};
    use std::time::Duration;
    for (a, b, _) in backends::replica_pairs().await {
        let subscription = a
            .create_subscription(&NewSubscription {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "0123456789abcdef".into(),
                skus: None,
                location_ids: None,
                max_batch: 1,
                start_after: 0,
                actor: "t".into(),
            })
            .await
            .expect("subscription");
        let id = subscription.subscription_id;
        let lease = Duration::from_secs(30);
        let (got_a, got_b) = tokio::join!(
            a.lease_due_subscriptions(10, lease),
            b.lease_due_subscriptions(10, lease)
        );
        let (got_a, got_b) = (got_a.expect("lease a"), got_b.expect("lease b"));
        assert_eq!(got_a.len() + got_b.len(), 1, "one replica holds it");
        let (holder, other, token) = match got_a.first() {
            Some((_, token)) => (&a, &b, *token),
            None => (&b, &a, got_b[0].1),
        };
        // The other replica cannot move it with a token it does not hold.
        let moved = other
            .settle_delivery(
                id,
                token + 1,
                &DeliveryOutcome::Delivered {
                    last_seq: 9,
                    changes: 9,
                },
                lease,
            )
            .await
            .expect("settle");
        assert!(moved.is_none());
        let renewed = holder
            .settle_delivery(
                id,
                token,
                &DeliveryOutcome::Delivered {
                    last_seq: 3,
                    changes: 3,
                },
                lease,
            )
            .await
            .expect("settle")
            .expect("still held");
        // Never backwards, even by the holder.
        let back = holder
            .settle_delivery(
                id,
                renewed,
                &DeliveryOutcome::Delivered {
                    last_seq: 2,
                    changes: 1,
                },
                lease,
            )
            .await
            .expect("settle");
        assert!(back.is_none());
        let now = a.subscription(id).await.expect("read").expect("exists");
        assert_eq!(now.cursor, 3);
        assert_eq!(now.delivered, 3);
    }
}

/// Publishes `n` receipts at distinct positions; returns the seqs given.
async fn publish_receipts(store: &Store, tag: &str, n: usize) -> Vec<i64> {
    let head = store.feed_head().await.expect("head");
    for i in 0..n {
        let location = ["L1", "L2", "L3"][i % 3];
        let sku = ["K1", "K2", "K3", "K4"][i % 4];
        receive(store, &format!("{tag}-{i}"), location, sku, 1).await;
    }
    while store.publish_changes().await.expect("publish").rows > 0 {}
    let seqs: Vec<i64> = all_changes(store)
        .await
        .iter()
        .map(|c| c.seq)
        .filter(|seq| *seq > head)
        .collect();
    assert!(!seqs.is_empty());
    seqs
}

#[tokio::test]
async fn pruning_deletes_an_old_prefix_a_page_at_a_time_and_waits_for_subscribers() {
    use process_api::storage::webhooks::NewSubscription;
    use process_api::storage::{Clock, now_micros};
    for t in backends::all().await {
        let start = now_micros();
        let clock = Clock::manual(start);
        let store = t.store.clone().with_clock(clock.clone());
        seed(&store, &["L1", "L2", "L3"], &["K1", "K2", "K3", "K4"], 0).await;
        let first = publish_receipts(&store, "a", 7).await;
        // A subscriber that has everything up to the first batch.
        store
            .create_subscription(&NewSubscription {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "s".repeat(32),
                skus: None,
                location_ids: None,
                max_batch: 100,
                start_after: *first.last().expect("seq"),
                actor: "t".into(),
            })
            .await
            .expect("subscribe");
        let second = publish_receipts(&store, "b", 5).await;
        clock.set(start + 100_000_000);
        let third = publish_receipts(&store, "c", 3).await;
        let old = start + 50_000_000;
        let kept = |store: Store| async move {
            all_changes(&store)
                .await
                .iter()
                .map(|c| c.seq)
                .collect::<Vec<i64>>()
        };

        // Old entries go only as far as the subscriber has read, pages of
        // 2 at a time; the young ones stay.
        let deleted = store.prune_feed(old, 0, 2).await.expect("prune");
        assert_eq!(deleted, first.len() as u64, "{}", t.name);
        let want: Vec<i64> = second.iter().chain(&third).copied().collect();
        assert_eq!(kept(store.clone()).await, want, "{}", t.name);
        // Past the hard bound they go whatever the subscriber has read.
        let deleted = store.prune_feed(old, old, 2).await.expect("prune");
        assert_eq!(deleted, second.len() as u64, "{}", t.name);
        assert_eq!(kept(store.clone()).await, third, "{}", t.name);
        // Nothing old is left: nothing more goes.
        assert_eq!(store.prune_feed(old, old, 2).await.expect("prune"), 0);
        assert_eq!(kept(store.clone()).await, third, "{}", t.name);
    }
}

/// One batch touching more positions than one figures query reads (the
/// publisher reads them in padded chunks): each position is published
/// exactly once, with its figures.
#[tokio::test]
async fn a_batch_wider_than_one_figures_query_publishes_each_position_once() {
    for backends::TestStore { name, store, .. } in backends::all().await {
        let locations = ["W1", "W2", "W3"];
        let skus: Vec<String> = (0..90).map(|i| format!("P{i:03}")).collect();
        let sku_refs: Vec<&str> = skus.iter().map(String::as_str).collect();
        seed(&store, &locations, &sku_refs, 2).await;
        let events: Vec<EventInput> = skus
            .iter()
            .enumerate()
            .flat_map(|(i, sku)| {
                locations
                    .iter()
                    .enumerate()
                    .map(move |(l, location)| EventInput {
                        event_id: format!("wide-{i}-{l}"),
                        r#type: "receipt".into(),
                        location_id: (*location).into(),
                        sku: sku.clone(),
                        quantity: 1 + (i * 3 + l) as i64 % 7,
                        occurred_at: "2026-11-20T08:00:00Z".into(),
                        source: "test".into(),
                        reference: None,
                        reason: None,
                        counterparty_location_id: None,
                        disposition: None,
                    })
            })
            .collect();
        let (results, _) = store.ingest(&events, &ctx()).await.expect("ingest");
        assert!(results.iter().all(|r| r.status == EventStatus::Applied));
        // Drain whatever seeding and the batch left.
        while store.publish_changes().await.expect("publish").rows > 0 {}
        let changes = all_changes(&store).await;
        let wide: Vec<&Change> = changes
            .iter()
            .filter(|c| c.sku.starts_with('P') && c.on_hand > 0)
            .collect();
        assert_eq!(wide.len(), 270, "{name}: one entry per position");
        for change in wide {
            let expected = events
                .iter()
                .find(|e| e.sku == change.sku && e.location_id == change.location_id)
                .map(|e| e.quantity)
                .expect("event");
            assert_eq!(change.on_hand, expected, "{name}: {change:?}");
            assert_eq!(change.safety_stock, 2, "{name}: {change:?}");
            assert_eq!(
                change.available,
                (expected - 2).max(0),
                "{name}: {change:?}"
            );
        }
    }
}

/// A transfer moves two positions: the batch's entry publishes both, the
/// sender's stock and the receiver's units in transit, on every backend.
#[tokio::test]
async fn a_transfer_publishes_both_of_its_positions() {
    for backends::TestStore { name, store, .. } in backends::all().await {
        seed(&store, &["T1", "T2"], &["TK"], 0).await;
        receive(&store, "transfer-stock", "T1", "TK", 10).await;
        while store.publish_changes().await.expect("publish").rows > 0 {}
        let head = store.feed_head().await.expect("head");
        let transfer = EventInput {
            event_id: "transfer-1".into(),
            r#type: "transfer_out".into(),
            location_id: "T1".into(),
            sku: "TK".into(),
            quantity: 4,
            occurred_at: "2026-11-20T09:00:00Z".into(),
            source: "test".into(),
            reference: None,
            reason: None,
            counterparty_location_id: Some("T2".into()),
            disposition: None,
        };
        let (results, _) = store.ingest(&[transfer], &ctx()).await.expect("ingest");
        assert_eq!(results[0].status, EventStatus::Applied, "{name}");
        while store.publish_changes().await.expect("publish").rows > 0 {}
        let moved: HashMap<String, (i64, i64)> = store
            .changes(&FeedFilter {
                after: head,
                limit: 100,
                ..FeedFilter::default()
            })
            .await
            .expect("changes")
            .into_iter()
            .map(|c| (c.location_id, (c.on_hand, c.in_transit)))
            .collect();
        assert_eq!(
            moved,
            HashMap::from([("T1".to_owned(), (6, 0)), ("T2".to_owned(), (0, 4))]),
            "{name}"
        );
    }
}
