//! `retail-platform bench black-friday`: the whole platform under a peak
//! day's mixed load, with the ERP going down for a while in the middle.
//!
//! The three services run as separate processes (`cargo build --release`
//! first) on a fresh SQLite database that process-api seeds at start with
//! `stores × skus` store positions plus the DC's (an opening count each:
//! 300 × 20,000 makes 6 million positions). Every count is journalled and
//! so posted to the ERP (the sandbox in system-api): the harness waits for
//! that opening backlog to drain before the measured phase, and reports
//! how long seeding and draining took.
//!
//! Then, for `seconds`, at once:
//! - store traffic: POS baskets (`lines` lines, one in ten a return,
//!   happening now) at system-api, paced at `store_rate` baskets/s over 64
//!   tills;
//! - ecommerce availability reads through experience-api, paced at
//!   `read_rate`/s over 32 connections, on random skus;
//! - reservations through experience-api, paced at `reserve_rate`/s over
//!   32 channel clients, one unit of a random store position each;
//! - the ERP sandbox down (`PUT /v1/erp/sandbox/faults {"down": true}`)
//!   from `erp_down_at` for `erp_down_for` seconds.
//!
//! Every two seconds the harness samples process-api's ERP backlog
//! (pending and in-flight postings, process-api's `erp_postings` gauges,
//! which it refreshes every 5 s). Under
//! steady traffic a few postings are always on their way, so the backlog
//! counts as drained when it is back to the most seen before the outage;
//! the drain time runs from the ERP's return to that sample (the harness
//! keeps sampling after the load for up to 10 minutes). Printed:
//! a row per load (achieved rate, p50/p95/p99, errors), the backlog's peak
//! and drain time, and each service's peak RSS with the process-api plus
//! experience-api total.
//!
//! A pace the platform cannot hold shows as an achieved rate below the
//! target (a worker never sends more than one request at a time and skips
//! the ticks it missed).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use retail_shared::Settings;
use retail_shared::auth::{TokenIssuer, TokenRequest};

use crate::bench_read::{
    LoadFigures, ReadOptions, backlog, drain_opening_backlog, rss_rows, start_services,
};

/// Options of the black-friday scenario.
#[derive(Debug, Clone)]
pub struct BlackFridayOptions {
    /// Seconds of mixed load.
    pub seconds: u64,
    /// Stores seeded.
    pub stores: u32,
    /// SKUs seeded.
    pub skus: u32,
    /// POS baskets per second at system-api.
    pub store_rate: u64,
    /// Lines per basket.
    pub lines: usize,
    /// Availability reads per second through experience-api.
    pub read_rate: u64,
    /// Reservations per second through experience-api.
    pub reserve_rate: u64,
    /// Seconds into the load when the ERP goes down.
    pub erp_down_at: u64,
    /// Seconds the ERP stays down.
    pub erp_down_for: u64,
    /// Keep the databases in this directory (created if missing) instead
    /// of a temporary one: a later run on the same directory starts from
    /// the seeded platform and skips seeding (and its opening backlog).
    pub data_dir: Option<std::path::PathBuf>,
}

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct BlackFridayReport {
    /// From start to every service ready (seeding included).
    pub seeded_in: Duration,
    /// Opening postings drained before the load, and how long it took.
    pub opening_postings: i64,
    /// How long the opening postings took to drain.
    pub opening_drained_in: Duration,
    /// POS baskets.
    pub baskets: LoadFigures,
    /// Basket lines applied by process-api.
    pub lines_applied: u64,
    /// Availability reads.
    pub reads: LoadFigures,
    /// Reservations made (201).
    pub reservations: LoadFigures,
    /// Reservations refused for want of stock (409).
    pub refused: u64,
    /// The most postings waiting at one sample.
    pub backlog_peak: i64,
    /// From the ERP's return to an empty backlog (`None`: not within the
    /// sampling window).
    pub drained_in: Option<Duration>,
    /// Postings waiting when the harness gave up (0 when drained).
    pub backlog_left: i64,
    /// The most postings waiting at one sample before the outage.
    pub backlog_steady: i64,
    /// Peak RSS (KiB) per service process.
    pub rss_kib: Vec<(&'static str, u64)>,
    /// RSS at the end (KiB) per service process: (anonymous, file-backed).
    pub rss_now_kib: Vec<(&'static str, u64, u64)>,
    /// Options used.
    pub options: BlackFridayOptions,
}

impl BlackFridayReport {
    /// The printed table.
    pub fn render(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "scenario black-friday ({} stores x {} skus = {} positions, {} s; ERP down from {} s for {} s)\n",
            o.stores,
            o.skus,
            (u64::from(o.stores) + 1) * u64::from(o.skus),
            o.seconds,
            o.erp_down_at,
            o.erp_down_for
        );
        out += &format!(
            "  seeding         {:.0} s to ready; opening ERP backlog of {} postings drained in {:.0} s\n",
            self.seeded_in.as_secs_f64(),
            self.opening_postings,
            self.opening_drained_in.as_secs_f64()
        );
        out += &format!(
            "  {:<28} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
            "load", "target/s", "done/s", "p50 ms", "p95 ms", "p99 ms", "errors"
        );
        let row = |name: &str, target: u64, f: &LoadFigures, done: u64| {
            format!(
                "  {name:<28} {target:>8} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>7}\n",
                done as f64 / f.elapsed.as_secs_f64().max(1e-9),
                f.percentile(50.0).as_secs_f64() * 1e3,
                f.percentile(95.0).as_secs_f64() * 1e3,
                f.percentile(99.0).as_secs_f64() * 1e3,
                f.errors
            )
        };
        out += &row(
            "POS baskets (system-api)",
            o.store_rate,
            &self.baskets,
            self.baskets.requests,
        );
        out += &row(
            "availability reads (exp)",
            o.read_rate,
            &self.reads,
            self.reads.requests,
        );
        out += &row(
            "reservations (exp)",
            o.reserve_rate,
            &self.reservations,
            self.reservations.requests + self.refused,
        );
        out += &format!(
            "  basket lines applied {} ({:.0} events/s); reads from the read model {:.1}%; reservations made {}, refused for stock {}\n",
            self.lines_applied,
            self.lines_applied as f64 / self.baskets.elapsed.as_secs_f64().max(1e-9),
            100.0 * self.reads.from_model as f64 / self.reads.requests.max(1) as f64,
            self.reservations.requests,
            self.refused
        );
        out += &format!(
            "  ERP backlog     {} postings before the outage, peak {}; drained {}\n",
            self.backlog_steady,
            self.backlog_peak,
            match self.drained_in {
                Some(d) => format!("{:.1} s after the ERP came back", d.as_secs_f64()),
                None => format!("NOT within 10 minutes ({} left)", self.backlog_left),
            }
        );
        out += &rss_rows(&self.rss_kib);
        let edge: u64 = self
            .rss_kib
            .iter()
            .filter(|(name, _)| *name != "system-api")
            .map(|(_, kib)| kib)
            .sum();
        out += &format!(
            "  peak RSS process-api + experience-api {:.2} GiB (target 1.5 GiB)\n",
            edge as f64 / (1024.0 * 1024.0)
        );
        for (service, anon, file) in &self.rss_now_kib {
            out += &format!(
                "  RSS at the end {service:<16} {:>8.1} MiB anonymous + {:>8.1} MiB file-backed\n",
                *anon as f64 / 1024.0,
                *file as f64 / 1024.0
            );
        }
        out
    }
}

/// Tills sending POS baskets (each one basket at a time).
const TILLS: usize = 64;
/// Connections reading availability.
const READERS: usize = 32;
/// Channel clients reserving.
const RESERVERS: usize = 32;

/// What one request came to.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    /// Answered as hoped.
    ok: bool,
    /// Refused for a business reason (409): timed, not an error.
    refused: bool,
    /// A count to add up (lines applied; answers from the read model).
    extra: u64,
}

/// Runs `job` from `workers` workers at `rate` per second in total until
/// `until`; returns the figures (`from_model` carries the extras) and the
/// refusals.
async fn paced<F, Fut>(rate: u64, workers: usize, until: Instant, job: F) -> (LoadFigures, u64)
where
    F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    if rate > 0 {
        let period = Duration::from_secs_f64(workers as f64 / rate as f64);
        for worker in 0..workers {
            let job = job.clone();
            tasks.push(tokio::spawn(async move {
                let mut figures = LoadFigures::default();
                let mut refused = 0_u64;
                let mut ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ ((worker as u64 + 1) << 17);
                let mut n = 0_u64;
                loop {
                    ticker.tick().await;
                    if Instant::now() >= until {
                        break;
                    }
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    n += 1;
                    let sent = Instant::now();
                    let outcome = job(worker, n, state).await;
                    if outcome.ok || outcome.refused {
                        figures.latencies.push(sent.elapsed());
                    }
                    if outcome.ok {
                        figures.requests += 1;
                    } else if outcome.refused {
                        refused += 1;
                    } else {
                        figures.errors += 1;
                    }
                    figures.from_model += outcome.extra;
                }
                (figures, refused)
            }));
        }
    }
    let mut all = LoadFigures::default();
    let mut refused = 0;
    for task in tasks {
        if let Ok((figures, worker_refused)) = task.await {
            all.requests += figures.requests;
            all.errors += figures.errors;
            all.from_model += figures.from_model;
            all.latencies.extend(figures.latencies);
            refused += worker_refused;
        }
    }
    all.elapsed = started.elapsed();
    all.latencies.sort();
    (all, refused)
}

/// Sets the ERP sandbox up or down.
async fn erp_down(
    http: &reqwest::Client,
    system: &str,
    token: &str,
    down: bool,
) -> anyhow::Result<()> {
    let response = http
        .put(format!("{system}/v1/erp/sandbox/faults"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "down": down }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "setting the ERP sandbox's faults: {}",
        response.status()
    );
    Ok(())
}

/// Runs the scenario.
pub async fn black_friday(options: BlackFridayOptions) -> anyhow::Result<BlackFridayReport> {
    let temporary = tempfile::tempdir().context("temp dir")?;
    let dir = match &options.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => temporary.path().to_path_buf(),
    };
    let settings = Settings::defaults();
    let started = Instant::now();
    let (services, experience) = start_services(
        &dir,
        &ReadOptions {
            seconds: options.seconds,
            concurrency: 16,
            stores: options.stores,
            skus: options.skus,
        },
    )?;
    let process = services.url("process-api")?;
    let system = services.url("system-api")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    eprintln!(
        "seeding {} stores x {} skus (process-api seeds before it answers)...",
        options.stores, options.skus
    );
    loop {
        if let Ok(response) = http.get(format!("{experience}/readyz")).send().await
            && response.status().is_success()
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "the platform did not become ready within an hour"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let seeded_in = started.elapsed();
    let issuer = TokenIssuer::new(&settings.auth);
    let mint = |audience: &str, subject: &str, scopes: &[&str]| {
        issuer.mint(&TokenRequest {
            audience: audience.into(),
            subject: subject.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl_seconds: 7200,
            ..TokenRequest::default()
        })
    };
    let ops = mint("process-api", "bench-ops", &["ops:read"])?;
    let faults = mint("system-api", "bench-ops", &["ops:write"])?;
    let tills = Arc::new(mint("system-api", "bench-tills", &["pos:write"])?);
    let shopper = Arc::new(mint("experience-api", "bench-web", &["availability:read"])?);
    let channels: Arc<Vec<String>> = Arc::new(
        (0..RESERVERS)
            .map(|n| {
                mint(
                    "experience-api",
                    &format!("bench-channel-{n}"),
                    &["reservations:write"],
                )
            })
            .collect::<Result<_, _>>()?,
    );

    eprintln!(
        "seeded in {:.0} s; draining the opening ERP postings...",
        seeded_in.as_secs_f64()
    );
    let (opening_postings, opening_drained_in) =
        drain_opening_backlog(&http, &process, &ops, Duration::from_secs(3600)).await?;

    eprintln!(
        "mixed load for {} s (ERP down from {} s for {} s)...",
        options.seconds, options.erp_down_at, options.erp_down_for
    );
    let load_started = Instant::now();
    let until = load_started + Duration::from_secs(options.seconds);
    let (stores, skus) = (
        u64::from(options.stores.max(1)),
        u64::from(options.skus.max(1)),
    );

    let pos_url = Arc::new(format!("{system}/v1/pos/transactions"));
    let lines = options.lines.max(1) as u64;
    let pos = {
        let http = http.clone();
        tokio::spawn(paced(
            options.store_rate,
            TILLS,
            until,
            move |till, n, random| {
                let (http, url, token) = (http.clone(), pos_url.clone(), tills.clone());
                async move {
                    let basket: Vec<serde_json::Value> = (0..lines)
                    .map(|line| {
                        serde_json::json!({
                            "sku": format!("SKU-{:06}", 1 + (random + line * 7919) % skus),
                            "quantity": 1,
                            "kind": if (random >> (line + 3)).is_multiple_of(10) { "return" } else { "sale" },
                        })
                    })
                    .collect();
                    let body = serde_json::json!({
                        "store_id": format!("S{:03}", 1 + (random >> 20) % stores),
                        "terminal_id": format!("T{till:03}"),
                        "transaction_id": format!("bf-{till}-{n}"),
                        "occurred_at": crate::bench::now_rfc3339(),
                        "lines": basket,
                    });
                    match http
                        .post(url.as_str())
                        .bearer_auth(token.as_str())
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(response) if response.status().is_success() => {
                            match response.json::<serde_json::Value>().await {
                                Ok(value) => Outcome {
                                    ok: true,
                                    refused: false,
                                    extra: value["events"]
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .filter(|e| e["status"] == "applied")
                                        .count() as u64,
                                },
                                Err(_) => Outcome::default(),
                            }
                        }
                        _ => Outcome::default(),
                    }
                }
            },
        ))
    };
    let reads = {
        let http = http.clone();
        let base = Arc::new(experience.clone());
        tokio::spawn(paced(
            options.read_rate,
            READERS,
            until,
            move |_, _, random| {
                let (http, base, token) = (http.clone(), base.clone(), shopper.clone());
                async move {
                    let url = format!("{base}/v1/availability/SKU-{:06}", 1 + random % skus);
                    match http.get(url).bearer_auth(token.as_str()).send().await {
                        Ok(response) => {
                            let (ok, model) =
                                crate::bench_read::availability_answer(response).await;
                            Outcome {
                                ok,
                                refused: false,
                                extra: u64::from(model),
                            }
                        }
                        Err(_) => Outcome::default(),
                    }
                }
            },
        ))
    };
    let reservations = {
        let http = http.clone();
        let url = Arc::new(format!("{experience}/v1/reservations"));
        tokio::spawn(paced(
            options.reserve_rate,
            RESERVERS,
            until,
            move |worker, n, random| {
                let (http, url, channels) = (http.clone(), url.clone(), channels.clone());
                async move {
                    let body = serde_json::json!({
                        "channel": "web",
                        "order_ref": format!("bf-{worker}-{n}"),
                        "lines": [{
                            "location_id": format!("S{:03}", 1 + (random >> 20) % stores),
                            "sku": format!("SKU-{:06}", 1 + random % skus),
                            "quantity": 1,
                        }],
                    });
                    match http
                        .post(url.as_str())
                        .bearer_auth(&channels[worker % channels.len()])
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            Outcome {
                                ok: status == 201,
                                refused: status == 409,
                                extra: 0,
                            }
                        }
                        Err(_) => Outcome::default(),
                    }
                }
            },
        ))
    };

    // The ERP outage, and the backlog sampled every second.
    let erp_back_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let outage = {
        let (http, system, faults, back) = (
            http.clone(),
            system.clone(),
            faults.clone(),
            erp_back_at.clone(),
        );
        let (at, down_for) = (options.erp_down_at, options.erp_down_for);
        tokio::spawn(async move {
            tokio::time::sleep_until((load_started + Duration::from_secs(at)).into()).await;
            erp_down(&http, &system, &faults, true).await?;
            eprintln!("ERP down");
            tokio::time::sleep(Duration::from_secs(down_for)).await;
            erp_down(&http, &system, &faults, false).await?;
            if let Ok(mut slot) = back.lock() {
                *slot = Some(Instant::now());
            }
            eprintln!("ERP back");
            anyhow::Ok(())
        })
    };
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (http, process, ops, back, peak) = (
            http.clone(),
            process.clone(),
            ops.clone(),
            erp_back_at.clone(),
            peak.clone(),
        );
        let down_at = load_started + Duration::from_secs(options.erp_down_at);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(2));
            // The most waiting before the outage: the level of steady traffic.
            let mut steady = 0_i64;
            loop {
                ticker.tick().await;
                let Ok(waiting) = backlog(&http, &process, &ops).await else {
                    continue;
                };
                peak.fetch_max(u64::try_from(waiting).unwrap_or(0), Ordering::Relaxed);
                if Instant::now() < down_at {
                    steady = steady.max(waiting);
                }
                let back_at = back.lock().ok().and_then(|slot| *slot);
                if let Some(back_at) = back_at {
                    if waiting <= steady {
                        return (Some(back_at.elapsed()), 0, steady);
                    }
                    if back_at.elapsed() > Duration::from_secs(600) {
                        return (None, waiting, steady);
                    }
                } else if Instant::now() > until + Duration::from_secs(600) {
                    return (None, waiting, steady);
                }
            }
        })
    };

    let (baskets, _) = pos.await?;
    let (reads, _) = reads.await?;
    let (reservations, refused) = reservations.await?;
    eprintln!("load done; waiting for the ERP backlog to drain...");
    outage.await??;
    let (drained_in, backlog_left, backlog_steady) = sampler.await?;
    let rss_kib = services.peak_rss();
    let rss_now_kib = services.rss_split();
    drop(services);
    let lines_applied = baskets.from_model;
    Ok(BlackFridayReport {
        seeded_in,
        opening_postings,
        opening_drained_in,
        baskets,
        lines_applied,
        reads,
        reservations,
        refused,
        backlog_peak: i64::try_from(peak.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        drained_in,
        backlog_left,
        backlog_steady,
        rss_kib,
        rss_now_kib,
        options,
    })
}
