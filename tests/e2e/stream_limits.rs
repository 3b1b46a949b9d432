//! The limits of both change streams (experience-api's channel stream and
//! process-api's feed stream): each ends when its token expires, a client
//! holds a capped number of them, and a `Last-Event-ID` too deep behind
//! the head resets instead of paging through the backlog. And the edge's
//! relay, whose upstream stream now ends with each service token, goes on
//! without the channels noticing.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use retail_shared::auth::TokenRequest;
use retail_shared::sse::{SseEvent, SseParser};
use serde_json::Value;

use crate::feed::{SseClient, ingest, receipt};
use crate::helpers::{Layer, TestApp};

/// Each layer's stream and the scope it needs.
const STREAMS: [(Layer, &str, &str); 2] = [
    (
        Layer::Experience,
        "/v1/availability/changes",
        "availability:read",
    ),
    (
        Layer::Process,
        "/v1/inventory/changes/stream",
        "inventory:read",
    ),
];

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>;

/// An open stream, read event by event, that can tell its end from a
/// pause.
struct Events {
    body: Body,
    parser: SseParser,
    queue: VecDeque<SseEvent>,
}

/// What a read of [`Events`] found.
#[derive(Debug)]
enum Read {
    Event(SseEvent),
    Ended,
    Silent,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200, "stream status");
        Self {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::default(),
            queue: VecDeque::new(),
        }
    }

    async fn next(&mut self, limit: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Read::Event(event);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Read::Silent,
                Ok(None | Some(Err(_))) => return Read::Ended,
                Ok(Some(Ok(bytes))) => self.queue.extend(self.parser.feed(&bytes)),
            }
        }
    }

    /// The next event other than `head` (process-api's progress marks).
    async fn next_event(&mut self, limit: Duration) -> SseEvent {
        loop {
            match self.next(limit).await {
                Read::Event(event) if event.event == "head" => {}
                Read::Event(event) => return event,
                other => panic!("no event within {limit:?}: {other:?}"),
            }
        }
    }

    /// Whether the stream ends (rather than falls silent) within `limit`.
    async fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.next(left).await {
                Read::Event(_) => {}
                Read::Ended => return true,
                Read::Silent => return false,
            }
        }
    }
}

async fn open(
    app: &TestApp,
    layer: Layer,
    path: &str,
    token: &str,
    last: Option<i64>,
) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url(layer, path))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    request.send().await.expect("request sent")
}

fn token_lasting(app: &TestApp, layer: Layer, subject: &str, scope: &str, ttl: u64) -> String {
    retail_platform::mint_token(
        &app.platform.settings,
        &TokenRequest {
            audience: layer.audience().into(),
            subject: subject.into(),
            scopes: vec![scope.into()],
            locations: None,
            on_behalf_of: None,
            ttl_seconds: ttl,
        },
    )
    .expect("token")
}

/// process-api's feed head, once every committed change is published.
async fn published_head(app: &TestApp) -> i64 {
    crate::erp::wait_for(app, Duration::from_secs(20), "the feed to catch up", |h| {
        h["feed"]["backlog"] == 0
    })
    .await;
    let token = app.token(Layer::Process, "inventory:read");
    let page: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/changes?after={}", i64::MAX - 1),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    page["head"].as_i64().expect("head")
}

#[tokio::test]
async fn streams_end_when_their_token_expires() {
    let app = TestApp::spawn_with(|s| s.auth.leeway_seconds = 0).await;
    for (layer, path, scope) in STREAMS {
        // A token good for one to two more seconds (exp is whole seconds).
        let token = token_lasting(&app, layer, "short-lived", scope, 2);
        let opened = Instant::now();
        let mut stream = Events::new(open(&app, layer, path, &token, None).await);

        assert!(
            stream.ends_within(Duration::from_secs(6)).await,
            "{path} outlived its token"
        );
        let lived = opened.elapsed();
        assert!(
            lived >= Duration::from_millis(500) && lived <= Duration::from_secs(4),
            "{path} ended {lived:?} after opening with a 2 s token"
        );
        // The client comes back with a fresh token.
        let fresh = token_lasting(&app, layer, "short-lived", scope, 600);
        let mut again = Events::new(open(&app, layer, path, &fresh, Some(0)).await);
        assert!(!again.ends_within(Duration::from_secs(1)).await);
    }
}

#[tokio::test]
async fn the_relay_resumes_unnoticed_when_its_service_token_expires() {
    // process-api ends the relay's upstream stream every second or two.
    let app = TestApp::spawn_with(|s| {
        s.auth.leeway_seconds = 0;
        s.auth.service_token_ttl_seconds = 2;
    })
    .await;
    let channel = app.token(Layer::Experience, "availability:read");
    let mut stream = SseClient::open(
        &app,
        Layer::Experience,
        "/v1/availability/changes",
        &channel,
        None,
    )
    .await;
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
    let mut last = first["seq"].as_i64().expect("seq");

    // Over several service-token lifetimes, every change arrives once, in
    // order, and no reset (`next_change` fails on one).
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(7) {
        i += 1;
        ingest(
            &app,
            vec![receipt(&format!("across-{i}"), "S002", "SKU-000002", 1)],
        )
        .await;
        let change = stream
            .next_change(Duration::from_secs(5))
            .await
            .expect("the change arrives across the relay's reconnects");
        let seq = change["seq"].as_i64().expect("seq");
        assert_eq!(seq, last + 1, "in order, nothing skipped or repeated");
        last = seq;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_client_holds_a_capped_number_of_streams() {
    let app = TestApp::spawn_with(|s| {
        s.feed.max_streams_per_client = 2;
        // A stream whose client left is noticed at the next write.
        s.feed.keep_alive_seconds = 1;
    })
    .await;
    for (layer, path, scope) in STREAMS {
        let capped = app.token_for(layer, "capped", scope, None);
        let first = Events::new(open(&app, layer, path, &capped, None).await);
        let _second = Events::new(open(&app, layer, path, &capped, None).await);

        let refused = open(&app, layer, path, &capped, None).await;
        let retry_after = refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(retry_after.is_some_and(|s| s >= 1), "{path}: Retry-After");
        let body = crate::helpers::problem(refused, 429).await;
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("too-many-streams")),
            "{body}"
        );

        // Another client is not affected.
        let other = app.token_for(layer, "another", scope, None);
        let _another = Events::new(open(&app, layer, path, &other, None).await);

        // A stream that ends gives its slot back.
        drop(first);
        let started = Instant::now();
        loop {
            let response = open(&app, layer, path, &capped, None).await;
            if response.status() == 200 {
                break;
            }
            assert_eq!(response.status(), 429);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{path}: the closed stream's slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn a_resume_deeper_than_the_bound_resets() {
    let app = TestApp::spawn_with(|s| s.feed.max_resume_depth = 5).await;
    let events = (0..12)
        .map(|i| {
            receipt(
                &format!("deep-{i}"),
                &format!("S00{}", 1 + i % 3),
                &format!("SKU-{:06}", 1 + i / 3),
                1,
            )
        })
        .collect();
    ingest(&app, events).await;
    let head = published_head(&app).await;
    assert!(head >= 12, "head {head}");

    for (layer, path, scope) in STREAMS {
        let token = app.token(layer, scope);
        let seq = |event: &SseEvent| {
            let change: Value = serde_json::from_str(&event.data).expect("json");
            change["seq"].as_i64().expect("seq")
        };

        // Ten behind: a reset, then only the newest five.
        let mut deep = Events::new(open(&app, layer, path, &token, Some(head - 10)).await);
        let reset = deep.next_event(Duration::from_secs(5)).await;
        assert_eq!(reset.event, "reset", "{path}: {reset:?}");
        let data: Value = serde_json::from_str(&reset.data).expect("json");
        assert_eq!(data["resume_after"], head - 5, "{path}: {data}");
        for expected in head - 4..=head {
            let change = deep.next_event(Duration::from_secs(5)).await;
            assert_eq!(seq(&change), expected, "{path}");
        }

        // Five behind: within the bound, no reset.
        let mut near = Events::new(open(&app, layer, path, &token, Some(head - 5)).await);
        let change = near.next_event(Duration::from_secs(5)).await;
        assert_ne!(change.event, "reset", "{path}");
        assert_eq!(seq(&change), head - 4, "{path}");

        // Past the head (another feed's id): a reset at the head.
        let mut ahead = Events::new(open(&app, layer, path, &token, Some(head + 1000)).await);
        let reset = ahead.next_event(Duration::from_secs(5)).await;
        assert_eq!(reset.event, "reset", "{path}: {reset:?}");
        let data: Value = serde_json::from_str(&reset.data).expect("json");
        assert_eq!(data["resume_after"], head, "{path}: {data}");

        // Not a seq at all: refused.
        let response = app
            .http
            .get(app.url(layer, path))
            .bearer_auth(&token)
            .header("last-event-id", "-3")
            .send()
            .await
            .expect("sent");
        crate::helpers::problem(response, 400).await;
    }
}
