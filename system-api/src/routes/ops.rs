//! Operator diagnostics.

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
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

/// Checks the adapter storage and the ERP backend. The request id and trace
/// id reported are the ones this layer received from the layer above.
///
/// Location binding: nothing here is per location; bound tokens get the
/// same answer.
#[utoipa::path(get, path = "/v1/ops/dependencies", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This layer's dependencies", body = DependencyReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing", body = ProblemBody, content_type = "application/problem+json")))]
async fn dependencies(
    State(state): State<AppState>,
    _auth: Authorized<scope::OpsRead>,
    correlation: Correlation,
) -> ApiJson<DependencyReport> {
    let mut checks = serde_json::Map::new();
    let mut healthy = true;
    let database = sqlx::query("SELECT 1").execute(&state.pool).await;
    match database {
        Ok(_) => {
            checks.insert("database".into(), json!("ok"));
        }
        Err(error) => {
            healthy = false;
            checks.insert("database".into(), json!(error.to_string()));
        }
    }
    let erp_name = format!("erp:{}", state.erp.backend());
    match state.erp.health().await {
        Ok(()) => {
            checks.insert(erp_name, json!("ok"));
        }
        Err(error) => {
            healthy = false;
            checks.insert(erp_name, json!(error));
        }
    }
    ApiJson(DependencyReport {
        service: SERVICE.into(),
        status: if healthy { "ok" } else { "degraded" }.into(),
        request_id: correlation.request_id,
        trace_id: correlation.trace_id,
        checks,
        downstream: None,
    })
}
