//! Master data: bulk upserts (pinned) and reads.

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::correlation::Correlation;
use retail_shared::model::{Location, LocationsUpsert, Product, ProductsUpsert, Upserted};
use retail_shared::problem::{ApiJson, ApiPath, ApiQuery, Problem, ProblemBody, ValidJson};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::PageQuery;
use crate::AppState;
use crate::error::Result;
use crate::storage::master::ChangeContext;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upsert_locations, list_locations))
        .routes(routes!(get_location))
        .routes(routes!(upsert_products, list_products))
        .routes(routes!(get_product))
}

/// A page of locations.
#[derive(Debug, Serialize, ToSchema)]
pub struct LocationPage {
    /// Locations in id order (only those the token may see).
    pub locations: Vec<Location>,
    /// Cursor of the next page (`after`), absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of products.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    /// Products in sku order.
    pub products: Vec<Product>,
    /// Cursor of the next page (`after`), absent on the last page.
    pub next_cursor: Option<String>,
}

fn change_context(
    principal: &retail_shared::auth::Principal,
    correlation: &Correlation,
) -> ChangeContext {
    ChangeContext {
        actor: principal.actor().to_owned(),
        request_id: correlation.request_id.clone(),
    }
}

/// Applies parked events that the new master data makes known. A failure
/// here does not fail the upsert: the parked sweeper retries.
async fn replay_parked(state: &AppState) {
    match state.store.replay_parked().await {
        Ok(0) => {}
        Ok(applied) => tracing::info!(applied, "parked events applied after a master data change"),
        Err(error) => tracing::warn!(%error, "parked replay failed; the sweeper will retry"),
    }
}

/// Bulk upsert of locations (1–1000). Unchanged records keep their version;
/// parked events that become applicable are applied.
#[utoipa::path(put, path = "/v1/master/locations", tag = "master-data",
    request_body = LocationsUpsert,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Inserted or changed count", body = Upserted),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope master:write missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json")))]
async fn upsert_locations(
    State(state): State<AppState>,
    auth: Authorized<scope::MasterWrite>,
    correlation: Correlation,
    ValidJson(body): ValidJson<LocationsUpsert>,
) -> Result<ApiJson<Upserted>> {
    for location in &body.locations {
        auth.require_location(&location.location_id)?;
    }
    let upserted = state
        .store
        .upsert_locations(&body.locations, &change_context(&auth, &correlation))
        .await?;
    replay_parked(&state).await;
    Ok(ApiJson(Upserted { upserted }))
}

/// Bulk upsert of products (1–1000). Unchanged records keep their version;
/// parked events that become applicable are applied.
#[utoipa::path(put, path = "/v1/master/products", tag = "master-data",
    request_body = ProductsUpsert,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Inserted or changed count", body = Upserted),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope master:write missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json")))]
async fn upsert_products(
    State(state): State<AppState>,
    auth: Authorized<scope::MasterWrite>,
    correlation: Correlation,
    ValidJson(body): ValidJson<ProductsUpsert>,
) -> Result<ApiJson<Upserted>> {
    let upserted = state
        .store
        .upsert_products(&body.products, &change_context(&auth, &correlation))
        .await?;
    replay_parked(&state).await;
    Ok(ApiJson(Upserted { upserted }))
}

/// Locations, keyset-paged; a location-bound token sees only its own.
#[utoipa::path(get, path = "/v1/master/locations", tag = "master-data",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of locations", body = LocationPage),
        (status = 400, description = "Bad query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_locations(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<ApiJson<LocationPage>> {
    let page = state
        .store
        .locations(query.after.as_deref(), query.limit()?)
        .await?;
    Ok(ApiJson(LocationPage {
        locations: page
            .items
            .into_iter()
            .filter(|l| auth.can_access(&l.location_id))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One location.
#[utoipa::path(get, path = "/v1/master/locations/{location_id}", tag = "master-data",
    params(("location_id" = String, Path, description = "Location id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The location", body = Location),
        (status = 403, description = "Scope or location binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such location", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_location(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    ApiPath(location_id): ApiPath<String>,
) -> Result<ApiJson<Location>> {
    auth.require_location(&location_id)?;
    let location = state
        .store
        .location(&location_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no location `{location_id}`")))?;
    Ok(ApiJson(location))
}

/// Products, keyset-paged.
#[utoipa::path(get, path = "/v1/master/products", tag = "master-data",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "Bad query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_products(
    State(state): State<AppState>,
    _auth: Authorized<scope::InventoryRead>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<ApiJson<ProductPage>> {
    let page = state
        .store
        .products(query.after.as_deref(), query.limit()?)
        .await?;
    Ok(ApiJson(ProductPage {
        products: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// One product.
#[utoipa::path(get, path = "/v1/master/products/{sku}", tag = "master-data",
    params(("sku" = String, Path, description = "SKU")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "No such product", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_product(
    State(state): State<AppState>,
    _auth: Authorized<scope::InventoryRead>,
    ApiPath(sku): ApiPath<String>,
) -> Result<ApiJson<Product>> {
    let product = state
        .store
        .product(&sku)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no product `{sku}`")))?;
    Ok(ApiJson(product))
}
