//! experience-api: the channel-facing layer (web shop, mobile, store
//! associate app, partners). It shapes process-api's answers for each
//! channel and never owns inventory state.

pub mod config;
pub mod error;
pub mod fast_read;
pub mod process_client;
pub mod read_model;
pub mod relay;
pub mod routes;
pub mod shared_model;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use retail_shared::audit::{AuditSink, Auditor};
use retail_shared::auth::{Authenticator, TokenIssuer, audience};
use retail_shared::client::LayerClient;
use retail_shared::ops::{ReadinessCheck, SecurityAddon};
use retail_shared::{Settings, middleware, server};
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use config::Config;
use process_client::ProcessClient;

/// The service name used in logs, metrics and service tokens.
pub const SERVICE: &str = "experience-api";

/// Shared state of every handler: one allocation, so the per-request
/// clone axum makes of it is a reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the shared state.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Shared {
    /// process-api.
    pub process: ProcessClient,
    /// Where `Idempotency-Key` records live: Redis when configured (shared
    /// by replicas), else this process's memory.
    pub idempotency: Arc<dyn retail_shared::idempotency::IdempotencyStore>,
    /// Reservation caps, checked here before a request travels inward.
    pub reservations: retail_shared::config::ReservationSettings,
    /// The change feed, followed from process-api.
    pub relay: Arc<relay::Relay>,
    /// `[feed] keep_alive_seconds` of SSE streams.
    pub feed_keep_alive_seconds: u64,
    /// What bounds each channel stream (token lifetime, per-client cap,
    /// resume depth).
    pub streams: Arc<retail_shared::streams::StreamLimits>,
    /// The availability read model (see [`read_model`]).
    pub model: Arc<read_model::ReadModel>,
    /// Answer from the model only while it is this fresh (`None`: never).
    pub model_max_staleness: Option<std::time::Duration>,
    /// The copy of the model replicas share through Redis (see
    /// [`shared_model`]), when configured.
    pub shared_model: Option<Arc<shared_model::SharedModel>>,
}

impl Shared {
    /// How stale the read model is, if it may answer now.
    pub fn model_staleness(&self) -> Option<std::time::Duration> {
        let bound = self.model_max_staleness?;
        self.relay
            .staleness()
            .filter(|staleness| *staleness <= bound)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "experience-api",
        description = "Channel-facing API for the web shop, mobile apps, the store associate \
            app and partners: availability, reservations and store views.\n\nErrors are \
            RFC 9457 problem+json; bodies are strict JSON (unknown fields rejected).",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecurityAddon),
    paths(
        retail_shared::ops::healthz,
        retail_shared::ops::readyz,
        retail_shared::ops::metrics,
        retail_shared::ops::audit_log
    ),
    components(schemas(retail_shared::problem::ProblemBody)),
    tags(
        (name = "availability", description = "Available to sell"),
        (name = "stores", description = "Store directory"),
        (name = "reservations", description = "Holds on available units for carts and orders"),
        (name = "promising", description = "Which nodes can serve an order"),
        (name = "operations", description = "Health, readiness, diagnostics"),
    )
)]
struct ApiDoc;

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(retail_shared::ops::with_governance_notes(ApiDoc::openapi()))
        .merge(routes::availability::router())
        .merge(routes::changes::router())
        .merge(routes::stores::router())
        .merge(routes::reservations::router())
        .merge(routes::ops::router())
}

/// The published OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The production router.
pub fn router(
    state: AppState,
    settings: &Settings,
    auditor: Auditor,
    audit_log: Arc<dyn AuditSink>,
) -> Router {
    let idempotency = state.idempotency.clone();
    let (api, mut doc) = api().split_for_parts();
    // No database here: the newest 10,000 entries are kept in memory.
    retail_shared::deprecation::flag_in_openapi(&mut doc, &settings.deprecations);
    let process = state.process.clone();
    // Without process-api this layer can answer nothing useful.
    let checks = vec![ReadinessCheck::new("process-api", move || {
        let process = process.clone();
        async move { process.ready().await }
    })];
    let fast_read = settings.experience.fast_read.then(|| state.clone());
    let app = api
        .with_state(state)
        .merge(retail_shared::ops::router(SERVICE, checks, doc, audit_log));
    let authenticator = Arc::new(Authenticator::new(&settings.auth, audience::EXPERIENCE));
    let limits = retail_shared::ratelimit::RateLimits::for_service(settings, SERVICE);
    let app = middleware::apply_with_limits(
        app,
        SERVICE,
        settings,
        authenticator.clone(),
        idempotency,
        auditor,
        limits.clone(),
    );
    match fast_read {
        Some(state) => app.layer(fast_read::FastReadLayer::new(
            state,
            authenticator,
            limits,
            retail_shared::deprecation::rules(&settings.deprecations),
            middleware::cors_headers(settings),
        )),
        None => app,
    }
}

/// Redis when `[redis] url` is set (shared by replicas; this process's
/// memory while Redis is away), else memory (one replica).
fn idempotency_store(settings: &Settings) -> Arc<dyn retail_shared::idempotency::IdempotencyStore> {
    match settings.redis_url() {
        Some(url) => retail_shared::idempotency::SharedStore::start(
            url,
            &format!("{}idem:{SERVICE}:", settings.redis.key_prefix),
        ),
        None => Arc::new(retail_shared::idempotency::MemoryStore::new(
            settings.idempotency.max_keys_per_client,
        )),
    }
}

/// A built, bound experience-api.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    audit_writer: tokio::task::JoinHandle<()>,
    follower: Follower,
}

/// What the change-feed relay task needs.
struct Follower {
    relay: Arc<relay::Relay>,
    process: ProcessClient,
    keep_alive: std::time::Duration,
    shared_model: Option<Arc<shared_model::SharedModel>>,
}

impl Application {
    /// Binds the configured address, then builds (see
    /// [`Application::build_with_listener`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let config = Config::from(&settings);
        let listener = server::bind(&config.host, config.port).await?;
        Self::build_with_listener(settings, listener).await
    }

    /// Builds the clients and serves on `listener`.
    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let config = Config::from(&settings);
        let keys = server::prepare(&settings, &listener, SERVICE)?;
        let idempotency = idempotency_store(&settings);
        let issuer = TokenIssuer::new(&settings.auth).with_service_keys(&keys);
        let process = ProcessClient::new(LayerClient::new(
            SERVICE,
            audience::PROCESS,
            &config.process_url,
            &settings.client,
            issuer,
        )?);
        // No database here: the newest 10,000 entries are kept in memory.
        let audit_log: Arc<dyn AuditSink> =
            Arc::new(retail_shared::audit::MemoryAudit::new(10_000));
        let (auditor, audit_writer) = Auditor::start(SERVICE, audit_log.clone());
        let model = read_model::ReadModel::new(settings.experience.read_model_max_skus);
        let relay = relay::Relay::with_model(settings.feed.relay_buffer, Some(model.clone()));
        let shared_model = settings
            .redis_url()
            .filter(|_| settings.experience.read_model && settings.experience.read_model_shared)
            .map(|url| {
                shared_model::SharedModel::start(
                    url,
                    &settings.redis.key_prefix,
                    std::time::Duration::from_secs(
                        settings.experience.read_model_shared_ttl_seconds.max(1),
                    ),
                )
            });
        let follower = Follower {
            relay: relay.clone(),
            process: process.clone(),
            keep_alive: std::time::Duration::from_secs(settings.feed.keep_alive_seconds.max(1)),
            shared_model: shared_model.clone(),
        };
        let router = router(
            AppState::new(Shared {
                process,
                idempotency,
                reservations: settings.reservations.clone(),
                relay,
                feed_keep_alive_seconds: settings.feed.keep_alive_seconds,
                streams: retail_shared::streams::StreamLimits::new(&settings),
                model,
                model_max_staleness: settings.experience.read_model.then(|| {
                    std::time::Duration::from_millis(
                        settings.experience.read_model_max_staleness_ms,
                    )
                }),
                shared_model,
            }),
            &settings,
            auditor,
            audit_log,
        );
        let port = server::local_addr(&listener)?.port();
        Ok(Self {
            listener,
            router,
            port,
            audit_writer,
            follower,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(server::shutdown_signal()).await
    }

    /// Serves until `signal` resolves and drains requests.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let relay = tokio::spawn(relay::follow(
            self.follower.relay.clone(),
            self.follower.process,
            self.follower.keep_alive,
            stopped,
        ));
        let writer = self.follower.shared_model.map(|shared| {
            tokio::spawn(shared_model::follow(
                shared,
                self.follower.relay.clone(),
                stop.subscribe(),
            ))
        });
        let result = server::serve(self.listener, self.router, signal).await;
        let _ = stop.send(true);
        if let Err(error) = relay.await {
            tracing::error!(%error, "the change feed relay ended abnormally");
        }
        if let Some(writer) = writer
            && let Err(error) = writer.await
        {
            tracing::error!(%error, "the shared read model writer ended abnormally");
        }
        // The router (holding the last `Auditor`) is gone: let the audit
        // writer store what is queued.
        Auditor::drain(self.audit_writer, std::time::Duration::from_secs(5)).await;
        result
    }
}
