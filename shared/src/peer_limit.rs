//! Throttling before authentication, per peer address.
//!
//! Per-client quotas ([`crate::ratelimit`]) need a verified token. A
//! request whose token this service has not verified recently (a new
//! token, a forged one, none at all) is checked first against its peer
//! address's budget (`[rate_limit] unauthenticated_per_second` and
//! `_burst`): past it the answer is 429 at once, before any signature is
//! checked or key set fetched. A client sending its valid token again
//! (verified within the last minute) never touches this budget, so many
//! clients behind one address (a NAT, a load balancer) are held only to
//! their own quotas; what one address can make the service do without a
//! valid token stays bounded.
//!
//! The key is the TCP peer (`ConnectInfo`); behind a proxy that is the
//! proxy, which then needs a budget that fits all its callers' new tokens.
//! Forwarded headers are not trusted (a client writes them).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::{Authenticator, bearer};
use crate::config::RateLimitSettings;
use crate::problem::Problem;
use crate::telemetry::ServiceName;

/// How many checks between two sweeps of addresses whose budget is full
/// again (governor keeps a state per key until told to forget it).
const SWEEP_EVERY: u64 = 10_000;

/// The per-address budget of unverified requests.
#[derive(Debug)]
pub struct PeerLimits {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
}

impl PeerLimits {
    /// From `[rate_limit]` (none when rate limiting is off).
    pub fn new(settings: &RateLimitSettings) -> Arc<Self> {
        let limiter = settings.enabled.then(|| {
            let rate =
                NonZeroU32::new(settings.unauthenticated_per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(settings.unauthenticated_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(Self {
            limiter,
            checks: AtomicU64::new(0),
        })
    }

    /// `Err(seconds to wait)` when `peer` has used up its budget.
    fn check(&self, peer: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&peer).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }
}

/// Middleware: verifies a bearer token when one is sent and stores the
/// [`Principal`](crate::auth::Principal) for the rate limiter and the
/// handlers. A request without a recently verified token first spends its
/// peer address's budget (429 when used up). An invalid token is not
/// rejected here: the route's extractor answers the 401 (public routes
/// ignore tokens).
pub async fn authenticate(
    State(peers): State<Arc<PeerLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(authenticator) = request.extensions().get::<Arc<Authenticator>>().cloned() else {
        return next.run(request).await;
    };
    let remembered = bearer(request.headers())
        .ok()
        .and_then(|token| authenticator.remembered(token));
    if let Some(principal) = remembered {
        let mut request = request;
        request.extensions_mut().insert(principal);
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer
        && let Err(seconds) = peers.check(peer)
    {
        let service = request
            .extensions()
            .get::<ServiceName>()
            .map_or("", |name| name.0);
        metrics::counter!("rate_limited_total", "class" => "unauthenticated", "service" => service)
            .increment(1);
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .with_detail(format!(
            "too many requests without a recently verified token from this address; \
             retry in {seconds} s"
        ))
        .into_response();
        if let Ok(value) = seconds.to_string().parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    if !request.headers().contains_key(header::AUTHORIZATION) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    if let Ok(principal) = authenticator.verify_header(&parts).await {
        parts.extensions.insert(principal);
    }
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_budget_waits_and_others_do_not() {
        let mut settings = crate::config::Settings::defaults().rate_limit;
        settings.unauthenticated_per_second = 1;
        settings.unauthenticated_burst = 3;
        let limits = PeerLimits::new(&settings);
        let noisy: IpAddr = "192.0.2.1".parse().expect("ip");
        let quiet: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            limits.check(noisy).expect("within the burst");
        }
        assert!(limits.check(noisy).is_err());
        limits.check(quiet).expect("another address");
    }
}
