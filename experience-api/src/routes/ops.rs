//! Operator diagnostics.

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::ops::DependencyReport;
use retail_shared::problem::{ApiJson, ProblemBody};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{AppState, SERVICE};

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(dependencies))
}

/// This layer and every layer below it, each reporting the request id and
/// trace id it received: a request followed across the platform.
#[utoipa::path(get, path = "/v1/ops/dependencies", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This layer and the ones below", body = DependencyReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing", body = ProblemBody, content_type = "application/problem+json")))]
async fn dependencies(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    correlation: Correlation,
) -> ApiJson<DependencyReport> {
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let mut checks = serde_json::Map::new();
    let (healthy, downstream) = match state.process.dependencies(ctx).await {
        Ok(report) => {
            checks.insert("process-api".into(), json!("ok"));
            (report.status == "ok", Some(Box::new(report)))
        }
        Err(error) => {
            checks.insert("process-api".into(), json!(error.to_string()));
            (false, None)
        }
    };
    ApiJson(DependencyReport {
        service: SERVICE.into(),
        status: if healthy { "ok" } else { "degraded" }.into(),
        request_id: correlation.request_id,
        trace_id: correlation.trace_id,
        checks,
        downstream,
    })
}
