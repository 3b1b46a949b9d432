//! Reservations for carts and click-and-collect (pinned, DESIGN.md §6).
//! process-api owns the state and the oversell guard; this layer checks
//! the request and the token's location binding before anything travels,
//! and makes the inner call safe to retry with an idempotency key (the
//! client's own, or one minted for this request).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use retail_shared::auth::{Authorized, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::model::{Reservation, ReservationRequest};
use retail_shared::problem::{ApiJson, ApiPath, Problem, ProblemBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_reservation))
        .routes(routes!(get_reservation))
        .routes(routes!(release_reservation))
        .routes(routes!(fulfill_reservation))
        .routes(routes!(promise))
}

/// The key for the call to process-api: the client's (process-api scopes
/// it to the end user, as this layer does), else a fresh one, so retries
/// of this one call never reserve twice.
fn inner_key(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Reservation ids are UUIDs; anything else names no reservation (and
/// never reaches the inner URL).
fn checked_id(reservation_id: &str) -> Result<String> {
    uuid::Uuid::parse_str(reservation_id)
        .map(|id| id.to_string())
        .map_err(|_| Problem::not_found(format!("no reservation `{reservation_id}`")).into())
}

/// Holds stock for a cart or an order: every line or none (pinned).
/// Never oversells, whatever the concurrency or number of replicas. Not
/// enough stock → 409 `insufficient-stock` naming the short lines
/// (`short_lines`). The hold stops counting at `expires_at` exactly.
/// Limits (OWASP API6, configuration `[reservations]`): at most 100 lines,
/// 100 units per line, 1,000 units per reservation, a TTL of 1 s to 24 h
/// (default 15 min), and 50,000 active reservations per client.
/// `Idempotency-Key` is honoured (same key and body: the first answer
/// again, one reservation).
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
        (status = 409, description = "`insufficient-stock` (nothing reserved), `active-reservation-limit`, or the same Idempotency-Key still in flight", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, unknown sku or location, or an Idempotency-Key reused with another body", body = ProblemBody, content_type = "application/problem+json")))]
async fn create_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    correlation: Correlation,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ReservationRequest>,
) -> Result<impl IntoResponse> {
    request.check(&state.reservations)?;
    for line in &request.lines {
        auth.require_location(&line.location_id)?;
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let reservation = state
        .process
        .reserve(&request, &inner_key(&headers), ctx)
        .await?;
    state
        .model
        .forget(reservation.lines.iter().map(|l| l.sku.as_str()));
    let location = format!("/v1/reservations/{}", reservation.reservation_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        ApiJson(reservation),
    ))
}

/// One of the caller's reservations, with its status now.
#[utoipa::path(get, path = "/v1/reservations/{reservation_id}", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The reservation", body = Reservation),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope reservations:write missing, or a line outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such reservation for this client", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    correlation: Correlation,
    ApiPath(reservation_id): ApiPath<String>,
) -> Result<ApiJson<Reservation>> {
    let id = checked_id(&reservation_id)?;
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    Ok(ApiJson(state.process.reservation(&id, ctx).await?))
}

/// Releases a reservation (pinned): its units are available again at once.
#[utoipa::path(post, path = "/v1/reservations/{reservation_id}/release", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`status: released`", body = Reservation),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope reservations:write missing, or a line outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such reservation for this client", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`reservation-not-active`: fulfilled or expired", body = ProblemBody, content_type = "application/problem+json")))]
async fn release_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    correlation: Correlation,
    headers: HeaderMap,
    ApiPath(reservation_id): ApiPath<String>,
) -> Result<ApiJson<Reservation>> {
    end(
        &state,
        &auth,
        &correlation,
        &headers,
        &reservation_id,
        "release",
    )
    .await
}

/// Fulfils a reservation before it expires (pinned): reserved and on_hand
/// both drop, a sale is journalled per line and posted to the ERP.
#[utoipa::path(post, path = "/v1/reservations/{reservation_id}/fulfill", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`status: fulfilled`", body = Reservation),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope reservations:write missing, or a line outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such reservation for this client", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`reservation-not-active`: released or expired", body = ProblemBody, content_type = "application/problem+json")))]
async fn fulfill_reservation(
    State(state): State<AppState>,
    auth: Authorized<scope::ReservationsWrite>,
    correlation: Correlation,
    headers: HeaderMap,
    ApiPath(reservation_id): ApiPath<String>,
) -> Result<ApiJson<Reservation>> {
    end(
        &state,
        &auth,
        &correlation,
        &headers,
        &reservation_id,
        "fulfill",
    )
    .await
}

async fn end(
    state: &AppState,
    auth: &retail_shared::auth::Principal,
    correlation: &Correlation,
    headers: &HeaderMap,
    reservation_id: &str,
    action: &str,
) -> Result<ApiJson<Reservation>> {
    let id = checked_id(reservation_id)?;
    let ctx = CallContext {
        principal: Some(auth),
        correlation,
    };
    let reservation = state
        .process
        .end_reservation(&id, action, &inner_key(headers), ctx)
        .await?;
    state
        .model
        .forget(reservation.lines.iter().map(|l| l.sku.as_str()));
    Ok(ApiJson(reservation))
}

/// Order promising (backed by process-api): ranked ways to serve the
/// order by `ship` (warehouses and online nodes), `click_and_collect` (a
/// store offering it; never split) or `ship_from_store` (stores offering
/// it). A single node with every line ranks before any split, nearest to
/// the customer first; a split is offered only when no single node can
/// serve. Partners see only the nodes of their binding. `reserve: true`
/// (scope `reservations:write`) reserves the best option that still fits,
/// atomically; 409 `insufficient-stock` when none does, 422 when the
/// reservation would break the caps of `POST /v1/reservations`.
#[utoipa::path(post, path = "/v1/promise", tag = "promising",
    request_body = retail_shared::promise::PromiseRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry with reserve safe (1-255 characters)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ranked options (and the reservation when asked)", body = retail_shared::promise::PromiseResponse),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope availability:read missing, or reservations:write with reserve", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient-stock`: reserve asked and no option fits", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, unknown sku, or a reservation over the caps of POST /v1/reservations", body = ProblemBody, content_type = "application/problem+json")))]
async fn promise(
    State(state): State<AppState>,
    auth: Authorized<scope::AvailabilityRead>,
    correlation: Correlation,
    headers: HeaderMap,
    ApiJson(request): ApiJson<retail_shared::promise::PromiseRequest>,
) -> Result<ApiJson<retail_shared::promise::PromiseResponse>> {
    request.check(&state.reservations)?;
    if request.reserve {
        auth.require_scope("reservations:write")?;
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    Ok(ApiJson(
        state
            .process
            .promise(&request, &inner_key(&headers), ctx)
            .await?,
    ))
}
