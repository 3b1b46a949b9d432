//! Store traffic in at system-api, availability out at experience-api:
//! the three layers end to end.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

fn basket(txn: &str, lines: Value) -> String {
    json!({
        "store_id": "S001", "terminal_id": "T01", "transaction_id": txn,
        "occurred_at": "2026-11-20T12:00:00Z", "lines": lines
    })
    .to_string()
}

async fn receive(app: &TestApp, sku: &str, location: &str, quantity: i64) {
    let token = app.token(Layer::Process, "inventory:write");
    let body = json!({"events": [{
        "event_id": format!("rcv-{sku}-{location}"), "type": "receipt", "location_id": location,
        "sku": sku, "quantity": quantity, "occurred_at": "2026-11-20T08:00:00Z", "source": "wms"
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

#[tokio::test]
async fn a_pos_sale_at_system_api_shows_in_availability_at_experience_api() {
    let app = TestApp::spawn().await;
    receive(&app, "SKU-000005", "S001", 10).await;
    receive(&app, "SKU-000005", "S002", 4).await;
    let pos = app.token_for(Layer::System, "till-S001", "pos:write", Some(&["S001"]));
    let response = app
        .send_json(
            Method::POST,
            Layer::System,
            "/v1/pos/transactions",
            &pos,
            &basket(
                "000123",
                json!([{"sku": "SKU-000005", "quantity": 3, "kind": "sale"}]),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["events"][0]["event_id"], "pos:S001:T01:000123:1");
    assert_eq!(body["events"][0]["status"], "applied");

    // The same transaction again: nothing changes; the original answer
    // (same event ids) is replayed.
    let again: Value = app
        .send_json(
            Method::POST,
            Layer::System,
            "/v1/pos/transactions",
            &pos,
            &basket(
                "000123",
                json!([{"sku": "SKU-000005", "quantity": 3, "kind": "sale"}]),
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["events"], body["events"]);
    // The same transaction id with a different basket is refused.
    let reused = app
        .send_json(
            Method::POST,
            Layer::System,
            "/v1/pos/transactions",
            &pos,
            &basket(
                "000123",
                json!([{"sku": "SKU-000005", "quantity": 9, "kind": "sale"}]),
            ),
        )
        .await;
    problem(reused, 422).await;

    let channel = app.token(Layer::Experience, "availability:read");
    let response = app
        .get(
            Layer::Experience,
            "/v1/availability/SKU-000005",
            Some(&channel),
        )
        .await;
    assert_eq!(response.status(), 200);
    let availability: Value = response.json().await.expect("json");
    // S001: 10 - 3 sold - 1 safety stock; S002: 4 - 1 safety stock.
    assert_eq!(availability["total_available"], 9);
    assert_eq!(
        availability["locations"],
        json!([{"location_id": "S001", "available": 6}, {"location_id": "S002", "available": 3}])
    );
    let only_s002: Value = app
        .get(
            Layer::Experience,
            "/v1/availability/SKU-000005?locations=S002",
            Some(&channel),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(only_s002["total_available"], 3);
    problem(
        app.get(
            Layer::Experience,
            "/v1/availability/NO-SUCH-SKU",
            Some(&channel),
        )
        .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn the_batch_query_answers_every_sku_in_order() {
    let app = TestApp::spawn().await;
    receive(&app, "SKU-000006", "S003", 5).await;
    let channel = app.token(Layer::Experience, "availability:read");
    let response = app
        .send_json(
            Method::POST,
            Layer::Experience,
            "/v1/availability/query",
            &channel,
            r#"{"skus":["SKU-000007","SKU-000006","NOPE"]}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items[0]["sku"], "SKU-000007");
    assert_eq!(items[0]["total_available"], 0);
    assert_eq!(items[1]["total_available"], 4);
    assert_eq!(items[2]["known"], false);
}

#[tokio::test]
async fn a_malformed_request_to_each_service_is_a_problem_with_a_pointer() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            Layer::Experience,
            app.token(Layer::Experience, "availability:read"),
            "/v1/availability/query",
            r#"{"skus":["A"],"colour":"red"}"#,
            "/colour",
        ),
        (
            Layer::Process,
            app.token(Layer::Process, "inventory:write"),
            "/v1/inventory/events",
            r#"{"events":[{"event_id":"x","type":"sale","location_id":"S001","sku":"A","quantity":"two","occurred_at":"2026-11-20T12:00:00Z","source":"t"}]}"#,
            "/events/0/quantity",
        ),
        (
            Layer::System,
            app.token(Layer::System, "pos:write"),
            "/v1/pos/transactions",
            &basket("1", json!([{"sku": "A", "quantity": 1, "kind": "refund"}])),
            "/lines/0/kind",
        ),
    ];
    for (layer, token, path, body, pointer) in cases {
        let response = app.send_json(Method::POST, layer, path, &token, body).await;
        let problem = problem(response, 422).await;
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{layer:?}");
        let response = app
            .send_json(Method::POST, layer, path, &token, "{\"not json")
            .await;
        problem_with_status(response, 400).await;
    }
}

async fn problem_with_status(response: reqwest::Response, status: u16) {
    problem(response, status).await;
}

#[tokio::test]
async fn a_till_token_cannot_post_for_another_store() {
    let app = TestApp::spawn().await;
    let pos = app.token_for(Layer::System, "till-S002", "pos:write", Some(&["S002"]));
    let response = app
        .send_json(
            Method::POST,
            Layer::System,
            "/v1/pos/transactions",
            &pos,
            &basket(
                "9",
                json!([{"sku": "SKU-000001", "quantity": 1, "kind": "sale"}]),
            ),
        )
        .await;
    problem(response, 403).await;
}

#[tokio::test]
async fn a_store_bound_token_naming_another_store_is_refused_and_lists_are_filtered() {
    let app = TestApp::spawn().await;
    receive(&app, "SKU-000009", "S001", 5).await;
    receive(&app, "SKU-000009", "S002", 5).await;
    let associate = app.token_for(
        Layer::Experience,
        "associate-s001",
        "availability:read",
        Some(&["S001"]),
    );
    problem(
        app.get(
            Layer::Experience,
            "/v1/availability/SKU-000009?locations=S002",
            Some(&associate),
        )
        .await,
        403,
    )
    .await;
    let body = r#"{"skus":["SKU-000009"],"locations":["S001","S002"]}"#;
    let response = app
        .send_json(
            Method::POST,
            Layer::Experience,
            "/v1/availability/query",
            &associate,
            body,
        )
        .await;
    problem(response, 403).await;
    // Without a filter, only the token's store is listed.
    let own: Value = app
        .get(
            Layer::Experience,
            "/v1/availability/SKU-000009",
            Some(&associate),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        own["locations"],
        json!([{"location_id": "S001", "available": 4}])
    );
}
