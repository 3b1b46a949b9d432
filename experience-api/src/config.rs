//! The part of the platform configuration experience-api reads.

use retail_shared::Settings;

/// experience-api's view of the settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bind address.
    pub host: String,
    /// Port (0 in tests).
    pub port: u16,
    /// process-api base URL.
    pub process_url: String,
}

impl From<&Settings> for Config {
    fn from(settings: &Settings) -> Self {
        Self {
            host: settings.experience.host.clone(),
            port: settings.experience.port,
            process_url: settings.experience.process_url.clone(),
        }
    }
}
