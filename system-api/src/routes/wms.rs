//! Warehouse systems: receipts (ASN lines), transfer shipments and
//! receipts, cycle counts → canonical events (see [`crate::adapters::wms`]).

use axum::extract::State;
use retail_shared::auth::{Authorized, Principal, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::problem::{ApiJson, ProblemBody};
use retail_shared::validate::Validate as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::adapters::wms::{TypedDocument, WmsDocument, WmsKind};
use crate::error::Result;
use crate::routes::pos::ProducedEvent;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_receipt))
        .routes(routes!(post_shipment))
        .routes(routes!(post_transfer_receipt))
        .routes(routes!(post_count))
}

/// Answer of the WMS endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct WmsResult {
    /// The document's id.
    pub document_id: String,
    /// The canonical events produced, one per line, and their outcome.
    pub events: Vec<ProducedEvent>,
}

#[derive(Debug, Deserialize)]
struct IngestAnswer {
    results: Vec<ProducedEvent>,
}

/// Validates, checks the binding, and hands the events to process-api
/// (retried safely: the event ids derive from the document).
async fn forward(
    state: &AppState,
    auth: &Principal,
    correlation: &Correlation,
    kind: WmsKind,
    document: &WmsDocument,
) -> Result<ApiJson<WmsResult>> {
    let typed = TypedDocument { kind, document }.validated()?;
    auth.require_location(&document.location_id)?;
    let ctx = CallContext {
        principal: Some(auth),
        correlation,
    };
    let answer: IngestAnswer = state
        .process
        .post(
            "/v1/inventory/events",
            &serde_json::json!({ "events": typed.to_events() }),
            &["inventory:write"],
            ctx,
            Some(&typed.key()),
        )
        .await?;
    metrics::counter!("wms_documents_total", "kind" => format!("{kind:?}")).increment(1);
    Ok(ApiJson(WmsResult {
        document_id: document.document_id.clone(),
        events: answer.results,
    }))
}

/// Goods received against an advance ship notice: one `receipt` per line
/// at `location_id`. Idempotent by (location, document id).
#[utoipa::path(post, path = "/v1/wms/receipts", tag = "wms",
    request_body = WmsDocument,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The events produced and their outcome", body = WmsResult),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope wms:write missing, or the location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; safe to retry", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_receipt(
    State(state): State<AppState>,
    auth: Authorized<scope::WmsWrite>,
    correlation: Correlation,
    ApiJson(document): ApiJson<WmsDocument>,
) -> Result<ApiJson<WmsResult>> {
    forward(&state, &auth, &correlation, WmsKind::Receipt, &document).await
}

/// A transfer leaving `location_id` for `counterparty_location_id`: one
/// `transfer_out` per line (on_hand down here, in_transit up there).
#[utoipa::path(post, path = "/v1/wms/shipments", tag = "wms",
    request_body = WmsDocument,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The events produced and their outcome", body = WmsResult),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope wms:write missing, or the location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed (a counterparty is required)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; safe to retry", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_shipment(
    State(state): State<AppState>,
    auth: Authorized<scope::WmsWrite>,
    correlation: Correlation,
    ApiJson(document): ApiJson<WmsDocument>,
) -> Result<ApiJson<WmsResult>> {
    forward(&state, &auth, &correlation, WmsKind::Shipment, &document).await
}

/// A transfer arriving at `location_id` from `counterparty_location_id`:
/// one `transfer_in` per line (in_transit down, on_hand up).
#[utoipa::path(post, path = "/v1/wms/transfer-receipts", tag = "wms",
    request_body = WmsDocument,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The events produced and their outcome", body = WmsResult),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope wms:write missing, or the location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed (a counterparty is required)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; safe to retry", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_transfer_receipt(
    State(state): State<AppState>,
    auth: Authorized<scope::WmsWrite>,
    correlation: Correlation,
    ApiJson(document): ApiJson<WmsDocument>,
) -> Result<ApiJson<WmsResult>> {
    forward(
        &state,
        &auth,
        &correlation,
        WmsKind::TransferReceipt,
        &document,
    )
    .await
}

/// A cycle count: one `count` per line (on_hand := quantity as of
/// `occurred_at`; later deltas still apply, earlier ones are reflected).
/// Each sku at most once per document.
#[utoipa::path(post, path = "/v1/wms/counts", tag = "wms",
    request_body = WmsDocument,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The events produced and their outcome", body = WmsResult),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope wms:write missing, or the location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; safe to retry", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_count(
    State(state): State<AppState>,
    auth: Authorized<scope::WmsWrite>,
    correlation: Correlation,
    ApiJson(document): ApiJson<WmsDocument>,
) -> Result<ApiJson<WmsResult>> {
    forward(&state, &auth, &correlation, WmsKind::Count, &document).await
}
