//! The availability change feed: channels' SSE stream at experience-api
//! (latency, resume with Last-Event-ID through the relay's buffer and
//! process-api's pages), and signed CloudEvents webhooks through a
//! receiver outage, with dead letters and their replay.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use hmac::{KeyInit, Mac};
use reqwest::Method;
use retail_shared::sse::{SseEvent, SseParser};
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp};

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>;

/// A Server-Sent Events client over reqwest.
pub struct SseClient {
    body: Body,
    parser: SseParser,
    queue: VecDeque<SseEvent>,
}

impl SseClient {
    pub async fn open(
        app: &TestApp,
        layer: Layer,
        path: &str,
        token: &str,
        last: Option<i64>,
    ) -> Self {
        let mut request = app
            .http
            .get(app.url(layer, path))
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        let response = request.send().await.expect("stream opens");
        assert_eq!(response.status(), 200, "stream status");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap_or_default()
                .starts_with("text/event-stream")
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::default(),
            queue: VecDeque::new(),
        }
    }

    /// The next event, or None after `limit` without one.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            self.queue
                .extend(self.parser.feed(&chunk.expect("stream chunk")));
        }
    }

    /// The next `availability` change as JSON.
    pub async fn next_change(&mut self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let event = self.next(left).await?;
            if event.event == "availability" || event.event == "change" {
                let change: Value = serde_json::from_str(&event.data).expect("change json");
                assert_eq!(
                    event.id.as_deref(),
                    Some(change["seq"].to_string().as_str()),
                    "the SSE id is the seq"
                );
                return Some(change);
            }
            assert_ne!(event.event, "reset", "no reset expected");
        }
    }
}

pub fn receipt(id: &str, location: &str, sku: &str, quantity: i64) -> Value {
    json!({"event_id": id, "type": "receipt", "location_id": location, "sku": sku,
        "quantity": quantity, "occurred_at": "2026-11-30T08:00:00Z", "source": "wms"})
}

pub async fn ingest(app: &TestApp, events: Vec<Value>) {
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
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["summary"]["rejected"], 0, "{body}");
}

/// process-api's feed after `after` (filtered), once everything committed
/// is published.
async fn feed_after(app: &TestApp, after: i64, filter: &str) -> Vec<Value> {
    let token = app.token(Layer::Process, "inventory:read");
    crate::erp::wait_for(app, Duration::from_secs(20), "the feed to catch up", |h| {
        h["feed"]["backlog"] == 0
    })
    .await;
    let mut changes = Vec::new();
    let mut cursor = after;
    loop {
        let page: Value = app
            .get(
                Layer::Process,
                &format!("/v1/inventory/changes?after={cursor}&limit=1000{filter}"),
                Some(&token),
            )
            .await
            .json()
            .await
            .expect("json");
        let batch = page["changes"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            return changes;
        }
        cursor = batch.last().and_then(|c| c["seq"].as_i64()).expect("seq");
        changes.extend(batch);
    }
}

fn seqs(changes: &[Value]) -> Vec<i64> {
    changes
        .iter()
        .map(|c| c["seq"].as_i64().expect("seq"))
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test]
async fn channels_see_changes_fast_and_resume_without_gaps() {
    // A small relay buffer: resuming after a longer absence is served from
    // process-api's pages first, then from the buffer.
    let app = TestApp::spawn_with(|s| s.feed.relay_buffer = 8).await;
    let channel = app.token(Layer::Experience, "availability:read");
    let mut stream = SseClient::open(
        &app,
        Layer::Experience,
        "/v1/availability/changes",
        &channel,
        None,
    )
    .await;

    // The relay follows process-api once its first change arrives.
    let mut warm = 0;
    let first = loop {
        warm += 1;
        ingest(
            &app,
            vec![receipt(&format!("warm-{warm}"), "S001", "SKU-000001", 1)],
        )
        .await;
        if let Some(change) = stream.next_change(Duration::from_secs(2)).await {
            break change;
        }
        assert!(warm < 10, "no change reached the channel stream");
    };
    assert_eq!(first["sku"], "SKU-000001");
    let mut last = first["seq"].as_i64().expect("seq");

    // Latency: from the ingest answer to the change on the channel stream.
    let mut latencies = Vec::new();
    for i in 0..30 {
        let location = format!("S00{}", 1 + i % 3);
        let sku = format!("SKU-{:06}", 1 + i % 10);
        ingest(
            &app,
            vec![receipt(&format!("fast-{i}"), &location, &sku, 2)],
        )
        .await;
        let accepted = Instant::now();
        let change = stream
            .next_change(Duration::from_secs(5))
            .await
            .expect("the change arrives");
        latencies.push(accepted.elapsed());
        assert_eq!(change["location_id"], location.as_str());
        assert_eq!(change["sku"], sku.as_str());
        let seq = change["seq"].as_i64().expect("seq");
        assert_eq!(seq, last + 1, "in order, nothing skipped");
        last = seq;
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    let p90 = percentile(&latencies, 0.9);
    eprintln!(
        "accepted → channel SSE: p50 {p50:?}, p90 {p90:?}, max {:?}",
        latencies.last().expect("samples")
    );
    assert!(p90 <= Duration::from_millis(250), "p90 {p90:?} over 250 ms");

    // Away: 60 changes in 6 batches, then back with Last-Event-ID.
    drop(stream);
    for batch in 0..6 {
        let events = (0..10)
            .map(|i| {
                receipt(
                    &format!("away-{batch}-{i}"),
                    &format!("S00{}", 1 + (batch + i) % 3),
                    &format!("SKU-{:06}", 1 + i),
                    1,
                )
            })
            .collect();
        ingest(&app, events).await;
    }
    let expected = feed_after(&app, last, "").await;
    assert!(
        expected.len() >= 30,
        "changes while away: {}",
        expected.len()
    );
    let mut resumed = SseClient::open(
        &app,
        Layer::Experience,
        "/v1/availability/changes",
        &channel,
        Some(last),
    )
    .await;
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let change = resumed
            .next_change(Duration::from_secs(10))
            .await
            .expect("every missed change arrives");
        received.push(change);
    }
    assert_eq!(
        seqs(&received),
        seqs(&expected),
        "exactly the missed changes, in order"
    );
    for (got, want) in received.iter().zip(&expected) {
        assert_eq!(got["available"], want["available"]);
        assert_eq!(got["location_id"], want["location_id"]);
    }
    // And then live again.
    ingest(&app, vec![receipt("after-resume", "S002", "SKU-000007", 3)]).await;
    let live = resumed
        .next_change(Duration::from_secs(5))
        .await
        .expect("live change");
    assert_eq!(
        live["seq"].as_i64(),
        Some(seqs(&expected).last().copied().unwrap_or(last) + 1)
    );

    // A filtered resume sees only its sku, still without gaps.
    let filtered_expected = feed_after(&app, last, "&sku=SKU-000003").await;
    assert!(!filtered_expected.is_empty());
    let mut filtered = SseClient::open(
        &app,
        Layer::Experience,
        "/v1/availability/changes?sku=SKU-000003",
        &channel,
        Some(last),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < filtered_expected.len() {
        got.push(
            filtered
                .next_change(Duration::from_secs(10))
                .await
                .expect("filtered change"),
        );
    }
    assert_eq!(seqs(&got), seqs(&filtered_expected));
    assert!(got.iter().all(|c| c["sku"] == "SKU-000003"));

    // Bad input is a problem, not a stream.
    let response = app
        .http
        .get(app.url(Layer::Experience, "/v1/availability/changes"))
        .bearer_auth(&channel)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .expect("sent");
    crate::helpers::problem(response, 400).await;
    let store_token = app.token_for(
        Layer::Experience,
        "store-app",
        "availability:read",
        Some(&["S001"]),
    );
    let response = app
        .get(
            Layer::Experience,
            "/v1/availability/changes?location_id=S002",
            Some(&store_token),
        )
        .await;
    crate::helpers::problem(response, 403).await;
}

/// A webhook receiver: verifies both signatures of every request, can be
/// taken down (503) or made to fail (500).
#[derive(Default)]
struct Receiver {
    secret: Mutex<String>,
    down: AtomicBool,
    failing: AtomicBool,
    /// (content type, CloudEvent) in arrival order.
    events: Mutex<Vec<(String, Value)>>,
    /// Every request, answered or refused, in arrival order.
    seen: Mutex<Vec<Seen>>,
    refused: AtomicUsize,
    bad_signatures: AtomicUsize,
}

/// What the receiver saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    webhook_id: String,
    /// `webhook-signature` verified (Standard Webhooks).
    standard: Result<(), String>,
    /// `x-signature-256` verified (the deprecated header).
    legacy: bool,
    /// `Deprecation`, `Sunset`, `Link`.
    lifecycle: [Option<String>; 3],
}

fn header<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The deprecated `sha256=<hex HMAC-SHA256 of the body>`.
fn legacy_sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Standard Webhooks verification as a receiver's library does it, written
/// from the specification: the key is the base64 after `whsec_` (other
/// secrets are raw keys), the header lists `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">` separated by spaces, and a timestamp more
/// than five minutes off is a replay.
fn verify_standard(
    secret: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let id = header(headers, "webhook-id").ok_or("no webhook-id")?;
    let timestamp = header(headers, "webhook-timestamp").ok_or("no webhook-timestamp")?;
    let signatures = header(headers, "webhook-signature").ok_or("no webhook-signature")?;
    let sent: i64 = timestamp.parse().map_err(|_| "timestamp not a number")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - sent).abs() > 300 {
        return Err(format!("timestamp {sent} too far from {now}"));
    }
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => STANDARD.decode(encoded).map_err(|e| e.to_string())?,
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    if signatures
        .split(' ')
        .any(|signature| signature.strip_prefix("v1,") == Some(expected.as_str()))
    {
        Ok(())
    } else {
        Err(format!("no v1 signature matches in {signatures:?}"))
    }
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    use axum::http::{HeaderMap, StatusCode};
    let receiver = Arc::new(Receiver::default());
    let state = receiver.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let secret = state.secret.lock().expect("lock").clone();
                let seen = Seen {
                    webhook_id: header(&headers, "webhook-id")
                        .unwrap_or_default()
                        .to_owned(),
                    standard: verify_standard(&secret, &headers, &body),
                    legacy: header(&headers, "x-signature-256")
                        .is_some_and(|s| s == legacy_sign(&secret, &body)),
                    lifecycle: ["deprecation", "sunset", "link"]
                        .map(|name| header(&headers, name).map(str::to_owned)),
                };
                let signed = seen.standard.is_ok() && seen.legacy;
                state.seen.lock().expect("lock").push(seen);
                if !signed {
                    state.bad_signatures.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::UNAUTHORIZED;
                }
                if state.down.load(Ordering::SeqCst) {
                    state.refused.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                if state.failing.load(Ordering::SeqCst) {
                    state.refused.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let payload: Value = serde_json::from_slice(&body).expect("json body");
                let events = match payload {
                    Value::Array(events) => events,
                    event => vec![event],
                };
                let mut stored = state.events.lock().expect("lock");
                for event in events {
                    stored.push((content_type.clone(), event));
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("receiver serves");
    });
    (receiver, url)
}

fn quick_webhooks(settings: &mut retail_shared::Settings) {
    settings.webhooks.backoff_base_ms = 20;
    settings.webhooks.backoff_max_ms = 200;
    settings.webhooks.poll_interval_ms = 20;
    settings.webhooks.timeout_ms = 2000;
}

async fn register(app: &TestApp, body: Value) -> Value {
    let token = app.token(Layer::Process, "ops:write");
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/ops/webhooks",
            &token,
            &body.to_string(),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.expect("json")
}

async fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhooks_receive_every_change_once_signed_after_an_outage() {
    let app = TestApp::spawn_with(|s| {
        quick_webhooks(s);
        s.webhooks.max_attempts = 10_000;
    })
    .await;
    let (receiver, url) = start_receiver().await;
    let secret = "a-test-secret-of-some-length";
    *receiver.secret.lock().expect("lock") = secret.to_owned();

    // Two subscribers: every change one by one, and one sku in batches.
    let all = register(&app, json!({"url": url, "secret": secret})).await;
    assert_eq!(all["secret"], secret, "the secret is shown at creation");
    let start = all["cursor"].as_i64().expect("cursor");
    let batched = register(
        &app,
        json!({"url": url, "secret": secret, "skus": ["SKU-000004"], "max_batch": 25}),
    )
    .await;
    let listed: Value = app
        .get(
            Layer::Process,
            "/v1/ops/webhooks",
            Some(&app.token(Layer::Process, "ops:read")),
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(
        listed["subscriptions"]
            .as_array()
            .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s.get("secret").is_none())),
        "secrets are not listed: {listed}"
    );

    let batch = |tag: &str| -> Vec<Value> {
        (0..20)
            .map(|i| {
                receipt(
                    &format!("{tag}-{i}"),
                    &format!("S00{}", 1 + i % 3),
                    &format!("SKU-{:06}", 1 + i % 10),
                    1,
                )
            })
            .collect()
    };
    ingest(&app, batch("before")).await;
    let first = feed_after(&app, start, "").await;
    wait_until(Duration::from_secs(20), "the first deliveries", || {
        receiver.events.lock().expect("lock").len() >= first.len()
    })
    .await;

    // The receiver goes away; changes keep coming.
    receiver.down.store(true, Ordering::SeqCst);
    for round in 0..5 {
        ingest(&app, batch(&format!("outage-{round}"))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(Duration::from_secs(20), "failed attempts", || {
        receiver.refused.load(Ordering::SeqCst) >= 5
    })
    .await;
    let ops = app.token(Layer::Process, "ops:read");
    let during: Value = app
        .get(
            Layer::Process,
            &format!("/v1/ops/webhooks/{}", all["subscription_id"]),
            Some(&ops),
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(during["attempts"].as_i64().unwrap_or(0) > 0, "{during}");
    assert_eq!(during["last_error"], "answered 503", "{during}");

    // Back: everything arrives, once, in order.
    receiver.down.store(false, Ordering::SeqCst);
    let expected_all = feed_after(&app, start, "").await;
    let expected_sku = feed_after(&app, start, "&sku=SKU-000004").await;
    let total = expected_all.len() + expected_sku.len();
    wait_until(Duration::from_secs(30), "every change delivered", || {
        receiver.events.lock().expect("lock").len() >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more comes
    let events = receiver.events.lock().expect("lock").clone();
    assert_eq!(events.len(), total, "no change twice");
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    let ids = |content_type: &str| -> Vec<i64> {
        events
            .iter()
            .filter(|(ct, _)| ct == content_type)
            .map(|(_, e)| e["id"].as_str().and_then(|id| id.parse().ok()).expect("id"))
            .collect()
    };
    assert_eq!(ids("application/cloudevents+json"), seqs(&expected_all));
    assert_eq!(
        ids("application/cloudevents-batch+json"),
        seqs(&expected_sku)
    );
    for (_, event) in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], "com.retail-platform.availability.changed");
        assert!(event["source"].is_string() && event["time"].is_string());
        assert_eq!(
            event["subject"],
            format!(
                "{}/{}",
                event["data"]["location_id"].as_str().unwrap_or_default(),
                event["data"]["sku"].as_str().unwrap_or_default()
            )
        );
    }
    let after: Value = app
        .get(
            Layer::Process,
            &format!("/v1/ops/webhooks/{}", batched["subscription_id"]),
            Some(&ops),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(after["attempts"], 0);
    assert_eq!(after["dead_letters"], 0);
}

#[tokio::test]
async fn webhook_dead_letters_are_kept_and_replayed() {
    let app = TestApp::spawn_with(|s| {
        quick_webhooks(s);
        s.webhooks.max_attempts = 3;
    })
    .await;
    let (receiver, url) = start_receiver().await;
    receiver.failing.store(true, Ordering::SeqCst);
    let created = register(&app, json!({"url": url})).await;
    let secret = created["secret"]
        .as_str()
        .expect("generated secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "a Standard Webhooks secret");
    *receiver.secret.lock().expect("lock") = secret;
    let id = created["subscription_id"].as_i64().expect("id");

    ingest(&app, vec![receipt("dl-1", "S001", "SKU-000001", 1)]).await;
    ingest(&app, vec![receipt("dl-2", "S002", "SKU-000002", 1)]).await;
    let ops = app.token(Layer::Process, "ops:read");
    let path = format!("/v1/ops/webhooks/{id}/dead-letters");
    let started = Instant::now();
    let letters = loop {
        let body: Value = app
            .get(Layer::Process, &path, Some(&ops))
            .await
            .json()
            .await
            .expect("json");
        let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
        if letters.len() == 2 {
            break letters;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "dead letters: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(letters.iter().all(|l| l["attempts"] == 3), "{letters:?}");
    assert!(
        letters.iter().all(|l| l["last_error"] == "answered 500"),
        "{letters:?}"
    );
    // Each delivery kept its webhook-id through its retries; every
    // attempt was signed both ways and announced the old header's end.
    let seen = receiver.seen.lock().expect("lock").clone();
    let ids: Vec<&str> = seen.iter().map(|s| s.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 6, "{seen:?}");
    assert!(
        !ids[0].is_empty() && ids[..3].iter().all(|id| *id == ids[0]),
        "{ids:?}"
    );
    assert!(ids[3..].iter().all(|id| *id == ids[3]), "{ids:?}");
    assert_ne!(ids[0], ids[3], "two deliveries, two ids");
    for request in &seen {
        assert_eq!(request.standard, Ok(()), "{request:?}");
        assert!(request.legacy, "the deprecated header is still sent");
        let [deprecation, sunset, link] = &request.lifecycle;
        assert!(
            deprecation.as_deref().is_some_and(|d| d.starts_with('@')),
            "{request:?}"
        );
        assert!(
            sunset.as_deref().is_some_and(|s| s.ends_with(" GMT")),
            "{request:?}"
        );
        assert!(
            link.as_deref()
                .is_some_and(|l| l.contains("rel=\"deprecation\"")),
            "{request:?}"
        );
    }
    let health = crate::erp::sync_health(&app).await;
    assert_eq!(health["webhooks"]["dead_letters"], 2);
    assert!(
        health["impact"]["summary"].as_array().is_some_and(|s| s
            .iter()
            .any(|line| line.as_str().unwrap_or_default().contains("dead letter"))),
        "{}",
        health["impact"]
    );

    let write = app.token(Layer::Process, "ops:write");
    let first = letters[0]["dead_letter_id"].as_i64().expect("id");
    let second = letters[1]["dead_letter_id"].as_i64().expect("id");
    // Still failing: the replay says so and the letter stays.
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("{path}/{first}/replay"),
            &write,
            "",
        )
        .await;
    let problem = crate::helpers::problem(response, 502).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("webhook-delivery-failed")
    );
    // Fixed: the replay delivers it, signed, and it is gone.
    receiver.failing.store(false, Ordering::SeqCst);
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("{path}/{first}/replay"),
            &write,
            "",
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(receiver.events.lock().expect("lock").len(), 1);
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    // Both replays were the first delivery again, under its id.
    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert!(seen[6..].iter().all(|s| s.webhook_id == ids[0]), "{seen:?}");
    // A discard needs a note.
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("{path}/{second}/discard"),
            &write,
            "{}",
        )
        .await;
    crate::helpers::problem(response, 422).await;
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            &format!("{path}/{second}/discard"),
            &write,
            r#"{"note":"partner confirmed they re-read availability"}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = app
        .get(Layer::Process, &path, Some(&ops))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["dead_letters"], json!([]));

    // Bad registrations change nothing.
    for (bad, status) in [
        (json!({"url": "ftp://example.com/x"}), 422),
        (json!({"url": url, "secret": "short"}), 422),
        (json!({"url": url, "max_batch": 0}), 422),
        (json!({"url": url, "surprise": true}), 422),
    ] {
        let response = app
            .send_json(
                Method::POST,
                Layer::Process,
                "/v1/ops/webhooks",
                &write,
                &bad.to_string(),
            )
            .await;
        crate::helpers::problem(response, status).await;
    }
    let listed: Value = app
        .get(Layer::Process, "/v1/ops/webhooks", Some(&ops))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["subscriptions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn webhooks_never_reach_internal_addresses_without_the_allowance() {
    let quick = |s: &mut retail_shared::Settings| {
        quick_webhooks(s);
        s.webhooks.max_attempts = 2;
    };
    // Registered while receivers on this machine were allowed (the tests'
    // development allowance), by a name that resolves to loopback...
    let app = TestApp::spawn_with(quick).await;
    let (receiver, url) = start_receiver().await;
    let by_name = url.replace("127.0.0.1", "localhost");
    let created = register(&app, json!({"url": by_name})).await;
    let id = created["subscription_id"].as_i64().expect("id");
    // ...then the allowance is withdrawn: deliveries are refused when
    // they connect.
    let app = app
        .restart_with(|s| {
            quick(s);
            s.webhooks.allowed_hosts.clear();
        })
        .await;
    ingest(&app, vec![receipt("internal-1", "S001", "SKU-000001", 1)]).await;

    let ops = app.token(Layer::Process, "ops:read");
    let path = format!("/v1/ops/webhooks/{id}/dead-letters");
    let started = Instant::now();
    let letters = loop {
        let body: Value = app
            .get(Layer::Process, &path, Some(&ops))
            .await
            .json()
            .await
            .expect("json");
        let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "dead letters: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters[0]["attempts"], 2, "{letters:?}");
    assert_eq!(letters[0]["last_error"], "refused address", "{letters:?}");
    let subscription: Value = app
        .get(
            Layer::Process,
            &format!("/v1/ops/webhooks/{id}"),
            Some(&ops),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        subscription["last_error"], "refused address",
        "{subscription}"
    );
    assert!(
        receiver.seen.lock().expect("lock").is_empty(),
        "nothing reached the receiver"
    );

    // Registration refuses internal targets, credentials in the URL and
    // other schemes, pointing at the url.
    let write = app.token(Layer::Process, "ops:write");
    for bad in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::ffff:192.168.0.1]/hook",
        "http://100.64.0.1/hook",
        by_name.as_str(),
        "https://user:password@example.com/hook",
        "file:///etc/passwd",
    ] {
        let response = app
            .send_json(
                Method::POST,
                Layer::Process,
                "/v1/ops/webhooks",
                &write,
                &json!({ "url": bad }).to_string(),
            )
            .await;
        let problem = crate::helpers::problem(response, 422).await;
        assert_eq!(problem["errors"][0]["pointer"], "/url", "{bad}: {problem}");
    }
}

async fn channel_availability(app: &TestApp, token: &str, sku: &str) -> (String, Value) {
    let response = app
        .get(
            Layer::Experience,
            &format!("/v1/availability/{sku}"),
            Some(token),
        )
        .await;
    assert_eq!(response.status(), 200);
    let source = response.headers()["x-availability-source"]
        .to_str()
        .expect("header")
        .to_owned();
    if source == "read-model" {
        let staleness: u64 = response.headers()["x-availability-staleness-ms"]
            .to_str()
            .expect("header")
            .parse()
            .expect("ms");
        assert!(staleness <= 2000, "staleness {staleness} ms over the bound");
    }
    (source, response.json().await.expect("json"))
}

async fn process_availability(app: &TestApp, skus: &[String]) -> Vec<Value> {
    let token = app.token(Layer::Process, "inventory:read");
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/inventory/availability",
            &token,
            &json!({ "skus": skus }).to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn the_read_model_answers_like_process_api_and_follows_changes() {
    let app = TestApp::spawn_with(|s| s.experience.read_model = true).await;
    let channel = app.token(Layer::Experience, "availability:read");
    let skus: Vec<String> = (1..=10).map(|n| format!("SKU-{n:06}")).collect();
    let events: Vec<Value> = (0..30)
        .map(|i| {
            receipt(
                &format!("rm-{i}"),
                &format!("S00{}", 1 + i % 3),
                &skus[i % 10],
                3 + i as i64,
            )
        })
        .collect();
    ingest(&app, events).await;

    // Fresh once process-api's stream has said the relay is complete.
    let started = Instant::now();
    loop {
        let (source, _) = channel_availability(&app, &channel, &skus[0]).await;
        if source == "read-model" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the read model never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Loaded on first read, then kept current: every answer equals
    // process-api's after a burst of sales and reservations.
    for sku in &skus {
        channel_availability(&app, &channel, sku).await;
    }
    let sales: Vec<Value> = (0..20)
        .map(|i| {
            json!({"event_id": format!("rm-sale-{i}"), "type": "sale",
            "location_id": format!("S00{}", 1 + i % 3), "sku": skus[i % 10],
            "quantity": 1, "occurred_at": "2026-11-30T08:30:00Z", "source": "pos"})
        })
        .collect();
    ingest(&app, sales).await;
    let reserve = app.token(Layer::Experience, "reservations:write");
    let response = app
        .send_json(
            Method::POST,
            Layer::Experience,
            "/v1/reservations",
            &reserve,
            &json!({"channel": "web", "order_ref": "rm-1", "ttl_seconds": 600,
                "lines": [{"sku": skus[2], "location_id": "S003", "quantity": 2}]})
            .to_string(),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    // The replica that took the reservation reads its own write at once
    // (it forgot the sku and loads it afresh).
    let reserved = process_availability(&app, std::slice::from_ref(&skus[2])).await;
    let (_, now) = channel_availability(&app, &channel, &skus[2]).await;
    assert_eq!(now["locations"], reserved[0]["locations"]);
    let truth = process_availability(&app, &skus).await;
    let started = Instant::now();
    loop {
        let mut same = true;
        for (sku, want) in skus.iter().zip(&truth) {
            let (source, got) = channel_availability(&app, &channel, sku).await;
            assert_eq!(source, "read-model");
            if got["total_available"] != want["total_available"]
                || got["locations"] != want["locations"]
            {
                same = false;
            }
        }
        if same {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the read model did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Narrowed per caller and per request, like process-api does.
    let store_app = app.token_for(
        Layer::Experience,
        "store-app",
        "availability:read",
        Some(&["S002"]),
    );
    let (_, mine) = channel_availability(&app, &store_app, &skus[1]).await;
    assert!(
        mine["locations"]
            .as_array()
            .is_some_and(|l| l.iter().all(|l| l["location_id"] == "S002"))
    );
    let response = app
        .get(Layer::Experience, "/v1/availability/NOPE-1", Some(&channel))
        .await;
    crate::helpers::problem(response, 404).await;
    // A channel filter goes to process-api (it knows the nodes' types).
    let response = app
        .get(
            Layer::Experience,
            &format!("/v1/availability/{}?channel=web", skus[0]),
            Some(&channel),
        )
        .await;
    assert_eq!(response.headers()["x-availability-source"], "process-api");
}

/// An experience-api replica's `GET /v1/ops/read-model`.
async fn read_model_status(app: &TestApp, base: &str) -> Value {
    let token = app.token(Layer::Experience, "ops:read");
    let response = app
        .http
        .get(format!("{base}/v1/ops/read-model"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// `GET /v1/availability/{sku}` at one replica: (source, body).
async fn availability_at(base: &str, token: &str, sku: &str) -> (String, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/availability/{sku}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let source = response.headers()["x-availability-source"]
        .to_str()
        .expect("header")
        .to_owned();
    (source, response.json().await.expect("json"))
}

/// Waits until every sku reads at `base` as process-api has it.
async fn converge(app: &TestApp, base: &str, token: &str, skus: &[String]) {
    let started = Instant::now();
    loop {
        let truth = process_availability(app, skus).await;
        let mut same = true;
        for (sku, want) in skus.iter().zip(&truth) {
            let (source, got) = availability_at(base, token, sku).await;
            assert_eq!(source, "read-model", "{base}");
            same &= got["locations"] == want["locations"];
        }
        if same {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{base} did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the copy `replica` keeps in Redis has caught up with its
/// feed: a replica takes a shared entry only when it is complete up to
/// where its own feed starts (before that it asks process-api, rightly),
/// so a replica started before then would ask process-api instead.
async fn shared_copy_caught_up(app: &TestApp, replica: &str) {
    let started = Instant::now();
    loop {
        let status = read_model_status(app, replica).await;
        let written = status["shared"]["writer_seq"].as_i64().unwrap_or(-1);
        if written >= status["feed_seq"].as_i64().unwrap_or(i64::MAX) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_redis_replicas_share_the_read_model() {
    let Some(url) = crate::helpers::redis_url() else {
        return;
    };
    let prefix = format!("test-{}:", uuid::Uuid::new_v4());
    let app = TestApp::spawn_with(|s| {
        s.experience.read_model = true;
        s.redis.url = retail_shared::config::Secret::new(url.clone());
        s.redis.key_prefix = prefix.clone();
    })
    .await;
    let channel = app.token(Layer::Experience, "availability:read");
    let skus: Vec<String> = (1..=8).map(|n| format!("SKU-{n:06}")).collect();
    let receipts: Vec<Value> = (0..24)
        .map(|i| {
            receipt(
                &format!("shared-{i}"),
                &format!("S00{}", 1 + i % 3),
                &skus[i % 8],
                4 + i as i64,
            )
        })
        .collect();
    ingest(&app, receipts).await;
    let first = app.platform.experience_url();
    // The first replica loads every sku from process-api and shares it.
    let started = Instant::now();
    while availability_at(&first, &channel, &skus[0]).await.0 != "read-model" {
        assert!(started.elapsed() < Duration::from_secs(10), "never fresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    converge(&app, &first, &channel, &skus).await;
    let status = read_model_status(&app, &first).await;
    assert_eq!(status["shared"]["connected"], true, "{status}");
    assert_eq!(status["loaded_process"], 8, "{status}");
    shared_copy_caught_up(&app, &first).await;

    // A second replica on the same process-api and Redis.
    let second = app.spawn_experience_replica().await;
    let started = Instant::now();
    loop {
        let status = read_model_status(&app, &second).await;
        if status["answering"] == true && status["shared"]["connected"] == true {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It answers every sku from the shared copy, exactly.
    converge(&app, &second, &channel, &skus).await;
    let status = read_model_status(&app, &second).await;
    assert_eq!(status["loaded_shared"], 8, "{status}");
    assert_eq!(status["loaded_process"], 0, "{status}");

    // Sales: both replicas follow, and a third replica arriving later
    // takes the skus as the feed left them.
    let sales: Vec<Value> = (0..16)
        .map(|i| {
            json!({"event_id": format!("shared-sale-{i}"), "type": "sale",
            "location_id": format!("S00{}", 1 + i % 3), "sku": skus[i % 8],
            "quantity": 1, "occurred_at": "2026-11-30T09:00:00Z", "source": "pos"})
        })
        .collect();
    ingest(&app, sales).await;
    converge(&app, &first, &channel, &skus).await;
    converge(&app, &second, &channel, &skus).await;
    shared_copy_caught_up(&app, &first).await;
    let third = app.spawn_experience_replica().await;
    let started = Instant::now();
    while read_model_status(&app, &third).await["answering"] != true {
        assert!(started.elapsed() < Duration::from_secs(10), "never fresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    converge(&app, &third, &channel, &skus).await;
    let status = read_model_status(&app, &third).await;
    assert_eq!(status["loaded_shared"], 8, "{status}");
    assert_eq!(status["loaded_process"], 0, "{status}");

    // A replica reads its own reservation at once, even for a sku it had
    // not held: it asks process-api, not the shared copy.
    let reserve = app.token(Layer::Experience, "reservations:write");
    let response = app
        .http
        .post(format!("{third}/v1/reservations"))
        .bearer_auth(&reserve)
        .header("content-type", "application/json")
        .body(
            json!({"channel": "web", "order_ref": "shared-1", "ttl_seconds": 600,
                "lines": [{"sku": skus[3], "location_id": "S001", "quantity": 2}]})
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let truth = process_availability(&app, std::slice::from_ref(&skus[3])).await;
    let (_, now) = availability_at(&third, &channel, &skus[3]).await;
    assert_eq!(now["locations"], truth[0]["locations"]);
    converge(&app, &first, &channel, &skus).await;
    converge(&app, &second, &channel, &skus).await;
}
