//! The WMS adapter at system-api: receipts, transfer shipments and
//! receipts, cycle counts become ledger events once.

use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

const SKU: &str = "SKU-000001";

async fn send(app: &TestApp, token: &str, path: &str, body: &Value) -> reqwest::Response {
    app.send_json(
        reqwest::Method::POST,
        Layer::System,
        path,
        token,
        &body.to_string(),
    )
    .await
}

fn document(id: &str, location: &str, other: Option<&str>, at: &str, quantity: i64) -> Value {
    let mut body = json!({ "document_id": id, "location_id": location, "occurred_at": at,
                           "lines": [{ "sku": SKU, "quantity": quantity }] });
    if let Some(other) = other {
        body["counterparty_location_id"] = json!(other);
    }
    body
}

/// (on_hand, in_transit).
async fn figures(app: &TestApp, location: &str) -> (i64, i64) {
    let token = app.token(Layer::Process, "inventory:read");
    let body: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/positions?sku={SKU}&location_id={location}"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    let p = &body["positions"][0];
    (
        p["on_hand"].as_i64().unwrap_or(0),
        p["in_transit"].as_i64().unwrap_or(0),
    )
}

#[tokio::test]
async fn warehouse_documents_move_stock_once() {
    let app = TestApp::spawn().await;
    let wms = app.token(Layer::System, "wms:write");
    let receipt = document("ASN-1", "DC01", None, "2026-11-27T08:00:00Z", 10);
    let first = send(&app, &wms, "/v1/wms/receipts", &receipt).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["events"][0]["event_id"], "wms:asn:DC01:ASN-1:1");
    assert_eq!(first["events"][0]["status"], "applied");
    assert_eq!(figures(&app, "DC01").await, (10, 0));
    // Sent again: the same answer, nothing changes.
    let again: Value = send(&app, &wms, "/v1/wms/receipts", &receipt)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again, first);
    assert_eq!(figures(&app, "DC01").await, (10, 0));

    let shipment = document("SHIP-1", "DC01", Some("S001"), "2026-11-27T09:00:00Z", 4);
    assert_eq!(
        send(&app, &wms, "/v1/wms/shipments", &shipment)
            .await
            .status(),
        200
    );
    assert_eq!(figures(&app, "DC01").await, (6, 0));
    assert_eq!(figures(&app, "S001").await, (0, 4));
    let arrival = document("SHIP-1", "S001", Some("DC01"), "2026-11-27T10:00:00Z", 4);
    assert_eq!(
        send(&app, &wms, "/v1/wms/transfer-receipts", &arrival)
            .await
            .status(),
        200
    );
    assert_eq!(figures(&app, "S001").await, (4, 0));

    let count = document("CC-1", "DC01", None, "2026-11-27T11:00:00Z", 5);
    assert_eq!(
        send(&app, &wms, "/v1/wms/counts", &count).await.status(),
        200
    );
    assert_eq!(figures(&app, "DC01").await, (5, 0));

    // A shipment needs its destination; a receipt has none; binding holds.
    let no_destination = document("SHIP-2", "DC01", None, "2026-11-27T12:00:00Z", 1);
    problem(
        send(&app, &wms, "/v1/wms/shipments", &no_destination).await,
        422,
    )
    .await;
    let stray = document("ASN-2", "DC01", Some("S001"), "2026-11-27T12:00:00Z", 1);
    problem(send(&app, &wms, "/v1/wms/receipts", &stray).await, 422).await;
    let store_only = app.token_for(Layer::System, "wms-s1", "wms:write", Some(&["S001"]));
    let elsewhere = document("ASN-3", "DC01", None, "2026-11-27T12:00:00Z", 1);
    problem(
        send(&app, &store_only, "/v1/wms/receipts", &elsewhere).await,
        403,
    )
    .await;
    let pos_only = app.token(Layer::System, "pos:write");
    problem(
        send(&app, &pos_only, "/v1/wms/receipts", &elsewhere).await,
        403,
    )
    .await;
    assert_eq!(figures(&app, "DC01").await, (5, 0));
}
