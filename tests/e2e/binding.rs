//! Location binding on the operations routes: a token bound to S001 with
//! `ops:*` sees and acts on S001's postings, exceptions and parked events
//! only, and is refused the reports and actions that span every location.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::erp::{quick_pipeline, set_faults, wait_for};
use crate::helpers::{Layer, TestApp, problem};

/// Posts inventory events (unbound token); each must be applied or parked.
async fn send_events(app: &TestApp, events: &[Value]) {
    let token = app.token(Layer::Process, "inventory:write");
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/inventory/events",
            &token,
            &json!({ "events": events }).to_string(),
        )
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

fn receipt(event_id: &str, location: &str, sku: &str, quantity: i64) -> Value {
    json!({"event_id": event_id, "type": "receipt", "location_id": location, "sku": sku,
           "quantity": quantity, "occurred_at": "2026-11-20T10:00:00Z", "source": "binding-test"})
}

async fn get_json(app: &TestApp, layer: Layer, path: &str, token: &str) -> Value {
    let response = app.get(layer, path, Some(token)).await;
    assert_eq!(
        response.status(),
        200,
        "{path}: {:?}",
        response.text().await
    );
    response.json().await.expect("json")
}

async fn post(app: &TestApp, path: &str, token: &str, body: &str) -> reqwest::Response {
    app.send_json(Method::POST, Layer::Process, path, token, body)
        .await
}

/// Every posting of the outbox, as an unbound operator sees it.
async fn all_postings(app: &TestApp) -> Vec<Value> {
    let token = app.token(Layer::Process, "ops:read");
    let body = get_json(app, Layer::Process, "/v1/ops/postings?limit=1000", &token).await;
    body["postings"].as_array().cloned().unwrap_or_default()
}

/// Open exceptions as the token sees them.
async fn open_exceptions(app: &TestApp, token: &str) -> Vec<Value> {
    let path = "/v1/ops/reconciliation/exceptions?status=open";
    let body = get_json(app, Layer::Process, path, token).await;
    body["exceptions"].as_array().cloned().unwrap_or_default()
}

async fn s002_positions(app: &TestApp) -> Value {
    let token = app.token(Layer::Process, "inventory:read");
    get_json(
        app,
        Layer::Process,
        "/v1/inventory/locations/S002/positions",
        &token,
    )
    .await
}

fn posting_at<'a>(postings: &'a [Value], location: &str) -> &'a Value {
    postings
        .iter()
        .find(|p| p["location_id"] == location)
        .unwrap_or_else(|| panic!("a posting at {location}: {postings:?}"))
}

#[tokio::test]
async fn a_bound_operator_lists_and_resolves_only_its_locations_postings() {
    // Arrange: the ERP refuses the product, so one posting at S002 (sent
    // first, so it has the lower id) and one at S001 go dead.
    let app = TestApp::spawn_with(quick_pipeline).await;
    let sku = "SKU-000003";
    set_faults(&app, json!({"reject_skus": [sku]})).await;
    send_events(&app, &[receipt("bind-p1", "S002", sku, 5)]).await;
    send_events(&app, &[receipt("bind-p2", "S001", sku, 7)]).await;
    wait_for(&app, Duration::from_secs(30), "two dead postings", |h| {
        h["postings"]["dead"] == 2
    })
    .await;
    let before = all_postings(&app).await;
    let theirs = posting_at(&before, "S002").clone();
    let ours = posting_at(&before, "S001").clone();
    let bound = app.token_for(
        Layer::Process,
        "ops-S001",
        "ops:read ops:write",
        Some(&["S001"]),
    );

    // Lists: only S001's postings, and whole pages (S002's posting comes
    // first in posting order, yet the first page of one holds S001's).
    let listed = get_json(&app, Layer::Process, "/v1/ops/postings?limit=1000", &bound).await;
    let listed = listed["postings"].as_array().cloned().unwrap_or_default();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|p| p["location_id"] == "S001"),
        "{listed:?}"
    );
    let dead = get_json(
        &app,
        Layer::Process,
        "/v1/ops/postings?status=dead&limit=1",
        &bound,
    )
    .await;
    assert_eq!(
        dead["postings"][0]["posting_id"], ours["posting_id"],
        "{dead}"
    );
    assert_eq!(dead["postings"].as_array().map(Vec::len), Some(1));
    let response = app
        .get(
            Layer::Process,
            "/v1/ops/postings?location_id=S002",
            Some(&bound),
        )
        .await;
    problem(response, 403).await;

    // Act on S002's posting: refused, and nothing changes.
    let id = theirs["posting_id"].as_i64().expect("id");
    let response = post(&app, &format!("/v1/ops/postings/{id}/replay"), &bound, "").await;
    problem(response, 403).await;
    let response = post(
        &app,
        &format!("/v1/ops/postings/{id}/discard"),
        &bound,
        r#"{"note":"not mine"}"#,
    )
    .await;
    problem(response, 403).await;
    let after = all_postings(&app).await;
    assert_eq!(
        posting_at(&after, "S002"),
        &theirs,
        "S002's posting unchanged"
    );

    // Its own posting: replayed, and delivered once the ERP takes it.
    set_faults(&app, json!({})).await;
    let id = ours["posting_id"].as_i64().expect("id");
    let response = post(&app, &format!("/v1/ops/postings/{id}/replay"), &bound, "").await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let started = Instant::now();
    loop {
        let postings = all_postings(&app).await;
        if posting_at(&postings, "S001")["status"] == "posted" {
            assert_eq!(posting_at(&postings, "S002")["status"], "dead");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{postings:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_bound_operator_reviews_only_its_locations_exceptions() {
    // Arrange: postings at S001 and S002 delivered, then the ERP changed by
    // hand at both; every difference waits for review.
    let app = TestApp::spawn_with(|s| {
        quick_pipeline(s);
        s.reconciliation.review_above = "0.00".parse().expect("decimal");
    })
    .await;
    let sku = "SKU-000004";
    send_events(
        &app,
        &[
            receipt("bind-r1", "S001", sku, 10),
            receipt("bind-r2", "S002", sku, 10),
        ],
    )
    .await;
    wait_for(&app, Duration::from_secs(30), "delivery", |h| {
        let p = &h["postings"];
        p["pending"] == 0 && p["in_flight"] == 0 && p["posted"] == 2
    })
    .await;
    let system_ops = app.token(Layer::System, "ops:write");
    for store in ["S001", "S002"] {
        let response = app
            .send_json(
                Method::POST,
                Layer::System,
                "/v1/erp/sandbox/stock-corrections",
                &system_ops,
                &json!({"location_id": store, "sku": sku, "quantity": 50}).to_string(),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let ops_write = app.token(Layer::Process, "ops:write");
    let response = post(&app, "/v1/ops/reconciliation/runs", &ops_write, "").await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let ops_read = app.token(Layer::Process, "ops:read");
    let everything = open_exceptions(&app, &ops_read).await;
    assert_eq!(everything.len(), 2, "{everything:?}");
    let at = |location: &str| {
        everything
            .iter()
            .find(|e| e["location_id"] == location)
            .cloned()
            .expect("exception")
    };
    let (ours, theirs) = (at("S001"), at("S002"));
    let bound = app.token_for(
        Layer::Process,
        "ops-S001",
        "ops:read ops:write",
        Some(&["S001"]),
    );

    // The bound operator's queue holds S001's exception only.
    let queue = open_exceptions(&app, &bound).await;
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["exception_id"], ours["exception_id"]);

    // S002's exception: approving and rejecting are refused; it stays open
    // and S002's stock is not adjusted.
    let stock_before = s002_positions(&app).await;
    let id = theirs["exception_id"].as_i64().expect("id");
    let response = post(
        &app,
        &format!("/v1/ops/reconciliation/exceptions/{id}/approve"),
        &bound,
        "",
    )
    .await;
    problem(response, 403).await;
    let response = post(
        &app,
        &format!("/v1/ops/reconciliation/exceptions/{id}/reject"),
        &bound,
        r#"{"note":"not mine"}"#,
    )
    .await;
    problem(response, 403).await;
    let still = open_exceptions(&app, &ops_read).await;
    assert_eq!(
        still.iter().find(|e| e["exception_id"] == id),
        Some(&theirs),
        "S002's exception unchanged"
    );
    assert_eq!(
        s002_positions(&app).await,
        stock_before,
        "S002's stock unchanged"
    );

    // Its own exception: approved.
    let id = ours["exception_id"].as_i64().expect("id");
    let response = post(
        &app,
        &format!("/v1/ops/reconciliation/exceptions/{id}/approve"),
        &bound,
        "",
    )
    .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let approved: Value = response.json().await.expect("json");
    assert_eq!(approved["status"], "corrected");

    // A run spans every location: refused to the bound operator.
    let response = post(&app, "/v1/ops/reconciliation/runs", &bound, "").await;
    problem(response, 403).await;
    let response = app
        .get(Layer::Process, "/v1/ops/reconciliation/runs", Some(&bound))
        .await;
    problem(response, 403).await;
}

#[tokio::test]
async fn a_bound_operator_sees_only_its_parked_events_and_no_global_report() {
    // Arrange: an unknown product parks one event at S001 and one at S002.
    let app = TestApp::spawn().await;
    send_events(
        &app,
        &[
            receipt("bind-k1", "S002", "UNKNOWN-1", 1),
            receipt("bind-k2", "S001", "UNKNOWN-1", 1),
        ],
    )
    .await;
    let bound = app.token_for(
        Layer::Process,
        "ops-S001",
        "ops:read ops:write",
        Some(&["S001"]),
    );

    let parked = get_json(&app, Layer::Process, "/v1/inventory/parked", &bound).await;
    let events = parked["parked"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{parked}");
    assert_eq!(events[0]["event_id"], "bind-k2");
    assert_eq!(parked["total"], 1);
    let unbound = app.token(Layer::Process, "ops:read");
    let parked = get_json(&app, Layer::Process, "/v1/inventory/parked", &unbound).await;
    assert_eq!(parked["total"], 2);

    // Reports and actions over every location are refused.
    for path in [
        "/v1/ops/sync-health",
        "/v1/ops/sync-health/stream",
        "/v1/ops/webhooks",
        "/v1/ops/audit",
    ] {
        let response = app.get(Layer::Process, path, Some(&bound)).await;
        assert_eq!(response.status(), 403, "{path}");
    }
    for path in [
        "/v1/inventory/parked/replay",
        "/v1/ops/erp/master-sync",
        "/v1/ops/rebuild",
    ] {
        let response = post(&app, path, &bound, "").await;
        assert_eq!(response.status(), 403, "{path}");
    }
    let system_bound = app.token_for(
        Layer::System,
        "ops-S001",
        "ops:read ops:write",
        Some(&["S001"]),
    );
    let response = app
        .get(Layer::System, "/v1/erp/sandbox/faults", Some(&system_bound))
        .await;
    assert_eq!(response.status(), 403);
    let response = app
        .get(
            Layer::System,
            "/v1/erp/sandbox/records?location_id=S002",
            Some(&system_bound),
        )
        .await;
    assert_eq!(response.status(), 403);
    let response = app
        .get(
            Layer::System,
            "/v1/erp/sandbox/records",
            Some(&system_bound),
        )
        .await;
    assert_eq!(response.status(), 200);
}
