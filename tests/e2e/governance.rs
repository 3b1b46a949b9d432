//! Governance over HTTP: throttling per client and route class.

use serde_json::Value;

use crate::helpers::{Layer, TestApp, problem, redis_url};

#[tokio::test]
async fn a_burst_beyond_quota_gets_429_with_headers_and_other_clients_are_unaffected() {
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.read_per_second = 1;
        settings.rate_limit.read_burst = 3;
    })
    .await;
    let greedy = app.token_for(Layer::Experience, "greedy", "availability:read", None);
    for _ in 0..3 {
        let response = app
            .get(Layer::Experience, "/v1/stores", Some(&greedy))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-policy"], "\"read\";q=3;w=3");
        assert!(
            response.headers()["ratelimit"]
                .to_str()
                .is_ok_and(|v| v.starts_with("\"read\";r="))
        );
    }
    let response = app
        .get(Layer::Experience, "/v1/stores", Some(&greedy))
        .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=3).contains(&retry_after));
    assert_eq!(response.headers()["ratelimit-policy"], "\"read\";q=3;w=3");
    assert!(
        response.headers()["ratelimit"]
            .to_str()
            .is_ok_and(|v| v.starts_with("\"read\";r=0;t="))
    );
    let body: Value = problem(response, 429).await;
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("rate-limited"))
    );

    // Another client still has its whole budget, through every layer.
    let polite = app.token_for(Layer::Experience, "polite", "availability:read", None);
    let response = app
        .get(Layer::Experience, "/v1/stores", Some(&polite))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn per_client_overrides_apply() {
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.write_per_second = 1;
        settings.rate_limit.write_burst = 1;
        settings.rate_limit.clients.insert(
            "big-partner".into(),
            retail_shared::config::ClientQuota {
                read_per_second: 100,
                read_burst: 100,
                write_per_second: 100,
                write_burst: 50,
            },
        );
    })
    .await;
    let body = r#"{"skus":["SKU-000001"]}"#;
    let partner = app.token_for(Layer::Experience, "big-partner", "availability:read", None);
    for _ in 0..5 {
        let response = app
            .send_json(
                reqwest::Method::POST,
                Layer::Experience,
                "/v1/availability/query",
                &partner,
                body,
            )
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-policy"], "\"write\";q=50;w=1");
    }
    let other = app.token_for(Layer::Experience, "small", "availability:read", None);
    let first = app
        .send_json(
            reqwest::Method::POST,
            Layer::Experience,
            "/v1/availability/query",
            &other,
            body,
        )
        .await;
    assert_eq!(first.status(), 200);
    let second = app
        .send_json(
            reqwest::Method::POST,
            Layer::Experience,
            "/v1/availability/query",
            &other,
            body,
        )
        .await;
    problem(second, 429).await;
}

#[tokio::test]
async fn a_route_marked_deprecated_in_config_carries_lifecycle_headers() {
    let app = TestApp::spawn_with(|settings| {
        settings
            .deprecations
            .push(retail_shared::config::Deprecation {
                path_prefix: "/v1/stores".into(),
                deprecated_at: "2026-12-01T00:00:00Z".into(),
                sunset: Some("2027-06-30T00:00:00Z".into()),
                successor: Some("https://api.example.com/v2/stores".into()),
            });
    })
    .await;
    let token = app.token(Layer::Experience, "availability:read");
    let response = app.get(Layer::Experience, "/v1/stores", Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["deprecation"], "@1796083200");
    assert_eq!(
        response.headers()["sunset"],
        "Wed, 30 Jun 2027 00:00:00 GMT"
    );
    assert_eq!(
        response.headers()["link"],
        "<https://api.example.com/v2/stores>; rel=\"successor-version\""
    );
    let other = app
        .get(
            Layer::Experience,
            "/v1/availability/SKU-000001",
            Some(&token),
        )
        .await;
    assert!(!other.headers().contains_key("deprecation"));
    let doc: Value = app
        .get(Layer::Experience, "/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(doc["paths"]["/v1/stores"]["get"]["deprecated"], true);
    assert!(doc["paths"]["/v1/availability/{sku}"]["get"]["deprecated"].is_null());
}

fn batch(tag: &str) -> String {
    serde_json::json!({"events": [{
        "event_id": format!("idem-{tag}"), "type": "receipt", "location_id": "S001",
        "sku": "SKU-000008", "quantity": 2, "occurred_at": "2026-11-20T09:00:00Z", "source": "t"
    }]})
    .to_string()
}

async fn post_with_key(app: &TestApp, token: &str, key: &str, body: &str) -> reqwest::Response {
    app.http
        .post(app.url(Layer::Process, "/v1/inventory/events"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn an_idempotency_key_replays_rejects_changes_and_is_scoped_per_client() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Layer::Process, "client-a", "inventory:write", None);
    let first = post_with_key(&app, &token, "key-1", &batch("a")).await;
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["results"][0]["status"], "applied");

    let again = post_with_key(&app, &token, "key-1", &batch("a")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(
        again, first,
        "the original response, not a second execution"
    );

    let changed = post_with_key(&app, &token, "key-1", &batch("b")).await;
    let body = problem(changed, 422).await;
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("idempotency-key-reused"))
    );

    // Another client's identical key is its own: it runs (and sees the
    // events as duplicates), it does not get client-a's response.
    let other = app.token_for(Layer::Process, "client-b", "inventory:write", None);
    let response = post_with_key(&app, &other, "key-1", &batch("a")).await;
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let response: Value = response.json().await.expect("json");
    assert_eq!(response["results"][0]["status"], "duplicate");
}

#[tokio::test]
async fn fifty_parallel_requests_with_one_key_execute_once() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Layer::Process, "client-p", "inventory:write", None);
    let body = batch("parallel");
    let mut requests = Vec::new();
    for _ in 0..50 {
        let (http, url, token, body) = (
            app.http.clone(),
            app.url(Layer::Process, "/v1/inventory/events"),
            token.clone(),
            body.clone(),
        );
        requests.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("idempotency-key", "same-key")
                .body(body)
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body)
        }));
    }
    let mut ok = 0;
    for request in requests {
        let (status, body) = request.await.expect("task");
        match status {
            200 => {
                ok += 1;
                // Every 200 is the one execution's answer: a second execution
                // would have answered `duplicate`.
                assert_eq!(body["results"][0]["status"], "applied", "{body}");
            }
            409 => assert!(
                body["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("idempotency-key-in-flight"))
            ),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(ok >= 1);
}

async fn audit_entries(app: &TestApp, layer: Layer, request_id: &str) -> Vec<Value> {
    let token = app.token(layer, "ops:read");
    for _ in 0..40 {
        let page: Value = app
            .get(
                layer,
                &format!("/v1/ops/audit?request_id={request_id}"),
                Some(&token),
            )
            .await
            .json()
            .await
            .expect("json");
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        if !entries.is_empty() {
            return entries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn state_changing_requests_are_audited_on_every_layer_they_cross() {
    let app = TestApp::spawn().await;
    let till = app.token_for(Layer::System, "till-7", "pos:write", Some(&["S001"]));
    let response = app
        .http
        .post(app.url(Layer::System, "/v1/pos/transactions"))
        .bearer_auth(&till)
        .header("x-request-id", "audit-me-1")
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "store_id": "S001", "terminal_id": "T9", "transaction_id": "42",
                "occurred_at": "2026-11-20T12:00:00Z",
                "lines": [{"sku": "SKU-000001", "quantity": 1, "kind": "sale"}]
            })
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);

    let system = audit_entries(&app, Layer::System, "audit-me-1").await;
    assert_eq!(system.len(), 1, "{system:?}");
    assert_eq!(system[0]["actor"], "till-7");
    assert_eq!(system[0]["client"], "till-7");
    assert_eq!(system[0]["method"], "POST");
    assert_eq!(system[0]["path"], "/v1/pos/transactions");
    assert_eq!(system[0]["status"], 200);

    let process = audit_entries(&app, Layer::Process, "audit-me-1").await;
    assert_eq!(process.len(), 1, "{process:?}");
    assert_eq!(
        process[0]["actor"], "till-7",
        "the end user, through the service token"
    );
    assert_eq!(process[0]["client"], "svc:system-api");
    assert_eq!(process[0]["path"], "/v1/inventory/events");

    // Reads are not audited; the audit log needs ops:read.
    let no_scope = app.token(Layer::Process, "inventory:read");
    problem(
        app.get(Layer::Process, "/v1/ops/audit", Some(&no_scope))
            .await,
        403,
    )
    .await;
}

#[tokio::test]
async fn with_redis_two_instances_share_one_budget() {
    let Some(url) = redis_url() else { return };
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.read_per_second = 1;
        settings.rate_limit.read_burst = 4;
        settings.redis.url = retail_shared::config::Secret::new(url.clone());
    })
    .await;
    // A second experience-api replica on the same process-api and Redis.
    let second_url = format!("{}/v1/stores", app.spawn_experience_replica().await);
    // Both replicas connect to Redis in the background.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let client = format!("shared-{}", uuid::Uuid::new_v4());
    let token = app.token_for(Layer::Experience, &client, "availability:read", None);
    let first_url = app.url(Layer::Experience, "/v1/stores");
    for url in [&first_url, &second_url, &first_url, &second_url] {
        let response = app
            .http
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{url}");
    }
    // Four used across the two replicas: the fifth is refused by either.
    let response = app
        .http
        .get(&second_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    problem(response, 429).await;
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_local_limits_never_5xx() {
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.read_per_second = 1;
        settings.rate_limit.read_burst = 2;
        settings.redis.url = retail_shared::config::Secret::new("redis://127.0.0.1:1");
    })
    .await;
    let token = app.token_for(Layer::Experience, "fallback", "availability:read", None);
    for _ in 0..2 {
        let response = app.get(Layer::Experience, "/v1/stores", Some(&token)).await;
        assert_eq!(response.status(), 200);
    }
    let response = app.get(Layer::Experience, "/v1/stores", Some(&token)).await;
    problem(response, 429).await;
}

#[tokio::test]
async fn with_redis_replicas_share_idempotency_keys() {
    let Some(url) = redis_url() else { return };
    let app = TestApp::spawn_with(|settings| {
        settings.redis.url = retail_shared::config::Secret::new(url.clone());
    })
    .await;
    let mut settings = app.platform.settings.clone();
    settings.system.port = 0;
    let second = system_api::Application::build(settings)
        .await
        .expect("second replica");
    let second_url = format!("http://127.0.0.1:{}/v1/pos/transactions", second.port());
    tokio::spawn(second.run_until(std::future::pending()));
    // Both replicas connect to Redis in the background.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let till = app.token_for(Layer::System, "till-r", "pos:write", Some(&["S001"]));
    let key = uuid::Uuid::new_v4().simple().to_string()[..20].to_owned();
    let body = serde_json::json!({
        "store_id": "S001", "terminal_id": "T5", "transaction_id": key,
        "occurred_at": "2026-11-20T12:00:00Z",
        "lines": [{"sku": "SKU-000002", "quantity": 1, "kind": "sale"}]
    })
    .to_string();
    let send = |url: String| {
        let (http, token, key, body) = (app.http.clone(), till.clone(), key.clone(), body.clone());
        async move {
            http.post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .expect("sent")
        }
    };
    let first = send(app.url(Layer::System, "/v1/pos/transactions")).await;
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let replayed = send(second_url).await;
    assert_eq!(replayed.status(), 200);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn unauthenticated_requests_leave_no_audit_entry_and_entries_name_the_route() {
    let app = TestApp::spawn().await;
    // Anonymous and forged writes, one with a 60 KB path: counted, not kept.
    let long = format!("/v1/reservations/{}/release", "x".repeat(60_000));
    for (path, token) in [
        ("/v1/reservations".to_owned(), None),
        (long.clone(), None),
        (long.clone(), Some("forged.token.value")),
    ] {
        let mut request = app
            .http
            .post(app.url(Layer::Experience, &path))
            .header("x-request-id", "anonymous-1")
            .header("content-type", "application/json")
            .body("{}");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("sent");
        assert!(response.status().is_client_error());
    }
    // An authenticated write on a path with an id: the template is kept.
    let token = app.token(Layer::Experience, "reservations:write");
    let response = app
        .http
        .post(app.url(
            Layer::Experience,
            "/v1/reservations/00000000-0000-0000-0000-000000000000/release",
        ))
        .bearer_auth(&token)
        .header("x-request-id", "named-1")
        .send()
        .await
        .expect("sent");
    assert!(response.status().is_client_error());
    let named = audit_entries(&app, Layer::Experience, "named-1").await;
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(
        named[0]["path"],
        "/v1/reservations/{reservation_id}/release"
    );
    assert!(
        audit_entries(&app, Layer::Experience, "anonymous-1")
            .await
            .is_empty(),
        "unauthenticated requests are not audited"
    );
}

#[tokio::test]
async fn requests_without_a_verified_token_are_throttled_per_address_before_verification() {
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.unauthenticated_per_second = 1;
        settings.rate_limit.unauthenticated_burst = 5;
    })
    .await;
    // A valid token: its first request spends one unit, then it is
    // remembered and never counts again.
    let token = app.token(Layer::Process, "inventory:read");
    for _ in 0..20 {
        let response = app
            .get(
                Layer::Process,
                "/v1/inventory/positions?sku=SKU-000001",
                Some(&token),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    // Forged tokens from the same address: what is left of the burst
    // (the platform's own first service tokens may have spent a unit or
    // two) passes verification's door and fails it; then 429 before any
    // verification.
    let mut statuses = Vec::new();
    for n in 0..8 {
        let response = app
            .get(
                Layer::Process,
                "/v1/inventory/positions?sku=SKU-000001",
                Some(&format!("forged.token.{n}")),
            )
            .await;
        statuses.push(response.status().as_u16());
    }
    let refused = statuses.iter().take_while(|s| **s == 401).count();
    assert!((2..=4).contains(&refused), "{statuses:?}");
    assert!(
        statuses[refused..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    // The valid, remembered token still passes.
    let response = app
        .get(
            Layer::Process,
            "/v1/inventory/positions?sku=SKU-000001",
            Some(&token),
        )
        .await;
    assert_eq!(response.status(), 200);
}
