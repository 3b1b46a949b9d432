//! Store systems: POS transactions (pinned JSON basket) and ARTS POSLog
//! XML documents.

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
    OpenApiRouter::new()
        .routes(routes!(post_transaction))
        .routes(routes!(post_poslog))
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

/// Answer of `POST /v1/pos/poslog`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PosLogResult {
    /// One result per transaction applied, in document order.
    pub transactions: Vec<PosResult>,
    /// Voided, cancelled or training transactions skipped.
    pub skipped_transactions: usize,
    /// Voided line items skipped.
    pub skipped_lines: usize,
}

/// Events per call to process-api (its batch limit).
const EVENTS_PER_CALL: usize = 1000;

/// Accepts an ARTS POSLog XML document (`application/xml` or `text/xml`):
/// every `RetailTransaction` with sale and return line items becomes
/// canonical events, exactly as the JSON basket would (same event ids
/// `pos:<RetailStoreID>:<WorkstationID>:<SequenceNumber>:<line>`, so a
/// re-sent document changes nothing). Voided line items, voided or
/// cancelled transactions and training transactions are skipped and
/// counted. Malformed XML, or a transaction missing its store, workstation,
/// sequence number or time, is a 422 problem with `line` and `column`;
/// nothing is sent.
#[utoipa::path(post, path = "/v1/pos/poslog", tag = "pos",
    request_body(content = String, content_type = "application/xml", description = "An ARTS POSLog document"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The transactions applied and their events", body = PosLogResult),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope pos:write missing, or a store outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not XML", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Malformed POSLog (with line and column) or an invalid transaction", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; safe to retry", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_poslog(
    State(state): State<AppState>,
    auth: Authorized<scope::PosWrite>,
    correlation: Correlation,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<ApiJson<PosLogResult>> {
    use retail_shared::problem::Problem;
    use retail_shared::validate::Validate as _;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !(content_type.starts_with("application/xml") || content_type.starts_with("text/xml")) {
        return Err(Problem::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .with_detail("send the POSLog document as application/xml or text/xml")
        .into());
    }
    let text = std::str::from_utf8(&body).map_err(|e| {
        Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "malformed-poslog",
            "Malformed POSLog",
        )
        .with_detail(format!(
            "the document is not UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    let log = crate::adapters::pos::poslog::parse(text).map_err(|error| {
        Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "malformed-poslog",
            "Malformed POSLog",
        )
        .with_detail(error.to_string())
        .with_extension("line", error.line)
        .with_extension("column", error.column)
    })?;
    let mut events = Vec::new();
    for (index, transaction) in log.transactions.iter().enumerate() {
        let transaction = transaction.clone().validated().map_err(|problem| {
            Problem::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-transaction",
                "Invalid POSLog transaction",
            )
            .with_detail(format!(
                "transaction {} ({}/{}/{}): {}",
                index + 1,
                transaction.store_id,
                transaction.terminal_id,
                transaction.transaction_id,
                problem
                    .errors()
                    .iter()
                    .map(|e| format!("{} {}", e.pointer, e.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        auth.require_location(&transaction.store_id)?;
        events.extend(transaction.to_events());
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let mut produced: Vec<ProducedEvent> = Vec::with_capacity(events.len());
    for chunk in events.chunks(EVENTS_PER_CALL) {
        // Derived event ids make a repeat harmless; the key (a digest of
        // them) lets the call be retried.
        use sha2::Digest as _;
        let mut digest = sha2::Sha256::new();
        for event in chunk {
            digest.update(event["event_id"].as_str().unwrap_or_default().as_bytes());
            digest.update(b"\n");
        }
        let key: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let answer: IngestAnswer = state
            .process
            .post(
                "/v1/inventory/events",
                &serde_json::json!({ "events": chunk }),
                &["inventory:write"],
                ctx,
                Some(&format!("poslog:{key}")),
            )
            .await?;
        produced.extend(answer.results);
    }
    let mut produced = produced.into_iter();
    let transactions = log
        .transactions
        .into_iter()
        .map(|t| PosResult {
            events: produced.by_ref().take(t.lines.len()).collect(),
            store_id: t.store_id,
            terminal_id: t.terminal_id,
            transaction_id: t.transaction_id,
        })
        .collect();
    metrics::counter!("pos_poslog_documents_total").increment(1);
    Ok(ApiJson(PosLogResult {
        transactions,
        skipped_transactions: log.skipped_transactions,
        skipped_lines: log.skipped_lines,
    }))
}
