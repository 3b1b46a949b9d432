//! Transfers and returns over HTTP: every state with the expected
//! positions and journal entries, approval rules, location binding.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

const SKU: &str = "SKU-000001";

async fn receive(app: &TestApp, id: &str, location: &str, sku: &str, quantity: i64) {
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

/// (on_hand, unsellable, in_transit) of a position.
async fn figures(app: &TestApp, sku: &str, location: &str) -> (i64, i64, i64) {
    let token = app.token(Layer::Process, "inventory:read");
    let body: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/positions?sku={sku}&location_id={location}"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    let p = &body["positions"][0];
    (
        p["on_hand"].as_i64().unwrap_or(0),
        p["unsellable"].as_i64().unwrap_or(0),
        p["in_transit"].as_i64().unwrap_or(0),
    )
}

async fn journal_ids(app: &TestApp, sku: &str, location: &str) -> Vec<(String, String)> {
    let token = app.token(Layer::Process, "inventory:read");
    let body: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/journal?sku={sku}&location_id={location}"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap_or_default().to_owned(),
                e["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn step(app: &TestApp, token: &str, id: &str, action: &str, body: &str) -> reqwest::Response {
    app.send_json(
        Method::POST,
        Layer::Process,
        &format!("/v1/transfers/{id}/{action}"),
        token,
        body,
    )
    .await
}

async fn status_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

#[tokio::test]
async fn a_transfer_walks_every_state_with_positions_journal_and_approval_rules() {
    let app = TestApp::spawn_with(|settings| {
        // Everything above a cent needs an approver.
        settings.transfers.auto_approve_below = "0.01".parse().expect("decimal");
    })
    .await;
    receive(&app, "stock-1", "S001", SKU, 20).await;
    let clerk = app.token_for(
        Layer::Process,
        "clerk-s001",
        "transfers:write transfers:approve inventory:read",
        Some(&["S001"]),
    );
    let receiver = app.token_for(
        Layer::Process,
        "clerk-s002",
        "transfers:write inventory:read",
        Some(&["S002"]),
    );
    let manager = app.token_for(Layer::Process, "manager", "transfers:approve", None);
    let no_approval = app.token_for(Layer::Process, "clerk-2", "transfers:write", None);

    let request = json!({
        "source_location_id": "S001", "destination_location_id": "S002",
        "lines": [{ "sku": SKU, "quantity": 10 }], "reference": "TR-1"
    })
    .to_string();
    // Bound to the destination only: cannot request from the source.
    let refused = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/transfers",
            &receiver,
            &request,
        )
        .await;
    problem(refused, 403).await;
    let created = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/transfers",
            &clerk,
            &request,
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("json");
    assert_eq!(created["status"], "requested");
    assert!(created["value_at_cost"].as_str().is_some_and(|v| v != "0"));
    let id = created["transfer_id"].as_str().expect("id").to_owned();

    // Not approved: cannot ship.
    let early = problem(step(&app, &clerk, &id, "ship", "").await, 409).await;
    assert!(
        early["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("transfer-wrong-status"))
    );
    // Approval: not without the scope, never by the requester.
    problem(step(&app, &no_approval, &id, "approve", "").await, 403).await;
    problem(step(&app, &clerk, &id, "approve", "").await, 403).await;
    let approved = status_of(step(&app, &manager, &id, "approve", "").await).await;
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["approved_by"], "manager");

    // Shipping is the source's: the destination's clerk cannot.
    problem(step(&app, &receiver, &id, "ship", "").await, 403).await;
    let shipped = status_of(step(&app, &clerk, &id, "ship", "").await).await;
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(figures(&app, SKU, "S001").await, (10, 0, 0));
    assert_eq!(figures(&app, SKU, "S002").await, (0, 0, 10));
    // Shipping again changes nothing; cancelling is too late.
    status_of(step(&app, &clerk, &id, "ship", "").await).await;
    assert_eq!(figures(&app, SKU, "S001").await, (10, 0, 0));
    problem(step(&app, &clerk, &id, "cancel", "").await, 409).await;

    // Received short: 8 of 10 counted → exception of −2.
    let counted = json!({ "lines": [{ "sku": SKU, "quantity": 8 }] }).to_string();
    problem(step(&app, &clerk, &id, "receive", &counted).await, 403).await;
    let bad = json!({ "lines": [{ "sku": "SKU-000002", "quantity": 1 }] }).to_string();
    problem(step(&app, &receiver, &id, "receive", &bad).await, 422).await;
    let received = status_of(step(&app, &receiver, &id, "receive", &counted).await).await;
    assert_eq!(received["status"], "received");
    assert_eq!(received["lines"][0]["received"], 8);
    assert_eq!(received["exceptions"][0]["difference"], -2);
    assert_eq!(figures(&app, SKU, "S002").await, (8, 0, 2));
    let steps: Vec<&str> = received["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(steps, ["requested", "approved", "shipped", "received"]);

    // Journalled (and so queued for the ERP) at both ends.
    assert!(
        journal_ids(&app, SKU, "S001")
            .await
            .contains(&(format!("transfer:{id}:out:0"), "transfer_out".into()))
    );
    assert!(
        journal_ids(&app, SKU, "S002")
            .await
            .contains(&(format!("transfer:{id}:in:0"), "transfer_in".into()))
    );

    // A second transfer, cancelled before shipping: nothing moves.
    let second: Value = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/transfers",
            &clerk,
            &request,
        )
        .await
        .json()
        .await
        .expect("json");
    let second_id = second["transfer_id"].as_str().expect("id");
    let cancelled = status_of(step(&app, &clerk, second_id, "cancel", "").await).await;
    assert_eq!(cancelled["status"], "cancelled");
    problem(step(&app, &manager, second_id, "approve", "").await, 409).await;
    problem(step(&app, &clerk, second_id, "ship", "").await, 409).await;
    assert_eq!(figures(&app, SKU, "S001").await, (10, 0, 0));

    // Bad input changes nothing.
    for body in [
        json!({ "source_location_id": "S001", "destination_location_id": "S001",
                "lines": [{ "sku": SKU, "quantity": 1 }] }),
        json!({ "source_location_id": "S001", "destination_location_id": "S002",
                "lines": [{ "sku": SKU, "quantity": 0 }] }),
        json!({ "source_location_id": "S001", "destination_location_id": "S404",
                "lines": [{ "sku": SKU, "quantity": 1 }] }),
    ] {
        let response = app
            .send_json(
                Method::POST,
                Layer::Process,
                "/v1/transfers",
                &clerk,
                &body.to_string(),
            )
            .await;
        problem(response, 422).await;
    }
    problem(
        app.get(Layer::Process, "/v1/transfers/nope", Some(&clerk))
            .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn a_cheap_transfer_is_approved_on_request() {
    let app = TestApp::spawn().await;
    receive(&app, "stock-1", "S001", SKU, 5).await;
    let clerk = app.token(Layer::Process, "transfers:write");
    let created: Value = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/transfers",
            &clerk,
            &json!({ "source_location_id": "S001", "destination_location_id": "S002",
                     "lines": [{ "sku": SKU, "quantity": 1 }] })
            .to_string(),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(created["status"], "approved", "{created}");
    assert_eq!(created["approved_by"], "auto");
}

#[tokio::test]
async fn a_return_applies_each_disposition_once() {
    let app = TestApp::spawn().await;
    let clerk = app.token_for(Layer::Process, "till", "returns:write", Some(&["S001"]));
    let body = json!({
        "return_id": "RMA-1001", "location_id": "S001", "channel": "store",
        "order_ref": "ORDER-9",
        "lines": [
            { "sku": "SKU-000001", "quantity": 2 },
            { "sku": "SKU-000002", "quantity": 1, "disposition": "damaged" },
            { "sku": "SKU-000003", "quantity": 1, "disposition": "return_to_vendor" }
        ]
    })
    .to_string();
    let first = app
        .send_json(Method::POST, Layer::Process, "/v1/returns", &clerk, &body)
        .await;
    let first = status_of(first).await;
    assert_eq!(first["status"], "accepted");
    assert_eq!(first["results"].as_array().map(Vec::len), Some(4));
    assert_eq!(figures(&app, "SKU-000001", "S001").await, (2, 0, 0));
    assert_eq!(figures(&app, "SKU-000002", "S001").await, (1, 1, 0));
    // Back to the vendor: received and written off, net nothing.
    assert_eq!(figures(&app, "SKU-000003", "S001").await, (0, 0, 0));
    let journal = journal_ids(&app, "SKU-000003", "S001").await;
    assert!(journal.contains(&("return:S001:RMA-1001:2".into(), "return".into())));
    assert!(journal.contains(&("return:S001:RMA-1001:2:rtv".into(), "write_off".into())));

    // The same return again changes nothing.
    let again = status_of(
        app.send_json(Method::POST, Layer::Process, "/v1/returns", &clerk, &body)
            .await,
    )
    .await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(figures(&app, "SKU-000001", "S001").await, (2, 0, 0));

    // Another store, a bad disposition, a missing scope.
    let elsewhere = body.replace("\"S001\"", "\"S002\"");
    problem(
        app.send_json(
            Method::POST,
            Layer::Process,
            "/v1/returns",
            &clerk,
            &elsewhere,
        )
        .await,
        403,
    )
    .await;
    let bad = body.replace("\"damaged\"", "\"lost\"");
    problem(
        app.send_json(Method::POST, Layer::Process, "/v1/returns", &clerk, &bad)
            .await,
        422,
    )
    .await;
    let reader = app.token(Layer::Process, "inventory:read");
    problem(
        app.send_json(Method::POST, Layer::Process, "/v1/returns", &reader, &body)
            .await,
        403,
    )
    .await;
}

/// Transfer requests and steps claim their `Idempotency-Key` in their own
/// transaction: even with no in-flight lease at all (a key left in flight
/// is anyone's at once), concurrent retries of one keyed request make one
/// transfer and one shipment, and every retry is answered with the first
/// answer, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_transfer_requests_and_steps_change_once_without_a_lease() {
    let app = TestApp::spawn_with(|settings| settings.idempotency.lease_seconds = 0).await;
    receive(&app, "stock-1", "S001", SKU, 20).await;
    let clerk = app.token(Layer::Process, "transfers:write inventory:read");
    let send = |path: String, key: &'static str, body: String| {
        app.http
            .post(app.url(Layer::Process, &path))
            .bearer_auth(&clerk)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let request = json!({ "source_location_id": "S001", "destination_location_id": "S002",
                          "lines": [{ "sku": SKU, "quantity": 3 }] })
    .to_string();
    let answers = futures::future::join_all(
        (0..8).map(|_| send("/v1/transfers".into(), "move-1", request.clone())),
    )
    .await;
    let mut bodies = std::collections::BTreeSet::new();
    for answer in answers {
        let answer = answer.expect("sent");
        // Never in flight: a key is only ever seen with its answer.
        assert_eq!(answer.status(), 201);
        bodies.insert(answer.bytes().await.expect("body"));
    }
    assert_eq!(bodies.len(), 1, "one transfer, one answer");
    let first = bodies.into_iter().next().expect("answer");
    let again = send("/v1/transfers".into(), "move-1", request.clone())
        .await
        .expect("sent");
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .expect("replayed"),
        "true"
    );
    assert_eq!(again.bytes().await.expect("body"), first);
    let created: Value = serde_json::from_slice(&first).expect("json");
    let id = created["transfer_id"].as_str().expect("id").to_owned();

    let ship = format!("/v1/transfers/{id}/ship");
    let shipped =
        futures::future::join_all((0..8).map(|_| send(ship.clone(), "ship-1", String::new())))
            .await;
    for answer in shipped {
        assert_eq!(answer.expect("sent").status(), 200);
    }
    assert_eq!(figures(&app, SKU, "S001").await, (17, 0, 0), "shipped once");
    assert_eq!(figures(&app, SKU, "S002").await.2, 3);
    assert_eq!(
        journal_ids(&app, SKU, "S001").await.len(),
        2,
        "receipt and one transfer_out"
    );
}
