//! Crash safety: process-api is killed with SIGKILL while batches are being
//! ingested. After a restart every acknowledged event is in the journal
//! exactly once, re-sending everything applies each event once overall, and
//! a rebuild equals the live positions. Runs on SQLite, and on PostgreSQL
//! when `TEST_POSTGRES_URL` is set.

#[path = "storage/backends.rs"]
#[expect(
    dead_code,
    reason = "shares the storage tests' helpers; uses only some"
)]
mod storage_backends;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use process_api::storage::Store;
use retail_shared::Settings;
use retail_shared::auth::{TokenIssuer, TokenRequest};
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed when dropped, so a failing assertion never
/// leaves a server running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(database_url: &str, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_process-api"))
        .env("RETAIL_PROCESS__PORT", port.to_string())
        .env("RETAIL_PROCESS__DATABASE_URL", database_url)
        .env("RETAIL_SEED__STORES", "5")
        .env("RETAIL_SEED__SKUS", "40")
        .env("RETAIL_SEED__OPENING_STOCK", "false")
        .env("RETAIL_TELEMETRY__LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("process-api starts");
    Server(child)
}

async fn wait_healthy(http: &reqwest::Client, port: u16) {
    for _ in 0..200 {
        if let Ok(response) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process-api did not become ready");
}

fn batch(client: usize, number: usize) -> Vec<Value> {
    (0..200)
        .map(|i| {
            let n = number * 200 + i;
            let kind = ["receipt", "sale", "adjustment", "count"][n % 4];
            json!({
                "event_id": format!("crash-{client}-{n:06}"),
                "type": kind,
                "location_id": format!("S{:03}", 1 + n % 5),
                "sku": format!("SKU-{:06}", 1 + (n * 7) % 40),
                "quantity": if n % 4 == 2 { -1 } else { 1 + (n % 9) as i64 },
                "occurred_at": format!("2026-11-20T{:02}:{:02}:{:02}Z", 8 + (n / 3600) % 10, (n / 60) % 60, n % 60),
                "source": "crash-test",
            })
        })
        .collect()
}

async fn crash_and_recover(database_url: &str, verify_store: impl AsyncFn() -> Store) {
    let http = reqwest::Client::new();
    let token = TokenIssuer::new(&Settings::defaults().auth)
        .mint(&TokenRequest {
            audience: "process-api".into(),
            subject: "crash-test".into(),
            scopes: vec!["inventory:write".into()],
            ttl_seconds: 600,
            ..TokenRequest::default()
        })
        .expect("token");
    let port = free_port();
    let mut child = start(database_url, port);
    wait_healthy(&http, port).await;

    // Four clients send batches until the server dies under them.
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let url = format!("http://127.0.0.1:{port}/v1/inventory/events");
    let mut clients = Vec::new();
    for client in 0..4 {
        let (http, url, token, acknowledged) = (
            http.clone(),
            url.clone(),
            token.clone(),
            acknowledged.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut sent = 0;
            for number in 0..1000 {
                sent = number + 1;
                let body = json!({ "events": batch(client, number) });
                let Ok(response) = http.post(&url).bearer_auth(&token).json(&body).send().await
                else {
                    break;
                };
                if response.status() != 200 {
                    break;
                }
                let Ok(answer) = response.json::<Value>().await else {
                    break;
                };
                let mut ack = acknowledged.lock().expect("lock");
                for result in answer["results"].as_array().into_iter().flatten() {
                    assert!(
                        matches!(result["status"].as_str(), Some("applied" | "duplicate")),
                        "{result}"
                    );
                    ack.insert(result["event_id"].as_str().unwrap_or_default().to_owned());
                }
            }
            sent
        }));
    }
    // Let some batches land, then kill without warning.
    while acknowledged.lock().expect("lock").len() < 2000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reaped");
    let mut batches_sent = Vec::new();
    for client in clients {
        batches_sent.push(client.await.expect("client"));
    }
    let acknowledged: Vec<String> = acknowledged.lock().expect("lock").iter().cloned().collect();
    assert!(!acknowledged.is_empty());

    // Restart on the same database.
    let _child = start(database_url, port);
    wait_healthy(&http, port).await;
    let store = verify_store().await;
    let found = store.journalled_ids(&acknowledged).await.expect("ids");
    assert_eq!(
        found.len(),
        acknowledged.len(),
        "an acknowledged event was lost"
    );

    // Re-send everything that was sent (acknowledged or not): every event is
    // applied exactly once overall.
    let mut total = 0;
    for (client, sent) in batches_sent.iter().enumerate() {
        for number in 0..*sent {
            let body = json!({ "events": batch(client, number) });
            let response = http
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("resend");
            assert_eq!(response.status(), 200);
            total += 200;
        }
    }
    assert_eq!(store.journal_len().await.expect("len"), total as i64);
    let report = store.rebuild(false).await.expect("rebuild");
    assert_eq!(
        report.mismatches, 0,
        "rebuild differs: {:?}",
        report.examples
    );
}

#[tokio::test]
async fn sigkill_mid_ingest_loses_no_acknowledged_event_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    crash_and_recover(&url, async || Store::connect(&url, 2).await.expect("store")).await;
}

#[tokio::test]
async fn sigkill_mid_ingest_loses_no_acknowledged_event_postgres() {
    let Some(base) = storage_backends::postgres_url() else {
        return;
    };
    let url = storage_backends::fresh_postgres_url(&base).await;
    crash_and_recover(&url, async || Store::connect(&url, 2).await.expect("store")).await;
}
