//! The part of the platform configuration system-api reads.

use retail_shared::Settings;
use retail_shared::config::ErpBackend;

/// system-api's view of the settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bind address.
    pub host: String,
    /// Port (0 in tests).
    pub port: u16,
    /// Adapter and sandbox storage (SQLite).
    pub database_url: String,
    /// process-api base URL.
    pub process_url: String,
    /// ERP backend.
    pub erp_backend: ErpBackend,
}

impl From<&Settings> for Config {
    fn from(settings: &Settings) -> Self {
        Self {
            host: settings.system.host.clone(),
            port: settings.system.port,
            database_url: settings.system.database_url.expose().to_owned(),
            process_url: settings.system.process_url.clone(),
            erp_backend: settings.erp.backend,
        }
    }
}
