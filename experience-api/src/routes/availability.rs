//! Availability for channels (pinned `GET /v1/availability/{sku}`, plus a
//! batch query for carts and listing pages).

use std::collections::HashMap;

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
#[into_params(parameter_in = Query)]
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
        (status = 200, description = "Availability", body = Availability, headers(
            ("x-availability-source" = String, description = "`read-model` (the edge's copy kept current by the change feed) or `process-api`"),
            ("x-availability-staleness-ms" = u64, description = "Read model only: it held every change up to this long ago (at most `[experience] read_model_max_staleness_ms`)"))),
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
) -> Result<(Provenance, ApiJson<Availability>)> {
    let locations = parse_locations(filter.locations.as_deref())?;
    for location in locations.iter().flatten() {
        auth.require_location(location)?;
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    if filter.channel.is_none()
        && let Some(staleness) = state.model_staleness()
    {
        let skus = std::slice::from_ref(&sku);
        let mut found = from_model(&state, skus, &correlation).await?;
        let Some((known, held)) = found.pop() else {
            return Err(Problem::not_found(format!("no product `{sku}`")).into());
        };
        if !known {
            return Err(Problem::not_found(format!("no product `{sku}`")).into());
        }
        let item = narrow(&sku, held, locations.as_deref(), &auth);
        return Ok((Provenance::model(staleness), ApiJson(item)));
    }
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
    Ok((Provenance::process(), ApiJson(item.into())))
}

/// Where an answer came from, as response headers:
/// `X-Availability-Source: read-model|process-api` and, for the read
/// model, `X-Availability-Staleness-Ms` (the model held every change up
/// to that long ago).
#[derive(Debug, Clone, Copy)]
pub struct Provenance(Option<std::time::Duration>);

impl Provenance {
    pub(crate) fn model(staleness: std::time::Duration) -> Self {
        Self(Some(staleness))
    }

    fn process() -> Self {
        Self(None)
    }
}

impl axum::response::IntoResponseParts for Provenance {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut res: axum::response::ResponseParts,
    ) -> std::result::Result<axum::response::ResponseParts, Self::Error> {
        use axum::http::HeaderValue;
        let headers = res.headers_mut();
        match self.0 {
            Some(staleness) => {
                headers.insert(
                    "x-availability-source",
                    HeaderValue::from_static("read-model"),
                );
                headers.insert(
                    "x-availability-staleness-ms",
                    HeaderValue::from(u64::try_from(staleness.as_millis()).unwrap_or(u64::MAX)),
                );
            }
            None => {
                headers.insert(
                    "x-availability-source",
                    HeaderValue::from_static("process-api"),
                );
            }
        }
        Ok(res)
    }
}

/// Whether a sku exists, and its (location, available) pairs.
type Held = (bool, Vec<(String, i64)>);

/// Per sku (in order): whether it exists and its (location, available)
/// pairs, from the read model, loading the skus it lacks from process-api
/// in one call.
async fn from_model(
    state: &AppState,
    skus: &[String],
    correlation: &Correlation,
) -> Result<Vec<Held>> {
    let mut out: Vec<Option<Held>> = skus
        .iter()
        .map(|sku| state.model.get(sku).map(|held| (true, held.locations)))
        .collect();
    let missing: Vec<String> = skus
        .iter()
        .zip(&out)
        .filter(|(_, found)| found.is_none())
        .map(|(sku, _)| sku.clone())
        .collect();
    metrics::counter!("read_model_reads_total", "outcome" => "hit")
        .increment((skus.len() - missing.len()) as u64);
    let mut missing = missing;
    if !missing.is_empty()
        && let Some(shared) = &state.shared_model
    {
        // The replicas' shared copy, caught up with this replica's feed;
        // skus this replica just wrote are not taken from it.
        let wanted: Vec<String> = missing
            .iter()
            .filter(|sku| !state.model.recently_written(sku))
            .cloned()
            .collect();
        if !wanted.is_empty()
            && let Some(found) = shared.get(&wanted).await
        {
            let mut found: HashMap<String, crate::shared_model::SharedSku> = wanted
                .into_iter()
                .zip(found)
                .filter_map(|(sku, entry)| entry.map(|entry| (sku, entry)))
                .collect();
            let mut taken = 0_u64;
            for (sku, slot) in skus.iter().zip(out.iter_mut()) {
                if slot.is_none()
                    && let Some(entry) = found.remove(sku)
                    && let Some(snapshot) =
                        state
                            .model
                            .insert_shared(&state.relay, entry.after, &entry.availability)
                {
                    *slot = Some((true, snapshot.locations));
                    taken += 1;
                }
            }
            if taken > 0 {
                metrics::counter!("read_model_reads_total", "outcome" => "shared").increment(taken);
                state
                    .model
                    .loaded_shared
                    .fetch_add(taken, std::sync::atomic::Ordering::Relaxed);
                missing = skus
                    .iter()
                    .zip(&out)
                    .filter(|(_, found)| found.is_none())
                    .map(|(sku, _)| sku.clone())
                    .collect();
            }
        }
    }
    if !missing.is_empty() {
        metrics::counter!("read_model_reads_total", "outcome" => "miss")
            .increment(missing.len() as u64);
        state
            .model
            .loaded_process
            .fetch_add(missing.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Every position of the skus, whoever asks: narrowed per caller.
        let noted = state.relay.head();
        let loaded = state
            .process
            .availability(
                &missing,
                None,
                None,
                CallContext {
                    principal: None,
                    correlation,
                },
            )
            .await?;
        let mut loaded: HashMap<String, crate::process_client::SkuAvailability> = loaded
            .into_iter()
            .map(|item| (item.sku.clone(), item))
            .collect();
        for (sku, slot) in skus.iter().zip(out.iter_mut()) {
            if slot.is_none()
                && let Some(item) = loaded.remove(sku)
            {
                let known = item.known;
                let inserted = state.model.insert(&state.relay, noted, &item);
                if known
                    && let (Some(shared), Some(through)) = (&state.shared_model, inserted.through)
                {
                    shared.put(sku, through, &inserted.snapshot);
                }
                *slot = Some((known, inserted.snapshot.locations));
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|found| found.unwrap_or((false, Vec::new())))
        .collect())
}

/// An answer for one caller: only the asked locations, only those the
/// token may see.
pub(crate) fn narrow(
    sku: &str,
    held: Vec<(String, i64)>,
    locations: Option<&[String]>,
    principal: &retail_shared::auth::Principal,
) -> Availability {
    let locations: Vec<LocationAvailability> = held
        .into_iter()
        .filter(|(location, _)| {
            principal.can_access(location)
                && locations.is_none_or(|wanted| wanted.iter().any(|w| w == location))
        })
        .map(|(location_id, available)| LocationAvailability {
            location_id,
            available,
        })
        .collect();
    Availability {
        sku: sku.to_owned(),
        total_available: locations.iter().map(|l| l.available).sum(),
        locations,
    }
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
        (status = 200, description = "Availability per sku", body = BatchAvailability, headers(
            ("x-availability-source" = String, description = "`read-model` or `process-api`"),
            ("x-availability-staleness-ms" = u64, description = "Read model only: how old its knowledge is"))),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope availability:read missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed", body = ProblemBody, content_type = "application/problem+json")))]
async fn query_availability(
    State(state): State<AppState>,
    auth: Authorized<scope::AvailabilityRead>,
    correlation: Correlation,
    ValidJson(query): ValidJson<AvailabilityQuery>,
) -> Result<(Provenance, ApiJson<BatchAvailability>)> {
    for location in query.locations.iter().flatten() {
        auth.require_location(location)?;
    }
    if query.channel.is_none()
        && let Some(staleness) = state.model_staleness()
    {
        let found = from_model(&state, &query.skus, &correlation).await?;
        let items = query
            .skus
            .iter()
            .zip(found)
            .map(|(sku, (known, held))| {
                let item = narrow(sku, held, query.locations.as_deref(), &auth);
                BatchItem {
                    sku: item.sku,
                    known,
                    total_available: item.total_available,
                    locations: item.locations,
                }
            })
            .collect();
        return Ok((
            Provenance::model(staleness),
            ApiJson(BatchAvailability { items }),
        ));
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
    Ok((Provenance::process(), ApiJson(BatchAvailability { items })))
}
