//! Store systems: POS transactions (pinned JSON basket) and ARTS POSLog
//! XML documents.

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::problem::{ApiJson, FieldError, Problem, ProblemBody, ValidJson};
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
        .routes(routes!(post_batch))
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

/// Hands canonical events to process-api in calls of up to 1000, each with
/// an idempotency key digested from this request's id and the events' ids:
/// this client's retries of a call are safe, while a document sent again
/// (a new request) is answered afresh, its events as `duplicate`. One
/// result per event, in order.
async fn send_events(
    state: &AppState,
    ctx: CallContext<'_>,
    events: &[serde_json::Value],
) -> Result<Vec<ProducedEvent>> {
    use sha2::Digest as _;
    let mut produced = Vec::with_capacity(events.len());
    for chunk in events.chunks(EVENTS_PER_CALL) {
        let mut digest = sha2::Sha256::new();
        digest.update(ctx.correlation.request_id.as_bytes());
        digest.update(b"\n");
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
                Some(&format!("events:{key}")),
            )
            .await?;
        produced.extend(answer.results);
    }
    Ok(produced)
}

/// Accepts an ARTS POSLog XML document (`application/xml` or `text/xml`):
/// every `RetailTransaction` with sale and return line items becomes
/// canonical events, exactly as the JSON basket would (same event ids
/// `pos:<RetailStoreID>:<WorkstationID>:<SequenceNumber>:<line>`, so a
/// re-sent document changes nothing). Voided line items, voided or
/// cancelled transactions and training transactions are skipped and
/// counted. Malformed XML, or a transaction missing its store, workstation,
/// sequence number or time, is a 422 problem with `line` and `column`;
/// nothing is sent. So is a document past the reader's bounds, where it
/// crosses one: elements nested over 32 deep, text or an attribute value
/// over 64 KiB, over 32 attributes on an element, over 500 lines in a
/// transaction or over 10,000 in the document.
#[utoipa::path(post, path = "/v1/pos/poslog", tag = "pos",
    request_body(content = String, content_type = "application/xml", description = "An ARTS POSLog document"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The transactions applied and their events", body = PosLogResult),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope pos:write missing, or a store outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not XML", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Malformed POSLog or one past the reader's bounds (with line and column), or an invalid transaction", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; safe to retry", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_poslog(
    State(state): State<AppState>,
    auth: Authorized<scope::PosWrite>,
    correlation: Correlation,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<ApiJson<PosLogResult>> {
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
    let produced = send_events(&state, ctx, &events).await?;
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

/// Largest CSV batch accepted.
pub const MAX_CSV_BYTES: u64 = 256 * 1024 * 1024;
/// Most failed rows listed in the answer (all are counted).
const MAX_LISTED_FAILURES: usize = 1000;

/// The 422 for a row over the CSV bounds. Reading stops at it, so unlike
/// an invalid row it cannot be skipped: the answer is the row, and what was
/// sent before it stays (as when an upload breaks off).
fn row_out_of_bounds(error: crate::adapters::pos::csv::RecordError) -> Problem {
    Problem::validation(vec![FieldError {
        pointer: format!("/rows/{}", error.record),
        detail: format!("{} (line {})", error.detail, error.line),
    }])
    .with_detail(format!(
        "{error}; reading stopped there. Rows before it may have been applied (rows are sent \
         in batches of {EVENTS_PER_CALL}); nothing after it was. Fix the row and upload the \
         whole file again: rows already applied count as duplicate."
    ))
    .with_extension("row", error.record)
    .with_extension("line", error.line)
}

/// A row that did not apply.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowFailure {
    /// Row number in the file (the header is row 1).
    pub row: u64,
    /// `rejected` (invalid row or event), `parked` (unknown sku or store:
    /// kept and applied when the master data arrives) or `forbidden`
    /// (store outside the token's binding).
    pub status: String,
    /// Why.
    pub reason: String,
}

/// Answer of `POST /v1/pos/batches`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct BatchResult {
    /// Data rows read.
    pub rows: u64,
    /// Rows applied now.
    pub applied: u64,
    /// Rows applied by an earlier upload (nothing changed).
    pub duplicate: u64,
    /// Rows parked until their master data arrives.
    pub parked: u64,
    /// Rows refused (invalid, or outside the token's binding).
    pub rejected: u64,
    /// The rows that did not apply, with why (at most 1000 listed).
    pub failures: Vec<RowFailure>,
    /// Whether more failures happened than are listed.
    pub failures_truncated: bool,
}

impl BatchResult {
    fn fail(&mut self, row: u64, status: &str, reason: String) {
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(RowFailure {
                row,
                status: status.into(),
                reason,
            });
        } else {
            self.failures_truncated = true;
        }
    }

    /// Sends the pending rows' events and books their outcomes.
    async fn flush(
        &mut self,
        state: &AppState,
        ctx: CallContext<'_>,
        pending: &mut Vec<(u64, serde_json::Value)>,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let events: Vec<serde_json::Value> = pending.iter().map(|(_, e)| e.clone()).collect();
        let produced = send_events(state, ctx, &events).await?;
        for ((row, _), result) in pending.drain(..).zip(produced) {
            match result.status.as_str() {
                "applied" => self.applied += 1,
                "duplicate" => self.duplicate += 1,
                "parked" => {
                    self.parked += 1;
                    self.fail(row, "parked", result.reason.unwrap_or_default());
                }
                _ => {
                    self.rejected += 1;
                    self.fail(row, "rejected", result.reason.unwrap_or_default());
                }
            }
        }
        Ok(())
    }
}

/// The nightly POS batch as CSV (`text/csv`), read as a stream and sent to
/// process-api in batches of 1000 rows. A header row names the columns
/// `store_id, terminal_id, transaction_id, occurred_at, sku, quantity,
/// kind` (any order; other columns ignored); each further row is one
/// basket line. The answer counts the rows applied, already applied,
/// parked and refused, and lists the failed rows with why. Event ids derive
/// from the file's content (`pos:<store>:<terminal>:<transaction>:<n>`, n
/// counting that transaction's rows in file order), so uploading the same
/// file again changes nothing. Do not send an `Idempotency-Key` with a
/// large file (the key buffers the body within the 4 MiB request limit);
/// the file is at most 256 MiB. A missing column is a 422 before anything
/// is sent. A row longer than 64 KiB or with more than 64 fields is a 422
/// naming it (pointer `/rows/<n>`, with `row` and `line`): reading stops
/// there, and only rows sent before it may have been applied. For very
/// large files, the CLI `retail-platform import pos FILE`
/// uploads in pieces with a progress bar.
#[utoipa::path(post, path = "/v1/pos/batches", tag = "pos",
    request_body(content = String, content_type = "text/csv", description = "Header row, then one row per basket line"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per-row outcome", body = BatchResult),
        (status = 400, description = "The upload broke off", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope pos:write missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Over 256 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not text/csv", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "No header row, a column missing from it, or a row over 64 KiB or 64 fields (reading stopped there)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer; re-uploading is safe", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_batch(
    State(state): State<AppState>,
    auth: Authorized<scope::PosWrite>,
    correlation: Correlation,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<ApiJson<BatchResult>> {
    use futures::StreamExt as _;

    use crate::adapters::pos::csv::{BatchReader, RecordSplitter};
    let header = |name: axum::http::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    if !header(axum::http::header::CONTENT_TYPE).starts_with("text/csv") {
        return Err(Problem::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .with_detail("send the batch as text/csv")
        .into());
    }
    let too_large = || {
        Problem::from_status(axum::http::StatusCode::PAYLOAD_TOO_LARGE).with_detail(format!(
            "a batch is at most {MAX_CSV_BYTES} bytes; split the file"
        ))
    };
    if header(axum::http::header::CONTENT_LENGTH)
        .parse::<u64>()
        .is_ok_and(|length| length > MAX_CSV_BYTES)
    {
        return Err(too_large().into());
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let mut splitter = RecordSplitter::default();
    let mut reader = BatchReader::default();
    let mut result = BatchResult::default();
    let mut pending: Vec<(u64, serde_json::Value)> = Vec::new();
    let mut row: u64 = 0;
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    let mut finished = false;
    while !finished {
        let mut records = Vec::new();
        match stream.next().await {
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if received > MAX_CSV_BYTES {
                    return Err(too_large().into());
                }
                splitter
                    .feed(&chunk, |r| records.push(r))
                    .map_err(row_out_of_bounds)?;
            }
            Some(Err(error)) => {
                return Err(Problem::bad_request(format!(
                    "the upload broke off after {received} bytes ({error}); rows before it may \
                     have been applied, and uploading the whole file again is safe"
                ))
                .into());
            }
            None => {
                splitter
                    .feed(&[], |r| records.push(r))
                    .map_err(row_out_of_bounds)?;
                finished = true;
            }
        }
        for fields in records {
            row += 1;
            if !reader.has_header() {
                reader.header(&fields).map_err(|reason| {
                    Problem::validation(vec![FieldError {
                        pointer: "/header".into(),
                        detail: reason,
                    }])
                })?;
                continue;
            }
            if fields.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            result.rows += 1;
            match reader.row(&fields) {
                Err(reason) => {
                    result.rejected += 1;
                    result.fail(row, "rejected", reason);
                }
                Ok((store, _)) if !auth.can_access(&store) => {
                    result.rejected += 1;
                    result.fail(
                        row,
                        "forbidden",
                        format!("the token is not bound to store `{store}`"),
                    );
                }
                Ok((_, event)) => pending.push((row, event)),
            }
            if pending.len() >= EVENTS_PER_CALL {
                result.flush(&state, ctx, &mut pending).await?;
            }
        }
    }
    if !reader.has_header() {
        return Err(Problem::validation(vec![FieldError {
            pointer: "/header".into(),
            detail: "the file is empty: a header row is required".into(),
        }])
        .into());
    }
    result.flush(&state, ctx, &mut pending).await?;
    metrics::counter!("pos_batch_rows_total").increment(result.rows);
    Ok(ApiJson(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::pos::csv::RecordSplitter;

    #[test]
    fn a_row_over_the_bounds_is_a_422_naming_it() {
        let mut splitter = RecordSplitter::default();
        let input = format!("store_id,sku\nS001,A\n{}\n", ",".repeat(1000));
        let error = splitter
            .feed(input.as_bytes(), |_| {})
            .expect_err("refused");

        let problem = row_out_of_bounds(error);
        assert_eq!(
            problem.status(),
            axum::http::StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(problem.errors()[0].pointer, "/rows/3");
        let body = problem.body();
        assert_eq!(
            (body["row"].as_u64(), body["line"].as_u64()),
            (Some(3), Some(3))
        );
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("row 3")),
            "{body}"
        );
    }
}
