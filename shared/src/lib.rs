//! Shared governance and model crate of the retail inventory visibility
//! platform.
//!
//! Every service (experience-api, process-api, system-api) is built from the
//! same parts, all of which live here so the three layers behave alike:
//!
//! - [`config`]: layered, typed configuration (file, `--config FILE`, env).
//! - [`problem`]: RFC 9457 problem+json errors and extractors whose
//!   rejections are problems too ([`problem::ApiJson`], [`problem::ApiQuery`]).
//! - [`middleware`]: the one function that applies the common layer stack.
//! - [`correlation`]: `X-Request-Id` and W3C `traceparent` handling.
//! - [`auth`]: JWT verification, scopes, location binding, service tokens.
//! - [`client`]: the typed base client used between layers.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`.
//! - [`server`]: binding, serving and graceful shutdown.
//! - [`streams`]: the limits of served event streams (token lifetime,
//!   per-client cap, resume depth).
//! - [`telemetry`]: JSON logs and the Prometheus recorder.
//! - [`metric_catalog`]: every metric's name and help text.
//! - [`model`]: the canonical inventory model shared by all layers.

pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod correlation;
pub mod deprecation;
pub mod erp;
pub mod idempotency;
pub mod metric_catalog;
pub mod middleware;
pub mod model;
pub mod ops;
pub mod peer_limit;
pub mod problem;
pub mod promise;
pub mod ratelimit;
pub mod redis_link;
pub mod server;
pub mod service_keys;
pub mod sse;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod validate;

pub use config::Settings;
pub use problem::{ApiJson, ApiQuery, Problem};
