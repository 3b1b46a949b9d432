//! Reservations through experience-api (pinned contract): lifecycle,
//! idempotent creation, problems for bad input, the token's location
//! binding, and the flash sale over HTTP on SQLite and on two platform
//! replicas sharing one PostgreSQL database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, fresh_postgres_url, postgres_url, problem};

const SKU: &str = "SKU-000001";

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
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["summary"]["applied"], 1, "{body}");
}

fn reservation(lines: &[(&str, &str, i64)]) -> String {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, location, quantity)| {
            json!({ "sku": sku, "location_id": location, "quantity": quantity })
        })
        .collect();
    json!({ "channel": "web", "order_ref": "cart-42", "lines": lines, "ttl_seconds": 600 })
        .to_string()
}

async fn reserve(app: &TestApp, token: &str, body: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url(Layer::Experience, "/v1/reservations"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("request sent")
}

pub(crate) async fn available(app: &TestApp, sku: &str, location: &str) -> i64 {
    let token = app.token(Layer::Experience, "availability:read");
    let response = app
        .get(
            Layer::Experience,
            &format!("/v1/availability/{sku}?locations={location}"),
            Some(&token),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["locations"][0]["available"]
        .as_i64()
        .expect("available")
}

async fn end(app: &TestApp, token: &str, id: &str, action: &str) -> reqwest::Response {
    app.send_json(
        Method::POST,
        Layer::Experience,
        &format!("/v1/reservations/{id}/{action}"),
        token,
        "",
    )
    .await
}

#[tokio::test]
async fn a_reservation_holds_releases_and_fulfils_through_the_channel_api() {
    let app = TestApp::spawn().await;
    stock(&app, "r1", "S001", SKU, 5).await;
    // The seed's safety stock withholds some of the 5.
    let base = available(&app, SKU, "S001").await;
    assert!(base >= 4, "{base}");
    let token = app.token(Layer::Experience, "reservations:write");

    let body = reservation(&[(SKU, "S001", 2)]);
    let created = reserve(&app, &token, &body, Some("cart-42-try")).await;
    assert_eq!(created.status(), 201);
    let location = created
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("Location header");
    let created: Value = created.json().await.expect("json");
    let id = created["reservation_id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/reservations/{id}"));
    assert_eq!(created["status"], "active");
    assert!(created["expires_at"].is_string());
    assert_eq!(created["lines"][0]["quantity"], 2);
    assert_eq!(available(&app, SKU, "S001").await, base - 2);

    // The same key and body: the same reservation, held once.
    let again = reserve(&app, &token, &body, Some("cart-42-try")).await;
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["reservation_id"], created["reservation_id"]);
    assert_eq!(available(&app, SKU, "S001").await, base - 2);

    // More than is left: 409 naming the short line, nothing held.
    let short = reserve(&app, &token, &reservation(&[(SKU, "S001", base - 1)]), None).await;
    let short = problem(short, 409).await;
    assert!(
        short["type"]
            .as_str()
            .expect("present")
            .ends_with("insufficient-stock")
    );
    assert_eq!(short["short_lines"][0]["available"], base - 2);
    assert_eq!(short["short_lines"][0]["requested"], base - 1);
    assert_eq!(available(&app, SKU, "S001").await, base - 2);

    // Read back by its owner; another client does not see it.
    let read = app
        .get(
            Layer::Experience,
            &format!("/v1/reservations/{id}"),
            Some(&token),
        )
        .await;
    assert_eq!(read.status(), 200);
    let stranger = app.token_for(Layer::Experience, "other-shop", "reservations:write", None);
    let hidden = app
        .get(
            Layer::Experience,
            &format!("/v1/reservations/{id}"),
            Some(&stranger),
        )
        .await;
    problem(hidden, 404).await;
    problem(end(&app, &stranger, &id, "release").await, 404).await;

    let released = end(&app, &token, &id, "release").await;
    assert_eq!(released.status(), 200);
    let released: Value = released.json().await.expect("json");
    assert_eq!(released["status"], "released");
    assert_eq!(available(&app, SKU, "S001").await, base);
    let refused = problem(end(&app, &token, &id, "fulfill").await, 409).await;
    assert!(
        refused["type"]
            .as_str()
            .expect("present")
            .ends_with("reservation-not-active")
    );

    // Fulfilment: reserved and on_hand both drop, a sale is journalled.
    let second = reserve(&app, &token, &reservation(&[(SKU, "S001", 3)]), None).await;
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.expect("json");
    let second_id = second["reservation_id"].as_str().expect("present");
    let fulfilled = end(&app, &token, second_id, "fulfill").await;
    assert_eq!(fulfilled.status(), 200);
    let fulfilled: Value = fulfilled.json().await.expect("json");
    assert_eq!(fulfilled["status"], "fulfilled");
    let read_token = app.token(Layer::Process, "inventory:read");
    let positions: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/positions?sku={SKU}&location_id=S001"),
            Some(&read_token),
        )
        .await
        .json()
        .await
        .expect("json");
    let p = &positions["positions"][0];
    assert_eq!(
        (p["on_hand"].as_i64(), p["reserved"].as_i64()),
        (Some(2), Some(0))
    );
    let journal: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/journal?sku={SKU}&location_id=S001"),
            Some(&read_token),
        )
        .await
        .json()
        .await
        .expect("json");
    let entries = journal["entries"].as_array().expect("entries");
    assert!(entries.iter().any(|e| e["type"] == "sale"
        && e["event_id"] == format!("reservation:{second_id}:0")
        && e["reference"] == "cart-42"));
    // Fulfilling again sells nothing more.
    assert_eq!(end(&app, &token, second_id, "fulfill").await.status(), 200);
    assert_eq!(available(&app, SKU, "S001").await, base - 3);
}

#[tokio::test]
async fn bad_reservation_requests_get_problems_and_change_nothing() {
    let app = TestApp::spawn().await;
    stock(&app, "r1", "S001", SKU, 5).await;
    let base = available(&app, SKU, "S001").await;
    let token = app.token(Layer::Experience, "reservations:write");
    let cases = [
        (reservation(&[(SKU, "S001", 0)]), "/lines/0/quantity"),
        (reservation(&[(SKU, "S001", 101)]), "/lines/0/quantity"),
        (reservation(&[]), "/lines"),
        (
            reservation(&[(SKU, "S001", 1), (SKU, "S001", 1)]),
            "/lines/1",
        ),
        (reservation(&[("NO-SUCH-SKU", "S001", 1)]), "/lines/0/sku"),
        (reservation(&[(SKU, "S999", 1)]), "/lines/0/location_id"),
        (
            json!({ "channel": "web", "order_ref": "x", "ttl_seconds": 0,
                    "lines": [{ "sku": SKU, "location_id": "S001", "quantity": 1 }] })
            .to_string(),
            "/ttl_seconds",
        ),
        (
            json!({ "channel": "web", "order_ref": "x", "surprise": true,
                    "lines": [{ "sku": SKU, "location_id": "S001", "quantity": 1 }] })
            .to_string(),
            "",
        ),
    ];
    for (body, pointer) in cases {
        let response = reserve(&app, &token, &body, None).await;
        let problem = problem(response, 422).await;
        if !pointer.is_empty() {
            let pointers: Vec<&str> = problem["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .filter_map(|e| e["pointer"].as_str())
                .collect();
            assert!(pointers.contains(&pointer), "{body}: {problem}");
        }
    }
    problem(
        app.get(
            Layer::Experience,
            "/v1/reservations/not-a-uuid",
            Some(&token),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(available(&app, SKU, "S001").await, base);
}

#[tokio::test]
async fn a_store_bound_token_reserves_only_at_its_store() {
    let app = TestApp::spawn().await;
    stock(&app, "r1", "S001", SKU, 5).await;
    stock(&app, "r2", "S002", SKU, 5).await;
    let associate = app.token_for(
        Layer::Experience,
        "associate-s001",
        "reservations:write availability:read",
        Some(&["S001"]),
    );
    let elsewhere = reserve(&app, &associate, &reservation(&[(SKU, "S002", 1)]), None).await;
    problem(elsewhere, 403).await;
    let mixed = reserve(
        &app,
        &associate,
        &reservation(&[(SKU, "S001", 1), (SKU, "S002", 1)]),
        None,
    )
    .await;
    problem(mixed, 403).await;
    let read = app
        .get(
            Layer::Experience,
            &format!("/v1/availability/{SKU}?locations=S002"),
            Some(&associate),
        )
        .await;
    problem(read, 403).await;
    let base = available(&app, SKU, "S002").await;
    assert!(base >= 4, "{base}");

    let home = reserve(&app, &associate, &reservation(&[(SKU, "S001", 1)]), None).await;
    assert_eq!(home.status(), 201);
    // Without the scope: 403.
    let reader = app.token(Layer::Experience, "availability:read");
    problem(
        reserve(&app, &reader, &reservation(&[(SKU, "S001", 1)]), None).await,
        403,
    )
    .await;
}

/// 500 concurrent single-unit reservations for 100 units across `apps`
/// (platform replicas sharing one process database), with readers watching
/// the position: exactly 100 succeed, 400 get `insufficient-stock`, and no
/// read shows more reserved than sellable.
async fn flash_sale(apps: &[TestApp]) {
    // Exactly 100 sellable, whatever safety stock the seed gave the store.
    stock(&apps[0], "flash-stock", "S001", SKU, 100).await;
    let withheld = 100 - available(&apps[0], SKU, "S001").await;
    if withheld > 0 {
        stock(&apps[0], "flash-top-up", "S001", SKU, withheld).await;
    }
    assert_eq!(available(&apps[0], SKU, "S001").await, 100);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for app in apps {
        let url = app.url(
            Layer::Process,
            &format!("/v1/inventory/positions?sku={SKU}&location_id=S001"),
        );
        let token = app.token(Layer::Process, "inventory:read");
        let http = app.http.clone();
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("read");
                if response.status() == 503 {
                    // The pool queued behind the burst past its acquire
                    // timeout (a loaded test machine): a busy answer shows
                    // nothing, so it judges nothing.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                let body: Value = response.json().await.expect("json");
                let p = &body["positions"][0];
                assert!(p.is_object(), "read answered {body}");
                let sellable = p["on_hand"].as_i64().expect("present")
                    - p["unsellable"].as_i64().expect("present")
                    - p["safety_stock"].as_i64().expect("present");
                let reserved = p["reserved"].as_i64().expect("present");
                assert!(reserved <= sellable, "oversold: {p}");
                assert!(p["available"].as_i64().expect("present") >= 0, "{p}");
                reads += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            reads
        }));
    }
    let body = reservation(&[(SKU, "S001", 1)]);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let app = &apps[i % apps.len()];
        let url = app.url(Layer::Experience, "/v1/reservations");
        let token = app.token_for(
            Layer::Experience,
            &format!("shopper-{i}"),
            "reservations:write",
            None,
        );
        let http = app.http.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body)
        }));
    }
    let (mut won, mut short) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            (201, _) => won += 1,
            (409, body)
                if body["type"]
                    .as_str()
                    .expect("present")
                    .ends_with("insufficient-stock") =>
            {
                short += 1;
            }
            (status, body) => panic!("unexpected {status}: {body}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    assert_eq!((won, short), (100, 400));
    for app in apps {
        assert_eq!(available(app, SKU, "S001").await, 0);
    }
}

/// The burst queues up in an unoptimised test build on two shared cores:
/// generous deadlines, so the test judges oversell, not latency (the
/// benchmark does that).
fn patient(settings: &mut retail_shared::Settings) {
    settings.client.timeout_ms = 60_000;
    settings.http.request_timeout_ms = 60_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_on_sqlite_never_oversells() {
    let app = TestApp::spawn_with(patient).await;
    flash_sale(&[app]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_on_two_postgres_replicas_never_oversells() {
    let Some(base) = postgres_url() else {
        return;
    };
    let url = fresh_postgres_url(&base).await;
    let mut apps = Vec::new();
    // One after the other: the first seeds the shared registry.
    for _ in 0..2 {
        let url = url.clone();
        apps.push(
            TestApp::spawn_with(move |settings| {
                patient(settings);
                settings.process.database_url = retail_shared::config::Secret::new(url);
            })
            .await,
        );
    }
    flash_sale(&apps).await;
}

/// process-api's own `POST /v1/reservations` with an `Idempotency-Key`
/// (what experience-api always sends): on SQLite the key, the reservation
/// and the answer share one transaction. A retry replays the first answer
/// byte for byte and holds nothing more; a key reused for another body is
/// refused; concurrent retries of one key reserve once; and a request the
/// route refuses on its own checks (before the store) still binds its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_api_keys_are_claimed_with_the_reservation() {
    let app = TestApp::spawn().await;
    stock(&app, "r1", "S001", SKU, 20).await;
    let base = available(&app, SKU, "S001").await;
    let token = app.token(Layer::Process, "reservations:write");
    let post = |body: String, key: &'static str| {
        app.http
            .post(app.url(Layer::Process, "/v1/reservations"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let replayed = |response: &reqwest::Response| {
        response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    };

    let body = reservation(&[(SKU, "S001", 2)]);
    let first = post(body.clone(), "inline-1").await.expect("sent");
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    let location = first.headers().get("location").cloned().expect("Location");
    let first = first.bytes().await.expect("body");
    let again = post(body.clone(), "inline-1").await.expect("sent");
    assert_eq!(again.status(), 201);
    assert!(replayed(&again));
    assert_eq!(again.bytes().await.expect("body"), first, "the same bytes");
    let created: Value = serde_json::from_slice(&first).expect("json");
    assert_eq!(
        location.to_str().expect("ascii"),
        format!(
            "/v1/reservations/{}",
            created["reservation_id"].as_str().expect("id")
        )
    );
    assert_eq!(available(&app, SKU, "S001").await, base - 2);

    // The key for another body.
    let reused = post(reservation(&[(SKU, "S001", 3)]), "inline-1")
        .await
        .expect("sent");
    let reused = problem(reused, 422).await;
    assert!(
        reused["type"]
            .as_str()
            .expect("type")
            .ends_with("idempotency-key-reused")
    );

    // Concurrent retries of one new key: one reservation, every 201 the same.
    let body = reservation(&[(SKU, "S001", 1)]);
    let answers = futures::future::join_all((0..12).map(|_| post(body.clone(), "inline-2"))).await;
    let mut ids = std::collections::BTreeSet::new();
    for answer in answers {
        let answer = answer.expect("sent");
        match answer.status().as_u16() {
            201 => {
                let made: Value = answer.json().await.expect("json");
                ids.insert(made["reservation_id"].as_str().expect("id").to_owned());
            }
            409 => {
                let refused = problem(answer, 409).await;
                assert!(
                    refused["type"]
                        .as_str()
                        .expect("type")
                        .ends_with("idempotency-key-in-flight")
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(available(&app, SKU, "S001").await, base - 3);

    // Refused by the route's own checks: the key still answers that.
    let invalid = post(reservation(&[(SKU, "S001", 0)]), "inline-3")
        .await
        .expect("sent");
    problem(invalid, 422).await;
    let later = post(reservation(&[(SKU, "S001", 1)]), "inline-3")
        .await
        .expect("sent");
    let later = problem(later, 422).await;
    assert!(
        later["type"]
            .as_str()
            .expect("type")
            .ends_with("idempotency-key-reused")
    );
    assert_eq!(available(&app, SKU, "S001").await, base - 3);
}
