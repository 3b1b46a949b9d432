//! Typed client of process-api, on the shared [`LayerClient`].

use retail_shared::client::{CallContext, ClientError, LayerClient};
use retail_shared::model::{Location, Reservation, ReservationRequest};
use retail_shared::ops::DependencyReport;
use serde::Deserialize;

/// A page of process-api's location list.
#[derive(Debug, Deserialize)]
pub struct LocationPage {
    /// Locations.
    pub locations: Vec<Location>,
    /// Next cursor.
    pub next_cursor: Option<String>,
}

/// process-api, as experience-api sees it.
#[derive(Debug, Clone)]
pub struct ProcessClient {
    inner: LayerClient,
}

impl ProcessClient {
    /// Wraps the base client.
    pub fn new(inner: LayerClient) -> Self {
        Self { inner }
    }

    /// Unauthenticated readiness probe.
    pub async fn ready(&self) -> Result<(), String> {
        self.inner.probe("/readyz").await
    }

    /// process-api's dependency report (which includes system-api's).
    pub async fn dependencies(
        &self,
        ctx: CallContext<'_>,
    ) -> Result<DependencyReport, ClientError> {
        self.inner
            .get("/v1/ops/dependencies", &[], &["ops:read"], ctx)
            .await
    }

    /// Every location, paged through in id order.
    pub async fn all_locations(&self, ctx: CallContext<'_>) -> Result<Vec<Location>, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.locations(after.as_deref(), ctx).await?;
            all.extend(page.locations);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(all),
            }
        }
    }

    /// One page of locations.
    pub async fn locations(
        &self,
        after: Option<&str>,
        ctx: CallContext<'_>,
    ) -> Result<LocationPage, ClientError> {
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        self.inner
            .get("/v1/master/locations", &query, &["inventory:read"], ctx)
            .await
    }
}

/// Availability of one location, as process-api answers it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct LocationAvailability {
    /// Location.
    pub location_id: String,
    /// Available to sell (after safety stock and reservations).
    pub available: i64,
}

/// Availability of one sku, as process-api answers it.
#[derive(Debug, Clone, Deserialize)]
pub struct SkuAvailability {
    /// SKU.
    pub sku: String,
    /// Whether the sku exists.
    pub known: bool,
    /// Sum over locations.
    pub total_available: i64,
    /// Per location.
    pub locations: Vec<LocationAvailability>,
}

#[derive(Debug, Deserialize)]
struct AvailabilityResponse {
    items: Vec<SkuAvailability>,
}

impl ProcessClient {
    /// A page of the change feed (`after`, filters as comma lists).
    pub async fn changes(
        &self,
        after: i64,
        skus: &[String],
        locations: &[String],
        ctx: CallContext<'_>,
    ) -> Result<crate::relay::FeedPage, ClientError> {
        let mut query = vec![("after", after.to_string()), ("limit", "1000".to_owned())];
        if !skus.is_empty() {
            query.push(("sku", skus.join(",")));
        }
        if !locations.is_empty() {
            query.push(("location_id", locations.join(",")));
        }
        self.inner
            .get("/v1/inventory/changes", &query, &["inventory:read"], ctx)
            .await
    }

    /// The underlying client (the relay opens streams with it).
    pub fn layer(&self) -> &LayerClient {
        &self.inner
    }

    /// Availability of up to 500 skus (optionally at some locations).
    pub async fn availability(
        &self,
        skus: &[String],
        locations: Option<&[String]>,
        channel: Option<&str>,
        ctx: CallContext<'_>,
    ) -> Result<Vec<SkuAvailability>, ClientError> {
        let body =
            serde_json::json!({ "skus": skus, "location_ids": locations, "channel": channel });
        let response: AvailabilityResponse = self
            .inner
            .post_read(
                "/v1/inventory/availability",
                &body,
                &["inventory:read"],
                ctx,
            )
            .await?;
        Ok(response.items)
    }
}

impl ProcessClient {
    /// Creates a reservation. `idempotency_key` makes the call (and this
    /// client's retries of it) safe to repeat.
    pub async fn reserve(
        &self,
        request: &ReservationRequest,
        idempotency_key: &str,
        ctx: CallContext<'_>,
    ) -> Result<Reservation, ClientError> {
        self.inner
            .post(
                "/v1/reservations",
                request,
                &["reservations:write"],
                ctx,
                Some(idempotency_key),
            )
            .await
    }

    /// One reservation of the end user.
    pub async fn reservation(
        &self,
        reservation_id: &str,
        ctx: CallContext<'_>,
    ) -> Result<Reservation, ClientError> {
        self.inner
            .get(
                &format!("/v1/reservations/{reservation_id}"),
                &[],
                &["reservations:write"],
                ctx,
            )
            .await
    }

    /// Releases or fulfils (`action`) a reservation; both are idempotent
    /// in process-api, so the call is retried like one with a key.
    pub async fn end_reservation(
        &self,
        reservation_id: &str,
        action: &str,
        idempotency_key: &str,
        ctx: CallContext<'_>,
    ) -> Result<Reservation, ClientError> {
        self.inner
            .post(
                &format!("/v1/reservations/{reservation_id}/{action}"),
                &serde_json::json!({}),
                &["reservations:write"],
                ctx,
                Some(idempotency_key),
            )
            .await
    }
}

impl ProcessClient {
    /// Ranked fulfilment options (and a reservation when asked).
    pub async fn promise(
        &self,
        request: &retail_shared::promise::PromiseRequest,
        idempotency_key: &str,
        ctx: CallContext<'_>,
    ) -> Result<retail_shared::promise::PromiseResponse, ClientError> {
        if request.reserve {
            self.inner
                .post(
                    "/v1/promise",
                    request,
                    &["inventory:read", "reservations:write"],
                    ctx,
                    Some(idempotency_key),
                )
                .await
        } else {
            self.inner
                .post_read("/v1/promise", request, &["inventory:read"], ctx)
                .await
        }
    }
}

/// A page of one location's positions, as process-api answers it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct PositionsPage {
    /// Positions in sku order (the pinned position fields).
    #[schema(value_type = Vec<Object>)]
    pub positions: Vec<serde_json::Value>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

impl ProcessClient {
    /// A page of one location's positions.
    pub async fn positions_at(
        &self,
        location_id: &str,
        after: Option<&str>,
        limit: u32,
        ctx: CallContext<'_>,
    ) -> Result<PositionsPage, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        self.inner
            .get(
                &format!("/v1/inventory/locations/{location_id}/positions"),
                &query,
                &["inventory:read"],
                ctx,
            )
            .await
    }
}
