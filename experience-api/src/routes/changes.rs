//! Availability changes for channels, as Server-Sent Events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use retail_shared::auth::{Authorized, Principal, scope};
use retail_shared::client::CallContext;
use retail_shared::correlation::Correlation;
use retail_shared::problem::{ApiQuery, ProblemBody};
use retail_shared::validate::Validator;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;
use crate::relay::{FeedChange, Relay};

/// Skus or locations one filter may name.
const MAX_FILTER_VALUES: usize = 100;
/// Changes taken per read of the buffer or of process-api.
const READ: usize = 1000;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(availability_changes))
}

/// Filters of the change stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// Only these skus (comma-separated, at most 100).
    pub sku: Option<String>,
    /// Only these locations (comma-separated, at most 100; a token bound
    /// to locations sees only those).
    pub location_id: Option<String>,
    /// Resume after this change id (the `Last-Event-ID` header wins).
    pub after: Option<i64>,
}

/// One availability change, as channels see it (`data:` of an
/// `event: availability`; the SSE `id:` is `seq`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AvailabilityChange {
    /// Change id: ascending, the `Last-Event-ID` to resume after.
    pub seq: i64,
    /// Sku.
    pub sku: String,
    /// Location.
    pub location_id: String,
    /// Units sellable there now.
    pub available: i64,
    /// When the change happened at the platform (RFC 3339).
    pub changed_at: String,
}

impl From<&FeedChange> for AvailabilityChange {
    fn from(change: &FeedChange) -> Self {
        Self {
            seq: change.seq,
            sku: change.sku.clone(),
            location_id: change.location_id.clone(),
            available: change.available,
            changed_at: change.changed_at.clone(),
        }
    }
}

struct Follower {
    state: AppState,
    principal: Principal,
    correlation: Correlation,
    heads: tokio::sync::watch::Receiver<i64>,
    skus: Vec<String>,
    locations: Vec<String>,
    /// Every change up to here was sent or filtered out.
    scanned: i64,
    queue: VecDeque<AvailabilityChange>,
    /// `(tail, resume_after)` of a `reset` event to send first.
    reset: Option<(i64, i64)>,
}

impl Follower {
    fn keeps(&self, change: &FeedChange) -> bool {
        (self.skus.is_empty() || self.skus.contains(&change.sku))
            && (self.locations.is_empty() || self.locations.contains(&change.location_id))
    }

    /// Fills the queue from the relay's buffer, else from process-api.
    async fn fill(&mut self, relay: &Arc<Relay>) -> Result<bool> {
        if let Some((changes, scanned)) = relay.read_after(self.scanned, READ, |c| self.keeps(c)) {
            self.queue
                .extend(changes.iter().map(|c| AvailabilityChange::from(&**c)));
            let moved = scanned > self.scanned;
            self.scanned = self.scanned.max(scanned);
            return Ok(moved || !self.queue.is_empty());
        }
        let page = self
            .state
            .process
            .changes(
                self.scanned,
                &self.skus,
                &self.locations,
                CallContext {
                    principal: Some(&self.principal),
                    correlation: &self.correlation,
                },
            )
            .await?;
        if self.scanned < page.tail - 1 {
            self.reset = Some((page.tail, page.tail - 1));
            self.scanned = page.tail - 1;
            return Ok(true);
        }
        let full = page.changes.len() >= READ;
        let last = page.changes.last().map(|c| c.seq);
        self.queue
            .extend(page.changes.iter().map(AvailabilityChange::from));
        let reached = if full {
            last.unwrap_or(self.scanned)
        } else {
            last.unwrap_or(0).max(page.head)
        };
        let moved = reached > self.scanned;
        self.scanned = self.scanned.max(reached);
        Ok(moved || !self.queue.is_empty())
    }
}

fn follow(follower: Follower) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    futures::stream::unfold(follower, |mut f| async move {
        loop {
            if let Some((tail, resume_after)) = f.reset.take() {
                let event = Event::default().event("reset").data(format!(
                    "{{\"tail\":{tail},\"resume_after\":{resume_after}}}"
                ));
                return Some((Ok(event), f));
            }
            if let Some(change) = f.queue.pop_front() {
                let event = Event::default()
                    .id(change.seq.to_string())
                    .event("availability")
                    .data(serde_json::to_string(&change).unwrap_or_default());
                return Some((Ok(event), f));
            }
            let relay = f.state.relay.clone();
            f.heads.borrow_and_update();
            match f.fill(&relay).await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), f.heads.changed()).await;
                }
                Err(error) => {
                    tracing::warn!(?error, "reading missed changes from process-api failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// Availability changes as Server-Sent Events: `event: availability`,
/// `id:` the change's seq, `data:` an [`AvailabilityChange`]. Filter by
/// `sku` and `location_id`. Reconnect with `Last-Event-ID` (browsers'
/// `EventSource` does it by itself) to receive everything after it once,
/// in order; without it the stream starts with the next change. If the
/// resume point is older than the platform keeps (a day by default), more
/// than `[feed] max_resume_depth` changes behind the newest, or newer than
/// any change (another environment's id), the first event is
/// `event: reset` (`{"tail": oldest change kept, "resume_after": N}`):
/// re-read availability, then go on with the changes after N. A
/// `Last-Event-ID` that is not a non-negative integer is refused (400). A
/// comment every `[feed] keep_alive_seconds` keeps proxies from closing
/// the connection.
///
/// The stream ends when the token expires (or the service shuts down):
/// reconnect with a fresh token and `Last-Event-ID`. A client holds at
/// most `[feed] max_streams_per_client` streams open on one replica.
///
/// A sku literally named `changes` is read with the batch query
/// (`POST /v1/availability/query`), since this path takes the name.
#[utoipa::path(get, path = "/v1/availability/changes", tag = "availability",
    params(ChangesQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this change id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream, until the token expires", body = AvailabilityChange, content_type = "text/event-stream"),
        (status = 400, description = "Malformed query or Last-Event-ID", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope availability:read missing, or a location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "`too-many-streams`: the client holds its most streams here (see `Retry-After`)", body = ProblemBody, content_type = "application/problem+json")))]
async fn availability_changes(
    State(state): State<AppState>,
    auth: Authorized<scope::AvailabilityRead>,
    correlation: Correlation,
    draining: Option<axum::Extension<retail_shared::server::Draining>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ChangesQuery>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let mut v = Validator::default();
    let skus = v.id_list("sku", query.sku.as_deref(), MAX_FILTER_VALUES);
    let locations = v.id_list(
        "location_id",
        query.location_id.as_deref(),
        MAX_FILTER_VALUES,
    );
    v.range("after", query.after.unwrap_or(0), 0, i64::MAX);
    v.finish()?;
    let admission = state.streams.admit(&auth, &headers)?;
    let resume = retail_shared::sse::last_event_id(&headers)?.or(query.after);
    let locations = auth.principal.narrow_locations(locations)?;
    let ctx = CallContext {
        principal: Some(&auth.principal),
        correlation: &correlation,
    };
    let mut reset = None;
    let scanned = match resume {
        // Within reach of the relay's head: served from its buffer or
        // process-api's pages (which still catch a pruned point).
        Some(seq)
            if state.relay.following()
                && !state.streams.resume_point(seq, state.relay.head(), 0).reset =>
        {
            seq
        }
        // Too deep, or past what the relay has seen: process-api's head
        // and tail decide (the relay may only lag behind).
        Some(seq) => {
            let page = state.process.changes(i64::MAX - 1, &[], &[], ctx).await?;
            let point = state.streams.resume_point(seq, page.head, page.tail);
            if point.reset {
                reset = Some((page.tail, point.after));
            }
            point.after
        }
        // New changes only: from the relay's head, or process-api's while
        // the relay has not started following.
        None if state.relay.following() => state.relay.head(),
        None => {
            state
                .process
                .changes(i64::MAX - 1, &[], &[], ctx)
                .await?
                .head
        }
    };
    let heads = state.relay.subscribe();
    let keep_alive = Duration::from_secs(state.feed_keep_alive_seconds.max(1));
    let follower = Follower {
        state,
        principal: auth.principal,
        correlation,
        heads,
        skus,
        locations,
        scanned,
        queue: VecDeque::new(),
        reset,
    };
    metrics::counter!("availability_streams_opened_total").increment(1);
    let stream = admission.bound(follow(follower), draining);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive)))
}
