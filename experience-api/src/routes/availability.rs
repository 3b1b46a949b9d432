//! Availability for channels (pinned `GET /v1/availability/{sku}`, plus a
//! batch query for carts and listing pages).

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::problem::{
    ApiJson, ApiPath, ApiQuery, FieldError, Problem, ProblemBody, ValidJson,
};
use retail_shared::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;
use crate::process_client::{LocationAvailability, SkuAvailability};

/// Most skus in one batch query.
pub const MAX_SKUS: usize = 500;
/// Most locations in one filter.
pub const MAX_LOCATIONS: usize = 200;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(availability_of_sku))
        .routes(routes!(query_availability))
}

/// Availability of one sku (pinned shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct Availability {
    /// SKU.
    pub sku: String,
    /// Sum over `locations`.
    pub total_available: i64,
    /// Per location holding the sku (within the filter and the token's
    /// locations).
    pub locations: Vec<LocationAvailability>,
}

impl From<SkuAvailability> for Availability {
    fn from(item: SkuAvailability) -> Self {
        Self {
            sku: item.sku,
            total_available: item.total_available,
            locations: item.locations,
        }
    }
}

/// Query of `GET /v1/availability/{sku}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LocationsFilter {
    /// Comma-separated location ids (at most 200), e.g. `S001,S002`.
    pub locations: Option<String>,
    /// Only nodes that sell to this channel (`web`, `mobile`, `store`,
    /// `partner`: configuration `[channels]`).
    pub channel: Option<String>,
}

fn parse_locations(raw: Option<&str>) -> Result<Option<Vec<String>>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    let ids: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut v = Validator::default();
    v.count("?locations", ids.len(), 1, MAX_LOCATIONS);
    for id in &ids {
        v.id("?locations", id);
    }
    v.finish().map_err(|_| {
        Problem::validation(vec![FieldError {
            pointer: "?locations".into(),
            detail: format!(
                "must be 1 to {MAX_LOCATIONS} comma-separated location ids of 1 to 128 printable characters"
            ),
        }])
    })?;
    Ok(Some(ids))
}

/// Available to sell of one sku across locations; unknown sku → 404.
#[utoipa::path(get, path = "/v1/availability/{sku}", tag = "availability",
    params(("sku" = String, Path, description = "SKU"), LocationsFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Availability", body = Availability),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope availability:read missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown sku", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad location filter", body = ProblemBody, content_type = "application/problem+json")))]
async fn availability_of_sku(
    State(state): State<AppState>,
    auth: Authorized<scope::AvailabilityRead>,
    correlation: Correlation,
    ApiPath(sku): ApiPath<String>,
    ApiQuery(filter): ApiQuery<LocationsFilter>,
) -> Result<ApiJson<Availability>> {
    let locations = parse_locations(filter.locations.as_deref())?;
    for location in locations.iter().flatten() {
        auth.require_location(location)?;
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let item = state
        .process
        .availability(
            std::slice::from_ref(&sku),
            locations.as_deref(),
            filter.channel.as_deref(),
            ctx,
        )
        .await?
        .into_iter()
        .next()
        .filter(|item| item.known)
        .ok_or_else(|| Problem::not_found(format!("no product `{sku}`")))?;
    Ok(ApiJson(item.into()))
}

/// Body of `POST /v1/availability/query`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityQuery {
    /// 1–500 skus.
    #[schema(min_items = 1, max_items = 500)]
    pub skus: Vec<String>,
    /// Only these locations (1–200).
    #[serde(default)]
    #[schema(max_items = 200)]
    pub locations: Option<Vec<String>>,
    /// Only nodes that sell to this channel (`web`, `mobile`, `store`,
    /// `partner`: configuration `[channels]`).
    #[serde(default)]
    pub channel: Option<String>,
}

impl Validate for AvailabilityQuery {
    fn validate(&self, v: &mut Validator) {
        v.count("skus", self.skus.len(), 1, MAX_SKUS);
        v.at("skus", |v| {
            for (index, sku) in self.skus.iter().enumerate() {
                v.id(&index.to_string(), sku);
            }
        });
        if let Some(locations) = &self.locations {
            v.count("locations", locations.len(), 1, MAX_LOCATIONS);
            v.at("locations", |v| {
                for (index, id) in locations.iter().enumerate() {
                    v.id(&index.to_string(), id);
                }
            });
        }
    }
}

/// One sku of a batch answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// SKU.
    pub sku: String,
    /// Whether the sku exists (unknown skus answer 0, not an error).
    pub known: bool,
    /// Sum over `locations`.
    pub total_available: i64,
    /// Per location.
    pub locations: Vec<LocationAvailability>,
}

/// Answer of the batch query.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAvailability {
    /// One per requested sku, in request order.
    pub items: Vec<BatchItem>,
}

/// Availability of up to 500 skus in one call (product listing pages,
/// carts).
#[utoipa::path(post, path = "/v1/availability/query", tag = "availability",
    request_body = AvailabilityQuery,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Availability per sku", body = BatchAvailability),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope availability:read missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json")))]
async fn query_availability(
    State(state): State<AppState>,
    auth: Authorized<scope::AvailabilityRead>,
    correlation: Correlation,
    ValidJson(query): ValidJson<AvailabilityQuery>,
) -> Result<ApiJson<BatchAvailability>> {
    for location in query.locations.iter().flatten() {
        auth.require_location(location)?;
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let items = state
        .process
        .availability(
            &query.skus,
            query.locations.as_deref(),
            query.channel.as_deref(),
            ctx,
        )
        .await?
        .into_iter()
        .map(|item| BatchItem {
            sku: item.sku,
            known: item.known,
            total_available: item.total_available,
            locations: item.locations,
        })
        .collect();
    Ok(ApiJson(BatchAvailability { items }))
}
