//! experience-api alone: `experience-api [--config FILE]`.

use std::path::PathBuf;

use clap::Parser;
use retail_shared::{Settings, telemetry};

/// Command line of the standalone service.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "experience-api: channel-facing views and reservations"
)]
struct Args {
    /// A TOML file layered over the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(args.config.as_deref())?;
    telemetry::init_logging(&settings.telemetry);
    // Sends the last spans when the service stops.
    let _traces = telemetry::init_tracing(&settings.telemetry, "experience-api")?;
    let app = experience_api::Application::build(settings).await?;
    tracing::info!(port = app.port(), "experience-api listening");
    app.run_until_stopped().await
}
