//! `Idempotency-Key` on state-changing requests (IETF httpapi
//! idempotency-key draft).
//!
//! For a POST carrying the header, from an authenticated caller:
//! - first use: the request runs and its response (status, content type,
//!   body) is stored with a fingerprint of the request (method, path,
//!   query, body: SHA-256);
//! - same key, same request: the stored response is replayed, with
//!   `Idempotent-Replayed: true`, and nothing runs again;
//! - same key, different request: 422 problem;
//! - same key while the first is still running: 409 problem (a request
//!   whose process died stops blocking after the in-flight lease);
//! - 5xx answers are not stored, so a retry runs again.
//!
//! Keys are scoped per caller (token `sub` and the end user it acts for):
//! one client's key never replays another's response. Keys and responses
//! are kept for the configured retention (default 24 h).
//!
//! Bounds: keys apply to effectful POSTs only (the read-only POSTs of
//! [`READ_ONLY_POSTS`] store nothing); a stored answer is at most
//! `[idempotency] max_response_bytes` (a larger one is kept as a short
//! problem saying the request was applied, with its status); the in-memory
//! store keeps at most `max_keys_per_client` keys per client, the least
//! recently used going first.
//!
//! Once a keyed request starts, it runs to its end and its answer is
//! stored even when the caller goes away or the deadline answers first
//! (the request runs in a task of its own): a retry then gets the first
//! answer instead of finding the key in flight, and after the lease,
//! running the work again. Storing the answer is retried before giving up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::problem::Problem;

/// `Idempotency-Key`.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on replayed responses.
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;

/// POST routes that change nothing (bulk reads): an `Idempotency-Key` on
/// them is ignored and nothing is stored.
pub const READ_ONLY_POSTS: &[&str] = &["/v1/availability/query", "/v1/inventory/availability"];

/// Attempts at storing an answer before the key is left in flight.
const COMPLETE_ATTEMPTS: u32 = 4;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

/// What a store says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// New (or expired, or its lease ran out): the caller runs the request.
    Started,
    /// Done before with the same fingerprint.
    Replay(StoredResponse),
    /// Used before for a different request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

/// Times of one `begin`, in unix microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now.
    pub now: i64,
    /// Until when a new in-flight claim blocks others.
    pub lease_until: i64,
    /// When the key is forgotten.
    pub expires_at: i64,
}

/// Where keys and responses live.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug {
    /// Claims `key` for a request with `fingerprint`, or reports why not.
    async fn begin(&self, key: &str, fingerprint: &str, clock: Clock) -> anyhow::Result<Begin>;
    /// Stores the response of a claimed key.
    async fn complete(&self, key: &str, response: &StoredResponse) -> anyhow::Result<()>;
    /// Releases a claimed key without a response (the request failed).
    async fn abandon(&self, key: &str) -> anyhow::Result<()>;
    /// POST paths whose route claims the key, does its work and stores
    /// the answer in one transaction of this store (see [`InlineClaim`]);
    /// a `*` segment stands for any one segment (`/v1/transfers/*/ship`).
    /// None by default. Such a route must change nothing before it takes
    /// the claim: until then the key protects nothing.
    fn inline_paths(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Whether `path` matches `pattern` (see [`IdempotencyStore::inline_paths`]).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut wanted = pattern.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some("*"), Some(segment)) if !segment.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// A key the middleware leaves to the route, on the paths a store names in
/// [`IdempotencyStore::inline_paths`]: the route claims it, does its work
/// and stores its answer in one transaction, so a retry can never find the
/// work done without the answer, and the request waits for one commit
/// instead of three. A route that answers without reaching the store (a
/// 422 of its own checks, say) leaves the claim untaken, and the
/// middleware then applies the key as everywhere else, after the fact:
/// such an answer changed nothing.
#[derive(Debug, Clone)]
pub struct InlineClaim {
    /// The scoped key.
    pub key: String,
    /// The request's fingerprint.
    pub fingerprint: String,
    /// Times of the claim.
    pub clock: Clock,
    taken: Arc<AtomicBool>,
}

impl InlineClaim {
    /// A claim of `key` (already scoped to its caller) for a request with
    /// `fingerprint`.
    pub fn new(key: String, fingerprint: String, clock: Clock) -> Self {
        Self {
            key,
            fingerprint,
            clock,
            taken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the claim as the route's: the middleware then passes the
    /// route's answer through untouched (the store has settled the key,
    /// or the work failed with nothing kept). Call it just before handing
    /// the claim to the store.
    pub fn take(&self) -> &Self {
        self.taken.store(true, Ordering::Release);
        self
    }
}

/// The answer to a decision other than [`Begin::Started`] (a replay, a
/// key reused for another request, a key in flight), counted in
/// `idempotency_keys_total`; `None` for `Started` (counted as `first`).
pub fn answer(service: &'static str, decision: Begin) -> Option<Response> {
    let outcome = match &decision {
        Begin::Started => "first",
        Begin::Replay(_) => "replayed",
        Begin::Mismatch => "mismatch",
        Begin::InFlight => "in_flight",
    };
    metrics::counter!("idempotency_keys_total", "service" => service, "outcome" => outcome)
        .increment(1);
    match decision {
        Begin::Started => None,
        Begin::Mismatch => Some(
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
            )
            .with_detail("this Idempotency-Key was used for a different request")
            .into_response(),
        ),
        Begin::InFlight => Some(
            Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request in progress",
            )
            .with_detail(
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .into_response(),
        ),
        Begin::Replay(stored) => Some(replay(stored)),
    }
}

#[derive(Debug, Clone)]
struct MemoryEntry {
    fingerprint: String,
    response: Option<StoredResponse>,
    lease_until: i64,
    expires_at: i64,
    /// Position in the client's recency order.
    used: u64,
}

/// One client's keys, with their order of use (oldest first).
#[derive(Debug, Default)]
struct ClientKeys {
    entries: HashMap<String, MemoryEntry>,
    order: std::collections::BTreeMap<u64, String>,
}

/// An in-process store: correct for one replica; several replicas need a
/// shared store (SQL or Redis). Bounded per client: past
/// `max_keys_per_client` keys, the least recently used key goes.
#[derive(Debug)]
pub struct MemoryStore {
    clients: Mutex<(u64, HashMap<String, ClientKeys>)>,
    max_keys_per_client: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl MemoryStore {
    /// A store keeping at most `max_keys_per_client` keys per client.
    pub fn new(max_keys_per_client: usize) -> Self {
        Self {
            clients: Mutex::new((0, HashMap::new())),
            max_keys_per_client: max_keys_per_client.max(1),
        }
    }

    fn lock(
        &self,
    ) -> anyhow::Result<std::sync::MutexGuard<'_, (u64, HashMap<String, ClientKeys>)>> {
        self.clients
            .lock()
            .map_err(|_| anyhow::anyhow!("idempotency store poisoned"))
    }
}

/// The client part of a scoped key (`service|sub|actor|key`): the bucket
/// whose size is capped.
fn client_of(scoped: &str) -> &str {
    let mut cut = 0;
    for (index, part) in scoped.match_indices('|').take(3) {
        cut = index + part.len() - 1;
    }
    &scoped[..cut]
}

/// Decides `begin` from what is stored (shared by every store).
pub fn decide(
    existing: Option<(&str, Option<StoredResponse>, i64, i64)>,
    fingerprint: &str,
    now: i64,
) -> Begin {
    match existing {
        None => Begin::Started,
        Some((_, _, _, expires_at)) if expires_at <= now => Begin::Started,
        Some((stored, _, _, _)) if stored != fingerprint => Begin::Mismatch,
        Some((_, Some(response), _, _)) => Begin::Replay(response),
        Some((_, None, lease_until, _)) if lease_until > now => Begin::InFlight,
        Some((_, None, _, _)) => Begin::Started,
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn begin(&self, key: &str, fingerprint: &str, clock: Clock) -> anyhow::Result<Begin> {
        let mut guard = self.lock()?;
        let (counter, clients) = &mut *guard;
        *counter += 1;
        let used = *counter;
        let client = clients.entry(client_of(key).to_owned()).or_default();
        let existing = client.entries.get(key).map(|e| {
            (
                e.fingerprint.as_str(),
                e.response.clone(),
                e.lease_until,
                e.expires_at,
            )
        });
        let decision = decide(existing, fingerprint, clock.now);
        if let Some(entry) = client.entries.get_mut(key) {
            client.order.remove(&entry.used);
            entry.used = used;
            client.order.insert(used, key.to_owned());
        }
        if decision == Begin::Started {
            if let Some(old) = client.entries.remove(key) {
                client.order.remove(&old.used);
            }
            while client.entries.len() >= self.max_keys_per_client {
                let Some((_, oldest)) = client.order.pop_first() else {
                    break;
                };
                client.entries.remove(&oldest);
            }
            client.entries.insert(
                key.to_owned(),
                MemoryEntry {
                    fingerprint: fingerprint.to_owned(),
                    response: None,
                    lease_until: clock.lease_until,
                    expires_at: clock.expires_at,
                    used,
                },
            );
            client.order.insert(used, key.to_owned());
        }
        Ok(decision)
    }

    async fn complete(&self, key: &str, response: &StoredResponse) -> anyhow::Result<()> {
        let mut guard = self.lock()?;
        if let Some(entry) = guard
            .1
            .get_mut(client_of(key))
            .and_then(|client| client.entries.get_mut(key))
        {
            entry.response = Some(response.clone());
        }
        Ok(())
    }

    async fn abandon(&self, key: &str) -> anyhow::Result<()> {
        let mut guard = self.lock()?;
        let bucket = client_of(key);
        if let Some(client) = guard.1.get_mut(bucket) {
            if let Some(old) = client.entries.remove(key) {
                client.order.remove(&old.used);
            }
            if client.entries.is_empty() {
                guard.1.remove(bucket);
            }
        }
        Ok(())
    }
}

/// The middleware's configuration.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The store.
    pub store: Arc<dyn IdempotencyStore>,
    /// The service (part of the key scope).
    pub service: &'static str,
    /// Retention, microseconds.
    pub retention_micros: i64,
    /// In-flight lease, microseconds.
    pub lease_micros: i64,
    /// Largest body read.
    pub body_limit: usize,
    /// Largest answer stored as it is.
    pub max_response_bytes: usize,
}

fn now_micros() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000)
        .unwrap_or(i64::MAX)
}

fn bad_key() -> Response {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-idempotency-key",
        "Invalid Idempotency-Key",
    )
    .with_detail(format!(
        "the Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
    ))
    .into_response()
}

/// Middleware: applies `Idempotency-Key` to POST requests.
pub async fn idempotency(
    State(config): State<Arc<Idempotency>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST || READ_ONLY_POSTS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Some(raw_key) = request.headers().get(&IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let Some(key) = raw_key
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
    else {
        return bad_key();
    };
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        // Unauthenticated: the route answers 401 and nothing is stored.
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, config.body_limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Problem::from_status(StatusCode::PAYLOAD_TOO_LARGE).into_response();
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(parts.uri.to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(&bytes);
    let fingerprint: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let scoped = format!(
        "{}|{}|{}|{key}",
        config.service,
        principal.subject,
        principal.actor()
    );
    let now = now_micros();
    let clock = Clock {
        now,
        lease_until: now + config.lease_micros,
        expires_at: now + config.retention_micros,
    };
    let path = parts.uri.path();
    if config
        .store
        .inline_paths()
        .iter()
        .any(|pattern| path_matches(pattern, path))
    {
        let claim = InlineClaim::new(scoped.clone(), fingerprint.clone(), clock);
        let taken = claim.taken.clone();
        let mut request = Request::from_parts(parts, Body::from(bytes));
        request.extensions_mut().insert(claim);
        let response = next.run(request).await;
        if taken.load(Ordering::Acquire) {
            return response;
        }
        // The route answered without its store (its own checks, or a
        // request that changes nothing): the key applies now as it would
        // have before.
        return match begin(&config, &scoped, &fingerprint, clock).await {
            Err(response) => response,
            Ok(()) => settle(&config, &scoped, response).await,
        };
    }
    if let Err(response) = begin(&config, &scoped, &fingerprint, clock).await {
        return response;
    }
    // From here the request runs to its end and its answer is stored,
    // whatever happens to this future (a caller gone, the deadline): see
    // the module docs.
    use tracing::Instrument as _;
    let request = Request::from_parts(parts, Body::from(bytes));
    let work = tokio::spawn(
        async move {
            let response = next.run(request).await;
            settle(&config, &scoped, response).await
        }
        .instrument(tracing::Span::current()),
    );
    work.await.unwrap_or_else(|error| {
        tracing::error!(%error, "a keyed request's task failed");
        Problem::internal().into_response()
    })
}

/// Claims the key: `Ok` when the request is to run, else the answer.
async fn begin(
    config: &Idempotency,
    scoped: &str,
    fingerprint: &str,
    clock: Clock,
) -> Result<(), Response> {
    match config.store.begin(scoped, fingerprint, clock).await {
        Err(error) => {
            tracing::error!(%error, "idempotency store unavailable");
            Err(Problem::upstream(
                StatusCode::SERVICE_UNAVAILABLE,
                "idempotency keys cannot be checked right now; retry later",
            )
            .into_response())
        }
        Ok(decision) => answer(config.service, decision).map_or(Ok(()), Err),
    }
}

/// Stores the answer of a claimed key (a 5xx releases the key instead, so
/// a retry runs again) and passes it on.
async fn settle(config: &Idempotency, scoped: &str, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "response body could not be read for storing");
            let _ = config.store.abandon(scoped).await;
            return Problem::internal().into_response();
        }
    };
    if parts.status.is_server_error() {
        if let Err(error) = config.store.abandon(scoped).await {
            tracing::warn!(%error, "could not release an idempotency key");
        }
    } else {
        let stored = if body.len() <= config.max_response_bytes {
            StoredResponse {
                status: parts.status.as_u16(),
                content_type: parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: body.to_vec(),
            }
        } else {
            too_large_to_keep(parts.status, body.len())
        };
        complete(config, scoped, &stored).await;
    }
    Response::from_parts(parts, Body::from(body))
}

/// Stores a key's answer, retrying with backoff: a key left in flight
/// would, after its lease, let a retry run the work a second time.
async fn complete(config: &Idempotency, scoped: &str, stored: &StoredResponse) {
    let mut delay = std::time::Duration::from_millis(50);
    for attempt in 1..=COMPLETE_ATTEMPTS {
        match config.store.complete(scoped, stored).await {
            Ok(()) => return,
            Err(error) if attempt == COMPLETE_ATTEMPTS => {
                metrics::counter!("idempotency_completions_failed_total", "service" => config.service)
                    .increment(1);
                tracing::error!(%error, "could not store an idempotent response");
            }
            Err(error) => {
                tracing::warn!(%error, attempt, "storing an idempotent response failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
}

/// What is kept for an answer larger than `max_response_bytes`: its
/// status and a problem saying the request was applied.
fn too_large_to_keep(status: StatusCode, len: usize) -> StoredResponse {
    let body = serde_json::json!({
        "type": format!("{}response-not-kept", crate::problem::PROBLEM_TYPE_PREFIX),
        "title": "Answer not kept",
        "status": status.as_u16(),
        "detail": format!(
            "the request with this Idempotency-Key was applied and answered {status} with a \
             body of {len} bytes, more than is kept for replay; read the result from its resource"
        ),
    });
    StoredResponse {
        status: status.as_u16(),
        content_type: Some("application/problem+json".into()),
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

impl IntoResponse for StoredResponse {
    /// The stored status, content type and body.
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, Bytes::from(self.body)).into_response();
        if let Some(content_type) = self
            .content_type
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        response
    }
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = stored.into_response();
    response
        .headers_mut()
        .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
#[path = "idempotency_tests.rs"]
mod bounded_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(now: i64) -> Clock {
        Clock {
            now,
            lease_until: now + 10,
            expires_at: now + 100,
        }
    }

    #[tokio::test]
    async fn memory_store_follows_the_draft() {
        let store = MemoryStore::default();
        assert_eq!(
            store.begin("k", "f1", clock(0)).await.ok(),
            Some(Begin::Started)
        );
        assert_eq!(
            store.begin("k", "f1", clock(1)).await.ok(),
            Some(Begin::InFlight)
        );
        assert_eq!(
            store.begin("k", "f2", clock(1)).await.ok(),
            Some(Begin::Mismatch)
        );
        let response = StoredResponse {
            status: 201,
            content_type: None,
            body: b"x".to_vec(),
        };
        store.complete("k", &response).await.expect("complete");
        assert_eq!(
            store.begin("k", "f1", clock(2)).await.ok(),
            Some(Begin::Replay(response))
        );
        // Expired: starts again.
        assert_eq!(
            store.begin("k", "f2", clock(200)).await.ok(),
            Some(Begin::Started)
        );
        // A dead in-flight claim stops blocking after its lease.
        assert_eq!(
            store.begin("j", "f", clock(0)).await.ok(),
            Some(Begin::Started)
        );
        assert_eq!(
            store.begin("j", "f", clock(50)).await.ok(),
            Some(Begin::Started)
        );
    }
}

/// Claims, replays or refuses a key atomically. KEYS[1]: the record.
/// ARGV: fingerprint, now (µs), lease until (µs), expires at (µs).
const REDIS_BEGIN: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'fp', 'lease', 'status', 'ctype', 'body')
local now = tonumber(ARGV[2])
local function claim()
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'lease', ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[4]) / 1000))
  return {'started'}
end
if not cur[1] then return claim() end
if cur[1] ~= ARGV[1] then return {'mismatch'} end
if cur[3] then return {'replay', cur[3], cur[4] or '', cur[5] or ''} end
if tonumber(cur[2]) > now then return {'inflight'} end
return claim()
"#;

/// A Redis store: replicas of a service share keys. Records expire by
/// themselves at the end of the retention.
#[derive(Clone)]
pub struct RedisStore {
    manager: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url`; keys are stored under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let manager = redis::aio::ConnectionManager::new(client).await?;
        Ok(Self {
            manager,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn begin(&self, key: &str, fingerprint: &str, clock: Clock) -> anyhow::Result<Begin> {
        let mut manager = self.manager.clone();
        let script = redis::Script::new(REDIS_BEGIN);
        let mut invocation = script.key(self.key(key));
        invocation
            .arg(fingerprint)
            .arg(clock.now)
            .arg(clock.lease_until)
            .arg(clock.expires_at);
        let answer: Vec<Vec<u8>> = invocation.invoke_async(&mut manager).await?;
        let word = |i: usize| {
            answer
                .get(i)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        Ok(match word(0).as_deref() {
            Some("started") => Begin::Started,
            Some("mismatch") => Begin::Mismatch,
            Some("inflight") => Begin::InFlight,
            Some("replay") => Begin::Replay(StoredResponse {
                status: word(1).and_then(|s| s.parse().ok()).unwrap_or(200),
                content_type: word(2).filter(|c| !c.is_empty()),
                body: answer.get(3).cloned().unwrap_or_default(),
            }),
            other => anyhow::bail!("unexpected answer from Redis: {other:?}"),
        })
    }

    async fn complete(&self, key: &str, response: &StoredResponse) -> anyhow::Result<()> {
        let mut manager = self.manager.clone();
        let _: () = redis::cmd("HSET")
            .arg(self.key(key))
            .arg("status")
            .arg(response.status.to_string())
            .arg("ctype")
            .arg(response.content_type.as_deref().unwrap_or(""))
            .arg("body")
            .arg(response.body.as_slice())
            .query_async(&mut manager)
            .await?;
        Ok(())
    }

    async fn abandon(&self, key: &str) -> anyhow::Result<()> {
        let mut manager = self.manager.clone();
        let _: () = redis::cmd("DEL")
            .arg(self.key(key))
            .query_async(&mut manager)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod redis_tests {
    use super::*;

    #[tokio::test]
    async fn the_redis_store_follows_the_draft() {
        let Ok(url) = std::env::var("TEST_REDIS_URL") else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: Redis tests skip: TEST_REDIS_URL is not set"
            );
            return;
        };
        let prefix = format!("test:{}:", uuid::Uuid::new_v4());
        let store = RedisStore::connect(&url, &prefix).await.expect("redis");
        let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000)
            .expect("now");
        let clock = |offset: i64| Clock {
            now: now + offset,
            lease_until: now + offset + 10_000_000,
            expires_at: now + offset + 60_000_000,
        };
        assert_eq!(
            store.begin("k", "f1", clock(0)).await.ok(),
            Some(Begin::Started)
        );
        assert_eq!(
            store.begin("k", "f1", clock(1)).await.ok(),
            Some(Begin::InFlight)
        );
        assert_eq!(
            store.begin("k", "f2", clock(1)).await.ok(),
            Some(Begin::Mismatch)
        );
        let response = StoredResponse {
            status: 201,
            content_type: Some("application/json".into()),
            body: b"{\"id\":1}".to_vec(),
        };
        store.complete("k", &response).await.expect("complete");
        assert_eq!(
            store.begin("k", "f1", clock(2)).await.ok(),
            Some(Begin::Replay(response))
        );
        // A dead in-flight claim stops blocking after its lease.
        assert_eq!(
            store.begin("j", "f", clock(0)).await.ok(),
            Some(Begin::Started)
        );
        assert_eq!(
            store.begin("j", "f", clock(20_000_000)).await.ok(),
            Some(Begin::Started)
        );
        store.abandon("j").await.expect("abandon");
        assert_eq!(
            store.begin("j", "g", clock(0)).await.ok(),
            Some(Begin::Started)
        );
    }
}

/// Redis when it answers, this process's memory when it does not: a Redis
/// outage (or a Redis not up yet at start) degrades the guarantee to one
/// replica's, logged and counted in `idempotency_redis_fallback_total`,
/// instead of failing requests. The connection is retried in the
/// background.
#[derive(Debug)]
pub struct SharedStore {
    redis: std::sync::RwLock<Option<RedisStore>>,
    memory: MemoryStore,
}

impl SharedStore {
    /// Starts connecting to `url` in the background (call within a Tokio
    /// runtime); keys go under `prefix`.
    pub fn start(url: &str, prefix: &str) -> Arc<Self> {
        let store = Arc::new(Self {
            redis: std::sync::RwLock::new(None),
            memory: MemoryStore::default(),
        });
        let prefix = prefix.to_owned();
        crate::redis_link::connect_in_background(
            &store,
            url,
            "idempotency keys",
            move |store, manager| {
                if let Ok(mut slot) = store.redis.write() {
                    *slot = Some(RedisStore {
                        manager,
                        prefix: prefix.clone(),
                    });
                }
            },
        );
        store
    }

    fn redis(&self) -> Option<RedisStore> {
        self.redis.read().ok().and_then(|slot| slot.clone())
    }

    fn fell_back(error: &anyhow::Error) {
        tracing::warn!(%error, "Redis idempotency store failed; using local memory");
        metrics::counter!("idempotency_redis_fallback_total").increment(1);
    }
}

#[async_trait]
impl IdempotencyStore for SharedStore {
    async fn begin(&self, key: &str, fingerprint: &str, clock: Clock) -> anyhow::Result<Begin> {
        if let Some(redis) = self.redis() {
            match redis.begin(key, fingerprint, clock).await {
                Ok(begin) => return Ok(begin),
                Err(error) => Self::fell_back(&error),
            }
        }
        self.memory.begin(key, fingerprint, clock).await
    }

    async fn complete(&self, key: &str, response: &StoredResponse) -> anyhow::Result<()> {
        if let Some(redis) = self.redis() {
            match redis.complete(key, response).await {
                Ok(()) => return self.memory.complete(key, response).await,
                Err(error) => Self::fell_back(&error),
            }
        }
        self.memory.complete(key, response).await
    }

    async fn abandon(&self, key: &str) -> anyhow::Result<()> {
        if let Some(redis) = self.redis()
            && let Err(error) = redis.abandon(key).await
        {
            Self::fell_back(&error);
        }
        self.memory.abandon(key).await
    }
}
