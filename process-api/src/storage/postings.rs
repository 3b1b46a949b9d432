//! The ERP outbox as a delivery queue.
//!
//! Every journal entry has one row in `outbox_postings` (written in the
//! journal's transaction). Delivery rules:
//!
//! - **Order per key.** A posting is claimed only when no earlier posting
//!   of its (location, sku) is still open and blocking: in flight, waiting
//!   for its retry time, or `dead`. Claims are made in posting order, so a
//!   key's consecutive due postings may travel in one batch (in order).
//! - **Claims are serialised** (SQLite's single writer; a transaction-scoped
//!   advisory lock on PostgreSQL), so two replicas never hold postings of
//!   one key at once.
//! - **Leases.** A claimed posting is `in_flight` until `next_attempt_at`;
//!   a worker that dies leaves it to be claimed again after that time. The
//!   ERP side deduplicates by event id, so a second delivery of a posting
//!   that did land is answered `duplicate`, never posted twice.
//! - **Dead letters block their key** until an operator replays or
//!   discards them; the postings behind them wait, visibly.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::Row as _;
use utoipa::ToSchema;

use super::idempotency::{Keyed, KeyedWrite};
use super::{Store, in_list, micros_to_rfc3339};
use crate::on_reader;

/// A claimed posting with the journal entry's details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedPosting {
    /// Outbox row.
    pub posting_id: i64,
    /// Journal entry (the ERP's idempotency key).
    pub event_id: String,
    /// Attempts including this one.
    pub attempts: i64,
    /// Journal event type.
    pub kind: String,
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Signed change of on_hand the entry caused (0: nothing to post).
    pub quantity: i64,
    /// Unit cost (decimal string) at ingest.
    pub unit_cost: Option<String>,
    /// Currency of the cost.
    pub currency: Option<String>,
    /// When the event happened (unix µs).
    pub occurred_at: i64,
    /// Other end of a transfer.
    pub counterparty_location_id: Option<String>,
    /// Reason or disposition.
    pub reason: Option<String>,
    /// The trace of the request that journalled the entry.
    pub trace_id: Option<String>,
    /// That request's span.
    pub span_id: Option<String>,
}

/// How a delivery attempt ended, per posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The ERP holds it (now or from an earlier attempt).
    Posted {
        /// The posting.
        posting_id: i64,
        /// The ERP's record, if it named one.
        erp_ref: Option<String>,
    },
    /// The ERP refused it; `permanent` refusals go dead at once, others
    /// are retried until the attempt budget is spent.
    Failed {
        /// The posting.
        posting_id: i64,
        /// Why.
        error: String,
        /// No retry can succeed without a change by someone.
        permanent: bool,
    },
    /// Not tried: the ERP (or system-api) did not answer, or an earlier
    /// posting of its key failed in the same batch. The attempt is given
    /// back; the posting is due again at `retry_at`.
    NotAttempted {
        /// The posting.
        posting_id: i64,
        /// Why (kept as the last error when set).
        error: Option<String>,
        /// When it may be claimed again (unix µs).
        retry_at: i64,
    },
}

/// Retry budget and backoff of failed postings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before a posting goes dead.
    pub max_attempts: i64,
    /// First delay (µs); doubles per attempt.
    pub base_micros: i64,
    /// Longest delay (µs).
    pub max_micros: i64,
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`: exponential, capped, with
    /// "equal jitter" (half fixed, half random) so retries of many postings
    /// spread out without ever collapsing to zero.
    pub fn delay_micros(&self, attempts: i64, unit_random: f64) -> i64 {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let ceiling = self
            .base_micros
            .saturating_mul(1_i64 << exponent)
            .min(self.max_micros)
            .max(0);
        let half = ceiling / 2;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_precision_loss,
            reason = "a jitter fraction of a delay of at most minutes"
        )]
        let jitter = (half as f64 * unit_random.clamp(0.0, 1.0)) as i64;
        half + jitter
    }
}

/// Counts of the outbox by status (ops).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PostingCounts {
    /// Waiting to be delivered (due or backing off).
    pub pending: i64,
    /// Claimed by a worker now.
    pub in_flight: i64,
    /// Gave up; blocking their key until replayed or discarded.
    pub dead: i64,
    /// Delivered.
    pub posted: i64,
    /// Discarded by an operator (never delivered).
    pub discarded: i64,
    /// Pending postings held back by a dead posting of their key.
    pub blocked_by_dead: i64,
    /// Age of the oldest posting not yet delivered (pending or in flight).
    pub oldest_pending_age_seconds: f64,
}

/// The last count of delivered and discarded postings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClosedCounts {
    at: Instant,
    took: Duration,
    posted: i64,
    discarded: i64,
}

/// One outbox row for operators.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostingView {
    /// Outbox row.
    pub posting_id: i64,
    /// Journal entry.
    pub event_id: String,
    /// Journal event type.
    pub kind: String,
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Signed on_hand change posted.
    pub quantity: i64,
    /// `pending`, `in_flight`, `posted`, `dead` or `discarded`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Queued at (RFC 3339).
    pub created_at: String,
    /// Next attempt (pending) or lease end (in flight).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Delivered at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posted_at: Option<String>,
    /// The ERP's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erp_ref: Option<String>,
    /// Who replayed or discarded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// Operator's note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For a dead posting: later postings of its key waiting behind it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_behind: Option<i64>,
}

/// Filter of the posting list.
#[derive(Debug, Clone, Default)]
pub struct PostingFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this location.
    pub location_id: Option<String>,
    /// Only this sku.
    pub sku: Option<String>,
    /// Only these locations (a token's binding); `None`: every location.
    pub locations: Option<Vec<String>>,
    /// Postings after this id.
    pub after: i64,
    /// Page size.
    pub limit: i64,
}

/// What an operator action on a dead posting comes to: the posting after.
pub type PostingActionOutcome = Result<PostingView, PostingActionRefusal>;

/// Why an operator action on a posting was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostingActionRefusal {
    /// No such posting.
    NotFound,
    /// It is not dead (its status is given).
    NotDead(String),
}

/// Open (undelivered) postings of one key, as reconciliation needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenPostings {
    /// Sum of the on_hand changes not yet in the ERP.
    pub quantity: i64,
    /// Some are in flight (their effect in the ERP is unknown right now).
    pub in_flight: bool,
}

/// The due postings that no earlier posting of their key blocks (dead, in
/// flight on its lease, or backing off), in posting order. Each status is
/// read in posting order from the status index, so the scan stops at the
/// limit; a candidate's blockers are found with one probe of the partial
/// index `outbox_postings_blocking` (migration 0010), which holds only the
/// open rows whose next attempt was moved past their creation: every
/// blocking row is among them (a pending or in-flight row blocks only
/// while its next attempt is in the future, and a dead row's next attempt
/// is set past its creation).
const CLAIM: &str = "SELECT posting_id FROM ( \
         SELECT * FROM (SELECT p.posting_id FROM outbox_postings p \
             WHERE p.status = 'pending' AND p.next_attempt_at <= $1 AND NOT EXISTS (BLOCKER) \
             ORDER BY p.posting_id LIMIT $2) AS due_pending \
         UNION ALL \
         SELECT * FROM (SELECT p.posting_id FROM outbox_postings p \
             WHERE p.status = 'in_flight' AND p.next_attempt_at <= $1 AND NOT EXISTS (BLOCKER) \
             ORDER BY p.posting_id LIMIT $2) AS due_in_flight \
     ) AS due ORDER BY posting_id LIMIT $2";

/// An earlier posting of `p`'s key that blocks it (the terms of the
/// partial index's condition appear as they are, so both databases use it).
const BLOCKER: &str = "SELECT 1 FROM outbox_postings b \
     WHERE b.location_id = p.location_id AND b.sku = p.sku AND b.posting_id < p.posting_id \
       AND b.status IN ('pending', 'in_flight', 'dead') AND b.next_attempt_at > b.created_at \
       AND (b.status = 'dead' OR b.next_attempt_at > $1)";

/// [`CLAIM`] with [`BLOCKER`] in place.
fn claim_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| CLAIM.replace("BLOCKER", BLOCKER))
}

const CLAIMED_DETAILS: &str = "SELECT p.posting_id, p.event_id, p.attempts, j.type, j.location_id, \
     j.sku, j.on_hand_change, j.unit_cost, j.currency, j.occurred_at, \
     j.counterparty_location_id, COALESCE(j.disposition, j.reason) AS reason, \
     b.trace_id, b.span_id \
     FROM outbox_postings p JOIN journal j ON j.event_id = p.event_id \
     LEFT JOIN ingest_batches b ON b.batch_id = j.batch_id \
     WHERE p.posting_id IN ";

const VIEW_COLUMNS: &str = "p.posting_id, p.event_id, j.type, p.location_id, p.sku, \
     j.on_hand_change, p.status, p.attempts, p.last_error, p.created_at, p.next_attempt_at, \
     p.posted_at, p.erp_ref, p.resolved_by, p.note";

/// The query of [`PostingView`]s, to which a `WHERE` is added.
fn view_select() -> String {
    format!(
        "SELECT {VIEW_COLUMNS}, CASE WHEN p.status = 'dead' THEN \
         (SELECT COUNT(*) FROM outbox_postings w WHERE w.location_id = p.location_id \
          AND w.sku = p.sku AND w.posting_id > p.posting_id \
          AND w.status IN ('pending', 'in_flight', 'dead')) END \
         FROM outbox_postings p JOIN journal j ON j.event_id = p.event_id"
    )
}

/// A row of [`view_select`] on either backend.
fn posting_view_from_row<R: sqlx::Row>(row: &R) -> Result<PostingView, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get(6)?;
    let next_attempt_at: i64 = row.try_get(10)?;
    let pending = status == "pending" || status == "in_flight";
    Ok(PostingView {
        posting_id: row.try_get(0)?,
        event_id: row.try_get(1)?,
        kind: row.try_get(2)?,
        location_id: row.try_get(3)?,
        sku: row.try_get(4)?,
        quantity: row.try_get(5)?,
        status,
        attempts: row.try_get(7)?,
        last_error: row.try_get(8)?,
        created_at: micros_to_rfc3339(row.try_get::<Option<i64>, _>(9)?.unwrap_or(next_attempt_at)),
        next_attempt_at: pending.then(|| micros_to_rfc3339(next_attempt_at)),
        posted_at: row.try_get::<Option<i64>, _>(11)?.map(micros_to_rfc3339),
        erp_ref: row.try_get(12)?,
        resolved_by: row.try_get(13)?,
        note: row.try_get(14)?,
        waiting_behind: row.try_get(15)?,
    })
}

macro_rules! postings_backend {
    ($module:ident, $db:ty, $serialise_claims:literal) => {
        pub(crate) mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Transaction};

            type Tx<'c> = Transaction<'c, $db>;

            pub(super) async fn claim(
                tx: &mut Tx<'_>,
                now: i64,
                lease_until: i64,
                limit: i64,
            ) -> Result<Vec<ClaimedPosting>, sqlx::Error> {
                if !$serialise_claims.is_empty() {
                    sqlx::query($serialise_claims).execute(&mut **tx).await?;
                }
                let ids: Vec<i64> = sqlx::query_scalar(claim_sql())
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut **tx)
                    .await?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut update = QueryBuilder::<$db>::new(
                    "UPDATE outbox_postings SET status = 'in_flight', attempts = attempts + 1, \
                     next_attempt_at = ",
                );
                update.push_bind(lease_until).push(" WHERE posting_id IN (");
                let mut list = update.separated(", ");
                for id in &ids {
                    list.push_bind(*id);
                }
                update.push(")");
                update.build().execute(&mut **tx).await?;
                let mut select = QueryBuilder::<$db>::new(CLAIMED_DETAILS);
                select.push("(");
                let mut list = select.separated(", ");
                for id in &ids {
                    list.push_bind(*id);
                }
                select.push(") ORDER BY p.posting_id");
                let rows = select.build().fetch_all(&mut **tx).await?;
                rows.iter()
                    .map(|row| {
                        Ok(ClaimedPosting {
                            posting_id: row.try_get(0)?,
                            event_id: row.try_get(1)?,
                            attempts: row.try_get(2)?,
                            kind: row.try_get(3)?,
                            location_id: row.try_get(4)?,
                            sku: row.try_get(5)?,
                            quantity: row.try_get(6)?,
                            unit_cost: row.try_get(7)?,
                            currency: row.try_get(8)?,
                            occurred_at: row.try_get(9)?,
                            counterparty_location_id: row.try_get(10)?,
                            reason: row.try_get(11)?,
                            trace_id: row.try_get(12)?,
                            span_id: row.try_get(13)?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn settle(
                tx: &mut Tx<'_>,
                settlements: &[Settlement],
                policy: RetryPolicy,
                now: i64,
            ) -> Result<(), sqlx::Error> {
                for settlement in settlements {
                    match settlement {
                        Settlement::Posted {
                            posting_id,
                            erp_ref,
                        } => {
                            sqlx::query(
                                "UPDATE outbox_postings SET status = 'posted', posted_at = $1, \
                                 erp_ref = $2, last_error = NULL \
                                 WHERE posting_id = $3 AND status = 'in_flight'",
                            )
                            .bind(now)
                            .bind(erp_ref.as_deref())
                            .bind(*posting_id)
                            .execute(&mut **tx)
                            .await?;
                        }
                        Settlement::Failed {
                            posting_id,
                            error,
                            permanent,
                        } => {
                            let found: Option<(i64, Option<i64>)> = sqlx::query_as(
                                "SELECT attempts, created_at FROM outbox_postings \
                                 WHERE posting_id = $1 AND status = 'in_flight'",
                            )
                            .bind(*posting_id)
                            .fetch_optional(&mut **tx)
                            .await?;
                            let Some((attempts, created_at)) = found else { continue };
                            let dead = *permanent || attempts >= policy.max_attempts;
                            let retry_at = now
                                + policy.delay_micros(attempts, rand::random::<f64>());
                            sqlx::query(
                                "UPDATE outbox_postings SET status = $1, next_attempt_at = $2, \
                                 last_error = $3 WHERE posting_id = $4",
                            )
                            .bind(if dead { "dead" } else { "pending" })
                            // A dead row must sort into the blocking index
                            // (next attempt past creation), whatever the clock.
                            .bind(if dead {
                                now.max(created_at.unwrap_or(now) + 1)
                            } else {
                                retry_at
                            })
                            .bind(error.as_str())
                            .bind(*posting_id)
                            .execute(&mut **tx)
                            .await?;
                        }
                        Settlement::NotAttempted {
                            posting_id,
                            error,
                            retry_at,
                        } => {
                            sqlx::query(
                                "UPDATE outbox_postings SET status = 'pending', \
                                 attempts = attempts - 1, next_attempt_at = $1, \
                                 last_error = COALESCE($2, last_error) \
                                 WHERE posting_id = $3 AND status = 'in_flight'",
                            )
                            .bind(*retry_at)
                            .bind(error.as_deref())
                            .bind(*posting_id)
                            .execute(&mut **tx)
                            .await?;
                        }
                    }
                }
                Ok(())
            }

            pub(super) async fn set_dead_status(
                tx: &mut Tx<'_>,
                posting_id: i64,
                replay: bool,
                actor: &str,
                note: Option<&str>,
                now: i64,
            ) -> Result<Result<(), PostingActionRefusal>, sqlx::Error> {
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM outbox_postings WHERE posting_id = $1")
                        .bind(posting_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                match status {
                    None => return Ok(Err(PostingActionRefusal::NotFound)),
                    Some(status) if status != "dead" => {
                        return Ok(Err(PostingActionRefusal::NotDead(status)));
                    }
                    Some(_) => {}
                }
                let sql = if replay {
                    "UPDATE outbox_postings SET status = 'pending', attempts = 0, \
                     next_attempt_at = $1, resolved_by = $2, note = $3 WHERE posting_id = $4"
                } else {
                    "UPDATE outbox_postings SET status = 'discarded', posted_at = NULL, \
                     next_attempt_at = $1, resolved_by = $2, note = $3 WHERE posting_id = $4"
                };
                sqlx::query(sql)
                    .bind(now)
                    .bind(actor)
                    .bind(note)
                    .bind(posting_id)
                    .execute(&mut **tx)
                    .await?;
                Ok(Ok(()))
            }
        }
    };
}

postings_backend!(sqlite_postings, sqlx::Sqlite, "");
postings_backend!(
    postgres_postings,
    sqlx::Postgres,
    // One claimer at a time across replicas (released at commit).
    "SELECT pg_advisory_xact_lock(7301005)"
);

impl Store {
    /// Claims up to `limit` due postings for delivery (see the module
    /// documentation for the order rule), leased for `lease`.
    pub async fn claim_postings(
        &self,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<ClaimedPosting>, sqlx::Error> {
        let now = self.now();
        let lease_until =
            now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2));
        crate::transact!(self, sqlite_postings, postgres_postings, |tx, backend| {
            let claimed = backend::claim(&mut tx, now, lease_until, i64::from(limit)).await?;
            let commit = !claimed.is_empty();
            (claimed, commit)
        })
    }

    /// Records the outcome of delivery attempts.
    pub async fn settle_postings(
        &self,
        settlements: &[Settlement],
        policy: RetryPolicy,
    ) -> Result<(), sqlx::Error> {
        if settlements.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let settled = crate::transact!(self, sqlite_postings, postgres_postings, |tx, backend| {
            backend::settle(&mut tx, settlements, policy, now).await?;
            ((), true)
        });
        self.forget_closed_counts();
        settled
    }

    /// Puts a dead posting back in the queue (attempts reset); it goes out
    /// before the postings of its key that waited behind it.
    pub async fn replay_posting(
        &self,
        posting_id: i64,
        actor: &str,
        note: Option<&str>,
    ) -> Result<PostingActionOutcome, sqlx::Error> {
        self.resolve_dead(posting_id, true, actor, note, None)
            .await?
            .unkeyed()
    }

    /// Gives up on a dead posting for good: the ERP never gets it (the
    /// next reconciliation shows the difference) and its key moves on.
    pub async fn discard_posting(
        &self,
        posting_id: i64,
        actor: &str,
        note: Option<&str>,
    ) -> Result<PostingActionOutcome, sqlx::Error> {
        self.resolve_dead(posting_id, false, actor, note, None)
            .await?
            .unkeyed()
    }

    /// Replays (`replay`) or discards a dead posting, with its
    /// `Idempotency-Key` claimed and answered in the same transaction; the
    /// answer is the posting as it stands after.
    pub async fn resolve_dead(
        &self,
        posting_id: i64,
        replay: bool,
        actor: &str,
        note: Option<&str>,
        keyed: Option<&KeyedWrite<'_, PostingActionOutcome>>,
    ) -> Result<Keyed<PostingActionOutcome>, sqlx::Error> {
        let now = self.now();
        let select = format!("{} WHERE p.posting_id = $1", view_select());
        let resolved = crate::keyed_transact!(
            self,
            keyed,
            sqlite_postings,
            postgres_postings,
            |tx, backend| {
                match backend::set_dead_status(&mut tx, posting_id, replay, actor, note, now)
                    .await?
                {
                    Err(refusal) => (Err(refusal), false),
                    Ok(()) => {
                        let row = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                            .bind(posting_id)
                            .fetch_one(&mut *tx)
                            .await?;
                        (Ok(posting_view_from_row(&row)?), true)
                    }
                }
            }
        );
        self.forget_closed_counts();
        resolved
    }

    /// Drops the reused count of delivered and discarded postings, so what
    /// this replica just closed shows in the next [`Store::posting_counts`].
    pub(crate) fn forget_closed_counts(&self) {
        *self
            .closed_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Outbox counts by status and the oldest undelivered posting's age.
    ///
    /// The outbox keeps every posting, so its delivered rows grow without
    /// end; this is asked every few seconds (gauges, sync-health). Open
    /// rows (pending, in flight, dead) are counted through the status
    /// index, at a cost that follows the backlog, not the table. Delivered
    /// and discarded rows are counted afresh when that is cheap (under
    /// 50 ms); otherwise the last count is reused for 200 times as long as
    /// it took (a one-second count is redone every 200 s at most), until
    /// this replica itself settles or resolves a posting.
    pub async fn posting_counts(&self) -> Result<PostingCounts, sqlx::Error> {
        let now = self.now();
        let mut counts = on_reader!(self.db(), |pool| {
            let rows = sqlx::query(
                "SELECT status, COUNT(*), MIN(posting_id) FROM outbox_postings \
                 WHERE status IN ('pending', 'in_flight', 'dead') GROUP BY status",
            )
            .fetch_all(pool)
            .await?;
            let mut counts = PostingCounts::default();
            let mut first_open: Vec<i64> = Vec::new();
            for row in rows {
                let status: String = row.try_get(0)?;
                let count: i64 = row.try_get(1)?;
                let first: Option<i64> = row.try_get(2)?;
                match status.as_str() {
                    "pending" => counts.pending = count,
                    "in_flight" => counts.in_flight = count,
                    _ => counts.dead = count,
                }
                if status != "dead" {
                    first_open.extend(first);
                }
            }
            // Postings are created in posting_id order: the oldest open one
            // is the first pending or the first in flight.
            let oldest: Option<i64> = if first_open.is_empty() {
                None
            } else {
                sqlx::query_scalar(
                    "SELECT MIN(created_at) FROM outbox_postings \
                     WHERE posting_id IN ($1, $2)",
                )
                .bind(first_open[0])
                .bind(first_open.last().copied().unwrap_or(first_open[0]))
                .fetch_one(pool)
                .await?
            };
            if counts.dead > 0 {
                counts.blocked_by_dead = sqlx::query_scalar(
                    "WITH dead AS (SELECT location_id, sku, MIN(posting_id) AS first_dead \
                         FROM outbox_postings WHERE status = 'dead' GROUP BY location_id, sku) \
                     SELECT COUNT(*) FROM outbox_postings p JOIN dead d \
                         ON d.location_id = p.location_id AND d.sku = p.sku \
                     WHERE p.status = 'pending' AND p.posting_id > d.first_dead",
                )
                .fetch_one(pool)
                .await?;
            }
            #[expect(clippy::cast_precision_loss, reason = "an age in seconds")]
            {
                counts.oldest_pending_age_seconds =
                    oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e6);
            }
            Ok::<_, sqlx::Error>(counts)
        })?;
        let (posted, discarded) = self.closed_posting_counts().await?;
        counts.posted = posted;
        counts.discarded = discarded;
        Ok(counts)
    }

    /// Delivered and discarded postings (see [`Store::posting_counts`]).
    async fn closed_posting_counts(&self) -> Result<(i64, i64), sqlx::Error> {
        const CHEAP: Duration = Duration::from_millis(50);
        if let Some(last) = *self
            .closed_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            && last.took >= CHEAP
            && last.at.elapsed() < last.took * 200
        {
            return Ok((last.posted, last.discarded));
        }
        let started = Instant::now();
        let rows: Vec<(String, i64)> = on_reader!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT status, COUNT(*) FROM outbox_postings \
                 WHERE status IN ('posted', 'discarded') GROUP BY status",
            )
            .fetch_all(pool)
            .await
        })?;
        let count = |wanted: &str| {
            rows.iter()
                .find(|(status, _)| status == wanted)
                .map_or(0, |(_, n)| *n)
        };
        let counted = ClosedCounts {
            at: started,
            took: started.elapsed(),
            posted: count("posted"),
            discarded: count("discarded"),
        };
        *self
            .closed_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(counted);
        Ok((counted.posted, counted.discarded))
    }

    /// Outbox rows for operators, in posting order.
    pub async fn list_postings(
        &self,
        filter: &PostingFilter,
    ) -> Result<Vec<PostingView>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let mut sql = format!("{} WHERE p.posting_id > $1", view_select());
            let mut next = 2;
            for (column, value) in [
                ("p.status", &filter.status),
                ("p.location_id", &filter.location_id),
                ("p.sku", &filter.sku),
            ] {
                if value.is_some() {
                    sql.push_str(&format!(" AND {column} = ${next}"));
                    next += 1;
                }
            }
            let bound = filter.locations.as_deref();
            if let Some(locations) = bound {
                sql.push_str(&in_list("p.location_id", locations.len(), &mut next));
            }
            sql.push_str(&format!(" ORDER BY p.posting_id LIMIT ${next}"));
            // Only fixed column names and placeholders are spliced in.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(filter.after);
            for value in [&filter.status, &filter.location_id, &filter.sku]
                .into_iter()
                .flatten()
                .chain(bound.into_iter().flatten())
            {
                query = query.bind(value.as_str());
            }
            let rows = query.bind(filter.limit).fetch_all(pool).await?;
            rows.iter().map(posting_view_from_row).collect()
        })
    }

    /// The newest event time per location (from its positions).
    pub async fn last_event_per_location(
        &self,
    ) -> Result<std::collections::HashMap<String, Option<i64>>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let rows = sqlx::query(
                "SELECT location_id, MAX(last_event_at) FROM positions GROUP BY location_id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        })
    }

    /// Where undelivered postings (pending, in flight, dead) sit: distinct
    /// locations and skus, and the five locations with the most.
    pub async fn open_posting_spread(&self) -> Result<Spread, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            spread(
                pool,
                "FROM outbox_postings WHERE status IN ('pending', 'in_flight', 'dead')",
            )
            .await
        })
    }

    /// Where parked events sit (see [`Store::open_posting_spread`]).
    pub async fn parked_spread(&self) -> Result<Spread, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            spread(pool, "FROM parked_events WHERE dead = 0").await
        })
    }

    /// Undelivered postings per sku at one location, and the skus posted
    /// to at or after `posted_since` (reconciliation leaves those alone:
    /// the ERP figure it read may or may not include them).
    pub async fn open_postings_at(
        &self,
        location_id: &str,
        posted_since: i64,
    ) -> Result<
        (
            std::collections::HashMap<String, OpenPostings>,
            std::collections::HashSet<String>,
        ),
        sqlx::Error,
    > {
        on_reader!(self.db(), |pool| {
            let rows = sqlx::query(
                "SELECT p.sku, SUM(j.on_hand_change), \
                 SUM(CASE WHEN p.status = 'in_flight' THEN 1 ELSE 0 END) \
                 FROM outbox_postings p JOIN journal j ON j.event_id = p.event_id \
                 WHERE p.location_id = $1 AND p.status IN ('pending', 'in_flight', 'dead') \
                 GROUP BY p.sku",
            )
            .bind(location_id)
            .fetch_all(pool)
            .await?;
            let mut open = std::collections::HashMap::new();
            for row in rows {
                let sku: String = row.try_get(0)?;
                let quantity: i64 = row.try_get::<Option<i64>, _>(1)?.unwrap_or(0);
                let in_flight: i64 = row.try_get::<Option<i64>, _>(2)?.unwrap_or(0);
                open.insert(
                    sku,
                    OpenPostings {
                        quantity,
                        in_flight: in_flight > 0,
                    },
                );
            }
            let recent: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT sku FROM outbox_postings \
                 WHERE posted_at >= $1 AND location_id = $2",
            )
            .bind(posted_since)
            .bind(location_id)
            .fetch_all(pool)
            .await?;
            Ok((open, recent.into_iter().collect()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_never_drops_below_half() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_micros: 1_000,
            max_micros: 10_000,
        };
        assert_eq!(policy.delay_micros(1, 0.0), 500);
        assert_eq!(policy.delay_micros(1, 1.0), 1_000);
        assert_eq!(policy.delay_micros(2, 0.0), 1_000);
        assert_eq!(policy.delay_micros(3, 1.0), 4_000);
        assert_eq!(policy.delay_micros(9, 1.0), 10_000);
        assert_eq!(policy.delay_micros(60, 0.5), 7_500);
    }
}

/// How widely a set of rows (postings, parked events) is spread.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    /// Distinct locations.
    pub locations: i64,
    /// Distinct skus.
    pub skus: i64,
    /// The locations with the most rows, most first.
    pub top_locations: Vec<(String, i64)>,
}

async fn spread<'e, E>(executor: E, from: &'static str) -> Result<Spread, sqlx::Error>
where
    E: sqlx::Executor<'e> + Copy,
    for<'r> (i64, i64): sqlx::FromRow<'r, <E::Database as sqlx::Database>::Row>,
    for<'r> (String, i64): sqlx::FromRow<'r, <E::Database as sqlx::Database>::Row>,
    for<'q> <E::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<E::Database>,
{
    let (locations, skus): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(DISTINCT location_id), COUNT(DISTINCT sku) {from}"
    )))
    .fetch_one(executor)
    .await?;
    let top_locations = if locations == 0 {
        Vec::new()
    } else {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT location_id, COUNT(*) {from} GROUP BY location_id \
             ORDER BY COUNT(*) DESC, location_id LIMIT 5"
        )))
        .fetch_all(executor)
        .await?
    };
    Ok(Spread {
        locations,
        skus,
        top_locations,
    })
}
