//! The part of the platform configuration process-api reads.

use retail_shared::Settings;

/// Page size when a list request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page a list request may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// process-api's view of the settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bind address.
    pub host: String,
    /// Port (0 in tests).
    pub port: u16,
    /// Database URL.
    pub database_url: String,
    /// Pool size.
    pub max_connections: u32,
    /// system-api base URL.
    pub system_url: String,
}

impl From<&Settings> for Config {
    fn from(settings: &Settings) -> Self {
        Self {
            host: settings.process.host.clone(),
            port: settings.process.port,
            database_url: settings.process.database_url.expose().to_owned(),
            max_connections: settings.process.max_connections,
            system_url: settings.process.system_url.clone(),
        }
    }
}
