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
    OpenApiRouter::new()
        .routes(routes!(dependencies))
        .routes(routes!(read_model))
}

/// This replica's availability read model.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReadModelStatus {
    /// Availability reads may be answered from the model (configuration).
    pub enabled: bool,
    /// It answers now: it held every change up to at most
    /// `[experience] read_model_max_staleness_ms` ago.
    pub answering: bool,
    /// How long ago it held every change (absent: never yet).
    pub staleness_ms: Option<u64>,
    /// The newest feed seq received.
    pub feed_seq: i64,
    /// The change stream from process-api is open.
    pub feed_connected: bool,
    /// Skus held in memory.
    pub skus_held: usize,
    /// Skus loaded from the replicas' shared copy (since start).
    pub loaded_shared: u64,
    /// Skus loaded from process-api (since start).
    pub loaded_process: u64,
    /// The copy shared through Redis (absent: not configured).
    pub shared: Option<crate::shared_model::SharedStatus>,
}

/// This replica's read model: freshness, size, where its skus came from.
///
/// Location binding: nothing here is per location; bound tokens get the
/// same answer.
#[utoipa::path(get, path = "/v1/ops/read-model", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The read model of this replica", body = ReadModelStatus),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing", body = ProblemBody, content_type = "application/problem+json")))]
async fn read_model(
    State(state): State<AppState>,
    _auth: Authorized<scope::OpsRead>,
) -> ApiJson<ReadModelStatus> {
    use std::sync::atomic::Ordering;
    let staleness = state.relay.staleness();
    ApiJson(ReadModelStatus {
        enabled: state.model_max_staleness.is_some(),
        answering: state.model_staleness().is_some(),
        staleness_ms: staleness.map(|s| u64::try_from(s.as_millis()).unwrap_or(u64::MAX)),
        feed_seq: state.relay.head(),
        feed_connected: state.relay.connected(),
        skus_held: state.model.len(),
        loaded_shared: state.model.loaded_shared.load(Ordering::Relaxed),
        loaded_process: state.model.loaded_process.load(Ordering::Relaxed),
        shared: state.shared_model.as_ref().map(|shared| shared.status()),
    })
}

/// This layer and every layer below it, each reporting the request id and
/// trace id it received: a request followed across the platform.
///
/// Location binding: nothing here is per location; bound tokens get the
/// same answer.
#[utoipa::path(get, path = "/v1/ops/dependencies", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This layer and the ones below, with each failure's text", body = DependencyReport),
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
