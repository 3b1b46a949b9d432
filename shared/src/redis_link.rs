//! Connecting to the optional Redis without holding a service up.
//!
//! Every user of Redis (shared rate limits, idempotency keys, the edge's
//! shared read model) works alone until Redis answers: it connects in the
//! background, retrying every 5 s, and takes the connection when it comes.
//! A `ConnectionManager` then reconnects by itself after an outage.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;

/// How long between attempts while Redis does not answer.
const RETRY: Duration = Duration::from_secs(5);

/// Connects to `url` in the background (call within a Tokio runtime) and
/// hands the connection to `connected` on `owner`, unless the owner is gone
/// by then. `what` names the user in logs ("rate limits", …). An invalid
/// URL is logged once and never retried.
pub fn connect_in_background<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    url: &str,
    what: &'static str,
    connected: impl Fn(&T, ConnectionManager) + Send + 'static,
) {
    let weak: Weak<T> = Arc::downgrade(owner);
    let url = url.to_owned();
    tokio::spawn(async move {
        let client = match redis::Client::open(url.as_str()) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, what, "invalid [redis] url; working without Redis");
                return;
            }
        };
        loop {
            let attempt = ConnectionManager::new(client.clone()).await;
            let Some(owner) = weak.upgrade() else { return };
            match attempt {
                Ok(connection) => {
                    connected(&owner, connection);
                    tracing::info!(what, "shared through Redis");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, what, "Redis unreachable; working alone, retrying");
                }
            }
            drop(owner);
            tokio::time::sleep(RETRY).await;
        }
    });
}
