//! TLS in the platform's clients: a JWKS and a webhook receiver served over
//! https by a private CA made in the test, trusted through `[tls] ca_file`
//! (and refused without it); and service tokens signed per hop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reqwest::Method;
use serde_json::{Value, json};

use crate::feed::{ingest, receipt};
use crate::helpers::{Layer, TestApp};

/// A CA of the test's own and a `localhost` certificate it signed.
struct TestCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    /// Keeps the CA file alive.
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "retail-platform test CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf");
        Self {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    /// The CA certificate as a file, for `[tls] ca_file`.
    fn ca_file(&self) -> String {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path.display().to_string()
    }

    /// Serves `app` over https with the leaf certificate; the base URL.
    async fn serve(&self, app: Router) -> String {
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            self.cert_pem.clone().into_bytes(),
            self.key_pem.clone().into_bytes(),
        )
        .await
        .expect("TLS config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let server = axum_server::from_tcp_rustls(listener, config).expect("server");
        tokio::spawn(server.serve(app.into_make_service()));
        format!("https://localhost:{port}")
    }
}

/// The JWKS fixture (RSA and EC keys) at `/jwks.json`.
fn jwks_app() -> Router {
    let set: Value = serde_json::from_str(include_str!("fixtures/jwks.json")).expect("fixture");
    Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let set = set.clone();
            async move { axum::Json(set) }
        }),
    )
}

fn rs256_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let key = EncodingKey::from_rsa_pem(include_bytes!("fixtures/rsa1.pem")).expect("rsa key");
    encode(
        &header,
        &json!({"sub": "idp-user", "iss": "retail-platform", "aud": "experience-api",
                "exp": now + 300, "scope": "ops:read"}),
        &key,
    )
    .expect("sign")
}

async fn with_jwks(url: String, ca_file: Option<String>) -> TestApp {
    TestApp::spawn_with(move |settings| {
        settings.auth.algorithms = vec!["HS256".into(), "RS256".into(), "ES256".into()];
        settings.auth.jwks_url = url;
        if let Some(ca_file) = ca_file {
            settings.tls.ca_file = ca_file;
        }
    })
    .await
}

#[tokio::test]
async fn a_jwks_over_https_from_a_private_ca_is_trusted_through_the_ca_file() {
    let ca = TestCa::new();
    let base = ca.serve(jwks_app()).await;
    let app = with_jwks(format!("{base}/jwks.json"), Some(ca.ca_file())).await;
    let response = app
        .get(
            Layer::Experience,
            "/v1/ops/dependencies",
            Some(&rs256_token()),
        )
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test]
async fn a_jwks_over_https_from_an_unknown_ca_is_not_trusted() {
    // Another CA, never given to the platform: the key set cannot be
    // fetched, so the token's key is unknown.
    let untrusted = TestCa::new();
    let base = untrusted.serve(jwks_app()).await;
    let app = with_jwks(format!("{base}/jwks.json"), None).await;
    let response = app
        .get(
            Layer::Experience,
            "/v1/ops/dependencies",
            Some(&rs256_token()),
        )
        .await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn webhooks_are_delivered_to_an_https_receiver_of_a_private_ca() {
    let ca = TestCa::new();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let receiver = Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let base = ca.serve(receiver).await;
    let ca_file = ca.ca_file();
    let app = TestApp::spawn_with(move |settings| {
        settings.tls.ca_file = ca_file;
        settings.webhooks.poll_interval_ms = 20;
        settings.webhooks.backoff_base_ms = 20;
        settings.webhooks.backoff_max_ms = 200;
    })
    .await;
    let token = app.token(Layer::Process, "ops:write");
    let response = app
        .send_json(
            Method::POST,
            Layer::Process,
            "/v1/ops/webhooks",
            &token,
            &json!({"url": format!("{base}/hook"), "secret": "a-test-secret-of-some-length"})
                .to_string(),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    ingest(&app, vec![receipt("tls-1", "S001", "SKU-000001", 1)]).await;
    let started = Instant::now();
    while received.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no delivery over https"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn system_api_refuses_a_service_token_signed_with_the_edges_key() {
    let app = TestApp::spawn().await;
    let keys_dir = &app.platform.settings.auth.service_keys;
    let keys =
        |service| retail_shared::service_keys::ServiceKeys::load(keys_dir, service).expect("keys");
    let issuer = |service| {
        retail_shared::auth::TokenIssuer::new(&app.platform.settings.auth)
            .with_service_keys(&keys(service))
    };
    // What a compromised experience-api could mint: the systems of
    // record's scopes, acting for anyone.
    let forged = issuer("experience-api")
        .service_token(
            "experience-api",
            "system-api",
            &["ops:read", "erp:write"],
            None,
        )
        .expect("sign");
    let response = app.get(Layer::System, "/v1/ops/audit", Some(&forged)).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    // The same call with process-api's key is accepted: the key decides.
    let real = issuer("process-api")
        .service_token("process-api", "system-api", &["ops:read"], None)
        .expect("sign");
    let response = app.get(Layer::System, "/v1/ops/audit", Some(&real)).await;
    assert_eq!(response.status(), 200);
    // And the edge's key is good where the edge may call.
    let edge = issuer("experience-api")
        .service_token("experience-api", "process-api", &["ops:read"], None)
        .expect("sign");
    let response = app.get(Layer::Process, "/v1/ops/audit", Some(&edge)).await;
    assert_eq!(response.status(), 200);
}
