//! Reconciliation runs and their exceptions.
//!
//! A mismatch between the ERP and the platform for one (location, sku) is
//! an exception valued at cost. Correcting it (automatically when small,
//! on approval otherwise) journals an `adjustment` that brings the
//! platform to the ERP's figure; that entry's posting is marked delivered
//! in the same transaction, because the ERP already holds the quantity.
//! Decision: the ERP is the book of record for quantities it disagrees on;
//! an operator who believes the platform instead rejects the exception and
//! fixes the ERP (the next run then finds nothing).

use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::idempotency::{Keyed, KeyedWrite};
use super::ledger::{EventStatus, IngestContext, postgres_ledger, sqlite_ledger};
use super::{Store, in_list, micros_to_rfc3339};
use crate::inventory::event::EventInput;
use crate::on_reader;

/// One run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReconciliationRun {
    /// Id.
    pub run_id: i64,
    /// `schedule` or `on_demand`.
    pub trigger: String,
    /// Who started it.
    pub actor: String,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// Started (RFC 3339).
    pub started_at: String,
    /// Finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// (location, sku) pairs compared.
    pub compared: i64,
    /// Pairs left for the next run (postings in flight or just delivered).
    pub skipped: i64,
    /// Pairs that differed.
    pub mismatches: i64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A difference found by reconciliation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReconciliationException {
    /// Id.
    pub exception_id: i64,
    /// The run that found it.
    pub run_id: i64,
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Platform on_hand less the postings not yet in the ERP.
    pub platform_on_hand: i64,
    /// The ERP's quantity.
    pub erp_quantity: i64,
    /// erp_quantity − platform_on_hand.
    pub difference: i64,
    /// Unit cost used for the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_cost: Option<String>,
    /// |difference| × unit cost.
    pub value_at_cost: String,
    /// Currency of the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// `open` (waiting for review), `corrected` or `rejected`.
    pub status: String,
    /// Found at.
    pub created_at: String,
    /// Settled at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// Who settled it (`reconciliation` when corrected automatically).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// Note given when settling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The correcting journal entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment_event_id: Option<String>,
}

/// A mismatch to record.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Platform figure comparable with the ERP's.
    pub platform_on_hand: i64,
    /// ERP figure.
    pub erp_quantity: i64,
    /// Unit cost.
    pub unit_cost: Option<Decimal>,
    /// Currency.
    pub currency: Option<String>,
}

/// What settling an exception comes to.
pub type ExceptionOutcome = Result<ReconciliationException, ExceptionRefusal>;

/// Why settling an exception was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExceptionRefusal {
    /// No such exception.
    NotFound,
    /// Already settled (its status is given).
    NotOpen(String),
    /// The correcting adjustment was not applied (its reason is given).
    NotApplied(String),
}

const EXCEPTION_COLUMNS: &str = "exception_id, run_id, location_id, sku, platform_on_hand, \
     erp_quantity, difference, unit_cost, value_at_cost, currency, status, created_at, \
     resolved_at, resolved_by, note, adjustment_event_id";

const RUN_COLUMNS: &str = "run_id, trigger, actor, status, started_at, finished_at, compared, \
     skipped, mismatches, error";

fn exception_from_row<R: sqlx::Row>(row: &R) -> Result<ReconciliationException, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ReconciliationException {
        exception_id: row.try_get(0)?,
        run_id: row.try_get(1)?,
        location_id: row.try_get(2)?,
        sku: row.try_get(3)?,
        platform_on_hand: row.try_get(4)?,
        erp_quantity: row.try_get(5)?,
        difference: row.try_get(6)?,
        unit_cost: row.try_get(7)?,
        value_at_cost: row.try_get(8)?,
        currency: row.try_get(9)?,
        status: row.try_get(10)?,
        created_at: micros_to_rfc3339(row.try_get(11)?),
        resolved_at: row.try_get::<Option<i64>, _>(12)?.map(micros_to_rfc3339),
        resolved_by: row.try_get(13)?,
        note: row.try_get(14)?,
        adjustment_event_id: row.try_get(15)?,
    })
}

fn run_from_row<R: sqlx::Row>(row: &R) -> Result<ReconciliationRun, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ReconciliationRun {
        run_id: row.try_get(0)?,
        trigger: row.try_get(1)?,
        actor: row.try_get(2)?,
        status: row.try_get(3)?,
        started_at: micros_to_rfc3339(row.try_get(4)?),
        finished_at: row.try_get::<Option<i64>, _>(5)?.map(micros_to_rfc3339),
        compared: row.try_get(6)?,
        skipped: row.try_get(7)?,
        mismatches: row.try_get(8)?,
        error: row.try_get(9)?,
    })
}

impl Store {
    /// Opens a run record.
    pub async fn start_reconciliation(
        &self,
        trigger: &str,
        actor: &str,
    ) -> Result<i64, sqlx::Error> {
        let now = self.now();
        crate::on_writer!(self.db(), |pool| {
            sqlx::query_scalar(
                "INSERT INTO reconciliation_runs (trigger, actor, started_at, status) \
                 VALUES ($1, $2, $3, 'running') RETURNING run_id",
            )
            .bind(trigger)
            .bind(actor)
            .bind(now)
            .fetch_one(pool)
            .await
        })
    }

    /// Closes a run record.
    pub async fn finish_reconciliation(
        &self,
        run_id: i64,
        compared: i64,
        skipped: i64,
        mismatches: i64,
        error: Option<&str>,
    ) -> Result<ReconciliationRun, sqlx::Error> {
        let now = self.now();
        crate::on_writer!(self.db(), |pool| {
            let sql = format!(
                "UPDATE reconciliation_runs SET finished_at = $1, compared = $2, skipped = $3, \
                 mismatches = $4, error = $5, status = $6 WHERE run_id = $7 \
                 RETURNING {RUN_COLUMNS}"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(compared)
                .bind(skipped)
                .bind(mismatches)
                .bind(error)
                .bind(if error.is_some() {
                    "failed"
                } else {
                    "completed"
                })
                .bind(run_id)
                .fetch_one(pool)
                .await?;
            run_from_row(&row)
        })
    }

    /// Recent runs, newest first.
    pub async fn reconciliation_runs(
        &self,
        limit: i64,
    ) -> Result<Vec<ReconciliationRun>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM reconciliation_runs ORDER BY run_id DESC LIMIT $1"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(run_from_row).collect()
        })
    }

    /// Records a mismatch as an open exception (or refreshes the figures
    /// of the key's exception that is still open). Returns the exception.
    pub async fn record_mismatch(
        &self,
        run_id: i64,
        mismatch: &Mismatch,
    ) -> Result<ReconciliationException, sqlx::Error> {
        let now = self.now();
        let difference = mismatch.erp_quantity - mismatch.platform_on_hand;
        let mut value = mismatch
            .unit_cost
            .map_or(Decimal::ZERO, |cost| cost * Decimal::from(difference.abs()))
            .round_dp(4);
        // Money reads with at least two decimals ("250.00").
        if value.scale() < 2 {
            value.rescale(2);
        }
        crate::on_writer!(self.db(), |pool| {
            let mut tx = pool.begin().await?;
            let open: Option<i64> = sqlx::query_scalar(
                "SELECT exception_id FROM reconciliation_exceptions \
                 WHERE location_id = $1 AND sku = $2 AND status = 'open'",
            )
            .bind(&mismatch.location_id)
            .bind(&mismatch.sku)
            .fetch_optional(&mut *tx)
            .await?;
            let id: i64 = match open {
                Some(id) => {
                    sqlx::query(
                        "UPDATE reconciliation_exceptions SET run_id = $1, platform_on_hand = $2, \
                         erp_quantity = $3, difference = $4, unit_cost = $5, value_at_cost = $6, \
                         currency = $7 WHERE exception_id = $8",
                    )
                    .bind(run_id)
                    .bind(mismatch.platform_on_hand)
                    .bind(mismatch.erp_quantity)
                    .bind(difference)
                    .bind(mismatch.unit_cost.map(|c| c.to_string()))
                    .bind(value.to_string())
                    .bind(mismatch.currency.as_deref())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    id
                }
                None => {
                    sqlx::query_scalar(
                        "INSERT INTO reconciliation_exceptions (run_id, location_id, sku, \
                         platform_on_hand, erp_quantity, difference, unit_cost, value_at_cost, \
                         currency, status, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10) \
                         RETURNING exception_id",
                    )
                    .bind(run_id)
                    .bind(&mismatch.location_id)
                    .bind(&mismatch.sku)
                    .bind(mismatch.platform_on_hand)
                    .bind(mismatch.erp_quantity)
                    .bind(difference)
                    .bind(mismatch.unit_cost.map(|c| c.to_string()))
                    .bind(value.to_string())
                    .bind(mismatch.currency.as_deref())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            let sql = format!(
                "SELECT {EXCEPTION_COLUMNS} FROM reconciliation_exceptions WHERE exception_id = $1"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            exception_from_row(&row)
        })
    }

    /// Exceptions, newest first, optionally of one status and only at
    /// `locations` (a token's binding; `None`: every location).
    pub async fn reconciliation_exceptions(
        &self,
        status: Option<&str>,
        locations: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<ReconciliationException>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let mut next = 3;
            let only_at =
                locations.map_or_else(String::new, |l| in_list("location_id", l.len(), &mut next));
            // Only fixed column names and placeholders are spliced in.
            let sql = format!(
                "SELECT {EXCEPTION_COLUMNS} FROM reconciliation_exceptions \
                 WHERE ($1 IS NULL OR status = $1){only_at} ORDER BY exception_id DESC LIMIT $2"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(status)
                .bind(limit);
            for location in locations.into_iter().flatten() {
                query = query.bind(location.as_str());
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(exception_from_row).collect()
        })
    }

    /// One exception.
    pub async fn reconciliation_exception(
        &self,
        exception_id: i64,
    ) -> Result<Option<ReconciliationException>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let sql = format!(
                "SELECT {EXCEPTION_COLUMNS} FROM reconciliation_exceptions WHERE exception_id = $1"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(exception_id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(exception_from_row).transpose()
        })
    }

    /// Settles an open exception: `approve` journals the correcting
    /// adjustment (see the module documentation), otherwise it is closed
    /// as rejected. `note` is kept either way.
    pub async fn settle_exception(
        &self,
        exception_id: i64,
        approve: bool,
        ctx: &IngestContext,
        note: Option<&str>,
    ) -> Result<ExceptionOutcome, sqlx::Error> {
        self.settle_exception_keyed(exception_id, approve, ctx, note, None)
            .await?
            .unkeyed()
    }

    /// [`Store::settle_exception`] with its `Idempotency-Key` claimed and
    /// answered in the settlement's own transaction.
    pub async fn settle_exception_keyed(
        &self,
        exception_id: i64,
        approve: bool,
        ctx: &IngestContext,
        note: Option<&str>,
        keyed: Option<&KeyedWrite<'_, ExceptionOutcome>>,
    ) -> Result<Keyed<ExceptionOutcome>, sqlx::Error> {
        let now = self.now();
        let select = format!(
            "SELECT {EXCEPTION_COLUMNS} FROM reconciliation_exceptions WHERE exception_id = $1"
        );
        let settled = crate::keyed_transact!(
            self,
            keyed,
            sqlite_ledger,
            postgres_ledger,
            |tx, backend| {
                let row = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                    .bind(exception_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                match row.as_ref().map(exception_from_row).transpose()? {
                    None => (Err(ExceptionRefusal::NotFound), false),
                    Some(found) if found.status != "open" => {
                        (Err(ExceptionRefusal::NotOpen(found.status)), false)
                    }
                    Some(found) => {
                        let mut refused = None;
                        let mut event_id = None;
                        if approve && found.difference != 0 {
                            let id = format!("reconciliation:{exception_id}");
                            let input = EventInput {
                                event_id: id.clone(),
                                r#type: "adjustment".into(),
                                location_id: found.location_id.clone(),
                                sku: found.sku.clone(),
                                quantity: found.difference,
                                occurred_at: micros_to_rfc3339(now),
                                source: "reconciliation".into(),
                                reference: Some(format!("reconciliation exception {exception_id}")),
                                reason: Some("ERP reconciliation".into()),
                                counterparty_location_id: None,
                                disposition: None,
                            };
                            let results = backend::apply_inputs(
                                &mut tx,
                                self.master_cache(),
                                std::slice::from_ref(&input),
                                ctx,
                                now,
                            )
                            .await?;
                            match results.first() {
                                Some(r)
                                    if matches!(
                                        r.status,
                                        EventStatus::Applied | EventStatus::Duplicate
                                    ) =>
                                {
                                    // The ERP already holds this quantity.
                                    sqlx::query(
                                        "UPDATE outbox_postings SET status = 'posted', \
                                     posted_at = $1, erp_ref = 'reconciliation' \
                                     WHERE event_id = $2",
                                    )
                                    .bind(now)
                                    .bind(&id)
                                    .execute(&mut *tx)
                                    .await?;
                                    event_id = Some(id);
                                }
                                other => {
                                    refused = Some(
                                        other
                                            .and_then(|r| r.reason.clone())
                                            .unwrap_or_else(|| "not applied".into()),
                                    );
                                }
                            }
                        }
                        if let Some(reason) = refused {
                            (Err(ExceptionRefusal::NotApplied(reason)), false)
                        } else {
                            sqlx::query(
                            "UPDATE reconciliation_exceptions SET status = $1, resolved_at = $2, \
                             resolved_by = $3, note = $4, adjustment_event_id = $5 \
                             WHERE exception_id = $6",
                        )
                        .bind(if approve { "corrected" } else { "rejected" })
                        .bind(now)
                        .bind(&ctx.actor)
                        .bind(note)
                        .bind(event_id.as_deref())
                        .bind(exception_id)
                        .execute(&mut *tx)
                        .await?;
                            let row = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                                .bind(exception_id)
                                .fetch_one(&mut *tx)
                                .await?;
                            (Ok(exception_from_row(&row)?), true)
                        }
                    }
                }
            }
        );
        // An approval may have marked a posting delivered.
        self.forget_closed_counts();
        settled
    }

    /// Open exceptions (ops summary).
    pub async fn open_exception_count(&self) -> Result<i64, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM reconciliation_exceptions WHERE status = 'open'",
            )
            .fetch_one(pool)
            .await
        })
    }
}
