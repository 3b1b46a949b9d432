//! `retail-platform bench reservations`: reservations through
//! experience-api (as channels make them) on a spread of skus, with a few
//! hot positions that sell out under contention, then an oversell audit.
//!
//! The three services run as separate processes on a fresh SQLite database
//! seeded with `stores × skus` positions. Before the load, the harness
//! reads every position's `available` from process-api. `concurrency`
//! workers (each its own client id) then post one-line reservations of one
//! unit for `seconds`: a tenth of them to `hot` positions (more demand
//! than stock), the rest spread over every position. Afterwards it reads
//! the positions again and checks, per position: units reserved by the
//! answers 201 equal process-api's `reserved` rise, never exceed what was
//! available, and `available` is never negative; a hot position ends sold
//! out. Prints reservations/s, refusals (409), errors, p50/p95/p99, the
//! audit and each service's peak RSS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use retail_shared::Settings;
use retail_shared::auth::{TokenIssuer, TokenRequest};

use crate::bench_read::{LoadFigures, ReadOptions, rss_rows, start_ready};

/// Options of the reservations scenario.
#[derive(Debug, Clone)]
pub struct ReserveOptions {
    /// Seconds of load.
    pub seconds: u64,
    /// Concurrent workers (each its own client).
    pub concurrency: usize,
    /// Stores seeded.
    pub stores: u32,
    /// SKUs seeded.
    pub skus: u32,
    /// Hot positions (a tenth of the requests).
    pub hot: u32,
}

/// What the reservations scenario measured.
#[derive(Debug, Clone)]
pub struct ReserveReport {
    /// Reservations made (201).
    pub reserved: LoadFigures,
    /// Refused for want of stock (409).
    pub refused: u64,
    /// Positions audited, and those where the figures disagree.
    pub audited: usize,
    /// Positions where more was reserved than was available, or where
    /// process-api's `reserved` differs from the answers (must be 0).
    pub oversold: Vec<String>,
    /// Hot positions that ended sold out / hot positions with stock.
    pub hot_sold_out: (usize, usize),
    /// Peak RSS (KiB) per service process.
    pub rss_kib: Vec<(&'static str, u64)>,
    /// Options used.
    pub options: ReserveOptions,
    /// The machine's CPUs while the workers reserved (Linux).
    pub host: Option<crate::bench_host::HostCpu>,
}

impl ReserveReport {
    /// The printed table.
    pub fn render(&self) -> String {
        let f = &self.reserved;
        let mut out = format!(
            "scenario reservations ({} workers, {} s, {} stores x {} skus, {} hot positions)\n",
            self.options.concurrency,
            self.options.seconds,
            self.options.stores,
            self.options.skus,
            self.options.hot
        );
        out += &format!(
            "  reservations/s  {:.0} ({} made, {} refused for stock, {} errors)\n",
            f.rate(),
            f.requests,
            self.refused,
            f.errors
        );
        out += &format!(
            "  latency         p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (201 and 409 answers)\n",
            f.percentile(50.0).as_secs_f64() * 1e3,
            f.percentile(95.0).as_secs_f64() * 1e3,
            f.percentile(99.0).as_secs_f64() * 1e3,
        );
        out += &format!(
            "  oversell audit  {} positions, {} oversold or disagreeing{}\n",
            self.audited,
            self.oversold.len(),
            if self.oversold.is_empty() {
                String::new()
            } else {
                format!(": {}", self.oversold.join(", "))
            }
        );
        out += &format!(
            "  hot positions   {} of {} with stock ended sold out\n",
            self.hot_sold_out.0, self.hot_sold_out.1
        );
        out += &self
            .host
            .map(|host| host.render("while reserving"))
            .unwrap_or_default();
        out += &rss_rows(&self.rss_kib);
        out
    }
}

/// (location, sku) → (available, reserved) from process-api.
async fn figures(
    http: &reqwest::Client,
    process: &str,
    token: &str,
    skus: &[String],
) -> anyhow::Result<HashMap<(String, String), (i64, i64)>> {
    let mut out = HashMap::new();
    for sku in skus {
        let response = http
            .get(format!("{process}/v1/inventory/positions?sku={sku}"))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "positions of {sku}: {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await?;
        for position in body["positions"].as_array().into_iter().flatten() {
            let location = position["location_id"].as_str().unwrap_or_default();
            out.insert(
                (location.to_owned(), sku.clone()),
                (
                    position["available"].as_i64().unwrap_or_default(),
                    position["reserved"].as_i64().unwrap_or_default(),
                ),
            );
        }
    }
    Ok(out)
}

/// Runs the scenario.
pub async fn reservations(options: ReserveOptions) -> anyhow::Result<ReserveReport> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let settings = Settings::defaults();
    let read = ReadOptions {
        seconds: options.seconds,
        concurrency: options.concurrency,
        stores: options.stores,
        skus: options.skus,
    };
    let (services, experience, http) = start_ready(dir.path(), &read).await?;
    let process = services.url("process-api")?;
    let issuer = TokenIssuer::new(&settings.auth);
    let reader = issuer.mint(&TokenRequest {
        audience: "process-api".into(),
        subject: "bench-audit".into(),
        scopes: vec!["inventory:read".into()],
        ttl_seconds: 3600,
        ..TokenRequest::default()
    })?;
    let skus: Vec<String> = (1..=options.skus).map(|n| format!("SKU-{n:06}")).collect();
    eprintln!("reading {} skus' positions...", skus.len());
    let before = figures(&http, &process, &reader, &skus).await?;
    // The positions: store positions with stock spread over every sku; the
    // hot ones are the first skus at the first store.
    let mut spread: Vec<(String, String)> = before
        .iter()
        .filter(|((location, _), (available, _))| location.starts_with('S') && *available > 0)
        .map(|(key, _)| key.clone())
        .collect();
    spread.sort();
    anyhow::ensure!(!spread.is_empty(), "no store position has stock");
    let hot: Vec<(String, String)> = skus
        .iter()
        .take(options.hot.max(1) as usize)
        .map(|sku| ("S001".to_owned(), sku.clone()))
        .filter(|key| before.contains_key(key))
        .collect();
    let spread = Arc::new(spread);
    let hot = Arc::new(hot);

    eprintln!(
        "reserving for {} s with {} workers...",
        options.seconds, options.concurrency
    );
    let url = Arc::new(format!("{experience}/v1/reservations"));
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let cpu_before = crate::bench_host::CpuTimes::now();
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..options.concurrency {
        let token = issuer.mint(&TokenRequest {
            audience: "experience-api".into(),
            subject: format!("bench-channel-{worker}"),
            scopes: vec!["reservations:write".into()],
            ttl_seconds: 3600,
            ..TokenRequest::default()
        })?;
        let (http, url, spread, hot) = (http.clone(), url.clone(), spread.clone(), hot.clone());
        workers.push(tokio::spawn(async move {
            let mut figures = LoadFigures::default();
            let mut refused = 0_u64;
            let mut held: HashMap<(String, String), i64> = HashMap::new();
            let mut state = 0x2545_F491_4F6C_DD1D_u64 ^ (worker as u64 + 1);
            let mut n = 0_u64;
            while Instant::now() < deadline {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let key = if state.is_multiple_of(10) && !hot.is_empty() {
                    &hot[((state >> 8) % hot.len() as u64) as usize]
                } else {
                    &spread[((state >> 8) % spread.len() as u64) as usize]
                };
                n += 1;
                let body = serde_json::json!({
                    "channel": "web",
                    "order_ref": format!("bench-{worker}-{n}"),
                    "lines": [{"location_id": key.0, "sku": key.1, "quantity": 1}],
                });
                let sent = Instant::now();
                match http
                    .post(url.as_str())
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status();
                        let _ = response.bytes().await;
                        match status.as_u16() {
                            201 => {
                                figures.requests += 1;
                                figures.latencies.push(sent.elapsed());
                                *held.entry(key.clone()).or_default() += 1;
                            }
                            409 => {
                                refused += 1;
                                figures.latencies.push(sent.elapsed());
                            }
                            _ => figures.errors += 1,
                        }
                    }
                    Err(_) => figures.errors += 1,
                }
            }
            (figures, refused, held)
        }));
    }
    let mut reserved = LoadFigures::default();
    let mut refused = 0;
    let mut held: HashMap<(String, String), i64> = HashMap::new();
    for worker in workers {
        let (figures, worker_refused, worker_held) = worker.await?;
        reserved.requests += figures.requests;
        reserved.errors += figures.errors;
        reserved.latencies.extend(figures.latencies);
        refused += worker_refused;
        for (key, units) in worker_held {
            *held.entry(key).or_default() += units;
        }
    }
    reserved.elapsed = started.elapsed();
    let host = cpu_before.and_then(crate::bench_host::CpuTimes::until_now);
    reserved.latencies.sort();

    // The audit: every position a reservation touched.
    eprintln!("auditing...");
    let mut touched: Vec<String> = held.keys().map(|(_, sku)| sku.clone()).collect();
    touched.sort();
    touched.dedup();
    let after = figures(&http, &process, &reader, &touched).await?;
    let mut oversold = Vec::new();
    for (key, units) in &held {
        let (available_before, reserved_before) = before.get(key).copied().unwrap_or_default();
        let (available_after, reserved_after) = after.get(key).copied().unwrap_or_default();
        if *units > available_before
            || reserved_after - reserved_before != *units
            || available_after < 0
        {
            oversold.push(format!(
                "{}/{} (available {available_before}, reserved {units}, now reserved {reserved_after} available {available_after})",
                key.0, key.1
            ));
        }
    }
    let hot_with_stock: Vec<&(String, String)> = hot
        .iter()
        .filter(|key| {
            before
                .get(*key)
                .is_some_and(|(available, _)| *available > 0)
        })
        .collect();
    let sold_out = hot_with_stock
        .iter()
        .filter(|key| {
            after
                .get(**key)
                .is_some_and(|(available, _)| *available == 0)
        })
        .count();
    let rss_kib = services.peak_rss();
    drop(services);
    Ok(ReserveReport {
        reserved,
        refused,
        audited: held.len(),
        oversold,
        hot_sold_out: (sold_out, hot_with_stock.len()),
        rss_kib,
        options,
        host,
    })
}
