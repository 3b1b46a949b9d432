//! ARTS POSLog XML at system-api: sales and returns reach the ledger, voids
//! are skipped, a re-sent document changes nothing, malformed XML says
//! where.

use serde_json::Value;

use crate::helpers::{Layer, TestApp, problem};

const DOC: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/">
  <Transaction>
    <RetailStoreID>S001</RetailStoreID>
    <WorkstationID>T01</WorkstationID>
    <SequenceNumber>1001</SequenceNumber>
    <EndDateTime>2026-11-27T10:15:00</EndDateTime>
    <RetailTransaction>
      <LineItem><Sale><ItemID>SKU-000001</ItemID><Quantity>2</Quantity></Sale></LineItem>
      <LineItem VoidFlag="true"><Sale><ItemID>SKU-000001</ItemID><Quantity>7</Quantity></Sale></LineItem>
      <LineItem><Return><ItemID>SKU-000002</ItemID><Quantity>1</Quantity></Return></LineItem>
    </RetailTransaction>
  </Transaction>
  <Transaction CancelFlag="true">
    <RetailStoreID>S001</RetailStoreID><WorkstationID>T01</WorkstationID>
    <SequenceNumber>1002</SequenceNumber><EndDateTime>2026-11-27T10:20:00Z</EndDateTime>
    <RetailTransaction><LineItem><Sale><ItemID>SKU-000001</ItemID><Quantity>5</Quantity></Sale></LineItem></RetailTransaction>
  </Transaction>
</POSLog>"#;

async fn send(app: &TestApp, token: &str, content_type: &str, body: &str) -> reqwest::Response {
    app.http
        .post(app.url(Layer::System, "/v1/pos/poslog"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("sent")
}

async fn on_hand(app: &TestApp, sku: &str) -> i64 {
    let token = app.token(Layer::Process, "inventory:read");
    let body: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/positions?sku={sku}&location_id=S001"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    body["positions"][0]["on_hand"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn a_poslog_document_becomes_events_once() {
    let app = TestApp::spawn().await;
    let till = app.token_for(Layer::System, "till-1", "pos:write", Some(&["S001"]));
    let response = send(&app, &till, "application/xml", DOC).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["skipped_transactions"], 1, "{body}");
    assert_eq!(body["skipped_lines"], 1);
    let events = body["transactions"][0]["events"]
        .as_array()
        .expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_id"], "pos:S001:T01:1001:1");
    assert_eq!(events[0]["status"], "applied");
    assert_eq!(on_hand(&app, "SKU-000001").await, -2);
    assert_eq!(on_hand(&app, "SKU-000002").await, 1);

    // The same document again: duplicates, nothing changes.
    let again: Value = send(&app, &till, "text/xml", DOC)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["transactions"][0]["events"][0]["status"], "duplicate");
    assert_eq!(on_hand(&app, "SKU-000001").await, -2);

    // Malformed: where it broke; not XML: 415; another store: 403.
    let broken = DOC.replace(
        "</RetailStoreID>\n    <WorkstationID>",
        "</Nope>\n    <WorkstationID>",
    );
    let problem_body = problem(send(&app, &till, "application/xml", &broken).await, 422).await;
    assert_eq!(problem_body["line"], 4, "{problem_body}");
    assert!(problem_body["column"].as_u64().is_some());
    problem(send(&app, &till, "application/json", DOC).await, 415).await;
    let other = app.token_for(Layer::System, "till-2", "pos:write", Some(&["S002"]));
    problem(send(&app, &other, "application/xml", DOC).await, 403).await;
    assert_eq!(on_hand(&app, "SKU-000001").await, -2);
}
