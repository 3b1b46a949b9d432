//! Channel processes over HTTP: transfers between locations and customer
//! returns. Both turn into ordinary ledger events (journalled, applied to
//! positions, queued for the ERP and the change feed).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use retail_shared::auth::{Authorized, Principal, scope};
use retail_shared::correlation::Correlation;
use retail_shared::idempotency::InlineClaim;
use retail_shared::problem::{ApiJson, ApiPath, FieldError, Problem, ProblemBody, ValidJson};
use retail_shared::validate::{MAX_ID_LEN, Validate, Validator};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;
use crate::inventory::event::EventInput;
use crate::routes::keyed;
use crate::storage::idempotency::Keyed;
use crate::storage::ingest_keys::IngestRender;
use crate::storage::ledger::{EventResult, EventStatus, IngestContext};
use crate::storage::micros_to_rfc3339;
use crate::storage::transfers::{Action, NewTransfer, Transfer, TransferOutcome, TransferRefusal};

/// Most lines of a transfer or a return.
pub const MAX_FLOW_LINES: usize = 100;
/// Most units on one line.
pub const MAX_FLOW_UNITS: i64 = 1_000_000;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_transfer))
        .routes(routes!(get_transfer))
        .routes(routes!(approve_transfer))
        .routes(routes!(ship_transfer))
        .routes(routes!(receive_transfer))
        .routes(routes!(cancel_transfer))
        .routes(routes!(post_return))
}

fn context(principal: &Principal, correlation: &Correlation) -> IngestContext {
    IngestContext {
        actor: principal.actor().to_owned(),
        request_id: correlation.request_id.clone(),
        trace_id: correlation.trace_id.clone(),
        span_id: Some(correlation.span_id.clone()),
    }
}

/// A line of a transfer request or a receipt count.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkuQuantity {
    /// SKU.
    pub sku: String,
    /// Units (1-1,000,000; a receipt count may be 0).
    pub quantity: i64,
}

/// Body of `POST /v1/transfers`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Shipping location.
    pub source_location_id: String,
    /// Receiving location (not the source).
    pub destination_location_id: String,
    /// 1-100 lines, each sku once.
    pub lines: Vec<SkuQuantity>,
    /// Business reference (up to 128 characters).
    #[serde(default)]
    pub reference: Option<String>,
}

fn check_lines(v: &mut Validator, lines: &[SkuQuantity], min_quantity: i64) {
    v.count("lines", lines.len(), 1, MAX_FLOW_LINES);
    let mut seen = std::collections::HashSet::new();
    v.at("lines", |v| {
        for (index, line) in lines.iter().enumerate() {
            v.at(index, |v| {
                v.id("sku", &line.sku);
                v.range("quantity", line.quantity, min_quantity, MAX_FLOW_UNITS);
                if !seen.insert(line.sku.as_str()) {
                    v.error("sku", "repeats an earlier line's sku");
                }
            });
        }
    });
}

impl Validate for TransferRequest {
    fn validate(&self, v: &mut Validator) {
        v.id("source_location_id", &self.source_location_id);
        v.id("destination_location_id", &self.destination_location_id);
        if self.source_location_id == self.destination_location_id {
            v.error("destination_location_id", "must differ from the source");
        }
        check_lines(v, &self.lines, 1);
        if let Some(reference) = &self.reference {
            v.text("reference", reference, MAX_ID_LEN);
        }
    }
}

/// Body of `POST /v1/transfers/{id}/receive` (optional).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveRequest {
    /// Units counted per sku; a sku of the transfer left out counts 0.
    /// Without `lines`, everything shipped arrived.
    #[serde(default)]
    pub lines: Option<Vec<SkuQuantity>>,
}

impl Validate for ReceiveRequest {
    fn validate(&self, v: &mut Validator) {
        if let Some(lines) = &self.lines {
            check_lines(v, lines, 0);
        }
    }
}

/// The problem answering a refused transfer request or step.
fn refusal(refusal: &TransferRefusal, transfer_id: &str) -> Problem {
    match refusal {
        TransferRefusal::NotFound => Problem::not_found(format!("no transfer `{transfer_id}`")),
        TransferRefusal::Unknown(unknown) => Problem::validation(
            unknown
                .iter()
                .map(|(pointer, value)| FieldError {
                    pointer: pointer.clone(),
                    detail: format!("unknown `{value}`"),
                })
                .collect(),
        ),
        TransferRefusal::WrongStatus(status) => Problem::conflict(
            "transfer-wrong-status",
            format!(
                "the transfer is {}; this step does not apply",
                status.as_str()
            ),
        )
        .with_extension("status", status.as_str()),
        TransferRefusal::SelfApproval => {
            Problem::forbidden("the requester of a transfer cannot approve it")
        }
        TransferRefusal::NotOnTransfer(sku) => Problem::validation(vec![FieldError {
            pointer: "/lines".into(),
            detail: format!("sku `{sku}` is not on this transfer"),
        }]),
        TransferRefusal::EventNotApplied(reason) => Problem::conflict(
            "event-not-applied",
            format!("a transfer event could not be journalled ({reason}); nothing changed"),
        ),
    }
}

fn check_transfer_id(transfer_id: &str) -> Result<()> {
    uuid::Uuid::parse_str(transfer_id)
        .map(|_| ())
        .map_err(|_| Problem::not_found(format!("no transfer `{transfer_id}`")).into())
}

/// The transfer, after checking the caller may act at `which` end.
async fn bound(
    state: &AppState,
    principal: &Principal,
    transfer_id: &str,
    which: End,
) -> Result<Transfer> {
    check_transfer_id(transfer_id)?;
    let transfer = state
        .store
        .transfer(transfer_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no transfer `{transfer_id}`")))?;
    match which {
        End::Source => principal.require_location(&transfer.source_location_id)?,
        End::Destination => principal.require_location(&transfer.destination_location_id)?,
        End::Either => {
            if !principal.can_access(&transfer.source_location_id)
                && !principal.can_access(&transfer.destination_location_id)
            {
                return Err(Problem::forbidden(
                    "the token is bound to neither end of this transfer",
                )
                .into());
            }
        }
    }
    Ok(transfer)
}

#[derive(Debug, Clone, Copy)]
enum End {
    Source,
    Destination,
    Either,
}

/// Requests a transfer of stock from one location to another. Worth less
/// than `[transfers] auto_approve_below` at cost (default 500.00), it is
/// approved at once; otherwise it waits for a `transfers:approve`
/// principal. The caller must be bound to the source.
#[utoipa::path(post, path = "/v1/transfers", tag = "transfers",
    request_body = TransferRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Requested (or approved)", body = Transfer),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope transfers:write missing, or the source outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, or unknown sku or location", body = ProblemBody, content_type = "application/problem+json")))]
async fn request_transfer(
    State(state): State<AppState>,
    auth: Authorized<scope::TransfersWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ValidJson(request): ValidJson<TransferRequest>,
) -> Result<Response> {
    auth.require_location(&request.source_location_id)?;
    let new = NewTransfer {
        source_location_id: request.source_location_id,
        destination_location_id: request.destination_location_id,
        lines: request
            .lines
            .into_iter()
            .map(|l| (l.sku, l.quantity))
            .collect(),
        reference: request.reference,
        auto_approve_below: state.transfers.auto_approve_below,
    };
    let render =
        |outcome: &TransferOutcome| keyed::json(StatusCode::CREATED, outcome, |r| refusal(r, ""));
    let claim = keyed::claim(claim.as_ref(), &render);
    let written = state
        .store
        .request_transfer_keyed(&new, &context(&auth, &correlation), claim.as_ref())
        .await?;
    let (outcome, mut response) = keyed::respond(written, &render);
    if let Some(Ok(transfer)) = outcome {
        metrics::counter!("transfers_total", "step" => "requested").increment(1);
        if let Ok(location) =
            HeaderValue::from_str(&format!("/v1/transfers/{}", transfer.transfer_id))
        {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// A step of a transfer, its key claimed with it, counted in
/// `transfers_total` under `step` when it ran.
async fn step(
    state: &AppState,
    transfer_id: &str,
    action: Action,
    ctx: &IngestContext,
    claim: Option<&Extension<InlineClaim>>,
    counted: &'static str,
) -> Result<Response> {
    let render = |outcome: &TransferOutcome| {
        keyed::json(StatusCode::OK, outcome, |r| refusal(r, transfer_id))
    };
    let claim = keyed::claim(claim, &render);
    let written = state
        .store
        .transfer_step(transfer_id, action, ctx, claim.as_ref())
        .await?;
    let (outcome, response) = keyed::respond(written, &render);
    if let Some(Ok(transfer)) = outcome {
        metrics::counter!("transfers_total", "step" => counted).increment(1);
        if counted == "received" && !transfer.exceptions.is_empty() {
            metrics::counter!("transfer_exceptions_total")
                .increment(transfer.exceptions.len() as u64);
        }
    }
    Ok(response)
}

/// A transfer with its lines, steps (who, when) and receipt exceptions.
#[utoipa::path(get, path = "/v1/transfers/{transfer_id}", tag = "transfers",
    params(("transfer_id" = String, Path, description = "Transfer id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The transfer", body = Transfer),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing, or neither end in the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such transfer", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_transfer(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    ApiPath(transfer_id): ApiPath<String>,
) -> Result<ApiJson<Transfer>> {
    Ok(ApiJson(
        bound(&state, &auth, &transfer_id, End::Either).await?,
    ))
}

/// Approves a requested transfer (scope `transfers:approve`; never the
/// requester). Approving an approved transfer answers it unchanged.
#[utoipa::path(post, path = "/v1/transfers/{transfer_id}/approve", tag = "transfers",
    params(("transfer_id" = String, Path, description = "Transfer id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Approved", body = Transfer),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope transfers:approve missing, the requester approving, or neither end in the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such transfer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`transfer-wrong-status`", body = ProblemBody, content_type = "application/problem+json")))]
async fn approve_transfer(
    State(state): State<AppState>,
    auth: Authorized<scope::TransfersApprove>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(transfer_id): ApiPath<String>,
) -> Result<Response> {
    bound(&state, &auth, &transfer_id, End::Either).await?;
    let ctx = context(&auth, &correlation);
    step(
        &state,
        &transfer_id,
        Action::Approve,
        &ctx,
        claim.as_ref(),
        "approved",
    )
    .await
}

/// Ships an approved transfer: per line a `transfer_out` at the source
/// (on_hand down; in_transit up at the destination), journalled and
/// posted to the ERP. The caller must be bound to the source.
#[utoipa::path(post, path = "/v1/transfers/{transfer_id}/ship", tag = "transfers",
    params(("transfer_id" = String, Path, description = "Transfer id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Shipped", body = Transfer),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope transfers:write missing, or the source outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such transfer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`transfer-wrong-status` (not approved, or cancelled)", body = ProblemBody, content_type = "application/problem+json")))]
async fn ship_transfer(
    State(state): State<AppState>,
    auth: Authorized<scope::TransfersWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(transfer_id): ApiPath<String>,
) -> Result<Response> {
    bound(&state, &auth, &transfer_id, End::Source).await?;
    let ctx = context(&auth, &correlation);
    step(
        &state,
        &transfer_id,
        Action::Ship,
        &ctx,
        claim.as_ref(),
        "shipped",
    )
    .await
}

/// Receives a shipped transfer at the destination with the units counted
/// (body optional: without `lines` everything shipped arrived). Per line a
/// `transfer_in` (in_transit down, on_hand up); a short or over receipt
/// opens an exception on the transfer. The caller must be bound to the
/// destination.
#[utoipa::path(post, path = "/v1/transfers/{transfer_id}/receive", tag = "transfers",
    params(("transfer_id" = String, Path, description = "Transfer id (UUID)")),
    request_body(content = Option<ReceiveRequest>, description = "Counted units (optional)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Received", body = Transfer),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope transfers:write missing, or the destination outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such transfer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`transfer-wrong-status` (not shipped)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid counts, or a sku not on the transfer", body = ProblemBody, content_type = "application/problem+json")))]
async fn receive_transfer(
    State(state): State<AppState>,
    auth: Authorized<scope::TransfersWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(transfer_id): ApiPath<String>,
    body: Bytes,
) -> Result<Response> {
    let counted = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let request: ReceiveRequest = retail_shared::problem::parse_json(&body)?;
        let request = request.validated()?;
        request.lines.map(|lines| {
            lines
                .into_iter()
                .map(|l| (l.sku, l.quantity))
                .collect::<Vec<_>>()
        })
    };
    bound(&state, &auth, &transfer_id, End::Destination).await?;
    let ctx = context(&auth, &correlation);
    let action = Action::Receive(counted);
    step(
        &state,
        &transfer_id,
        action,
        &ctx,
        claim.as_ref(),
        "received",
    )
    .await
}

/// Cancels a transfer that has not shipped. The caller must be bound to
/// the source.
#[utoipa::path(post, path = "/v1/transfers/{transfer_id}/cancel", tag = "transfers",
    params(("transfer_id" = String, Path, description = "Transfer id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled", body = Transfer),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope transfers:write missing, or the source outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such transfer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`transfer-wrong-status` (already shipped)", body = ProblemBody, content_type = "application/problem+json")))]
async fn cancel_transfer(
    State(state): State<AppState>,
    auth: Authorized<scope::TransfersWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(transfer_id): ApiPath<String>,
) -> Result<Response> {
    bound(&state, &auth, &transfer_id, End::Source).await?;
    let ctx = context(&auth, &correlation);
    step(
        &state,
        &transfer_id,
        Action::Cancel,
        &ctx,
        claim.as_ref(),
        "cancelled",
    )
    .await
}

/// What happens to a returned unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReturnDisposition {
    /// Back on the shelf: on_hand up.
    Restock,
    /// Kept but unsellable: on_hand and unsellable up.
    Damaged,
    /// Received, then sent back to the vendor: a damaged return and a
    /// write-off, so the position ends where it was.
    ReturnToVendor,
}

/// A returned line.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnLine {
    /// SKU.
    pub sku: String,
    /// Units (1-1,000,000).
    pub quantity: i64,
    /// Disposition (default `restock`).
    #[serde(default = "restock")]
    pub disposition: ReturnDisposition,
}

fn restock() -> ReturnDisposition {
    ReturnDisposition::Restock
}

/// Where the customer returned the goods.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReturnChannel {
    /// At a store counter.
    Store,
    /// Shipped back by an online customer.
    Online,
}

/// Body of `POST /v1/returns`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// The return's id in the channel (RMA number): makes the request
    /// idempotent (its events are derived from it).
    pub return_id: String,
    /// Where the goods were taken back.
    pub location_id: String,
    /// Store counter or online.
    pub channel: ReturnChannel,
    /// The original order.
    #[serde(default)]
    pub order_ref: Option<String>,
    /// When (RFC 3339; default now).
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// 1-100 lines.
    pub lines: Vec<ReturnLine>,
}

impl Validate for ReturnRequest {
    fn validate(&self, v: &mut Validator) {
        v.id("return_id", &self.return_id);
        v.text("return_id", &self.return_id, 80);
        v.id("location_id", &self.location_id);
        if let Some(order_ref) = &self.order_ref {
            v.text("order_ref", order_ref, MAX_ID_LEN);
        }
        v.count("lines", self.lines.len(), 1, MAX_FLOW_LINES);
        v.at("lines", |v| {
            for (index, line) in self.lines.iter().enumerate() {
                v.at(index, |v| {
                    v.id("sku", &line.sku);
                    v.range("quantity", line.quantity, 1, MAX_FLOW_UNITS);
                });
            }
        });
    }
}

/// Answer of `POST /v1/returns`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReturnResponse {
    /// The return's id.
    pub return_id: String,
    /// `accepted` (new events applied or parked) or `duplicate` (this
    /// return was recorded before: nothing changed).
    pub status: String,
    /// One result per event the return produced.
    pub results: Vec<EventResult>,
}

/// Records a customer return (store counter or online) with a disposition
/// per line: `restock` (on_hand up), `damaged` (on_hand and unsellable
/// up), `return_to_vendor` (a damaged return and a write-off: the unit
/// goes back to the vendor). Each becomes journalled events posted to the
/// ERP. Idempotent by (`location_id`, `return_id`): return numbers are a store's own.
#[utoipa::path(post, path = "/v1/returns", tag = "returns",
    request_body = ReturnRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (or recorded before)", body = ReturnResponse),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope returns:write missing, or the location outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request (or an invalid occurred_at)", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_return(
    State(state): State<AppState>,
    auth: Authorized<scope::ReturnsWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ValidJson(request): ValidJson<ReturnRequest>,
) -> Result<Response> {
    auth.require_location(&request.location_id)?;
    let occurred_at = request
        .occurred_at
        .clone()
        .unwrap_or_else(|| micros_to_rfc3339(state.store.now()));
    let channel = match request.channel {
        ReturnChannel::Store => "store",
        ReturnChannel::Online => "online",
    };
    let mut events = Vec::new();
    for (index, line) in request.lines.iter().enumerate() {
        let base = EventInput {
            // The location is part of the id: return numbers are the
            // store's own, and two stores issuing R1000 are two returns.
            event_id: format!(
                "return:{}:{}:{index}",
                request.location_id, request.return_id
            ),
            r#type: "return".into(),
            location_id: request.location_id.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
            occurred_at: occurred_at.clone(),
            source: format!("returns:{channel}"),
            reference: request.order_ref.clone(),
            reason: Some(format!("return {}", request.return_id)),
            counterparty_location_id: None,
            disposition: Some(
                if line.disposition == ReturnDisposition::Restock {
                    "restock"
                } else {
                    "damaged"
                }
                .into(),
            ),
        };
        let to_vendor =
            (line.disposition == ReturnDisposition::ReturnToVendor).then(|| EventInput {
                event_id: format!(
                    "return:{}:{}:{index}:rtv",
                    request.location_id, request.return_id
                ),
                r#type: "write_off".into(),
                disposition: None,
                // A reason code the ERP adapters map (Tryton: a supplier
                // return shipment).
                reason: Some("return_to_vendor".into()),
                ..base.clone()
            });
        events.push(base);
        events.extend(to_vendor);
    }
    // An invalid event (a bad occurred_at) fails the whole return.
    let now = state.store.now();
    for event in &events {
        if let Err(reason) = event.validate(now) {
            let pointer = if reason.contains("occurred_at") {
                "/occurred_at"
            } else {
                "/lines"
            }
            .to_owned();
            return Err(Problem::validation(vec![FieldError {
                pointer,
                detail: reason,
            }])
            .into());
        }
    }
    let return_id = request.return_id;
    let render: IngestRender = {
        let return_id = return_id.clone();
        Arc::new(move |results: &[EventResult]| {
            let answer = return_response(&return_id, results);
            keyed::json::<_, Problem>(StatusCode::OK, &Ok(answer), Clone::clone)
        })
    };
    let key = claim
        .as_ref()
        .map(|Extension(claim)| (claim, render.clone()));
    let ctx = context(&auth, &correlation);
    let ((results, _), stored) = match state.store.ingest_keyed(&events, &ctx, key).await? {
        Keyed::Decided(done, stored) => (done, stored),
        Keyed::Key(decision) => return Ok(keyed::key_answer(decision)),
    };
    let answer = return_response(&return_id, &results);
    metrics::counter!("returns_total", "result" => if answer.status == "duplicate" { "duplicate" } else { "accepted" })
        .increment(1);
    Ok(match stored {
        Some(stored) => keyed::kept(stored),
        None => render(&results).into_response(),
    })
}

/// The answer to a return's results: `duplicate` when every event was seen
/// before.
fn return_response(return_id: &str, results: &[EventResult]) -> ReturnResponse {
    let duplicate = results.iter().all(|r| r.status == EventStatus::Duplicate);
    ReturnResponse {
        return_id: return_id.to_owned(),
        status: if duplicate { "duplicate" } else { "accepted" }.into(),
        results: results.to_vec(),
    }
}
