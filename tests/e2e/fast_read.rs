//! experience-api's fast read (`experience-api/src/fast_read.rs`): the plain
//! read of one sku answered ahead of the layer stack gives the stack's
//! answer, and everything it cannot decide in memory still goes through
//! the stack.
//!
//! Which path answered is visible from outside: the stack compresses a
//! body for a client that accepts gzip, the fast read never does.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::feed::{ingest, receipt};
use crate::helpers::{Layer, TestApp, problem, redis_url};

/// A caller-chosen trace: such a request always takes the stack.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// Whether the stack answered (it gzips for a client accepting gzip).
    fn through_stack(&self) -> bool {
        self.headers
            .get("content-encoding")
            .is_some_and(|v| v == "gzip")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Every value of a header, joined.
    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `GET path` at experience-api; `gzip` adds `Accept-Encoding: gzip`,
/// `traced` a `traceparent`.
async fn read(app: &TestApp, path: &str, token: &str, gzip: bool, traced: bool) -> Answer {
    let mut request = app
        .http
        .get(app.url(Layer::Experience, path))
        .bearer_auth(token)
        .header("x-request-id", "fast-read-probe");
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    if traced {
        request = request.header("traceparent", TRACEPARENT);
    }
    let response = request.send().await.expect("request sent");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

/// A platform whose read model holds `SKU-000001..3` and answers.
async fn platform(adjust: impl FnOnce(&mut retail_shared::Settings)) -> TestApp {
    let app = TestApp::spawn_with(|s| {
        s.experience.read_model = true;
        // Waiting for the model is not what a test's quota is about.
        s.rate_limit.clients.insert(
            "waiter".into(),
            retail_shared::config::ClientQuota {
                read_per_second: 1_000,
                read_burst: 1_000,
                write_per_second: 1_000,
                write_burst: 1_000,
            },
        );
        adjust(s);
    })
    .await;
    let events = (0..9)
        .map(|i| {
            receipt(
                &format!("fast-{i}"),
                &format!("S00{}", 1 + i % 3),
                &format!("SKU-00000{}", 1 + i % 3),
                5 + i as i64,
            )
        })
        .collect();
    ingest(&app, events).await;
    let waiter = app.token_for(Layer::Experience, "waiter", "availability:read", None);
    let started = Instant::now();
    loop {
        let answer = read(&app, "/v1/availability/SKU-000001", &waiter, false, false).await;
        assert_eq!(answer.status, 200);
        if answer.header("x-availability-source") == "read-model" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the read model never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

#[tokio::test]
async fn a_fast_read_is_the_stacks_answer_and_the_rest_takes_the_stack() {
    let app = platform(|_| {}).await;
    let web = app.token_for(Layer::Experience, "web-shop", "availability:read", None);
    let store = app.token_for(
        Layer::Experience,
        "store-app",
        "availability:read",
        Some(&["S002"]),
    );
    for token in [&web, &store] {
        let path = "/v1/availability/SKU-000002";
        // A token seen for the first time is verified by the stack.
        let first = read(&app, path, token, true, false).await;
        assert_eq!(first.status, 200);
        assert!(first.through_stack(), "a new token takes the stack");
        let fast = read(&app, path, token, true, false).await;
        assert_eq!(fast.status, 200);
        assert!(!fast.through_stack(), "a known token reads fast");
        let full = read(&app, path, token, false, true).await;
        assert_eq!(full.status, 200);
        let fast = read(&app, path, token, false, false).await;
        assert_eq!(fast.status, 200);
        // The same body and the same headers, but for the trace and the
        // figures that move (remaining quota, staleness).
        assert_eq!(fast.json(), full.json());
        let names = |answer: &Answer| {
            let mut names: Vec<String> = answer
                .headers
                .keys()
                .map(|k| k.as_str().to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&fast), names(&full));
        for name in [
            "content-type",
            "x-availability-source",
            "x-request-id",
            "vary",
            "ratelimit-policy",
        ] {
            assert_eq!(fast.header(name), full.header(name), "{name}");
        }
        assert_eq!(fast.header("x-availability-source"), "read-model");
        assert!(fast.header("ratelimit").starts_with("\"read\";r="));
        assert!(
            fast.header("traceparent").starts_with("00-") && fast.header("traceparent").len() == 55
        );
    }
    // Narrowed to the token's locations on the fast path too.
    let mine = read(&app, "/v1/availability/SKU-000002", &store, false, false).await;
    let locations = mine.json()["locations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!locations.is_empty());
    assert!(locations.iter().all(|l| l["location_id"] == "S002"));

    // A token without the scope: 403 from the stack, every time.
    let reserver = app.token_for(Layer::Experience, "cart", "reservations:write", None);
    for _ in 0..2 {
        let answer = read(&app, "/v1/availability/SKU-000001", &reserver, true, false).await;
        assert_eq!(answer.status, 403);
    }
    // An unknown sku, a filter, a percent-encoded sku: the stack answers.
    let unknown = read(&app, "/v1/availability/NOPE-1", &web, true, false).await;
    assert_eq!(unknown.status, 404);
    let filtered = read(
        &app,
        "/v1/availability/SKU-000001?locations=S001",
        &web,
        true,
        false,
    )
    .await;
    assert_eq!(filtered.status, 200);
    assert!(filtered.through_stack());
    let encoded = read(&app, "/v1/availability/SKU%2D000001", &web, true, false).await;
    assert_eq!(encoded.status, 200);
    assert!(encoded.through_stack());
    // A bad token never reads fast, even after a good one.
    let mut forged = web.clone();
    forged.push('x');
    let response = app
        .get(
            Layer::Experience,
            "/v1/availability/SKU-000001",
            Some(&forged),
        )
        .await;
    problem(response, 401).await;
}

#[tokio::test]
async fn over_quota_the_fast_read_leaves_the_429_to_the_stack() {
    let app = platform(|s| {
        s.rate_limit.read_per_second = 1;
        s.rate_limit.read_burst = 3;
    })
    .await;
    let greedy = app.token_for(Layer::Experience, "greedy", "availability:read", None);
    let path = "/v1/availability/SKU-000003";
    let mut fast = 0;
    let mut limited = None;
    for _ in 0..6 {
        let answer = read(&app, path, &greedy, true, false).await;
        match answer.status {
            200 => fast += usize::from(!answer.through_stack()),
            429 => {
                limited = Some(answer);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(fast >= 1, "the fast read answered within quota");
    let limited = limited.expect("the quota ran out");
    assert!(
        limited
            .header("content-type")
            .starts_with("application/problem+json")
    );
    assert!(limited.header("retry-after").parse::<u64>().is_ok());
    assert!(limited.header("ratelimit").starts_with("\"read\";r=0;"));
}

#[tokio::test]
async fn with_quotas_in_redis_fast_reads_of_two_replicas_share_one_budget() {
    let Some(url) = redis_url() else { return };
    let app = platform(|s| {
        s.rate_limit.read_per_second = 1;
        s.rate_limit.read_burst = 4;
        s.redis.url = retail_shared::config::Secret::new(url);
        s.redis.key_prefix = format!("test-{}:", uuid::Uuid::new_v4());
    })
    .await;
    // A second experience-api replica on the same process-api and Redis.
    let second_base = app.spawn_experience_replica().await;
    // Both replicas connect to Redis in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let greedy = app.token_for(Layer::Experience, "greedy", "availability:read", None);
    let path = "/v1/availability/SKU-000001";
    let first_base = app.url(Layer::Experience, "");
    let (mut allowed, mut fast, mut limited) = (0, 0, false);
    for attempt in 0..12 {
        let base = if attempt % 2 == 0 {
            &first_base
        } else {
            &second_base
        };
        let response = app
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&greedy)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("sent");
        match response.status().as_u16() {
            200 => {
                allowed += 1;
                fast += usize::from(!response.headers().contains_key("content-encoding"));
            }
            429 => {
                limited = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited, "the shared quota ran out");
    // Four across the two replicas (one more if a second passed): a
    // replica counting alone would have let eight through.
    assert!(allowed <= 5, "{allowed} reads allowed");
    assert!(fast >= 1, "fast reads asked Redis too");
}
