//! Operator diagnostics.

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::correlation::Correlation;
use retail_shared::ops::DependencyReport;
use retail_shared::problem::{ApiJson, ProblemBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{AppState, SERVICE};

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(dependencies))
}

/// Checks the adapter storage and the ERP backend (the checks behind
/// `/readyz`, here with their failures' text). The request id and trace
/// id reported are the ones this layer received from the layer above.
///
/// Location binding: nothing here is per location; bound tokens get the
/// same answer.
#[utoipa::path(get, path = "/v1/ops/dependencies", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This layer's dependencies, with each failure's text", body = DependencyReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing", body = ProblemBody, content_type = "application/problem+json")))]
async fn dependencies(
    State(state): State<AppState>,
    _auth: Authorized<scope::OpsRead>,
    correlation: Correlation,
) -> ApiJson<DependencyReport> {
    let outcomes = retail_shared::ops::run_checks(&crate::readiness_checks(&state)).await;
    let (healthy, checks) = retail_shared::ops::check_details(&outcomes);
    ApiJson(DependencyReport {
        service: SERVICE.into(),
        status: if healthy { "ok" } else { "degraded" }.into(),
        request_id: correlation.request_id,
        trace_id: correlation.trace_id,
        checks,
        downstream: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use retail_shared::Settings;
    use retail_shared::auth::{TokenIssuer, TokenRequest, audience};
    use retail_shared::client::LayerClient;
    use retail_shared::erp::{ErpBalance, ErpMaster, Posting, PostingResult};
    use tower::ServiceExt;

    use crate::adapters::erp::{Erp, ErpError};
    use crate::{AppState, Shared};

    const INTERNALS: &str = "http://10.0.0.5:5432 connection refused";

    /// An ERP that never answers, with an error naming its address.
    #[derive(Debug)]
    struct UnreachableErp;

    #[async_trait]
    impl Erp for UnreachableErp {
        fn backend(&self) -> &'static str {
            "unreachable"
        }

        async fn health(&self) -> Result<(), String> {
            Err(INTERNALS.to_owned())
        }

        async fn post(&self, _: &[Posting]) -> Result<Vec<PostingResult>, ErpError> {
            Err(ErpError::Unavailable(INTERNALS.to_owned()))
        }

        async fn balances(&self, _: &str) -> Result<Option<Vec<ErpBalance>>, ErpError> {
            Err(ErpError::Unavailable(INTERNALS.to_owned()))
        }

        async fn master(&self) -> Result<ErpMaster, ErpError> {
            Err(ErpError::Unavailable(INTERNALS.to_owned()))
        }
    }

    struct TestApp {
        router: axum::Router,
        pool: sqlx::SqlitePool,
        token: String,
    }

    async fn spawn_app() -> TestApp {
        let settings = Settings::defaults();
        let pool = crate::open_pool("sqlite::memory:").await.expect("pool");
        let issuer = TokenIssuer::new(&settings.auth);
        let token = issuer
            .mint(&TokenRequest {
                audience: audience::SYSTEM.into(),
                subject: "operator".into(),
                scopes: vec!["ops:read".into()],
                locations: None,
                on_behalf_of: None,
                ttl_seconds: 300,
            })
            .expect("token");
        let process = LayerClient::new(
            crate::SERVICE,
            audience::PROCESS,
            "http://127.0.0.1:9",
            &settings.client,
            issuer,
        )
        .expect("client");
        let audit_log = Arc::new(retail_shared::audit::MemoryAudit::new(10));
        let (auditor, _writer) =
            retail_shared::audit::Auditor::start(crate::SERVICE, audit_log.clone());
        let state = AppState::new(Shared {
            pool: pool.clone(),
            erp: Arc::new(UnreachableErp),
            sandbox: None,
            process,
            idempotency: Arc::new(retail_shared::idempotency::MemoryStore::default()),
        });
        TestApp {
            router: crate::router(state, &settings, auditor, audit_log),
            pool,
            token,
        }
    }

    impl TestApp {
        async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
            let mut request = Request::get(path);
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let response = self
                .router
                .clone()
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
                .await
                .expect("body");
            (status, String::from_utf8_lossy(&body).into_owned())
        }

        async fn readyz(&self) -> (StatusCode, String) {
            self.get("/readyz", None).await
        }

        async fn dependencies(&self) -> (StatusCode, String) {
            self.get("/v1/ops/dependencies", Some(&self.token.clone()))
                .await
        }
    }

    #[tokio::test]
    async fn readiness_hides_what_the_dependency_report_shows() {
        let app = spawn_app().await;

        let (ready, ready_body) = app.readyz().await;
        let (deps, deps_body) = app.dependencies().await;

        // The ERP is non-critical: ready, and its failure only named.
        assert_eq!(ready, StatusCode::OK, "{ready_body}");
        assert!(!ready_body.contains("10.0.0.5"), "{ready_body}");
        assert!(
            ready_body.contains("failing (non-critical)"),
            "{ready_body}"
        );
        assert_eq!(deps, StatusCode::OK, "{deps_body}");
        assert!(deps_body.contains(INTERNALS), "{deps_body}");
    }

    #[tokio::test]
    async fn a_failing_database_is_503_without_its_error_text() {
        let app = spawn_app().await;
        app.pool.close().await;

        let (ready, ready_body) = app.readyz().await;
        let (_, deps_body) = app.dependencies().await;

        assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{ready_body}");
        let ready_json: serde_json::Value = serde_json::from_str(&ready_body).expect("json");
        assert_eq!(ready_json["checks"]["database"], "failing");
        assert!(!ready_body.contains("pool"), "{ready_body}");
        let deps_json: serde_json::Value = serde_json::from_str(&deps_body).expect("json");
        let database = deps_json["checks"]["database"].as_str().unwrap_or_default();
        assert!(database.contains("pool"), "{deps_body}");
    }

    #[tokio::test]
    async fn the_dependency_report_needs_a_token() {
        let app = spawn_app().await;

        let (status, body) = app.get("/v1/ops/dependencies", None).await;

        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!body.contains("10.0.0.5"), "{body}");
    }
}
