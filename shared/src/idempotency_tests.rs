//! The bounds of `Idempotency-Key` and its exactly-once guarantee, through
//! the middleware on a small router.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request as HttpRequest;
use axum::routing::post;
use tower::ServiceExt as _;

use super::*;

/// A store whose first `fail` completions fail (a database blip right
/// after the work committed).
#[derive(Debug)]
struct Flaky {
    inner: MemoryStore,
    fail: AtomicUsize,
}

#[async_trait]
impl IdempotencyStore for Flaky {
    async fn begin(&self, key: &str, fingerprint: &str, clock: Clock) -> anyhow::Result<Begin> {
        self.inner.begin(key, fingerprint, clock).await
    }
    async fn complete(&self, key: &str, response: &StoredResponse) -> anyhow::Result<()> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            anyhow::bail!("the store is unavailable");
        }
        self.inner.complete(key, response).await
    }
    async fn abandon(&self, key: &str) -> anyhow::Result<()> {
        self.inner.abandon(key).await
    }
}

/// A router whose POST routes count their effects (after `delay`), behind
/// the middleware with a 1 ms lease, for one authenticated client.
fn app(store: Arc<dyn IdempotencyStore>, effects: Arc<AtomicUsize>, delay: Duration) -> Router {
    let config = Arc::new(Idempotency {
        store,
        service: "test",
        retention_micros: 3_600_000_000,
        lease_micros: 1_000,
        body_limit: 1 << 20,
        max_response_bytes: 1_000,
    });
    let handler = move |body: String| {
        let effects = effects.clone();
        async move {
            tokio::time::sleep(delay).await;
            let n = effects.fetch_add(1, Ordering::SeqCst) + 1;
            (StatusCode::CREATED, format!("effect {n}: {body}"))
        }
    };
    Router::new()
        .route("/v1/transfers", post(handler.clone()))
        .route("/v1/availability/query", post(handler))
        .layer(axum::middleware::from_fn_with_state(config, idempotency))
        .layer(axum::middleware::from_fn(
            |mut request: Request, next: Next| async move {
                request.extensions_mut().insert(Principal {
                    subject: "client-a".into(),
                    scopes: Default::default(),
                    locations: None,
                    on_behalf_of: None,
                });
                next.run(request).await
            },
        ))
}

fn keyed(path: &str, key: &str, body: &str) -> HttpRequest<Body> {
    HttpRequest::post(path)
        .header("idempotency-key", key)
        .body(Body::from(body.to_owned()))
        .expect("request")
}

async fn text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn a_failed_completion_after_the_work_never_runs_the_work_twice() {
    let effects = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(Flaky {
        inner: MemoryStore::default(),
        fail: AtomicUsize::new(2),
    });
    let app = app(store, effects.clone(), Duration::ZERO);
    let first = app
        .clone()
        .oneshot(keyed("/v1/transfers", "k-1", "move 5"))
        .await
        .expect("answer");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = text(first).await;
    // Past the 1 ms lease, the retry gets the first answer, not a rerun.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let retry = app
        .oneshot(keyed("/v1/transfers", "k-1", "move 5"))
        .await
        .expect("answer");
    assert_eq!(
        retry.headers().get(&REPLAYED).map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(text(retry).await, first);
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_caller_gone_mid_request_still_gets_its_work_finished_and_answer_kept() {
    let effects = Arc::new(AtomicUsize::new(0));
    let app = app(
        Arc::new(MemoryStore::default()),
        effects.clone(),
        Duration::from_millis(100),
    );
    // The caller (or the deadline) gives up while the work runs.
    let gone = tokio::time::timeout(
        Duration::from_millis(20),
        app.clone().oneshot(keyed("/v1/transfers", "k-2", "move 7")),
    )
    .await;
    assert!(gone.is_err(), "the caller left before the answer");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        effects.load(Ordering::SeqCst),
        1,
        "the work finished anyway"
    );
    let retry = app
        .oneshot(keyed("/v1/transfers", "k-2", "move 7"))
        .await
        .expect("answer");
    assert!(retry.headers().contains_key(&REPLAYED));
    assert_eq!(text(retry).await, "effect 1: move 7");
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn read_only_posts_store_nothing_and_large_answers_are_kept_short() {
    let effects = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(MemoryStore::default());
    let app = app(store.clone(), effects.clone(), Duration::ZERO);
    for _ in 0..2 {
        let response = app
            .clone()
            .oneshot(keyed("/v1/availability/query", "k-3", "skus"))
            .await
            .expect("answer");
        assert!(!response.headers().contains_key(&REPLAYED));
    }
    assert_eq!(effects.load(Ordering::SeqCst), 2, "a read runs every time");
    assert!(
        store.lock().expect("lock").1.is_empty(),
        "no key kept for a read"
    );
    // An answer over max_response_bytes (1,000 here): the replay says the
    // request was applied, with its status, instead of the whole body.
    let big = "x".repeat(5_000);
    let first = app
        .clone()
        .oneshot(keyed("/v1/transfers", "k-4", &big))
        .await
        .expect("answer");
    assert_eq!(text(first).await.len(), 5_000 + "effect 3: ".len());
    let retry = app
        .oneshot(keyed("/v1/transfers", "k-4", &big))
        .await
        .expect("answer");
    assert_eq!(retry.status(), StatusCode::CREATED);
    let body = text(retry).await;
    assert!(
        body.len() < 1_000 && body.contains("response-not-kept"),
        "{body}"
    );
    assert_eq!(effects.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_memory_store_keeps_a_bounded_number_of_keys_per_client() {
    let store = MemoryStore::new(2);
    let clock = Clock {
        now: 0,
        lease_until: 10,
        expires_at: 1_000,
    };
    let key = |client: &str, key: &str| format!("svc|{client}|{client}|{key}");
    for k in ["a", "b"] {
        assert_eq!(
            store.begin(&key("c1", k), "f", clock).await.ok(),
            Some(Begin::Started)
        );
    }
    // Touch `a`: `b` is now the least recently used and goes for `c`.
    assert_eq!(
        store.begin(&key("c1", "a"), "f", clock).await.ok(),
        Some(Begin::InFlight)
    );
    assert_eq!(
        store.begin(&key("c1", "c"), "f", clock).await.ok(),
        Some(Begin::Started)
    );
    assert_eq!(
        store.begin(&key("c1", "a"), "f", clock).await.ok(),
        Some(Begin::InFlight)
    );
    assert_eq!(
        store.begin(&key("c1", "b"), "f", clock).await.ok(),
        Some(Begin::Started)
    );
    // Another client's keys are its own budget.
    for k in ["a", "b"] {
        assert_eq!(
            store.begin(&key("c2", k), "f", clock).await.ok(),
            Some(Begin::Started)
        );
    }
    let guard = store.lock().expect("lock");
    assert!(guard.1.values().all(|client| client.entries.len() <= 2));
    assert_eq!(client_of(&key("c1", "a|b")), "svc|c1|c1");
}

#[test]
fn inline_path_patterns_match_one_segment_per_star() {
    assert!(path_matches("/v1/transfers", "/v1/transfers"));
    assert!(path_matches(
        "/v1/transfers/*/ship",
        "/v1/transfers/t-1/ship"
    ));
    assert!(!path_matches("/v1/transfers/*/ship", "/v1/transfers//ship"));
    assert!(!path_matches(
        "/v1/transfers/*/ship",
        "/v1/transfers/a/b/ship"
    ));
    assert!(!path_matches("/v1/transfers/*", "/v1/transfers"));
    assert!(!path_matches("/v1/transfers", "/v1/transfers/"));
}
