//! `Idempotency-Key`s claimed in the transaction of the change they guard
//! (transfers, their steps, reservation closures, webhook registrations),
//! on every backend: the answer is committed with the change, so a retry
//! long past the in-flight lease is answered from the key and changes
//! nothing; a refusal that changes nothing leaves the key free; concurrent
//! retries of one key make one change.

use process_api::storage::idempotency::{Keyed, KeyedWrite};
use process_api::storage::transfers::{Action, NewTransfer, TransferOutcome, TransferRefusal};
use process_api::storage::webhooks::{NewSubscription, Subscription};
use retail_shared::idempotency::{
    Begin, Clock as IdemClock, IdempotencyStore, InlineClaim, StoredResponse,
};
use rust_decimal::Decimal;

use crate::backends;
use crate::reservations::{ctx, figures_full, receive, seed};

const LEASE_MICROS: i64 = 60_000_000;

fn claim_at(key: &str, fingerprint: &str, now: i64) -> InlineClaim {
    InlineClaim::new(
        key.into(),
        fingerprint.into(),
        IdemClock {
            now,
            lease_until: now + LEASE_MICROS,
            expires_at: now + 3_600_000_000,
        },
    )
}

pub fn claim(key: &str, fingerprint: &str) -> InlineClaim {
    claim_at(key, fingerprint, process_api::storage::now_micros())
}

/// The answer kept for a transfer outcome: its id, or the refusal.
fn render(outcome: &TransferOutcome) -> StoredResponse {
    let (status, body) = match outcome {
        Ok(transfer) => (200, transfer.transfer_id.clone()),
        Err(refusal) => (409, format!("{refusal:?}")),
    };
    StoredResponse {
        status,
        content_type: None,
        body: body.into_bytes(),
    }
}

fn transfer(quantity: i64, sku: &str) -> NewTransfer {
    NewTransfer {
        source_location_id: "A".into(),
        destination_location_id: "B".into(),
        lines: vec![(sku.into(), quantity)],
        reference: None,
        // Approved at once: ready to ship.
        auto_approve_below: Decimal::from(1_000_000),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_transfer_keeps_its_answer_with_the_change() {
    for t in backends::all().await {
        let (name, store) = (t.name, &t.store);
        seed(store, &["A", "B"], &["X"], 0).await;
        receive(store, "r1", "A", "X", 10).await;

        let first = claim("clerk|t-1", "fp-1");
        let written = store
            .request_transfer_keyed(
                &transfer(4, "X"),
                &ctx(),
                Some(&KeyedWrite::new(&first, &render)),
            )
            .await
            .expect("request");
        let Keyed::Decided(Ok(made), Some(stored)) = written else {
            panic!("{name}: a new key decides and keeps its answer, got {written:?}");
        };
        assert_eq!(stored.body, made.transfer_id.as_bytes(), "{name}");

        // Past the lease (the first caller long gone), the key answers for
        // itself: the answer was committed with the transfer.
        let later = process_api::storage::now_micros() + 10 * LEASE_MICROS;
        match store
            .begin("clerk|t-1", "fp-1", claim_at("k", "f", later).clock)
            .await
            .expect("begin")
        {
            Begin::Replay(again) => assert_eq!(again, stored, "{name}"),
            other => panic!("{name}: the answer is kept with the change, got {other:?}"),
        }
        match store
            .request_transfer_keyed(
                &transfer(4, "X"),
                &ctx(),
                Some(&KeyedWrite::new(
                    &claim_at("clerk|t-1", "fp-1", later),
                    &render,
                )),
            )
            .await
            .expect("retry")
        {
            Keyed::Key(Begin::Replay(again)) => assert_eq!(again, stored, "{name}"),
            other => panic!("{name}: a retry is answered from the key, got {other:?}"),
        }
        // The same key for another request.
        match store
            .request_transfer_keyed(
                &transfer(5, "X"),
                &ctx(),
                Some(&KeyedWrite::new(&claim("clerk|t-1", "fp-2"), &render)),
            )
            .await
            .expect("reuse")
        {
            Keyed::Key(Begin::Mismatch) => {}
            other => panic!("{name}: a reused key is refused, got {other:?}"),
        }

        // A step keyed the same way ships once, however often it is retried
        // and however many retries race.
        let id = made.transfer_id.clone();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let store = store.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let claim = claim("clerk|ship-1", "fp-ship");
                store
                    .transfer_step(
                        &id,
                        Action::Ship,
                        &ctx(),
                        Some(&KeyedWrite::new(&claim, &render)),
                    )
                    .await
                    .expect("ship")
            }));
        }
        let (mut shipped, mut answered) = (0, 0);
        for task in tasks {
            match task.await.expect("task") {
                Keyed::Decided(Ok(_), Some(_)) => shipped += 1,
                Keyed::Key(Begin::Replay(_) | Begin::InFlight) => answered += 1,
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
        assert_eq!((shipped, answered), (1, 11), "{name}");
        assert_eq!(figures_full(store, "X", "A").await, (6, 0), "{name}");
        assert_eq!(figures_full(store, "X", "B").await, (0, 4), "{name}");
    }
}

#[tokio::test]
async fn a_refusal_that_changes_nothing_leaves_the_key_free() {
    for t in backends::all().await {
        let (name, store) = (t.name, &t.store);
        seed(store, &["A", "B"], &["X"], 0).await;
        let refused = store
            .request_transfer_keyed(
                &transfer(1, "NOPE"),
                &ctx(),
                Some(&KeyedWrite::new(&claim("clerk|t-2", "fp-1"), &render)),
            )
            .await
            .expect("request");
        assert!(
            matches!(
                refused,
                Keyed::Decided(Err(TransferRefusal::Unknown(_)), None)
            ),
            "{name}: {refused:?}"
        );
        // Nothing kept: the key is anyone's (the middleware keeps such an
        // answer the ordinary way).
        assert_eq!(
            store
                .begin("clerk|t-2", "fp-1", claim("k", "f").clock)
                .await
                .expect("begin"),
            Begin::Started,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_keyed_reservation_release_and_webhook_registration_happen_once() {
    use process_api::storage::reservations::{
        CloseOutcome, NewReservation, ReservationLine, ReservationStatus,
    };
    for t in backends::all().await {
        let (name, store) = (t.name, &t.store);
        seed(store, &["A"], &["X"], 0).await;
        receive(store, "r1", "A", "X", 5).await;
        let reservation = store
            .reserve(&NewReservation {
                client_id: "shopper".into(),
                channel: "web".into(),
                order_ref: "o-1".into(),
                lines: vec![ReservationLine {
                    sku: "X".into(),
                    location_id: "A".into(),
                    quantity: 2,
                }],
                ttl_seconds: 600,
                max_active_per_client: 10,
                request_id: "req".into(),
            })
            .await
            .expect("reserve")
            .expect("reserved");
        let id = reservation.reservation_id;
        let closed = |outcome: &CloseOutcome| StoredResponse {
            status: if outcome.is_ok() { 200 } else { 409 },
            content_type: None,
            body: format!("{:?}", outcome.as_ref().map(|r| r.status)).into_bytes(),
        };
        let mut answers = Vec::new();
        for _ in 0..2 {
            let claim = claim("shopper|rel-1", "fp-rel");
            answers.push(
                store
                    .end_reservation(
                        &id,
                        "shopper",
                        ReservationStatus::Released,
                        None,
                        Some(&KeyedWrite::new(&claim, &closed)),
                    )
                    .await
                    .expect("release"),
            );
        }
        let [
            Keyed::Decided(Ok(_), Some(first)),
            Keyed::Key(Begin::Replay(second)),
        ] = answers.as_slice()
        else {
            panic!("{name}: released once, then answered from the key: {answers:?}");
        };
        assert_eq!(first, second, "{name}");

        let registered = |made: &Subscription| StoredResponse {
            status: 201,
            content_type: None,
            body: made.subscription_id.to_string().into_bytes(),
        };
        let new = NewSubscription {
            url: "http://127.0.0.1:9/hook".into(),
            secret: "whsec_test".into(),
            skus: None,
            location_ids: None,
            max_batch: 1,
            start_after: 0,
            actor: "ops".into(),
        };
        let before = store.subscriptions().await.expect("list").len();
        for attempt in 0..3 {
            let claim = claim("ops|hook-1", "fp-hook");
            let written = store
                .create_subscription_keyed(&new, Some(&KeyedWrite::new(&claim, &registered)))
                .await
                .expect("register");
            match (attempt, written) {
                (0, Keyed::Decided(made, Some(_))) => {
                    assert_eq!(made.secret.as_deref(), Some("whsec_test"), "{name}");
                }
                (_, Keyed::Key(Begin::Replay(_))) if attempt > 0 => {}
                (_, other) => panic!("{name}: attempt {attempt}: {other:?}"),
            }
        }
        let after = store.subscriptions().await.expect("list").len();
        assert_eq!(after, before + 1, "{name}: one subscriber registered");

        // Resuming: answered from the key the second time; a subscriber
        // that does not exist changes nothing and leaves its key free.
        let id = store.subscriptions().await.expect("list")[before].subscription_id;
        let resumed = |found: &Option<Subscription>| StoredResponse {
            status: if found.is_some() { 200 } else { 404 },
            content_type: None,
            body: Vec::new(),
        };
        for attempt in 0..2 {
            let claim = claim("ops|resume-1", "fp-resume");
            let written = store
                .resume_subscription_keyed(id, Some(&KeyedWrite::new(&claim, &resumed)))
                .await
                .expect("resume");
            match (attempt, written) {
                (0, Keyed::Decided(Some(_), Some(_))) | (1, Keyed::Key(Begin::Replay(_))) => {}
                (_, other) => panic!("{name}: resume attempt {attempt}: {other:?}"),
            }
        }
        let missing = claim("ops|resume-2", "fp-missing");
        let written = store
            .resume_subscription_keyed(id + 1000, Some(&KeyedWrite::new(&missing, &resumed)))
            .await
            .expect("resume");
        assert!(
            matches!(written, Keyed::Decided(None, None)),
            "{name}: {written:?}"
        );
        let removed =
            |letter: &Option<process_api::storage::webhooks::DeadLetter>| StoredResponse {
                status: if letter.is_some() { 200 } else { 404 },
                content_type: None,
                body: Vec::new(),
            };
        let gone = claim("ops|discard-1", "fp-discard");
        let written = store
            .remove_dead_letter_keyed(id, 1, Some(&KeyedWrite::new(&gone, &removed)))
            .await
            .expect("discard");
        assert!(
            matches!(written, Keyed::Decided(None, None)),
            "{name}: {written:?}"
        );
    }
}

/// A promise tries its options one by one, each a keyed reservation whose
/// refusal is not the promise's answer: such an attempt leaves the key
/// free for the next, and the one that fits keeps its answer.
#[tokio::test]
async fn a_reservation_attempt_that_is_not_the_answer_leaves_the_key_free() {
    use process_api::storage::reservations::{
        Keyed as ReservationKeyed, NewReservation, Outcome, Render, ReservationLine,
    };
    for t in backends::all().await {
        let (name, store) = (t.name, &t.store);
        seed(store, &["A", "B"], &["X"], 0).await;
        receive(store, "r1", "B", "X", 5).await;
        let at = |location: &str| NewReservation {
            client_id: "shopper".into(),
            channel: "web".into(),
            order_ref: "o-1".into(),
            lines: vec![ReservationLine {
                sku: "X".into(),
                location_id: location.into(),
                quantity: 3,
            }],
            ttl_seconds: 600,
            max_active_per_client: 10,
            request_id: "req".into(),
        };
        let only_made: Render = std::sync::Arc::new(|outcome: &Outcome| {
            outcome.as_ref().ok().map(|made| StoredResponse {
                status: 200,
                content_type: None,
                body: made.reservation_id.clone().into_bytes(),
            })
        });
        let key = || claim("shopper|promise-1", "fp-p");
        // A has nothing: refused, and the key stays free.
        let first = store
            .reserve_keyed(&at("A"), Some((&key(), only_made.clone())))
            .await
            .expect("A");
        assert!(
            matches!(first, ReservationKeyed::Decided(Err(_), None)),
            "{name}: {first:?}"
        );
        // B fits: reserved, with the answer kept under the same key.
        let second = store
            .reserve_keyed(&at("B"), Some((&key(), only_made.clone())))
            .await
            .expect("B");
        let ReservationKeyed::Decided(Ok(made), Some(stored)) = second else {
            panic!("{name}: the option that fits keeps its answer: {second:?}");
        };
        assert_eq!(stored.body, made.reservation_id.as_bytes(), "{name}");
        // A retry of the promise is answered from the key.
        match store
            .reserve_keyed(&at("A"), Some((&key(), only_made)))
            .await
            .expect("retry")
        {
            ReservationKeyed::Key(Begin::Replay(again)) => assert_eq!(again, stored, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}
