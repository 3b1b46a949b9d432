//! Webhook subscriptions of the change feed and their dead letters.
//!
//! A subscription's `cursor` is the last feed seq it acknowledged (or gave
//! up on); a replica delivers to it only while holding its lease, and
//! every cursor move is fenced by that lease, so two replicas never both
//! advance one subscriber.

use serde::Serialize;
use utoipa::ToSchema;

use super::idempotency::{Keyed, KeyedWrite};
use super::ledger::{postgres_ledger, sqlite_ledger};
use super::{Store, micros_to_rfc3339};
use crate::{on_reader, on_writer};

/// A registered subscriber.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Subscription {
    /// Id.
    pub subscription_id: i64,
    /// Where changes are POSTed.
    pub url: String,
    /// Only changes of these skus (absent: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skus: Option<Vec<String>>,
    /// Only changes at these locations (absent: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location_ids: Option<Vec<String>>,
    /// Changes per request: 1 sends one CloudEvent per request
    /// (`application/cloudevents+json`), more sends a batch
    /// (`application/cloudevents-batch+json`).
    pub max_batch: i64,
    /// `active` or `paused` (the subscriber answered 410 Gone).
    pub status: String,
    /// The last feed seq acknowledged or dead-lettered.
    pub cursor: i64,
    /// Failed attempts of the delivery under way.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: String,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Changes delivered so far.
    pub delivered: i64,
    /// The last successful delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<String>,
    /// Dead letters waiting for an operator.
    pub dead_letters: i64,
    /// Who registered it.
    pub created_by: String,
    /// When.
    pub created_at: String,
    /// The signing secret (HMAC-SHA256 key); shown only when created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip)]
    pub(crate) secret_value: String,
}

/// A delivery given up on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetter {
    /// Id.
    pub dead_letter_id: i64,
    /// Its subscriber.
    pub subscription_id: i64,
    /// First feed seq in it.
    pub first_seq: i64,
    /// Last feed seq in it.
    pub last_seq: i64,
    /// Changes in it.
    pub changes: i64,
    /// Attempts made.
    pub attempts: i64,
    /// The last failure.
    pub last_error: String,
    /// When it was given up on.
    pub created_at: String,
    #[serde(skip)]
    pub(crate) body: String,
    #[serde(skip)]
    pub(crate) content_type: String,
}

/// A new subscription.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    /// Target.
    pub url: String,
    /// Signing secret.
    pub secret: String,
    /// Sku filter.
    pub skus: Option<Vec<String>>,
    /// Location filter.
    pub location_ids: Option<Vec<String>>,
    /// Changes per request.
    pub max_batch: i64,
    /// Deliver changes after this seq.
    pub start_after: i64,
    /// Who.
    pub actor: String,
}

const SUBSCRIPTION_COLUMNS: &str = "s.subscription_id, s.url, s.secret, s.skus, s.location_ids, \
     s.max_batch, s.status, s.cursor, s.attempts, s.next_attempt_at, s.last_error, s.delivered, \
     s.last_delivered_at, s.created_by, s.created_at, \
     (SELECT COUNT(*) FROM webhook_dead_letters d WHERE d.subscription_id = s.subscription_id) \
     AS dead_letters";

const DEAD_LETTER_COLUMNS: &str = "dead_letter_id, subscription_id, first_seq, last_seq, changes, \
     attempts, last_error, created_at, body, content_type";

fn list(text: Option<String>) -> Option<Vec<String>> {
    text.map(|t| t.split(',').map(str::to_owned).collect())
}

/// The query of one subscriber by id.
fn one_subscription() -> String {
    format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions s WHERE s.subscription_id = $1"
    )
}

fn subscription_from_row<R: sqlx::Row>(row: &R) -> Result<Subscription, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Subscription {
        subscription_id: row.try_get("subscription_id")?,
        url: row.try_get("url")?,
        skus: list(row.try_get("skus")?),
        location_ids: list(row.try_get("location_ids")?),
        max_batch: row.try_get("max_batch")?,
        status: row.try_get("status")?,
        cursor: row.try_get("cursor")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: micros_to_rfc3339(row.try_get("next_attempt_at")?),
        last_error: row.try_get("last_error")?,
        delivered: row.try_get("delivered")?,
        last_delivered_at: row
            .try_get::<Option<i64>, _>("last_delivered_at")?
            .map(micros_to_rfc3339),
        dead_letters: row.try_get("dead_letters")?,
        created_by: row.try_get("created_by")?,
        created_at: micros_to_rfc3339(row.try_get("created_at")?),
        secret: None,
        secret_value: row.try_get("secret")?,
    })
}

fn dead_letter_from_row<R: sqlx::Row>(row: &R) -> Result<DeadLetter, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DeadLetter {
        dead_letter_id: row.try_get("dead_letter_id")?,
        subscription_id: row.try_get("subscription_id")?,
        first_seq: row.try_get("first_seq")?,
        last_seq: row.try_get("last_seq")?,
        changes: row.try_get("changes")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at: micros_to_rfc3339(row.try_get("created_at")?),
        body: row.try_get("body")?,
        content_type: row.try_get("content_type")?,
    })
}

/// What became of one delivery attempt.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    /// Acknowledged: the cursor moves to `last_seq`.
    Delivered {
        /// Last seq in the delivery.
        last_seq: i64,
        /// Changes in it.
        changes: i64,
    },
    /// Nothing matched the filter up to `head`: the cursor moves there.
    Skipped {
        /// The head read.
        head: i64,
    },
    /// Failed; retried at `retry_at`, or dead-lettered when out of
    /// attempts.
    Failed {
        /// The failure.
        error: String,
        /// When to retry.
        retry_at: i64,
        /// Attempts exhausted: dead-letter the delivery.
        dead: Option<DeadLetterBody>,
    },
    /// The subscriber answered 410 Gone: paused.
    Gone,
}

/// What a dead letter keeps.
#[derive(Debug, Clone)]
pub struct DeadLetterBody {
    /// First seq.
    pub first_seq: i64,
    /// Last seq.
    pub last_seq: i64,
    /// Changes.
    pub changes: i64,
    /// The exact request body.
    pub body: String,
    /// Its content type.
    pub content_type: String,
    /// Attempts made.
    pub attempts: i64,
}

impl Store {
    /// Registers a subscriber.
    pub async fn create_subscription(
        &self,
        new: &NewSubscription,
    ) -> Result<Subscription, sqlx::Error> {
        self.create_subscription_keyed(new, None).await?.unkeyed()
    }

    /// [`Store::create_subscription`] with its `Idempotency-Key` claimed
    /// and answered in the registration's own transaction (the answer
    /// carries the signing secret, so a replay shows it again).
    pub async fn create_subscription_keyed(
        &self,
        new: &NewSubscription,
        keyed: Option<&KeyedWrite<'_, Subscription>>,
    ) -> Result<Keyed<Subscription>, sqlx::Error> {
        let now = self.now();
        let select = one_subscription();
        crate::keyed_transact!(
            self,
            keyed,
            sqlite_ledger,
            postgres_ledger,
            |tx, _backend| {
                let id: i64 = sqlx::query_scalar(
                "INSERT INTO webhook_subscriptions (url, secret, skus, location_ids, max_batch, \
                 status, cursor, next_attempt_at, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $7) RETURNING subscription_id",
            )
            .bind(new.url.as_str())
            .bind(new.secret.as_str())
            .bind(new.skus.as_ref().map(|s| s.join(",")))
            .bind(new.location_ids.as_ref().map(|s| s.join(",")))
            .bind(new.max_batch)
            .bind(new.start_after)
            .bind(now)
            .bind(new.actor.as_str())
            .fetch_one(&mut *tx)
            .await?;
                let row = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let mut subscription = subscription_from_row(&row)?;
                subscription.secret = Some(new.secret.clone());
                (subscription, true)
            }
        )
    }

    /// One subscriber.
    pub async fn subscription(&self, id: i64) -> Result<Option<Subscription>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(one_subscription()))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(subscription_from_row).transpose()
        })
    }

    /// Every subscriber, by id.
    pub async fn subscriptions(&self) -> Result<Vec<Subscription>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions s \
                 ORDER BY s.subscription_id"
            )))
            .fetch_all(pool)
            .await?;
            rows.iter().map(subscription_from_row).collect()
        })
    }

    /// Removes a subscriber and its dead letters; false when unknown.
    pub async fn delete_subscription(&self, id: i64) -> Result<bool, sqlx::Error> {
        on_writer!(self.db(), |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM webhook_dead_letters WHERE subscription_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let deleted =
                sqlx::query("DELETE FROM webhook_subscriptions WHERE subscription_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            tx.commit().await?;
            Ok(deleted > 0)
        })
    }

    /// Takes the lease of every active subscriber that is due and behind
    /// `head`; returns them with the lease token (its expiry).
    pub async fn lease_due_subscriptions(
        &self,
        head: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<(Subscription, i64)>, sqlx::Error> {
        let now = self.now();
        let until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 4);
        let due: Vec<Subscription> = on_reader!(self.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions s \
                 WHERE s.status = 'active' AND s.cursor < $1 AND s.next_attempt_at <= $2 \
                 AND s.lease_until < $2 ORDER BY s.subscription_id"
            )))
            .bind(head)
            .bind(now)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(subscription_from_row)
                .collect::<Result<_, _>>()
        })?;
        let mut leased = Vec::with_capacity(due.len());
        for subscription in due {
            let taken = on_writer!(self.db(), |pool| {
                // Only if nobody moved it since it was read: a replica that
                // delivered and let go meanwhile leaves a newer cursor.
                sqlx::query(
                    "UPDATE webhook_subscriptions SET lease_until = $1 \
                     WHERE subscription_id = $2 AND lease_until < $3 AND status = 'active' \
                     AND cursor = $4 AND attempts = $5",
                )
                .bind(until)
                .bind(subscription.subscription_id)
                .bind(now)
                .bind(subscription.cursor)
                .bind(subscription.attempts)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
            })?;
            if taken == 1 {
                leased.push((subscription, until));
            }
        }
        Ok(leased)
    }

    /// Records a delivery's outcome under the lease `token`; returns the
    /// new lease token, or None when the lease was lost (or the delivery
    /// ended the lease: a failure or 410).
    pub async fn settle_delivery(
        &self,
        subscription_id: i64,
        token: i64,
        outcome: &DeliveryOutcome,
        lease: std::time::Duration,
    ) -> Result<Option<i64>, sqlx::Error> {
        let now = self.now();
        let renewed = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 4);
        on_writer!(self.db(), |pool| {
            let mut tx = pool.begin().await?;
            let result = match outcome {
                DeliveryOutcome::Delivered { last_seq, changes } => {
                    let moved = sqlx::query(
                        "UPDATE webhook_subscriptions SET cursor = $1, attempts = 0, \
                         last_error = NULL, delivered = delivered + $2, last_delivered_at = $3, \
                         lease_until = $4 WHERE subscription_id = $5 AND lease_until = $6 \
                         AND cursor < $1",
                    )
                    .bind(*last_seq)
                    .bind(*changes)
                    .bind(now)
                    .bind(renewed)
                    .bind(subscription_id)
                    .bind(token)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    (moved == 1).then_some(renewed)
                }
                DeliveryOutcome::Skipped { head } => {
                    let moved = sqlx::query(
                        "UPDATE webhook_subscriptions SET cursor = $1, lease_until = $2 \
                         WHERE subscription_id = $3 AND lease_until = $4 AND cursor < $1",
                    )
                    .bind(*head)
                    .bind(renewed)
                    .bind(subscription_id)
                    .bind(token)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    (moved == 1).then_some(renewed)
                }
                DeliveryOutcome::Failed {
                    error,
                    retry_at,
                    dead,
                } => {
                    let moved = match dead {
                        Some(letter) => {
                            let moved = sqlx::query(
                                "UPDATE webhook_subscriptions SET cursor = $1, attempts = 0, \
                                 last_error = $2, next_attempt_at = $3, lease_until = 0 \
                                 WHERE subscription_id = $4 AND lease_until = $5",
                            )
                            .bind(letter.last_seq)
                            .bind(error.as_str())
                            .bind(now)
                            .bind(subscription_id)
                            .bind(token)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            if moved == 1 {
                                sqlx::query(
                                    "INSERT INTO webhook_dead_letters (subscription_id, \
                                     first_seq, last_seq, changes, body, content_type, attempts, \
                                     last_error, created_at) \
                                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                                )
                                .bind(subscription_id)
                                .bind(letter.first_seq)
                                .bind(letter.last_seq)
                                .bind(letter.changes)
                                .bind(letter.body.as_str())
                                .bind(letter.content_type.as_str())
                                .bind(letter.attempts)
                                .bind(error.as_str())
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                            }
                            moved
                        }
                        None => sqlx::query(
                            "UPDATE webhook_subscriptions SET attempts = attempts + 1, \
                             last_error = $1, next_attempt_at = $2, lease_until = 0 \
                             WHERE subscription_id = $3 AND lease_until = $4",
                        )
                        .bind(error.as_str())
                        .bind(*retry_at)
                        .bind(subscription_id)
                        .bind(token)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected(),
                    };
                    let _ = moved; // the lease ends either way
                    None
                }
                DeliveryOutcome::Gone => {
                    sqlx::query(
                        "UPDATE webhook_subscriptions SET status = 'paused', \
                         last_error = 'the subscriber answered 410 Gone', lease_until = 0 \
                         WHERE subscription_id = $1 AND lease_until = $2",
                    )
                    .bind(subscription_id)
                    .bind(token)
                    .execute(&mut *tx)
                    .await?;
                    None
                }
            };
            tx.commit().await?;
            Ok(result)
        })
    }

    /// Lets go of a lease early (shutdown, caught up).
    pub async fn release_subscription(
        &self,
        subscription_id: i64,
        token: i64,
    ) -> Result<(), sqlx::Error> {
        on_writer!(self.db(), |pool| {
            sqlx::query(
                "UPDATE webhook_subscriptions SET lease_until = 0 \
                 WHERE subscription_id = $1 AND lease_until = $2",
            )
            .bind(subscription_id)
            .bind(token)
            .execute(pool)
            .await
            .map(|_| ())
        })
    }

    /// Puts a paused subscriber back to work; false when there is none.
    pub async fn resume_subscription(&self, subscription_id: i64) -> Result<bool, sqlx::Error> {
        let resumed = self
            .resume_subscription_keyed(subscription_id, None)
            .await?;
        Ok(resumed.unkeyed()?.is_some())
    }

    /// [`Store::resume_subscription`] answering the subscriber as it stands
    /// after (`None`: no such subscriber), with its `Idempotency-Key`
    /// claimed and answered in the same transaction.
    pub async fn resume_subscription_keyed(
        &self,
        subscription_id: i64,
        keyed: Option<&KeyedWrite<'_, Option<Subscription>>>,
    ) -> Result<Keyed<Option<Subscription>>, sqlx::Error> {
        let now = self.now();
        let select = one_subscription();
        crate::keyed_transact!(
            self,
            keyed,
            sqlite_ledger,
            postgres_ledger,
            |tx, _backend| {
                let updated = sqlx::query(
                    "UPDATE webhook_subscriptions SET status = 'active', attempts = 0, \
                 next_attempt_at = $1 WHERE subscription_id = $2",
                )
                .bind(now)
                .bind(subscription_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    (None, false)
                } else {
                    let row = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                        .bind(subscription_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    (Some(subscription_from_row(&row)?), true)
                }
            }
        )
    }

    /// A subscriber's dead letters, oldest first.
    pub async fn dead_letters(&self, subscription_id: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM webhook_dead_letters \
                 WHERE subscription_id = $1 ORDER BY dead_letter_id LIMIT 1000"
            )))
            .bind(subscription_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(dead_letter_from_row).collect()
        })
    }

    /// One dead letter of a subscriber.
    pub async fn dead_letter(
        &self,
        subscription_id: i64,
        dead_letter_id: i64,
    ) -> Result<Option<DeadLetter>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM webhook_dead_letters \
                 WHERE subscription_id = $1 AND dead_letter_id = $2"
            )))
            .bind(subscription_id)
            .bind(dead_letter_id)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(dead_letter_from_row).transpose()
        })
    }

    /// Removes a dead letter (delivered by a replay, or discarded); false
    /// when it was already gone.
    pub async fn remove_dead_letter(
        &self,
        subscription_id: i64,
        dead_letter_id: i64,
    ) -> Result<bool, sqlx::Error> {
        let removed = self
            .remove_dead_letter_keyed(subscription_id, dead_letter_id, None)
            .await?;
        Ok(removed.unkeyed()?.is_some())
    }

    /// [`Store::remove_dead_letter`] answering the letter removed (`None`:
    /// none), with its `Idempotency-Key` claimed and answered in the same
    /// transaction.
    pub async fn remove_dead_letter_keyed(
        &self,
        subscription_id: i64,
        dead_letter_id: i64,
        keyed: Option<&KeyedWrite<'_, Option<DeadLetter>>>,
    ) -> Result<Keyed<Option<DeadLetter>>, sqlx::Error> {
        let select = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM webhook_dead_letters \
             WHERE subscription_id = $1 AND dead_letter_id = $2"
        );
        crate::keyed_transact!(
            self,
            keyed,
            sqlite_ledger,
            postgres_ledger,
            |tx, _backend| {
                let row = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                    .bind(subscription_id)
                    .bind(dead_letter_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                match row.as_ref().map(dead_letter_from_row).transpose()? {
                    None => (None, false),
                    Some(letter) => {
                        sqlx::query(
                            "DELETE FROM webhook_dead_letters WHERE subscription_id = $1 \
                         AND dead_letter_id = $2",
                        )
                        .bind(subscription_id)
                        .bind(dead_letter_id)
                        .execute(&mut *tx)
                        .await?;
                        (Some(letter), true)
                    }
                }
            }
        )
    }

    /// Dead letters of every subscriber.
    pub async fn webhook_dead_letter_count(&self) -> Result<i64, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_dead_letters")
                .fetch_one(pool)
                .await
        })
    }
}
