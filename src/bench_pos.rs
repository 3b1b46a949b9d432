//! `retail-platform bench pos`: ingest as stores send it, one POS basket
//! per request to system-api's `POST /v1/pos/transactions`, which turns
//! each line into a canonical event and hands the basket to process-api
//! over HTTP (with an idempotency key).
//!
//! The three services run as separate processes on a fresh SQLite database
//! seeded with `stores × skus` positions. `concurrency` tills post baskets
//! of `lines` lines (mostly sales, some returns, random skus) for
//! `seconds`. Every line's outcome comes back in the answer; the scenario
//! counts the lines applied and fails if any line of an answered basket
//! was not. Prints baskets/s, events/s, p50/p95/p99 per basket, errors and
//! each service's peak RSS.

use std::time::{Duration, Instant};

use anyhow::Context;
use retail_shared::Settings;
use retail_shared::auth::{TokenIssuer, TokenRequest};

use crate::bench_read::{LoadFigures, ReadOptions, rss_rows, start_ready};

/// Options of the POS scenario.
#[derive(Debug, Clone)]
pub struct PosOptions {
    /// Seconds of load.
    pub seconds: u64,
    /// Concurrent tills.
    pub concurrency: usize,
    /// Lines per basket.
    pub lines: usize,
    /// Stores seeded.
    pub stores: u32,
    /// SKUs seeded.
    pub skus: u32,
}

/// What the POS scenario measured.
#[derive(Debug, Clone)]
pub struct PosReport {
    /// Baskets answered 200 (latency per basket).
    pub baskets: LoadFigures,
    /// Lines applied.
    pub applied: u64,
    /// Lines of answered baskets that were not applied.
    pub not_applied: u64,
    /// Peak RSS (KiB) per service process.
    pub rss_kib: Vec<(&'static str, u64)>,
    /// Options used.
    pub options: PosOptions,
}

impl PosReport {
    /// The printed table.
    pub fn render(&self) -> String {
        let b = &self.baskets;
        let mut out = format!(
            "scenario pos ({} tills, {} s, {} lines per basket, {} stores x {} skus)\n",
            self.options.concurrency,
            self.options.seconds,
            self.options.lines,
            self.options.stores,
            self.options.skus
        );
        out += &format!(
            "  baskets/s       {:.0} ({} answered, {} errors)\n",
            b.rate(),
            b.requests,
            b.errors
        );
        out += &format!(
            "  events/s        {:.0} ({} lines applied, {} not applied)\n",
            self.applied as f64 / b.elapsed.as_secs_f64().max(1e-9),
            self.applied,
            self.not_applied
        );
        out += &format!(
            "  basket latency  p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms\n",
            b.percentile(50.0).as_secs_f64() * 1e3,
            b.percentile(95.0).as_secs_f64() * 1e3,
            b.percentile(99.0).as_secs_f64() * 1e3,
        );
        out += &rss_rows(&self.rss_kib);
        out
    }
}

/// Runs the scenario.
pub async fn pos(options: PosOptions) -> anyhow::Result<PosReport> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let settings = Settings::defaults();
    let read = ReadOptions {
        seconds: options.seconds,
        concurrency: options.concurrency,
        stores: options.stores,
        skus: options.skus,
    };
    let (services, _, http) = start_ready(dir.path(), &read).await?;
    let system = services.url("system-api")?;
    let token = TokenIssuer::new(&settings.auth).mint(&TokenRequest {
        audience: "system-api".into(),
        subject: "bench-tills".into(),
        scopes: vec!["pos:write".into()],
        ttl_seconds: 3600,
        ..TokenRequest::default()
    })?;
    eprintln!(
        "posting baskets for {} s from {} tills...",
        options.seconds, options.concurrency
    );
    let url = format!("{system}/v1/pos/transactions");
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut tills = Vec::new();
    for till in 0..options.concurrency {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        let (stores, skus, lines) = (
            u64::from(options.stores.max(1)),
            u64::from(options.skus.max(1)),
            options.lines.max(1),
        );
        tills.push(tokio::spawn(async move {
            let mut figures = LoadFigures::default();
            let (mut applied, mut not_applied) = (0_u64, 0_u64);
            let mut state = 0x9E6C_63D0_676A_9A99_u64 ^ (till as u64 + 1);
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut n = 0_u64;
            while Instant::now() < deadline {
                n += 1;
                let store = 1 + next() % stores;
                let first = next();
                let basket: Vec<serde_json::Value> = (0..lines as u64)
                    .map(|line| {
                        serde_json::json!({
                            "sku": format!("SKU-{:06}", 1 + (first + line * 7919) % skus),
                            "quantity": 1,
                            "kind": if next().is_multiple_of(10) { "return" } else { "sale" },
                        })
                    })
                    .collect();
                let body = serde_json::json!({
                    "store_id": format!("S{store:03}"),
                    "terminal_id": format!("T{till:03}"),
                    "transaction_id": format!("bench-{till}-{n}"),
                    "occurred_at": crate::bench::now_rfc3339(),
                    "lines": basket,
                });
                let sent = Instant::now();
                let answer = http.post(&url).bearer_auth(&token).json(&body).send().await;
                match answer {
                    Ok(response) if response.status().is_success() => {
                        let value: serde_json::Value = match response.json().await {
                            Ok(value) => value,
                            Err(_) => {
                                figures.errors += 1;
                                continue;
                            }
                        };
                        figures.requests += 1;
                        figures.latencies.push(sent.elapsed());
                        for event in value["events"].as_array().into_iter().flatten() {
                            if event["status"] == "applied" {
                                applied += 1;
                            } else {
                                not_applied += 1;
                            }
                        }
                    }
                    _ => figures.errors += 1,
                }
            }
            (figures, applied, not_applied)
        }));
    }
    let mut baskets = LoadFigures::default();
    let (mut applied, mut not_applied) = (0, 0);
    for till in tills {
        let (figures, till_applied, till_not_applied) = till.await?;
        baskets.requests += figures.requests;
        baskets.errors += figures.errors;
        baskets.latencies.extend(figures.latencies);
        applied += till_applied;
        not_applied += till_not_applied;
    }
    baskets.elapsed = started.elapsed();
    baskets.latencies.sort();
    let rss_kib = services.peak_rss();
    drop(services);
    Ok(PosReport {
        baskets,
        applied,
        not_applied,
        rss_kib,
        options,
    })
}
