//! process-api: the single owner of inventory state.
//!
//! It keeps the master data registry and (as the inventory core grows) the
//! event journal, positions, reservations and the ERP outbox, and calls
//! system-api for the systems of record. The HTTP surface is in [`routes`];
//! storage in [`storage`]; nothing outside `routes` knows about axum.

pub mod config;
pub mod console;
pub mod erp;
pub mod error;
pub mod feed;
pub mod inventory;
pub mod routes;
pub mod seed;
pub mod storage;
pub mod webhooks;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
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
use storage::Store;

/// The service name used in logs, metrics and service tokens.
pub const SERVICE: &str = "process-api";

/// Shared state of every handler.
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
    /// The ledger and registry.
    pub store: Store,
    /// Client of system-api.
    pub system: LayerClient,
    /// Mints tokens (service-to-service).
    pub issuer: TokenIssuer,
    /// Reservation lifetimes and caps.
    pub reservations: retail_shared::config::ReservationSettings,
    /// Transfer approval threshold.
    pub transfers: retail_shared::config::TransferSettings,
    /// Which nodes each sales channel may sell from.
    pub channels: std::collections::BTreeMap<String, retail_shared::config::ChannelRule>,
    /// This replica's link to the ERP (breaker, last call).
    pub sync: Arc<erp::SyncStatus>,
    /// system-api client for ERP work (postings, balances, master data),
    /// with `[erp_posting] call_timeout_ms` as its deadline.
    pub erp: LayerClient,
    /// Reconciliation settings.
    pub reconciliation: retail_shared::config::ReconciliationSettings,
    /// `[process] stale_after_seconds`.
    pub stale_after_seconds: u64,
    /// The change feed's live side on this replica.
    pub feed: Arc<feed::FeedHub>,
    /// `[feed] keep_alive_seconds` of SSE streams.
    pub feed_keep_alive_seconds: u64,
    /// What bounds each change stream (token lifetime, per-client cap,
    /// resume depth).
    pub streams: Arc<retail_shared::streams::StreamLimits>,
    /// Webhook delivery (its HTTP client serves dead-letter replays).
    pub webhooks: webhooks::Deliverer,
    /// The sync-health report, computed at most once a second however
    /// many consoles watch it.
    pub health: Arc<routes::ops::HealthCache>,
}

impl AppState {
    /// A reconciler over this state's store and system-api client.
    pub fn reconciler(&self) -> erp::reconcile::Reconciler {
        erp::reconcile::Reconciler::new(
            self.store.clone(),
            self.erp.clone(),
            self.reconciliation.clone(),
        )
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "process-api",
        description = "Owns the inventory ledger: master data, events, positions, \
            reservations, transfers, returns, ERP postings and reconciliation.\n\n\
            Errors are RFC 9457 problem+json. Bodies are strict JSON: unknown fields are \
            rejected. Master data upserts take 1-1000 records; list pages hold at most 1000.",
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
        (name = "master-data", description = "Locations and products"),
        (name = "inventory", description = "Events, journal, positions"),
        (name = "reservations", description = "Holds on available units, all lines or none"),
        (name = "transfers", description = "Stock moved between locations"),
        (name = "promising", description = "Which nodes can serve an order"),
        (name = "returns", description = "Customer returns with a disposition per line"),
        (name = "operations", description = "Health, readiness, diagnostics"),
    )
)]
struct ApiDoc;

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(retail_shared::ops::with_governance_notes(ApiDoc::openapi()))
        .merge(routes::master::router())
        .merge(routes::inventory::router())
        .merge(routes::reservations::router())
        .merge(routes::flows::router())
        .merge(routes::promise::router())
        .merge(routes::ops::router())
        .merge(routes::feed::router())
}

/// The published OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The production router: API routes, operational routes and the common
/// middleware stack.
pub fn router(
    state: AppState,
    settings: &Settings,
    auditor: Auditor,
    audit_log: Arc<dyn AuditSink>,
) -> Router {
    let (api, mut doc) = api().split_for_parts();
    retail_shared::deprecation::flag_in_openapi(&mut doc, &settings.deprecations);
    let store = state.store.clone();
    let state_store = state.store.clone();
    let system = state.system.clone();
    // system-api is reported but not required: events are still accepted
    // and ERP postings wait in the outbox while it is away.
    let checks = vec![
        ReadinessCheck::new("database", move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        }),
        ReadinessCheck::optional("system-api", move || {
            let system = system.clone();
            async move { system.probe("/healthz").await }
        }),
    ];
    let hub = state.feed.clone();
    let app = api
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            hub,
            feed::wake_after_writes,
        ))
        .merge(console::router())
        .merge(retail_shared::ops::router(SERVICE, checks, doc, audit_log));
    middleware::apply(
        app,
        SERVICE,
        settings,
        Arc::new(
            Authenticator::new(&settings.auth, audience::PROCESS).with_service_keys(
                &retail_shared::service_keys::for_router(&settings.auth.service_keys, SERVICE),
            ),
        ),
        // Keys live in the ledger's database: replicas share them.
        Arc::new(state_store),
        auditor,
    )
}

/// A built, bound process-api.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    store: Store,
    audit_writer: tokio::task::JoinHandle<()>,
    sweep_interval: std::time::Duration,
    audit_retention: std::time::Duration,
    table_maintenance: retail_shared::config::TableMaintenance,
    background: Background,
}

/// What the ERP workers need.
struct Background {
    state: AppState,
    posting: retail_shared::config::ErpPostingSettings,
    feed: retail_shared::config::FeedSettings,
    webhooks: bool,
}

impl Application {
    /// Binds the configured address, then builds (see
    /// [`Application::build_with_listener`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let config = Config::from(&settings);
        let listener = server::bind(&config.host, config.port).await?;
        Self::build_with_listener(settings, listener).await
    }

    /// Connects storage (running migrations), seeds demo data when enabled
    /// and the registry is empty, and serves on `listener`.
    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let config = Config::from(&settings);
        let keys = server::prepare(&settings, &listener, SERVICE)?;
        let store = Store::connect_with(
            &config.database_url,
            config.max_connections,
            &settings.process.sqlite,
        )
        .await
        .context("process-api storage")?;
        if settings.seed.enabled {
            seed::seed_if_empty(
                &store,
                settings.seed.stores,
                settings.seed.skus,
                settings.seed.opening_stock,
            )
            .await?;
        }
        let issuer = TokenIssuer::new(&settings.auth).with_service_keys(&keys);
        let system = LayerClient::new(
            SERVICE,
            audience::SYSTEM,
            &config.system_url,
            &settings.client,
            issuer.clone(),
        )?;
        let mut erp_call = settings.client.clone();
        erp_call.timeout_ms = settings.erp_posting.call_timeout_ms;
        let erp_client = LayerClient::new(
            SERVICE,
            audience::SYSTEM,
            &config.system_url,
            &erp_call,
            issuer.clone(),
        )?;
        let feed_hub = Arc::new(feed::FeedHub::default());
        let state = AppState::new(Shared {
            store: store.clone(),
            system,
            issuer,
            reservations: settings.reservations.clone(),
            transfers: settings.transfers.clone(),
            channels: settings.channels.clone(),
            sync: Arc::new(erp::SyncStatus::default()),
            erp: erp_client,
            reconciliation: settings.reconciliation.clone(),
            stale_after_seconds: settings.process.stale_after_seconds,
            feed: feed_hub.clone(),
            feed_keep_alive_seconds: settings.feed.keep_alive_seconds,
            streams: retail_shared::streams::StreamLimits::new(&settings),
            webhooks: webhooks::Deliverer::new(
                store.clone(),
                feed_hub.clone(),
                settings.webhooks.clone(),
            )?,
            health: Arc::default(),
        });
        let background = Background {
            state: state.clone(),
            posting: settings.erp_posting.clone(),
            feed: settings.feed.clone(),
            webhooks: settings.webhooks.enabled,
        };
        // The audit log lives in the ledger's database.
        let audit_log: Arc<dyn AuditSink> = Arc::new(store.clone());
        let (auditor, audit_writer) = Auditor::start(SERVICE, audit_log.clone());
        let router = router(state, &settings, auditor, audit_log);
        let port = server::local_addr(&listener)?.port();
        Ok(Self {
            listener,
            router,
            port,
            store,
            audit_writer,
            background,
            sweep_interval: std::time::Duration::from_millis(
                settings.reservations.sweep_interval_ms,
            ),
            audit_retention: std::time::Duration::from_secs(
                settings.audit.retention_days.saturating_mul(86_400),
            ),
            table_maintenance: settings.process.pg_table_maintenance,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The storage, for tests and the launcher.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(server::shutdown_signal()).await
    }

    /// Serves until `signal` resolves, drains requests, stops the
    /// background workers, closes storage.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sweeper = tokio::spawn(workers::parked_sweeper(
            self.store.clone(),
            workers::PARKED_SWEEP_INTERVAL,
            self.audit_retention,
            stopped,
        ));
        let reservations = tokio::spawn(workers::reservation_sweeper(
            self.store.clone(),
            self.sweep_interval,
            stop.subscribe(),
        ));
        let mut erp_workers = vec![
            tokio::spawn(workers::backlog_gauges(
                self.store.clone(),
                workers::GAUGE_INTERVAL,
                stop.subscribe(),
            )),
            tokio::spawn(workers::table_maintenance(
                self.store.clone(),
                self.table_maintenance,
                workers::MAINTENANCE_INTERVAL,
                stop.subscribe(),
            )),
        ];
        if self.background.posting.enabled {
            let poster = erp::poster::Poster::new(
                self.store.clone(),
                self.background.state.erp.clone(),
                self.background.posting.clone(),
                self.background.state.sync.clone(),
            );
            erp_workers.push(tokio::spawn(poster.run(stop.subscribe())));
        }
        if self.background.feed.enabled {
            erp_workers.push(tokio::spawn(feed::publisher(
                self.store.clone(),
                self.background.state.feed.clone(),
                self.background.feed.clone(),
                stop.subscribe(),
            )));
        }
        if self.background.webhooks {
            erp_workers.push(tokio::spawn(
                self.background.state.webhooks.clone().run(stop.subscribe()),
            ));
        }
        erp_workers.push(tokio::spawn(workers::erp_schedules(
            self.background.state.clone(),
            stop.subscribe(),
        )));
        let result = server::serve(self.listener, self.router, signal).await;
        // The router (holding the last `Auditor`) is gone: let the audit
        // writer store what is queued.
        Auditor::drain(self.audit_writer, std::time::Duration::from_secs(5)).await;
        let _ = stop.send(true);
        if let Err(error) = sweeper.await {
            tracing::error!(%error, "parked sweeper ended abnormally");
        }
        if let Err(error) = reservations.await {
            tracing::error!(%error, "reservation sweeper ended abnormally");
        }
        for worker in erp_workers {
            if let Err(error) = worker.await {
                tracing::error!(%error, "a background worker ended abnormally");
            }
        }
        self.store.close().await;
        result
    }
}
