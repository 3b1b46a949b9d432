//! OpenTelemetry traces across the layers: a POS transaction sent to
//! system-api with a `traceparent` becomes one trace: system-api's server
//! span, process-api's ingest span under it, and the ERP posting of the
//! sale under that, exported over OTLP/HTTP (JSON) to a receiver run by the
//! test. Its own test binary: the trace exporter is process-wide.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use retail_platform::{Platform, mint_token};
use retail_shared::Settings;
use retail_shared::auth::TokenRequest;
use retail_shared::config::Secret;
use serde_json::{Value, json};

/// Every span the receiver got, flattened, with its resource's attributes.
fn spans(bodies: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    out.push(span.clone());
                }
            }
        }
    }
    out
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn token(settings: &Settings, audience: &str, scopes: &str) -> String {
    mint_token(
        settings,
        &TokenRequest {
            audience: audience.into(),
            subject: "trace-test".into(),
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            locations: None,
            on_behalf_of: None,
            ttl_seconds: 600,
        },
    )
    .expect("token")
}

#[tokio::test]
async fn a_pos_sale_is_one_trace_from_system_api_to_its_erp_posting() {
    // The OTLP receiver.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = received.clone();
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                store.lock().expect("lock").push(body);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, receiver).await.expect("serve") });

    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::defaults();
    settings.experience.port = 0;
    settings.process.port = 0;
    settings.system.port = 0;
    settings.process.database_url = Secret::new(format!(
        "sqlite://{}",
        dir.path().join("process.db").display()
    ));
    settings.system.database_url = Secret::new(format!(
        "sqlite://{}",
        dir.path().join("system.db").display()
    ));
    settings.seed.stores = 2;
    settings.seed.skus = 5;
    settings.seed.opening_stock = false;
    settings.telemetry.log_level = "warn".into();
    settings.telemetry.otlp_endpoint = endpoint;
    settings.telemetry.otlp_batch_delay_ms = 100;
    settings.erp_posting.poll_interval_ms = 20;
    settings.reconciliation.interval_seconds = 0;
    settings.reconciliation.master_sync_interval_seconds = 0;
    let traces = retail_shared::telemetry::init_tracing(&settings.telemetry, "retail-platform")
        .expect("exporter")
        .expect("enabled");
    let platform = Platform::start(settings.clone()).await.expect("platform");
    let http = reqwest::Client::new();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = http
        .post(format!("{}/v1/pos/transactions", platform.system_url()))
        .bearer_auth(token(&settings, "system-api", "pos:write"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(
            &json!({"store_id": "S001", "terminal_id": "T01", "transaction_id": "trace-1",
            "occurred_at": "2026-11-30T09:00:00Z",
            "lines": [{"sku": "SKU-000002", "quantity": 2, "kind": "sale"}]}),
        )
        .send()
        .await
        .expect("sent");
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );

    // Wait for the ERP posting, then for its span.
    let ops = token(&settings, "process-api", "ops:read");
    let started = Instant::now();
    loop {
        let health: Value = http
            .get(format!("{}/v1/ops/sync-health", platform.process_url()))
            .bearer_auth(&ops)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        if health["postings"]["posted"].as_i64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no posting: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let ours = loop {
        traces.flush();
        let all = spans(&received.lock().expect("lock"));
        let ours: Vec<Value> = all
            .into_iter()
            .filter(|s| s["traceId"] == trace_id)
            .collect();
        if ours.iter().any(|s| s["name"] == "erp.posting") {
            break ours;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "spans of the trace: {ours:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let find = |service: &str, name: &str| -> Value {
        ours.iter()
            .find(|s| {
                s["name"] == name
                    && attribute(s, "retail.service").and_then(|v| v["stringValue"].as_str())
                        == Some(service)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {service} span `{name}` in {ours:#?}"))
    };
    let pos = find("system-api", "POST /v1/pos/transactions");
    assert_eq!(
        pos["parentSpanId"], caller_span,
        "the caller's span is the parent"
    );
    let ingest = find("process-api", "POST /v1/inventory/events");
    assert_eq!(
        ingest["parentSpanId"], pos["spanId"],
        "process-api under system-api"
    );
    let posting = find("process-api", "erp.posting");
    assert_eq!(
        posting["parentSpanId"], ingest["spanId"],
        "the posting under the ingest"
    );
    assert_eq!(
        attribute(&posting, "retail.outcome").and_then(|v| v["stringValue"].as_str()),
        Some("posted")
    );
    // The posting links to the batch call's own trace, where system-api
    // handled the ERP call.
    let link = posting["links"][0].clone();
    let call_trace = link["traceId"].as_str().expect("a link").to_owned();
    let all = spans(&received.lock().expect("lock"));
    assert!(
        all.iter()
            .any(|s| s["traceId"] == call_trace.as_str() && s["name"] == "POST /v1/erp/postings"),
        "the linked trace holds system-api's ERP call"
    );
    drop(platform);
}
