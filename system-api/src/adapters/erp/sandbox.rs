//! The sandbox ERP built into system-api (the embedded default). It keeps
//! its records, stock and master data in system-api's own SQLite database,
//! and has operator controls for fault injection so the posting pipeline
//! can be exercised: down, slow, a share of postings failing transiently,
//! and products whose postings it refuses.
//!
//! Master data: postings for warehouses or products the sandbox has never
//! heard of are accepted (the sandbox learns them), so the embedded demo
//! works without loading ERP master data first. `PUT
//! /v1/erp/sandbox/master` gives it names and costs to hand out.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng as _;
use retail_shared::erp::{
    ErpBalance, ErpLocation, ErpMaster, ErpProduct, Posting, PostingResult, PostingStatus,
};
use serde::{Deserialize, Serialize};
use sqlx::{Row as _, SqlitePool};
use utoipa::ToSchema;

use super::{Erp, ErpError, KeyGate};

/// Injected faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Answer nothing (every call fails as unavailable).
    #[serde(default)]
    pub down: bool,
    /// Added to every call, in milliseconds (0 to 60,000).
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of postings that fail transiently, 0 to 100.
    #[serde(default)]
    pub fail_percent: u8,
    /// Products whose postings are refused permanently.
    #[serde(default)]
    pub reject_skus: BTreeSet<String>,
}

/// A record the sandbox holds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxRecord {
    /// Order of arrival in the sandbox.
    pub seq: i64,
    /// The posting's event id.
    pub event_id: String,
    /// process-api's posting id.
    pub posting_id: i64,
    /// Journal event type.
    pub kind: String,
    /// Warehouse.
    pub location_id: String,
    /// Product.
    pub sku: String,
    /// Signed on_hand change.
    pub quantity: i64,
    /// When recorded (RFC 3339).
    pub recorded_at: String,
}

/// The sandbox backend.
#[derive(Debug, Clone)]
pub struct SandboxErp {
    pool: SqlitePool,
    faults: Arc<Mutex<Faults>>,
}

impl SandboxErp {
    /// A sandbox on system-api's database.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            faults: Arc::default(),
        }
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        *self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
    }

    /// Sleeps the injected latency; fails when down.
    async fn gate(&self) -> Result<Faults, ErpError> {
        let faults = self.faults();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.down {
            return Err(ErpError::Unavailable(
                "the sandbox ERP is down (fault injected)".into(),
            ));
        }
        Ok(faults)
    }

    /// An ERP-side change of stock that the platform did not send (a
    /// manual correction in the ERP): what reconciliation must find.
    pub async fn correct_stock(
        &self,
        location_id: &str,
        sku: &str,
        delta: i64,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO erp_stock (location_id, sku, quantity) VALUES ($1, $2, $3) \
             ON CONFLICT (location_id, sku) DO UPDATE SET quantity = quantity + excluded.quantity \
             RETURNING quantity",
        )
        .bind(location_id)
        .bind(sku)
        .bind(delta)
        .fetch_one(&self.pool)
        .await
    }

    /// Replaces the sandbox's master data.
    pub async fn set_master(&self, master: &ErpMaster) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM erp_warehouses")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM erp_products")
            .execute(&mut *tx)
            .await?;
        for location in &master.locations {
            sqlx::query("INSERT INTO erp_warehouses (location_id, name) VALUES ($1, $2)")
                .bind(&location.location_id)
                .bind(&location.name)
                .execute(&mut *tx)
                .await?;
        }
        for product in &master.products {
            sqlx::query(
                "INSERT INTO erp_products (sku, name, unit_cost, currency) VALUES ($1, $2, $3, $4)",
            )
            .bind(&product.sku)
            .bind(&product.name)
            .bind(product.unit_cost.as_deref())
            .bind(product.currency.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Records in arrival order, optionally of one key.
    pub async fn records(
        &self,
        location_id: Option<&str>,
        sku: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SandboxRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT seq, event_id, posting_id, kind, location_id, sku, quantity, recorded_at \
             FROM erp_records WHERE seq > $1 AND ($2 IS NULL OR location_id = $2) \
             AND ($3 IS NULL OR sku = $3) ORDER BY seq LIMIT $4",
        )
        .bind(after)
        .bind(location_id)
        .bind(sku)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SandboxRecord {
                    seq: row.try_get(0)?,
                    event_id: row.try_get(1)?,
                    posting_id: row.try_get(2)?,
                    kind: row.try_get(3)?,
                    location_id: row.try_get(4)?,
                    sku: row.try_get(5)?,
                    quantity: row.try_get(6)?,
                    recorded_at: row.try_get(7)?,
                })
            })
            .collect()
    }
}

fn storage(error: sqlx::Error) -> ErpError {
    ErpError::Unavailable(format!("sandbox ERP storage: {error}"))
}

#[async_trait]
impl Erp for SandboxErp {
    fn backend(&self) -> &'static str {
        "sandbox"
    }

    async fn health(&self) -> Result<(), String> {
        if self.faults().down {
            return Err("the sandbox ERP is down (fault injected)".into());
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| format!("sandbox ERP storage: {e}"))
    }

    async fn post(&self, postings: &[Posting]) -> Result<Vec<PostingResult>, ErpError> {
        let faults = self.gate().await?;
        let recorded_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut gate = KeyGate::default();
        let mut results = Vec::with_capacity(postings.len());
        let mut tx = self.pool.begin().await.map_err(storage)?;
        for posting in postings {
            if let Some(skipped) = gate.check(posting) {
                results.push(skipped);
                continue;
            }
            let result = if faults.reject_skus.contains(&posting.sku) {
                PostingResult::failed(
                    posting.posting_id,
                    false,
                    format!("product {} is blocked in the ERP", posting.sku),
                )
            } else if faults.fail_percent > 0
                && rand::rng().random_range(0..100_u8) < faults.fail_percent
            {
                PostingResult::failed(
                    posting.posting_id,
                    true,
                    "transient ERP failure (fault injected)",
                )
            } else {
                let seq: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO erp_records (event_id, posting_id, kind, location_id, sku, \
                     quantity, unit_cost, currency, occurred_at, reason, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (event_id) DO NOTHING RETURNING seq",
                )
                .bind(&posting.event_id)
                .bind(posting.posting_id)
                .bind(&posting.kind)
                .bind(&posting.location_id)
                .bind(&posting.sku)
                .bind(posting.quantity)
                .bind(posting.unit_cost.as_deref())
                .bind(posting.currency.as_deref())
                .bind(&posting.occurred_at)
                .bind(posting.reason.as_deref())
                .bind(&recorded_at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(storage)?;
                match seq {
                    Some(seq) => {
                        sqlx::query(
                            "INSERT INTO erp_stock (location_id, sku, quantity) VALUES ($1, $2, $3) \
                             ON CONFLICT (location_id, sku) \
                             DO UPDATE SET quantity = quantity + excluded.quantity",
                        )
                        .bind(&posting.location_id)
                        .bind(&posting.sku)
                        .bind(posting.quantity)
                        .execute(&mut *tx)
                        .await
                        .map_err(storage)?;
                        PostingResult {
                            erp_ref: Some(format!("sandbox:{seq}")),
                            ..PostingResult::new(posting.posting_id, PostingStatus::Posted)
                        }
                    }
                    None => PostingResult::new(posting.posting_id, PostingStatus::Duplicate),
                }
            };
            gate.note(posting, &result);
            results.push(result);
        }
        tx.commit().await.map_err(storage)?;
        Ok(results)
    }

    async fn balances(&self, location_id: &str) -> Result<Option<Vec<ErpBalance>>, ErpError> {
        self.gate().await?;
        let known: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM erp_warehouses WHERE location_id = $1 \
             UNION SELECT 1 FROM erp_stock WHERE location_id = $1 LIMIT 1",
        )
        .bind(location_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)?;
        if known.is_none() {
            return Ok(None);
        }
        let rows =
            sqlx::query("SELECT sku, quantity FROM erp_stock WHERE location_id = $1 ORDER BY sku")
                .bind(location_id)
                .fetch_all(&self.pool)
                .await
                .map_err(storage)?;
        rows.iter()
            .map(|row| {
                Ok(ErpBalance {
                    location_id: location_id.to_owned(),
                    sku: row.try_get(0)?,
                    quantity: row.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map(Some)
            .map_err(storage)
    }

    async fn master(&self) -> Result<ErpMaster, ErpError> {
        self.gate().await?;
        let locations = sqlx::query("SELECT location_id, name FROM erp_warehouses ORDER BY 1")
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?
            .iter()
            .map(|row| {
                Ok(ErpLocation {
                    location_id: row.try_get(0)?,
                    name: row.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(storage)?;
        let products =
            sqlx::query("SELECT sku, name, unit_cost, currency FROM erp_products ORDER BY 1")
                .fetch_all(&self.pool)
                .await
                .map_err(storage)?
                .iter()
                .map(|row| {
                    Ok(ErpProduct {
                        sku: row.try_get(0)?,
                        name: row.try_get(1)?,
                        unit_cost: row.try_get(2)?,
                        currency: row.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(storage)?;
        Ok(ErpMaster {
            locations,
            products,
        })
    }
}
