//! Signed webhook delivery of the change feed.
//!
//! Each subscriber gets the feed's changes (after its filters) in seq
//! order, as CloudEvents 1.0 in JSON: one event per request
//! (`application/cloudevents+json`, structured mode) or, when the
//! subscription's `max_batch` is above 1, arrays
//! (`application/cloudevents-batch+json`). Every request carries
//! `X-Signature-256: sha256=<hex HMAC-SHA256 of the exact body, keyed by
//! the subscription's secret>` and `Webhook-Id` (stable across retries of
//! the same delivery). The event `id` is the feed seq: a receiver that
//! keeps the highest id it processed sees every change exactly once even
//! though delivery itself is at least once (a request that timed out after
//! the receiver processed it is sent again).
//!
//! A failed delivery is retried with exponential backoff and jitter, the
//! same changes again (nothing after them goes first); after
//! `max_attempts` it becomes the subscriber's dead letter (kept with its
//! exact body for a replay) and the subscriber moves on. A 410 Gone
//! answer pauses the subscription.

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use retail_shared::config::WebhookSettings;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::feed::FeedHub;
use crate::storage::Store;
use crate::storage::feed::{Change, FeedFilter};
use crate::storage::webhooks::{DeadLetterBody, DeliveryOutcome, Subscription};

/// The CloudEvents `type` of a change.
pub const EVENT_TYPE: &str = "com.retail-platform.availability.changed";
/// The CloudEvents `source` of every change.
pub const EVENT_SOURCE: &str = "/retail-platform/process-api/v1/inventory/changes";
/// Content type of a single event.
pub const SINGLE: &str = "application/cloudevents+json";
/// Content type of a batch.
pub const BATCH: &str = "application/cloudevents-batch+json";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-signature-256";

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A fresh signing secret (256 random bits, hex).
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One change as a CloudEvent.
pub fn cloud_event(change: &Change) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": change.seq.to_string(),
        "source": EVENT_SOURCE,
        "type": EVENT_TYPE,
        "subject": format!("{}/{}", change.location_id, change.sku),
        "time": change.published_at,
        "datacontenttype": "application/json",
        "data": change,
    })
}

/// The request body and content type for `changes`.
pub fn body(changes: &[Change], batch: bool) -> (String, &'static str) {
    if batch {
        let events: Vec<serde_json::Value> = changes.iter().map(cloud_event).collect();
        (serde_json::Value::Array(events).to_string(), BATCH)
    } else {
        (cloud_event(&changes[0]).to_string(), SINGLE)
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum SendError {
    /// 410 Gone: the subscriber wants no more.
    Gone,
    /// Anything else (transport error, timeout, non-2xx).
    Failed(String),
}

/// POSTs a signed body.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    webhook_id: &str,
    body: String,
    content_type: &str,
) -> Result<(), SendError> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header(SIGNATURE_HEADER, signature(secret, body.as_bytes()))
        .header("webhook-id", webhook_id)
        .body(body)
        .send()
        .await
        .map_err(|e| SendError::Failed(format!("request failed: {e}")))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status == reqwest::StatusCode::GONE {
        Err(SendError::Gone)
    } else {
        Err(SendError::Failed(format!(
            "the subscriber answered {status}"
        )))
    }
}

/// The delivery worker of one replica.
#[derive(Clone, Debug)]
pub struct Deliverer {
    store: Store,
    hub: Arc<FeedHub>,
    client: reqwest::Client,
    settings: WebhookSettings,
}

impl Deliverer {
    /// A worker with its own HTTP client (`timeout_ms` per request).
    pub fn new(store: Store, hub: Arc<FeedHub>, settings: WebhookSettings) -> anyhow::Result<Self> {
        Ok(Self {
            store,
            hub,
            client: client(&settings)?,
            settings,
        })
    }

    /// The HTTP client (shared with dead-letter replays).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// At least twice the delivery deadline: a lease never runs out while
    /// its holder may still be waiting for an answer.
    fn lease(&self) -> Duration {
        Duration::from_millis(
            self.settings
                .lease_ms
                .max(self.settings.timeout_ms.saturating_mul(2))
                .max(1000),
        )
    }

    /// Leases due subscribers and delivers to each in its own task until
    /// told to stop.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        let mut heads = self.hub.subscribe();
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                _ = heads.changed() => {}
                () = tokio::time::sleep(poll) => {}
            }
            while tasks.try_join_next().is_some() {}
            let head = self.hub.head();
            match self.store.lease_due_subscriptions(head, self.lease()).await {
                Ok(leased) => {
                    for (subscription, token) in leased {
                        let worker = self.clone();
                        let stop = stop.clone();
                        tasks.spawn(async move {
                            worker.deliver(subscription, token, stop).await;
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "leasing webhook subscribers failed"),
            }
        }
        // Deliveries in flight finish (each is bounded by the timeout).
        while tasks.join_next().await.is_some() {}
    }

    async fn deliver(
        &self,
        mut subscription: Subscription,
        mut token: i64,
        stop: watch::Receiver<bool>,
    ) {
        let id = subscription.subscription_id;
        loop {
            if *stop.borrow() {
                break;
            }
            let head = self.hub.head();
            if subscription.cursor >= head {
                break;
            }
            let outcome = match self.attempt(&subscription, head).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(%error, subscription = id, "reading the change feed failed");
                    break;
                }
            };
            match self
                .store
                .settle_delivery(id, token, &outcome, self.lease())
                .await
            {
                Ok(Some(renewed)) => token = renewed,
                Ok(None) => return, // the lease ended (failure, 410) or was lost
                Err(error) => {
                    tracing::warn!(%error, subscription = id, "recording a webhook delivery failed");
                    break;
                }
            }
            match outcome {
                DeliveryOutcome::Delivered { last_seq, .. } => {
                    subscription.cursor = last_seq;
                    subscription.attempts = 0;
                }
                DeliveryOutcome::Skipped { head } => subscription.cursor = head,
                _ => return,
            }
        }
        if let Err(error) = self.store.release_subscription(id, token).await {
            tracing::debug!(%error, subscription = id, "releasing a webhook lease failed");
        }
    }

    async fn attempt(
        &self,
        subscription: &Subscription,
        head: i64,
    ) -> Result<DeliveryOutcome, sqlx::Error> {
        let changes = self
            .store
            .changes(&FeedFilter {
                after: subscription.cursor,
                skus: subscription.skus.clone().unwrap_or_default(),
                location_ids: subscription.location_ids.clone().unwrap_or_default(),
                limit: subscription.max_batch.max(1),
            })
            .await?;
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return Ok(DeliveryOutcome::Skipped { head });
        };
        let (first_seq, last_seq) = (first.seq, last.seq);
        let (body, content_type) = body(&changes, subscription.max_batch > 1);
        let webhook_id = format!("{}-{first_seq}-{last_seq}", subscription.subscription_id);
        let started = std::time::Instant::now();
        let result = send(
            &self.client,
            &subscription.url,
            &subscription.secret_value,
            &webhook_id,
            body.clone(),
            content_type,
        )
        .await;
        metrics::histogram!("webhook_delivery_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(match result {
            Ok(()) => {
                metrics::counter!("webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                metrics::counter!("webhook_changes_delivered_total")
                    .increment(changes.len() as u64);
                DeliveryOutcome::Delivered {
                    last_seq,
                    changes: changes.len() as i64,
                }
            }
            Err(SendError::Gone) => {
                metrics::counter!("webhook_deliveries_total", "outcome" => "gone").increment(1);
                tracing::warn!(
                    subscription = subscription.subscription_id,
                    "webhook subscriber answered 410 Gone; paused"
                );
                DeliveryOutcome::Gone
            }
            Err(SendError::Failed(error)) => {
                let attempts = subscription.attempts + 1;
                let out_of_attempts = attempts >= i64::from(self.settings.max_attempts.max(1));
                metrics::counter!("webhook_deliveries_total", "outcome" => if out_of_attempts { "dead" } else { "failed" }).increment(1);
                tracing::info!(subscription = subscription.subscription_id, attempts, %error, "webhook delivery failed");
                DeliveryOutcome::Failed {
                    retry_at: self.store.now() + self.backoff_micros(attempts),
                    dead: out_of_attempts.then(|| DeadLetterBody {
                        first_seq,
                        last_seq,
                        changes: changes.len() as i64,
                        body,
                        content_type: content_type.to_owned(),
                        attempts,
                    }),
                    error,
                }
            }
        })
    }

    /// Equal jitter: half the doubled delay fixed, half random.
    fn backoff_micros(&self, attempts: i64) -> i64 {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let delay = self
            .settings
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.settings.backoff_max_ms.max(1));
        let half = delay / 2;
        let jitter = (rand::random::<f64>() * half as f64) as u64;
        i64::try_from((half + jitter).saturating_mul(1000)).unwrap_or(i64::MAX / 4)
    }
}

fn client(settings: &WebhookSettings) -> anyhow::Result<reqwest::Client> {
    Ok(retail_shared::tls::client_builder()
        .timeout(Duration::from_millis(settings.timeout_ms.max(100)))
        // A redirect would turn the POST into a body-less GET that may
        // answer 200: a 3xx is a failed delivery, never an acknowledgement.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "retail-platform-webhooks/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_are_fresh() {
        let a = new_secret();
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_secret());
    }
}
