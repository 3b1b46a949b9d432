//! Transfers: requested → approved (automatically below a value at cost,
//! else by a `transfers:approve` principal other than the requester) →
//! shipped (one `transfer_out` per line: source on_hand down, destination
//! in_transit up) → received (one `transfer_in` per line with the counted
//! quantity: in_transit down, on_hand up; a short or over receipt opens an
//! exception) — or cancelled before shipping.
//!
//! Each step is one transaction that locks the transfer row, journals its
//! events through the ledger's apply path (so they reach positions, the
//! ERP outbox and the change feed like any event) and records the step
//! with its actor. Event ids are derived from the transfer
//! (`transfer:{id}:out:{line}`, `transfer:{id}:in:{line}`), so a retried
//! step never moves stock twice.

use std::collections::BTreeSet;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::idempotency::{Keyed, KeyedWrite};
use super::ledger::{EventResult, EventStatus, IngestContext};
use super::{Store, micros_to_rfc3339};
use crate::inventory::event::EventInput;

/// Lifecycle of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Waiting for approval.
    Requested,
    /// May ship.
    Approved,
    /// Left the source; in transit.
    Shipped,
    /// Arrived and counted at the destination.
    Received,
    /// Withdrawn before shipping.
    Cancelled,
}

impl TransferStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Approved => "approved",
            Self::Shipped => "shipped",
            Self::Received => "received",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(value: &str) -> Self {
        match value {
            "approved" => Self::Approved,
            "shipped" => Self::Shipped,
            "received" => Self::Received,
            "cancelled" => Self::Cancelled,
            _ => Self::Requested,
        }
    }
}

/// A line of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferLine {
    /// SKU.
    pub sku: String,
    /// Units requested.
    pub quantity: i64,
    /// Units shipped (set when shipped).
    pub shipped: i64,
    /// Units counted at the destination (set when received).
    pub received: i64,
}

/// A step taken, with who took it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransferStep {
    /// `requested`, `approved`, `shipped`, `received` or `cancelled`.
    pub step: String,
    /// The principal (end user behind a service token).
    pub actor: String,
    /// When.
    pub at: String,
}

/// A line whose received quantity differs from the shipped one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransferException {
    /// SKU.
    pub sku: String,
    /// Units shipped.
    pub shipped: i64,
    /// Units received.
    pub received: i64,
    /// received − shipped (negative: short).
    pub difference: i64,
    /// `open` until settled.
    pub status: String,
}

/// A transfer as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Transfer {
    /// Id (UUID v7).
    pub transfer_id: String,
    /// Status.
    pub status: TransferStatus,
    /// Shipping location.
    pub source_location_id: String,
    /// Receiving location.
    pub destination_location_id: String,
    /// Lines.
    pub lines: Vec<TransferLine>,
    /// Requested units at the products' unit cost (decimal string).
    pub value_at_cost: String,
    /// Currency of the value (the products'; absent if they differ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// Who approved (`auto` below the threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Business reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// The steps taken so far, in order.
    pub steps: Vec<TransferStep>,
    /// Receipt differences.
    pub exceptions: Vec<TransferException>,
}

/// A validated transfer request.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    /// Source.
    pub source_location_id: String,
    /// Destination.
    pub destination_location_id: String,
    /// (sku, quantity), each sku once.
    pub lines: Vec<(String, i64)>,
    /// Business reference.
    pub reference: Option<String>,
    /// Auto-approval threshold (value at cost).
    pub auto_approve_below: Decimal,
}

/// Why a transfer step was refused.
#[derive(Debug, Clone)]
pub enum TransferRefusal {
    /// No such transfer.
    NotFound,
    /// Unknown sku or location: (field pointer, value).
    Unknown(Vec<(String, String)>),
    /// The step does not apply in this status.
    WrongStatus(TransferStatus),
    /// The requester may not approve its own transfer.
    SelfApproval,
    /// A received line names a sku not on the transfer.
    NotOnTransfer(String),
    /// A journalled event was not applied (master data vanished).
    EventNotApplied(String),
}

#[derive(Debug, Clone)]
struct Row {
    transfer_id: String,
    source: String,
    destination: String,
    status: TransferStatus,
    lines: Vec<TransferLine>,
    value_at_cost: String,
    currency: Option<String>,
    requested_by: String,
    approved_by: Option<String>,
    reference: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl Row {
    fn from_sql<R: sqlx::Row>(row: &R) -> Result<Self, sqlx::Error>
    where
        for<'r> &'r str: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let lines: String = row.try_get("lines")?;
        Ok(Self {
            transfer_id: row.try_get("transfer_id")?,
            source: row.try_get("source_location_id")?,
            destination: row.try_get("destination_location_id")?,
            status: TransferStatus::parse(&row.try_get::<String, _>("status")?),
            lines: serde_json::from_str(&lines).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            value_at_cost: row.try_get("value_at_cost")?,
            currency: row.try_get("currency")?,
            requested_by: row.try_get("requested_by")?,
            approved_by: row.try_get("approved_by")?,
            reference: row.try_get("reference")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    fn event(
        &self,
        kind: &str,
        index: usize,
        line: &TransferLine,
        quantity: i64,
        now: i64,
    ) -> EventInput {
        let (location, counterparty, tag) = if kind == "transfer_out" {
            (&self.source, &self.destination, "out")
        } else {
            (&self.destination, &self.source, "in")
        };
        EventInput {
            event_id: format!("transfer:{}:{tag}:{index}", self.transfer_id),
            r#type: kind.into(),
            location_id: location.clone(),
            sku: line.sku.clone(),
            quantity,
            occurred_at: micros_to_rfc3339(now),
            source: "transfers".into(),
            reference: Some(
                self.reference
                    .clone()
                    .unwrap_or_else(|| self.transfer_id.clone()),
            ),
            reason: Some(format!("transfer {}", self.transfer_id)),
            counterparty_location_id: Some(counterparty.clone()),
            disposition: None,
        }
    }
}

const COLUMNS: &str = "transfer_id, source_location_id, destination_location_id, status, lines, \
                       value_at_cost, currency, requested_by, approved_by, reference, created_at, \
                       updated_at";

macro_rules! transfer_backend {
    ($module:ident, $db:ty, $lock_row:literal, $ledger:ident) => {
        mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row as _, Transaction};

            type Tx<'c> = Transaction<'c, $db>;

            /// Unit cost and currency of each known sku.
            pub(super) async fn costs(
                tx: &mut Tx<'_>,
                skus: &BTreeSet<&str>,
            ) -> Result<Vec<(String, String, String)>, sqlx::Error> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT sku, unit_cost, currency FROM products WHERE sku IN (",
                );
                let mut list = qb.separated(", ");
                for sku in skus {
                    list.push_bind(*sku);
                }
                list.push_unseparated(")");
                let rows = qb.build().fetch_all(&mut **tx).await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect()
            }

            pub(super) async fn location_exists(
                tx: &mut Tx<'_>,
                location_id: &str,
            ) -> Result<bool, sqlx::Error> {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT CAST(1 AS BIGINT) FROM locations WHERE location_id = $1",
                )
                .bind(location_id)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(found.is_some())
            }

            pub(super) async fn insert(tx: &mut Tx<'_>, row: &Row) -> Result<(), sqlx::Error> {
                let lines = serde_json::to_string(&row.lines)
                    .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query(
                    "INSERT INTO transfers (transfer_id, source_location_id, \
                     destination_location_id, status, lines, value_at_cost, currency, \
                     requested_by, approved_by, reference, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&row.transfer_id)
                .bind(&row.source)
                .bind(&row.destination)
                .bind(row.status.as_str())
                .bind(lines)
                .bind(&row.value_at_cost)
                .bind(&row.currency)
                .bind(&row.requested_by)
                .bind(&row.approved_by)
                .bind(&row.reference)
                .bind(row.created_at)
                .bind(row.updated_at)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub(super) async fn save(tx: &mut Tx<'_>, row: &Row) -> Result<(), sqlx::Error> {
                let lines = serde_json::to_string(&row.lines)
                    .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query(
                    "UPDATE transfers SET status = $1, lines = $2, approved_by = $3, \
                     updated_at = $4 WHERE transfer_id = $5",
                )
                .bind(row.status.as_str())
                .bind(lines)
                .bind(&row.approved_by)
                .bind(row.updated_at)
                .bind(&row.transfer_id)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub(super) async fn step(
                tx: &mut Tx<'_>,
                transfer_id: &str,
                step: TransferStatus,
                actor: &str,
                request_id: &str,
                now: i64,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO transfer_steps (transfer_id, step, actor, request_id, at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(transfer_id)
                .bind(step.as_str())
                .bind(actor)
                .bind(request_id)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub(super) async fn exception(
                tx: &mut Tx<'_>,
                transfer_id: &str,
                line: &TransferLine,
                now: i64,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO transfer_exceptions (transfer_id, sku, shipped, received, \
                     created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(transfer_id)
                .bind(&line.sku)
                .bind(line.shipped)
                .bind(line.received)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub(super) async fn load(
                tx: &mut Tx<'_>,
                transfer_id: &str,
            ) -> Result<Option<Row>, sqlx::Error> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM transfers WHERE transfer_id = $1{}",
                    $lock_row
                )))
                .bind(transfer_id)
                .fetch_optional(&mut **tx)
                .await?;
                row.as_ref().map(Row::from_sql).transpose()
            }

            /// One transfer with its steps and exceptions (as
            /// [`Store::transfer`] reads it), inside a transaction.
            pub(super) async fn view(
                tx: &mut Tx<'_>,
                transfer_id: &str,
            ) -> Result<Option<Transfer>, sqlx::Error> {
                let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM transfers WHERE transfer_id = $1"
                )))
                .bind(transfer_id)
                .fetch_optional(&mut **tx)
                .await?
                else {
                    return Ok(None);
                };
                let row = Row::from_sql(&row)?;
                let steps = sqlx::query(
                    "SELECT step, actor, at FROM transfer_steps WHERE transfer_id = $1 ORDER BY at, \
                     CASE step WHEN 'requested' THEN 0 WHEN 'approved' THEN 1 WHEN 'shipped' THEN 2 \
                     ELSE 3 END",
                )
                .bind(transfer_id)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(TransferStep {
                        step: r.try_get(0)?,
                        actor: r.try_get(1)?,
                        at: micros_to_rfc3339(r.try_get(2)?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let exceptions = sqlx::query(
                    "SELECT sku, shipped, received, status FROM transfer_exceptions \
                     WHERE transfer_id = $1 ORDER BY sku",
                )
                .bind(transfer_id)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|r| {
                    let shipped: i64 = r.try_get(1)?;
                    let received: i64 = r.try_get(2)?;
                    Ok(TransferException {
                        sku: r.try_get(0)?,
                        shipped,
                        received,
                        difference: received - shipped,
                        status: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
                Ok(Some(Transfer {
                    transfer_id: row.transfer_id,
                    status: row.status,
                    source_location_id: row.source,
                    destination_location_id: row.destination,
                    lines: row.lines,
                    value_at_cost: row.value_at_cost,
                    currency: row.currency,
                    requested_by: row.requested_by,
                    approved_by: row.approved_by,
                    reference: row.reference,
                    created_at: micros_to_rfc3339(row.created_at),
                    updated_at: micros_to_rfc3339(row.updated_at),
                    steps,
                    exceptions,
                }))
            }

            pub(super) use super::super::ledger::$ledger::apply_inputs;
        }
    };
}

transfer_backend!(sqlite_transfers, sqlx::Sqlite, "", sqlite_ledger);
transfer_backend!(
    postgres_transfers,
    sqlx::Postgres,
    " FOR UPDATE",
    postgres_ledger
);

/// The first event of `results` that did not take effect.
fn not_applied(results: Vec<EventResult>) -> Option<TransferRefusal> {
    results
        .into_iter()
        .find(|r| !matches!(r.status, EventStatus::Applied | EventStatus::Duplicate))
        .map(|r| {
            TransferRefusal::EventNotApplied(format!(
                "{}: {}",
                r.event_id,
                r.reason.unwrap_or_default()
            ))
        })
}

/// What a transfer request or step comes to.
pub type TransferOutcome = Result<Transfer, TransferRefusal>;

/// What a step does once the transfer is loaded and locked.
#[derive(Debug, Clone)]
pub enum Action {
    /// Approve a requested transfer.
    Approve,
    /// Ship an approved transfer.
    Ship,
    /// Receive a shipped transfer, with counted quantities per sku.
    Receive(Option<Vec<(String, i64)>>),
    /// Cancel a transfer not shipped.
    Cancel,
}

impl Store {
    /// Requests a transfer; approves it at once when its value at cost is
    /// below the threshold.
    pub async fn request_transfer(
        &self,
        request: &NewTransfer,
        ctx: &IngestContext,
    ) -> Result<TransferOutcome, sqlx::Error> {
        self.request_transfer_keyed(request, ctx, None)
            .await?
            .unkeyed()
    }

    /// [`Store::request_transfer`] with its `Idempotency-Key` claimed and
    /// answered in the transfer's own transaction.
    pub async fn request_transfer_keyed(
        &self,
        request: &NewTransfer,
        ctx: &IngestContext,
        keyed: Option<&KeyedWrite<'_, TransferOutcome>>,
    ) -> Result<Keyed<TransferOutcome>, sqlx::Error> {
        let now = self.now();
        let transfer_id = uuid::Uuid::now_v7().to_string();
        crate::keyed_transact!(
            self,
            keyed,
            sqlite_transfers,
            postgres_transfers,
            |tx, backend| {
                let skus: BTreeSet<&str> = request.lines.iter().map(|(s, _)| s.as_str()).collect();
                let costs = backend::costs(&mut tx, &skus).await?;
                let mut unknown = Vec::new();
                for (field, location) in [
                    ("source_location_id", &request.source_location_id),
                    ("destination_location_id", &request.destination_location_id),
                ] {
                    if !backend::location_exists(&mut tx, location).await? {
                        unknown.push((format!("/{field}"), location.clone()));
                    }
                }
                let mut value = Decimal::ZERO;
                let mut currencies = BTreeSet::new();
                for (index, (sku, quantity)) in request.lines.iter().enumerate() {
                    match costs.iter().find(|(s, _, _)| s == sku) {
                        Some((_, cost, currency)) => {
                            let cost: Decimal = cost.parse().unwrap_or_default();
                            value += cost * Decimal::from(*quantity);
                            currencies.insert(currency.clone());
                        }
                        None => unknown.push((format!("/lines/{index}/sku"), sku.clone())),
                    }
                }
                if !unknown.is_empty() {
                    (Err(TransferRefusal::Unknown(unknown)), false)
                } else {
                    let auto = value < request.auto_approve_below;
                    let row = Row {
                        transfer_id: transfer_id.clone(),
                        source: request.source_location_id.clone(),
                        destination: request.destination_location_id.clone(),
                        status: if auto {
                            TransferStatus::Approved
                        } else {
                            TransferStatus::Requested
                        },
                        lines: request
                            .lines
                            .iter()
                            .map(|(sku, quantity)| TransferLine {
                                sku: sku.clone(),
                                quantity: *quantity,
                                shipped: 0,
                                received: 0,
                            })
                            .collect(),
                        value_at_cost: value.round_dp(2).to_string(),
                        currency: (currencies.len() == 1)
                            .then(|| currencies.into_iter().next())
                            .flatten(),
                        requested_by: ctx.actor.clone(),
                        approved_by: auto.then(|| "auto".to_owned()),
                        reference: request.reference.clone(),
                        created_at: now,
                        updated_at: now,
                    };
                    backend::insert(&mut tx, &row).await?;
                    backend::step(
                        &mut tx,
                        &transfer_id,
                        TransferStatus::Requested,
                        &ctx.actor,
                        &ctx.request_id,
                        now,
                    )
                    .await?;
                    if auto {
                        backend::step(
                            &mut tx,
                            &transfer_id,
                            TransferStatus::Approved,
                            "auto",
                            &ctx.request_id,
                            now,
                        )
                        .await?;
                    }
                    let made = backend::view(&mut tx, &transfer_id)
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?;
                    (Ok(made), true)
                }
            }
        )
    }

    /// Approves a requested transfer (never by its requester).
    pub async fn approve_transfer(
        &self,
        transfer_id: &str,
        ctx: &IngestContext,
    ) -> Result<TransferOutcome, sqlx::Error> {
        self.transfer_step(transfer_id, Action::Approve, ctx, None)
            .await?
            .unkeyed()
    }

    /// Ships an approved transfer: one `transfer_out` per line.
    pub async fn ship_transfer(
        &self,
        transfer_id: &str,
        ctx: &IngestContext,
    ) -> Result<TransferOutcome, sqlx::Error> {
        self.transfer_step(transfer_id, Action::Ship, ctx, None)
            .await?
            .unkeyed()
    }

    /// Receives a shipped transfer with the counted quantities (default:
    /// as shipped): one `transfer_in` per line with units; differences
    /// open exceptions.
    pub async fn receive_transfer(
        &self,
        transfer_id: &str,
        counted: Option<Vec<(String, i64)>>,
        ctx: &IngestContext,
    ) -> Result<TransferOutcome, sqlx::Error> {
        self.transfer_step(transfer_id, Action::Receive(counted), ctx, None)
            .await?
            .unkeyed()
    }

    /// Cancels a transfer that has not shipped.
    pub async fn cancel_transfer(
        &self,
        transfer_id: &str,
        ctx: &IngestContext,
    ) -> Result<TransferOutcome, sqlx::Error> {
        self.transfer_step(transfer_id, Action::Cancel, ctx, None)
            .await?
            .unkeyed()
    }

    /// A step of a transfer with its `Idempotency-Key` claimed and answered
    /// in the step's own transaction.
    pub async fn transfer_step(
        &self,
        transfer_id: &str,
        action: Action,
        ctx: &IngestContext,
        keyed: Option<&KeyedWrite<'_, TransferOutcome>>,
    ) -> Result<Keyed<TransferOutcome>, sqlx::Error> {
        let now = self.now();
        crate::keyed_transact!(
            self,
            keyed,
            sqlite_transfers,
            postgres_transfers,
            |tx, backend| {
                match backend::load(&mut tx, transfer_id).await? {
                    None => (Err(TransferRefusal::NotFound), false),
                    Some(mut row) => {
                        let target = match &action {
                            Action::Approve => TransferStatus::Approved,
                            Action::Ship => TransferStatus::Shipped,
                            Action::Receive(_) => TransferStatus::Received,
                            Action::Cancel => TransferStatus::Cancelled,
                        };
                        let allowed = match &action {
                            Action::Approve => row.status == TransferStatus::Requested,
                            Action::Ship => row.status == TransferStatus::Approved,
                            Action::Receive(_) => row.status == TransferStatus::Shipped,
                            Action::Cancel => matches!(
                                row.status,
                                TransferStatus::Requested | TransferStatus::Approved
                            ),
                        };
                        if row.status == target {
                            // A repeated step answers the transfer unchanged.
                            let unchanged = backend::view(&mut tx, transfer_id)
                                .await?
                                .ok_or(TransferRefusal::NotFound);
                            (unchanged, false)
                        } else if !allowed {
                            (Err(TransferRefusal::WrongStatus(row.status)), false)
                        } else if matches!(action, Action::Approve) && row.requested_by == ctx.actor
                        {
                            (Err(TransferRefusal::SelfApproval), false)
                        } else {
                            let mut refusal = None;
                            let mut events = Vec::new();
                            match &action {
                                Action::Approve => row.approved_by = Some(ctx.actor.clone()),
                                Action::Ship => {
                                    for (index, line) in row.lines.iter().enumerate() {
                                        events.push(row.event(
                                            "transfer_out",
                                            index,
                                            line,
                                            line.quantity,
                                            now,
                                        ));
                                    }
                                    for line in &mut row.lines {
                                        line.shipped = line.quantity;
                                    }
                                }
                                Action::Receive(counted) => {
                                    if let Some(counted) = counted
                                        && let Some((sku, _)) = counted.iter().find(|(sku, _)| {
                                            !row.lines.iter().any(|l| &l.sku == sku)
                                        })
                                    {
                                        refusal = Some(TransferRefusal::NotOnTransfer(sku.clone()));
                                    }
                                    for line in &mut row.lines {
                                        line.received = match counted {
                                            Some(counted) => counted
                                                .iter()
                                                .find(|(sku, _)| *sku == line.sku)
                                                .map_or(0, |(_, q)| *q),
                                            None => line.shipped,
                                        };
                                    }
                                    for (index, line) in row.lines.iter().enumerate() {
                                        if line.received > 0 {
                                            events.push(row.event(
                                                "transfer_in",
                                                index,
                                                line,
                                                line.received,
                                                now,
                                            ));
                                        }
                                    }
                                }
                                Action::Cancel => {}
                            }
                            if refusal.is_none() && !events.is_empty() {
                                let results = backend::apply_inputs(
                                    &mut tx,
                                    self.master_cache(),
                                    &events,
                                    ctx,
                                    now,
                                )
                                .await?;
                                refusal = not_applied(results);
                            }
                            match refusal {
                                Some(refusal) => (Err(refusal), false),
                                None => {
                                    if matches!(action, Action::Receive(_)) {
                                        for line in
                                            row.lines.iter().filter(|l| l.received != l.shipped)
                                        {
                                            backend::exception(
                                                &mut tx,
                                                &row.transfer_id,
                                                line,
                                                now,
                                            )
                                            .await?;
                                        }
                                    }
                                    row.status = target;
                                    row.updated_at = now;
                                    backend::save(&mut tx, &row).await?;
                                    backend::step(
                                        &mut tx,
                                        &row.transfer_id,
                                        target,
                                        &ctx.actor,
                                        &ctx.request_id,
                                        now,
                                    )
                                    .await?;
                                    let stepped = backend::view(&mut tx, transfer_id)
                                        .await?
                                        .ok_or(sqlx::Error::RowNotFound)?;
                                    (Ok(stepped), true)
                                }
                            }
                        }
                    }
                }
            }
        )
    }

    /// One transfer with its steps and exceptions.
    pub async fn transfer(&self, transfer_id: &str) -> Result<Option<Transfer>, sqlx::Error> {
        match self.db() {
            super::Db::Sqlite { reader, .. } => {
                sqlite_transfers::view(&mut reader.begin().await?, transfer_id).await
            }
            super::Db::Postgres(pool) => {
                postgres_transfers::view(&mut pool.begin().await?, transfer_id).await
            }
        }
    }
}
