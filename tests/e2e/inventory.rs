//! The inventory core over HTTP: ingest results, positions, parked events
//! and late master data, journal, location binding, rebuild.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

fn event(id: &str, kind: &str, location: &str, sku: &str, quantity: i64, at: &str) -> Value {
    json!({
        "event_id": id, "type": kind, "location_id": location, "sku": sku,
        "quantity": quantity, "occurred_at": at, "source": "e2e"
    })
}

async fn post_events(app: &TestApp, token: &str, events: Vec<Value>) -> reqwest::Response {
    app.send_json(
        Method::POST,
        Layer::Process,
        "/v1/inventory/events",
        token,
        &json!({ "events": events }).to_string(),
    )
    .await
}

async fn position(app: &TestApp, token: &str, sku: &str, location: &str) -> Value {
    let response = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/positions?sku={sku}&location_id={location}"),
            Some(token),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["positions"][0].clone()
}

#[tokio::test]
async fn a_batch_answers_per_event_and_positions_follow_the_count_rule() {
    let app = TestApp::spawn().await;
    let token = app.token(Layer::Process, "inventory:write inventory:read");
    let response = post_events(
        &app,
        &token,
        vec![
            event(
                "e1",
                "receipt",
                "S001",
                "SKU-000001",
                10,
                "2026-11-20T10:00:00Z",
            ),
            event(
                "e2",
                "sale",
                "S001",
                "SKU-000001",
                3,
                "2026-11-20T11:00:00Z",
            ),
            event(
                "e2",
                "sale",
                "S001",
                "SKU-000001",
                3,
                "2026-11-20T11:00:00Z",
            ),
            event("e3", "sale", "S001", "NOPE-1", 1, "2026-11-20T11:00:00Z"),
            event(
                "e4",
                "sale",
                "S001",
                "SKU-000001",
                -1,
                "2026-11-20T11:00:00Z",
            ),
            // A count at 10:30 says 20: the sale at 11:00 still counts after it.
            event(
                "e5",
                "count",
                "S001",
                "SKU-000001",
                20,
                "2026-11-20T10:30:00Z",
            ),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        [
            "applied",
            "applied",
            "duplicate",
            "parked",
            "rejected",
            "applied"
        ]
    );
    assert!(
        body["results"][4]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("quantity"))
    );
    assert_eq!(body["summary"]["applied"], 3);

    let p = position(&app, &token, "SKU-000001", "S001").await;
    assert_eq!(p["on_hand"], 17);
    // Seeded S001 has a location default safety stock of 1.
    assert_eq!(p["safety_stock"], 1);
    assert_eq!(p["available"], 16);

    // A late sale from before the count changes nothing; re-sending e1 neither.
    post_events(
        &app,
        &token,
        vec![
            event(
                "e6",
                "sale",
                "S001",
                "SKU-000001",
                5,
                "2026-11-20T10:10:00Z",
            ),
            event(
                "e1",
                "receipt",
                "S001",
                "SKU-000001",
                10,
                "2026-11-20T10:00:00Z",
            ),
        ],
    )
    .await;
    let p = position(&app, &token, "SKU-000001", "S001").await;
    assert_eq!(p["on_hand"], 17);
}

#[tokio::test]
async fn parked_events_apply_when_the_master_data_arrives() {
    let app = TestApp::spawn().await;
    let token = app.token(
        Layer::Process,
        "inventory:write inventory:read master:write ops:read",
    );
    let body: Value = post_events(
        &app,
        &token,
        vec![event(
            "p1",
            "receipt",
            "S001",
            "NEW-SKU",
            4,
            "2026-11-20T10:00:00Z",
        )],
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(body["results"][0]["status"], "parked");
    let parked: Value = app
        .get(Layer::Process, "/v1/inventory/parked", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(parked["total"], 1);
    assert_eq!(parked["parked"][0]["event"]["sku"], "NEW-SKU");

    let upsert = app
        .send_json(
            Method::PUT,
            Layer::Process,
            "/v1/master/products",
            &token,
            r#"{"products":[{"sku":"NEW-SKU","name":"New","unit_cost":"2.00","currency":"USD"}]}"#,
        )
        .await;
    assert_eq!(upsert.status(), 200);
    let p = position(&app, &token, "NEW-SKU", "S001").await;
    assert_eq!(p["on_hand"], 4);
    let parked: Value = app
        .get(Layer::Process, "/v1/inventory/parked", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(parked["total"], 0);
}

#[tokio::test]
async fn a_store_bound_token_cannot_write_elsewhere_and_nothing_changes() {
    let app = TestApp::spawn().await;
    let bound = app.token_for(
        Layer::Process,
        "store-1",
        "inventory:write inventory:read",
        Some(&["S001"]),
    );
    let response = post_events(
        &app,
        &bound,
        vec![
            event(
                "b1",
                "receipt",
                "S001",
                "SKU-000002",
                5,
                "2026-11-20T10:00:00Z",
            ),
            event(
                "b2",
                "receipt",
                "S002",
                "SKU-000002",
                5,
                "2026-11-20T10:00:00Z",
            ),
        ],
    )
    .await;
    problem(response, 403).await;
    let reader = app.token(Layer::Process, "inventory:read");
    let body: Value = app
        .get(
            Layer::Process,
            "/v1/inventory/positions?sku=SKU-000002",
            Some(&reader),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["positions"], json!([]));
    problem(
        app.get(
            Layer::Process,
            "/v1/inventory/positions?sku=SKU-000002&location_id=S002",
            Some(&bound),
        )
        .await,
        403,
    )
    .await;
}

#[tokio::test]
async fn bad_batches_are_problems_and_change_nothing() {
    let app = TestApp::spawn().await;
    let token = app.token(Layer::Process, "inventory:write inventory:read");
    let too_many: Vec<Value> = (0..1001)
        .map(|i| {
            event(
                &format!("x{i}"),
                "receipt",
                "S001",
                "SKU-000003",
                1,
                "2026-11-20T10:00:00Z",
            )
        })
        .collect();
    let body = problem(post_events(&app, &token, too_many).await, 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/events");
    let mut bad = event(
        "y1",
        "receipt",
        "S001",
        "SKU-000003",
        1,
        "2026-11-20T10:00:00Z",
    );
    bad["quantity"] = json!("many");
    let body = problem(post_events(&app, &token, vec![bad]).await, 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/events/0/quantity");
    problem(
        app.get(Layer::Process, "/v1/inventory/positions", Some(&token))
            .await,
        400,
    )
    .await;
    let body: Value = app
        .get(
            Layer::Process,
            "/v1/inventory/positions?sku=SKU-000003",
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["positions"], json!([]));
}

#[tokio::test]
async fn the_journal_pages_and_rebuild_equals_live() {
    let app = TestApp::spawn().await;
    let token = app.token(Layer::Process, "inventory:write inventory:read ops:write");
    let events: Vec<Value> = (0..25)
        .map(|i| {
            let mut e = event(
                &format!("j{i:02}"),
                if i % 4 == 0 { "count" } else { "receipt" },
                "S002",
                "SKU-000004",
                i + 1,
                &format!("2026-11-20T10:{i:02}:00Z"),
            );
            if i == 7 {
                e["type"] = json!("transfer_out");
                e["counterparty_location_id"] = json!("S003");
            }
            e
        })
        .collect();
    post_events(&app, &token, events).await;
    let page: Value = app
        .get(
            Layer::Process,
            "/v1/inventory/journal?location_id=S002&sku=SKU-000004&limit=10",
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["entries"].as_array().map(Vec::len), Some(10));
    let next = page["next_after"].as_i64().expect("cursor");
    let entry = &page["entries"][1];
    assert_eq!(
        entry["unit_cost"].as_str().map(|c| !c.is_empty()),
        Some(true)
    );
    assert_eq!(entry["location_type"], "store");
    assert!(entry["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let rest: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/journal?location_id=S002&after={next}&limit=100"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(rest["entries"].as_array().map(Vec::len), Some(15));
    // Newest first, paged backwards: the same 25 entries, reversed.
    let mut newest_first: Vec<i64> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => {
                format!("/v1/inventory/journal?location_id=S002&order=desc&limit=10&before={b}")
            }
            None => "/v1/inventory/journal?location_id=S002&order=desc&limit=10".to_owned(),
        };
        let page: Value = app
            .get(Layer::Process, &path, Some(&token))
            .await
            .json()
            .await
            .expect("json");
        newest_first.extend(
            page["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["seq"].as_i64()),
        );
        assert!(page.get("next_after").is_none_or(Value::is_null));
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let mut oldest_first: Vec<i64> = page["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(rest["entries"].as_array().into_iter().flatten())
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    oldest_first.reverse();
    assert_eq!(newest_first, oldest_first);
    let response = app
        .get(
            Layer::Process,
            "/v1/inventory/journal?order=sideways",
            Some(&token),
        )
        .await;
    crate::helpers::problem(response, 422).await;
    let transit = position(&app, &token, "SKU-000004", "S003").await;
    assert_eq!(transit["in_transit"], 8);

    let report: Value = app
        .http
        .post(app.url(Layer::Process, "/v1/ops/rebuild"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["events"], 25);
}

/// `POST /v1/inventory/events` claims its `Idempotency-Key` in the
/// transaction that journals the batch: with no in-flight lease at all,
/// concurrent sends of one keyed batch all get the first answer (every
/// event `applied`, not `duplicate`), byte for byte, and the stock counts
/// once. Without the claim in the transaction, the sends after the first
/// would run again and answer `duplicate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_event_batches_are_answered_once_without_a_lease() {
    let app = TestApp::spawn_with(|settings| settings.idempotency.lease_seconds = 0).await;
    let token = app.token(Layer::Process, "inventory:write inventory:read");
    let batch = json!({ "events": [
        event("k-1", "receipt", "S001", "SKU-000001", 5, "2026-11-20T08:00:00Z"),
        event("k-2", "receipt", "S001", "SKU-000001", 2, "2026-11-20T08:00:01Z"),
    ]})
    .to_string();
    let before = position(&app, &token, "SKU-000001", "S001").await["on_hand"]
        .as_i64()
        .unwrap_or(0);
    let sends = futures::future::join_all((0..8).map(|_| {
        app.http
            .post(app.url(Layer::Process, "/v1/inventory/events"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", "till-7-0042")
            .body(batch.clone())
            .send()
    }))
    .await;
    let mut bodies = std::collections::BTreeSet::new();
    for sent in sends {
        let answer = sent.expect("sent");
        assert_eq!(answer.status(), 200);
        bodies.insert(answer.bytes().await.expect("body"));
    }
    assert_eq!(bodies.len(), 1, "one answer for every send");
    let answer: Value = serde_json::from_slice(bodies.first().expect("answer")).expect("json");
    assert_eq!(answer["summary"]["applied"], 2, "{answer}");
    let after = position(&app, &token, "SKU-000001", "S001").await["on_hand"]
        .as_i64()
        .unwrap_or(0);
    assert_eq!(after - before, 7, "counted once");
}
