//! Operator diagnostics.
//!
//! Location binding (a token's `locations` claim): lists show only the
//! bound locations; an action on one object (a posting, an exception)
//! outside the binding answers 403 and changes nothing (403 rather than
//! 404, as for transfers and reservations: ids are sequential, so hiding
//! existence would protect nothing); reports and actions that span every
//! location answer 403 to bound tokens. Each route's documentation says
//! which.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use retail_shared::Problem;
use retail_shared::auth::{Authorized, Principal, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::idempotency::InlineClaim;
use retail_shared::ops::{DependencyReport, require_unbound};
use retail_shared::problem::{ApiJson, ApiPath, ApiQuery, ProblemBody, ValidJson};
use retail_shared::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::erp::ErpLinkView;
use crate::erp::master_sync::MasterSyncReport;
use crate::erp::reconcile::ReconciliationReport;
use crate::error::Result;
use crate::routes::keyed;
use crate::storage::ledger::IngestContext;
use crate::storage::master::ChangeContext;
use crate::storage::micros_to_rfc3339;
use crate::storage::postings::{
    PostingActionOutcome, PostingActionRefusal, PostingFilter, PostingView,
};
use crate::storage::reconciliation::{
    ExceptionOutcome, ExceptionRefusal, ReconciliationException, ReconciliationRun,
};
use crate::{AppState, SERVICE};

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(dependencies))
        .routes(routes!(sync_health))
        .routes(routes!(sync_health_stream))
        .routes(routes!(list_postings))
        .routes(routes!(replay_posting))
        .routes(routes!(discard_posting))
        .routes(routes!(run_reconciliation, list_reconciliation_runs))
        .routes(routes!(list_exceptions))
        .routes(routes!(approve_exception))
        .routes(routes!(reject_exception))
        .routes(routes!(master_sync))
}

/// The caller's binding as a storage filter: `None` for an unbound token,
/// else its locations (403 when it is bound to none).
pub(crate) fn binding(principal: &Principal) -> Result<Option<Vec<String>>> {
    if principal.locations.is_none() {
        return Ok(None);
    }
    Ok(Some(principal.narrow_locations(Vec::new())?))
}

fn ingest_context(principal: &Principal, correlation: &Correlation) -> IngestContext {
    IngestContext {
        actor: principal.actor().to_owned(),
        request_id: correlation.request_id.clone(),
        trace_id: correlation.trace_id.clone(),
        span_id: Some(correlation.span_id.clone()),
    }
}

/// Outbox figures of `GET /v1/ops/sync-health` (pinned names first).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostingHealth {
    /// Not yet delivered and not claimed (due or backing off).
    pub pending: i64,
    /// Claimed by a delivery worker.
    pub in_flight: i64,
    /// Gave up after the retry budget or a permanent refusal.
    pub dead: i64,
    /// Age of the oldest undelivered posting.
    pub oldest_pending_age_seconds: f64,
    /// Pending postings held back by a dead posting of their key.
    pub blocked_by_dead: i64,
    /// Delivered.
    pub posted: i64,
    /// Discarded by operators.
    pub discarded: i64,
}

/// Event figures of `GET /v1/ops/sync-health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventHealth {
    /// Parked events (unknown sku or location), waiting for master data.
    pub parked: i64,
}

/// One location's freshness.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LocationHealth {
    /// Location.
    pub location_id: String,
    /// Newest event time seen there.
    pub last_event_at: Option<String>,
    /// No event for longer than `[process] stale_after_seconds`.
    pub stale: bool,
}

/// Reconciliation figures of `GET /v1/ops/sync-health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReconciliationHealth {
    /// Exceptions waiting for review.
    pub open_exceptions: i64,
    /// The latest run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<ReconciliationRun>,
}

/// Ingest figures of this replica over the last minute.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IngestHealth {
    /// Events applied per second.
    pub events_per_second: f64,
    /// Events applied.
    pub events_last_minute: u64,
    /// Median time from an event accepted to its change in the feed (ms).
    pub propagation_p50_ms: Option<f64>,
    /// 99th percentile of the same (ms).
    pub propagation_p99_ms: Option<f64>,
}

/// The change feed's figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeedHealth {
    /// The newest seq published.
    pub head: i64,
    /// Committed changes not yet published.
    pub backlog: i64,
    /// Age of the oldest of them.
    pub oldest_backlog_age_seconds: f64,
}

/// Webhook figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookHealth {
    /// Registered subscribers.
    pub subscriptions: i64,
    /// Active subscribers more than a minute behind (or failing).
    pub lagging: i64,
    /// Dead letters waiting for an operator.
    pub dead_letters: i64,
}

/// One flow as the business sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FlowImpact {
    /// `erp_posting`, `store_feeds`, `change_feed`, `master_data` or
    /// `webhooks`.
    pub flow: String,
    /// Human name.
    pub label: String,
    /// `ok`, `degraded` or `down`.
    pub status: String,
    /// Since when it is not ok.
    pub since: Option<String>,
    /// One sentence.
    pub headline: String,
    /// Items waiting (postings, changes, parked events, dead letters).
    pub waiting: i64,
    /// Locations whose data it holds back.
    pub locations_affected: i64,
    /// Skus whose data it holds back.
    pub skus_affected: i64,
    /// Sales channels whose availability is affected.
    pub channels_affected: Vec<String>,
    /// The most affected locations.
    pub top_locations: Vec<String>,
}

/// What degraded flows mean for stores, skus and channels.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Impact {
    /// One sentence per flow that is not ok, worst first (empty: all ok).
    pub summary: Vec<String>,
    /// Every flow.
    pub flows: Vec<FlowImpact>,
}

/// The pinned sync health report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SyncHealth {
    /// ERP outbox.
    pub postings: PostingHealth,
    /// Ingest.
    pub events: EventHealth,
    /// Per location, oldest activity first.
    pub locations: Vec<LocationHealth>,
    /// This replica's link to the ERP.
    pub erp: ErpLinkView,
    /// Reconciliation.
    pub reconciliation: ReconciliationHealth,
    /// Ingest rate and propagation latency (this replica, last minute).
    pub ingest: IngestHealth,
    /// The availability change feed.
    pub feed: FeedHealth,
    /// Webhook subscribers.
    pub webhooks: WebhookHealth,
    /// Business impact of degraded flows.
    pub impact: Impact,
    /// When this report was computed.
    pub generated_at: String,
}

/// The last report, when it was made and how long it took. Reports are
/// shared for a second (every console's stream reads the same one). A
/// report costs what the data is (its per-location figures read every
/// position): while one takes under [`HealthCache::SLOW`], each request
/// gets a fresh one; once one takes longer (millions of positions),
/// requests get the newest report at once (`generated_at` says when it
/// was made) while one refresh at a time runs in the background, so
/// consoles keep answering instead of timing out.
#[derive(Debug, Default)]
pub struct HealthCache {
    latest: std::sync::Mutex<Option<CachedHealth>>,
    refreshing: std::sync::atomic::AtomicBool,
    inline: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct CachedHealth {
    at: std::time::Instant,
    took: std::time::Duration,
    report: std::sync::Arc<SyncHealth>,
}

impl HealthCache {
    /// A report taking longer than this is served from the cache and
    /// refreshed in the background.
    pub const SLOW: std::time::Duration = std::time::Duration::from_secs(5);

    fn latest(&self) -> Option<CachedHealth> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn keep(&self, started: std::time::Instant, report: std::sync::Arc<SyncHealth>) {
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(CachedHealth {
            at: std::time::Instant::now(),
            took: started.elapsed(),
            report,
        });
    }

    /// A report at most `max_age` old, or the newest one when reports are
    /// slow to make (see [`HealthCache`]).
    pub async fn get(
        &self,
        state: &AppState,
        max_age: std::time::Duration,
    ) -> Result<std::sync::Arc<SyncHealth>> {
        match self.latest() {
            Some(cached) if cached.at.elapsed() < max_age => return Ok(cached.report),
            Some(cached) if cached.took >= Self::SLOW => {
                self.refresh_in_background(state);
                return Ok(cached.report);
            }
            _ => {}
        }
        // One at a time: concurrent requests share the result.
        let _turn = self.inline.lock().await;
        if let Some(cached) = self.latest()
            && cached.at.elapsed() < max_age
        {
            return Ok(cached.report);
        }
        let started = std::time::Instant::now();
        let report = std::sync::Arc::new(health_report(state).await?);
        self.keep(started, report.clone());
        Ok(report)
    }

    fn refresh_in_background(&self, state: &AppState) {
        use std::sync::atomic::Ordering;
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match health_report(&state).await {
                Ok(report) => state.health.keep(started, std::sync::Arc::new(report)),
                Err(error) => tracing::warn!(?error, "refreshing the sync-health report failed"),
            }
            state.health.refreshing.store(false, Ordering::Release);
        });
    }
}

fn minutes(micros: i64) -> String {
    let minutes = micros / 60_000_000;
    if minutes < 1 {
        format!("{} s", (micros / 1_000_000).max(0))
    } else if minutes < 120 {
        format!("{minutes} min")
    } else {
        format!("{} h", minutes / 60)
    }
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// Channels that sell from any of `locations` (per `[channels]`).
fn channels_selling_from(
    state: &AppState,
    locations: &[&retail_shared::model::Location],
) -> Vec<String> {
    state
        .channels
        .iter()
        .filter(|(_, rule)| {
            locations.iter().any(|location| {
                rule.location_types
                    .iter()
                    .any(|t| t == location.r#type.as_str())
                    || location
                        .capabilities
                        .iter()
                        .any(|c| rule.capabilities.iter().any(|r| r == c.as_str()))
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
}

fn status_rank(status: &str) -> u8 {
    match status {
        "down" => 0,
        "degraded" => 1,
        _ => 2,
    }
}

/// Computes the sync-health report.
pub async fn health_report(state: &AppState) -> Result<SyncHealth> {
    let now = state.store.now();
    let counts = state.store.posting_counts().await?;
    let parked = state.store.parked_count().await?;
    let last_events = state.store.last_event_per_location().await?;
    let stale_after = i64::try_from(state.stale_after_seconds)
        .unwrap_or(i64::MAX / 2_000_000)
        .saturating_mul(1_000_000);
    let registry = state.store.all_locations().await?;
    let mut locations: Vec<LocationHealth> = registry
        .iter()
        .map(|location| {
            let last = last_events.get(&location.location_id).copied().flatten();
            LocationHealth {
                stale: last.is_none_or(|at| now - at > stale_after),
                last_event_at: last.map(micros_to_rfc3339),
                location_id: location.location_id.clone(),
            }
        })
        .collect();
    locations.sort_by(|a, b| {
        a.last_event_at
            .cmp(&b.last_event_at)
            .then_with(|| a.location_id.cmp(&b.location_id))
    });
    let last_run = state.store.reconciliation_runs(1).await?.into_iter().next();
    let rolling = state.feed.rolling();
    let backlog = state.store.feed_backlog().await?;
    let head = state.store.feed_head().await?;
    let subscriptions = state.store.subscriptions().await?;
    let webhook_dead = subscriptions.iter().map(|s| s.dead_letters).sum::<i64>();
    let lagging = subscriptions
        .iter()
        .filter(|s| s.status == "active" && s.cursor < head && s.attempts > 0)
        .count() as i64;
    let erp = state.sync.view(now);
    let open_exceptions = state.store.open_exception_count().await?;

    let mut flows = Vec::new();
    // ERP posting: the books lag the shelves; channels are unaffected.
    {
        let waiting = counts.pending + counts.in_flight + counts.dead;
        let spread = if waiting > 0 {
            state.store.open_posting_spread().await?
        } else {
            Default::default()
        };
        let oldest_micros = (counts.oldest_pending_age_seconds * 1e6) as i64;
        let breaker_open = erp.breaker.state != "closed";
        let status = if breaker_open {
            "down"
        } else if counts.dead > 0 || counts.oldest_pending_age_seconds > 300.0 {
            "degraded"
        } else {
            "ok"
        };
        let last_success = state.sync.last_success_micros();
        let since = (status != "ok").then(|| {
            let oldest_at = now - oldest_micros;
            last_success.map_or(oldest_at, |s| s.max(oldest_at))
        });
        let stores = plural(spread.locations, "location", "locations");
        let headline = match status {
            "down" => format!(
                "ERP down {}: {} postings waiting, {stores} affected",
                minutes(now - since.unwrap_or(now)),
                thousands(waiting)
            ),
            "degraded" if counts.dead > 0 => format!(
                "{} dead ({} held behind), {stores} affected",
                plural(counts.dead, "ERP posting", "ERP postings"),
                thousands(counts.blocked_by_dead)
            ),
            "degraded" => format!(
                "ERP postings {} behind: {} waiting, {stores} affected",
                minutes(oldest_micros),
                thousands(waiting)
            ),
            _ => format!("ERP in step: {} postings in flight", thousands(waiting)),
        };
        flows.push(FlowImpact {
            flow: "erp_posting".into(),
            label: "ERP posting".into(),
            status: status.into(),
            since: since.map(micros_to_rfc3339),
            headline,
            waiting,
            locations_affected: spread.locations,
            skus_affected: spread.skus,
            channels_affected: Vec::new(),
            top_locations: spread.top_locations.into_iter().map(|(l, _)| l).collect(),
        });
    }
    // Store feeds: silent locations sell on old figures.
    {
        let stale: Vec<&retail_shared::model::Location> = registry
            .iter()
            .filter(|l| {
                last_events
                    .get(&l.location_id)
                    .copied()
                    .flatten()
                    .is_none_or(|at| now - at > stale_after)
            })
            .collect();
        let count = stale.len() as i64;
        let status = if count == 0 { "ok" } else { "degraded" };
        let channels = channels_selling_from(state, &stale);
        let headline = if count == 0 {
            "Every location reported within the staleness window".to_owned()
        } else {
            format!(
                "{} silent for over {}{}",
                plural(count, "location", "locations"),
                minutes(stale_after),
                if channels.is_empty() {
                    String::new()
                } else {
                    format!(": {} availability may be off", channels.join(", "))
                }
            )
        };
        flows.push(FlowImpact {
            flow: "store_feeds".into(),
            label: "Store and warehouse feeds".into(),
            status: status.into(),
            since: None,
            headline,
            waiting: 0,
            locations_affected: count,
            skus_affected: 0,
            channels_affected: channels,
            top_locations: stale
                .iter()
                .take(5)
                .map(|l| l.location_id.clone())
                .collect(),
        });
    }
    // Change feed: every channel's availability lags.
    {
        let age = backlog.oldest.map_or(0, |at| (now - at).max(0));
        let status = if age > 60_000_000 {
            "down"
        } else if age > 5_000_000 {
            "degraded"
        } else {
            "ok"
        };
        let channels: Vec<String> = if status == "ok" {
            Vec::new()
        } else {
            state.channels.keys().cloned().collect()
        };
        let headline = if status == "ok" {
            format!(
                "Availability current: p99 {} from event to feed",
                rolling
                    .propagation_p99_ms
                    .map_or("n/a".to_owned(), |ms| format!("{ms:.0} ms"))
            )
        } else {
            format!(
                "Availability {} behind: {} changes unpublished, every channel affected",
                minutes(age),
                thousands(backlog.rows)
            )
        };
        flows.push(FlowImpact {
            flow: "change_feed".into(),
            label: "Availability change feed".into(),
            status: status.into(),
            since: backlog
                .oldest
                .filter(|_| status != "ok")
                .map(micros_to_rfc3339),
            headline,
            waiting: backlog.rows,
            locations_affected: 0,
            skus_affected: 0,
            channels_affected: channels,
            top_locations: Vec::new(),
        });
    }
    // Master data: parked events are stock nobody can sell yet.
    {
        let spread = if parked > 0 {
            state.store.parked_spread().await?
        } else {
            Default::default()
        };
        let status = if parked > 0 { "degraded" } else { "ok" };
        let headline = if parked == 0 {
            "No events waiting for master data".to_owned()
        } else {
            format!(
                "{} waiting for master data: {} at {}",
                plural(parked, "event", "events"),
                plural(spread.skus, "sku", "skus"),
                plural(spread.locations, "location", "locations")
            )
        };
        flows.push(FlowImpact {
            flow: "master_data".into(),
            label: "Master data".into(),
            status: status.into(),
            since: None,
            headline,
            waiting: parked,
            locations_affected: spread.locations,
            skus_affected: spread.skus,
            channels_affected: Vec::new(),
            top_locations: spread.top_locations.into_iter().map(|(l, _)| l).collect(),
        });
    }
    // Webhooks: partners miss changes.
    {
        let status = if webhook_dead > 0 || lagging > 0 {
            "degraded"
        } else {
            "ok"
        };
        let headline = if status == "ok" {
            format!(
                "{} in step",
                plural(subscriptions.len() as i64, "subscriber", "subscribers")
            )
        } else {
            format!(
                "{} failing, {} undelivered",
                plural(lagging, "subscriber", "subscribers"),
                plural(webhook_dead, "dead letter", "dead letters")
            )
        };
        flows.push(FlowImpact {
            flow: "webhooks".into(),
            label: "Webhook subscribers".into(),
            status: status.into(),
            since: None,
            headline,
            waiting: webhook_dead,
            locations_affected: 0,
            skus_affected: 0,
            channels_affected: if status == "ok" {
                Vec::new()
            } else {
                vec!["partner".into()]
            },
            top_locations: Vec::new(),
        });
    }
    let mut ranked: Vec<&FlowImpact> = flows.iter().filter(|f| f.status != "ok").collect();
    ranked.sort_by_key(|f| status_rank(&f.status));
    let summary = ranked.iter().map(|f| f.headline.clone()).collect();

    Ok(SyncHealth {
        postings: PostingHealth {
            pending: counts.pending,
            in_flight: counts.in_flight,
            dead: counts.dead,
            oldest_pending_age_seconds: counts.oldest_pending_age_seconds,
            blocked_by_dead: counts.blocked_by_dead,
            posted: counts.posted,
            discarded: counts.discarded,
        },
        events: EventHealth { parked },
        locations,
        erp,
        reconciliation: ReconciliationHealth {
            open_exceptions,
            last_run,
        },
        ingest: IngestHealth {
            events_per_second: rolling.events_per_second,
            events_last_minute: rolling.events_last_minute,
            propagation_p50_ms: rolling.propagation_p50_ms,
            propagation_p99_ms: rolling.propagation_p99_ms,
        },
        feed: FeedHealth {
            head,
            backlog: backlog.rows,
            oldest_backlog_age_seconds: backlog
                .oldest
                .map_or(0.0, |at| (now - at).max(0) as f64 / 1e6),
        },
        webhooks: WebhookHealth {
            subscriptions: subscriptions.len() as i64,
            lagging,
            dead_letters: webhook_dead,
        },
        impact: Impact { summary, flows },
        generated_at: micros_to_rfc3339(now),
    })
}

/// How inventory is flowing: ERP outbox, parked events, location
/// freshness, the ERP link, reconciliation, ingest rate and propagation,
/// the change feed, webhooks, and the business impact of whatever is
/// degraded (which stores, skus and channels).
///
/// Location binding: the report is one for every location and the shared
/// links (ERP, change feed, webhooks), so a token bound to locations gets
/// 403; it reads its locations' postings, exceptions and parked events
/// from their lists.
#[utoipa::path(get, path = "/v1/ops/sync-health", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Sync health", body = SyncHealth),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn sync_health(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
) -> Result<ApiJson<SyncHealth>> {
    require_unbound(&auth, "the sync-health report")?;
    let report = state.health.get(&state, std::time::Duration::ZERO).await?;
    Ok(ApiJson((*report).clone()))
}

/// The sync-health report as Server-Sent Events (`event: health`), about
/// once a second, for live dashboards.
///
/// Location binding: as the report, 403 for a token bound to locations.
#[utoipa::path(get, path = "/v1/ops/sync-health/stream", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless event stream", body = SyncHealth, content_type = "text/event-stream"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn sync_health_stream(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    draining: Option<axum::Extension<retail_shared::server::Draining>>,
) -> Result<
    axum::response::sse::Sse<
        impl futures::Stream<
            Item = std::result::Result<axum::response::sse::Event, std::convert::Infallible>,
        >,
    >,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    require_unbound(&auth, "the sync-health report")?;
    let period = std::time::Duration::from_secs(1);
    let stream = futures::stream::unfold((state, true), move |(state, first)| async move {
        if !first {
            tokio::time::sleep(period).await;
        }
        let event = match state.health.get(&state, period).await {
            Ok(report) => Event::default()
                .event("health")
                .data(serde_json::to_string(&*report).unwrap_or_default()),
            Err(error) => {
                tracing::warn!(?error, "computing sync health for a stream failed");
                Event::default().comment("sync health unavailable; retrying")
            }
        };
        Some((Ok(event), (state, false)))
    });
    let stream =
        futures::StreamExt::take_until(stream, retail_shared::server::Draining::of(draining));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Query of `GET /v1/ops/postings`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PostingQuery {
    /// `pending`, `in_flight`, `posted`, `dead` or `discarded`.
    pub status: Option<String>,
    /// Only this location.
    pub location_id: Option<String>,
    /// Only this sku.
    pub sku: Option<String>,
    /// Postings after this id (the previous page's `next_after`).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A page of postings.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostingPage {
    /// Postings in posting order.
    pub postings: Vec<PostingView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

const POSTING_STATUSES: [&str; 5] = ["pending", "in_flight", "posted", "dead", "discarded"];

/// ERP postings (the outbox), filtered; `status=dead` lists the dead
/// letters, each with the number of postings waiting behind it.
///
/// Location binding: a bound token sees only its locations' postings
/// (pages stay whole: the filter is applied before the limit);
/// `location_id` naming another location answers 403.
#[utoipa::path(get, path = "/v1/ops/postings", tag = "operations",
    params(PostingQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Postings", body = PostingPage),
        (status = 400, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or `location_id` outside the token's binding", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_postings(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    ApiQuery(query): ApiQuery<PostingQuery>,
) -> Result<ApiJson<PostingPage>> {
    let mut v = Validator::default();
    if let Some(status) = &query.status
        && !POSTING_STATUSES.contains(&status.as_str())
    {
        v.error(
            "status",
            format!("must be one of {}", POSTING_STATUSES.join(", ")),
        );
    }
    let limit = query.limit.unwrap_or(100);
    v.range("limit", limit, 1, 1000);
    v.range("after", query.after.unwrap_or(0), 0, i64::MAX);
    v.finish()?;
    if let Some(location) = &query.location_id {
        auth.require_location(location)?;
    }
    let postings = state
        .store
        .list_postings(&PostingFilter {
            status: query.status,
            location_id: query.location_id,
            sku: query.sku,
            locations: binding(&auth)?,
            after: query.after.unwrap_or(0),
            limit,
        })
        .await?;
    let next_after = (postings.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| postings.last().map(|p| p.posting_id))
        .flatten();
    Ok(ApiJson(PostingPage {
        postings,
        next_after,
    }))
}

/// An operator's note.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// Why (1 to 1000 characters).
    #[schema(min_length = 1, max_length = 1000)]
    pub note: String,
}

impl Validate for NoteBody {
    fn validate(&self, v: &mut Validator) {
        if self.note.trim().is_empty() {
            v.error("note", "must not be blank");
        }
        v.text("note", &self.note, 1000);
    }
}

fn posting_refusal(refusal: &PostingActionRefusal, posting_id: i64) -> Problem {
    match refusal {
        PostingActionRefusal::NotFound => Problem::not_found(format!("no posting {posting_id}")),
        PostingActionRefusal::NotDead(status) => Problem::conflict(
            "posting-not-dead",
            format!(
                "posting {posting_id} is {status}; only dead postings can be replayed or discarded"
            ),
        ),
    }
}

/// Puts a dead posting back in the queue with a fresh retry budget; the
/// postings of its key that waited behind it follow in order.
///
/// Location binding: a posting at a location outside a bound token's
/// binding answers 403 and stays as it is.
#[utoipa::path(post, path = "/v1/ops/postings/{posting_id}/replay", tag = "operations",
    params(("posting_id" = i64, Path, description = "Posting id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Queued again", body = PostingView),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or the posting's location is outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such posting", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`posting-not-dead`", body = ProblemBody, content_type = "application/problem+json")))]
async fn replay_posting(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(posting_id): ApiPath<i64>,
) -> Result<Response> {
    require_posting_in_binding(&state, &auth, posting_id).await?;
    resolve_dead(&state, &auth, posting_id, true, None, claim.as_ref()).await
}

/// Replays or discards a dead posting, its key claimed with the change,
/// counted in `erp_dead_letters_resolved_total`.
async fn resolve_dead(
    state: &AppState,
    auth: &Principal,
    posting_id: i64,
    replay: bool,
    note: Option<&str>,
    claim: Option<&Extension<InlineClaim>>,
) -> Result<Response> {
    let render = |outcome: &PostingActionOutcome| {
        keyed::json(StatusCode::OK, outcome, |r| posting_refusal(r, posting_id))
    };
    let claim = keyed::claim(claim, &render);
    let written = state
        .store
        .resolve_dead(posting_id, replay, auth.actor(), note, claim.as_ref())
        .await?;
    let (outcome, response) = keyed::respond(written, &render);
    if let Some(Ok(_)) = outcome {
        let action = if replay { "replay" } else { "discard" };
        metrics::counter!("erp_dead_letters_resolved_total", "action" => action).increment(1);
    }
    Ok(response)
}

/// Gives up on a dead posting: the ERP never gets it (the next
/// reconciliation shows the difference) and its key moves on.
///
/// Location binding: a posting at a location outside a bound token's
/// binding answers 403 and stays as it is.
#[utoipa::path(post, path = "/v1/ops/postings/{posting_id}/discard", tag = "operations",
    params(("posting_id" = i64, Path, description = "Posting id")),
    request_body = NoteBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Discarded", body = PostingView),
        (status = 400, description = "Invalid note", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or the posting's location is outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such posting", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`posting-not-dead`", body = ProblemBody, content_type = "application/problem+json")))]
async fn discard_posting(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(posting_id): ApiPath<i64>,
    ValidJson(body): ValidJson<NoteBody>,
) -> Result<Response> {
    require_posting_in_binding(&state, &auth, posting_id).await?;
    let note = Some(body.note.as_str());
    resolve_dead(&state, &auth, posting_id, false, note, claim.as_ref()).await
}

/// 403 when a bound caller may not act on the posting's location (404 when
/// there is no such posting). A posting's location never changes, so the
/// check holds for the action that follows.
async fn require_posting_in_binding(
    state: &AppState,
    principal: &Principal,
    posting_id: i64,
) -> Result<()> {
    if principal.locations.is_some() {
        let posting = one_posting(state, posting_id).await?;
        principal.require_location(&posting.location_id)?;
    }
    Ok(())
}

async fn one_posting(state: &AppState, posting_id: i64) -> Result<PostingView> {
    state
        .store
        .list_postings(&PostingFilter {
            after: posting_id - 1,
            limit: 1,
            ..PostingFilter::default()
        })
        .await?
        .into_iter()
        .find(|p| p.posting_id == posting_id)
        .ok_or_else(|| Problem::not_found(format!("no posting {posting_id}")).into())
}

/// Runs a reconciliation now (every location of the registry against the
/// ERP) and answers what it found. Small differences are corrected at
/// once; those above `[reconciliation] review_above` wait for review.
///
/// Location binding: a run covers every location (and corrects small
/// differences at once), so a token bound to locations gets 403.
#[utoipa::path(post, path = "/v1/ops/reconciliation/runs", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run and its exceptions", body = ReconciliationReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn run_reconciliation(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    correlation: Correlation,
) -> Result<ApiJson<ReconciliationReport>> {
    require_unbound(&auth, "a reconciliation run")?;
    let report = state
        .reconciler()
        .run(
            "on_demand",
            &ingest_context(&auth, &correlation),
            &correlation,
        )
        .await?;
    Ok(ApiJson(report))
}

/// Recent runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first (at most 50).
    pub runs: Vec<ReconciliationRun>,
}

/// The latest reconciliation runs.
///
/// Location binding: runs are counted over every location (and a failed
/// run's error names the location it stopped at), so a token bound to
/// locations gets 403; it reads its locations' exceptions instead.
#[utoipa::path(get, path = "/v1/ops/reconciliation/runs", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Runs", body = RunList),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_reconciliation_runs(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
) -> Result<ApiJson<RunList>> {
    require_unbound(&auth, "the list of reconciliation runs")?;
    Ok(ApiJson(RunList {
        runs: state.store.reconciliation_runs(50).await?,
    }))
}

/// Query of `GET /v1/ops/reconciliation/exceptions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExceptionQuery {
    /// `open`, `corrected` or `rejected`.
    pub status: Option<String>,
}

/// Exceptions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExceptionList {
    /// Newest first (at most 1000).
    pub exceptions: Vec<ReconciliationException>,
}

/// Reconciliation exceptions; `status=open` is the review queue.
///
/// Location binding: a bound token sees only its locations' exceptions
/// (the filter is applied before the limit).
#[utoipa::path(get, path = "/v1/ops/reconciliation/exceptions", tag = "operations",
    params(ExceptionQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Exceptions", body = ExceptionList),
        (status = 400, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to no location", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_exceptions(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    ApiQuery(query): ApiQuery<ExceptionQuery>,
) -> Result<ApiJson<ExceptionList>> {
    if let Some(status) = &query.status
        && !["open", "corrected", "rejected"].contains(&status.as_str())
    {
        let mut v = Validator::default();
        v.error("status", "must be one of open, corrected, rejected");
        v.finish()?;
    }
    let locations = binding(&auth)?;
    Ok(ApiJson(ExceptionList {
        exceptions: state
            .store
            .reconciliation_exceptions(query.status.as_deref(), locations.as_deref(), 1000)
            .await?,
    }))
}

/// 403 when a bound caller may not act on the exception's location (404
/// when there is no such exception). An exception's location never
/// changes, so the check holds for the settlement that follows.
async fn require_exception_in_binding(
    state: &AppState,
    principal: &Principal,
    exception_id: i64,
) -> Result<()> {
    if principal.locations.is_some() {
        let exception = state
            .store
            .reconciliation_exception(exception_id)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no exception {exception_id}")))?;
        principal.require_location(&exception.location_id)?;
    }
    Ok(())
}

fn exception_refusal(refusal: &ExceptionRefusal, exception_id: i64) -> Problem {
    match refusal {
        ExceptionRefusal::NotFound => Problem::not_found(format!("no exception {exception_id}")),
        ExceptionRefusal::NotOpen(status) => Problem::conflict(
            "exception-not-open",
            format!("exception {exception_id} is already {status}"),
        ),
        ExceptionRefusal::NotApplied(reason) => Problem::conflict(
            "adjustment-not-applied",
            format!("the correcting adjustment was not applied: {reason}"),
        ),
    }
}

/// Approves an open exception: an `adjustment` is journalled that brings
/// the platform to the ERP's figure (not posted again: the ERP holds it).
///
/// Location binding: an exception at a location outside a bound token's
/// binding answers 403 and stays open.
#[utoipa::path(post, path = "/v1/ops/reconciliation/exceptions/{exception_id}/approve", tag = "operations",
    params(("exception_id" = i64, Path, description = "Exception id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Corrected", body = ReconciliationException),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or the exception's location is outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such exception", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`exception-not-open` or `adjustment-not-applied`", body = ProblemBody, content_type = "application/problem+json")))]
async fn approve_exception(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(exception_id): ApiPath<i64>,
) -> Result<Response> {
    require_exception_in_binding(&state, &auth, exception_id).await?;
    let ctx = ingest_context(&auth, &correlation);
    settle_exception(&state, exception_id, true, &ctx, None, claim.as_ref()).await
}

/// Approves or rejects an exception, its key claimed with the change.
async fn settle_exception(
    state: &AppState,
    exception_id: i64,
    approve: bool,
    ctx: &IngestContext,
    note: Option<&str>,
    claim: Option<&Extension<InlineClaim>>,
) -> Result<Response> {
    let render = |outcome: &ExceptionOutcome| {
        keyed::json(StatusCode::OK, outcome, |r| {
            exception_refusal(r, exception_id)
        })
    };
    let claim = keyed::claim(claim, &render);
    let written = state
        .store
        .settle_exception_keyed(exception_id, approve, ctx, note, claim.as_ref())
        .await?;
    Ok(keyed::respond(written, &render).1)
}

/// Rejects an open exception with a note (nothing changes on the platform).
///
/// Location binding: an exception at a location outside a bound token's
/// binding answers 403 and stays open.
#[utoipa::path(post, path = "/v1/ops/reconciliation/exceptions/{exception_id}/reject", tag = "operations",
    params(("exception_id" = i64, Path, description = "Exception id")),
    request_body = NoteBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejected", body = ReconciliationException),
        (status = 400, description = "Invalid note", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or the exception's location is outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such exception", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`exception-not-open`", body = ProblemBody, content_type = "application/problem+json")))]
async fn reject_exception(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    correlation: Correlation,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(exception_id): ApiPath<i64>,
    ValidJson(body): ValidJson<NoteBody>,
) -> Result<Response> {
    require_exception_in_binding(&state, &auth, exception_id).await?;
    let ctx = ingest_context(&auth, &correlation);
    let note = Some(body.note.as_str());
    settle_exception(&state, exception_id, false, &ctx, note, claim.as_ref()).await
}

/// Pulls master data from the ERP now (products with cost, warehouses).
///
/// Location binding: master data is shared by every location, so a token
/// bound to locations gets 403.
#[utoipa::path(post, path = "/v1/ops/erp/master-sync", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the pull did", body = MasterSyncReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "The ERP did not answer", body = ProblemBody, content_type = "application/problem+json")))]
async fn master_sync(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    correlation: Correlation,
) -> Result<ApiJson<MasterSyncReport>> {
    require_unbound(&auth, "a master-data pull")?;
    let ctx = ChangeContext {
        actor: auth.actor().to_owned(),
        request_id: correlation.request_id.clone(),
    };
    let report = crate::erp::master_sync::pull(&state.store, &state.erp, &ctx, &correlation)
        .await
        .map_err(
            |error| match error.downcast::<retail_shared::client::ClientError>() {
                Ok(client) => crate::error::Error::Downstream(client),
                Err(other) => crate::error::Error::Internal(other),
            },
        )?;
    if report.products_changed > 0 || report.locations_added > 0 {
        state.store.replay_parked().await?;
    }
    Ok(ApiJson(report))
}

/// Checks the database and asks system-api for its own report, so one call
/// shows the request id and trace crossing the layers.
///
/// Location binding: nothing here is per location; bound tokens get the
/// same report.
#[utoipa::path(get, path = "/v1/ops/dependencies", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This layer and the ones below, with each failure's text", body = DependencyReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing", body = ProblemBody, content_type = "application/problem+json")))]
async fn dependencies(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    correlation: Correlation,
) -> Result<ApiJson<DependencyReport>> {
    let mut checks = serde_json::Map::new();
    let mut healthy = true;
    match state.store.ping().await {
        Ok(()) => {
            checks.insert("database".into(), json!("ok"));
        }
        Err(error) => {
            healthy = false;
            checks.insert("database".into(), json!(error.to_string()));
        }
    }
    let ctx = CallContext {
        principal: Some(&auth),
        correlation: &correlation,
    };
    let downstream = match state
        .system
        .get::<DependencyReport>("/v1/ops/dependencies", &[], &["ops:read"], ctx)
        .await
    {
        Ok(report) => {
            healthy &= report.status == "ok";
            checks.insert("system-api".into(), json!("ok"));
            Some(Box::new(report))
        }
        Err(error) => {
            healthy = false;
            checks.insert("system-api".into(), json!(error.to_string()));
            None
        }
    };
    Ok(ApiJson(DependencyReport {
        service: SERVICE.into(),
        status: if healthy { "ok" } else { "degraded" }.into(),
        request_id: correlation.request_id,
        trace_id: correlation.trace_id,
        checks,
        downstream,
    }))
}
