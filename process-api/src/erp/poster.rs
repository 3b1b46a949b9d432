//! Delivery of the ERP outbox through system-api.
//!
//! `concurrency` workers each claim a batch of due postings (different
//! keys, or consecutive postings of one key in order), send the non-zero
//! ones to system-api in one call, and settle every posting by its result.
//! A call that fails as a whole (system-api or the ERP not answering, a
//! timeout, a 5xx) gives the attempts back and counts towards the circuit
//! breaker; while the breaker is open no worker claims anything, and when
//! it half-opens one worker probes with a single posting.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use retail_shared::client::{CallContext, ClientError, LayerClient};
use retail_shared::config::ErpPostingSettings;
use retail_shared::correlation::Correlation;
use retail_shared::erp::{Posting, PostingBatch, PostingResults, PostingStatus};
use tokio::sync::watch;

use super::{Breaker, SyncStatus};
use crate::storage::micros_to_rfc3339;
use crate::storage::postings::{ClaimedPosting, RetryPolicy, Settlement};
use crate::storage::{Store, now_micros};

/// Everything a delivery worker needs.
#[derive(Debug, Clone)]
pub struct Poster {
    store: Store,
    system: LayerClient,
    settings: ErpPostingSettings,
    status: Arc<SyncStatus>,
}

impl Poster {
    /// A poster over `store`, delivering through `system`.
    pub fn new(
        store: Store,
        system: LayerClient,
        settings: ErpPostingSettings,
        status: Arc<SyncStatus>,
    ) -> Self {
        Self {
            store,
            system,
            settings,
            status,
        }
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: i64::from(self.settings.max_attempts.max(1)),
            base_micros: ms_to_micros(self.settings.backoff_base_ms),
            max_micros: ms_to_micros(self.settings.backoff_max_ms),
        }
    }

    /// Runs `concurrency` workers until `stop`.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let workers: Vec<_> = (0..self.settings.concurrency.max(1))
            .map(|_| tokio::spawn(self.clone().worker(stop.clone())))
            .collect();
        for worker in workers {
            if let Err(error) = worker.await {
                tracing::error!(%error, "ERP posting worker ended abnormally");
            }
        }
    }

    async fn worker(self, mut stop: watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        loop {
            if *stop.borrow() {
                return;
            }
            let pause = match self.round().await {
                Ok(true) => None,
                Ok(false) => Some(idle),
                Err(wait) => Some(wait),
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// One claim-send-settle round. `Ok(true)`: work was done (go again at
    /// once); `Ok(false)`: nothing due; `Err(wait)`: back off this long.
    async fn round(&self) -> Result<bool, Duration> {
        let now = now_micros();
        let limit = match self.status.breaker.permit(now) {
            Breaker::CLOSED if self.status.is_single_file(now) => 1,
            Breaker::CLOSED => self.settings.batch_size.max(1),
            Breaker::PROBE => 1,
            wait => return Err(Duration::from_micros(u64::try_from(wait).unwrap_or(0))),
        };
        let lease = Duration::from_millis(self.settings.lease_ms.max(1000));
        let claimed = match self.store.claim_postings(limit, lease).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "claiming ERP postings failed");
                self.status.breaker.release_probe();
                return Err(Duration::from_secs(1));
            }
        };
        if claimed.is_empty() {
            self.status.breaker.release_probe();
            return Ok(false);
        }
        let started = std::time::SystemTime::now();
        let (settlements, call) = self.deliver(&claimed).await;
        trace_postings(&claimed, &settlements, started, call.as_ref());
        let mut posted = 0_u64;
        let mut failed = 0_u64;
        for settlement in &settlements {
            match settlement {
                Settlement::Posted { .. } => posted += 1,
                Settlement::Failed { .. } => failed += 1,
                Settlement::NotAttempted { .. } => {}
            }
        }
        metrics::counter!("erp_postings_total", "outcome" => "posted").increment(posted);
        metrics::counter!("erp_postings_total", "outcome" => "failed").increment(failed);
        let policy = self.policy();
        // Settling must not be lost to a database hiccup: the lease would
        // expire and the ERP dedupe the re-delivery, but retry a little.
        for attempt in 0..5_u32 {
            match self.store.settle_postings(&settlements, policy).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, attempt, "settling ERP postings failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        Ok(true)
    }

    /// Sends the claimed postings; every claimed posting gets a settlement.
    /// Also returns the correlation of the call to system-api, if one was
    /// made.
    async fn deliver(&self, claimed: &[ClaimedPosting]) -> (Vec<Settlement>, Option<Correlation>) {
        let mut settlements = Vec::with_capacity(claimed.len());
        // An entry that did not change on_hand (a late event before a
        // count, a return straight to unsellable) has nothing to post.
        let batch = PostingBatch {
            postings: claimed
                .iter()
                .filter(|c| {
                    if c.quantity == 0 {
                        settlements.push(Settlement::Posted {
                            posting_id: c.posting_id,
                            erp_ref: None,
                        });
                        false
                    } else {
                        true
                    }
                })
                .map(to_posting)
                .collect(),
        };
        let postings = &batch.postings;
        if postings.is_empty() {
            self.status.breaker.release_probe();
            return (settlements, None);
        }
        let correlation = Correlation::new_root();
        let ctx = CallContext {
            principal: None,
            correlation: &correlation,
        };
        let answer = self
            .system
            .post::<_, PostingResults>("/v1/erp/postings", &batch, &["erp:write"], ctx, None)
            .await;
        let now = now_micros();
        match answer {
            Ok(answer) => {
                self.status.breaker.success();
                self.status.record_success(now);
                let mut by_id: std::collections::HashMap<i64, _> = answer
                    .results
                    .into_iter()
                    .map(|r| (r.posting_id, r))
                    .collect();
                for posting in postings {
                    let settlement = match by_id.remove(&posting.posting_id) {
                        Some(result) => match result.status {
                            PostingStatus::Posted | PostingStatus::Duplicate => {
                                Settlement::Posted {
                                    posting_id: posting.posting_id,
                                    erp_ref: result.erp_ref,
                                }
                            }
                            PostingStatus::Failed => Settlement::Failed {
                                posting_id: posting.posting_id,
                                error: result.error.unwrap_or_else(|| "failed".into()),
                                permanent: !result.retryable,
                            },
                            PostingStatus::Skipped => Settlement::NotAttempted {
                                posting_id: posting.posting_id,
                                error: None,
                                retry_at: now,
                            },
                        },
                        None => Settlement::NotAttempted {
                            posting_id: posting.posting_id,
                            error: Some("the ERP adapter did not answer for it".into()),
                            retry_at: now,
                        },
                    };
                    settlements.push(settlement);
                }
            }
            // Refused for what was sent (400, 413, 422): about the postings.
            Err(ClientError::Problem { status, body })
                if is_about_the_postings(status) && postings.len() > 1 =>
            {
                // The batch as a whole was refused (a contract problem with
                // one of them): give them back to go one at a time.
                tracing::warn!(%status, %body, "ERP posting batch refused; retrying singly");
                self.status.breaker.release_probe();
                for posting in postings {
                    settlements.push(Settlement::NotAttempted {
                        posting_id: posting.posting_id,
                        error: Some(format!("batch refused: {status}")),
                        retry_at: now,
                    });
                }
                self.status.single_file();
            }
            Err(ClientError::Problem { status, body }) if is_about_the_postings(status) => {
                self.status.breaker.release_probe();
                let detail = body["detail"].as_str().unwrap_or_default().to_owned();
                for posting in postings {
                    settlements.push(Settlement::Failed {
                        posting_id: posting.posting_id,
                        error: format!("refused by system-api ({status}): {detail}"),
                        permanent: true,
                    });
                }
            }
            Err(error) => {
                let error = error.to_string();
                let wait = self.status.breaker.failure(
                    now,
                    ms_to_micros(self.settings.breaker_cooldown_ms),
                    ms_to_micros(self.settings.breaker_max_cooldown_ms),
                    self.settings.breaker_threshold.max(1),
                );
                self.status.record_failure(now, &error);
                tracing::warn!(%error, "ERP posting call failed");
                let jitter = rand::rng().random_range(0..=wait.max(1) / 2);
                for posting in postings {
                    settlements.push(Settlement::NotAttempted {
                        posting_id: posting.posting_id,
                        error: Some(error.clone()),
                        retry_at: now + wait + jitter,
                    });
                }
            }
        }
        (settlements, Some(correlation))
    }
}

/// When traces are exported: one span per posting in the trace of the
/// request that journalled its event (so a POS sale's trace ends at its
/// ERP posting), linked to the trace of the batch call that carried it.
fn trace_postings(
    claimed: &[ClaimedPosting],
    settlements: &[Settlement],
    started: std::time::SystemTime,
    call: Option<&Correlation>,
) {
    use opentelemetry::KeyValue;
    if !retail_shared::telemetry::tracing_enabled() {
        return;
    }
    let outcomes: std::collections::HashMap<i64, (&str, Option<String>)> = settlements
        .iter()
        .map(|settlement| match settlement {
            Settlement::Posted { posting_id, .. } => (*posting_id, ("posted", None)),
            Settlement::Failed {
                posting_id, error, ..
            } => (*posting_id, ("failed", Some(error.clone()))),
            Settlement::NotAttempted {
                posting_id, error, ..
            } => (*posting_id, ("not_attempted", error.clone())),
        })
        .collect();
    for posting in claimed {
        let (Some(trace_id), Some(span_id)) = (&posting.trace_id, &posting.span_id) else {
            continue;
        };
        let (outcome, error) = outcomes
            .get(&posting.posting_id)
            .cloned()
            .unwrap_or(("not_attempted", None));
        retail_shared::telemetry::record_span(
            "erp.posting",
            (trace_id, span_id),
            started,
            vec![
                KeyValue::new("retail.service", crate::SERVICE),
                KeyValue::new("retail.posting_id", posting.posting_id),
                KeyValue::new("retail.event_id", posting.event_id.clone()),
                KeyValue::new("retail.location_id", posting.location_id.clone()),
                KeyValue::new("retail.sku", posting.sku.clone()),
                KeyValue::new("retail.quantity", posting.quantity),
                KeyValue::new("retail.attempt", posting.attempts),
                KeyValue::new("retail.outcome", outcome),
            ],
            (outcome == "failed").then_some(error).flatten(),
            call.map(|c| (c.trace_id.as_str(), c.span_id.as_str())),
        );
    }
}

/// A refusal caused by the batch's content (as opposed to 401/403/404: a
/// deployment problem that no posting should die of; those open the
/// breaker like an outage until someone fixes the configuration).
fn is_about_the_postings(status: axum::http::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}

fn to_posting(claimed: &ClaimedPosting) -> Posting {
    Posting {
        posting_id: claimed.posting_id,
        event_id: claimed.event_id.clone(),
        kind: claimed.kind.clone(),
        location_id: claimed.location_id.clone(),
        sku: claimed.sku.clone(),
        quantity: claimed.quantity,
        unit_cost: claimed.unit_cost.clone(),
        currency: claimed.currency.clone(),
        occurred_at: micros_to_rfc3339(claimed.occurred_at),
        counterparty_location_id: claimed.counterparty_location_id.clone(),
        reason: claimed.reason.clone(),
    }
}

fn ms_to_micros(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
}
