//! The plain availability read of one sku, answered ahead of the layer
//! stack.
//!
//! `GET /v1/availability/{sku}` without a query string is what a product
//! page sends, again and again with the same token. Through the full stack
//! such a read passes about twenty layers (request id, correlation,
//! tracing, metrics, CORS, lifecycle headers, problem bodies, panic
//! guard, deadline, authentication, audit, quotas, compression,
//! idempotency, body limit), each cloning the inner service and boxing a
//! future, for an answer the read model holds in memory. This layer sits
//! outside them and answers such a read itself when everything is decided
//! in memory (the quota, when replicas share it, in Redis):
//!
//! - the token was verified in full within the last minute and has not
//!   expired ([`Authenticator::remembered`]) and grants
//!   `availability:read`;
//! - the read model may answer (fresh within its bound) and holds the sku;
//! - the caller's read quota is not used up (the same buckets as the
//!   stack's limiter: [`RateLimits::admit_now`] in this process, or
//!   [`RateLimits::admit`] in Redis when replicas share quotas, the one
//!   wait of a fast read);
//! - nothing asks for what only the stack does: no `Origin` (CORS), no
//!   `traceparent` and no trace export (spans), no deprecation of the
//!   route, no percent-encoded sku, no `Accept-Encoding` refusing identity.
//!
//! Anything else goes through the stack unchanged, which then answers as
//! it always did (verifying a new token, loading a miss, the 401, 403, 404,
//! 422 and 429 problems). A fast answer is the stack's answer: the same
//! body (same handler code: [`narrow`](crate::routes::availability)), the
//! same `X-Request-Id`, `traceparent`, `X-Availability-*`, `RateLimit*`
//! and CORS (`Vary`, `Access-Control-Expose-Headers`) headers, the same
//! `http_requests_total` and latency series;
//! only compression is left out (an availability body is a few hundred
//! bytes). GET is never audited, so nothing is skipped there.
//! `[experience] fast_read = false` turns the layer off.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use retail_shared::auth::{Authenticator, RequiredScope, bearer, scope};
use retail_shared::correlation::{Correlation, REQUEST_ID, TRACEPARENT};
use retail_shared::deprecation::Rule;
use retail_shared::problem::ApiJson;
use retail_shared::ratelimit::RateLimits;
use tower::ServiceExt as _;

use crate::AppState;
use crate::routes::availability::{Provenance, narrow};

/// The route answered here.
const ROUTE: &str = "/v1/availability/{sku}";
/// Its path before the sku.
const PREFIX: &str = "/v1/availability/";

/// What the layer needs, shared by every route it wraps.
#[derive(Debug)]
struct Shared {
    state: AppState,
    authenticator: Arc<Authenticator>,
    limits: Arc<RateLimits>,
    deprecations: Arc<Vec<Rule>>,
    /// What the CORS layer puts on every answer to a request without
    /// `Origin` (`Vary`, `Access-Control-Expose-Headers`).
    cors: axum::http::HeaderMap,
}

/// The layer (see the module docs).
#[derive(Debug, Clone)]
pub struct FastReadLayer(Arc<Shared>);

impl FastReadLayer {
    /// A layer answering from `state`'s read model, with the stack's
    /// authenticator, quotas and lifecycle rules.
    pub fn new(
        state: AppState,
        authenticator: Arc<Authenticator>,
        limits: Arc<RateLimits>,
        deprecations: Arc<Vec<Rule>>,
        cors: axum::http::HeaderMap,
    ) -> Self {
        Self(Arc::new(Shared {
            state,
            authenticator,
            limits,
            deprecations,
            cors,
        }))
    }
}

impl<S> tower::Layer<S> for FastReadLayer {
    type Service = FastRead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FastRead {
            shared: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`FastReadLayer`] around one route.
#[derive(Debug, Clone)]
pub struct FastRead<S> {
    shared: Arc<Shared>,
    inner: S,
}

/// The future of [`FastRead`]: an answer made here, the stack's, or (quotas
/// in Redis) the quota decision then either.
type Answering<E, F> = Either<
    std::future::Ready<Result<Response, E>>,
    Either<F, Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>>,
>;

impl<S> tower::Service<Request> for FastRead<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answering<S::Error, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let Some(ready) = self.shared.prepare(&request) else {
            return Either::Right(Either::Left(self.inner.call(request)));
        };
        if self.shared.limits.shared_through_redis() {
            // The quota is decided in Redis: wait for it, then answer, or
            // hand an over-quota request to the stack (its 429).
            let shared = self.shared.clone();
            let inner = self.inner.clone();
            return Either::Right(Either::Right(Box::pin(async move {
                let admitted = shared
                    .limits
                    .admit(ready.principal.actor(), &Method::GET)
                    .await;
                match admitted {
                    Some(admitted) => {
                        Ok(shared.respond(request.headers(), ready, admitted, started))
                    }
                    None => inner.oneshot(request).await,
                }
            })));
        }
        match self
            .shared
            .limits
            .admit_now(ready.principal.actor(), &Method::GET)
        {
            Some(admitted) => Either::Left(std::future::ready(Ok(self.shared.respond(
                request.headers(),
                ready,
                admitted,
                started,
            )))),
            None => Either::Right(Either::Left(self.inner.call(request))),
        }
    }
}

/// A read the fast path can answer once its quota allows.
struct Ready {
    principal: retail_shared::auth::Principal,
    staleness: std::time::Duration,
    sku: String,
    snapshot: crate::read_model::Snapshot,
}

impl Shared {
    /// What the answer needs, when everything but the quota is decided in
    /// memory.
    fn prepare(&self, request: &Request) -> Option<Ready> {
        if request.method() != Method::GET
            || request
                .extensions()
                .get::<MatchedPath>()
                .is_none_or(|path| path.as_str() != ROUTE)
            || request.uri().query().is_some()
        {
            return None;
        }
        let path = request.uri().path();
        let sku = path.strip_prefix(PREFIX)?;
        let headers = request.headers();
        if sku.is_empty()
            || sku.contains('%')
            || headers.contains_key(header::ORIGIN)
            || headers.contains_key(&TRACEPARENT)
            || retail_shared::telemetry::tracing_enabled()
            || refuses_identity(headers)
            || retail_shared::deprecation::covers(&self.deprecations, path)
        {
            return None;
        }
        let principal = self
            .authenticator
            .remembered(bearer(headers).ok()?)
            .filter(|p| p.has_scope(scope::AvailabilityRead::NAME))?;
        let staleness = self.state.model_staleness()?;
        let snapshot = self.state.model.get(sku)?;
        Some(Ready {
            principal,
            staleness,
            sku: sku.to_owned(),
            snapshot,
        })
    }

    /// The answer to an admitted read.
    fn respond(
        &self,
        request: &axum::http::HeaderMap,
        ready: Ready,
        admitted: retail_shared::ratelimit::Admitted,
        started: Instant,
    ) -> Response {
        metrics::counter!("read_model_reads_total", "outcome" => "hit").increment(1);
        metrics::counter!("availability_fast_reads_total").increment(1);
        let item = narrow(&ready.sku, ready.snapshot.locations, None, &ready.principal);
        let mut response = (Provenance::model(ready.staleness), ApiJson(item)).into_response();
        let correlation = Correlation::from_headers(request);
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&correlation.request_id) {
            headers.insert(REQUEST_ID.clone(), value);
        }
        if let Ok(value) = HeaderValue::from_str(&correlation.traceparent()) {
            headers.insert(TRACEPARENT.clone(), value);
        }
        admitted.stamp(headers);
        // The stack's compression layer names Accept-Encoding for every
        // answer (the same URL may be answered compressed to another
        // request), then CORS adds its own.
        headers.insert(
            header::VARY,
            HeaderValue::from_static(header::ACCEPT_ENCODING.as_str()),
        );
        for (name, value) in &self.cors {
            headers.append(name, value.clone());
        }
        retail_shared::telemetry::record_request(
            crate::SERVICE,
            &Method::GET,
            ROUTE.to_owned(),
            StatusCode::OK,
            started,
        );
        response
    }
}

/// Whether `Accept-Encoding` might rule out an unencoded answer
/// (`identity;q=0`, `*;q=0`): any q-value of 0.x sends the request through
/// the stack, whose compression layer reads the header in full.
fn refuses_identity(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .any(|value| value.to_str().map_or(true, |v| v.contains("q=0")))
}
