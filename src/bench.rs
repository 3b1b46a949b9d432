//! `retail-platform bench`: load scenarios against the real services.
//!
//! `ingest`: process-api alone, in this process, on a fresh database
//! (SQLite in a temp dir, or a fresh schema of `--database-url`), master
//! data for `stores × skus` positions, then `events` events in batches over
//! HTTP from `concurrency` clients. Request bodies are generated before the
//! clock starts; the figures include HTTP, JSON, validation, the
//! transaction and the outbox writes. Prints events/s overall and per
//! tenth of the run (sustained, not a burst) and batch latency p50/p99.

use std::time::{Duration, Instant};

use anyhow::Context;
use retail_shared::Settings;
use retail_shared::auth::{TokenIssuer, TokenRequest};
use retail_shared::config::Secret;
use retail_shared::model::{Capability, LocationInput, LocationType, ProductInput};
use rust_decimal::Decimal;
use serde_json::json;

/// Options of the ingest scenario.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Events to send.
    pub events: usize,
    /// Events per request.
    pub batch: usize,
    /// Stores.
    pub stores: usize,
    /// SKUs.
    pub skus: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// PostgreSQL base URL; SQLite in a temp dir when `None`.
    pub database_url: Option<String>,
    /// Run without the change feed publisher (to see what it costs).
    pub without_feed: bool,
    /// SQLite's memory map per connection, MiB (`None`: the configured
    /// default).
    pub sqlite_mmap_mib: Option<u32>,
}

/// What the ingest scenario measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Backend name.
    pub backend: &'static str,
    /// Events sent.
    pub events: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Batch latencies, sorted.
    pub latencies: Vec<Duration>,
    /// Events/s of each tenth of the run.
    pub tenths: Vec<f64>,
    /// The change feed, when it ran.
    pub feed: Option<FeedFigures>,
    /// SQLite group commit: (transactions, request batches they carried).
    pub groups: (u64, u64),
    /// The machine's CPUs while the events were sent (Linux).
    pub host: Option<crate::bench_host::HostCpu>,
}

/// How the change feed kept up during an ingest run.
#[derive(Debug, Clone, Copy)]
pub struct FeedFigures {
    /// Outbox rows (batches) not yet published when the last batch was
    /// acknowledged.
    pub backlog_at_end: i64,
    /// Time to publish them.
    pub drain: Duration,
    /// Feed entries published in all.
    pub published: i64,
}

impl IngestReport {
    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    /// The printed table.
    pub fn render(&self) -> String {
        let rate = self.events as f64 / self.elapsed.as_secs_f64();
        let tenths: Vec<String> = self.tenths.iter().map(|r| format!("{r:.0}")).collect();
        format!(
            "scenario ingest ({})\n  events        {}\n  elapsed       {:.2} s\n  events/s      {:.0}\n  batch p50     {:.1} ms\n  batch p99     {:.1} ms\n  batch max     {:.1} ms\n  events/s by tenth of the run: {}\n",
            self.backend,
            self.events,
            self.elapsed.as_secs_f64(),
            rate,
            self.percentile(50.0).as_secs_f64() * 1e3,
            self.percentile(99.0).as_secs_f64() * 1e3,
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            tenths.join(" "),
        ) + &match self.feed {
            Some(feed) => format!(
                "  change feed   {} entries; {} batches unpublished at the end, published {:.2} s later\n",
                feed.published,
                feed.backlog_at_end,
                feed.drain.as_secs_f64()
            ),
            None => "  change feed   off (--without-feed)\n".to_owned(),
        } + &match self.groups {
            (0, _) => String::new(),
            (transactions, batches) => format!(
                "  group commit  {batches} requests in {transactions} transactions ({:.2} per transaction)\n",
                batches as f64 / transactions as f64
            ),
        } + &self
            .host
            .map(|host| host.render("while sending"))
            .unwrap_or_default()
    }
}

/// Now, as an event's `occurred_at` (RFC 3339). Store traffic in the
/// benches happens now: an event older than the position's last count
/// (the seed counts every position an hour before start) would change
/// nothing, by the count rule.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The `p`th percentile (0–100) of sorted durations, nearest rank.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn master_data(stores: usize, skus: usize) -> (Vec<LocationInput>, Vec<ProductInput>) {
    let locations = (1..=stores)
        .map(|n| LocationInput {
            location_id: format!("B{n:04}"),
            name: format!("Bench store {n}"),
            r#type: LocationType::Store,
            latitude: Some(40.0 + (n % 100) as f64 / 100.0),
            longitude: Some(-74.0 + (n / 100) as f64 / 100.0),
            capabilities: vec![Capability::ClickAndCollect],
            safety_stock_default: 1,
        })
        .collect();
    let products = (1..=skus)
        .map(|n| ProductInput {
            sku: format!("BSKU-{n:06}"),
            name: format!("Bench product {n}"),
            unit_cost: Decimal::new(100 + (n % 5000) as i64, 2),
            currency: "USD".into(),
            gtin: None,
            safety_stock: None,
        })
        .collect();
    (locations, products)
}

/// A deterministic mix: mostly sales, then receipts, returns, adjustments,
/// counts and transfers, spread over every position.
fn body(start: usize, count: usize, stores: usize, skus: usize) -> Vec<u8> {
    let base = 1_795_000_000_i64; // seconds, 2026-11
    let events: Vec<serde_json::Value> = (start..start + count)
        .map(|n| {
            let mix = (n * 2_654_435_761) % 100;
            let kind = match mix {
                0..70 => "sale",
                70..85 => "receipt",
                85..90 => "return",
                90..95 => "adjustment",
                95..98 => "count",
                _ => "transfer_out",
            };
            let position = (n * 7919) % (stores * skus);
            let store = position % stores + 1;
            let sku = position / stores + 1;
            let at = time::OffsetDateTime::from_unix_timestamp(base + (n / 50) as i64)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let mut event = json!({
                "event_id": format!("bench-{n:09}"),
                "type": kind,
                "location_id": format!("B{store:04}"),
                "sku": format!("BSKU-{sku:06}"),
                "quantity": if kind == "count" { 20 } else { 1 + (n % 3) as i64 },
                "occurred_at": at,
                "source": "bench",
            });
            if kind == "transfer_out" {
                event["counterparty_location_id"] = json!(format!("B{:04}", store % stores + 1));
            }
            event
        })
        .collect();
    serde_json::to_vec(&json!({ "events": events })).unwrap_or_default()
}

/// Runs the ingest scenario.
pub async fn ingest(options: IngestOptions) -> anyhow::Result<IngestReport> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut settings = Settings::defaults();
    settings.process.port = 0;
    settings.seed.enabled = false;
    // Only process-api runs: no ERP to deliver to or reconcile with.
    settings.erp_posting.enabled = false;
    settings.reconciliation.interval_seconds = 0;
    settings.reconciliation.master_sync_interval_seconds = 0;
    settings.reconciliation.master_sync_on_start = false;
    settings.telemetry.log_level = "warn".into();
    settings.feed.enabled = !options.without_feed;
    settings.webhooks.enabled = false;
    if let Some(mib) = options.sqlite_mmap_mib {
        settings.process.sqlite.mmap_mib = mib;
    }
    let mut schema = None;
    let backend = match &options.database_url {
        Some(base) => {
            let (name, url) = fresh_postgres_schema(base).await?;
            schema = Some(name);
            settings.process.database_url = Secret::new(url);
            settings.process.max_connections = 16;
            "postgres"
        }
        None => {
            settings.process.database_url = Secret::new(format!(
                "sqlite://{}",
                dir.path().join("bench.db").display()
            ));
            "sqlite"
        }
    };
    let app = process_api::Application::build(settings.clone()).await?;
    let port = app.port();
    let store = app.store().clone();
    let (locations, products) = master_data(options.stores, options.skus);
    let ctx = process_api::storage::master::ChangeContext {
        actor: "bench".into(),
        request_id: "bench".into(),
    };
    for chunk in locations.chunks(1000) {
        store.upsert_locations(chunk, &ctx).await?;
    }
    for chunk in products.chunks(1000) {
        store.upsert_products(chunk, &ctx).await?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    eprintln!(
        "generating {} events for {} positions...",
        options.events,
        options.stores * options.skus
    );
    let bodies: Vec<Vec<u8>> = (0..options.events)
        .step_by(options.batch)
        .map(|start| {
            body(
                start,
                options.batch.min(options.events - start),
                options.stores,
                options.skus,
            )
        })
        .collect();
    let token = TokenIssuer::new(&settings.auth).mint(&TokenRequest {
        audience: "process-api".into(),
        subject: "bench".into(),
        scopes: vec!["inventory:write".into()],
        ttl_seconds: 24 * 3600,
        ..TokenRequest::default()
    })?;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/inventory/events");
    let bodies = std::sync::Arc::new(bodies);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu_before = crate::bench_host::CpuTimes::now();
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let (http, url, token, bodies, next) = (
            http.clone(),
            url.clone(),
            token.clone(),
            bodies.clone(),
            next.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut timings = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(index) else { break };
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "batch {index} answered {}",
                    response.status()
                );
                let _ = response.bytes().await?;
                timings.push((index, sent.elapsed(), started.elapsed()));
            }
            Ok::<_, anyhow::Error>(timings)
        }));
    }
    let mut timings = Vec::new();
    for client in clients {
        timings.extend(client.await??);
    }
    let elapsed = started.elapsed();
    let host = cpu_before.and_then(crate::bench_host::CpuTimes::until_now);
    // The change feed's state when the last batch was acknowledged, and
    // how long it takes to publish the rest.
    let backlog_at_end = store.feed_backlog().await?.rows;
    let mut drain = Duration::ZERO;
    if !options.without_feed {
        let draining = Instant::now();
        while store.feed_backlog().await?.rows > 0 && draining.elapsed() < Duration::from_secs(600)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain = draining.elapsed();
    }
    let published = store.feed_head().await?;
    let groups = store.ingest_groups();
    let _ = stop.send(());
    server.await??;
    drop(store);
    if let (Some(schema), Some(base)) = (&schema, &options.database_url) {
        drop_postgres_schema(base, schema).await?;
    }

    // Events per second in each tenth of the wall time.
    let mut per_tenth = [0usize; 10];
    for (index, _, finished) in &timings {
        let tenth = ((finished.as_secs_f64() / elapsed.as_secs_f64()) * 10.0) as usize;
        let events = options.batch.min(options.events - index * options.batch);
        per_tenth[tenth.min(9)] += events;
    }
    let tenth_secs = elapsed.as_secs_f64() / 10.0;
    let mut latencies: Vec<Duration> = timings.iter().map(|(_, latency, _)| *latency).collect();
    latencies.sort();
    Ok(IngestReport {
        backend,
        events: options.events,
        elapsed,
        latencies,
        tenths: per_tenth.iter().map(|e| *e as f64 / tenth_secs).collect(),
        feed: (!options.without_feed).then_some(FeedFigures {
            backlog_at_end,
            drain,
            published,
        }),
        groups,
        host,
    })
}

/// A new schema of the database at `base`: (its name, a URL whose
/// connections use it).
async fn fresh_postgres_schema(base: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await?;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    Ok((schema, url))
}

/// Drops a schema [`fresh_postgres_schema`] made (a million events leave
/// about 0.5 GB behind).
async fn drop_postgres_schema(base: &str, schema: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut connection)
        .await?;
    Ok(())
}
