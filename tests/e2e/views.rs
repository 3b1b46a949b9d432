//! Channel-facing views: availability by sales channel (node types and
//! capabilities from configuration), the associate's store positions and
//! nearby stores with stock.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

const A: &str = "SKU-000001";

async fn setup(app: &TestApp) {
    let token = app.token(Layer::Process, "master:write inventory:write");
    let node = |id: &str, kind: &str, lat: f64, caps: &[&str]| {
        json!({ "location_id": id, "name": id, "type": kind, "latitude": lat,
                "longitude": 4.0, "capabilities": caps, "safety_stock_default": 0 })
    };
    let body = json!({ "locations": [
        node("C1", "store", 52.05, &["click_and_collect"]),
        node("C2", "store", 52.10, &["ship_from_store"]),
        node("C3", "store", 52.20, &[]),
        node("C4", "store", 52.30, &[]),
        node("W1", "warehouse", 52.5, &[]),
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
    let events: Vec<Value> = [("C1", 3), ("C2", 4), ("C4", 2), ("W1", 5)]
        .iter()
        .map(|(location, quantity)| {
            json!({ "event_id": format!("stock-{location}"), "type": "receipt",
                    "location_id": location, "sku": A, "quantity": quantity,
                    "occurred_at": "2026-11-20T08:00:00Z", "source": "e2e" })
        })
        .collect();
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/inventory/events",
            &token,
            &json!({ "events": events }).to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
}

fn ids(body: &Value, list: &str) -> Vec<String> {
    body[list]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|l| l["location_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn availability_counts_only_the_nodes_of_the_channel() {
    let app = TestApp::spawn().await;
    setup(&app).await;
    let token = app.token(Layer::Experience, "availability:read");
    let web: Value = app
        .get(
            Layer::Experience,
            &format!("/v1/availability/{A}?channel=web"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    // Warehouses and ship-from-store stores, not click-and-collect ones.
    assert_eq!(ids(&web, "locations"), ["C2", "W1"], "{web}");
    assert_eq!(web["total_available"], 9);
    let store: Value = app
        .get(
            Layer::Experience,
            &format!("/v1/availability/{A}?channel=store"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(ids(&store, "locations"), ["C1", "C2", "C4"], "{store}");
    let batch = app
        .send_json(
            Method::POST,
            Layer::Experience,
            "/v1/availability/query",
            &token,
            &json!({ "skus": [A], "channel": "web" }).to_string(),
        )
        .await;
    assert_eq!(batch.status(), 200);
    let batch: Value = batch.json().await.expect("json");
    assert_eq!(batch["items"][0]["total_available"], 9, "{batch}");
    let unknown = app
        .get(
            Layer::Experience,
            &format!("/v1/availability/{A}?channel=fax"),
            Some(&token),
        )
        .await;
    problem(unknown, 422).await;
}

#[tokio::test]
async fn an_associate_sees_their_store_and_nearby_stores_with_stock() {
    let app = TestApp::spawn().await;
    setup(&app).await;
    let associate = app.token_for(
        Layer::Experience,
        "associate-c1",
        "inventory:read availability:read",
        Some(&["C1", "C2", "C3", "C4"]),
    );
    let mine = app
        .get(
            Layer::Experience,
            "/v1/stores/C1/positions?limit=10",
            Some(&associate),
        )
        .await;
    assert_eq!(mine.status(), 200);
    let mine: Value = mine.json().await.expect("json");
    assert_eq!(mine["positions"][0]["sku"], A, "{mine}");
    assert_eq!(mine["positions"][0]["on_hand"], 3);
    problem(
        app.get(
            Layer::Experience,
            "/v1/stores/W1/positions",
            Some(&associate),
        )
        .await,
        403,
    )
    .await;

    let nearby: Value = app
        .get(
            Layer::Experience,
            &format!("/v1/stores/C1/nearby?sku={A}"),
            Some(&associate),
        )
        .await
        .json()
        .await
        .expect("json");
    // C3 has none; the warehouse is not a store; nearest first.
    assert_eq!(ids(&nearby, "stores"), ["C2", "C4"], "{nearby}");
    assert_eq!(nearby["stores"][0]["available"], 4);
    assert!(
        nearby["stores"][0]["distance_km"]
            .as_f64()
            .is_some_and(|d| d > 5.0)
    );

    // A token bound to C1 alone sees no other store.
    let alone = app.token_for(Layer::Experience, "a", "availability:read", Some(&["C1"]));
    let nearby: Value = app
        .get(
            Layer::Experience,
            &format!("/v1/stores/C1/nearby?sku={A}"),
            Some(&alone),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(nearby["stores"], json!([]));
    problem(
        app.get(
            Layer::Experience,
            &format!("/v1/stores/C2/nearby?sku={A}"),
            Some(&alone),
        )
        .await,
        403,
    )
    .await;
    problem(
        app.get(
            Layer::Experience,
            "/v1/stores/C1/nearby?sku=NOPE",
            Some(&associate),
        )
        .await,
        404,
    )
    .await;
}
