//! Throttling: GCRA (governor) per client and route class (`read`: GET and
//! HEAD; `write`: everything else), quotas from configuration with
//! per-client overrides. The client is the token's `sub`, or for a service
//! token the end user it acts for (`on_behalf_of`): an inner layer applies
//! the same per-user budget, and one user's burst through experience-api
//! cannot use up the service's shared identity.
//!
//! Every limited response carries the IETF httpapi ratelimit headers:
//! `RateLimit-Policy: "read";q=100;w=1` (q requests per w seconds) and
//! `RateLimit: "read";r=42;t=1` (r left, full again in t seconds). A denied
//! request gets a 429 problem with `Retry-After`. Requests without a valid
//! token are not limited here (they end in a 401).
//!
//! With `[redis] url` set, the budget lives in Redis (an atomic GCRA in a
//! Lua script, keyed by service, class and client, timed by the Redis
//! server's clock), so every replica of a service draws from one budget.
//! When Redis cannot answer within 50 ms the replica falls back to its
//! in-process limiter, says so in the log and in
//! `rate_limit_redis_fallback_total`, and never answers 5xx for it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::auth::Principal;
use crate::config::RateLimitSettings;
use crate::problem::Problem;

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Route class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// GET, HEAD.
    Read,
    /// Everything else.
    Write,
}

impl RouteClass {
    fn of(method: &Method) -> Self {
        if method == Method::GET || method == Method::HEAD {
            Self::Read
        } else {
            Self::Write
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

struct ClassLimiter {
    limiter: Limiter,
    per_second: u32,
    burst: u32,
}

impl ClassLimiter {
    fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst_nz);
        Self {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            per_second: per_second.max(1),
            burst: burst.max(1),
        }
    }

    /// Seconds for an empty bucket to fill, rounded up (the policy window).
    fn window(&self) -> u64 {
        u64::from(self.burst).div_ceil(u64::from(self.per_second))
    }

    /// `RateLimit-Policy` of the class.
    fn policy(&self, class: RouteClass) -> HeaderValue {
        header(format!(
            "\"{}\";q={};w={}",
            class.name(),
            self.burst,
            self.window()
        ))
    }

    /// `RateLimit` of an allowed request leaving `remaining`.
    fn state(&self, class: RouteClass, remaining: u32) -> HeaderValue {
        let refill =
            u64::from(self.burst - remaining.min(self.burst)).div_ceil(u64::from(self.per_second));
        header(format!("\"{}\";r={remaining};t={refill}", class.name()))
    }
}

/// A request let through by [`RateLimits::admit_now`], with the quota
/// headers its answer carries (none while limits are off).
#[derive(Debug)]
pub struct Admitted(Option<(HeaderValue, HeaderValue)>);

impl Admitted {
    /// Puts the quota headers on an answer.
    pub fn stamp(self, headers: &mut axum::http::HeaderMap) {
        if let Some((policy, state)) = self.0 {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), state);
        }
    }
}

struct ClientLimits {
    read: ClassLimiter,
    write: ClassLimiter,
}

impl ClientLimits {
    fn class(&self, class: RouteClass) -> &ClassLimiter {
        match class {
            RouteClass::Read => &self.read,
            RouteClass::Write => &self.write,
        }
    }

    fn all(&self) -> [&ClassLimiter; 2] {
        [&self.read, &self.write]
    }
}

/// The limiters of one service.
pub struct RateLimits {
    enabled: bool,
    service: &'static str,
    /// `[redis] key_prefix`.
    key_prefix: String,
    default: ClientLimits,
    clients: HashMap<String, ClientLimits>,
    redis: std::sync::RwLock<Option<redis::aio::ConnectionManager>>,
}

/// GCRA in Redis. KEYS[1]: the bucket. ARGV[1]: emission interval (µs),
/// ARGV[2]: burst. Returns {allowed, remaining, retry_after_µs}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + burst * interval - new_tat) / interval), 0}
"#;

/// How long a Redis answer may take before the local limiter decides.
const REDIS_BUDGET: Duration = Duration::from_millis(50);

enum Verdict {
    Allowed { remaining: u32 },
    Denied { retry_after: Duration },
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("enabled", &self.enabled)
            .field("overrides", &self.clients.len())
            .finish()
    }
}

impl RateLimits {
    /// Limiters from configuration. Call within a Tokio runtime: a task
    /// prunes idle clients' state every minute.
    pub fn new(
        settings: &RateLimitSettings,
        service: &'static str,
        redis_url: Option<&str>,
        key_prefix: &str,
    ) -> Arc<Self> {
        let limits = Arc::new(Self {
            enabled: settings.enabled,
            service,
            key_prefix: key_prefix.to_owned(),
            redis: std::sync::RwLock::new(None),
            default: ClientLimits {
                read: ClassLimiter::new(settings.read_per_second, settings.read_burst),
                write: ClassLimiter::new(settings.write_per_second, settings.write_burst),
            },
            clients: settings
                .clients
                .iter()
                .map(|(name, quota)| {
                    (
                        name.clone(),
                        ClientLimits {
                            read: ClassLimiter::new(quota.read_per_second, quota.read_burst),
                            write: ClassLimiter::new(quota.write_per_second, quota.write_burst),
                        },
                    )
                })
                .collect(),
        });
        if limits.enabled
            && let Some(url) = redis_url
        {
            // Until Redis answers, the local limiter decides.
            crate::redis_link::connect_in_background(
                &limits,
                url,
                "rate limits",
                |limits, manager| {
                    if let Ok(mut slot) = limits.redis.write() {
                        *slot = Some(manager);
                    }
                },
            );
        }
        if limits.enabled {
            let weak = Arc::downgrade(&limits);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(60));
                loop {
                    ticker.tick().await;
                    let Some(limits) = weak.upgrade() else { return };
                    for client in std::iter::once(&limits.default).chain(limits.clients.values()) {
                        for class in client.all() {
                            class.limiter.retain_recent();
                            class.limiter.shrink_to_fit();
                        }
                    }
                }
            });
        }
        limits
    }

    /// The limiters of `service` as configured (`[rate_limit]`, shared
    /// through `[redis]` when a URL is set).
    pub fn for_service(settings: &crate::config::Settings, service: &'static str) -> Arc<Self> {
        Self::new(
            &settings.rate_limit,
            service,
            settings.redis_url(),
            &settings.redis.key_prefix,
        )
    }

    async fn check(&self, subject: &str, class: RouteClass, limiter: &ClassLimiter) -> Verdict {
        let manager = self.redis.read().ok().and_then(|slot| slot.clone());
        if let Some(mut manager) = manager {
            let key = format!(
                "{}rl:{}:{}:{subject}",
                self.key_prefix,
                self.service,
                class.name()
            );
            let interval = (1_000_000 / u64::from(limiter.per_second)).max(1);
            let script = redis::Script::new(GCRA);
            let mut invocation = script.key(key);
            invocation.arg(interval).arg(limiter.burst);
            let call = invocation.invoke_async::<(i64, i64, i64)>(&mut manager);
            match tokio::time::timeout(REDIS_BUDGET, call).await {
                Ok(Ok((allowed, remaining, retry_micros))) => {
                    return if allowed == 1 {
                        Verdict::Allowed {
                            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                        }
                    } else {
                        Verdict::Denied {
                            retry_after: Duration::from_micros(
                                u64::try_from(retry_micros.max(0)).unwrap_or(0),
                            ),
                        }
                    };
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "Redis rate limit failed; throttling locally");
                }
                Err(_) => tracing::warn!("Redis rate limit timed out; throttling locally"),
            }
            metrics::counter!("rate_limit_redis_fallback_total", "service" => self.service)
                .increment(1);
        }
        match limiter.limiter.check_key(&subject.to_owned()) {
            Ok(snapshot) => Verdict::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Denied {
                retry_after: not_until.wait_time_from(limiter.limiter.clock().now()),
            },
        }
    }

    /// Whether quotas are kept in Redis (a decision waits for it).
    pub fn shared_through_redis(&self) -> bool {
        self.enabled && self.redis.read().ok().is_none_or(|slot| slot.is_some())
    }

    /// Decides a request of `subject` as [`limit`] would (in Redis when
    /// quotas are shared, else here): `Some` when it is within quota
    /// (counted), `None` when it is over quota (not counted: the full
    /// stack answers the 429).
    pub async fn admit(&self, subject: &str, method: &Method) -> Option<Admitted> {
        if !self.enabled {
            return Some(Admitted(None));
        }
        let class = RouteClass::of(method);
        let limiter = self.limiter(subject, class);
        match self.check(subject, class, limiter).await {
            Verdict::Allowed { remaining } => Some(Admitted(Some((
                limiter.policy(class),
                limiter.state(class, remaining),
            )))),
            Verdict::Denied { .. } => None,
        }
    }

    /// Decides a request of `subject` in this process, without waiting,
    /// as [`limit`] would: `Some` when it is within quota (counted);
    /// `None` when it is over quota (not counted: the full stack answers
    /// the 429) or when quotas are shared through Redis (then
    /// [`RateLimits::admit`] waits for it).
    pub fn admit_now(&self, subject: &str, method: &Method) -> Option<Admitted> {
        if !self.enabled {
            return Some(Admitted(None));
        }
        if self.shared_through_redis() {
            return None;
        }
        let class = RouteClass::of(method);
        let limiter = self.limiter(subject, class);
        let snapshot = limiter.limiter.check_key(&subject.to_owned()).ok()?;
        let remaining = snapshot.remaining_burst_capacity();
        Some(Admitted(Some((
            limiter.policy(class),
            limiter.state(class, remaining),
        ))))
    }

    fn limiter(&self, subject: &str, class: RouteClass) -> &ClassLimiter {
        self.clients
            .get(subject)
            .unwrap_or(&self.default)
            .class(class)
    }
}

fn header(value: String) -> HeaderValue {
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Middleware: applies the client's quota for the route class.
pub async fn limit(
    State(limits): State<Arc<RateLimits>>,
    request: Request,
    next: Next,
) -> Response {
    if !limits.enabled {
        return next.run(request).await;
    }
    let Some(subject) = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.actor().to_owned())
    else {
        return next.run(request).await;
    };
    let class = RouteClass::of(request.method());
    let limiter = limits.limiter(&subject, class);
    let policy = limiter.policy(class);
    match limits.check(&subject, class, limiter).await {
        Verdict::Allowed { remaining } => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), limiter.state(class, remaining));
            response
        }
        Verdict::Denied { retry_after: wait } => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let seconds = seconds.max(1);
            metrics::counter!("rate_limited_total", "class" => class.name()).increment(1);
            let mut response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            )
            .with_detail(format!(
                "the {} quota of client `{subject}` is used up; retry in {seconds} s",
                class.name()
            ))
            .into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, header(seconds.to_string()));
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(
                RATELIMIT.clone(),
                header(format!("\"{}\";r=0;t={seconds}", class.name())),
            );
            response
        }
    }
}
