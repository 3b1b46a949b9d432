//! Store directory for channel apps (store finder, associate app).

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::model::{Capability, LocationType};
use retail_shared::problem::{ApiJson, ApiPath, ApiQuery, FieldError, Problem, ProblemBody};
use retail_shared::promise::distance_km;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;
use crate::process_client::PositionsPage;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_stores))
        .routes(routes!(store_positions))
        .routes(routes!(nearby_stores))
}

/// A store as channels see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Store {
    /// Location id.
    pub location_id: String,
    /// Name.
    pub name: String,
    /// Latitude.
    pub latitude: Option<f64>,
    /// Longitude.
    pub longitude: Option<f64>,
    /// Capabilities (click and collect, ship from store, returns).
    pub capabilities: Vec<Capability>,
}

/// The store list.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreList {
    /// Stores in id order, restricted to the token's locations if bound.
    pub stores: Vec<Store>,
}

/// Every store the caller may see (a store-bound token sees its own).
#[utoipa::path(get, path = "/v1/stores", tag = "stores",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stores", body = StoreList),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope availability:read missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "process-api did not answer", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_stores(
    State(state): State<AppState>,
    auth: Authorized<scope::AvailabilityRead>,
    correlation: Correlation,
) -> Result<ApiJson<StoreList>> {
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let stores = state
        .process
        .all_locations(ctx)
        .await?
        .into_iter()
        .filter(|l| l.r#type == LocationType::Store && auth.can_access(&l.location_id))
        .map(|l| Store {
            location_id: l.location_id,
            name: l.name,
            latitude: l.latitude,
            longitude: l.longitude,
            capabilities: l.capabilities,
        })
        .collect();
    Ok(ApiJson(StoreList { stores }))
}

/// Store ids travel into inner URLs: letters, digits, `-`, `_`, `.` only.
fn checked_store(store_id: &str) -> Result<()> {
    if store_id.is_empty()
        || store_id.len() > 128
        || !store_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Problem::not_found(format!("no store `{store_id}`")).into());
    }
    Ok(())
}

/// Query of `GET /v1/stores/{store_id}/positions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Skus after this one (the previous page's `next_cursor`).
    pub after: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The store associate's view of their store: every position (on hand,
/// unsellable, reserved, safety stock, in transit, available), in sku
/// order, keyset-paged. The token must be bound to the store (or unbound).
#[utoipa::path(get, path = "/v1/stores/{store_id}/positions", tag = "stores",
    params(("store_id" = String, Path, description = "Store id"), PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Positions", body = PositionsPage),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing, or another store", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown store", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "Malformed query string", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad page size", body = ProblemBody, content_type = "application/problem+json")))]
async fn store_positions(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    correlation: Correlation,
    ApiPath(store_id): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<ApiJson<PositionsPage>> {
    checked_store(&store_id)?;
    auth.require_location(&store_id)?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::validation(vec![FieldError {
            pointer: "?limit".into(),
            detail: "must be between 1 and 1000".into(),
        }])
        .into());
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    Ok(ApiJson(
        state
            .process
            .positions_at(&store_id, page.after.as_deref(), limit, ctx)
            .await?,
    ))
}

/// Query of `GET /v1/stores/{store_id}/nearby`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NearbyParams {
    /// The sku to find.
    pub sku: String,
    /// Most stores to list, 1-50 (default 10).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<usize>,
}

/// A store with the sku available.
#[derive(Debug, Serialize, ToSchema)]
pub struct NearbyStore {
    /// Location id.
    pub location_id: String,
    /// Name.
    pub name: String,
    /// Distance from the asking store in km.
    pub distance_km: f64,
    /// Units available to sell.
    pub available: i64,
}

/// Stores near the asking one with the sku available.
#[derive(Debug, Serialize, ToSchema)]
pub struct NearbyStores {
    /// The asking store.
    pub store_id: String,
    /// SKU.
    pub sku: String,
    /// Stores with the sku available, nearest first.
    pub stores: Vec<NearbyStore>,
}

/// For a store associate: other stores with the sku available, nearest
/// first (stores without coordinates are left out). The token must be
/// bound to the asking store or unbound; a bound token sees only the
/// stores of its binding.
#[utoipa::path(get, path = "/v1/stores/{store_id}/nearby", tag = "stores",
    params(("store_id" = String, Path, description = "The asking store"), NearbyParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Nearby stores with stock", body = NearbyStores),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope availability:read missing, or another store", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown store or sku", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "Malformed query string", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad sku or limit", body = ProblemBody, content_type = "application/problem+json")))]
async fn nearby_stores(
    State(state): State<AppState>,
    auth: Authorized<scope::AvailabilityRead>,
    correlation: Correlation,
    ApiPath(store_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<NearbyParams>,
) -> Result<ApiJson<NearbyStores>> {
    checked_store(&store_id)?;
    auth.require_location(&store_id)?;
    let mut v = retail_shared::validate::Validator::default();
    v.id("?sku", &query.sku);
    let limit = query.limit.unwrap_or(10);
    if !(1..=50).contains(&limit) {
        v.error("?limit", "must be between 1 and 50");
    }
    v.finish()?;
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let stores: Vec<_> = state
        .process
        .all_locations(ctx)
        .await?
        .into_iter()
        .filter(|l| l.r#type == LocationType::Store)
        .collect();
    let origin = stores
        .iter()
        .find(|s| s.location_id == store_id)
        .ok_or_else(|| Problem::not_found(format!("no store `{store_id}`")))?;
    let origin = origin.latitude.zip(origin.longitude);
    let availability = state
        .process
        .availability(std::slice::from_ref(&query.sku), None, None, ctx)
        .await?
        .into_iter()
        .next()
        .filter(|item| item.known)
        .ok_or_else(|| Problem::not_found(format!("no product `{}`", query.sku)))?;
    let mut nearby: Vec<NearbyStore> = stores
        .into_iter()
        .filter(|s| s.location_id != store_id && auth.can_access(&s.location_id))
        .filter_map(|s| {
            let at = s.latitude.zip(s.longitude)?;
            let distance = distance_km(origin?, at);
            let available = availability
                .locations
                .iter()
                .find(|l| l.location_id == s.location_id)
                .map_or(0, |l| l.available);
            (available > 0).then(|| NearbyStore {
                location_id: s.location_id,
                name: s.name,
                distance_km: (distance * 10.0).round() / 10.0,
                available,
            })
        })
        .collect();
    nearby.sort_by(|a, b| {
        a.distance_km
            .total_cmp(&b.distance_km)
            .then_with(|| a.location_id.cmp(&b.location_id))
    });
    nearby.truncate(limit);
    Ok(ApiJson(NearbyStores {
        store_id,
        sku: query.sku,
        stores: nearby,
    }))
}
