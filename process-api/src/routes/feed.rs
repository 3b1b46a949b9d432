//! The availability change feed over HTTP (pages and Server-Sent Events)
//! and its webhook subscribers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use retail_shared::auth::{Authorized, Principal, scope};
use retail_shared::idempotency::InlineClaim;
use retail_shared::problem::{ApiJson, ApiPath, ApiQuery, Problem, ProblemBody, ValidJson};
use retail_shared::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ops::NoteBody;
use crate::AppState;
use crate::error::Result;
use crate::routes::keyed;
use crate::storage::Store;
use crate::storage::feed::{Change, FeedFilter};
use crate::storage::webhooks::{DeadLetter, NewSubscription, Subscription};

/// Skus or locations one filter may name.
const MAX_FILTER_VALUES: usize = 100;
/// Changes per page or per stream read.
const STREAM_READ: i64 = 500;

/// Routes of this area.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_changes))
        .routes(routes!(stream_changes))
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, delete_webhook))
        .routes(routes!(resume_webhook))
        .routes(routes!(list_dead_letters))
        .routes(routes!(replay_dead_letter))
        .routes(routes!(discard_dead_letter))
}

/// Filters of the feed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuery {
    /// Changes after this seq (default: 0 for pages; for streams the
    /// `Last-Event-ID` header, else the current head).
    pub after: Option<i64>,
    /// Only these skus (comma-separated, at most 100).
    pub sku: Option<String>,
    /// Only these locations (comma-separated, at most 100).
    pub location_id: Option<String>,
    /// Page size, 1 to 1000 (default 500; pages only).
    pub limit: Option<i64>,
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangePage {
    /// Changes in seq order.
    pub changes: Vec<Change>,
    /// The newest seq published.
    pub head: i64,
    /// The oldest seq still kept; asking for `after` below `tail - 1`
    /// misses pruned changes (read positions afresh instead).
    pub tail: i64,
}

/// Checks the filters and narrows them to the token's locations.
fn filter_for(principal: &Principal, query: &ChangeQuery, after: i64) -> Result<FeedFilter> {
    let mut v = Validator::default();
    let skus = v.id_list("sku", query.sku.as_deref(), MAX_FILTER_VALUES);
    let location_ids = v.id_list(
        "location_id",
        query.location_id.as_deref(),
        MAX_FILTER_VALUES,
    );
    let limit = query.limit.unwrap_or(STREAM_READ);
    v.range("limit", limit, 1, 1000);
    v.range("after", after, 0, i64::MAX);
    v.finish()?;
    let location_ids = principal.narrow_locations(location_ids)?;
    Ok(FeedFilter {
        after,
        skus,
        location_ids,
        limit,
    })
}

/// A page of availability changes after `after` (each the position's
/// figures right after the change; the newest entry per position is its
/// current state).
#[utoipa::path(get, path = "/v1/inventory/changes", tag = "inventory",
    params(ChangeQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changes", body = ChangePage),
        (status = 400, description = "Malformed query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing, or a location outside the token's binding", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_changes(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    ApiQuery(query): ApiQuery<ChangeQuery>,
) -> Result<ApiJson<ChangePage>> {
    let filter = filter_for(&auth, &query, query.after.unwrap_or(0))?;
    let head = state.store.feed_head().await?;
    let tail = state.store.feed_tail().await?;
    let changes = state.store.changes(&filter).await?;
    Ok(ApiJson(ChangePage {
        changes,
        head,
        tail,
    }))
}

struct Reader {
    store: Store,
    heads: tokio::sync::watch::Receiver<i64>,
    filter: FeedFilter,
    buffer: VecDeque<Change>,
    /// `(tail, resume_after)` of a `reset` event to send first.
    reset: Option<(i64, i64)>,
    /// A `head` event to send once the buffer is out.
    heartbeat: Option<i64>,
    last_heartbeat: std::time::Instant,
}

/// How often a stream says how far it is complete (`event: head`).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Streams `filter`'s changes from `filter.after` on: whatever is already
/// in the feed first, then live as the publisher appends.
fn change_stream(reader: Reader) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    futures::stream::unfold(reader, |mut reader| async move {
        loop {
            if let Some((tail, resume_after)) = reader.reset.take() {
                let event = Event::default().event("reset").data(format!(
                    "{{\"tail\":{tail},\"resume_after\":{resume_after}}}"
                ));
                return Some((Ok(event), reader));
            }
            if let Some(change) = reader.buffer.pop_front() {
                reader.filter.after = change.seq;
                let data = serde_json::to_string(&change).unwrap_or_default();
                let event = Event::default()
                    .id(change.seq.to_string())
                    .event("change")
                    .data(data);
                return Some((Ok(event), reader));
            }
            if let Some(head) = reader.heartbeat.take() {
                reader.last_heartbeat = std::time::Instant::now();
                let event = Event::default()
                    .event("head")
                    .data(format!("{{\"head\":{head}}}"));
                return Some((Ok(event), reader));
            }
            let head = *reader.heads.borrow_and_update();
            let due = reader.last_heartbeat.elapsed() >= HEARTBEAT;
            match reader.store.changes(&reader.filter).await {
                Ok(changes) if !changes.is_empty() => {
                    // Complete up to `head` once these are out, unless the
                    // page was full.
                    let last = changes.last().map_or(head, |c| c.seq);
                    let complete = if changes.len() as i64 >= reader.filter.limit {
                        last
                    } else {
                        last.max(head)
                    };
                    reader.buffer.extend(changes);
                    if due {
                        reader.heartbeat = Some(complete);
                    }
                }
                Ok(_) => {
                    // Nothing matched up to `head`: skip the scanned range.
                    reader.filter.after = reader.filter.after.max(head);
                    if due {
                        reader.heartbeat = Some(reader.filter.after);
                        continue;
                    }
                    // Woken by this replica's publisher; the timeout
                    // covers heads that only the database knows yet.
                    let _ = tokio::time::timeout(HEARTBEAT, reader.heads.changed()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the change feed for a stream failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// Availability changes as Server-Sent Events: `event: change`, `id:` the
/// seq, `data:` the change as JSON. Resumes after `Last-Event-ID` (or
/// `?after=`) with nothing missed; without either, starts at the current
/// head (only new changes). A `Last-Event-ID` that is not a non-negative
/// integer is refused (400). When the resume point was pruned, lies more
/// than `[feed] max_resume_depth` changes behind the head, or is past the
/// head (another feed's id), the first event is `event: reset`
/// (`{"tail": oldest seq kept, "resume_after": N}`) and the stream goes on
/// after N: read positions afresh. About twice
/// a second an `event: head` (`{"head": N}`) says every change up to N
/// (within the filters) has been sent: a consumer that has it is current
/// as of that moment. Comments keep the connection alive.
///
/// The stream ends when the token expires (or the service shuts down):
/// reconnect with a fresh token and `Last-Event-ID`. A client holds at
/// most `[feed] max_streams_per_client` streams open on one replica.
#[utoipa::path(get, path = "/v1/inventory/changes/stream", tag = "inventory",
    params(ChangeQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this seq")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream, until the token expires", body = Change, content_type = "text/event-stream"),
        (status = 400, description = "Malformed query or Last-Event-ID", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope inventory:read missing, or a location outside the token's binding", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "`too-many-streams`: the client holds its most streams here (see `Retry-After`)", body = ProblemBody, content_type = "application/problem+json")))]
async fn stream_changes(
    State(state): State<AppState>,
    auth: Authorized<scope::InventoryRead>,
    draining: Option<axum::Extension<retail_shared::server::Draining>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ChangeQuery>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let admission = state.streams.admit(&auth, &headers)?;
    let start = match (retail_shared::sse::last_event_id(&headers)?, query.after) {
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => state.store.feed_head().await?,
    };
    let mut filter = filter_for(&auth, &query, start)?;
    filter.limit = STREAM_READ;
    let tail = state.store.feed_tail().await?;
    let head = state.store.feed_head().await?;
    // Pruned past the resume point, too deep behind the head to page
    // through, or a point this feed never reached (another environment's
    // id, a restored database): start over.
    let point = state.streams.resume_point(filter.after, head, tail);
    filter.after = point.after;
    let reset = point.reset.then_some((tail, point.after));
    let reader = Reader {
        store: state.store.clone(),
        heads: state.feed.subscribe(),
        filter,
        buffer: VecDeque::new(),
        reset,
        heartbeat: None,
        last_heartbeat: std::time::Instant::now(),
    };
    let stream = admission.bound(change_stream(reader), draining);
    metrics::counter!("feed_streams_opened_total").increment(1);
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new().interval(Duration::from_secs(state.feed_keep_alive_seconds.max(1))),
    ))
}

/// A webhook registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// `http://` or `https://` URL the changes are POSTed to.
    pub url: String,
    /// The signing secret, 16 to 256 characters: `whsec_` and the base64
    /// of a 24 to 64 byte key (Standard Webhooks), or any other text used
    /// as the key's raw bytes. Generated (`whsec_`) when absent.
    pub secret: Option<String>,
    /// Only changes of these skus (1 to 100).
    pub skus: Option<Vec<String>>,
    /// Only changes at these locations (1 to 100).
    pub location_ids: Option<Vec<String>>,
    /// Changes per request, 1 to 500 (default 1: one CloudEvent per
    /// request; above 1: CloudEvents batches).
    pub max_batch: Option<i64>,
    /// Deliver the changes after this seq (default: the current head, so
    /// only changes from now on).
    pub start_after: Option<i64>,
}

impl Validate for WebhookInput {
    fn validate(&self, v: &mut Validator) {
        v.text("url", &self.url, 2000);
        match reqwest::Url::parse(&self.url) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") || url.host().is_none() => {
                v.error("url", "must be an absolute http:// or https:// URL");
            }
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                v.error("url", "must not carry credentials");
            }
            Ok(_) => {}
            Err(_) => v.error("url", "must be an absolute http:// or https:// URL"),
        }
        if let Some(secret) = &self.secret {
            if !(16..=256).contains(&secret.len()) {
                v.error("secret", "must be 16 to 256 characters");
            } else if let Some(problem) = crate::webhooks::signing::secret_problem(secret) {
                v.error("secret", problem);
            }
        }
        for (field, values) in [("skus", &self.skus), ("location_ids", &self.location_ids)] {
            if let Some(values) = values {
                v.count(field, values.len(), 1, MAX_FILTER_VALUES);
                for (i, value) in values.iter().enumerate() {
                    v.at(field, |v| v.id(&i.to_string(), value));
                }
            }
        }
        v.range("max_batch", self.max_batch.unwrap_or(1), 1, 500);
        v.range("start_after", self.start_after.unwrap_or(0), 0, i64::MAX);
    }
}

/// Registers a webhook subscriber of the change feed. The answer carries
/// the signing `secret`, shown this once. A URL whose host is, or resolves
/// only to, a loopback, link-local, private or other non-public address
/// is refused (422) unless the configuration allows it; deliveries check
/// every address again when they connect.
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(post, path = "/v1/ops/webhooks", tag = "operations",
    request_body = WebhookInput,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = Subscription),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid registration (a refused address included), or an unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn create_webhook(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    claim: Option<Extension<InlineClaim>>,
    ValidJson(input): ValidJson<WebhookInput>,
) -> Result<Response> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    // The URL parsed in validation.
    if let Ok(url) = reqwest::Url::parse(&input.url)
        && let Err(refusal) = state
            .webhooks
            .sender()
            .policy()
            .check_registration(&url)
            .await
    {
        let mut v = Validator::default();
        v.error("url", refusal.to_string());
        v.finish()?;
    }
    let start_after = match input.start_after {
        Some(seq) => seq,
        None => state.store.feed_head().await?,
    };
    let new = NewSubscription {
        url: input.url,
        secret: input.secret.unwrap_or_else(crate::webhooks::new_secret),
        skus: input.skus,
        location_ids: input.location_ids,
        max_batch: input.max_batch.unwrap_or(1),
        start_after,
        actor: auth.actor().to_owned(),
    };
    let render = |made: &Subscription| {
        keyed::json::<_, Infallible>(StatusCode::CREATED, &Ok(made), |never| match *never {})
    };
    let claim = keyed::claim(claim.as_ref(), &render);
    let written = state
        .store
        .create_subscription_keyed(&new, claim.as_ref())
        .await?;
    let (made, response) = keyed::respond(written, &render);
    if let Some(subscription) = made {
        tracing::info!(
            subscription = subscription.subscription_id,
            url = %subscription.url,
            "webhook subscriber registered"
        );
    }
    Ok(response)
}

/// Webhook subscribers.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// By id.
    pub subscriptions: Vec<Subscription>,
}

/// Every webhook subscriber with its progress (`cursor` against the feed
/// head), failures and dead letters.
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(get, path = "/v1/ops/webhooks", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Subscribers", body = WebhookList),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_webhooks(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
) -> Result<ApiJson<WebhookList>> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    Ok(ApiJson(WebhookList {
        subscriptions: state.store.subscriptions().await?,
    }))
}

async fn found(state: &AppState, id: i64) -> Result<Subscription> {
    state
        .store
        .subscription(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no webhook subscription {id}")).into())
}

/// One webhook subscriber.
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(get, path = "/v1/ops/webhooks/{subscription_id}", tag = "operations",
    params(("subscription_id" = i64, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The subscriber", body = Subscription),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such subscriber", body = ProblemBody, content_type = "application/problem+json")))]
async fn get_webhook(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    ApiPath(id): ApiPath<i64>,
) -> Result<ApiJson<Subscription>> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    Ok(ApiJson(found(&state, id).await?))
}

/// Removes a subscriber and its dead letters.
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(delete, path = "/v1/ops/webhooks/{subscription_id}", tag = "operations",
    params(("subscription_id" = i64, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such subscriber", body = ProblemBody, content_type = "application/problem+json")))]
async fn delete_webhook(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    if state.store.delete_subscription(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no webhook subscription {id}")).into())
    }
}

/// Puts a paused subscriber (it answered 410 Gone) back to work, from
/// where it stopped.
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(post, path = "/v1/ops/webhooks/{subscription_id}/resume", tag = "operations",
    params(("subscription_id" = i64, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Active again", body = Subscription),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such subscriber", body = ProblemBody, content_type = "application/problem+json")))]
async fn resume_webhook(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    claim: Option<Extension<InlineClaim>>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    let render = |resumed: &Option<Subscription>| {
        let missing = || Problem::not_found(format!("no webhook subscription {id}"));
        keyed::json(StatusCode::OK, &resumed.as_ref().ok_or(()), |()| missing())
    };
    let claim = keyed::claim(claim.as_ref(), &render);
    let written = state
        .store
        .resume_subscription_keyed(id, claim.as_ref())
        .await?;
    Ok(keyed::respond(written, &render).1)
}

/// A subscriber's dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Oldest first (at most 1000).
    pub dead_letters: Vec<DeadLetter>,
}

/// Deliveries given up on for one subscriber.
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(get, path = "/v1/ops/webhooks/{subscription_id}/dead-letters", tag = "operations",
    params(("subscription_id" = i64, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dead letters", body = DeadLetterList),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:read missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such subscriber", body = ProblemBody, content_type = "application/problem+json")))]
async fn list_dead_letters(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsRead>,
    ApiPath(id): ApiPath<i64>,
) -> Result<ApiJson<DeadLetterList>> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    found(&state, id).await?;
    Ok(ApiJson(DeadLetterList {
        dead_letters: state.store.dead_letters(id).await?,
    }))
}

/// What became of a dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterAction {
    /// `delivered` or `discarded`.
    pub status: String,
    /// The dead letter.
    pub dead_letter: DeadLetter,
}

async fn dead_letter(state: &AppState, id: i64, letter: i64) -> Result<DeadLetter> {
    state.store.dead_letter(id, letter).await?.ok_or_else(|| {
        Problem::not_found(format!(
            "no dead letter {letter} of webhook subscription {id}"
        ))
        .into()
    })
}

/// Sends a dead letter again, now, with its original body and a fresh
/// signature; it is removed when the subscriber acknowledges it.
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(post, path = "/v1/ops/webhooks/{subscription_id}/dead-letters/{dead_letter_id}/replay", tag = "operations",
    params(("subscription_id" = i64, Path, description = "Subscription id"),
        ("dead_letter_id" = i64, Path, description = "Dead letter id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Delivered", body = DeadLetterAction),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "`webhook-delivery-failed`: the subscriber did not acknowledge it", body = ProblemBody, content_type = "application/problem+json")))]
async fn replay_dead_letter(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    ApiPath((id, letter)): ApiPath<(i64, i64)>,
) -> Result<ApiJson<DeadLetterAction>> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    let subscription = found(&state, id).await?;
    let dead_letter = dead_letter(&state, id, letter).await?;
    let webhook_id = format!("{id}-{}-{}", dead_letter.first_seq, dead_letter.last_seq);
    state
        .webhooks
        .sender()
        .send(
            &subscription.url,
            &subscription.secret_value,
            &webhook_id,
            dead_letter.body.clone(),
            &dead_letter.content_type,
        )
        .await
        .map_err(|error| {
            let detail = match error {
                crate::webhooks::SendError::Gone => "the subscriber answered 410 Gone".to_owned(),
                crate::webhooks::SendError::Failed(failure) => failure.to_string(),
            };
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "webhook-delivery-failed",
                "Webhook delivery failed",
            )
            .with_detail(format!(
                "dead letter {letter} was not acknowledged: {detail}; it stays"
            ))
        })?;
    state.store.remove_dead_letter(id, letter).await?;
    metrics::counter!("webhook_dead_letters_resolved_total", "action" => "replay").increment(1);
    Ok(ApiJson(DeadLetterAction {
        status: "delivered".into(),
        dead_letter,
    }))
}

/// Gives up on a dead letter for good (the note says why).
///
/// Location binding: webhook subscribers are partner-wide (a subscriber's
/// filter may name any location), so a token bound to locations gets 403.
#[utoipa::path(post, path = "/v1/ops/webhooks/{subscription_id}/dead-letters/{dead_letter_id}/discard", tag = "operations",
    params(("subscription_id" = i64, Path, description = "Subscription id"),
        ("dead_letter_id" = i64, Path, description = "Dead letter id")),
    request_body = NoteBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Discarded", body = DeadLetterAction),
        (status = 400, description = "Malformed body", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Scope ops:write missing, or a token bound to locations", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Missing or blank note", body = ProblemBody, content_type = "application/problem+json")))]
async fn discard_dead_letter(
    State(state): State<AppState>,
    auth: Authorized<scope::OpsWrite>,
    claim: Option<Extension<InlineClaim>>,
    ApiPath((id, letter)): ApiPath<(i64, i64)>,
    ValidJson(body): ValidJson<NoteBody>,
) -> Result<Response> {
    retail_shared::ops::require_unbound(&auth, "webhook administration")?;
    let render = |removed: &Option<DeadLetter>| {
        let action = removed.as_ref().map(|dead_letter| DeadLetterAction {
            status: "discarded".into(),
            dead_letter: dead_letter.clone(),
        });
        let missing = || {
            Problem::not_found(format!(
                "no dead letter {letter} of webhook subscription {id}"
            ))
        };
        keyed::json(StatusCode::OK, &action.ok_or(()), |()| missing())
    };
    let claim = keyed::claim(claim.as_ref(), &render);
    let written = state
        .store
        .remove_dead_letter_keyed(id, letter, claim.as_ref())
        .await?;
    let (removed, response) = keyed::respond(written, &render);
    if !matches!(removed, Some(Some(_))) {
        return Ok(response);
    }
    tracing::info!(
        subscription = id,
        dead_letter = letter,
        actor = auth.actor(),
        note = %body.note,
        "webhook dead letter discarded"
    );
    metrics::counter!("webhook_dead_letters_resolved_total", "action" => "discard").increment(1);
    Ok(response)
}
