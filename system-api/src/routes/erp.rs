//! The ERP adapter's HTTP face: postings from process-api (`erp:write`),
//! balances and master data for reconciliation and the master data pull
//! (`erp:read`), and the sandbox's operator controls (`ops:*`).

use axum::extract::State;
use axum::http::StatusCode;
use retail_shared::Problem;
use retail_shared::auth::{Authorized, scope};
use retail_shared::erp::{
    ErpBalances, ErpMaster, MAX_POSTINGS_PER_CALL, PostingBatch, PostingResults,
};
use retail_shared::ops::require_unbound;
use retail_shared::problem::{ApiJson, ApiQuery, ProblemBody, ValidJson};
use retail_shared::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::adapters::erp::ErpError;
use crate::adapters::erp::sandbox::{Faults, SandboxErp, SandboxRecord};
use crate::error::Result;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_postings))
        .routes(routes!(get_balances))
        .routes(routes!(get_master))
        .routes(routes!(get_faults, put_faults))
        .routes(routes!(put_master))
        .routes(routes!(post_stock_correction))
        .routes(routes!(get_records))
}

fn erp_problem(error: ErpError) -> Problem {
    match error {
        ErpError::Unavailable(detail) => Problem::upstream(StatusCode::SERVICE_UNAVAILABLE, detail)
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            ),
        ErpError::Refused(detail) => Problem::upstream(StatusCode::BAD_GATEWAY, detail),
    }
}

/// Times one call to the ERP backend as `erp_call_duration_seconds`
/// (buckets up to minutes: a large batch against a slow ERP takes that).
async fn timed<T>(
    backend: &'static str,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, ErpError>>,
) -> Result<T, ErpError> {
    let started = std::time::Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ErpError::Unavailable(_)) => "unavailable",
        Err(ErpError::Refused(_)) => "refused",
    };
    metrics::histogram!(
        "erp_call_duration_seconds",
        "backend" => backend,
        "operation" => operation,
        "outcome" => outcome
    )
    .record(started.elapsed().as_secs_f64());
    result
}

struct CheckedBatch<'a>(&'a PostingBatch);

impl Validate for CheckedBatch<'_> {
    fn validate(&self, v: &mut Validator) {
        v.count("postings", self.0.postings.len(), 1, MAX_POSTINGS_PER_CALL);
        v.at("postings", |v| {
            for (index, posting) in self.0.postings.iter().enumerate() {
                v.at(index, |v| {
                    v.text("event_id", &posting.event_id, 256);
                    if posting.event_id.is_empty() {
                        v.error("event_id", "must not be empty");
                    }
                    v.id("location_id", &posting.location_id);
                    v.id("sku", &posting.sku);
                    v.text("kind", &posting.kind, 32);
                    if posting.quantity == 0 {
                        v.error("quantity", "must not be 0");
                    }
                    v.range("quantity", posting.quantity, -1_000_000_000, 1_000_000_000);
                    if let Some(cost) = &posting.unit_cost
                        && cost.parse::<rust_decimal::Decimal>().is_err()
                    {
                        v.error("unit_cost", "must be a decimal string");
                    }
                });
            }
        });
    }
}

/// Records postings in the ERP, in order per (location, sku). Each
/// posting is recorded once by its `event_id`: a repeat answers
/// `duplicate`. After a failure, later postings of the same key in the
/// batch are `skipped`. 503 when the ERP does not answer (nothing was
/// recorded by this call... or the ERP's own answer was lost: repeating
/// the call is always safe).
#[utoipa::path(post, path = "/v1/erp/postings", tag = "erp",
    request_body = PostingBatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One result per posting", body = PostingResults),
        (status = 400, description = "Invalid batch", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope erp:write missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "The ERP refused the call", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The ERP is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_postings(
    State(state): State<AppState>,
    _auth: Authorized<scope::ErpWrite>,
    ApiJson(batch): ApiJson<PostingBatch>,
) -> Result<ApiJson<PostingResults>> {
    let mut v = Validator::default();
    CheckedBatch(&batch).validate(&mut v);
    v.finish()?;
    let results = timed(state.erp.backend(), "post", state.erp.post(&batch.postings))
        .await
        .map_err(erp_problem)?;
    for result in &results {
        let status = serde_json::to_value(result.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        metrics::counter!("erp_adapter_postings_total", "backend" => state.erp.backend(), "status" => status)
            .increment(1);
    }
    Ok(ApiJson(PostingResults { results }))
}

/// Query of `GET /v1/erp/balances`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    /// Warehouse code.
    pub location_id: String,
}

/// The ERP's on-hand quantity per product at one warehouse.
#[utoipa::path(get, path = "/v1/erp/balances", tag = "erp",
    params(BalanceQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Balances", body = ErpBalances),
        (status = 400, description = "Bad query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope erp:read missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "The ERP has no such warehouse", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The ERP is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_balances(
    State(state): State<AppState>,
    _auth: Authorized<scope::ErpRead>,
    ApiQuery(query): ApiQuery<BalanceQuery>,
) -> Result<ApiJson<ErpBalances>> {
    let mut v = Validator::default();
    v.id("location_id", &query.location_id);
    v.finish()?;
    match timed(
        state.erp.backend(),
        "balances",
        state.erp.balances(&query.location_id),
    )
    .await
    .map_err(erp_problem)?
    {
        Some(balances) => Ok(ApiJson(ErpBalances {
            location_id: query.location_id,
            balances,
        })),
        None => Err(
            Problem::not_found(format!("the ERP has no warehouse {}", query.location_id)).into(),
        ),
    }
}

/// The ERP's warehouses and products (code = platform id).
#[utoipa::path(get, path = "/v1/erp/master", tag = "erp",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Master data", body = ErpMaster),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope erp:read missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The ERP is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_master(
    State(state): State<AppState>,
    _auth: Authorized<scope::ErpRead>,
) -> Result<ApiJson<ErpMaster>> {
    let master = timed(state.erp.backend(), "master", state.erp.master())
        .await
        .map_err(erp_problem)?;
    Ok(ApiJson(master))
}

fn sandbox(state: &AppState) -> Result<&SandboxErp> {
    state.sandbox.as_ref().ok_or_else(|| {
        Problem::conflict(
            "not-sandbox",
            format!(
                "the ERP backend is {}; sandbox controls exist only with the sandbox",
                state.erp.backend()
            ),
        )
        .into()
    })
}

/// The sandbox's injected faults.
///
/// Location binding: the faults apply to every location, so a token bound
/// to locations gets 403.
#[utoipa::path(get, path = "/v1/erp/sandbox/faults", tag = "erp",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Faults", body = Faults),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`not-sandbox`", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_faults(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
) -> Result<ApiJson<Faults>> {
    require_unbound(&auth, "the sandbox's faults")?;
    Ok(ApiJson(sandbox(&state)?.faults()))
}

impl Validate for Faults {
    fn validate(&self, v: &mut Validator) {
        v.range(
            "latency_ms",
            i64::try_from(self.latency_ms).unwrap_or(i64::MAX),
            0,
            60_000,
        );
        v.range("fail_percent", i64::from(self.fail_percent), 0, 100);
        v.count("reject_skus", self.reject_skus.len(), 0, 1000);
        v.at("reject_skus", |v| {
            for (index, sku) in self.reject_skus.iter().enumerate() {
                v.id(&index.to_string(), sku);
            }
        });
    }
}

/// Sets the sandbox's faults (all at once): `down`, `latency_ms`,
/// `fail_percent` (transient failures per posting), `reject_skus`
/// (permanent refusals).
///
/// Location binding: the faults apply to every location, so a token bound
/// to locations gets 403.
#[utoipa::path(put, path = "/v1/erp/sandbox/faults", tag = "erp",
    request_body = Faults,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Faults in force", body = Faults),
        (status = 400, description = "Invalid faults", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`not-sandbox`", body = ProblemBody, content_type = "application/problem+json")))]
async fn put_faults(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    ValidJson(faults): ValidJson<Faults>,
) -> Result<ApiJson<Faults>> {
    require_unbound(&auth, "the sandbox's faults")?;
    let sandbox = sandbox(&state)?;
    tracing::warn!(?faults, "sandbox ERP faults set");
    sandbox.set_faults(faults);
    Ok(ApiJson(sandbox.faults()))
}

struct CheckedMaster<'a>(&'a ErpMaster);

impl Validate for CheckedMaster<'_> {
    fn validate(&self, v: &mut Validator) {
        v.count("locations", self.0.locations.len(), 0, 10_000);
        v.count("products", self.0.products.len(), 0, 100_000);
        v.at("locations", |v| {
            for (index, location) in self.0.locations.iter().enumerate() {
                v.at(index, |v| {
                    v.id("location_id", &location.location_id);
                    v.text("name", &location.name, 200);
                });
            }
        });
        v.at("products", |v| {
            for (index, product) in self.0.products.iter().enumerate() {
                v.at(index, |v| {
                    v.id("sku", &product.sku);
                    v.text("name", &product.name, 200);
                    if let Some(cost) = &product.unit_cost
                        && cost.parse::<rust_decimal::Decimal>().is_err()
                    {
                        v.error("unit_cost", "must be a decimal string");
                    }
                });
            }
        });
    }
}

/// Replaces the sandbox's master data (what `GET /v1/erp/master` hands
/// to process-api's master data pull).
///
/// Location binding: master data is shared by every location, so a token
/// bound to locations gets 403.
#[utoipa::path(put, path = "/v1/erp/sandbox/master", tag = "erp",
    request_body = ErpMaster,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Master data in force", body = ErpMaster),
        (status = 400, description = "Invalid master data", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`not-sandbox`", body = ProblemBody, content_type = "application/problem+json")))]
async fn put_master(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    ApiJson(master): ApiJson<ErpMaster>,
) -> Result<ApiJson<ErpMaster>> {
    require_unbound(&auth, "the sandbox's master data")?;
    let mut v = Validator::default();
    CheckedMaster(&master).validate(&mut v);
    v.finish()?;
    let sandbox = sandbox(&state)?;
    sandbox.set_master(&master).await?;
    Ok(ApiJson(master))
}

/// An ERP-side stock change the platform did not send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockCorrection {
    /// Warehouse.
    pub location_id: String,
    /// Product.
    pub sku: String,
    /// Signed change (non-zero).
    pub quantity: i64,
}

impl Validate for StockCorrection {
    fn validate(&self, v: &mut Validator) {
        v.id("location_id", &self.location_id);
        v.id("sku", &self.sku);
        if self.quantity == 0 {
            v.error("quantity", "must not be 0");
        }
        v.range("quantity", self.quantity, -1_000_000, 1_000_000);
    }
}

/// The sandbox's stock after a correction.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockAfter {
    /// Warehouse.
    pub location_id: String,
    /// Product.
    pub sku: String,
    /// ERP quantity now.
    pub quantity: i64,
}

/// Changes the sandbox's stock directly, as a manual ERP entry would: the
/// discrepancy reconciliation is there to find.
///
/// Location binding: a correction at a location outside a bound token's
/// binding answers 403.
#[utoipa::path(post, path = "/v1/erp/sandbox/stock-corrections", tag = "erp",
    request_body = StockCorrection,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The ERP's quantity now", body = StockAfter),
        (status = 400, description = "Invalid correction", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`not-sandbox`", body = ProblemBody, content_type = "application/problem+json")))]
async fn post_stock_correction(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    ValidJson(correction): ValidJson<StockCorrection>,
) -> Result<ApiJson<StockAfter>> {
    auth.require_location(&correction.location_id)?;
    let quantity = sandbox(&state)?
        .correct_stock(
            &correction.location_id,
            &correction.sku,
            correction.quantity,
        )
        .await?;
    Ok(ApiJson(StockAfter {
        location_id: correction.location_id,
        sku: correction.sku,
        quantity,
    }))
}

/// Query of `GET /v1/erp/sandbox/records`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecordQuery {
    /// Only this warehouse.
    pub location_id: Option<String>,
    /// Only this product.
    pub sku: Option<String>,
    /// Records after this sequence number.
    pub after: Option<i64>,
    /// Page size, 1 to 10,000 (default 1000).
    pub limit: Option<i64>,
}

/// Records held by the sandbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordPage {
    /// In arrival order.
    pub records: Vec<SandboxRecord>,
}

/// What the sandbox received, in arrival order (to check order per key
/// and that nothing arrived twice).
///
/// Location binding: a bound token reads one location of its binding at a
/// time: `location_id` outside the binding answers 403, and leaving it out
/// is allowed only when the token is bound to exactly one location (which
/// is then used); otherwise 403.
#[utoipa::path(get, path = "/v1/erp/sandbox/records", tag = "erp",
    params(RecordQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Records", body = RecordPage),
        (status = 400, description = "Bad query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`not-sandbox`", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_records(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    ApiQuery(query): ApiQuery<RecordQuery>,
) -> Result<ApiJson<RecordPage>> {
    let limit = query.limit.unwrap_or(1000);
    let mut v = Validator::default();
    v.range("limit", limit, 1, 10_000);
    v.range("after", query.after.unwrap_or(0), 0, i64::MAX);
    v.finish()?;
    let requested: Vec<String> = query.location_id.into_iter().collect();
    let location_id = match auth.narrow_locations(requested)?.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        _ => {
            return Err(Problem::forbidden(
                "a token bound to several locations must name one `location_id`",
            )
            .into());
        }
    };
    let records = sandbox(&state)?
        .records(
            location_id.as_deref(),
            query.sku.as_deref(),
            query.after.unwrap_or(0),
            limit,
        )
        .await?;
    Ok(ApiJson(RecordPage { records }))
}
