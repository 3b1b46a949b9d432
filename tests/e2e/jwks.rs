//! RS256/ES256 tokens verified through a local JWKS server: key lookup by
//! `kid`, algorithm pinning, key rotation and the rate-limited refetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::helpers::{Layer, TestApp, problem};

const JWKS: &str = include_str!("fixtures/jwks.json");

struct JwksServer {
    url: String,
    keys: Arc<RwLock<Value>>,
    fetches: Arc<AtomicUsize>,
}

/// Serves the fixture key set without `rsa-2` (rotated in later).
async fn jwks_server() -> JwksServer {
    let mut set: Value = serde_json::from_str(JWKS).expect("fixture");
    set["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["kid"] != "rsa-2");
    let keys = Arc::new(RwLock::new(set));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (keys.clone(), fetches.clone());
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            let (served, counted) = (served.clone(), counted.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                axum::Json(served.read().await.clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    JwksServer { url, keys, fetches }
}

fn claims() -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    json!({
        "sub": "idp-user", "iss": "retail-platform", "aud": "experience-api",
        "exp": now + 300, "iat": now, "scope": "ops:read"
    })
}

fn token(algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims(), key).expect("sign")
}

fn rsa(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa key")
}

async fn spawn(jwks: &JwksServer, min_refresh: u64) -> TestApp {
    let url = jwks.url.clone();
    TestApp::spawn_with(move |settings| {
        settings.auth.algorithms = vec!["HS256".into(), "RS256".into(), "ES256".into()];
        settings.auth.jwks_url = url;
        settings.auth.jwks_min_refresh_seconds = min_refresh;
    })
    .await
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_through_the_key_set() {
    let jwks = jwks_server().await;
    let app = spawn(&jwks, 0).await;
    let rs = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa(include_str!("fixtures/rsa1.pem")),
    );
    let response = app
        .get(Layer::Experience, "/v1/ops/dependencies", Some(&rs))
        .await;
    assert_eq!(response.status(), 200);
    let ec_key = EncodingKey::from_ec_pem(include_bytes!("fixtures/ec1.pem")).expect("ec key");
    let es = token(Algorithm::ES256, Some("ec-1"), &ec_key);
    let response = app
        .get(Layer::Experience, "/v1/ops/dependencies", Some(&es))
        .await;
    assert_eq!(response.status(), 200);

    // Negative cases, each a 401.
    let public_pem = include_bytes!("fixtures/rsa1.pub.pem");
    let cases = [
        // HS256 "signed" with the RS public key, naming the RS key.
        token(
            Algorithm::HS256,
            Some("rsa-1"),
            &EncodingKey::from_secret(public_pem),
        ),
        token(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(public_pem),
        ),
        // ES256 header on an RSA key id.
        token(Algorithm::ES256, Some("rsa-1"), &ec_key),
        // RS256 without a kid, and with an unknown kid.
        token(
            Algorithm::RS256,
            None,
            &rsa(include_str!("fixtures/rsa1.pem")),
        ),
        token(
            Algorithm::RS256,
            Some("nope"),
            &rsa(include_str!("fixtures/rsa1.pem")),
        ),
        // The right kid, signed by another key.
        token(
            Algorithm::RS256,
            Some("rsa-1"),
            &rsa(include_str!("fixtures/rsa2.pem")),
        ),
    ];
    for (index, bad) in cases.iter().enumerate() {
        let response = app
            .get(Layer::Experience, "/v1/ops/dependencies", Some(bad))
            .await;
        assert!(
            response.headers().contains_key("www-authenticate"),
            "case {index}"
        );
        problem(response, 401).await;
    }
}

#[tokio::test]
async fn a_rotated_in_key_is_fetched_on_first_use() {
    let jwks = jwks_server().await;
    let app = spawn(&jwks, 0).await;
    let rotated = token(
        Algorithm::RS256,
        Some("rsa-2"),
        &rsa(include_str!("fixtures/rsa2.pem")),
    );
    let response = app
        .get(Layer::Experience, "/v1/ops/dependencies", Some(&rotated))
        .await;
    problem(response, 401).await;
    // The provider publishes the new key: the next token with it verifies.
    let full: Value = serde_json::from_str(JWKS).expect("fixture");
    *jwks.keys.write().await = full;
    let response = app
        .get(Layer::Experience, "/v1/ops/dependencies", Some(&rotated))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn unknown_kids_cannot_flood_the_identity_provider() {
    let jwks = jwks_server().await;
    let app = spawn(&jwks, 60).await;
    let key = rsa(include_str!("fixtures/rsa1.pem"));
    let good = token(Algorithm::RS256, Some("rsa-1"), &key);
    assert_eq!(
        app.get(Layer::Experience, "/v1/ops/dependencies", Some(&good))
            .await
            .status(),
        200
    );
    let after_first = jwks.fetches.load(Ordering::SeqCst);
    for n in 0..20 {
        let bogus = token(Algorithm::RS256, Some(&format!("made-up-{n}")), &key);
        let response = app
            .get(Layer::Experience, "/v1/ops/dependencies", Some(&bogus))
            .await;
        problem(response, 401).await;
    }
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        after_first,
        "no refetch within the interval"
    );
}
