//! Order promising (`POST /v1/promise`): ranked ways to serve an order
//! from the nodes that offer the fulfilment method, with an optional
//! atomic reservation of the best one that still fits. The ranking rules
//! are in [`retail_shared::promise`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use retail_shared::auth::{Authorized, scope};
use retail_shared::correlation::Correlation;
use retail_shared::idempotency::{InlineClaim, StoredResponse};
use retail_shared::model::ReservationRequest;
use retail_shared::problem::{ApiJson, FieldError, Problem, ProblemBody};
use retail_shared::promise::{
    Node, PromiseOption, PromiseRequest, PromiseResponse, distance_km, rank,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;
use crate::routes::keyed;
use crate::routes::reservations::insufficient_stock;
use crate::storage::reservations::{
    Keyed, NewReservation, Outcome, Render, Reservation, ReservationLine, ReserveRefusal,
};

/// Default number of options.
const DEFAULT_OPTIONS: usize = 5;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(promise))
}

/// Ranks the ways to serve an order: nodes offering the method (`ship`:
/// warehouses and online nodes; `click_and_collect` and `ship_from_store`:
/// stores with that capability) that are in the token's binding, a single
/// node with every line before any split, nearest first; a split (never for
/// click-and-collect) only when no single node can serve. With `reserve:
/// true` (scope `reservations:write`), the best option that still fits is
/// reserved in the same request; 409 `insufficient-stock` when none does.
/// The reservation is held to the caps of `POST /v1/reservations` (lines,
/// units per line and per reservation): 422, nothing held, when the option
/// tried breaks one.
#[utoipa::path(post, path = "/v1/promise", tag = "promising",
    request_body = PromiseRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ranked options (and the reservation when asked)", body = PromiseResponse),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing, or reservations:write with reserve", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient-stock`: reserve asked and no option fits", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, unknown sku, or a reservation over the caps of POST /v1/reservations", body = ProblemBody, content_type = "application/problem+json")))]
async fn promise(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiJson(request): ApiJson<PromiseRequest>,
) -> Result<Response> {
    request.check(&state.reservations)?;
    if request.reserve {
        auth.require_scope("reservations:write")?;
    }
    let skus: Vec<String> = request.lines.iter().map(|l| l.sku.clone()).collect();
    let known = state.store.known_skus(&skus).await?;
    let unknown: Vec<FieldError> = request
        .lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !known.contains(&l.sku))
        .map(|(index, l)| FieldError {
            pointer: format!("/lines/{index}/sku"),
            detail: format!("unknown sku `{}`", l.sku),
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Problem::validation(unknown).into());
    }
    let customer = (request.customer.latitude, request.customer.longitude);
    let nodes: Vec<Node> = state
        .store
        .all_locations()
        .await?
        .into_iter()
        .filter(|l| auth.can_access(&l.location_id))
        .filter(|l| {
            let capabilities: Vec<&str> = l.capabilities.iter().map(|c| c.as_str()).collect();
            request.method.admits(l.r#type.as_str(), &capabilities)
        })
        .map(|l| Node {
            distance_km: l
                .latitude
                .zip(l.longitude)
                .map(|at| (distance_km(customer, at) * 10.0).round() / 10.0),
            location_id: l.location_id,
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.location_id.clone()).collect();
    let available: HashMap<(String, String), i64> = state
        .store
        .positions_of(&skus, Some(&ids))
        .await?
        .into_iter()
        .map(|p| ((p.location_id, p.sku), p.figures.available))
        .collect();
    let lines: Vec<(String, i64)> = request
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.quantity))
        .collect();
    let options = rank(
        &lines,
        &nodes,
        &available,
        request.method.may_split(),
        request.max_options.unwrap_or(DEFAULT_OPTIONS),
    );
    metrics::counter!("promises_total", "method" => format!("{:?}", request.method), "served" => if options.is_empty() { "no" } else { "yes" }).increment(1);
    if !request.reserve {
        // Nothing changes: the claim is left to the middleware.
        return Ok(ApiJson(PromiseResponse {
            options,
            reservation: None,
        })
        .into_response());
    }
    // Reserve the best option that still fits (stock may have moved since
    // the read): each attempt is all-or-nothing.
    let mut last_short = Vec::new();
    for option in &options {
        let reservation = ReservationRequest {
            channel: request.channel.clone().unwrap_or_default(),
            order_ref: request.order_ref.clone().unwrap_or_default(),
            lines: option
                .nodes
                .iter()
                .flat_map(|node| {
                    node.lines.iter().map(|a| ReservationLine {
                        sku: a.sku.clone(),
                        location_id: node.location_id.clone(),
                        quantity: a.quantity,
                    })
                })
                .collect(),
            ttl_seconds: request.ttl_seconds,
        };
        // The caps of `POST /v1/reservations` hold for the reservation
        // actually built: the promise's own check knows nothing of units per
        // order, and a split holds more lines than the order has.
        reservation.check(&state.reservations)?;
        let new = NewReservation {
            client_id: auth.actor().to_owned(),
            ttl_seconds: reservation.ttl(&state.reservations),
            channel: reservation.channel,
            order_ref: reservation.order_ref,
            lines: reservation.lines,
            max_active_per_client: state.reservations.max_active_per_client,
            request_id: correlation.request_id.clone(),
        };
        // The key is claimed with the reservation that answers the
        // promise; an option that no longer fits leaves it free for the
        // next.
        let promised = options.clone();
        let answer: Render = Arc::new(move |outcome: &Outcome| match outcome {
            Ok(reservation) => Some(promise_answer(&promised, reservation)),
            Err(ReserveRefusal::TooManyActive(cap)) => {
                let problem = active_limit(*cap);
                Some(keyed::json::<(), _>(
                    problem.status(),
                    &Err(problem),
                    Clone::clone,
                ))
            }
            Err(ReserveRefusal::InsufficientStock(_) | ReserveRefusal::Unknown(_)) => None,
        });
        let key = claim.as_ref().map(|Extension(c)| (c.take(), answer));
        let (outcome, stored) = match state.store.reserve_keyed(&new, key).await? {
            Keyed::Decided(outcome, stored) => (outcome, stored),
            Keyed::Key(decision) => return Ok(keyed::key_answer(decision)),
        };
        match outcome {
            Ok(reservation) => {
                metrics::counter!("reservations_total", "result" => "reserved").increment(1);
                return Ok(match stored {
                    Some(stored) => keyed::kept(stored),
                    None => promise_answer(&options, &reservation).into_response(),
                });
            }
            Err(ReserveRefusal::InsufficientStock(short)) => last_short = short,
            Err(ReserveRefusal::TooManyActive(cap)) => {
                return Ok(match stored {
                    Some(stored) => keyed::kept(stored),
                    None => active_limit(cap).into_response(),
                });
            }
            Err(ReserveRefusal::Unknown(_)) => {}
        }
    }
    metrics::counter!("reservations_total", "result" => "insufficient_stock").increment(1);
    Err(insufficient_stock(&last_short).into())
}

/// The answer to a promise whose reservation was made, as sent and as kept
/// with its `Idempotency-Key`.
fn promise_answer(options: &[PromiseOption], reservation: &Reservation) -> StoredResponse {
    let response = PromiseResponse {
        options: options.to_vec(),
        reservation: Some(reservation.clone()),
    };
    keyed::json::<_, Problem>(StatusCode::OK, &Ok(response), Clone::clone)
}

/// The client holds as many active reservations as it may.
fn active_limit(cap: i64) -> Problem {
    Problem::conflict(
        "active-reservation-limit",
        format!("this client already holds {cap} active reservations"),
    )
}
