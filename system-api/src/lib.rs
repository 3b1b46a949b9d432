//! system-api: adapters to the systems of record (POS, WMS, ERP).
//!
//! Inbound store traffic enters here and leaves as canonical events for
//! process-api; ERP postings arrive from process-api and leave through the
//! configured ERP backend ([`adapters::erp`]).

pub mod adapters;
pub mod config;
pub mod error;
pub mod routes;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use retail_shared::audit::{AuditSink, Auditor};
use retail_shared::auth::{Authenticator, TokenIssuer, audience};
use retail_shared::client::LayerClient;
use retail_shared::config::ErpBackend;
use retail_shared::ops::{ReadinessCheck, SecurityAddon};
use retail_shared::{Settings, middleware, server};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use adapters::erp::Erp;
use adapters::erp::sandbox::SandboxErp;
pub use config::Config;

/// The service name used in logs, metrics and service tokens.
pub const SERVICE: &str = "system-api";

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
    /// Adapter storage (idempotency of store traffic, sandbox ERP).
    pub pool: SqlitePool,
    /// The configured ERP backend.
    pub erp: Arc<dyn Erp>,
    /// The sandbox's controls, when the sandbox is the backend.
    pub sandbox: Option<SandboxErp>,
    /// Client of process-api (adapters hand canonical events to it).
    pub process: LayerClient,
    /// Where `Idempotency-Key` records live: Redis when configured (shared
    /// by replicas), else this process's memory.
    pub idempotency: Arc<dyn retail_shared::idempotency::IdempotencyStore>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "system-api",
        description = "Adapters to the systems of record: POS, WMS and the ERP \
            (built-in sandbox or Tryton).\n\nErrors are RFC 9457 problem+json; bodies are \
            strict JSON.",
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
        (name = "pos", description = "Point-of-sale adapter"),
        (name = "wms", description = "Warehouse management adapter"),
        (name = "erp", description = "ERP adapter (sandbox or Tryton) and the sandbox's controls"),
        (name = "operations", description = "Health, readiness, diagnostics"),
    )
)]
struct ApiDoc;

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(retail_shared::ops::with_governance_notes(ApiDoc::openapi()))
        .merge(routes::pos::router())
        .merge(routes::wms::router())
        .merge(routes::erp::router())
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
    let checks = readiness_checks(&state);
    let app = api
        .with_state(state)
        .merge(retail_shared::ops::router(SERVICE, checks, doc, audit_log));
    middleware::apply(
        app,
        SERVICE,
        settings,
        Arc::new(
            Authenticator::new(&settings.auth, audience::SYSTEM).with_service_keys(
                &retail_shared::service_keys::for_router(&settings.auth.service_keys, SERVICE),
            ),
        ),
        idempotency,
        auditor,
    )
}

/// What readiness checks, `/readyz` unauthenticated (states only) and
/// `GET /v1/ops/dependencies` in detail.
fn readiness_checks(state: &AppState) -> Vec<ReadinessCheck> {
    let pool = state.pool.clone();
    let erp = state.erp.clone();
    vec![
        ReadinessCheck::new("database", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }),
        // An ERP outage must not take the store adapters out of rotation:
        // store traffic keeps flowing and postings wait in process-api.
        ReadinessCheck::optional("erp", move || {
            let erp = erp.clone();
            async move { erp.health().await }
        }),
    ]
}

async fn open_pool(url: &str) -> anyhow::Result<SqlitePool> {
    // Before the first connection, as process-api does (one SQLite per
    // process, and the embedded default runs both in one).
    match sqlite_pagecache::install() {
        Ok(()) => {}
        Err(sqlite_pagecache::InstallError::Disabled) => {
            tracing::info!("SQLite's default page cache chosen")
        }
        Err(error) => tracing::warn!(%error, "SQLite's bounded page cache is not in use"),
    }
    let options = SqliteConnectOptions::from_str(url)
        .context("system.database_url must be a sqlite:// URL")?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    if let Some(parent) = options.get_filename().parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // One connection: SQLite has one writer, and the adapters mostly write.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .context("cannot open system-api storage")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("system-api migrations failed")?;
    Ok(pool)
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

/// A built, bound system-api.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    pool: SqlitePool,
    audit_writer: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Binds the configured address, then builds (see
    /// [`Application::build_with_listener`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let config = Config::from(&settings);
        let listener = server::bind(&config.host, config.port).await?;
        Self::build_with_listener(settings, listener).await
    }

    /// Opens storage, selects the ERP backend and serves on `listener`.
    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let config = Config::from(&settings);
        let keys = server::prepare(&settings, &listener, SERVICE)?;
        let idempotency = idempotency_store(&settings);
        let pool = open_pool(&config.database_url).await?;
        let (erp, sandbox): (Arc<dyn Erp>, _) = match config.erp_backend {
            ErpBackend::Sandbox => {
                let sandbox = SandboxErp::new(pool.clone());
                (Arc::new(sandbox.clone()), Some(sandbox))
            }
            ErpBackend::Tryton => (
                Arc::new(adapters::erp::tryton::TrytonErp::new(&settings.erp.tryton)?),
                None,
            ),
        };
        let process = LayerClient::new(
            SERVICE,
            audience::PROCESS,
            &config.process_url,
            &settings.client,
            TokenIssuer::new(&settings.auth).with_service_keys(&keys),
        )?;
        // The newest 10,000 entries are kept in memory.
        let audit_log: Arc<dyn AuditSink> =
            Arc::new(retail_shared::audit::MemoryAudit::new(10_000));
        let (auditor, audit_writer) = Auditor::start(SERVICE, audit_log.clone());
        let router = router(
            AppState::new(Shared {
                pool: pool.clone(),
                erp,
                sandbox,
                process,
                idempotency,
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
            pool,
            audit_writer,
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

    /// Serves until `signal` resolves, drains requests, closes storage.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let result = server::serve(self.listener, self.router, signal).await;
        // The router (holding the last `Auditor`) is gone: let the audit
        // writer store what is queued.
        Auditor::drain(self.audit_writer, std::time::Duration::from_secs(5)).await;
        self.pool.close().await;
        result
    }
}
