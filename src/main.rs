//! `retail-platform`: the launcher.
//!
//! - `serve` (the default): all three services in one process on the
//!   embedded default (SQLite under `./data/`, sandbox ERP, no Redis), demo
//!   data seeded when empty; prints URLs, docs links and a dev token.
//! - `token`: prints a signed dev JWT.
//! - `openapi`: writes (or `--check`s) the committed OpenAPI documents.
//! - `seed`: upserts the demo master data into process-api's database.
//! - `import pos FILE`: uploads a POS CSV batch to system-api.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use retail_platform::{Platform, mint_token, openapi_documents};
use retail_shared::auth::{TokenRequest, audience};
use retail_shared::{Settings, telemetry};

/// Retail inventory visibility platform.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file layered over config/default.toml (env RETAIL_* wins).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run experience-api, process-api and system-api in one process.
    Serve,
    /// Print a signed dev JWT on stdout.
    Token {
        /// Audience: experience-api, process-api or system-api.
        #[arg(long)]
        aud: String,
        /// Subject (client id).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes.
        #[arg(long, default_value = "")]
        scope: String,
        /// Comma-separated location binding (e.g. S001,S002).
        #[arg(long, value_delimiter = ',')]
        locations: Option<Vec<String>>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
    /// Create the Ed25519 key pair of each layer's service tokens in DIR
    /// (never overwriting one): give each service its own `.key.pem` and
    /// the `.pub.pem` files of the layers that call it.
    Keys {
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write the OpenAPI documents into openapi/, or check them.
    Openapi {
        /// Fail (exit 1) if a committed document differs from the code.
        #[arg(long)]
        check: bool,
        /// Directory of the documents.
        #[arg(long, default_value = "openapi")]
        dir: PathBuf,
    },
    /// Replay the journal into fresh positions and compare with the live
    /// ones (process-api's database); `--write` replaces differing ones.
    Rebuild {
        /// Replace the live positions that differ.
        #[arg(long)]
        write: bool,
    },
    /// Run a load scenario and print its figures.
    Bench {
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// Import files into the platform.
    Import {
        #[command(subcommand)]
        what: ImportKind,
    },
    /// Upsert the demo master data (sizes from [seed] unless given).
    Seed {
        /// Number of stores.
        #[arg(long)]
        stores: Option<u32>,
        /// Number of SKUs.
        #[arg(long)]
        skus: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum ImportKind {
    /// A nightly POS CSV batch (columns store_id, terminal_id,
    /// transaction_id, occurred_at, sku, quantity, kind), uploaded to
    /// system-api in pieces of whole transactions with a progress bar.
    /// Exit code 1 when rows were rejected.
    Pos {
        /// The CSV file.
        file: PathBuf,
        /// system-api's base URL (default: from the configuration).
        #[arg(long)]
        url: Option<String>,
        /// A token with `pos:write` for system-api (default: a dev token
        /// minted from the configuration's signing key).
        #[arg(long, env = "RETAIL_IMPORT_TOKEN")]
        token: Option<String>,
        /// Rows per upload.
        #[arg(long, default_value_t = 5000)]
        rows_per_upload: usize,
    },
}

#[derive(Debug, Subcommand)]
enum BenchScenario {
    /// A peak day: POS traffic at system-api, availability reads and
    /// reservations through experience-api at once, on 300 stores x 20,000
    /// skus (6 million positions), the ERP sandbox down for a minute
    /// mid-run; reports the ERP backlog's drain time and peak RSS (the
    /// three services as separate processes; `cargo build --release`
    /// first; seeding takes minutes).
    BlackFriday {
        /// Seconds of mixed load.
        #[arg(long, default_value_t = 180)]
        seconds: u64,
        /// Stores seeded.
        #[arg(long, default_value_t = 300)]
        stores: u32,
        /// SKUs seeded.
        #[arg(long, default_value_t = 20_000)]
        skus: u32,
        /// POS baskets per second at system-api.
        #[arg(long, default_value_t = 500)]
        store_rate: u64,
        /// Lines per basket.
        #[arg(long, default_value_t = 3)]
        lines: usize,
        /// Availability reads per second through experience-api.
        #[arg(long, default_value_t = 2000)]
        read_rate: u64,
        /// Reservations per second through experience-api.
        #[arg(long, default_value_t = 200)]
        reserve_rate: u64,
        /// Seconds into the load when the ERP goes down.
        #[arg(long, default_value_t = 60)]
        erp_down_at: u64,
        /// Seconds the ERP stays down.
        #[arg(long, default_value_t = 60)]
        erp_down_for: u64,
        /// Keep the databases here and reuse them: a second run on the
        /// same directory skips seeding.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// POS transactions at system-api timed until their change reaches a
    /// channel's SSE stream at experience-api, under a background ingest
    /// load (services as separate processes; `cargo build --release`).
    Propagation {
        /// Seconds of measurement.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Background events/s into process-api.
        #[arg(long, default_value_t = 5000)]
        background_rate: u64,
        /// Probe transactions per second.
        #[arg(long, default_value_t = 20)]
        probes_per_second: u64,
        /// Stores seeded.
        #[arg(long, default_value_t = 20)]
        stores: u32,
        /// SKUs seeded.
        #[arg(long, default_value_t = 2000)]
        skus: u32,
    },
    /// Availability reads through experience-api (the three services as
    /// separate processes; build them first with `cargo build --release`)
    /// against a bare axum JSON endpoint, in one run.
    Read {
        /// Seconds of load per target.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Stores seeded.
        #[arg(long, default_value_t = 20)]
        stores: u32,
        /// SKUs seeded.
        #[arg(long, default_value_t = 2000)]
        skus: u32,
    },
    /// Reservations through experience-api on a spread of skus plus a few
    /// hot positions, then an oversell audit against process-api (the
    /// three services as separate processes; `cargo build --release`
    /// first).
    Reservations {
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent workers (each its own client).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Stores seeded.
        #[arg(long, default_value_t = 20)]
        stores: u32,
        /// SKUs seeded.
        #[arg(long, default_value_t = 2000)]
        skus: u32,
        /// Hot positions (a tenth of the requests, more demand than stock).
        #[arg(long, default_value_t = 20)]
        hot: u32,
    },
    /// Ingest as stores send it: POS baskets to system-api, which hands
    /// them to process-api (the three services as separate processes;
    /// `cargo build --release` first).
    Pos {
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent tills.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Lines per basket.
        #[arg(long, default_value_t = 3)]
        lines: usize,
        /// Stores seeded.
        #[arg(long, default_value_t = 20)]
        stores: u32,
        /// SKUs seeded.
        #[arg(long, default_value_t = 2000)]
        skus: u32,
    },
    /// Events/s through process-api's ingest over HTTP.
    Ingest {
        /// Events to send.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Events per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Stores.
        #[arg(long, default_value_t = 300)]
        stores: usize,
        /// SKUs.
        #[arg(long, default_value_t = 2000)]
        skus: usize,
        /// Concurrent clients (stores and systems sending at once).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// A PostgreSQL URL (a fresh schema is made in it); default: SQLite
        /// in a temp dir.
        #[arg(long)]
        database_url: Option<String>,
        /// Without the change feed publisher (by default it runs, as in
        /// production, publishing every change the events make).
        #[arg(long)]
        without_feed: bool,
        /// SQLite's memory map per connection in MiB (default: the
        /// configuration's `[process.sqlite] mmap_mib`).
        #[arg(long)]
        sqlite_mmap_mib: Option<u32>,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime()?
            .block_on(serve(settings))
            .map(|()| ExitCode::SUCCESS),
        Command::Token {
            aud,
            sub,
            scope,
            locations,
            ttl_seconds,
        } => {
            let token = mint_token(
                &settings,
                &TokenRequest {
                    audience: aud,
                    subject: sub,
                    scopes: scope.split_whitespace().map(str::to_owned).collect(),
                    locations,
                    on_behalf_of: None,
                    ttl_seconds,
                },
            )?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { dir } => {
            for path in retail_shared::service_keys::create_all(&dir)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi { check, dir } => openapi(&dir, check),
        Command::Rebuild { write } => runtime()?.block_on(async {
            telemetry::init_logging(&settings.telemetry);
            let store = process_api::storage::Store::connect(
                settings.process.database_url.expose(),
                settings.process.max_connections,
            )
            .await?;
            let report = store.rebuild(write).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.mismatches == 0 || write {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }),
        Command::Bench { scenario } => runtime()?.block_on(async {
            telemetry::init_logging(&settings.telemetry);
            match scenario {
                BenchScenario::BlackFriday {
                    seconds,
                    stores,
                    skus,
                    store_rate,
                    lines,
                    read_rate,
                    reserve_rate,
                    erp_down_at,
                    erp_down_for,
                    data_dir,
                } => {
                    anyhow::ensure!(stores >= 1 && skus as usize >= lines && lines >= 1);
                    let report = retail_platform::bench_black_friday::black_friday(
                        retail_platform::bench_black_friday::BlackFridayOptions {
                            seconds,
                            stores,
                            skus,
                            store_rate,
                            lines,
                            read_rate,
                            reserve_rate,
                            erp_down_at,
                            erp_down_for,
                            data_dir,
                        },
                    )
                    .await?;
                    print!("{}", report.render());
                }
                BenchScenario::Propagation {
                    seconds,
                    background_rate,
                    probes_per_second,
                    stores,
                    skus,
                } => {
                    let report = retail_platform::bench_read::propagation(
                        retail_platform::bench_read::PropagationOptions {
                            seconds,
                            background_rate,
                            probes_per_second,
                            stores,
                            skus,
                        },
                    )
                    .await?;
                    print!("{}", report.render());
                }
                BenchScenario::Pos {
                    seconds,
                    concurrency,
                    lines,
                    stores,
                    skus,
                } => {
                    anyhow::ensure!(concurrency >= 1 && skus as usize >= lines && stores >= 1);
                    let report =
                        retail_platform::bench_pos::pos(retail_platform::bench_pos::PosOptions {
                            seconds,
                            concurrency,
                            lines,
                            stores,
                            skus,
                        })
                        .await?;
                    print!("{}", report.render());
                    anyhow::ensure!(
                        report.not_applied == 0,
                        "lines of answered baskets not applied: {}",
                        report.not_applied
                    );
                }
                BenchScenario::Reservations {
                    seconds,
                    concurrency,
                    stores,
                    skus,
                    hot,
                } => {
                    anyhow::ensure!(concurrency >= 1 && skus >= 1 && stores >= 1);
                    let report = retail_platform::bench_reserve::reservations(
                        retail_platform::bench_reserve::ReserveOptions {
                            seconds,
                            concurrency,
                            stores,
                            skus,
                            hot,
                        },
                    )
                    .await?;
                    print!("{}", report.render());
                    anyhow::ensure!(
                        report.oversold.is_empty(),
                        "oversold or disagreeing positions: {}",
                        report.oversold.len()
                    );
                }
                BenchScenario::Read {
                    seconds,
                    concurrency,
                    stores,
                    skus,
                } => {
                    anyhow::ensure!(concurrency >= 1 && skus >= 1 && stores >= 1);
                    let report = retail_platform::bench_read::read(
                        retail_platform::bench_read::ReadOptions {
                            seconds,
                            concurrency,
                            stores,
                            skus,
                        },
                    )
                    .await?;
                    print!("{}", report.render());
                }
                BenchScenario::Ingest {
                    events,
                    batch,
                    stores,
                    skus,
                    concurrency,
                    database_url,
                    without_feed,
                    sqlite_mmap_mib,
                } => {
                    anyhow::ensure!((1..=1000).contains(&batch), "--batch must be 1 to 1000");
                    let report =
                        retail_platform::bench::ingest(retail_platform::bench::IngestOptions {
                            events,
                            batch,
                            stores,
                            skus,
                            concurrency,
                            database_url,
                            without_feed,
                            sqlite_mmap_mib,
                        })
                        .await?;
                    print!("{}", report.render());
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Import {
            what:
                ImportKind::Pos {
                    file,
                    url,
                    token,
                    rows_per_upload,
                },
        } => {
            let url = url.unwrap_or_else(|| {
                format!("http://{}:{}", settings.system.host, settings.system.port)
            });
            let token = match token {
                Some(token) => token,
                None => mint_token(
                    &settings,
                    &TokenRequest {
                        audience: audience::SYSTEM.into(),
                        subject: "pos-import".into(),
                        scopes: vec!["pos:write".into()],
                        locations: None,
                        on_behalf_of: None,
                        ttl_seconds: 3600,
                    },
                )?,
            };
            let clean = runtime()?.block_on(retail_platform::import::import_pos(
                &file,
                &url,
                &token,
                rows_per_upload,
            ))?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Seed { stores, skus } => runtime()?.block_on(async {
            telemetry::init_logging(&settings.telemetry);
            let store = process_api::storage::Store::connect(
                settings.process.database_url.expose(),
                settings.process.max_connections,
            )
            .await?;
            let stores = stores.unwrap_or(settings.seed.stores);
            let skus = skus.unwrap_or(settings.seed.skus);
            process_api::seed::seed(&store, stores, skus, settings.seed.opening_stock).await?;
            println!("seeded {stores} stores, a DC, an online node and {skus} SKUs");
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init_logging(&settings.telemetry);
    // One exporter for the three services of this process; each span names
    // its service in `retail.service`. Sends the last spans on the way out.
    let _traces = telemetry::init_tracing(&settings.telemetry, "retail-platform")?;
    let platform = Platform::start(settings.clone()).await?;
    let channel_token = mint_token(
        &settings,
        &TokenRequest {
            audience: audience::EXPERIENCE.into(),
            subject: "dev-web-shop".into(),
            scopes: ["availability:read", "reservations:write", "ops:read"]
                .map(String::from)
                .to_vec(),
            locations: None,
            on_behalf_of: None,
            ttl_seconds: 24 * 3600,
        },
    )?;
    println!(
        "\nretail-platform is running (Ctrl-C to stop)\n\n  \
         experience-api  {exp}   docs {exp}/docs\n  \
         process-api     {pro}   docs {pro}/docs\n  \
         system-api      {sys}   docs {sys}/docs\n\n\
         dev token for experience-api (24 h; scopes availability:read reservations:write ops:read):\n\n\
         {channel_token}\n\n\
         try:  curl -H \"Authorization: Bearer $TOKEN\" {exp}/v1/stores\n\
         more: cargo run --release -- token --aud process-api --sub me --scope \"inventory:read master:write\"\n",
        exp = platform.experience_url(),
        pro = platform.process_url(),
        sys = platform.system_url(),
    );
    platform
        .run_until(retail_shared::server::shutdown_signal())
        .await
}

fn openapi(dir: &Path, check: bool) -> anyhow::Result<ExitCode> {
    let mut stale = Vec::new();
    for (name, json) in openapi_documents() {
        let path = dir.join(name);
        if check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != json {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(dir)?;
            std::fs::write(&path, json)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        if check {
            println!("OpenAPI documents match the code");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "OpenAPI documents differ from the code: {}\nregenerate with: cargo run -- openapi",
            stale.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}
