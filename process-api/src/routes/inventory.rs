//! The inventory ledger over HTTP: event ingest, positions, journal,
//! safety stock, parked events and rebuild.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use retail_shared::auth::{Authorized, Principal, scope};
use retail_shared::correlation::Correlation;
use retail_shared::idempotency::InlineClaim;
use retail_shared::problem::{ApiJson, ApiQuery, FieldError, Problem, ProblemBody, ValidJson};
use retail_shared::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::PageQuery;
use crate::AppState;
use crate::error::Result;
use crate::inventory::event::{EventBatch, MAX_EVENTS_PER_REQUEST, parse_time};
use crate::routes::keyed;
use crate::storage::idempotency::Keyed;
use crate::storage::ingest_keys::IngestRender;
use crate::storage::ledger::{
    EventResult, EventStatus, IngestContext, JournalEntry, JournalQuery, ParkedEvent,
    PositionRecord, RebuildReport,
};

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_events))
        .routes(routes!(get_positions))
        .routes(routes!(get_location_positions))
        .routes(routes!(post_availability))
        .routes(routes!(get_journal))
        .routes(routes!(put_safety_stock))
        .routes(routes!(get_parked))
        .routes(routes!(replay_parked))
        .routes(routes!(rebuild))
}

/// Totals of a batch.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct IngestSummary {
    /// Journalled.
    pub applied: usize,
    /// Seen before.
    pub duplicate: usize,
    /// Waiting for master data.
    pub parked: usize,
    /// Invalid.
    pub rejected: usize,
}

/// Answer of `POST /v1/inventory/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResponse {
    /// One result per event, in request order.
    pub results: Vec<EventResult>,
    /// Totals.
    pub summary: IngestSummary,
}

impl Validate for EventBatch {
    fn validate(&self, v: &mut Validator) {
        v.count("events", self.events.len(), 1, MAX_EVENTS_PER_REQUEST);
    }
}

fn ingest_context(principal: &Principal, correlation: &Correlation) -> IngestContext {
    IngestContext {
        actor: principal.actor().to_owned(),
        request_id: correlation.request_id.clone(),
        trace_id: correlation.trace_id.clone(),
        span_id: Some(correlation.span_id.clone()),
    }
}

/// Ingests 1–1000 inventory events in one transaction. Each event gets its
/// own result: `applied`, `duplicate` (its `event_id` was seen before, ever:
/// nothing changes), `parked` (unknown sku or location: kept and applied
/// automatically when the master data arrives) or `rejected` (invalid, with
/// the reason). A malformed body or a location outside the token's binding
/// fails the whole request and changes nothing.
#[utoipa::path(post, path = "/v1/inventory/events", tag = "inventory",
    request_body = EventBatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per-event results", body = IngestResponse),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:write missing, or a location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Wrong field types, unknown fields, or not 1-1000 events", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_events(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ValidJson(batch): ValidJson<EventBatch>,
) -> Result<Response> {
    for event in &batch.events {
        auth.require_location(&event.location_id)?;
        if let Some(other) = &event.counterparty_location_id {
            auth.require_location(other)?;
        }
    }
    let ctx = ingest_context(&auth, &correlation);
    let render: IngestRender = Arc::new(|results: &[EventResult]| {
        keyed::json::<_, Problem>(StatusCode::OK, &Ok(ingest_response(results)), Clone::clone)
    });
    let key = claim
        .as_ref()
        .map(|Extension(claim)| (claim, render.clone()));
    let ((results, summary), stored) =
        match state.store.ingest_keyed(&batch.events, &ctx, key).await? {
            Keyed::Decided(done, stored) => (done, stored),
            Keyed::Key(decision) => return Ok(keyed::key_answer(decision)),
        };
    // Counted per (type, source, result) first: one metric update per
    // distinct label set, not per event.
    let mut counts: std::collections::HashMap<(&'static str, &'static str, &'static str), u64> =
        std::collections::HashMap::new();
    for (result, input) in results.iter().zip(&batch.events) {
        let kind = crate::inventory::event::EventType::parse(&input.r#type)
            .map_or("invalid", |t| t.as_str());
        *counts
            .entry((
                kind,
                source_label(&input.source),
                status_label(result.status),
            ))
            .or_default() += 1;
    }
    for ((kind, source, status), n) in counts {
        metrics::counter!(
            "inventory_events_total",
            "type" => kind,
            "source" => source,
            "result" => status
        )
        .increment(n);
    }
    state.feed.record_ingest(summary.applied as u64);
    Ok(match stored {
        Some(stored) => keyed::kept(stored),
        None => render(&results).into_response(),
    })
}

/// The `result` label of `inventory_events_total`.
fn status_label(status: EventStatus) -> &'static str {
    match status {
        EventStatus::Applied => "applied",
        EventStatus::Duplicate => "duplicate",
        EventStatus::Parked => "parked",
        EventStatus::Rejected => "rejected",
    }
}

/// The answer to an ingest request's results.
fn ingest_response(results: &[EventResult]) -> IngestResponse {
    let mut summary = IngestSummary::default();
    for result in results {
        match result.status {
            EventStatus::Applied => summary.applied += 1,
            EventStatus::Duplicate => summary.duplicate += 1,
            EventStatus::Parked => summary.parked += 1,
            EventStatus::Rejected => summary.rejected += 1,
        }
    }
    IngestResponse {
        results: results.to_vec(),
        summary,
    }
}

/// The `source` label of the ingest metrics: the platform's own sources
/// by name, anything else as `other` (sources are free text: a label per
/// distinct value would grow without bound).
fn source_label(source: &str) -> &'static str {
    const KNOWN: [&str; 12] = [
        "pos",
        "pos-batch",
        "wms",
        "erp",
        "ecommerce",
        "manual",
        "reservations",
        "transfers",
        "returns",
        "reconciliation",
        "seed",
        "bench",
    ];
    KNOWN.into_iter().find(|k| *k == source).unwrap_or("other")
}

/// Query of `GET /v1/inventory/positions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PositionsQuery {
    /// The SKU (required).
    pub sku: String,
    /// Only this location.
    pub location_id: Option<String>,
}

/// Positions of a SKU.
#[derive(Debug, Serialize, ToSchema)]
pub struct PositionsResponse {
    /// One per location holding or expecting the SKU (only the token's
    /// locations when it is bound).
    pub positions: Vec<PositionRecord>,
}

/// Positions of one SKU across locations (pinned).
#[utoipa::path(get, path = "/v1/inventory/positions", tag = "inventory",
    params(PositionsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Positions", body = PositionsResponse),
        (status = 400, description = "Missing sku", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing, or location outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown sku", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_positions(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    ApiQuery(query): ApiQuery<PositionsQuery>,
) -> Result<ApiJson<PositionsResponse>> {
    if let Some(location) = &query.location_id {
        auth.require_location(location)?;
    }
    if state.store.product(&query.sku).await?.is_none() {
        return Err(Problem::not_found(format!("no product `{}`", query.sku)).into());
    }
    let positions = state
        .store
        .positions(&query.sku, query.location_id.as_deref())
        .await?
        .into_iter()
        .filter(|p| auth.can_access(&p.location_id))
        .collect();
    Ok(ApiJson(PositionsResponse { positions }))
}

/// A page of one location's positions.
#[derive(Debug, Serialize, ToSchema)]
pub struct LocationPositionsPage {
    /// Positions in sku order.
    pub positions: Vec<PositionRecord>,
    /// Cursor of the next page (`after`), absent on the last page.
    pub next_cursor: Option<String>,
}

/// One location's positions, in sku order, keyset-paged (the store
/// associate's "my store" view).
#[utoipa::path(get, path = "/v1/inventory/locations/{location_id}/positions", tag = "inventory",
    params(("location_id" = String, Path, description = "Location id"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Positions", body = LocationPositionsPage),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing, or the location outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown location", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "Malformed query string", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad page size", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_location_positions(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    retail_shared::problem::ApiPath(location_id): retail_shared::problem::ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<ApiJson<LocationPositionsPage>> {
    auth.require_location(&location_id)?;
    let limit = page.limit()?;
    if state.store.location(&location_id).await?.is_none() {
        return Err(Problem::not_found(format!("no location `{location_id}`")).into());
    }
    let positions = state
        .store
        .positions_at(&location_id, page.after.as_deref(), limit)
        .await?;
    let next_cursor = (positions.len() == limit as usize)
        .then(|| positions.last().map(|p| p.sku.clone()))
        .flatten();
    Ok(ApiJson(LocationPositionsPage {
        positions,
        next_cursor,
    }))
}

/// Query of `GET /v1/inventory/journal`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JournalParams {
    /// Only this location (required for location-bound tokens).
    pub location_id: Option<String>,
    /// Only this SKU.
    pub sku: Option<String>,
    /// occurred_at ≥ from (RFC 3339).
    pub from: Option<String>,
    /// occurred_at < to (RFC 3339).
    pub to: Option<String>,
    /// Entries after this seq (the previous page's last `seq`).
    pub after: Option<i64>,
    /// Entries before this seq (with `order=desc`: the previous page's
    /// `next_before`).
    pub before: Option<i64>,
    /// `asc` (default: oldest first) or `desc` (newest first).
    pub order: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of the journal.
#[derive(Debug, Serialize, ToSchema)]
pub struct JournalPage {
    /// Entries in seq order (descending with `order=desc`).
    pub entries: Vec<JournalEntry>,
    /// Pass as `after` for the next page; absent on the last page (and on
    /// `order=desc` pages).
    pub next_after: Option<i64>,
    /// With `order=desc`: pass as `before` for the next (older) page;
    /// absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, Problem> {
    value
        .map(|v| {
            parse_time(v).ok_or_else(|| {
                Problem::validation(vec![FieldError {
                    pointer: format!("?{name}"),
                    detail: "must be an RFC 3339 date-time".into(),
                }])
            })
        })
        .transpose()
}

/// The append-only journal, filtered by location, sku and event time, paged
/// by seq.
#[utoipa::path(get, path = "/v1/inventory/journal", tag = "inventory",
    params(JournalParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of journal entries", body = JournalPage),
        (status = 403, description = "Scope inventory:read missing, or location outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_journal(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    ApiQuery(params): ApiQuery<JournalParams>,
) -> Result<ApiJson<JournalPage>> {
    match (&params.location_id, &auth.locations) {
        (Some(location), _) => auth.require_location(location)?,
        (None, Some(_)) => {
            return Err(Problem::forbidden(
                "a location-bound token must name one of its locations (location_id)",
            )
            .into());
        }
        (None, None) => {}
    }
    let limit = super::page_limit(params.limit)?;
    let newest_first = match params.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            return Err(Problem::validation(vec![FieldError {
                pointer: "?order".into(),
                detail: "must be asc or desc".into(),
            }])
            .into());
        }
    };
    let query = JournalQuery {
        location_id: params.location_id.clone(),
        sku: params.sku.clone(),
        from: time_param("from", params.from.as_deref())?,
        to: time_param("to", params.to.as_deref())?,
        after: params.after,
        before: params.before,
        newest_first,
        limit,
    };
    let entries = state.store.journal(&query).await?;
    let full = entries.len() == limit as usize;
    let last = entries.last().map(|e| e.seq);
    Ok(ApiJson(JournalPage {
        entries,
        next_after: (full && !newest_first).then_some(last).flatten(),
        next_before: (full && newest_first).then_some(last).flatten(),
    }))
}

/// Body of `PUT /v1/inventory/safety-stock`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SafetyStockInput {
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Position-level safety stock (0–1,000,000); `null` falls back to the
    /// product's, then the location's default.
    pub safety_stock: Option<i64>,
}

impl Validate for SafetyStockInput {
    fn validate(&self, v: &mut Validator) {
        v.id("location_id", &self.location_id);
        v.id("sku", &self.sku);
        if let Some(value) = self.safety_stock {
            v.range(
                "safety_stock",
                value,
                0,
                retail_shared::model::MAX_SAFETY_STOCK,
            );
        }
    }
}

/// Sets or clears one position's own safety stock.
#[utoipa::path(put, path = "/v1/inventory/safety-stock", tag = "inventory",
    request_body = SafetyStockInput,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The position after the change", body = PositionRecord),
        (status = 403, description = "Scope inventory:write missing, or location outside the binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown sku or location", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json")))]
async fn put_safety_stock(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryWrite>,
    ValidJson(input): ValidJson<SafetyStockInput>,
) -> Result<ApiJson<PositionRecord>> {
    auth.require_location(&input.location_id)?;
    if state.store.product(&input.sku).await?.is_none() {
        return Err(Problem::not_found(format!("no product `{}`", input.sku)).into());
    }
    if state.store.location(&input.location_id).await?.is_none() {
        return Err(Problem::not_found(format!("no location `{}`", input.location_id)).into());
    }
    state
        .store
        .set_safety_stock(&input.location_id, &input.sku, input.safety_stock)
        .await?;
    let position = state
        .store
        .positions(&input.sku, Some(&input.location_id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("position vanished after its update"))?;
    Ok(ApiJson(position))
}

/// A page of parked events.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedPage {
    /// Parked events in event_id order.
    pub parked: Vec<ParkedEvent>,
    /// Pass as `after` for the next page.
    pub next_cursor: Option<String>,
    /// All parked events (at the token's locations, for a bound token).
    pub total: i64,
}

/// Events waiting for master data.
///
/// Location binding: a bound token sees only the events of its locations
/// (the event's `location_id`), and `total` counts those.
#[utoipa::path(get, path = "/v1/inventory/parked", tag = "inventory",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Parked events", body = ParkedPage),
        (status = 403, description = "Scope ops:read missing, or a token bound to no location", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_parked(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<ApiJson<ParkedPage>> {
    let limit = query.limit()?;
    let locations = super::ops::binding(&auth)?;
    let parked = state
        .store
        .parked(query.after.as_deref(), limit, locations.as_deref())
        .await?;
    let next_cursor = (parked.len() == limit as usize)
        .then(|| parked.last().map(|p| p.event_id.clone()))
        .flatten();
    let total = state.store.parked_count_at(locations.as_deref()).await?;
    Ok(ApiJson(ParkedPage {
        parked,
        next_cursor,
        total,
    }))
}

/// Answer of a parked replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResult {
    /// Parked events applied now.
    pub applied: usize,
    /// Still parked.
    pub remaining: i64,
}

/// Applies every parked event whose master data has arrived. (This also
/// runs after every master data upsert and on a schedule.)
///
/// Location binding: the replay takes every location's events in one
/// order, so a token bound to locations gets 403 (the scheduled replay
/// picks its events up anyway).
#[utoipa::path(post, path = "/v1/inventory/parked/replay", tag = "inventory",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replayed", body = ReplayResult),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn replay_parked(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
) -> Result<ApiJson<ReplayResult>> {
    retail_shared::ops::require_unbound(&auth, "the replay of parked events")?;
    let applied = state.store.replay_parked().await?;
    let remaining = state.store.parked_count().await?;
    Ok(ApiJson(ReplayResult { applied, remaining }))
}

/// Query of `POST /v1/ops/rebuild`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RebuildParams {
    /// `true`: replace differing positions; default: only compare.
    pub write: Option<bool>,
}

/// Replays the whole journal into fresh positions and compares them with
/// the live ones (and with `write=true` replaces those that differ).
/// Ingest waits while it runs.
///
/// Location binding: the rebuild covers every location's journal and
/// stops ingest everywhere, so a token bound to locations gets 403.
#[utoipa::path(post, path = "/v1/ops/rebuild", tag = "operations",
    params(RebuildParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the rebuild found", body = RebuildReport),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn rebuild(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    ApiQuery(params): ApiQuery<RebuildParams>,
) -> Result<ApiJson<RebuildReport>> {
    retail_shared::ops::require_unbound(&auth, "a rebuild")?;
    let report = state.store.rebuild(params.write.unwrap_or(false)).await?;
    Ok(ApiJson(report))
}

/// Largest number of skus in one availability query.
pub const MAX_AVAILABILITY_SKUS: usize = 500;

/// Body of `POST /v1/inventory/availability`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityQuery {
    /// 1–500 skus.
    #[schema(min_items = 1, max_items = 500)]
    pub skus: Vec<String>,
    /// Only these locations (1–1000); all the token may see when absent.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub location_ids: Option<Vec<String>>,
    /// Only the nodes that may sell to this channel (configuration
    /// `[channels.NAME]`: location types and capabilities), e.g. `web`.
    #[serde(default)]
    pub channel: Option<String>,
}

impl Validate for AvailabilityQuery {
    fn validate(&self, v: &mut Validator) {
        v.count("skus", self.skus.len(), 1, MAX_AVAILABILITY_SKUS);
        v.at("skus", |v| {
            for (index, sku) in self.skus.iter().enumerate() {
                v.id(&index.to_string(), sku);
            }
        });
        if let Some(locations) = &self.location_ids {
            v.count("location_ids", locations.len(), 1, 1000);
            v.at("location_ids", |v| {
                for (index, id) in locations.iter().enumerate() {
                    v.id(&index.to_string(), id);
                }
            });
        }
    }
}

/// Availability of one location.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LocationAvailability {
    /// Location.
    pub location_id: String,
    /// Available to sell.
    pub available: i64,
}

/// Availability of one sku.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SkuAvailability {
    /// SKU.
    pub sku: String,
    /// Whether the sku exists in the registry.
    pub known: bool,
    /// Sum over `locations`.
    pub total_available: i64,
    /// Per location, in location order.
    pub locations: Vec<LocationAvailability>,
}

/// Answer of `POST /v1/inventory/availability`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityResponse {
    /// One per requested sku, in request order.
    pub items: Vec<SkuAvailability>,
}

/// The nodes a channel may sell from (None: no channel named, all).
async fn channel_nodes(
    state: &AppState,
    channel: Option<&str>,
) -> Result<Option<std::collections::HashSet<String>>> {
    let Some(channel) = channel else {
        return Ok(None);
    };
    let rule = state.channels.get(channel).ok_or_else(|| {
        Problem::validation(vec![FieldError {
            pointer: "/channel".into(),
            detail: format!(
                "unknown channel `{channel}` (configured: {})",
                state
                    .channels
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }])
    })?;
    Ok(Some(
        state
            .store
            .all_locations()
            .await?
            .into_iter()
            .filter(|l| {
                let capabilities: Vec<&str> = l.capabilities.iter().map(|c| c.as_str()).collect();
                rule.admits(l.r#type.as_str(), &capabilities)
            })
            .map(|l| l.location_id)
            .collect(),
    ))
}

/// Available-to-sell of up to 500 skus in one call (a read: safe to
/// retry). Locations outside the token's binding are left out.
#[utoipa::path(post, path = "/v1/inventory/availability", tag = "inventory",
    request_body = AvailabilityQuery,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Availability per sku", body = AvailabilityResponse),
        (status = 403, description = "Scope inventory:read missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_availability(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    ValidJson(query): ValidJson<AvailabilityQuery>,
) -> Result<ApiJson<AvailabilityResponse>> {
    for location in query.location_ids.iter().flatten() {
        auth.require_location(location)?;
    }
    let admitted = channel_nodes(&state, query.channel.as_deref()).await?;
    let known: std::collections::HashSet<String> = state
        .store
        .known_skus(&query.skus)
        .await?
        .into_iter()
        .collect();
    let records = state
        .store
        .positions_of(&query.skus, query.location_ids.as_deref())
        .await?;
    let mut by_sku: std::collections::HashMap<String, Vec<LocationAvailability>> =
        std::collections::HashMap::new();
    for record in records {
        if auth.can_access(&record.location_id)
            && admitted
                .as_ref()
                .is_none_or(|nodes| nodes.contains(&record.location_id))
        {
            by_sku
                .entry(record.sku)
                .or_default()
                .push(LocationAvailability {
                    location_id: record.location_id,
                    available: record.figures.available,
                });
        }
    }
    let items = query
        .skus
        .iter()
        .map(|sku| {
            let locations = by_sku.get(sku).cloned().unwrap_or_default();
            SkuAvailability {
                sku: sku.clone(),
                known: known.contains(sku),
                total_available: locations.iter().map(|l| l.available).sum(),
                locations,
            }
        })
        .collect();
    Ok(ApiJson(AvailabilityResponse { items }))
}
