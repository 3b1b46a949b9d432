//! `TestApp`: spawns the platform with fresh SQLite files and offers typed
//! request helpers.

use retail_platform::{Platform, mint_token};
use retail_shared::Settings;
use retail_shared::auth::TokenRequest;
use retail_shared::config::Secret;
use serde_json::Value;

/// Which layer a request goes to.
#[derive(Debug, Clone, Copy)]
pub enum Layer {
    Experience,
    Process,
    System,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Experience, Layer::Process, Layer::System];

    pub fn audience(self) -> &'static str {
        match self {
            Layer::Experience => "experience-api",
            Layer::Process => "process-api",
            Layer::System => "system-api",
        }
    }
}

pub struct TestApp {
    pub platform: Platform,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut settings = Settings::defaults();
    settings.experience.port = 0;
    settings.process.port = 0;
    settings.system.port = 0;
    settings.process.database_url =
        Secret::new(format!("sqlite://{}", dir.join("process.db").display()));
    settings.system.database_url =
        Secret::new(format!("sqlite://{}", dir.join("system.db").display()));
    // Each platform its own service-token keys.
    settings.auth.service_keys.dir = dir.join("keys").display().to_string();
    settings.seed.stores = 3;
    settings.seed.skus = 10;
    settings.seed.opening_stock = false;
    settings.telemetry.log_level = "warn".into();
    // Most tests read right after writing and expect to see the write;
    // the read model is eventually consistent (within milliseconds), so
    // only the tests about it turn it on.
    settings.experience.read_model = false;
    // Webhook receivers of the tests listen on this machine: the
    // development allowance for it (deliveries to loopback are refused
    // by default).
    settings.webhooks.allowed_hosts = vec!["127.0.0.1".into(), "localhost".into()];
    settings
}

impl TestApp {
    /// Starts another experience-api replica on this platform's settings
    /// (same process-api, same Redis) and returns its base URL.
    pub async fn spawn_experience_replica(&self) -> String {
        let mut settings = self.platform.settings.clone();
        settings.experience.port = 0;
        let replica = experience_api::Application::build(settings)
            .await
            .expect("another experience-api replica");
        let base = format!("http://127.0.0.1:{}", replica.port());
        tokio::spawn(replica.run_until(std::future::pending()));
        base
    }

    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(dir.path());
        adjust(&mut settings);
        let platform = Platform::start(settings).await.expect("platform starts");
        Self {
            platform,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Stops the platform and starts it again on the same databases and
    /// keys, from fresh test settings with `adjust` applied.
    pub async fn restart_with(self, adjust: impl FnOnce(&mut Settings)) -> Self {
        let Self {
            platform,
            http,
            _dir: dir,
        } = self;
        platform.stop().await.expect("platform stops");
        let mut settings = test_settings(dir.path());
        adjust(&mut settings);
        let platform = Platform::start(settings).await.expect("platform restarts");
        Self {
            platform,
            http,
            _dir: dir,
        }
    }

    pub fn url(&self, layer: Layer, path: &str) -> String {
        let base = match layer {
            Layer::Experience => self.platform.experience_url(),
            Layer::Process => self.platform.process_url(),
            Layer::System => self.platform.system_url(),
        };
        format!("{base}{path}")
    }

    pub fn token(&self, layer: Layer, scopes: &str) -> String {
        self.token_for(layer, "test-client", scopes, None)
    }

    pub fn token_for(
        &self,
        layer: Layer,
        subject: &str,
        scopes: &str,
        locations: Option<&[&str]>,
    ) -> String {
        mint_token(
            &self.platform.settings,
            &TokenRequest {
                audience: layer.audience().into(),
                subject: subject.into(),
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                locations: locations.map(|l| l.iter().map(|s| (*s).to_owned()).collect()),
                on_behalf_of: None,
                ttl_seconds: 600,
            },
        )
        .expect("token")
    }

    pub async fn get(&self, layer: Layer, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(layer, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        layer: Layer,
        path: &str,
        token: &str,
        body: &str,
    ) -> reqwest::Response {
        self.http
            .request(method, self.url(layer, path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent")
    }
}

/// Asserts a problem+json response and returns its body.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["title"].is_string());
    body
}

/// The PostgreSQL URL of the test server (`TEST_POSTGRES_URL`), or `None`
/// after saying once that PostgreSQL tests skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: PostgreSQL tests skip: TEST_POSTGRES_URL is not set"
                );
            });
            None
        }
    }
}

/// A URL whose connections use a brand-new schema of the test database.
pub async fn fresh_postgres_url(base: &str) -> String {
    use sqlx::Connection;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// `TEST_REDIS_URL`, after saying once that Redis tests skip without it.
pub fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: Redis tests skip: TEST_REDIS_URL is not set"
            );
            None
        }
    }
}
