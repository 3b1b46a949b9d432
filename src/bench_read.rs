//! `retail-platform bench read`: availability reads through experience-api
//! against a bare axum JSON endpoint, in the same run.
//!
//! The three services run as separate processes (the `system-api`,
//! `process-api` and `experience-api` binaries next to this one, so `cargo
//! build --release` first), on a fresh SQLite database seeded with
//! `stores × skus` positions. The baseline is an axum route in this process
//! answering a JSON body of the same shape from memory. Both are driven by
//! the same load generator (this process, `concurrency` keep-alive
//! connections, random skus, `seconds` each), one after the other. Prints
//! requests/s, p50/p95/p99, errors, the ratio platform/baseline, the share
//! of answers the read model gave, and each service's peak RSS.
//!
//! `retail-platform bench propagation`: the same three processes; a steady
//! background ingest into process-api (batches of 500 at a target rate)
//! while probe POS transactions at system-api are timed from their answer
//! to their change arriving on a channel's SSE stream at experience-api.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use retail_shared::Settings;
use retail_shared::auth::{TokenIssuer, TokenRequest};

/// Options of the read scenario.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Seconds of load per target.
    pub seconds: u64,
    /// Connections (concurrent requests).
    pub concurrency: usize,
    /// Stores seeded.
    pub stores: u32,
    /// SKUs seeded.
    pub skus: u32,
}

/// One target's figures.
#[derive(Debug, Clone, Default)]
pub struct LoadFigures {
    /// Answered requests.
    pub requests: u64,
    /// Non-2xx answers and transport errors.
    pub errors: u64,
    /// Answers from the read model (platform only).
    pub from_model: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latencies, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadFigures {
    pub(crate) fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn percentile(&self, p: f64) -> Duration {
        crate::bench::percentile(&self.latencies, p)
    }

    fn row(&self, name: &str) -> String {
        format!(
            "  {name:<26} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8}\n",
            self.rate(),
            self.percentile(50.0).as_secs_f64() * 1e3,
            self.percentile(95.0).as_secs_f64() * 1e3,
            self.percentile(99.0).as_secs_f64() * 1e3,
            self.errors,
        )
    }
}

/// What the read scenario measured.
#[derive(Debug, Clone)]
pub struct ReadReport {
    /// The bare endpoint.
    pub baseline: LoadFigures,
    /// Through experience-api.
    pub platform: LoadFigures,
    /// Peak RSS (KiB) per service process.
    pub rss_kib: Vec<(&'static str, u64)>,
    /// Options used.
    pub options: ReadOptions,
}

impl ReadReport {
    /// The printed table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "scenario read ({} connections, {} s each, {} stores x {} skus)\n  {:<26} {:>10} {:>9} {:>9} {:>9} {:>8}\n",
            self.options.concurrency,
            self.options.seconds,
            self.options.stores,
            self.options.skus,
            "target",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors"
        );
        out += &self.baseline.row("baseline (bare axum)");
        out += &self.platform.row("experience-api");
        out += &format!(
            "  ratio platform/baseline  {:.2}x; read model answered {:.1}%\n",
            self.platform.rate() / self.baseline.rate().max(1e-9),
            100.0 * self.platform.from_model as f64 / self.platform.requests.max(1) as f64
        );
        out += &rss_rows(&self.rss_kib);
        out
    }
}

/// The service processes; killed when dropped.
pub(crate) struct Services {
    children: Vec<(&'static str, Child)>,
    /// Base URL per service.
    urls: Vec<(&'static str, String)>,
}

impl Services {
    /// The base URL of a service.
    pub(crate) fn url(&self, name: &str) -> anyhow::Result<String> {
        self.urls
            .iter()
            .find(|(service, _)| *service == name)
            .map(|(_, url)| url.clone())
            .with_context(|| format!("no {name} url"))
    }

    /// Resident memory now (KiB) per service process: (anonymous,
    /// file-backed). File-backed pages are mostly SQLite's memory map of
    /// the database: page cache the kernel may drop, counted once per
    /// connection that maps it.
    pub(crate) fn rss_split(&self) -> Vec<(&'static str, u64, u64)> {
        self.children
            .iter()
            .map(|(name, child)| {
                let pid = child.id();
                (
                    *name,
                    status_kib(pid, "RssAnon:"),
                    status_kib(pid, "RssFile:"),
                )
            })
            .collect()
    }

    /// Peak RSS (KiB) per service process so far.
    pub(crate) fn peak_rss(&self) -> Vec<(&'static str, u64)> {
        self.children
            .iter()
            .map(|(name, child)| (*name, peak_rss_kib(child.id())))
            .collect()
    }
}

/// The report's peak RSS lines.
pub(crate) fn rss_rows(rss_kib: &[(&'static str, u64)]) -> String {
    rss_kib
        .iter()
        .map(|(service, kib)| {
            format!(
                "  peak RSS {service:<16} {:>8.1} MiB\n",
                *kib as f64 / 1024.0
            )
        })
        .collect()
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|dir| dir.join(name))
        .context("no directory of this binary")?;
    anyhow::ensure!(
        path.exists(),
        "{} not found: build the services first (cargo build --release)",
        path.display()
    );
    Ok(path)
}

/// Peak resident set (VmHWM) of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A KiB figure of `/proc/{pid}/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn start_services(
    dir: &Path,
    options: &ReadOptions,
) -> anyhow::Result<(Services, String)> {
    let (experience, process, system) = (free_port()?, free_port()?, free_port()?);
    let common: Vec<(String, String)> = vec![
        ("RETAIL_EXPERIENCE__PORT".into(), experience.to_string()),
        ("RETAIL_PROCESS__PORT".into(), process.to_string()),
        ("RETAIL_SYSTEM__PORT".into(), system.to_string()),
        (
            "RETAIL_EXPERIENCE__PROCESS_URL".into(),
            format!("http://127.0.0.1:{process}"),
        ),
        (
            "RETAIL_SYSTEM__PROCESS_URL".into(),
            format!("http://127.0.0.1:{process}"),
        ),
        (
            "RETAIL_PROCESS__SYSTEM_URL".into(),
            format!("http://127.0.0.1:{system}"),
        ),
        (
            "RETAIL_PROCESS__DATABASE_URL".into(),
            format!("sqlite://{}", dir.join("process.db").display()),
        ),
        (
            "RETAIL_SYSTEM__DATABASE_URL".into(),
            format!("sqlite://{}", dir.join("system.db").display()),
        ),
        ("RETAIL_SEED__STORES".into(), options.stores.to_string()),
        ("RETAIL_SEED__SKUS".into(), options.skus.to_string()),
        ("RETAIL_TELEMETRY__LOG_LEVEL".into(), "warn".into()),
    ];
    let mut services = Services {
        children: Vec::new(),
        urls: vec![
            ("experience-api", format!("http://127.0.0.1:{experience}")),
            ("process-api", format!("http://127.0.0.1:{process}")),
            ("system-api", format!("http://127.0.0.1:{system}")),
        ],
    };
    for name in ["system-api", "process-api", "experience-api"] {
        let child = Command::new(binary(name)?)
            .envs(common.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        services.children.push((name, child));
    }
    Ok((services, format!("http://127.0.0.1:{experience}")))
}

/// Waits for the opening ERP backlog to drain (see
/// [`drain_opening_backlog`]), saying so on stderr.
pub(crate) async fn quiet_start(http: &reqwest::Client, services: &Services) -> anyhow::Result<()> {
    let process = services.url("process-api")?;
    let token = TokenIssuer::new(&Settings::defaults().auth).mint(&TokenRequest {
        audience: "process-api".into(),
        subject: "bench-ops".into(),
        scopes: vec!["ops:read".into()],
        ttl_seconds: 3600,
        ..TokenRequest::default()
    })?;
    eprintln!("waiting for the opening ERP postings to drain...");
    let (postings, took) =
        drain_opening_backlog(http, &process, &token, Duration::from_secs(600)).await?;
    eprintln!(
        "{postings} opening ERP postings drained in {:.0} s",
        took.as_secs_f64()
    );
    Ok(())
}

/// Starts the services, then a client with `options.concurrency` × 2 idle
/// connections, and waits until experience-api is ready: (services,
/// experience-api's base URL, the client).
pub(crate) async fn start_ready(
    dir: &Path,
    options: &ReadOptions,
) -> anyhow::Result<(Services, String, reqwest::Client)> {
    let (services, experience) = start_services(dir, options)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency * 2)
        .tcp_nodelay(true)
        .build()?;
    wait_ready(&http, &experience).await?;
    quiet_start(&http, &services).await?;
    Ok((services, experience, http))
}

/// Postings waiting (pending and in flight) at process-api, from its
/// `erp_postings` gauges in `/metrics` (refreshed every 5 s by
/// process-api: cheap to read, unlike `GET /v1/ops/sync-health`, whose
/// per-location figures read every position).
pub(crate) async fn backlog(
    http: &reqwest::Client,
    process: &str,
    token: &str,
) -> anyhow::Result<i64> {
    let response = http
        .get(format!("{process}/metrics"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "metrics: {}",
        response.status()
    );
    let text = response.text().await?;
    let mut waiting = None;
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.starts_with("erp_postings{")
            && (series.contains("status=\"pending\"") || series.contains("status=\"in_flight\""))
        {
            let n = value
                .trim()
                .parse::<f64>()
                .context("an erp_postings gauge")?;
            #[expect(clippy::cast_possible_truncation, reason = "a count")]
            let n = n as i64;
            waiting = Some(waiting.unwrap_or(0) + n);
        }
    }
    waiting.context("no erp_postings gauges yet")
}

/// Waits until process-api's ERP backlog is empty: the opening count of
/// every seeded position is journalled and so queued for the ERP, and a
/// scenario measured while those postings drain would measure the drain
/// as much as itself (the black-friday scenario reports the drain; the
/// others start once it is over). Answers (postings seen at the start, how
/// long the drain took). The gauges appear within 5 s of process-api's
/// start and are refreshed every 5 s, so the wait may run up to 5 s long.
pub(crate) async fn drain_opening_backlog(
    http: &reqwest::Client,
    process: &str,
    token: &str,
    give_up_after: Duration,
) -> anyhow::Result<(i64, Duration)> {
    let started = Instant::now();
    let opening = loop {
        match backlog(http, process, token).await {
            Ok(waiting) => break waiting,
            Err(error) => {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(60),
                    "no ERP backlog figures from process-api: {error}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let draining = Instant::now();
    while backlog(http, process, token).await.unwrap_or(1) > 0 {
        anyhow::ensure!(
            draining.elapsed() < give_up_after,
            "the opening ERP backlog did not drain within {} s",
            give_up_after.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok((opening, draining.elapsed()))
}

pub(crate) async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "experience-api did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether an availability answer was a success with its whole body, and
/// whether the read model gave it.
pub(crate) async fn availability_answer(response: reqwest::Response) -> (bool, bool) {
    let ok = response.status().is_success();
    let model = response
        .headers()
        .get("x-availability-source")
        .is_some_and(|v| v == "read-model");
    let body = response.bytes().await;
    (ok && body.is_ok(), model)
}

/// Drives `concurrency` connections at `url_of(sku)` for `seconds`.
async fn drive(
    http: &reqwest::Client,
    urls: Arc<Vec<String>>,
    token: Arc<String>,
    concurrency: usize,
    seconds: u64,
) -> LoadFigures {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let http = http.clone();
        let urls = urls.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut figures = LoadFigures::default();
            let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ (worker as u64 + 1);
            while Instant::now() < deadline {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let url = &urls[(state % urls.len() as u64) as usize];
                let sent = Instant::now();
                match http.get(url).bearer_auth(token.as_str()).send().await {
                    Ok(response) => {
                        let (ok, model) = availability_answer(response).await;
                        if ok {
                            figures.requests += 1;
                            figures.from_model += u64::from(model);
                            figures.latencies.push(sent.elapsed());
                        } else {
                            figures.errors += 1;
                        }
                    }
                    Err(_) => figures.errors += 1,
                }
            }
            figures
        }));
    }
    let mut all = LoadFigures::default();
    for task in tasks {
        if let Ok(figures) = task.await {
            all.requests += figures.requests;
            all.errors += figures.errors;
            all.from_model += figures.from_model;
            all.latencies.extend(figures.latencies);
        }
    }
    all.elapsed = started.elapsed();
    all.latencies.sort();
    all
}

/// Runs the scenario.
pub async fn read(options: ReadOptions) -> anyhow::Result<ReadReport> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let settings = Settings::defaults();
    let skus: Vec<String> = (1..=options.skus).map(|n| format!("SKU-{n:06}")).collect();

    // The baseline: the same route shape, answered from memory.
    let body: Arc<String> = Arc::new(
        serde_json::json!({
            "sku": "SKU-000001", "total_available": 120,
            "locations": (1..=options.stores.min(20))
                .map(|n| serde_json::json!({"location_id": format!("S{n:03}"), "available": 6}))
                .collect::<Vec<_>>()
        })
        .to_string(),
    );
    let baseline = axum::Router::new().route(
        "/v1/availability/{sku}",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body.as_str().to_owned(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let baseline_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, baseline).await;
    });

    let (services, experience, http) = start_ready(dir.path(), &options).await?;
    let token = Arc::new(TokenIssuer::new(&settings.auth).mint(&TokenRequest {
        audience: "experience-api".into(),
        subject: "bench-read".into(),
        scopes: vec!["availability:read".into()],
        locations: None,
        on_behalf_of: None,
        ttl_seconds: 3600,
    })?);
    // Warm up: every sku read once (loads the read model), until the model
    // answers.
    eprintln!("warming up {} skus...", skus.len());
    let platform_urls: Arc<Vec<String>> = Arc::new(
        skus.iter()
            .map(|sku| format!("{experience}/v1/availability/{sku}"))
            .collect(),
    );
    let started = Instant::now();
    loop {
        let warm = drive(&http, platform_urls.clone(), token.clone(), 8, 1).await;
        if warm.from_model * 10 >= warm.requests * 9 && warm.requests > 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the read model did not start answering ({} of {} answers)",
            warm.from_model,
            warm.requests
        );
    }
    for url in platform_urls.iter() {
        let _ = http.get(url).bearer_auth(token.as_str()).send().await;
    }

    let baseline_urls: Arc<Vec<String>> = Arc::new(
        skus.iter()
            .map(|sku| format!("{baseline_url}/v1/availability/{sku}"))
            .collect(),
    );
    eprintln!("baseline: {} s...", options.seconds);
    let baseline = drive(
        &http,
        baseline_urls,
        token.clone(),
        options.concurrency,
        options.seconds,
    )
    .await;
    eprintln!("experience-api: {} s...", options.seconds);
    let platform = drive(
        &http,
        platform_urls,
        token,
        options.concurrency,
        options.seconds,
    )
    .await;
    let rss_kib = services.peak_rss();
    drop(services);
    Ok(ReadReport {
        baseline,
        platform,
        rss_kib,
        options,
    })
}

/// Options of the propagation scenario.
#[derive(Debug, Clone)]
pub struct PropagationOptions {
    /// Seconds of measurement.
    pub seconds: u64,
    /// Background events per second into process-api (batches of 500).
    pub background_rate: u64,
    /// Probe POS transactions per second at system-api.
    pub probes_per_second: u64,
    /// Stores seeded.
    pub stores: u32,
    /// SKUs seeded.
    pub skus: u32,
}

/// What the propagation scenario measured.
#[derive(Debug, Clone)]
pub struct PropagationReport {
    /// POS accepted at system-api → the change on experience-api's SSE.
    pub latencies: Vec<Duration>,
    /// Probes whose change never arrived within 10 s.
    pub lost: u64,
    /// Background events acknowledged per second.
    pub background_rate: f64,
    /// Options used.
    pub options: PropagationOptions,
    /// Peak RSS (KiB) per service process.
    pub rss_kib: Vec<(&'static str, u64)>,
}

impl PropagationReport {
    /// The printed table.
    pub fn render(&self) -> String {
        let pick = |p: f64| crate::bench::percentile(&self.latencies, p).as_secs_f64() * 1e3;
        let mut out = format!(
            "scenario propagation ({} s, background target {} events/s, {} probes/s)\n  POS accepted at system-api -> change on experience-api SSE\n  probes {:>6}  lost {:>4}  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms\n  background ingest achieved {:>8.0} events/s\n",
            self.options.seconds,
            self.options.background_rate,
            self.options.probes_per_second,
            self.latencies.len(),
            self.lost,
            pick(50.0),
            pick(99.0),
            pick(100.0),
            self.background_rate,
        );
        out += &rss_rows(&self.rss_kib);
        out
    }
}

/// POS transactions at system-api timed until their change reaches a
/// channel's SSE stream at experience-api, while process-api ingests a
/// steady background load.
pub async fn propagation(options: PropagationOptions) -> anyhow::Result<PropagationReport> {
    use futures::StreamExt;
    let dir = tempfile::tempdir().context("temp dir")?;
    let settings = Settings::defaults();
    let read = ReadOptions {
        seconds: options.seconds,
        concurrency: 1,
        stores: options.stores.max(2),
        skus: options.skus.max(20),
    };
    let (services, experience) = start_services(dir.path(), &read)?;
    let process = services.url("process-api")?;
    let system = services.url("system-api")?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    wait_ready(&http, &experience).await?;
    quiet_start(&http, &services).await?;
    let issuer = TokenIssuer::new(&settings.auth);
    let mint = |audience: &str, scopes: &[&str]| {
        issuer.mint(&TokenRequest {
            audience: audience.into(),
            subject: "bench-propagation".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            locations: None,
            on_behalf_of: None,
            ttl_seconds: 3600,
        })
    };
    let channel = mint("experience-api", &["availability:read"])?;
    let pos = mint("system-api", &["pos:write"])?;
    let ingest = mint("process-api", &["inventory:write"])?;

    // The probe sku's changes, as a channel sees them.
    let probe_sku = "SKU-000001";
    let response = http
        .get(format!(
            "{experience}/v1/availability/changes?sku={probe_sku}&location_id=S001"
        ))
        .bearer_auth(&channel)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "stream: {}",
        response.status()
    );
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let reader = tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut parser = retail_shared::sse::SseParser::default();
        while let Some(Ok(chunk)) = body.next().await {
            for event in parser.feed(&chunk) {
                if event.event == "availability" {
                    let _ = seen_tx.send(Instant::now());
                }
            }
        }
    });

    // Background load: other skus, batches of 500 at the target rate.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let background = {
        let (http, stop, acknowledged) = (http.clone(), stop.clone(), acknowledged.clone());
        let url = format!("{process}/v1/inventory/events");
        let (stores, skus, rate) = (read.stores, read.skus, options.background_rate.max(1));
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(500.0 / rate as f64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let events: Vec<serde_json::Value> = (0..500)
                    .map(|_| {
                        n += 1;
                        serde_json::json!({
                            "event_id": format!("bg-{n}"), "type": "receipt",
                            "location_id": format!("S{:03}", 1 + n % u64::from(stores)),
                            "sku": format!("SKU-{:06}", 2 + n % u64::from(skus - 1)),
                            "quantity": 1, "occurred_at": crate::bench::now_rfc3339(),
                            "source": "bench"})
                    })
                    .collect();
                if let Ok(response) = http
                    .post(&url)
                    .bearer_auth(&ingest)
                    .json(&serde_json::json!({ "events": events }))
                    .send()
                    .await
                    && response.status().is_success()
                {
                    acknowledged.fetch_add(500, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Probes, one at a time: accepted → seen.
    let started = Instant::now();
    let counted_from = acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut lost = 0;
    let mut probe = 0_u64;
    let gap = Duration::from_secs_f64(1.0 / options.probes_per_second.max(1) as f64);
    while started.elapsed() < Duration::from_secs(options.seconds) {
        probe += 1;
        let body = serde_json::json!({
            "store_id": "S001", "terminal_id": "BENCH", "transaction_id": format!("p{probe}"),
            "occurred_at": crate::bench::now_rfc3339(),
            "lines": [{"sku": probe_sku, "quantity": 1, "kind": if probe.is_multiple_of(2) { "sale" } else { "return" }}]
        });
        while seen_rx.try_recv().is_ok() {}
        let response = http
            .post(format!("{system}/v1/pos/transactions"))
            .bearer_auth(&pos)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "POS: {}", response.status());
        let accepted = Instant::now();
        match tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await {
            Ok(Some(seen)) => latencies.push(seen.saturating_duration_since(accepted)),
            _ => lost += 1,
        }
        tokio::time::sleep(gap).await;
    }
    let measured = started.elapsed();
    let background_rate = (acknowledged.load(std::sync::atomic::Ordering::Relaxed) - counted_from)
        as f64
        / measured.as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = background.await;
    reader.abort();
    latencies.sort();
    let rss_kib = services.peak_rss();
    drop(services);
    Ok(PropagationReport {
        latencies,
        lost,
        background_rate,
        options,
        rss_kib,
    })
}
