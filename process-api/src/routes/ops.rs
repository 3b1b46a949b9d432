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

use crate::error::Result;
use crate::{AppState, SERVICE};

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(dependencies))
}

/// Checks the database and asks system-api for its own report, so one call
/// shows the request id and trace crossing the layers.
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
) -> Result<ApiJson<DependencyReport>> {
    let mut checks = serde_json::Map::new();
    let mut healthy = true;
    match state.store.ping().await {
        Ok(()) => {
            checks.insert("database".into(), json!("ok"));
        }
        Err(error) => {
            healthy = false;
            checks.insert("database".into(), json!(error.to_string()));
        }
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let downstream = match state
        .system
        .get::<DependencyReport>("/v1/ops/dependencies", &[], &["ops:read"], ctx)
        .await
    {
        Ok(report) => {
            healthy &= report.status == "ok";
            checks.insert("system-api".into(), json!("ok"));
            Some(Box::new(report))
        }
        Err(error) => {
            healthy = false;
            checks.insert("system-api".into(), json!(error.to_string()));
            None
        }
    };
    Ok(ApiJson(DependencyReport {
        service: SERVICE.into(),
        status: if healthy { "ok" } else { "degraded" }.into(),
        request_id: correlation.request_id,
        trace_id: correlation.trace_id,
        checks,
        downstream,
    }))
}
