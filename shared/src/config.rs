//! Layered, typed configuration.
//!
//! Layers, lowest first: the embedded `config/default.toml`, then an optional
//! file given with `--config FILE`, then environment variables
//! `RETAIL_<SECTION>__<KEY>` (`__` separates every nesting level). One
//! [`Settings`] value describes the whole platform; each service reads its
//! own section plus the shared ones.

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The defaults shipped with the code: a fresh clone runs with nothing else.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// The development signing secret from `config/default.toml`. A production
/// profile refuses to start while it is in use.
pub const DEV_SIGNING_SECRET: &str = "dev-only-insecure-signing-secret-change-me";

/// Every signing secret this repository has ever published (its config
/// files, docs and tests): anyone can read them, so none may guard a
/// service that listens beyond loopback. A test scans the repository's
/// config and docs for secrets missing here.
pub const PUBLISHED_SECRETS: &[&str] = &[
    DEV_SIGNING_SECRET,
    "replace-with-a-long-random-secret-from-your-vault",
    "a-real-production-secret-of-enough-length",
];

/// Errors raised while loading or checking configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or did not match the typed settings.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// The settings parsed but break a rule (e.g. dev secret in production).
    #[error("refusing to start: {0}")]
    Refused(String),
}

/// A secret value: usable by code, never printed by `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the code that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Deployment profile.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// One developer machine: dev secret allowed.
    Development,
    /// A real deployment: the dev secret is refused.
    Production,
}

/// The whole platform's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Deployment profile.
    pub profile: Profile,
    /// Token verification and service-token minting.
    pub auth: AuthSettings,
    /// Server-side HTTP limits shared by every service.
    pub http: HttpSettings,
    /// Throttling.
    pub rate_limit: RateLimitSettings,
    /// Idempotency-Key handling.
    pub idempotency: IdempotencySettings,
    /// Inter-layer HTTP clients.
    pub client: ClientSettings,
    /// The audit log's retention.
    pub audit: AuditSettings,
    /// Trust roots of outgoing TLS connections.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// experience-api.
    pub experience: ExperienceSettings,
    /// process-api.
    pub process: ProcessSettings,
    /// system-api.
    pub system: SystemSettings,
    /// ERP backend of system-api.
    pub erp: ErpSettings,
    /// Optional shared Redis.
    pub redis: RedisSettings,
    /// Demo data seeding.
    pub seed: SeedSettings,
    /// Reservation lifetimes and anti-hoarding caps.
    pub reservations: ReservationSettings,
    /// Store-to-store and DC transfers.
    pub transfers: TransferSettings,
    /// Which nodes count for which sales channel.
    pub channels: std::collections::BTreeMap<String, ChannelRule>,
    /// Delivery of the ERP outbox (process-api → system-api → ERP).
    pub erp_posting: ErpPostingSettings,
    /// ERP balances against platform on_hand.
    pub reconciliation: ReconciliationSettings,
    /// The availability change feed (process-api publishes, experience-api
    /// relays).
    pub feed: FeedSettings,
    /// Signed webhook delivery of the change feed.
    pub webhooks: WebhookSettings,
    /// Deprecated versions or routes.
    #[serde(default)]
    pub deprecations: Vec<Deprecation>,
}

/// A deprecated version (`/v1`) or route (`/v1/stores`): its responses
/// carry `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a `Link` to the
/// successor, and its operations are flagged in the OpenAPI document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    /// Every path starting with this prefix (at a `/` boundary).
    pub path_prefix: String,
    /// When it was deprecated (RFC 3339).
    pub deprecated_at: String,
    /// When it stops working (RFC 3339), if decided.
    #[serde(default)]
    pub sunset: Option<String>,
    /// URL of the successor version or route.
    #[serde(default)]
    pub successor: Option<String>,
}

impl Deprecation {
    /// Whether `path` falls under this deprecation.
    pub fn covers(&self, path: &str) -> bool {
        let prefix = self.path_prefix.trim_end_matches('/');
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Token verification and minting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `iss` written into and required from every token.
    pub issuer: String,
    /// Accepted algorithms (pinned; never read from the token header).
    pub algorithms: Vec<String>,
    /// HS256 shared secret.
    pub hs256_secret: Secret,
    /// Tolerated clock skew on `exp`/`nbf`, seconds.
    pub leeway_seconds: u64,
    /// Lifetime of minted service tokens, seconds.
    pub service_token_ttl_seconds: u64,
    /// JWKS URL for RS256/ES256 tokens; empty: none.
    pub jwks_url: String,
    /// How long fetched keys are trusted, seconds.
    pub jwks_cache_seconds: u64,
    /// Least time between two fetches, seconds (unknown `kid` floods).
    pub jwks_min_refresh_seconds: u64,
    /// The Ed25519 keys of service tokens (one per calling layer).
    pub service_keys: ServiceKeySettings,
}

/// The audit log of state-changing requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Days an entry is kept (process-api's database; experience-api and
    /// system-api keep their newest 10,000 entries in memory).
    pub retention_days: u64,
}

/// Where the service-token keys live (see [`crate::service_keys`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceKeySettings {
    /// Directory of `<service>.key.pem` and `<service>.pub.pem`.
    pub dir: String,
    /// Create a missing pair on start (one machine); off in deployments.
    pub create_missing: bool,
}

/// TLS settings of every outgoing connection (JWKS, webhooks, Tryton,
/// OTLP, the layers' clients).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// A PEM file of extra trusted CA certificates (a private CA), added to
    /// webpki's roots; empty: webpki's roots only.
    #[serde(default)]
    pub ca_file: String,
}

/// Server-side HTTP limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Whole-request deadline in milliseconds.
    pub request_timeout_ms: u64,
    /// Deadline of the streamed bulk uploads in `upload_paths`.
    pub upload_timeout_ms: u64,
    /// Paths (exact) that stream large bodies and get `upload_timeout_ms`.
    pub upload_paths: Vec<String>,
    /// Largest accepted request body in bytes.
    pub body_limit_bytes: usize,
    /// CORS allowed origins; empty disables CORS.
    pub cors_allowed_origins: Vec<String>,
    /// gzip responses when accepted.
    pub compression: bool,
}

/// Idempotency-Key handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// Retention of keys and stored responses, hours.
    pub retention_hours: u64,
    /// In-flight lease, seconds.
    pub lease_seconds: u64,
    /// Keys kept per client by the in-memory store (least recently used
    /// go first).
    pub max_keys_per_client: usize,
    /// Largest answer stored for replay, bytes.
    pub max_response_bytes: usize,
}

/// Throttling per client and route class.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Off: no limits, no headers.
    pub enabled: bool,
    /// Sustained reads per second per client.
    pub read_per_second: u32,
    /// Reads a client may make at once.
    pub read_burst: u32,
    /// Sustained writes per second per client.
    pub write_per_second: u32,
    /// Writes a client may make at once.
    pub write_burst: u32,
    /// Requests per second per peer address that carry no recently
    /// verified token (see [`crate::peer_limit`]).
    pub unauthenticated_per_second: u32,
    /// Such requests one address may make at once.
    pub unauthenticated_burst: u32,
    /// Per-client overrides, by `sub`.
    #[serde(default)]
    pub clients: std::collections::BTreeMap<String, ClientQuota>,
}

/// One client's quotas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuota {
    /// Sustained reads per second.
    pub read_per_second: u32,
    /// Read burst.
    pub read_burst: u32,
    /// Sustained writes per second.
    pub write_per_second: u32,
    /// Write burst.
    pub write_burst: u32,
}

/// Inter-layer HTTP clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Per-attempt deadline, milliseconds.
    pub timeout_ms: u64,
    /// Connect deadline, milliseconds.
    pub connect_timeout_ms: u64,
    /// Retries for idempotent calls.
    pub max_retries: usize,
    /// First backoff delay, milliseconds.
    pub retry_min_delay_ms: u64,
    /// Largest backoff delay, milliseconds.
    pub retry_max_delay_ms: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// EnvFilter directive (RUST_LOG wins).
    pub log_level: String,
    /// OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`);
    /// empty: no traces are exported.
    pub otlp_endpoint: String,
    /// How often finished spans are sent (the batch exporter's delay).
    pub otlp_batch_delay_ms: u64,
    /// Share of new traces recorded (0.0 to 1.0); a caller's sampling
    /// decision in `traceparent` is followed.
    pub trace_sample_ratio: f64,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// experience-api.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperienceSettings {
    /// Bind address.
    pub host: String,
    /// Port; 0 picks a free one (tests).
    pub port: u16,
    /// Base URL of process-api.
    pub process_url: String,
    /// Answer availability from the read model kept current by the change
    /// feed (off: every read asks process-api).
    pub read_model: bool,
    /// The read model answers only while it is this fresh (it knows it has
    /// every change up to a moment at most this long ago); else reads go
    /// to process-api.
    pub read_model_max_staleness_ms: u64,
    /// Skus the read model keeps (the least recently loaded go first).
    pub read_model_max_skus: usize,
    /// With `[redis] url` set, replicas share loaded skus through Redis (a
    /// replica missing a sku takes it from Redis before asking
    /// process-api) and keep them current from the change feed there.
    pub read_model_shared: bool,
    /// How long a sku stays in the shared copy after it was loaded.
    pub read_model_shared_ttl_seconds: u64,
    /// Answer the plain read of one sku (`GET /v1/availability/{sku}`, no
    /// query) from the read model ahead of the layer stack when everything
    /// it needs is decided in memory (see experience-api's `fast_read`).
    pub fast_read: bool,
}

/// process-api.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSettings {
    /// Bind address.
    pub host: String,
    /// Port; 0 picks a free one (tests).
    pub port: u16,
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: Secret,
    /// Pool size (SQLite writers are serialised regardless).
    pub max_connections: u32,
    /// Base URL of system-api.
    pub system_url: String,
    /// A location with no event for this long is reported `stale` by
    /// `GET /v1/ops/sync-health`.
    pub stale_after_seconds: u64,
    /// SQLite's memory (ignored on PostgreSQL).
    #[serde(default)]
    pub sqlite: SqliteMemory,
    /// PostgreSQL: whether process-api analyses and vacuums its own tables.
    #[serde(default)]
    pub pg_table_maintenance: TableMaintenance,
}

/// Whether process-api looks after its PostgreSQL tables' statistics and
/// free space itself (`ANALYZE`, `VACUUM`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TableMaintenance {
    /// Only when the server's autovacuum is off.
    #[default]
    Auto,
    /// Always, on top of autovacuum.
    Always,
    /// Never.
    Off,
}

/// How much memory process-api's SQLite may hold: its resident size is
/// about the writer's page cache plus every reader's plus the memory map
/// (each connection maps the file separately, and every page a mapping
/// touched counts towards the process's resident size).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteMemory {
    /// The single writer's page cache, MiB: positions take random updates
    /// (and the journal's indexes appends), and a cache that holds their
    /// hot pages keeps ingest off the disk.
    pub writer_cache_mib: u32,
    /// Each reader connection's page cache, MiB.
    pub reader_cache_mib: u32,
    /// Memory map per connection, MiB (0: reads go through the page
    /// caches and the OS's file cache, which is not the process's memory).
    pub mmap_mib: u32,
}

impl Default for SqliteMemory {
    fn default() -> Self {
        Self {
            writer_cache_mib: 256,
            reader_cache_mib: 8,
            mmap_mib: 0,
        }
    }
}

/// Reservation lifetimes and anti-hoarding caps (OWASP API6: unrestricted
/// access to sensitive business flows).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationSettings {
    /// TTL when a request names none, in seconds.
    pub default_ttl_seconds: u64,
    /// Longest TTL a request may ask for, in seconds.
    pub max_ttl_seconds: u64,
    /// Most lines in one reservation.
    pub max_lines: usize,
    /// Most units on one line.
    pub max_units_per_line: i64,
    /// Most units over all lines of one reservation.
    pub max_units_per_order: i64,
    /// Most active reservations one client (the end user or channel behind
    /// the token) may hold at once.
    pub max_active_per_client: i64,
    /// How often expired reservations are moved to `expired`, in ms (they
    /// stop counting at `expires_at` regardless).
    pub sweep_interval_ms: u64,
}

/// Transfers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSettings {
    /// Transfers whose value at cost is below this amount (a decimal
    /// string, in the products' currency) are approved automatically;
    /// others wait for a `transfers:approve` principal.
    pub auto_approve_below: rust_decimal::Decimal,
}

/// How process-api delivers its ERP outbox. Postings of one (location,
/// sku) go strictly in journal order; different keys go in parallel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpPostingSettings {
    /// Run the delivery workers (off: postings wait in the outbox).
    pub enabled: bool,
    /// Postings per call to system-api.
    pub batch_size: u32,
    /// Calls in flight at once (each carries different keys).
    pub concurrency: u32,
    /// Attempts a posting gets when the ERP rejects it transiently, before
    /// it goes `dead` (an ERP that does not answer at all does not use up
    /// attempts: the circuit breaker waits for it instead).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with full jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// How long a claimed posting stays with its worker before another
    /// replica may take it over (a crashed worker's claim runs out).
    pub lease_ms: u64,
    /// Consecutive failed calls (ERP or system-api not answering) that open
    /// the circuit breaker.
    pub breaker_threshold: u32,
    /// First open period of the breaker; doubles while probes fail.
    pub breaker_cooldown_ms: u64,
    /// Longest open period.
    pub breaker_max_cooldown_ms: u64,
    /// How often an idle worker looks for due postings.
    pub poll_interval_ms: u64,
    /// Deadline of one posting call to system-api (an ERP such as Tryton
    /// takes seconds per batch); shorter than `lease_ms`.
    pub call_timeout_ms: u64,
}

/// The availability change feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// Run the publisher (off: changes wait in the outbox).
    pub enabled: bool,
    /// How often the publisher looks for changes committed by other
    /// replicas (writes of this replica wake it at once).
    pub poll_interval_ms: u64,
    /// Entries older than this are pruned once every active webhook
    /// subscriber has them.
    pub retention_seconds: u64,
    /// Entries older than this are pruned whoever still lacks them.
    pub max_retention_seconds: u64,
    /// experience-api: changes kept in memory for clients resuming with
    /// `Last-Event-ID` (older ones are read from process-api).
    pub relay_buffer: usize,
    /// experience-api: SSE keep-alive comment interval.
    pub keep_alive_seconds: u64,
    /// Event streams one client (`sub`) may hold open at once on one
    /// replica of a layer; 0: no cap. Service callers are not counted.
    pub max_streams_per_client: usize,
    /// The most changes behind the head a stream resuming with
    /// `Last-Event-ID` is sent; an older resume point starts with
    /// `event: reset` at that depth instead.
    pub max_resume_depth: u64,
}

/// Webhook delivery (process-api).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Run the delivery worker.
    pub enabled: bool,
    /// Attempts of one delivery before it becomes the subscriber's dead
    /// letter and the subscriber moves on.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// Deadline of one delivery.
    pub timeout_ms: u64,
    /// How long a replica holds a subscriber before another may take over.
    pub lease_ms: u64,
    /// How often the worker looks for subscribers with undelivered changes.
    pub poll_interval_ms: u64,
    /// Deliver to loopback, link-local, private and other internal
    /// addresses too (refused by default, at registration and at connect
    /// time).
    pub allow_private_networks: bool,
    /// Exceptions to that refusal, for development: host names (exact,
    /// e.g. `localhost`) and addresses or CIDR blocks (`127.0.0.1`,
    /// `10.1.0.0/16`, `::1`).
    pub allowed_hosts: Vec<String>,
}

/// Reconciliation of ERP balances against platform on_hand.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationSettings {
    /// Seconds between scheduled runs; 0 runs only on demand.
    pub interval_seconds: u64,
    /// Mismatches worth more than this at cost (decimal string) wait for
    /// review; smaller ones are corrected at once.
    pub review_above: rust_decimal::Decimal,
    /// Seconds between pulls of ERP master data (products, warehouses);
    /// 0 pulls only on start (if `master_sync_on_start`) and on demand.
    pub master_sync_interval_seconds: u64,
    /// Pull ERP master data when process-api starts.
    pub master_sync_on_start: bool,
}

/// The nodes whose stock a sales channel may sell: every node of one of
/// `location_types`, plus nodes of other types that have one of
/// `capabilities`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// `store`, `warehouse`, `online`.
    #[serde(default)]
    pub location_types: Vec<String>,
    /// `ship_from_store`, `click_and_collect`, `returns`.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl ChannelRule {
    /// Whether a node of `location_type` with `capabilities` serves the
    /// channel.
    pub fn admits(&self, location_type: &str, capabilities: &[&str]) -> bool {
        self.location_types.iter().any(|t| t == location_type)
            || self
                .capabilities
                .iter()
                .any(|c| capabilities.contains(&c.as_str()))
    }
}

/// system-api.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSettings {
    /// Bind address.
    pub host: String,
    /// Port; 0 picks a free one (tests).
    pub port: u16,
    /// Storage of the adapters and the sandbox ERP.
    pub database_url: Secret,
    /// Base URL of process-api (adapters hand canonical events to it).
    pub process_url: String,
}

/// ERP backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpSettings {
    /// Which backend system-api talks to.
    pub backend: ErpBackend,
    /// Tryton connection.
    pub tryton: TrytonSettings,
}

/// ERP backend choice.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErpBackend {
    /// Built into system-api.
    Sandbox,
    /// Tryton over JSON-RPC.
    Tryton,
}

/// Tryton JSON-RPC connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrytonSettings {
    /// Base URL of trytond.
    pub url: String,
    /// Database name.
    pub database: String,
    /// Login.
    pub username: String,
    /// Password.
    pub password: Secret,
}

/// Optional Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://…`; empty means no Redis.
    pub url: Secret,
    /// Prefix of every key the platform keeps in Redis (several
    /// platforms, or test runs, may share one Redis).
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_prefix() -> String {
    "retail:".into()
}

/// Demo data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSettings {
    /// Seed an empty database on start.
    pub enabled: bool,
    /// Number of stores.
    pub stores: u32,
    /// Number of SKUs.
    pub skus: u32,
    /// Journal an opening stock count per store and DC position.
    pub opening_stock: bool,
}

impl Settings {
    /// Loads defaults, then `file` if given, then `RETAIL_*` variables, and
    /// checks the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("RETAIL_").split("__"));
        Self::from_figment(figment)
    }

    /// The embedded defaults alone, ignoring the environment: what tests
    /// start from before setting their own ports and databases.
    pub fn defaults() -> Self {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)))
            .unwrap_or_else(|error| panic!("embedded default.toml is invalid: {error}"))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.check()?;
        Ok(settings)
    }

    /// Rules that typed parsing cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.profile == Profile::Production
            && (PUBLISHED_SECRETS.contains(&self.auth.hs256_secret.expose())
                && self.auth.algorithms.iter().any(|a| a == "HS256"))
        {
            return Err(ConfigError::Refused(
                "the production profile cannot use the development signing secret (or any \
                 secret published in the platform's repository); set \
                 RETAIL_AUTH__HS256_SECRET or switch to JWKS"
                    .into(),
            ));
        }
        if self.auth.algorithms.iter().any(|a| a == "HS256") && self.auth.hs256_secret.is_empty() {
            return Err(ConfigError::Refused(
                "HS256 is allowed but auth.hs256_secret is empty".into(),
            ));
        }
        if self.profile == Profile::Production
            && self.auth.algorithms.iter().any(|a| a == "HS256")
            && self.auth.hs256_secret.expose().len() < 32
        {
            return Err(ConfigError::Refused(
                "the production signing secret must be at least 32 bytes".into(),
            ));
        }
        for algorithm in &self.auth.algorithms {
            match algorithm.as_str() {
                "HS256" => {}
                "RS256" | "ES256" if !self.auth.jwks_url.is_empty() => {}
                "RS256" | "ES256" => {
                    return Err(ConfigError::Refused(format!(
                        "auth.algorithms: {algorithm} needs auth.jwks_url"
                    )));
                }
                other => {
                    return Err(ConfigError::Refused(format!(
                        "auth.algorithms: unsupported algorithm {other} (HS256, RS256, ES256)"
                    )));
                }
            }
        }
        let quotas = std::iter::once((
            "default".to_owned(),
            [
                self.rate_limit.read_per_second,
                self.rate_limit.read_burst,
                self.rate_limit.write_per_second,
                self.rate_limit.write_burst,
            ],
        ))
        .chain(self.rate_limit.clients.iter().map(|(name, q)| {
            (
                name.clone(),
                [
                    q.read_per_second,
                    q.read_burst,
                    q.write_per_second,
                    q.write_burst,
                ],
            )
        }));
        let quotas = quotas.chain(std::iter::once((
            "unauthenticated".to_owned(),
            [
                self.rate_limit.unauthenticated_per_second,
                self.rate_limit.unauthenticated_burst,
                1,
                1,
            ],
        )));
        for (name, values) in quotas {
            if values.contains(&0) {
                return Err(ConfigError::Refused(format!(
                    "rate_limit ({name}): rates and bursts must be at least 1"
                )));
            }
        }
        for (index, deprecation) in self.deprecations.iter().enumerate() {
            let parse = |value: &str| {
                time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            };
            if !deprecation.path_prefix.starts_with('/')
                || parse(&deprecation.deprecated_at).is_err()
                || deprecation
                    .sunset
                    .as_deref()
                    .is_some_and(|s| parse(s).is_err())
            {
                return Err(ConfigError::Refused(format!(
                    "deprecations[{index}]: path_prefix must start with / and the dates be RFC 3339"
                )));
            }
        }
        let r = &self.reservations;
        if r.default_ttl_seconds == 0
            || r.max_ttl_seconds < r.default_ttl_seconds
            || r.max_lines == 0
            || r.max_units_per_line < 1
            || r.max_units_per_order < r.max_units_per_line
            || r.max_active_per_client < 1
            || r.sweep_interval_ms == 0
        {
            return Err(ConfigError::Refused(
                "reservations: TTLs, caps and the sweep interval must be at least 1, \
                 max_ttl_seconds >= default_ttl_seconds and \
                 max_units_per_order >= max_units_per_line"
                    .into(),
            ));
        }
        if self.transfers.auto_approve_below.is_sign_negative() {
            return Err(ConfigError::Refused(
                "transfers.auto_approve_below must not be negative".into(),
            ));
        }
        for (name, rule) in &self.channels {
            let bad_type = rule
                .location_types
                .iter()
                .find(|t| !matches!(t.as_str(), "store" | "warehouse" | "online"));
            let bad_capability = rule.capabilities.iter().find(|c| {
                !matches!(
                    c.as_str(),
                    "ship_from_store" | "click_and_collect" | "returns"
                )
            });
            if let Some(bad) = bad_type.or(bad_capability) {
                return Err(ConfigError::Refused(format!(
                    "channels.{name}: unknown location type or capability `{bad}`"
                )));
            }
        }
        if self.auth.issuer.trim().is_empty() {
            return Err(ConfigError::Refused("auth.issuer must not be empty".into()));
        }
        Ok(())
    }

    /// Refuses a listener beyond loopback (`addr`) while HS256 tokens are
    /// accepted with a secret anyone can read ([`PUBLISHED_SECRETS`]):
    /// the development default is for one machine, whatever the profile.
    pub fn check_exposure(&self, addr: std::net::SocketAddr) -> Result<(), ConfigError> {
        if addr.ip().is_loopback() || !self.auth.algorithms.iter().any(|a| a == "HS256") {
            return Ok(());
        }
        let secret = self.auth.hs256_secret.expose();
        if PUBLISHED_SECRETS.contains(&secret) {
            return Err(ConfigError::Refused(format!(
                "listening on {addr} (beyond loopback) with a signing secret published in the \
                 platform's repository would let anyone mint tokens; set \
                 RETAIL_AUTH__HS256_SECRET to a secret of your own (at least 32 random bytes), \
                 or accept only identity-provider tokens (auth.algorithms without HS256)"
            )));
        }
        if secret.len() < 32 {
            return Err(ConfigError::Refused(format!(
                "listening on {addr} (beyond loopback) needs an HS256 secret of at least 32 bytes"
            )));
        }
        Ok(())
    }

    /// The Redis URL when one is configured.
    pub fn redis_url(&self) -> Option<&str> {
        let url = self.redis.url.expose();
        (!url.is_empty()).then_some(url)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
