//! Governance over HTTP: throttling per client and route class.

use serde_json::Value;

use crate::helpers::{Layer, TestApp, problem};

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
