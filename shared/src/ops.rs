//! Operational endpoints every service serves: `/healthz` (the process is
//! up), `/readyz` (its dependencies answer: states only, no error text or
//! addresses, as it is unauthenticated), `/metrics` (Prometheus text),
//! `/openapi.json` and the interactive docs at `/docs` (Swagger UI, assets
//! compiled into the binary).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_swagger_ui::SwaggerUi;

use crate::telemetry::prometheus;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One named readiness check (database, downstream layer, ERP…).
#[derive(Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    critical: bool,
    run: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .finish()
    }
}

impl ReadinessCheck {
    /// A check named `name` that runs `check`.
    pub fn new<F, Fut>(name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            critical: true,
            run: Arc::new(move || Box::pin(check())),
        }
    }

    /// A check whose failure is reported but does not make the service
    /// unready (a dependency the service can work without for a while,
    /// such as the ERP behind an outbox).
    pub fn optional<F, Fut>(name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            critical: false,
            ..Self::new(name, check)
        }
    }
}

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    /// Service name.
    pub service: String,
    /// Build version.
    pub version: String,
}

/// Readiness answer: overall status and one word per dependency. It is
/// served without authentication, so it names no address and carries no
/// error text; the failures are logged, and the authenticated
/// `GET /v1/ops/dependencies` (scope `ops:read`) reports them in detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Service name.
    pub service: String,
    /// Per-dependency state, by check name.
    pub checks: BTreeMap<String, CheckState>,
}

/// One readiness check's state as `/readyz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum CheckState {
    /// The dependency answered.
    #[serde(rename = "ok")]
    Ok,
    /// The dependency failed; the service is not ready.
    #[serde(rename = "failing")]
    Failing,
    /// The dependency failed, but the service works without it for a while.
    #[serde(rename = "failing (non-critical)")]
    FailingNonCritical,
}

/// What one readiness check found.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// The check's name.
    pub name: &'static str,
    /// Whether a failure makes the service unready.
    pub critical: bool,
    /// `Err` with the failure (internal detail: never shown unauthenticated).
    pub result: Result<(), String>,
}

impl CheckOutcome {
    /// The state `/readyz` shows.
    pub fn state(&self) -> CheckState {
        match (&self.result, self.critical) {
            (Ok(()), _) => CheckState::Ok,
            (Err(_), true) => CheckState::Failing,
            (Err(_), false) => CheckState::FailingNonCritical,
        }
    }

    /// The detail the authenticated dependency report shows: `ok`, or the
    /// failure (marked when non-critical).
    pub fn detail(&self) -> serde_json::Value {
        match &self.result {
            Ok(()) => json!("ok"),
            Err(error) if self.critical => json!(error),
            Err(error) => json!(format!("{error} (non-critical)")),
        }
    }
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() {}

/// Readiness: every critical dependency answered within the check
/// timeout. Each check is reported as `ok` or `failing` only; why it
/// failed is logged and reported by the authenticated
/// `GET /v1/ops/dependencies`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Every critical dependency answers (non-critical ones may be failing)", body = Readiness),
        (status = 503, description = "A critical dependency is failing (details in GET /v1/ops/dependencies)", body = Readiness)))]
pub async fn readyz() {}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics() {}

/// Runs every check at once, each within [`CHECK_TIMEOUT`]; failures are
/// logged here.
pub async fn run_checks(checks: &[ReadinessCheck]) -> Vec<CheckOutcome> {
    futures::future::join_all(checks.iter().map(|check| {
        let run = check.run.clone();
        let name = check.name;
        let critical = check.critical;
        async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, run()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            if let Err(error) = &result {
                tracing::warn!(check = name, critical, %error, "readiness check failed");
            }
            CheckOutcome {
                name,
                critical,
                result,
            }
        }
    }))
    .await
}

/// The `/readyz` answer: 503 when a critical check failed; the body names
/// each check's state and nothing of why it failed.
async fn readiness(service: &'static str, checks: &[ReadinessCheck]) -> Response {
    let outcomes = run_checks(checks).await;
    let ready = outcomes.iter().all(|o| o.state() != CheckState::Failing);
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" }.into(),
        service: service.into(),
        checks: outcomes
            .iter()
            .map(|o| (o.name.to_owned(), o.state()))
            .collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The checks' details for a [`DependencyReport`]: whether all passed, and
/// each check's `ok` or failure text.
pub fn check_details(
    outcomes: &[CheckOutcome],
) -> (bool, serde_json::Map<String, serde_json::Value>) {
    let healthy = outcomes.iter().all(|o| o.result.is_ok());
    let details = outcomes
        .iter()
        .map(|o| (o.name.to_owned(), o.detail()))
        .collect();
    (healthy, details)
}

/// 403 for a token bound to locations: the operation (`what`) spans every
/// location, or none in particular, and cannot be narrowed to a binding.
/// Unbound tokens pass.
pub fn require_unbound(
    principal: &crate::auth::Principal,
    what: &str,
) -> Result<(), crate::problem::Problem> {
    if principal.locations.is_some() {
        return Err(crate::problem::Problem::forbidden(format!(
            "{what} spans every location; a token bound to locations may not use it"
        )));
    }
    Ok(())
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Entries in id order.
    pub entries: Vec<crate::audit::AuditEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// State-changing requests this service handled: who, what, when, the
/// correlation ids and the outcome.
///
/// Location binding: entries carry no location and span every caller, so
/// a token bound to locations gets 403.
#[utoipa::path(get, path = "/v1/ops/audit", tag = "operations",
    params(crate::audit::AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the audit log", body = AuditPage),
        (status = 401, description = "No valid token", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = crate::problem::ProblemBody, content_type = "application/problem+json")))]
pub async fn audit_log(
    axum::extract::State(sink): axum::extract::State<Arc<dyn crate::audit::AuditSink>>,
    auth: crate::auth::Authorized<crate::auth::scope::OpsRead>,
    crate::problem::ApiQuery(query): crate::problem::ApiQuery<crate::audit::AuditQuery>,
) -> Result<axum::Json<AuditPage>, crate::problem::Problem> {
    require_unbound(&auth, "the audit log")?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(crate::problem::Problem::validation(vec![
            crate::problem::FieldError {
                pointer: "?limit".into(),
                detail: "must be between 1 and 1000".into(),
            },
        ]));
    }
    let entries = sink.query(&query, limit).await.map_err(|error| {
        tracing::error!(%error, "audit log unreadable");
        crate::problem::Problem::internal()
    })?;
    let next_after = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(axum::Json(AuditPage {
        entries,
        next_after,
    }))
}

/// The operational routes of a service.
pub fn router(
    service: &'static str,
    checks: Vec<ReadinessCheck>,
    openapi: utoipa::openapi::OpenApi,
    audit: Arc<dyn crate::audit::AuditSink>,
) -> Router {
    let checks = Arc::new(checks);
    Router::new()
        .route("/v1/ops/audit", get(audit_log).with_state(audit))
        .route(
            "/healthz",
            get(move || async move {
                axum::Json(Health {
                    status: "ok".into(),
                    service: service.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                })
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move { readiness(service, &checks).await }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    prometheus().render(),
                )
            }),
        )
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
}

/// Answer of `GET /v1/ops/dependencies`: what this service saw of the
/// request (its correlation ids), its own checks, and the same report from
/// the layer below, so one call shows a request crossing every layer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct DependencyReport {
    /// Service that wrote this part of the report.
    pub service: String,
    /// `ok` when every check and the downstream layer are healthy.
    pub status: String,
    /// The `X-Request-Id` this service received.
    pub request_id: String,
    /// The W3C trace id this service joined.
    pub trace_id: String,
    /// Per-dependency result: `ok` or the failure's text (addresses and
    /// error messages included: this report needs scope `ops:read`).
    pub checks: serde_json::Map<String, serde_json::Value>,
    /// The next layer's report, when there is a next layer.
    #[schema(value_type = Option<Object>)]
    pub downstream: Option<Box<DependencyReport>>,
}

/// Adds the bearer security scheme to a service's OpenAPI document.
#[derive(Debug)]
pub struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT for this service's audience; scopes in the `scope` claim, \
                         optional `locations` binding.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The governance rules every service applies, appended to each OpenAPI
/// description so clients read them in the contract.
pub const GOVERNANCE_NOTES: &str = "\
**Authentication**: `Authorization: Bearer <JWT>` for this service's audience \
(HS256, or RS256/ES256 from the configured identity provider's key set; `exp`, \
`iss`, `aud` (a string, or an array holding this audience), `sub` required; \
5 s leeway). Service tokens between layers are EdDSA, signed by the calling \
layer's own key and accepted only from the layers allowed to call this one; \
only they may act `on_behalf_of` someone. 401 with `WWW-Authenticate` when \
missing or invalid, 403 when a scope is missing or a location is outside the \
token's `locations` claim.\n\n\
**Throttling**: requests without a recently verified token are limited per \
peer address before verification (429); then GCRA per client and route class \
(`read`: GET; `write`: other methods). Responses carry `RateLimit-Policy` and `RateLimit`; a denied request \
gets 429 with `Retry-After`.\n\n\
**Idempotency**: effectful POSTs honour `Idempotency-Key` (1-255 visible \
ASCII characters; bulk reads ignore it), scoped per client and kept 24 hours by default \
(`[idempotency] retention_hours`): the same key and request replay the stored \
response (`Idempotent-Replayed: true`); the same key with a different request \
gets 422; the same key while the first request runs gets 409. 5xx answers are \
not stored.\n\n\
**Limits**: request bodies up to 4 MiB by default (`[http] body_limit_bytes`; \
413 beyond), a 15 s request deadline (503 beyond), strict JSON (unknown \
fields are rejected), identifiers of 1-128 printable ASCII characters, list \
pages of at most 1000; batch and quantity bounds are on each schema.\n\n\
**Errors**: RFC 9457 `application/problem+json`; validation errors list \
`{pointer, detail}` in `errors`.\n\n\
**Correlation**: `X-Request-Id` (1-128 visible ASCII characters, else \
replaced) and W3C `traceparent` are accepted or created, echoed, and passed \
on to the layers below.\n\n\
**Lifecycle**: deprecated routes answer with `Deprecation`, `Sunset` and \
`Link: <...>; rel=\"successor-version\"` and are flagged `deprecated` here.";

/// Appends [`GOVERNANCE_NOTES`] to a document's description.
pub fn with_governance_notes(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let description = doc.info.description.take().unwrap_or_default();
    doc.info.description = Some(format!("{description}\n\n{GOVERNANCE_NOTES}"));
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    const INTERNALS: &str = "http://10.0.0.5:5432 connection refused";

    fn app(checks: Vec<ReadinessCheck>) -> Router {
        router(
            "readiness-test",
            checks,
            utoipa::openapi::OpenApiBuilder::new().build(),
            Arc::new(crate::audit::MemoryAudit::new(10)),
        )
    }

    async fn readyz(checks: Vec<ReadinessCheck>) -> (StatusCode, String) {
        let response = app(checks)
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn failing() -> Result<(), String> {
        Err(INTERNALS.to_owned())
    }

    #[tokio::test]
    async fn readiness_names_a_failing_critical_check_without_its_error() {
        let (status, body) = readyz(vec![
            ReadinessCheck::new("database", || async { failing() }),
            ReadinessCheck::optional("erp", || async { failing() }),
            ReadinessCheck::new("cache", || async { Ok(()) }),
        ])
        .await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        for internal in ["10.0.0.5", "5432", "connection refused", "http://"] {
            assert!(!body.contains(internal), "{internal} in {body}");
        }
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            body,
            json!({
                "status": "not_ready",
                "service": "readiness-test",
                "checks": {
                    "database": "failing",
                    "erp": "failing (non-critical)",
                    "cache": "ok",
                },
            })
        );
    }

    #[tokio::test]
    async fn a_failing_non_critical_check_keeps_the_service_ready() {
        let (status, body) = readyz(vec![
            ReadinessCheck::new("database", || async { Ok(()) }),
            ReadinessCheck::optional("erp", || async { failing() }),
        ])
        .await;

        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("10.0.0.5"), "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["checks"]["erp"], "failing (non-critical)");
    }

    #[tokio::test]
    async fn the_check_details_keep_the_error_text() {
        let outcomes = run_checks(&[
            ReadinessCheck::new("database", || async { failing() }),
            ReadinessCheck::optional("erp", || async { failing() }),
            ReadinessCheck::new("cache", || async { Ok(()) }),
        ])
        .await;

        let (healthy, details) = check_details(&outcomes);

        assert!(!healthy);
        assert_eq!(details["database"], json!(INTERNALS));
        assert_eq!(details["erp"], json!(format!("{INTERNALS} (non-critical)")));
        assert_eq!(details["cache"], json!("ok"));
    }
}
