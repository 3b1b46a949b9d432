//! Group commit: many requests ingesting at once, with overlapping event
//! ids. On SQLite their batches share transactions; every request still
//! gets its own results, in its own order, each event is applied exactly
//! once overall, and the positions equal a one-request-at-a-time run.

use process_api::storage::ledger::{EventStatus, IngestContext};

use crate::backends;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_transactions_and_keep_their_own_results() {
    const SENDERS: usize = 8;
    let all = crate::replicas::events(800);
    for backend in backends::all().await {
        let store = backend.store.clone();
        crate::replicas::seed(&store).await;
        // Sender k sends every event, starting at its own offset, in
        // batches of 40 (plus an unknown sku, parked, of its own): most of
        // what one sender sends, others send at the same time.
        let mut senders = Vec::new();
        for k in 0..SENDERS {
            let store = store.clone();
            let mut mine = all.clone();
            mine.rotate_left(k * all.len() / SENDERS);
            senders.push(tokio::spawn(async move {
                let ctx = IngestContext {
                    actor: format!("sender-{k}"),
                    request_id: format!("req-{k}"),
                    trace_id: format!("trace-{k}"),
                    span_id: None,
                };
                let mut applied = Vec::new();
                for (n, chunk) in mine.chunks(40).enumerate() {
                    let mut batch = chunk.to_vec();
                    let mut parked = batch[0].clone();
                    parked.event_id = format!("gc-parked-{k}-{n}");
                    parked.sku = format!("UNKNOWN-{k}");
                    parked.counterparty_location_id = None;
                    parked.r#type = "receipt".into();
                    batch.push(parked);
                    let (results, summary) = store.ingest(&batch, &ctx).await.expect("ingest");
                    // Its own results, in its own order.
                    let ids: Vec<&str> = results.iter().map(|r| r.event_id.as_str()).collect();
                    let sent: Vec<&str> = batch.iter().map(|e| e.event_id.as_str()).collect();
                    assert_eq!(ids, sent, "results of another request came back");
                    assert_eq!(
                        results.last().map(|r| r.status),
                        Some(EventStatus::Parked),
                        "this request's own unknown sku"
                    );
                    let count = |status| results.iter().filter(|r| r.status == status).count();
                    assert_eq!(summary.applied, count(EventStatus::Applied));
                    assert_eq!(summary.duplicate, count(EventStatus::Duplicate));
                    assert_eq!(summary.parked, 1);
                    applied.extend(
                        results
                            .into_iter()
                            .filter(|r| r.status == EventStatus::Applied)
                            .map(|r| r.event_id),
                    );
                }
                applied
            }));
        }
        let mut applied = Vec::new();
        for sender in senders {
            applied.extend(sender.await.expect("sender"));
        }
        applied.sort();
        let before = applied.len();
        applied.dedup();
        assert_eq!(
            before,
            applied.len(),
            "{}: an event applied twice",
            backend.name
        );
        assert_eq!(applied.len(), all.len(), "{}: an event lost", backend.name);
        assert_eq!(store.journal_len().await.expect("len"), all.len() as i64);
        assert_eq!(
            store.parked_count().await.expect("parked"),
            (SENDERS * all.len().div_ceil(40)) as i64
        );
        assert_eq!(store.rebuild(false).await.expect("rebuild").mismatches, 0);
        if backend.name == "sqlite" {
            let (transactions, batches) = store.ingest_groups();
            assert!(
                batches > transactions,
                "no transaction carried two requests ({transactions} for {batches})"
            );
        }

        // The same events, one request at a time, in order: same positions
        // (every count and late event resolved alike).
        // (The test store keeps its temporary directory alive.)
        let control = backends::all().await.swap_remove(0);
        let single = &control.store;
        crate::replicas::seed(single).await;
        let ctx = IngestContext {
            actor: "t".into(),
            request_id: "r".into(),
            trace_id: "t".into(),
            span_id: None,
        };
        for batch in all.chunks(40) {
            single.ingest(batch, &ctx).await.expect("single");
        }
        for i in 0..4 {
            let sku = format!("S{i}");
            assert_eq!(
                format!("{:?}", store.position_figures(&sku).await.expect("grouped")),
                format!("{:?}", single.position_figures(&sku).await.expect("single")),
                "{}: {sku}",
                backend.name
            );
        }
    }
}

/// A statement of an ingest transaction that fails after writing part of
/// its rows (here a trigger refuses one journal entry at the end of a
/// batch) leaves nothing of its request behind: no journal entry, no
/// posting, no position change. SQLite writes the ledger with `INSERT OR
/// FAIL` (no statement journal), so this holds only because the failed
/// transaction is rolled back as a whole; a request riding in the same
/// group is still applied, and the failed batch, sent again once the
/// trigger is gone, applies every event (none was kept to come back as a
/// duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_failing_midway_leaves_nothing_of_its_request() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("fail.db").display());
    let store = process_api::storage::Store::connect(&url, 4)
        .await
        .expect("store");
    crate::replicas::seed(&store).await;
    let mut admin = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query(
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON journal WHEN NEW.event_id = 'boom' \
         BEGIN SELECT RAISE(FAIL, 'refused by the test'); END",
    )
    .execute(&mut admin)
    .await
    .expect("trigger");

    let events = crate::replicas::events(60);
    let mut failing = events[..30].to_vec();
    let mut boom = failing[0].clone();
    boom.event_id = "boom".into();
    boom.r#type = "receipt".into();
    boom.counterparty_location_id = None;
    failing.push(boom);
    let good = events[30..].to_vec();
    let ctx = |k: &str| IngestContext {
        actor: k.into(),
        request_id: k.into(),
        trace_id: k.into(),
        span_id: None,
    };
    let (failing_ctx, good_ctx) = (ctx("failing"), ctx("good"));
    let (failed, applied) = tokio::join!(
        store.ingest(&failing, &failing_ctx),
        store.ingest(&good, &good_ctx)
    );
    assert!(failed.is_err(), "the refused batch was acknowledged");
    let (results, _) = applied.expect("the other request");
    assert!(
        results.iter().all(|r| r.status == EventStatus::Applied),
        "{results:?}"
    );
    assert_eq!(store.journal_len().await.expect("len"), good.len() as i64);
    assert_eq!(
        store.outbox_lengths().await.expect("outbox").0,
        good.len() as i64,
        "postings of the refused batch were kept"
    );
    assert_eq!(store.rebuild(false).await.expect("rebuild").mismatches, 0);

    sqlx::query("DROP TRIGGER refuse_boom")
        .execute(&mut admin)
        .await
        .expect("drop trigger");
    let (results, _) = store
        .ingest(&failing, &ctx("again"))
        .await
        .expect("sent again");
    assert!(
        results.iter().all(|r| r.status == EventStatus::Applied),
        "part of the refused batch had been kept: {results:?}"
    );
    assert_eq!(
        store.journal_len().await.expect("len"),
        (good.len() + failing.len()) as i64
    );
    assert_eq!(store.rebuild(false).await.expect("rebuild").mismatches, 0);
    store.close().await;
}
