//! Store directory for channel apps (store finder, associate app).

use axum::extract::State;
use retail_shared::auth::{Authorized, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::model::{Capability, LocationType};
use retail_shared::problem::{ApiJson, ProblemBody};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_stores))
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
    let mut stores = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state.process.locations(after.as_deref(), ctx).await?;
        stores.extend(
            page.locations
                .into_iter()
                .filter(|l| l.r#type == LocationType::Store && auth.can_access(&l.location_id))
                .map(|l| Store {
                    location_id: l.location_id,
                    name: l.name,
                    latitude: l.latitude,
                    longitude: l.longitude,
                    capabilities: l.capabilities,
                }),
        );
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    Ok(ApiJson(StoreList { stores }))
}
