//! Order promising through experience-api: the nearest capable store with
//! stock for click-and-collect; a split only when no single node serves;
//! reserve-on-promise.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

async fn locations(app: &TestApp) {
    let token = app.token(Layer::Process, "master:write");
    let node = |id: &str, kind: &str, lat: f64, caps: &[&str]| {
        json!({ "location_id": id, "name": id, "type": kind, "latitude": lat,
                "longitude": 4.0, "capabilities": caps, "safety_stock_default": 0 })
    };
    let body = json!({ "locations": [
        node("C1", "store", 52.05, &["click_and_collect"]),
        node("C2", "store", 52.10, &["click_and_collect", "ship_from_store"]),
        node("C3", "store", 52.001, &[]),
        node("W1", "warehouse", 52.5, &[]),
        node("W2", "warehouse", 53.0, &[]),
    ]});
    let response = app
        .send_json(
            Method::PUT,
            Layer::Process,
            "/v1/master/locations",
            &token,
            &body.to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
}

async fn stock(app: &TestApp, id: &str, location: &str, sku: &str, quantity: i64) {
    let token = app.token(Layer::Process, "inventory:write");
    let body = json!({ "events": [{
        "event_id": id, "type": "receipt", "location_id": location, "sku": sku,
        "quantity": quantity, "occurred_at": "2026-11-20T08:00:00Z", "source": "e2e"
    }]});
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/inventory/events",
            &token,
            &body.to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
}

async fn promise(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.send_json(
        Method::POST,
        Layer::Experience,
        "/v1/promise",
        token,
        &body.to_string(),
    )
    .await
}

fn nodes_of(option: &Value) -> Vec<String> {
    option["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["location_id"].as_str().map(str::to_owned))
        .collect()
}

const A: &str = "SKU-000001";
const B: &str = "SKU-000002";

#[tokio::test]
async fn click_and_collect_picks_the_nearest_capable_store_with_stock() {
    let app = TestApp::spawn().await;
    locations(&app).await;
    stock(&app, "c3", "C3", A, 9).await; // nearest, but no click-and-collect
    stock(&app, "c1", "C1", A, 1).await; // capable, near, too few
    stock(&app, "c2", "C2", A, 5).await;
    let token = app.token(Layer::Experience, "availability:read reservations:write");
    let ask = json!({ "lines": [{ "sku": A, "quantity": 2 }], "method": "click_and_collect",
                      "customer": { "latitude": 52.0, "longitude": 4.0 } });
    let body: Value = promise(&app, &token, ask.clone())
        .await
        .json()
        .await
        .expect("json");
    let options = body["options"].as_array().expect("options");
    assert_eq!(options.len(), 1, "{body}");
    assert_eq!(nodes_of(&options[0]), ["C2"]);
    assert!(
        options[0]["nodes"][0]["distance_km"]
            .as_f64()
            .is_some_and(|d| d > 10.0)
    );

    // With stock, the nearer capable store ranks first.
    stock(&app, "c1-more", "C1", A, 2).await;
    let body: Value = promise(&app, &token, ask.clone())
        .await
        .json()
        .await
        .expect("json");
    let ranked: Vec<Vec<String>> = body["options"]
        .as_array()
        .expect("options")
        .iter()
        .map(nodes_of)
        .collect();
    assert_eq!(ranked, [vec!["C1".to_owned()], vec!["C2".to_owned()]]);

    // Reserve on promise: the best option is held.
    let mut reserve = ask.clone();
    reserve["reserve"] = json!(true);
    reserve["channel"] = json!("web");
    reserve["order_ref"] = json!("cart-cc");
    let body: Value = promise(&app, &token, reserve.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["reservation"]["status"], "active", "{body}");
    assert_eq!(body["reservation"]["lines"][0]["location_id"], "C1");
    // C1 now has 1 free; the next promise goes to C2.
    let body: Value = promise(&app, &token, ask.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(nodes_of(&body["options"][0]), ["C2"]);

    // Click-and-collect is never split; nothing fits → no options, and
    // reserving answers 409.
    let mut big = reserve.clone();
    big["lines"][0]["quantity"] = json!(7);
    let refused = problem(promise(&app, &token, big.clone()).await, 409).await;
    assert!(
        refused["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("insufficient-stock"))
    );
    big["reserve"] = json!(false);
    let body: Value = promise(&app, &token, big).await.json().await.expect("json");
    assert_eq!(body["options"], json!([]));

    // Reserving needs the scope; bad input is a 422.
    let reader = app.token(Layer::Experience, "availability:read");
    problem(promise(&app, &reader, reserve).await, 403).await;
    let mut bad = ask.clone();
    bad["customer"]["latitude"] = json!(123.0);
    problem(promise(&app, &token, bad).await, 422).await;
    let mut unknown = ask;
    unknown["lines"][0]["sku"] = json!("NOPE");
    problem(promise(&app, &token, unknown).await, 422).await;
}

#[tokio::test]
async fn shipping_splits_only_when_no_single_node_can_serve() {
    let app = TestApp::spawn().await;
    locations(&app).await;
    stock(&app, "w1a", "W1", A, 3).await;
    stock(&app, "w2a", "W2", A, 1).await;
    stock(&app, "w2b", "W2", B, 2).await;
    stock(&app, "c2b", "C2", B, 9).await; // a store: not a `ship` node
    let token = app.token(Layer::Experience, "availability:read");
    let ask = json!({ "lines": [{ "sku": A, "quantity": 3 }, { "sku": B, "quantity": 2 }],
                      "method": "ship", "customer": { "latitude": 52.0, "longitude": 4.0 } });
    let body: Value = promise(&app, &token, ask.clone())
        .await
        .json()
        .await
        .expect("json");
    let options = body["options"].as_array().expect("options");
    assert_eq!(options.len(), 1, "{body}");
    assert_eq!(options[0]["split"], true);
    assert_eq!(nodes_of(&options[0]), ["W1", "W2"]);
    assert_eq!(
        options[0]["nodes"][0]["lines"],
        json!([{ "sku": A, "quantity": 3 }])
    );
    assert_eq!(
        options[0]["nodes"][1]["lines"],
        json!([{ "sku": B, "quantity": 2 }])
    );

    // Once one node has everything, no split is offered.
    stock(&app, "w2a-more", "W2", A, 2).await;
    let body: Value = promise(&app, &token, ask).await.json().await.expect("json");
    let options = body["options"].as_array().expect("options");
    assert_eq!(options.len(), 1, "{body}");
    assert_eq!(options[0]["split"], false);
    assert_eq!(nodes_of(&options[0]), ["W2"]);

    // Ship-from-store uses the stores that offer it.
    let body: Value = promise(
        &app,
        &token,
        json!({ "lines": [{ "sku": B, "quantity": 1 }], "method": "ship_from_store",
                "customer": { "latitude": 52.0, "longitude": 4.0 } }),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(nodes_of(&body["options"][0]), ["C2"]);
}

/// The JSON pointers of a validation problem's errors.
fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn reserving_on_promise_keeps_to_the_reservation_caps() {
    let app = TestApp::spawn_with(|s| {
        s.reservations.max_units_per_line = 10;
        s.reservations.max_units_per_order = 15;
    })
    .await;
    locations(&app).await;
    stock(&app, "w1a", "W1", A, 50).await;
    stock(&app, "w1b", "W1", B, 50).await;
    let token = app.token(Layer::Experience, "availability:read reservations:write");

    // 20 units in all: the reservation route refuses them at W1...
    let direct = json!({ "channel": "web", "order_ref": "cart-caps", "lines": [
        { "sku": A, "location_id": "W1", "quantity": 10 },
        { "sku": B, "location_id": "W1", "quantity": 10 },
    ]});
    let direct = app
        .send_json(
            Method::POST,
            Layer::Experience,
            "/v1/reservations",
            &token,
            &direct.to_string(),
        )
        .await;
    let direct = problem(direct, 422).await;

    // ...and so does a promise that would reserve them there, with the
    // same problem, holding nothing.
    let mut ask = json!({ "lines": [{ "sku": A, "quantity": 10 }, { "sku": B, "quantity": 10 }],
                          "method": "ship", "customer": { "latitude": 52.0, "longitude": 4.0 },
                          "reserve": true, "channel": "web", "order_ref": "cart-caps" });
    let refused = problem(promise(&app, &token, ask.clone()).await, 422).await;
    assert_eq!(refused["type"], direct["type"], "{refused}");
    assert_eq!(pointers(&refused), pointers(&direct), "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("at most 15 per reservation")),
        "{refused}"
    );
    for sku in [A, B] {
        assert_eq!(crate::reservations::available(&app, sku, "W1").await, 50);
    }

    // Within the caps the same promise reserves.
    ask["lines"][1]["quantity"] = json!(5);
    let body: Value = promise(&app, &token, ask).await.json().await.expect("json");
    assert_eq!(body["reservation"]["status"], "active", "{body}");
    assert_eq!(crate::reservations::available(&app, B, "W1").await, 45);
}
