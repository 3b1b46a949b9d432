//! Foundation acceptance: operational endpoints, correlation across the
//! three layers, problem+json everywhere, tokens, OpenAPI drift.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Layer, TestApp, problem};

#[tokio::test]
async fn every_service_serves_its_operational_endpoints() {
    let app = TestApp::spawn().await;
    for layer in Layer::ALL {
        let health = app.get(layer, "/healthz", None).await;
        assert_eq!(health.status(), 200, "{layer:?} healthz");
        let body: Value = health.json().await.expect("json");
        assert_eq!(body["service"], layer.audience());

        let ready = app.get(layer, "/readyz", None).await;
        assert_eq!(ready.status(), 200, "{layer:?} readyz");
        let body: Value = ready.json().await.expect("json");
        assert_eq!(body["status"], "ready");

        let doc = app.get(layer, "/openapi.json", None).await;
        assert_eq!(doc.status(), 200);
        let doc: Value = doc.json().await.expect("json");
        assert_eq!(doc["info"]["title"], layer.audience());
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));

        let docs = app.get(layer, "/docs/", None).await;
        assert_eq!(docs.status(), 200, "{layer:?} docs");
        assert!(docs.text().await.expect("html").contains("swagger"));

        let metrics = app.get(layer, "/metrics", None).await;
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.expect("text");
        assert!(
            text.contains("http_requests_total") && text.contains(layer.audience()),
            "{layer:?} metrics should count the requests above"
        );
    }
}

#[tokio::test]
async fn readiness_fails_when_the_downstream_layer_is_gone() {
    let app = TestApp::spawn_with(|settings| {
        // experience-api pointed at a port where nothing listens.
        settings.client.max_retries = 0;
        settings.experience.port = 0;
    })
    .await;
    // Stop process-api's neighbour by pointing a fresh experience-api at a
    // dead address: bind and drop a listener to get a free port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let mut settings = app.platform.settings.clone();
    settings.experience.port = 0;
    settings.experience.process_url = format!("http://127.0.0.1:{dead_port}");
    let lonely = experience_api::Application::build(settings)
        .await
        .expect("build");
    let port = lonely.port();
    let server = tokio::spawn(lonely.run_until(std::future::pending()));
    let response = app
        .http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["checks"]["process-api"]
            .as_str()
            .is_some_and(|s| s != "ok")
    );
    server.abort();
}

#[tokio::test]
async fn a_request_id_given_to_experience_api_arrives_at_system_api() {
    let app = TestApp::spawn().await;
    let token = app.token(Layer::Experience, "ops:read");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .http
        .get(app.url(Layer::Experience, "/v1/ops/dependencies"))
        .bearer_auth(&token)
        .header("x-request-id", "checkout-7f3a-0001")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "checkout-7f3a-0001");
    let report: Value = response.json().await.expect("json");
    let process = &report["downstream"];
    let system = &process["downstream"];
    assert_eq!(system["service"], "system-api");
    for layer in [&report, process, system] {
        assert_eq!(layer["request_id"], "checkout-7f3a-0001", "{layer}");
        assert_eq!(layer["trace_id"], trace_id, "{layer}");
    }
    assert_eq!(report["status"], "ok");
}

#[tokio::test]
async fn a_missing_request_id_is_created_and_echoed() {
    let app = TestApp::spawn().await;
    let response = app.get(Layer::Process, "/healthz", None).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let traceparent = response.headers()["traceparent"].to_str().expect("ascii");
    assert!(traceparent.starts_with("00-") && traceparent.len() == 55);
}

#[tokio::test]
async fn malformed_bodies_get_problem_json_with_a_pointer() {
    let app = TestApp::spawn().await;
    let token = app.token(Layer::Process, "master:write");
    let cases = [
        (
            r#"{"products":[{"sku":"A1","name":"x","unit_cost":"1.00","currency":"USD","colour":"red"}]}"#,
            422,
            "/products/0/colour",
        ),
        (
            r#"{"products":[{"sku":"A1","name":"x","currency":"USD"}]}"#,
            422,
            "/products/0/unit_cost",
        ),
        (
            r#"{"products":[{"sku":"A1","name":"x","unit_cost":"abc","currency":"USD"}]}"#,
            422,
            "/products/0/unit_cost",
        ),
        (
            r#"{"products":[{"sku":"A1","name":"x","unit_cost":"1.00","currency":"usd"}]}"#,
            422,
            "/products/0/currency",
        ),
        (r#"{"products":[{"sku":"A1",}]}"#, 400, ""),
    ];
    for (body, status, pointer) in cases {
        let response = app
            .send_json(
                Method::PUT,
                Layer::Process,
                "/v1/master/products",
                &token,
                body,
            )
            .await;
        let problem = problem(response, status).await;
        if !pointer.is_empty() {
            assert_eq!(problem["errors"][0]["pointer"], pointer, "{body}");
        }
    }
    // Wrong content type.
    let response = app
        .http
        .put(app.url(Layer::Process, "/v1/master/products"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("sent");
    problem(response, 415).await;
}

#[tokio::test]
async fn bad_queries_unknown_paths_and_wrong_methods_are_problems_on_every_layer() {
    let app = TestApp::spawn().await;
    for layer in Layer::ALL {
        problem(app.get(layer, "/no/such/path", None).await, 404).await;
        let response = app
            .http
            .delete(app.url(layer, "/healthz"))
            .send()
            .await
            .expect("sent");
        problem(response, 405).await;
    }
    let token = app.token(Layer::Process, "inventory:read");
    let body = problem(
        app.get(
            Layer::Process,
            "/v1/master/locations?limit=abc",
            Some(&token),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["errors"][0]["pointer"], "?limit");
    let body = problem(
        app.get(
            Layer::Process,
            "/v1/master/locations?limit=5000",
            Some(&token),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["pointer"], "?limit");
}

#[tokio::test]
async fn tokens_are_checked_for_audience_and_scope() {
    let app = TestApp::spawn().await;
    // No token.
    let response = app.get(Layer::Experience, "/v1/stores", None).await;
    assert!(response.headers().contains_key("www-authenticate"));
    problem(response, 401).await;
    // A channel token replayed against process-api.
    let channel = app.token(Layer::Experience, "inventory:read ops:read");
    problem(
        app.get(Layer::Process, "/v1/master/locations", Some(&channel))
            .await,
        401,
    )
    .await;
    // The right audience without the scope.
    let no_scope = app.token(Layer::Experience, "ops:read");
    problem(
        app.get(Layer::Experience, "/v1/stores", Some(&no_scope))
            .await,
        403,
    )
    .await;
}

#[tokio::test]
async fn the_token_command_prints_a_token_the_services_accept() {
    let app = TestApp::spawn().await;
    for layer in Layer::ALL {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_retail-platform"))
            .args(["token", "--aud", layer.audience(), "--sub", "cli-user"])
            .args(["--scope", "ops:read", "--ttl-seconds", "120"])
            .output()
            .expect("runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout).expect("utf8");
        let response = app
            .get(layer, "/v1/ops/dependencies", Some(token.trim()))
            .await;
        assert_eq!(response.status(), 200, "{layer:?}");
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_retail-platform"))
        .args(["token", "--aud", "nobody", "--sub", "x"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
}

#[tokio::test]
async fn a_store_bound_token_sees_only_its_store() {
    let app = TestApp::spawn().await;
    let token = app.token_for(
        Layer::Experience,
        "associate-1",
        "availability:read",
        Some(&["S002"]),
    );
    let response = app.get(Layer::Experience, "/v1/stores", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let ids: Vec<&str> = body["stores"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["location_id"].as_str())
        .collect();
    assert_eq!(ids, ["S002"]);
}

#[tokio::test]
async fn cors_preflight_is_answered_for_configured_origins() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .request(Method::OPTIONS, app.url(Layer::Experience, "/v1/stores"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
}

#[test]
fn committed_openapi_documents_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi");
    for (name, generated) in retail_platform::openapi_documents() {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi/{name} differs from the code; regenerate with `cargo run -- openapi`"
        );
    }
}
