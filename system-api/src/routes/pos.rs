//! Store systems: POS transactions (pinned JSON basket).

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::problem::{ApiJson, ProblemBody, ValidJson};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::adapters::pos::PosTransaction;
use crate::error::Result;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_transaction))
}

/// What became of one canonical event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProducedEvent {
    /// The canonical event id (`pos:<store>:<terminal>:<transaction>:<line>`).
    pub event_id: String,
    /// `applied`, `duplicate`, `parked` or `rejected`.
    pub status: String,
    /// Why, when not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer of `POST /v1/pos/transactions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PosResult {
    /// Store.
    pub store_id: String,
    /// Till.
    pub terminal_id: String,
    /// Transaction.
    pub transaction_id: String,
    /// The canonical events produced, one per line.
    pub events: Vec<ProducedEvent>,
}

#[derive(Debug, Deserialize)]
struct IngestAnswer {
    results: Vec<ProducedEvent>,
}

/// Accepts a POS basket and hands its canonical events to process-api.
/// Idempotent by (store_id, terminal_id, transaction_id): re-sending it
/// changes nothing and answers the original result (same event ids);
/// re-using a transaction id for a different basket is a 422 problem
/// (within the idempotency retention; after it, the derived event ids are
/// still never applied twice).
#[utoipa::path(post, path = "/v1/pos/transactions", tag = "pos",
    request_body = PosTransaction,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The events produced and their outcome", body = PosResult),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope pos:write missing, or a store outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed, or the transaction id was used for another basket", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; safe to retry", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_transaction(
    State(state): State<AppState>,
    auth: Authorized<scope::PosWrite>,
    correlation: Correlation,
    ValidJson(transaction): ValidJson<PosTransaction>,
) -> Result<ApiJson<PosResult>> {
    auth.require_location(&transaction.store_id)?;
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let body = serde_json::json!({ "events": transaction.to_events() });
    // The derived event ids make a repeat harmless, so the call carries an
    // idempotency key and is retried on transport failures.
    let answer: IngestAnswer = state
        .process
        .post(
            "/v1/inventory/events",
            &body,
            &["inventory:write"],
            ctx,
            Some(&transaction.key()),
        )
        .await?;
    metrics::counter!("pos_transactions_total").increment(1);
    Ok(ApiJson(PosResult {
        store_id: transaction.store_id,
        terminal_id: transaction.terminal_id,
        transaction_id: transaction.transaction_id,
        events: answer.results,
    }))
}
