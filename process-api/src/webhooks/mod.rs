//! Signed webhook delivery of the change feed.
//!
//! Each subscriber gets the feed's changes (after its filters) in seq
//! order, as CloudEvents 1.0 in JSON: one event per request
//! (`application/cloudevents+json`, structured mode) or, when the
//! subscription's `max_batch` is above 1, arrays
//! (`application/cloudevents-batch+json`). Every request is signed the
//! Standard Webhooks way (`webhook-id`, stable across retries of the same
//! delivery, `webhook-timestamp`, `webhook-signature`) and, during its
//! deprecation period, with the legacy `X-Signature-256` ([`signing`]).
//! The event `id` is the feed seq: a receiver that keeps the highest id it
//! processed sees every change exactly once even though delivery itself is
//! at least once (a request that timed out after the receiver processed it
//! is sent again).
//!
//! Deliveries go to public addresses only, unless the configuration
//! allows more ([`address`]): checked on every connection, so DNS cannot
//! swap an internal address in after registration.
//!
//! A failed delivery is retried with exponential backoff and jitter, the
//! same changes again (nothing after them goes first); after
//! `max_attempts` it becomes the subscriber's dead letter (kept with its
//! exact body for a replay) and the subscriber moves on. A 410 Gone
//! answer pauses the subscription. What operators see of a failure is
//! generic ([`Failure`]); the transport's detail goes to the log only.

pub mod address;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

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
pub use signing::new_secret;

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
    /// Anything else (refused address, transport error, timeout, non-2xx).
    Failed(Failure),
}

/// A failed request as operators see it (`last_error` of subscriptions
/// and dead letters, the replay's problem): generic words only, since the
/// transport's own message can name internal addresses and DNS details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The URL's host is (or resolves only to) a refused address.
    RefusedAddress,
    /// No answer within `timeout_ms`.
    TimedOut,
    /// No connection (DNS failure, refused, reset, TLS handshake).
    ConnectionFailed,
    /// Anything else about the request.
    RequestFailed,
    /// A status other than 2xx and 410 (redirects included: they are not
    /// followed).
    Answered(u16),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RefusedAddress => f.write_str("refused address"),
            Self::TimedOut => f.write_str("timed out"),
            Self::ConnectionFailed => f.write_str("connection failed"),
            Self::RequestFailed => f.write_str("request failed"),
            Self::Answered(status) => write!(f, "answered {status}"),
        }
    }
}

impl Failure {
    fn of(error: &reqwest::Error) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = cause {
            if current.is::<address::RefusedAddress>() {
                return Self::RefusedAddress;
            }
            cause = current.source();
        }
        if error.is_timeout() {
            Self::TimedOut
        } else if error.is_connect() {
            Self::ConnectionFailed
        } else {
            Self::RequestFailed
        }
    }
}

/// `error` with its causes, for the log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        text.push_str(": ");
        text.push_str(&current.to_string());
        cause = current.source();
    }
    text
}

/// Signs and POSTs deliveries through a client that connects to
/// permitted addresses only.
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<address::AddressPolicy>,
}

impl Sender {
    /// The client of `settings` (`timeout_ms`, address policy).
    pub fn new(settings: &WebhookSettings) -> anyhow::Result<Self> {
        let policy = Arc::new(address::AddressPolicy::from_settings(settings)?);
        Ok(Self {
            client: client(settings, policy.clone())?,
            policy,
        })
    }

    /// Which addresses deliveries may go to (registration checks it too).
    pub fn policy(&self) -> &address::AddressPolicy {
        &self.policy
    }

    /// POSTs a signed body to `url` (deliveries and dead-letter replays).
    /// `webhook_id` names the delivery: the same on every attempt of it.
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        webhook_id: &str,
        body: String,
        content_type: &str,
    ) -> Result<(), SendError> {
        let url = reqwest::Url::parse(url).map_err(|error| {
            tracing::warn!(%error, url, "webhook URL does not parse");
            SendError::Failed(Failure::RequestFailed)
        })?;
        // A literal IP is connected to without the resolver's check.
        if !self.policy.permits_url_host(&url) {
            tracing::warn!(%url, "webhook delivery refused: the URL names a refused address");
            return Err(SendError::Failed(Failure::RefusedAddress));
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let key = signing::signing_key(secret);
        let response = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(signing::ID_HEADER, webhook_id)
            .header(signing::TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                signing::SIGNATURE_HEADER,
                signing::signature(&key, webhook_id, timestamp, body.as_bytes()),
            )
            .header(
                signing::LEGACY_SIGNATURE_HEADER,
                signing::legacy_signature(secret, body.as_bytes()),
            )
            .header("deprecation", signing::DEPRECATION_VALUE)
            .header("sunset", signing::SUNSET_VALUE)
            .header(reqwest::header::LINK, signing::LINK_VALUE)
            .body(body)
            .send()
            .await
            .map_err(|error| {
                let failure = Failure::of(&error);
                tracing::info!(%url, %failure, error = chain(&error), "webhook request failed");
                SendError::Failed(failure)
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status == reqwest::StatusCode::GONE {
            Err(SendError::Gone)
        } else {
            Err(SendError::Failed(Failure::Answered(status.as_u16())))
        }
    }
}

/// The delivery worker of one replica.
#[derive(Clone, Debug)]
pub struct Deliverer {
    store: Store,
    hub: Arc<FeedHub>,
    sender: Sender,
    settings: WebhookSettings,
}

impl Deliverer {
    /// A worker with its own HTTP client (`timeout_ms` per request, the
    /// address policy of `settings` on every connection).
    pub fn new(store: Store, hub: Arc<FeedHub>, settings: WebhookSettings) -> anyhow::Result<Self> {
        Ok(Self {
            store,
            hub,
            sender: Sender::new(&settings)?,
            settings,
        })
    }

    /// The signed sender (shared with dead-letter replays and
    /// registration's address check).
    pub fn sender(&self) -> &Sender {
        &self.sender
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
        let result = self
            .sender
            .send(
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
                    error: error.to_string(),
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

fn client(
    settings: &WebhookSettings,
    policy: Arc<address::AddressPolicy>,
) -> anyhow::Result<reqwest::Client> {
    Ok(retail_shared::tls::client_builder()
        .timeout(Duration::from_millis(settings.timeout_ms.max(100)))
        // A redirect would turn the POST into a body-less GET that may
        // answer 200: a 3xx is a failed delivery, never an acknowledgement.
        .redirect(reqwest::redirect::Policy::none())
        // Every connection goes through the address policy.
        .dns_resolver(Arc::new(address::GuardedResolver::new(policy)))
        // Through a proxy (HTTP_PROXY and the like) the resolver would see
        // the proxy's name and the proxy would resolve the subscriber's,
        // out of the policy's sight.
        .no_proxy()
        .user_agent(concat!(
            "retail-platform-webhooks/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()?)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A receiver on 127.0.0.1 answering 204, counting its requests.
    async fn receiver() -> (Arc<AtomicUsize>, u16) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { axum::http::StatusCode::NO_CONTENT }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hits, port)
    }

    fn sender(allowed_hosts: &[&str]) -> Sender {
        let mut settings = retail_shared::Settings::defaults().webhooks;
        settings.timeout_ms = 2000;
        settings.allowed_hosts = allowed_hosts.iter().map(|h| (*h).to_owned()).collect();
        Sender::new(&settings).expect("sender")
    }

    async fn post(sender: &Sender, url: &str) -> Result<(), SendError> {
        sender
            .send(
                url,
                "a-test-secret-of-some-length",
                "1-2-3",
                "{}".into(),
                SINGLE,
            )
            .await
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_where_the_connection_is_made() {
        let (hits, port) = receiver().await;
        let strict = sender(&[]);
        for url in [
            format!("http://localhost:{port}/hook"),
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        ] {
            match post(&strict, &url).await {
                Err(SendError::Failed(failure)) => {
                    assert_eq!(failure, Failure::RefusedAddress, "{url}");
                    assert_eq!(failure.to_string(), "refused address");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "nothing reached the receiver"
        );

        // The development allowlist lets the same receiver in.
        let dev = sender(&["localhost", "127.0.0.1"]);
        post(&dev, &format!("http://localhost:{port}/hook"))
            .await
            .expect("delivered by name");
        post(&dev, &format!("http://127.0.0.1:{port}/hook"))
            .await
            .expect("delivered by address");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_read_as_generic_text() {
        let dev = sender(&["127.0.0.1"]);
        // A port nobody listens on.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        match post(&dev, &format!("http://127.0.0.1:{closed}/hook")).await {
            Err(SendError::Failed(failure)) => {
                assert_eq!(failure.to_string(), "connection failed");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Failure::Answered(503).to_string(), "answered 503");
        assert_eq!(Failure::TimedOut.to_string(), "timed out");
    }
}
