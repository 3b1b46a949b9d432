//! Transfers on every backend: the step transactions journal their events
//! once, keep positions in line with the journal, and refuse steps out of
//! order.

use process_api::storage::ledger::IngestContext;
use process_api::storage::transfers::{NewTransfer, TransferRefusal, TransferStatus};
use rust_decimal::Decimal;

use crate::backends;
use crate::reservations::{figures_full, receive, seed};

fn ctx(actor: &str) -> IngestContext {
    IngestContext {
        actor: actor.into(),
        request_id: "req".into(),
        trace_id: "trace".into(),
        span_id: None,
    }
}

#[tokio::test]
async fn a_transfer_moves_stock_once_on_every_backend() {
    for t in backends::all().await {
        let store = &t.store;
        seed(store, &["A", "B"], &["X"], 0).await;
        receive(store, "r1", "A", "X", 10).await;
        let request = NewTransfer {
            source_location_id: "A".into(),
            destination_location_id: "B".into(),
            lines: vec![("X".into(), 6)],
            reference: None,
            auto_approve_below: Decimal::ONE,
        };
        let transfer = store
            .request_transfer(&request, &ctx("clerk"))
            .await
            .expect("storage")
            .expect("requested");
        assert_eq!(transfer.status, TransferStatus::Requested, "{}", t.name);
        let id = transfer.transfer_id;
        assert!(matches!(
            store
                .ship_transfer(&id, &ctx("clerk"))
                .await
                .expect("storage"),
            Err(TransferRefusal::WrongStatus(TransferStatus::Requested))
        ));
        assert!(matches!(
            store
                .approve_transfer(&id, &ctx("clerk"))
                .await
                .expect("storage"),
            Err(TransferRefusal::SelfApproval)
        ));
        store
            .approve_transfer(&id, &ctx("manager"))
            .await
            .expect("storage")
            .expect("approved");
        for _ in 0..2 {
            store
                .ship_transfer(&id, &ctx("clerk"))
                .await
                .expect("storage")
                .expect("shipped");
        }
        assert_eq!(figures_full(store, "X", "A").await, (4, 0), "{}", t.name);
        assert_eq!(figures_full(store, "X", "B").await, (0, 6), "{}", t.name);
        let received = store
            .receive_transfer(&id, Some(vec![("X".into(), 7)]), &ctx("clerk-b"))
            .await
            .expect("storage")
            .expect("received");
        assert_eq!(received.exceptions[0].difference, 1, "{}", t.name);
        assert_eq!(figures_full(store, "X", "B").await, (7, 0), "{}", t.name);
        // Queued for the ERP once each: the receipt, the shipment (retried
        // once above) and the receipt at B.
        let (postings, _) = store.outbox_lengths().await.expect("outbox");
        assert_eq!(postings, 3, "{}", t.name);
        let ids = [
            format!("transfer:{id}:out:0"),
            format!("transfer:{id}:in:0"),
        ];
        assert_eq!(store.journalled_ids(&ids).await.expect("journal").len(), 2);
        let report = store.rebuild(false).await.expect("rebuild");
        assert_eq!(report.mismatches, 0, "{}: {report:?}", t.name);
    }
}
