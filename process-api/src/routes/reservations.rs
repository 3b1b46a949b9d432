//! Reservations over HTTP (the contract experience-api exposes to channels,
//! DESIGN.md §6). A reservation belongs to the client that created it (the
//! end user behind the service token): another client gets 404 for it.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use retail_shared::auth::{Authorized, Principal, scope};
use retail_shared::correlation::Correlation;
use retail_shared::idempotency::{InlineClaim, StoredResponse};
use retail_shared::model::ReservationRequest;
use retail_shared::problem::{ApiJson, ApiPath, FieldError, Problem, ProblemBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;
use crate::routes::keyed;
use crate::storage::ledger::IngestContext;
use crate::storage::reservations::{
    CloseOutcome, CloseRefusal, Keyed, NewReservation, Outcome, Render, Reservation,
    ReservationStatus, ReserveRefusal,
};

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_reservation))
        .routes(routes!(get_reservation))
        .routes(routes!(release_reservation))
        .routes(routes!(fulfill_reservation))
}

/// The 409 answered when lines do not fit (pinned slug).
pub fn insufficient_stock(short: &[crate::storage::reservations::ShortLine]) -> Problem {
    let detail = short
        .iter()
        .map(|s| {
            format!(
                "line {} ({} at {}): requested {}, available {}",
                s.line, s.sku, s.location_id, s.requested, s.available
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let detail = if short.is_empty() {
        "nothing was reserved: no node offering this has every line".to_owned()
    } else {
        format!("nothing was reserved: {detail}")
    };
    Problem::new(
        StatusCode::CONFLICT,
        "insufficient-stock",
        "Insufficient stock",
    )
    .with_detail(detail)
    .with_extension("short_lines", short)
}

fn not_active(status: ReservationStatus) -> Problem {
    let status = status.as_str();
    Problem::conflict(
        "reservation-not-active",
        format!("the reservation is {status}; only an active reservation can change"),
    )
    .with_extension("status", status)
}

fn not_found(reservation_id: &str) -> Problem {
    Problem::not_found(format!("no reservation `{reservation_id}`"))
}

/// The caller's reservation, or 404 (absent or another client's) / 403
/// (a line at a location outside the token's binding).
async fn owned(
    state: &AppState,
    principal: &Principal,
    reservation_id: &str,
) -> Result<Reservation> {
    let reservation = state
        .store
        .reservation(reservation_id)
        .await?
        .filter(|r| r.client_id == principal.actor())
        .ok_or_else(|| not_found(reservation_id))?;
    for line in &reservation.lines {
        principal.require_location(&line.location_id)?;
    }
    Ok(reservation)
}

/// Reservation ids are UUIDs; anything else names no reservation.
fn check_id(reservation_id: &str) -> Result<()> {
    uuid::Uuid::parse_str(reservation_id)
        .map(|_| ())
        .map_err(|_| not_found(reservation_id).into())
}

/// Holds units for a cart or order: every line or none (pinned). Never
/// oversells, whatever the concurrency or number of replicas: the lines'
/// positions are locked while availability is checked and the holds are
/// written. The hold stops counting at `expires_at` exactly. Caps
/// (configuration `[reservations]`): lines per reservation, units per line
/// and per reservation, TTL, and active reservations per client.
/// `Idempotency-Key` is honoured: a retry with the same key and body
/// answers the first result without reserving twice.
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations",
    request_body = ReservationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe (1-255 characters)")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Reserved", body = Reservation,
            headers(("Location" = String, description = "The reservation's URL"))),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope reservations:write missing, or a location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient-stock` (naming the short lines; nothing reserved) or `active-reservation-limit`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, or unknown sku or location", body = ProblemBody, content_type = "application/problem+json")))]
async fn create_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiJson(request): ApiJson<ReservationRequest>,
) -> Result<Response> {
    request.check(&state.reservations)?;
    for line in &request.lines {
        auth.require_location(&line.location_id)?;
    }
    let new = NewReservation {
        client_id: auth.actor().to_owned(),
        channel: request.channel.clone(),
        order_ref: request.order_ref.clone(),
        lines: request.lines.clone(),
        ttl_seconds: request.ttl(&state.reservations),
        max_active_per_client: state.reservations.max_active_per_client,
        request_id: correlation.request_id.clone(),
    };
    // The key (on the paths the store claims inline): claimed, decided and
    // answered in one transaction.
    let answer: Render = std::sync::Arc::new(|outcome: &Outcome| Some(render(outcome)));
    let claim = claim
        .as_ref()
        .map(|Extension(claim)| (claim.take(), answer));
    let (outcome, stored) = match state.store.reserve_keyed(&new, claim).await? {
        Keyed::Decided(outcome, stored) => (outcome, stored),
        Keyed::Key(decision) => return Ok(keyed::key_answer(decision)),
    };
    let result = match &outcome {
        Ok(_) => "reserved",
        Err(ReserveRefusal::InsufficientStock(_)) => "insufficient_stock",
        Err(ReserveRefusal::Unknown(_)) => "unknown",
        Err(ReserveRefusal::TooManyActive(_)) => "limit",
    };
    metrics::counter!("reservations_total", "result" => result).increment(1);
    let mut response = match stored {
        Some(stored) => keyed::kept(stored),
        None => render(&outcome).into_response(),
    };
    if let Ok(reservation) = &outcome
        && let Ok(location) =
            HeaderValue::from_str(&format!("/v1/reservations/{}", reservation.reservation_id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The answer to a reservation's outcome, as sent and as stored with its
/// `Idempotency-Key` (a replay sends these bytes again): 201 with the
/// reservation, or the refusal's problem.
fn render(outcome: &Outcome) -> StoredResponse {
    keyed::json(StatusCode::CREATED, outcome, refused)
}

/// The problem answering a refusal.
fn refused(refusal: &ReserveRefusal) -> Problem {
    match refusal {
        ReserveRefusal::InsufficientStock(short) => insufficient_stock(short),
        ReserveRefusal::Unknown(unknown) => Problem::validation(
            unknown
                .iter()
                .map(|(line, field, value)| FieldError {
                    pointer: format!("/lines/{line}/{field}"),
                    detail: format!("unknown {field} `{value}`"),
                })
                .collect(),
        ),
        ReserveRefusal::TooManyActive(cap) => Problem::conflict(
            "active-reservation-limit",
            format!(
                "this client already holds {cap} active reservations; release or fulfil some first"
            ),
        ),
    }
}

/// A reservation of the calling client, with its status now (an active
/// reservation past `expires_at` reads `expired`).
#[utoipa::path(get, path = "/v1/reservations/{reservation_id}", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The reservation", body = Reservation),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope reservations:write missing, or a line outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such reservation for this client", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    ApiPath(reservation_id): ApiPath<String>,
) -> Result<ApiJson<Reservation>> {
    check_id(&reservation_id)?;
    Ok(ApiJson(owned(&state, &auth, &reservation_id).await?))
}

/// Releases an active reservation: its units count as available again at
/// once. Releasing a released reservation answers it unchanged.
#[utoipa::path(post, path = "/v1/reservations/{reservation_id}/release", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released (`status: released`)", body = Reservation),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope reservations:write missing, or a line outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such reservation for this client", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`reservation-not-active`: fulfilled or expired", body = ProblemBody, content_type = "application/problem+json")))]
async fn release_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(reservation_id): ApiPath<String>,
) -> Result<Response> {
    check_id(&reservation_id)?;
    owned(&state, &auth, &reservation_id).await?;
    let target = ReservationStatus::Released;
    close(&state, &auth, &reservation_id, target, None, claim.as_ref()).await
}

/// Fulfils an active reservation before it expires: reserved and on_hand
/// both drop, one `sale` per line is journalled (event id
/// `reservation:{id}:{line}`) and queued for the ERP. Fulfilling a
/// fulfilled reservation answers it unchanged and sells nothing more.
#[utoipa::path(post, path = "/v1/reservations/{reservation_id}/fulfill", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Fulfilled (`status: fulfilled`)", body = Reservation),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope reservations:write missing, or a line outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such reservation for this client", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`reservation-not-active`: released or expired", body = ProblemBody, content_type = "application/problem+json")))]
async fn fulfill_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(reservation_id): ApiPath<String>,
) -> Result<Response> {
    check_id(&reservation_id)?;
    owned(&state, &auth, &reservation_id).await?;
    let ctx = IngestContext {
        actor: auth.actor().to_owned(),
        request_id: correlation.request_id.clone(),
        trace_id: correlation.trace_id.clone(),
        span_id: Some(correlation.span_id.clone()),
    };
    let target = ReservationStatus::Fulfilled;
    close(
        &state,
        &auth,
        &reservation_id,
        target,
        Some(&ctx),
        claim.as_ref(),
    )
    .await
}

/// Releases or fulfils a reservation, its key claimed with the change,
/// counted in `reservation_closures_total`.
async fn close(
    state: &AppState,
    auth: &Principal,
    reservation_id: &str,
    target: ReservationStatus,
    ctx: Option<&IngestContext>,
    claim: Option<&Extension<InlineClaim>>,
) -> Result<Response> {
    let render = |outcome: &CloseOutcome| {
        keyed::json(StatusCode::OK, outcome, |r| {
            close_refused(r, reservation_id)
        })
    };
    let claim = keyed::claim(claim, &render);
    let written = state
        .store
        .end_reservation(reservation_id, auth.actor(), target, ctx, claim.as_ref())
        .await?;
    let (outcome, response) = keyed::respond(written, &render);
    if let Some(outcome) = outcome {
        let action = if target == ReservationStatus::Fulfilled {
            "fulfilled"
        } else {
            "released"
        };
        let result = match &outcome {
            Ok(_) => action,
            Err(CloseRefusal::NotFound) => "not_found",
            Err(CloseRefusal::NotActive(_)) => "not_active",
            Err(CloseRefusal::SaleNotApplied(reason)) => {
                tracing::error!(%reservation_id, %reason, "fulfilment sale not applied");
                "sale_not_applied"
            }
        };
        metrics::counter!("reservation_closures_total", "action" => action, "result" => result)
            .increment(1);
    }
    Ok(response)
}

/// The problem answering a refused release or fulfilment.
fn close_refused(refusal: &CloseRefusal, reservation_id: &str) -> Problem {
    match refusal {
        CloseRefusal::NotFound => not_found(reservation_id),
        CloseRefusal::NotActive(status) => not_active(*status),
        CloseRefusal::SaleNotApplied(reason) => Problem::conflict(
            "sale-not-applied",
            format!("the fulfilment sale could not be journalled ({reason}); nothing changed"),
        ),
    }
}
