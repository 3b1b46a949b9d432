//! The ERP posting pipeline end to end (process-api outbox → system-api →
//! ERP), on the sandbox ERP with its faults: slow, transient failures, a
//! refused product (dead letters, operator replay), down (circuit
//! breaker); and reconciliation with review.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

/// Fast retries so a test converges in seconds.
pub fn quick_pipeline(settings: &mut retail_shared::Settings) {
    settings.erp_posting.backoff_base_ms = 20;
    settings.erp_posting.backoff_max_ms = 300;
    settings.erp_posting.breaker_cooldown_ms = 100;
    settings.erp_posting.breaker_max_cooldown_ms = 500;
    settings.erp_posting.poll_interval_ms = 20;
    settings.erp_posting.batch_size = 100;
    settings.erp_posting.max_attempts = 20;
    settings.reconciliation.interval_seconds = 0;
    settings.reconciliation.master_sync_interval_seconds = 0;
}

/// A workload: stores × skus with receipts, sales, returns, adjustments
/// and counts at random times, sent shuffled with duplicates.
pub struct Workload {
    pub stores: Vec<String>,
    pub skus: Vec<String>,
    /// Batches of events as sent (duplicates included).
    pub batches: Vec<Vec<Value>>,
}

impl Workload {
    pub fn new(tag: &str, stores: usize, skus: usize, events: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let stores: Vec<String> = (1..=stores).map(|i| format!("{tag}S{i:03}")).collect();
        let skus: Vec<String> = (1..=skus).map(|i| format!("{tag}K{i:04}")).collect();
        let mut unique = Vec::with_capacity(events);
        for n in 0..events {
            let store = &stores[rng.random_range(0..stores.len())];
            let sku = &skus[rng.random_range(0..skus.len())];
            let minute = rng.random_range(0..1440_u32);
            let occurred_at = format!("2026-11-20T{:02}:{:02}:00Z", minute / 60, minute % 60);
            let roll = rng.random_range(0..100);
            let (kind, quantity) = match roll {
                0..35 => ("receipt", rng.random_range(1..20_i64)),
                35..70 => ("sale", rng.random_range(1..4_i64)),
                70..80 => ("return", 1),
                80..95 => {
                    let q = rng.random_range(1..5_i64);
                    ("adjustment", if rng.random_bool(0.5) { q } else { -q })
                }
                _ => ("count", rng.random_range(0..30_i64)),
            };
            unique.push(json!({
                "event_id": format!("{tag}-e{n}"),
                "type": kind,
                "location_id": store,
                "sku": sku,
                "quantity": quantity,
                "occurred_at": occurred_at,
                "source": "erp-test",
            }));
        }
        // 5% duplicates, then shuffled arrival.
        let mut sent = unique.clone();
        for _ in 0..events / 20 {
            sent.push(unique[rng.random_range(0..unique.len())].clone());
        }
        sent.shuffle(&mut rng);
        let batches = sent.chunks(500).map(<[Value]>::to_vec).collect();
        Self {
            stores,
            skus,
            batches,
        }
    }

    /// Registers the stores and products in process-api.
    pub async fn register(&self, app: &TestApp) {
        let token = app.token(Layer::Process, "master:write");
        let locations: Vec<Value> = self
            .stores
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"location_id": id, "name": format!("Store {id}"), "type": "store",
                       "latitude": 48.0 + i as f64 / 100.0, "longitude": 2.0})
            })
            .collect();
        let response = app
            .send_json(
                Method::PUT,
                Layer::Process,
                "/v1/master/locations",
                &token,
                &json!({ "locations": locations }).to_string(),
            )
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        for chunk in self.skus.chunks(1000) {
            let products: Vec<Value> = chunk
                .iter()
                .map(|sku| {
                    json!({"sku": sku, "name": format!("Product {sku}"),
                           "unit_cost": "2.50", "currency": "EUR"})
                })
                .collect();
            let response = app
                .send_json(
                    Method::PUT,
                    Layer::Process,
                    "/v1/master/products",
                    &token,
                    &json!({ "products": products }).to_string(),
                )
                .await;
            assert_eq!(response.status(), 200, "{:?}", response.text().await);
        }
    }

    /// Sends batch `index`; every event must be applied or a duplicate.
    pub async fn send(&self, app: &TestApp, index: usize) {
        let token = app.token(Layer::Process, "inventory:write");
        let response = app
            .send_json(
                Method::POST,
                Layer::Process,
                "/v1/inventory/events",
                &token,
                &json!({ "events": self.batches[index] }).to_string(),
            )
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        for result in body["results"].as_array().expect("results") {
            let status = result["status"].as_str().unwrap_or_default();
            assert!(
                status == "applied" || status == "duplicate",
                "unexpected result {result}"
            );
        }
    }

    /// Platform on_hand per (location, sku) of this workload.
    pub async fn platform_on_hand(&self, app: &TestApp) -> BTreeMap<(String, String), i64> {
        let token = app.token(Layer::Process, "inventory:read");
        let mut on_hand = BTreeMap::new();
        for store in &self.stores {
            let mut after = String::new();
            loop {
                let body: Value = app
                    .get(
                        Layer::Process,
                        &format!(
                            "/v1/inventory/locations/{store}/positions?limit=1000&after={after}"
                        ),
                        Some(&token),
                    )
                    .await
                    .json()
                    .await
                    .expect("json");
                let positions = body["positions"].as_array().cloned().unwrap_or_default();
                for p in &positions {
                    let sku = p["sku"].as_str().unwrap_or_default().to_owned();
                    on_hand.insert((store.clone(), sku), p["on_hand"].as_i64().unwrap_or(0));
                }
                match body["next_cursor"].as_str() {
                    Some(next) if positions.len() == 1000 => after = next.to_owned(),
                    _ => break,
                }
            }
        }
        on_hand
    }
}

pub async fn sync_health(app: &TestApp) -> Value {
    let token = app.token(Layer::Process, "ops:read");
    let response = app
        .get(Layer::Process, "/v1/ops/sync-health", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// Waits until `done(sync-health)` holds, or fails after `limit`.
pub async fn wait_for(
    app: &TestApp,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let health = sync_health(app).await;
        if done(&health) {
            return health;
        }
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {what}: {}",
            health["postings"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn drained(health: &Value) -> bool {
    let p = &health["postings"];
    p["pending"] == 0 && p["in_flight"] == 0 && p["dead"] == 0
}

pub async fn set_faults(app: &TestApp, faults: Value) {
    let token = app.token(Layer::System, "ops:write");
    let response = app
        .send_json(
            Method::PUT,
            Layer::System,
            "/v1/erp/sandbox/faults",
            &token,
            &faults.to_string(),
        )
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// Every sandbox record, in arrival order.
async fn sandbox_records(app: &TestApp) -> Vec<Value> {
    let token = app.token(Layer::System, "ops:read");
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let body: Value = app
            .get(
                Layer::System,
                &format!("/v1/erp/sandbox/records?after={after}&limit=10000"),
                Some(&token),
            )
            .await
            .json()
            .await
            .expect("json");
        let page = body["records"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return records;
        }
        after = page.last().and_then(|r| r["seq"].as_i64()).unwrap_or(after);
        records.extend(page);
    }
}

async fn erp_balances(app: &TestApp, stores: &[String]) -> BTreeMap<(String, String), i64> {
    let token = app.token(Layer::System, "erp:read");
    let mut balances = BTreeMap::new();
    for store in stores {
        let response = app
            .get(
                Layer::System,
                &format!("/v1/erp/balances?location_id={store}"),
                Some(&token),
            )
            .await;
        if response.status() == 404 {
            continue;
        }
        let body: Value = response.json().await.expect("json");
        for b in body["balances"].as_array().cloned().unwrap_or_default() {
            balances.insert(
                (
                    store.clone(),
                    b["sku"].as_str().unwrap_or_default().to_owned(),
                ),
                b["quantity"].as_i64().unwrap_or(0),
            );
        }
    }
    balances
}

/// Non-zero entries only: a position at 0 and no ERP record agree.
fn non_zero(map: BTreeMap<(String, String), i64>) -> BTreeMap<(String, String), i64> {
    map.into_iter().filter(|(_, q)| *q != 0).collect()
}

/// Per key, the records arrived in posting (journal) order, none twice.
pub fn assert_ordered_once(records: &[(String, String, String, i64)]) {
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for (location, sku, event_id, posting_id) in records {
        assert!(
            seen.insert(event_id.clone()),
            "{event_id} reached the ERP twice"
        );
        let key = (location.clone(), sku.clone());
        if let Some(previous) = last.get(&key) {
            assert!(
                posting_id > previous,
                "{location}/{sku}: posting {posting_id} arrived after {previous}"
            );
        }
        last.insert(key, *posting_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postings_converge_through_sandbox_faults_in_order_and_once() {
    let app = TestApp::spawn_with(quick_pipeline).await;
    let workload = Workload::new("F", 20, 200, 20_000, 7);
    workload.register(&app).await;
    let rejected = workload.skus[3].clone();
    let ops_write = app.token(Layer::Process, "ops:write");

    // Slow and flaky from the start; one product refused part-way.
    set_faults(&app, json!({"latency_ms": 5, "fail_percent": 30})).await;
    let third = workload.batches.len() / 3;
    for index in 0..third {
        workload.send(&app, index).await;
    }
    set_faults(
        &app,
        json!({"latency_ms": 5, "fail_percent": 30, "reject_skus": [rejected]}),
    )
    .await;
    for index in third..2 * third {
        workload.send(&app, index).await;
    }
    // Down for a while: the breaker opens, nothing is lost.
    set_faults(&app, json!({"down": true})).await;
    for index in 2 * third..workload.batches.len() {
        workload.send(&app, index).await;
    }
    let health = wait_for(&app, Duration::from_secs(30), "the breaker to open", |h| {
        h["erp"]["breaker"]["state"] != "closed"
    })
    .await;
    assert!(health["postings"]["pending"].as_i64().unwrap_or(0) > 0);
    set_faults(
        &app,
        json!({"latency_ms": 5, "fail_percent": 30, "reject_skus": [rejected]}),
    )
    .await;

    // Everything but the refused product's keys drains; its first posting
    // per key is dead and the later ones wait behind it, visibly.
    let health = wait_for(
        &app,
        Duration::from_secs(180),
        "all but dead letters",
        |h| {
            let p = &h["postings"];
            p["in_flight"] == 0
                && p["dead"].as_i64().unwrap_or(0) > 0
                && p["pending"] == p["blocked_by_dead"]
        },
    )
    .await;
    assert_eq!(health["erp"]["breaker"]["state"], "closed");
    let token = app.token(Layer::Process, "ops:read");
    let dead: Value = app
        .get(
            Layer::Process,
            "/v1/ops/postings?status=dead&limit=1000",
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    let dead = dead["postings"].as_array().cloned().unwrap_or_default();
    assert!(!dead.is_empty());
    for letter in &dead {
        assert_eq!(
            letter["sku"],
            rejected.as_str(),
            "only the refused product dies"
        );
        assert!(
            letter["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("blocked")),
            "{letter}"
        );
    }
    // A discard needs a note; replaying a posting that is not dead is a 409.
    let first = dead[0]["posting_id"].as_i64().expect("id");
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("/v1/ops/postings/{first}/discard"),
            &ops_write,
            r#"{"note":"  "}"#,
        )
        .await;
    problem(response, 422).await;

    // The operator fixes the product in the ERP and replays the letters.
    set_faults(&app, json!({"latency_ms": 5, "fail_percent": 30})).await;
    for letter in &dead {
        let id = letter["posting_id"].as_i64().expect("id");
        let response = app
            .send_json(
                Method::POST,
                Layer::Process,
                &format!("/v1/ops/postings/{id}/replay"),
                &ops_write,
                "",
            )
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("/v1/ops/postings/{first}/replay"),
            &ops_write,
            "",
        )
        .await;
    assert!(matches!(response.status().as_u16(), 409), "replayed twice");
    wait_for(
        &app,
        Duration::from_secs(120),
        "the outbox to drain",
        drained,
    )
    .await;

    // The ERP equals the platform, got every posting once, in order.
    let platform = non_zero(workload.platform_on_hand(&app).await);
    let erp = non_zero(erp_balances(&app, &workload.stores).await);
    assert_eq!(platform.len(), erp.len());
    assert_eq!(platform, erp, "ERP quantities equal platform on_hand");
    let records: Vec<(String, String, String, i64)> = sandbox_records(&app)
        .await
        .into_iter()
        .map(|r| {
            (
                r["location_id"].as_str().unwrap_or_default().to_owned(),
                r["sku"].as_str().unwrap_or_default().to_owned(),
                r["event_id"].as_str().unwrap_or_default().to_owned(),
                r["posting_id"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert!(records.len() > 10_000);
    assert_ordered_once(&records);
}

#[tokio::test]
async fn reconciliation_corrects_small_differences_and_routes_big_ones_to_review() {
    let app = TestApp::spawn_with(|s| {
        quick_pipeline(s);
        s.reconciliation.review_above = "100.00".parse().expect("decimal");
    })
    .await;
    let workload = Workload::new("R", 2, 3, 40, 11);
    workload.register(&app).await;
    workload.send(&app, 0).await;
    wait_for(&app, Duration::from_secs(30), "delivery", drained).await;
    let ops_write = app.token(Layer::Process, "ops:write");
    let run = |app: &TestApp| {
        let token = ops_write.clone();
        let url = app.url(Layer::Process, "/v1/ops/reconciliation/runs");
        let http = app.http.clone();
        async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("json")
        }
    };
    // In step: nothing to report.
    let report = run(&app).await;
    assert_eq!(report["run"]["status"], "completed");
    assert_eq!(report["run"]["mismatches"], 0);
    assert!(report["run"]["compared"].as_i64().unwrap_or(0) > 0);

    // Someone changes the ERP by hand: 2 units (5.00 at cost) and 100
    // units (250.00 at cost, above the review threshold).
    let (store, small, big) = (&workload.stores[0], &workload.skus[0], &workload.skus[1]);
    let system_ops = app.token(Layer::System, "ops:write");
    for (sku, delta) in [(small, -2), (big, 100)] {
        let response = app
            .send_json(
                Method::POST,
                Layer::System,
                "/v1/erp/sandbox/stock-corrections",
                &system_ops,
                &json!({"location_id": store, "sku": sku, "quantity": delta}).to_string(),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let before = workload.platform_on_hand(&app).await;
    let report = run(&app).await;
    assert_eq!(report["run"]["mismatches"], 2, "{report}");
    let exceptions = report["exceptions"].as_array().expect("exceptions");
    let find = |sku: &str| {
        exceptions
            .iter()
            .find(|e| e["sku"] == sku)
            .cloned()
            .expect("exception")
    };
    let small_exception = find(small);
    assert_eq!(small_exception["status"], "corrected");
    assert_eq!(small_exception["difference"], -2);
    assert_eq!(small_exception["value_at_cost"], "5.00");
    let big_exception = find(big);
    assert_eq!(big_exception["status"], "open");
    assert_eq!(big_exception["value_at_cost"], "250.00");
    let after = workload.platform_on_hand(&app).await;
    let key = |sku: &str| (store.clone(), sku.to_owned());
    assert_eq!(
        after.get(&key(small)).copied().unwrap_or(0),
        before.get(&key(small)).copied().unwrap_or(0) - 2
    );
    assert_eq!(
        after.get(&key(big)),
        before.get(&key(big)),
        "waits for review"
    );

    // The review queue holds it; approving corrects the platform.
    let token = app.token(Layer::Process, "ops:read");
    let queue: Value = app
        .get(
            Layer::Process,
            "/v1/ops/reconciliation/exceptions?status=open",
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(queue["exceptions"].as_array().map(Vec::len), Some(1));
    let id = big_exception["exception_id"].as_i64().expect("id");
    let health = sync_health(&app).await;
    assert_eq!(health["reconciliation"]["open_exceptions"], 1);
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("/v1/ops/reconciliation/exceptions/{id}/approve"),
            &ops_write,
            "",
        )
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let approved: Value = response.json().await.expect("json");
    assert_eq!(approved["status"], "corrected");
    assert_eq!(
        approved["adjustment_event_id"],
        format!("reconciliation:{id}")
    );
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("/v1/ops/reconciliation/exceptions/{id}/reject"),
            &ops_write,
            r#"{"note":"too late"}"#,
        )
        .await;
    problem(response, 409).await;
    let after = workload.platform_on_hand(&app).await;
    assert_eq!(
        after.get(&key(big)).copied().unwrap_or(0),
        before.get(&key(big)).copied().unwrap_or(0) + 100
    );
    // The correction is not sent to the ERP again: the next run is clean.
    wait_for(&app, Duration::from_secs(30), "delivery", drained).await;
    let report = run(&app).await;
    assert_eq!(report["run"]["mismatches"], 0, "{report}");

    // A rejected exception changes nothing on the platform.
    let response = app
        .send_json(
            Method::POST,
            Layer::System,
            "/v1/erp/sandbox/stock-corrections",
            &system_ops,
            &json!({"location_id": store, "sku": big, "quantity": 500}).to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let report = run(&app).await;
    let id = report["exceptions"][0]["exception_id"]
        .as_i64()
        .expect("id");
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("/v1/ops/reconciliation/exceptions/{id}/reject"),
            &ops_write,
            r#"{"note":"miscount in the ERP; fixed there"}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let rejected: Value = response.json().await.expect("json");
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(
        workload
            .platform_on_hand(&app)
            .await
            .get(&key(big))
            .copied()
            .unwrap_or(0),
        before.get(&key(big)).copied().unwrap_or(0) + 100
    );
}

/// A transfer (short received) and a return with every disposition reach
/// the ERP as the expected postings, once each.
#[tokio::test]
async fn transfer_and_return_postings_reach_the_erp() {
    let app = TestApp::spawn_with(quick_pipeline).await;
    let writer = app.token(Layer::Process, "inventory:write");
    let body = json!({ "events": [{
        "event_id": "rcv-1", "type": "receipt", "location_id": "S001", "sku": "SKU-000001",
        "quantity": 10, "occurred_at": "2026-11-20T08:00:00Z", "source": "e2e"
    }]});
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/inventory/events",
            &writer,
            &body.to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let clerk = app.token_for(
        Layer::Process,
        "clerk",
        "transfers:write returns:write",
        None,
    );
    let created: Value = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/transfers",
            &clerk,
            &json!({"source_location_id": "S001", "destination_location_id": "S002",
                    "lines": [{"sku": "SKU-000001", "quantity": 5}]})
            .to_string(),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        created["status"], "approved",
        "small transfers approve themselves"
    );
    let id = created["transfer_id"].as_str().expect("id").to_owned();
    for (step, body) in [
        ("ship", String::new()),
        (
            "receive",
            json!({"lines": [{"sku": "SKU-000001", "quantity": 4}]}).to_string(),
        ),
    ] {
        let response = app
            .send_json(
                Method::POST,
                Layer::Process,
                &format!("/v1/transfers/{id}/{step}"),
                &clerk,
                &body,
            )
            .await;
        assert_eq!(response.status(), 200, "{step}");
    }
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/returns",
            &clerk,
            &json!({"return_id": "RMA-7", "location_id": "S003", "channel": "store",
                    "lines": [
                        {"sku": "SKU-000002", "quantity": 2},
                        {"sku": "SKU-000003", "quantity": 1, "disposition": "damaged"},
                        {"sku": "SKU-000004", "quantity": 1, "disposition": "return_to_vendor"}]})
            .to_string(),
        )
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    wait_for(&app, Duration::from_secs(30), "delivery", drained).await;

    let mut records: Vec<(String, String, String, i64)> = sandbox_records(&app)
        .await
        .into_iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default().to_owned(),
                r["location_id"].as_str().unwrap_or_default().to_owned(),
                r["sku"].as_str().unwrap_or_default().to_owned(),
                r["quantity"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    records.sort();
    let expected = |kind: &str, location: &str, sku: &str, quantity: i64| {
        (
            kind.to_owned(),
            location.to_owned(),
            sku.to_owned(),
            quantity,
        )
    };
    let mut want = vec![
        expected("receipt", "S001", "SKU-000001", 10),
        expected("transfer_out", "S001", "SKU-000001", -5),
        expected("transfer_in", "S002", "SKU-000001", 4),
        expected("return", "S003", "SKU-000002", 2),
        expected("return", "S003", "SKU-000003", 1),
        expected("return", "S003", "SKU-000004", 1),
        expected("write_off", "S003", "SKU-000004", -1),
    ];
    want.sort();
    assert_eq!(records, want);
}
