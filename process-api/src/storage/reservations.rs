//! Reservations: holds on available units, all lines or none.
//!
//! A reservation's units live in `reservation_holds` (one row per line)
//! while it is active. A position's `reserved` is not stored: reads sum the
//! holds whose `expires_at` is still ahead, so a reservation stops counting
//! at its expiry exactly, whether or not the sweeper has run yet; the
//! sweeper only records the `expired` status and drops the rows.
//!
//! **The oversell guard.** Creating a reservation locks the positions of
//! its lines (`SELECT … FOR UPDATE` in primary-key order on PostgreSQL; the
//! single `BEGIN IMMEDIATE` writer on SQLite), then reads on-hand, safety
//! stock and the active holds, and inserts its holds only if every line
//! fits. Two replicas reserving the same position therefore serialise on
//! its row, and the second reads the first's committed holds (READ
//! COMMITTED takes a fresh snapshot per statement, after the lock is
//! granted). Event ingest locks the same rows in the same order, so a sale
//! and a reservation never both spend the last unit.
//!
//! Fulfilment journals one `sale` per line (event ids
//! `reservation:{id}:{line}`) through the ledger's own apply path, in the
//! transaction that drops the holds, so the units are never counted twice
//! or not at all, and the sales reach the ERP outbox.
//!
//! Lock order: positions, then a new reservation row (create); a
//! reservation row, then positions (fulfil). Neither waits on a row the
//! other holds first, so they do not deadlock.
//!
//! The per-client cap on active reservations is checked in the creating
//! transaction: exact on SQLite (one writer); on PostgreSQL two replicas
//! racing on one client's last slot can both pass (a soft cap: it bounds
//! hoarding without serialising every reservation of a busy web shop on
//! one row).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub use retail_shared::model::{Reservation, ReservationLine, ReservationStatus};
use serde::Serialize;
use utoipa::ToSchema;

use futures::future::BoxFuture;
use sqlx::{Sqlite, Transaction};

use retail_shared::idempotency::{Begin, InlineClaim, StoredResponse};

use super::group::BatchKind;
use super::idempotency::{Claim, KeyedWrite, decide_claims};
use super::ledger::{EventResult, EventStatus, IngestContext};
use super::{Store, micros_to_rfc3339};
use crate::inventory::event::EventInput;
use crate::inventory::position::{PositionState, resolve_safety_stock};
use crate::inventory::rebuild::Key;

/// A validated request to reserve.
#[derive(Debug, Clone)]
pub struct NewReservation {
    /// The end user or channel client behind the token (for the cap).
    pub client_id: String,
    /// Sales channel.
    pub channel: String,
    /// Order or cart reference.
    pub order_ref: String,
    /// Lines, each (sku, location) at most once.
    pub lines: Vec<ReservationLine>,
    /// Lifetime in seconds.
    pub ttl_seconds: u64,
    /// Cap on the client's active reservations.
    pub max_active_per_client: i64,
    /// Request id, kept with the reservation.
    pub request_id: String,
}

/// A line that could not be held.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShortLine {
    /// Index of the line in the request.
    pub line: usize,
    /// SKU.
    pub sku: String,
    /// Location.
    pub location_id: String,
    /// Units asked for.
    pub requested: i64,
    /// Units available when it was checked.
    pub available: i64,
}

/// Why a reservation was not created.
#[derive(Debug, Clone)]
pub enum ReserveRefusal {
    /// At least one line does not fit; nothing was held.
    InsufficientStock(Vec<ShortLine>),
    /// Lines name a sku or location the registry does not know: (line, what).
    Unknown(Vec<(usize, &'static str, String)>),
    /// The client already holds the maximum of active reservations.
    TooManyActive(i64),
}

/// Why a release or fulfilment was refused.
#[derive(Debug, Clone)]
pub enum CloseRefusal {
    /// No such reservation.
    NotFound,
    /// It is no longer active (released, fulfilled or expired).
    NotActive(ReservationStatus),
    /// A journalled sale was not applied (its master data vanished).
    SaleNotApplied(String),
}

/// A stored reservation row.
#[derive(Debug, Clone)]
struct Row {
    reservation_id: String,
    client_id: String,
    channel: String,
    order_ref: String,
    status: ReservationStatus,
    lines: Vec<ReservationLine>,
    created_at: i64,
    expires_at: i64,
    closed_at: Option<i64>,
}

impl Row {
    fn from_sql<R: sqlx::Row>(row: &R) -> Result<Self, sqlx::Error>
    where
        for<'r> &'r str: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let lines: String = row.try_get("lines")?;
        Ok(Self {
            reservation_id: row.try_get("reservation_id")?,
            client_id: row.try_get("client_id")?,
            channel: row.try_get("channel")?,
            order_ref: row.try_get("order_ref")?,
            status: ReservationStatus::parse(&row.try_get::<String, _>("status")?),
            lines: serde_json::from_str(&lines).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            closed_at: row.try_get("closed_at")?,
        })
    }

    /// The status as of `now`.
    fn status_at(&self, now: i64) -> ReservationStatus {
        if self.status == ReservationStatus::Active && self.expires_at <= now {
            ReservationStatus::Expired
        } else {
            self.status
        }
    }

    fn view(self, now: i64) -> Reservation {
        Reservation {
            status: self.status_at(now),
            reservation_id: self.reservation_id,
            client_id: self.client_id,
            channel: self.channel,
            order_ref: self.order_ref,
            lines: self.lines,
            created_at: micros_to_rfc3339(self.created_at),
            expires_at: micros_to_rfc3339(self.expires_at),
            closed_at: self.closed_at.map(micros_to_rfc3339),
        }
    }

    /// The sale events that fulfil it (ids stable, so a retried
    /// fulfilment is a duplicate, never a second sale).
    fn sales(&self, now: i64) -> Vec<EventInput> {
        self.lines
            .iter()
            .enumerate()
            .map(|(index, line)| EventInput {
                event_id: format!("reservation:{}:{index}", self.reservation_id),
                r#type: "sale".into(),
                location_id: line.location_id.clone(),
                sku: line.sku.clone(),
                quantity: line.quantity,
                occurred_at: micros_to_rfc3339(now),
                source: "reservations".into(),
                reference: Some(self.order_ref.clone()),
                reason: Some(format!("reservation {} fulfilled", self.reservation_id)),
                counterparty_location_id: None,
                disposition: None,
            })
            .collect()
    }
}

const COLUMNS: &str = "reservation_id, client_id, channel, order_ref, status, lines, created_at, \
                       expires_at, closed_at";

/// Reservations closed per sweeper transaction.
const SWEEP_BATCH: i64 = 500;

macro_rules! reservation_backend {
    ($module:ident, $db:ty, $lock_positions:literal, $lock_row:literal, $skip_locked:literal, $ledger:ident) => {
        mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row as _, Transaction};

            type Tx<'c> = Transaction<'c, $db>;

            pub(super) async fn active_count(
                tx: &mut Tx<'_>,
                client_id: &str,
                now: i64,
                cap: i64,
            ) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM reservations WHERE client_id = $1 \
                     AND status = 'active' AND expires_at > $2 LIMIT $3) t",
                )
                .bind(client_id)
                .bind(now)
                .bind(cap)
                .fetch_one(&mut **tx)
                .await
            }

            /// Which of the skus and locations the registry knows.
            /// Which skus and locations exist: from the master data cache
            /// (master data is never deleted), the rest from the database
            /// (then cached).
            pub(super) async fn known(
                tx: &mut Tx<'_>,
                cache: &crate::storage::cache::MasterCache,
                skus: &BTreeSet<&str>,
                locations: &BTreeSet<&str>,
            ) -> Result<(HashSet<String>, HashSet<String>), sqlx::Error> {
                let sku_list: Vec<&str> = skus.iter().copied().collect();
                let location_list: Vec<&str> = locations.iter().copied().collect();
                let mut found_skus: HashSet<String> =
                    cache.products(&sku_list).into_keys().collect();
                let mut found_locations: HashSet<String> =
                    cache.locations(&location_list).into_keys().collect();
                let missing_skus: BTreeSet<&str> = sku_list
                    .into_iter()
                    .filter(|sku| !found_skus.contains(*sku))
                    .collect();
                let missing_locations: BTreeSet<&str> = location_list
                    .into_iter()
                    .filter(|id| !found_locations.contains(*id))
                    .collect();
                let products = if missing_skus.is_empty() {
                    HashMap::new()
                } else {
                    super::super::ledger::$ledger::lookup_products(tx, &missing_skus).await?
                };
                let places = if missing_locations.is_empty() {
                    HashMap::new()
                } else {
                    super::super::ledger::$ledger::lookup_locations(tx, &missing_locations)
                        .await?
                };
                cache.remember(&products, &places);
                found_skus.extend(products.into_keys());
                found_locations.extend(places.into_keys());
                Ok((found_skus, found_locations))
            }

            /// Locks the positions (key order) and reads their state and
            /// resolved safety stock. Missing positions hold nothing.
            pub(super) async fn lock_positions(
                tx: &mut Tx<'_>,
                keys: &BTreeSet<Key>,
            ) -> Result<HashMap<Key, (PositionState, i64)>, sqlx::Error> {
                let mut keys: Vec<&Key> = keys.iter().collect();
                keys.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
                let mut qb = QueryBuilder::<$db>::new("WITH k (l, s) AS (");
                qb.push_values(&keys, |mut row, (location, sku)| {
                    row.push_bind(location.as_str()).push_bind(sku.as_str());
                });
                qb.push(
                    ") SELECT p.location_id, p.sku, p.count_at, p.count_event_id, p.count_qty, \
                     p.delta_after, p.unsellable_raw, p.inbound_shipped, p.inbound_received, \
                     CAST(0 AS BIGINT) AS reserved, p.last_event_at, \
                     p.safety_stock AS position_safety, pr.safety_stock AS product_safety, \
                     l.safety_stock_default FROM k \
                     JOIN positions p ON p.sku = k.s AND p.location_id = k.l \
                     JOIN products pr ON pr.sku = p.sku \
                     JOIN locations l ON l.location_id = p.location_id \
                     ORDER BY p.sku, p.location_id",
                );
                qb.push($lock_positions);
                let mut found = HashMap::with_capacity(keys.len());
                for row in qb.build().fetch_all(&mut **tx).await? {
                    let key: Key = (row.try_get("location_id")?, row.try_get("sku")?);
                    let state = crate::storage::ledger::state_from_row(&row)?;
                    let safety = resolve_safety_stock(
                        row.try_get("position_safety")?,
                        row.try_get("product_safety")?,
                        row.try_get("safety_stock_default")?,
                    );
                    found.insert(key, (state, safety));
                }
                Ok(found)
            }

            /// Units held by reservations still active at `now`.
            pub(super) async fn held(
                tx: &mut Tx<'_>,
                keys: &BTreeSet<Key>,
                now: i64,
            ) -> Result<HashMap<Key, i64>, sqlx::Error> {
                let mut qb = QueryBuilder::<$db>::new("WITH k (l, s) AS (");
                qb.push_values(keys, |mut row, (location, sku)| {
                    row.push_bind(location.as_str()).push_bind(sku.as_str());
                });
                qb.push(
                    ") SELECT h.location_id, h.sku, CAST(SUM(h.quantity) AS BIGINT) FROM k \
                     JOIN reservation_holds h ON h.sku = k.s AND h.location_id = k.l \
                     WHERE h.expires_at > ",
                );
                qb.push_bind(now);
                qb.push(" GROUP BY h.location_id, h.sku");
                let mut held = HashMap::new();
                for row in qb.build().fetch_all(&mut **tx).await? {
                    held.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
                }
                Ok(held)
            }

            /// Inserts reservations (with the request id of each), their
            /// holds and the change notifications: one statement each.
            pub(super) async fn insert(
                tx: &mut Tx<'_>,
                made: &[(&Row, &str)],
            ) -> Result<(), sqlx::Error> {
                let mut encoded = Vec::with_capacity(made.len());
                for (row, _) in made {
                    encoded.push(
                        serde_json::to_string(&row.lines)
                            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
                    );
                }
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO reservations (reservation_id, client_id, channel, order_ref, \
                     status, lines, created_at, expires_at, request_id) ",
                );
                qb.push_values(
                    made.iter().zip(&encoded),
                    |mut values, ((row, request_id), lines)| {
                        values
                            .push_bind(row.reservation_id.as_str())
                            .push_bind(row.client_id.as_str())
                            .push_bind(row.channel.as_str())
                            .push_bind(row.order_ref.as_str())
                            .push_bind("active")
                            .push_bind(lines.as_str())
                            .push_bind(row.created_at)
                            .push_bind(row.expires_at)
                            .push_bind(*request_id);
                    },
                );
                qb.build().execute(&mut **tx).await?;

                let lines: Vec<(&Row, &ReservationLine)> = made
                    .iter()
                    .flat_map(|(row, _)| row.lines.iter().map(move |line| (*row, line)))
                    .collect();
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO reservation_holds (sku, location_id, reservation_id, quantity, \
                     expires_at) ",
                );
                qb.push_values(&lines, |mut values, (row, line)| {
                    values
                        .push_bind(line.sku.as_str())
                        .push_bind(line.location_id.as_str())
                        .push_bind(row.reservation_id.as_str())
                        .push_bind(line.quantity)
                        .push_bind(row.expires_at);
                });
                qb.build().execute(&mut **tx).await?;
                let changes: Vec<(&ReservationLine, i64)> =
                    lines.iter().map(|(row, line)| (*line, row.created_at)).collect();
                changed(tx, &changes).await
            }

            /// Availability-change notifications for the lines' positions.
            async fn changed(
                tx: &mut Tx<'_>,
                changes: &[(&ReservationLine, i64)],
            ) -> Result<(), sqlx::Error> {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO outbox_changes (location_id, sku, created_at) ",
                );
                qb.push_values(changes, |mut values, (line, at)| {
                    values
                        .push_bind(line.location_id.as_str())
                        .push_bind(line.sku.as_str())
                        .push_bind(*at);
                });
                qb.build().execute(&mut **tx).await?;
                Ok(())
            }

            /// The reservation, locked for the rest of the transaction.
            pub(super) async fn load(
                tx: &mut Tx<'_>,
                reservation_id: &str,
            ) -> Result<Option<Row>, sqlx::Error> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM reservations WHERE reservation_id = $1{}",
                    $lock_row
                )))
                .bind(reservation_id)
                .fetch_optional(&mut **tx)
                .await?;
                row.as_ref().map(Row::from_sql).transpose()
            }

            /// Ends an active reservation: status, holds, notifications.
            pub(super) async fn close(
                tx: &mut Tx<'_>,
                row: &mut Row,
                status: ReservationStatus,
                now: i64,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "UPDATE reservations SET status = $1, closed_at = $2 \
                     WHERE reservation_id = $3",
                )
                .bind(status.as_str())
                .bind(now)
                .bind(&row.reservation_id)
                .execute(&mut **tx)
                .await?;
                sqlx::query("DELETE FROM reservation_holds WHERE reservation_id = $1")
                    .bind(&row.reservation_id)
                    .execute(&mut **tx)
                    .await?;
                let changes: Vec<(&ReservationLine, i64)> =
                    row.lines.iter().map(|line| (line, now)).collect();
                changed(tx, &changes).await?;
                row.status = status;
                row.closed_at = Some(now);
                Ok(())
            }

            /// Active reservations past their expiry, locked (rows another
            /// sweeper holds are skipped).
            pub(super) async fn due(
                tx: &mut Tx<'_>,
                now: i64,
                limit: i64,
            ) -> Result<Vec<Row>, sqlx::Error> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM reservations WHERE status = 'active' \
                     AND expires_at <= $1 ORDER BY expires_at LIMIT $2{}",
                    $skip_locked
                )))
                .bind(now)
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?;
                rows.iter().map(Row::from_sql).collect()
            }

            /// One reservation's work inside `tx`: the cap, master data,
            /// locked positions and holds; `(outcome, commit)`.
            pub(super) async fn attempt(
                tx: &mut Tx<'_>,
                cache: &crate::storage::cache::MasterCache,
                request: &NewReservation,
                row: &Row,
                keys: &BTreeSet<Key>,
                now: i64,
            ) -> Result<(Result<Reservation, ReserveRefusal>, bool), sqlx::Error> {
                let tx = &mut *tx;
                Ok({
                let active = active_count(
                    tx,
                    &request.client_id,
                    now,
                    request.max_active_per_client,
                )
                .await?;
                if active >= request.max_active_per_client {
                    (
                        Err(ReserveRefusal::TooManyActive(request.max_active_per_client)),
                        false,
                    )
                } else {
                    let skus: BTreeSet<&str> =
                        request.lines.iter().map(|l| l.sku.as_str()).collect();
                    let locations: BTreeSet<&str> = request
                        .lines
                        .iter()
                        .map(|l| l.location_id.as_str())
                        .collect();
                    let (known_skus, known_locations) =
                        known(tx, cache, &skus, &locations).await?;
                    let unknown = unknown_lines(&request.lines, &known_skus, &known_locations);
                    if !unknown.is_empty() {
                        (Err(ReserveRefusal::Unknown(unknown)), false)
                    } else {
                        let positions = lock_positions(tx, &keys).await?;
                        let held = held(tx, &keys, now).await?;
                        let short = shortages(&request.lines, &positions, &held);
                        if short.is_empty() {
                            insert(tx, &[(row, request.request_id.as_str())]).await?;
                            (Ok(row.clone().view(now)), true)
                        } else {
                            (Err(ReserveRefusal::InsufficientStock(short)), false)
                        }
                    }
                }
                })
            }

            pub(super) use super::super::ledger::$ledger::apply_inputs;
        }
    };
}

reservation_backend!(sqlite_reservations, sqlx::Sqlite, "", "", "", sqlite_ledger);
reservation_backend!(
    postgres_reservations,
    sqlx::Postgres,
    " FOR UPDATE OF p",
    " FOR UPDATE",
    " FOR UPDATE SKIP LOCKED",
    postgres_ledger
);

/// A reservation waiting in SQLite's batch (see `group::Batch`).
pub(crate) struct Pending {
    request: NewReservation,
    row: Row,
    keys: BTreeSet<Key>,
    /// Its `Idempotency-Key`, claimed and answered in the batch.
    claim: Option<(Claim, Render)>,
}

/// What a reservation request comes to.
pub type Outcome = Result<Reservation, ReserveRefusal>;

/// The route's answer to an outcome, as stored for replays of its
/// `Idempotency-Key`.
/// `None` for an outcome that is not the request's answer (the route
/// goes on to try something else): the key is then left free, as if the
/// attempt had never claimed it.
pub type Render = std::sync::Arc<dyn Fn(&Outcome) -> Option<StoredResponse> + Send + Sync>;

/// What releasing or fulfilling a reservation comes to.
pub type CloseOutcome = Result<Reservation, CloseRefusal>;

/// What a reservation with an `Idempotency-Key` claimed in its own
/// transaction comes to.
pub type Keyed = super::idempotency::Keyed<Outcome>;

/// Reservations on SQLite: decided and written a batch at a time.
static RESERVATION_BATCH: BatchKind<Pending, Keyed> = BatchKind {
    queue: |store| &store.write_group().reservations,
    run: run_reservation_batch,
    weight: |pending| pending.request.lines.len(),
    // Lines per run: keeps every statement well inside SQLite's bound
    // parameters (a request has at most 100 lines).
    max_weight: 512,
    savepoint: true,
};

fn run_reservation_batch<'c>(
    tx: &'c mut Transaction<'static, Sqlite>,
    store: &'c Store,
    batch: Vec<Pending>,
) -> BoxFuture<'c, Result<Vec<Keyed>, sqlx::Error>> {
    Box::pin(reserve_batch(tx, batch, store.now()))
}

/// A batch of reservations in one pass, each decided as if alone and in
/// arrival order: one round trip claiming the `Idempotency-Key`s that are
/// new and reading the clients' active counts, the master data, the
/// positions and their holds ([`BATCH_READS`]; a request whose key is not
/// new is answered from the key and decides nothing), then the decisions
/// in memory (a reservation sees the holds of those before it in the
/// batch), then one round trip writing the reservations, their holds, the
/// change notifications and the keyed requests' answers
/// ([`BATCH_WRITES`]). Every statement is a round trip to the writer's
/// thread, and the writer is the path every reservation shares, so the
/// statements are few and of fixed text (the lists go in as JSON arrays:
/// one prepared statement whatever the batch's size). SQLite's single
/// writer makes the reads current for the whole batch, and its savepoint
/// makes the keys, the reservations and the answers one write: all kept
/// or none.
async fn reserve_batch(
    tx: &mut Transaction<'static, Sqlite>,
    batch: Vec<Pending>,
    now: i64,
) -> Result<Vec<Keyed>, sqlx::Error> {
    use sqlx::{QueryBuilder, Row as _};

    // The clients' active reservations: the bound kept by triggers
    // (migration 0011) for each client, and an exact count (up to the
    // largest cap) only for the clients whose bound plus their requests in
    // this batch could reach their cap; below it the count decides nothing.
    let mut per_client: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for pending in &batch {
        let request = &pending.request;
        let (requests, cap) = per_client
            .entry(request.client_id.as_str())
            .or_insert((0, i64::MAX));
        *requests += 1;
        *cap = (*cap).min(request.max_active_per_client);
    }

    // The keys are claimed with the reads, one insert for the new ones: a
    // request whose key is not new is answered from the key and decides
    // nothing.
    let claims: Vec<Claim> = batch
        .iter()
        .filter_map(|p| p.claim.as_ref().map(|(claim, _)| claim.clone()))
        .collect();
    let clients: Vec<&str> = per_client.keys().copied().collect();
    let reads = batch_reads(tx, &batch, &clients, &claims, now).await?;
    let mut decisions = if claims.is_empty() {
        Vec::new()
    } else {
        decide_claims(tx, claims, reads.claimed).await?
    }
    .into_iter();
    let mut refused_keys: Vec<Option<Begin>> = Vec::with_capacity(batch.len());
    for pending in &batch {
        let decision = match pending.claim {
            Some(_) => decisions.next().filter(|d| *d != Begin::Started),
            None => None,
        };
        refused_keys.push(decision);
    }

    let mut active = reads.active;
    let near: Vec<&str> = per_client
        .iter()
        .filter(|(client, (requests, cap))| {
            active.get(**client).copied().unwrap_or(0) + requests > *cap
        })
        .map(|(client, _)| *client)
        .collect();
    if !near.is_empty() {
        let cap = batch
            .iter()
            .map(|p| p.request.max_active_per_client)
            .max()
            .unwrap_or(0);
        let mut qb = QueryBuilder::<Sqlite>::new("WITH c (id) AS (");
        qb.push_values(&near, |mut row, client| {
            row.push_bind(*client);
        });
        qb.push(
            ") SELECT c.id, (SELECT COUNT(*) FROM (SELECT 1 FROM reservations \
             WHERE client_id = c.id AND status = 'active' AND expires_at > ",
        );
        qb.push_bind(now);
        qb.push(" LIMIT ");
        qb.push_bind(cap);
        qb.push(")) FROM c");
        for row in qb.build().fetch_all(&mut **tx).await? {
            active.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    let known = reads.known;
    let positions = reads.positions;
    let mut held = reads.held;

    let mut answers = Vec::with_capacity(batch.len());
    let mut made: Vec<(&Row, &str)> = Vec::new();
    let mut completions: Vec<(String, StoredResponse)> = Vec::new();
    let mut released: Vec<&str> = Vec::new();
    for (pending, refused_key) in batch.iter().zip(refused_keys) {
        if let Some(decision) = refused_key {
            answers.push(Keyed::Key(decision));
            continue;
        }
        let outcome = decide(pending, &mut active, &known, &positions, &mut held, now);
        if outcome.is_ok() {
            made.push((&pending.row, pending.request.request_id.as_str()));
        }
        let stored = pending.claim.as_ref().and_then(|(claim, render)| {
            let stored = render(&outcome);
            match &stored {
                Some(stored) => completions.push((claim.key.clone(), stored.clone())),
                None => released.push(claim.key.as_str()),
            }
            stored
        });
        answers.push(Keyed::Decided(outcome, stored));
    }
    batch_writes(tx, &made, &completions).await?;
    if !released.is_empty() {
        // Claimed by this batch's insert (or taken over from an expired
        // record): nobody else holds them.
        let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM idempotency_keys WHERE key IN (");
        let mut keys = qb.separated(", ");
        for key in &released {
            keys.push_bind(*key);
        }
        qb.push(")");
        qb.build().execute(&mut **tx).await?;
    }
    Ok(answers)
}

/// What a reservation batch reads before deciding (SQLite).
struct BatchReads {
    /// The keys its claims' insert claimed (new keys).
    claimed: HashSet<String>,
    /// Active reservations per client (the bound the triggers keep).
    active: HashMap<String, i64>,
    /// The skus and the locations the registry knows.
    known: (HashSet<String>, HashSet<String>),
    /// The lines' positions that exist, with their resolved safety stock.
    positions: HashMap<Key, (PositionState, i64)>,
    /// Units held at each position by reservations active at `now`.
    held: HashMap<Key, i64>,
}

/// The batch's claims and reads in one round trip to SQLite's writer
/// thread (statements of one fixed text, the lists passed as JSON arrays):
/// the insert claiming the `Idempotency-Key`s that are new (answering
/// them), the clients' active counts, then per (location, sku) of the
/// lines whether the sku and the location exist, the position's state and
/// safety stock, and the units its active holds take.
const BATCH_READS: &str = "INSERT INTO idempotency_keys (key, fingerprint, lease_until, \
     expires_at) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 \
     FROM json_each($4) WHERE true ON CONFLICT (key) DO NOTHING RETURNING 'k' AS part, key; \
     SELECT 'c' AS part, client_id, active FROM reservation_client_counts \
     WHERE client_id IN (SELECT value FROM json_each($1)); \
     WITH k (l, s) AS MATERIALIZED (SELECT value ->> 0, value ->> 1 FROM json_each($2)) \
     SELECT 'p' AS part, k.l AS location_id, k.s AS sku, \
     pr.sku IS NOT NULL AS sku_known, l.location_id IS NOT NULL AS location_known, \
     p.sku IS NOT NULL AS has_position, \
     p.count_at, p.count_event_id, p.count_qty, p.delta_after, p.unsellable_raw, \
     p.inbound_shipped, p.inbound_received, CAST(0 AS BIGINT) AS reserved, p.last_event_at, \
     p.safety_stock AS position_safety, pr.safety_stock AS product_safety, \
     l.safety_stock_default, \
     (SELECT CAST(COALESCE(SUM(h.quantity), 0) AS BIGINT) FROM reservation_holds h \
      WHERE h.sku = k.s AND h.location_id = k.l AND h.expires_at > $3) AS held \
     FROM k LEFT JOIN products pr ON pr.sku = k.s \
     LEFT JOIN locations l ON l.location_id = k.l \
     LEFT JOIN positions p ON p.sku = k.s AND p.location_id = k.l";

async fn batch_reads(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &[Pending],
    clients: &[&str],
    claims: &[Claim],
    now: i64,
) -> Result<BatchReads, sqlx::Error> {
    use sqlx::Row as _;

    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    let keys: BTreeSet<(&str, &str)> = batch
        .iter()
        .flat_map(|p| p.keys.iter().map(|(l, s)| (l.as_str(), s.as_str())))
        .collect();
    let claims: Vec<(&str, &str, i64, i64)> = claims
        .iter()
        .map(|c| {
            (
                c.key.as_str(),
                c.fingerprint.as_str(),
                c.clock.lease_until,
                c.clock.expires_at,
            )
        })
        .collect();
    let mut reads = BatchReads {
        claimed: HashSet::with_capacity(claims.len()),
        active: HashMap::with_capacity(clients.len()),
        known: (HashSet::new(), HashSet::new()),
        positions: HashMap::with_capacity(keys.len()),
        held: HashMap::with_capacity(keys.len()),
    };
    let rows = sqlx::query(BATCH_READS)
        .bind(serde_json::to_string(&clients).map_err(encode)?)
        .bind(serde_json::to_string(&keys).map_err(encode)?)
        .bind(now)
        .bind(serde_json::to_string(&claims).map_err(encode)?)
        .fetch_all(&mut **tx)
        .await?;
    for row in rows {
        let part: &str = row.try_get("part")?;
        if part == "k" {
            reads.claimed.insert(row.try_get("key")?);
            continue;
        }
        if part == "c" {
            reads
                .active
                .insert(row.try_get("client_id")?, row.try_get("active")?);
            continue;
        }
        let key: Key = (row.try_get("location_id")?, row.try_get("sku")?);
        if row.try_get::<i64, _>("sku_known")? != 0 {
            reads.known.0.insert(key.1.clone());
        }
        if row.try_get::<i64, _>("location_known")? != 0 {
            reads.known.1.insert(key.0.clone());
        }
        let held: i64 = row.try_get("held")?;
        if held != 0 {
            reads.held.insert(key.clone(), held);
        }
        if row.try_get::<i64, _>("has_position")? != 0 {
            let state = crate::storage::ledger::state_from_row(&row)?;
            let safety = resolve_safety_stock(
                row.try_get("position_safety")?,
                row.try_get("product_safety")?,
                row.try_get("safety_stock_default")?,
            );
            reads.positions.insert(key, (state, safety));
        }
    }
    Ok(reads)
}

/// The batch's writes in one round trip (statements of one fixed text, the
/// rows passed as JSON arrays): the reservations made (the triggers count
/// them per client), their holds, the change notifications of the holds'
/// positions, and the answers stored with the claimed keys.
const BATCH_WRITES: &str = "INSERT INTO reservations (reservation_id, client_id, channel, \
     order_ref, status, lines, created_at, expires_at, request_id) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 'active', value ->> 4, \
     value ->> 5, value ->> 6, value ->> 7 FROM json_each($1); \
     INSERT INTO reservation_holds (sku, location_id, reservation_id, quantity, expires_at) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each($2); \
     INSERT INTO outbox_changes (location_id, sku, created_at) \
     SELECT value ->> 1, value ->> 0, value ->> 5 FROM json_each($2); \
     WITH v (k, s, t, b) AS MATERIALIZED (SELECT value ->> 0, value ->> 1, value ->> 2, \
     unhex(value ->> 3) FROM json_each($3)) \
     UPDATE idempotency_keys SET response_status = v.s, response_content_type = v.t, \
     response_body = v.b FROM v WHERE idempotency_keys.key = v.k";

async fn batch_writes(
    tx: &mut Transaction<'static, Sqlite>,
    made: &[(&Row, &str)],
    completions: &[(String, StoredResponse)],
) -> Result<(), sqlx::Error> {
    use std::fmt::Write as _;

    if made.is_empty() && completions.is_empty() {
        return Ok(());
    }
    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    let mut reservations = Vec::with_capacity(made.len());
    let mut holds = Vec::with_capacity(made.len());
    for (row, request_id) in made {
        let lines = serde_json::to_string(&row.lines).map_err(encode)?;
        reservations.push(serde_json::json!([
            row.reservation_id,
            row.client_id,
            row.channel,
            row.order_ref,
            lines,
            row.created_at,
            row.expires_at,
            request_id,
        ]));
        for line in &row.lines {
            holds.push(serde_json::json!([
                line.sku,
                line.location_id,
                row.reservation_id,
                line.quantity,
                row.expires_at,
                row.created_at,
            ]));
        }
    }
    let answers: Vec<serde_json::Value> = completions
        .iter()
        .map(|(key, response)| {
            let mut body = String::with_capacity(response.body.len() * 2);
            for byte in &response.body {
                let _ = write!(body, "{byte:02x}");
            }
            serde_json::json!([key, response.status, response.content_type, body])
        })
        .collect();
    sqlx::query(BATCH_WRITES)
        .bind(serde_json::to_string(&reservations).map_err(encode)?)
        .bind(serde_json::to_string(&holds).map_err(encode)?)
        .bind(serde_json::to_string(&answers).map_err(encode)?)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// One reservation of a batch, decided in memory against the counts and
/// holds of those before it (which it then joins when it is made).
fn decide(
    pending: &Pending,
    active: &mut HashMap<String, i64>,
    (known_skus, known_locations): &(HashSet<String>, HashSet<String>),
    positions: &HashMap<Key, (PositionState, i64)>,
    held: &mut HashMap<Key, i64>,
    now: i64,
) -> Outcome {
    let request = &pending.request;
    let count = active.entry(request.client_id.clone()).or_insert(0);
    if *count >= request.max_active_per_client {
        return Err(ReserveRefusal::TooManyActive(request.max_active_per_client));
    }
    let unknown = unknown_lines(&request.lines, known_skus, known_locations);
    if !unknown.is_empty() {
        return Err(ReserveRefusal::Unknown(unknown));
    }
    let short = shortages(&request.lines, positions, held);
    if !short.is_empty() {
        return Err(ReserveRefusal::InsufficientStock(short));
    }
    *count += 1;
    for line in &request.lines {
        *held
            .entry((line.location_id.clone(), line.sku.clone()))
            .or_default() += line.quantity;
    }
    Ok(pending.row.clone().view(now))
}

impl Store {
    /// Holds every line or none. `Ok(Err(_))` is a refusal (nothing held).
    pub async fn reserve(
        &self,
        request: &NewReservation,
    ) -> Result<Result<Reservation, ReserveRefusal>, sqlx::Error> {
        match self.reserve_keyed(request, None).await? {
            Keyed::Decided(outcome, _) => Ok(outcome),
            Keyed::Key(_) => Err(sqlx::Error::Protocol(
                "a reservation without a key was answered from a key".into(),
            )),
        }
    }

    /// [`Store::reserve`] with the request's `Idempotency-Key` (`claim`,
    /// with the route's answer for each outcome): on both backends the key
    /// is claimed, the reservation decided and the answer stored in one
    /// transaction (see [`InlineClaim`]); a key that is not new decides
    /// nothing.
    pub async fn reserve_keyed(
        &self,
        request: &NewReservation,
        claim: Option<(&InlineClaim, Render)>,
    ) -> Result<Keyed, sqlx::Error> {
        use super::BeginWrite as _;
        let now = self.now();
        let ttl_micros = i64::try_from(request.ttl_seconds)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000);
        let row = Row {
            reservation_id: uuid::Uuid::now_v7().to_string(),
            client_id: request.client_id.clone(),
            channel: request.channel.clone(),
            order_ref: request.order_ref.clone(),
            status: ReservationStatus::Active,
            lines: request.lines.clone(),
            created_at: now,
            expires_at: now.saturating_add(ttl_micros),
            closed_at: None,
        };
        let keys: BTreeSet<Key> = request
            .lines
            .iter()
            .map(|l| (l.location_id.clone(), l.sku.clone()))
            .collect();
        // SQLite: decided and written with the other waiting reservations
        // (see `RESERVATION_BATCH`).
        if let super::Db::Sqlite { .. } = self.db() {
            let pending = Pending {
                request: request.clone(),
                row,
                keys,
                claim: claim.map(|(claim, render)| (Claim::from(claim), render)),
            };
            return self.batched(&RESERVATION_BATCH, pending).await;
        }
        let Some((claim, render)) = claim else {
            let outcome = crate::transact!(
                self,
                sqlite_reservations,
                postgres_reservations,
                |tx, backend| {
                    backend::attempt(&mut tx, self.master_cache(), request, &row, &keys, now)
                        .await?
                }
            )?;
            return Ok(Keyed::Decided(outcome, None));
        };
        // PostgreSQL: the key is claimed (its row locked), the reservation
        // decided and the answer stored in one transaction, as SQLite's
        // batch does: a committed reservation always has its answer, and a
        // failed one leaves the key free.
        let super::Db::Postgres(pool) = self.db() else {
            return Err(sqlx::Error::Protocol("SQLite reserves in batches".into()));
        };
        let claim = Claim::from(claim);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let keyed: Result<Keyed, sqlx::Error> = async {
                let mut tx = pool.begin_write().await?;
                let decision = super::idempotency::claim_in_postgres(&mut tx, &claim).await?;
                if decision != Begin::Started {
                    return Ok(Keyed::Key(decision));
                }
                let (outcome, _) = postgres_reservations::attempt(
                    &mut tx,
                    self.master_cache(),
                    request,
                    &row,
                    &keys,
                    now,
                )
                .await?;
                let Some(stored) = render(&outcome) else {
                    // Not the request's answer: nothing kept, the key free.
                    tx.rollback().await?;
                    return Ok(Keyed::Decided(outcome, None));
                };
                super::idempotency::complete_in_postgres(&mut tx, &claim.key, &stored).await?;
                tx.commit().await?;
                Ok(Keyed::Decided(outcome, Some(stored)))
            }
            .await;
            match keyed {
                Err(error)
                    if attempt < super::ledger::PG_ATTEMPTS
                        && super::ledger::is_retryable(&error) =>
                {
                    tracing::debug!(attempt, "keyed reservation retried: {error}");
                }
                other => return other,
            }
        }
    }

    /// SQLite's reservation batches so far: (runs, reservations they
    /// carried). Both 0 on PostgreSQL.
    pub fn reservation_batches(&self) -> (u64, u64) {
        self.write_group().reservations.runs()
    }

    /// One reservation, with its status as of now.
    pub async fn reservation(
        &self,
        reservation_id: &str,
    ) -> Result<Option<Reservation>, sqlx::Error> {
        let now = self.now();
        let row = crate::on_reader!(self.db(), |pool| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM reservations WHERE reservation_id = $1"
            )))
            .bind(reservation_id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(Row::from_sql)
            .transpose()?
        });
        Ok(row.map(|row| row.view(now)))
    }

    /// Releases an active reservation; releasing a released one again
    /// answers it unchanged.
    pub async fn release(
        &self,
        reservation_id: &str,
        owner: &str,
    ) -> Result<CloseOutcome, sqlx::Error> {
        self.end_reservation(
            reservation_id,
            owner,
            ReservationStatus::Released,
            None,
            None,
        )
        .await?
        .unkeyed()
    }

    /// Fulfils an active, unexpired reservation: journals one sale per line
    /// and drops the holds, in one transaction. Fulfilling a fulfilled one
    /// again answers it unchanged.
    pub async fn fulfill(
        &self,
        reservation_id: &str,
        owner: &str,
        ctx: &IngestContext,
    ) -> Result<CloseOutcome, sqlx::Error> {
        self.end_reservation(
            reservation_id,
            owner,
            ReservationStatus::Fulfilled,
            Some(ctx),
            None,
        )
        .await?
        .unkeyed()
    }

    /// Releases (`target` released, no `ctx`) or fulfils (`target`
    /// fulfilled, with the sales' `ctx`) a reservation of `owner`, with its
    /// `Idempotency-Key` claimed and answered in the same transaction.
    pub async fn end_reservation(
        &self,
        reservation_id: &str,
        owner: &str,
        target: ReservationStatus,
        ctx: Option<&IngestContext>,
        keyed: Option<&KeyedWrite<'_, CloseOutcome>>,
    ) -> Result<super::idempotency::Keyed<CloseOutcome>, sqlx::Error> {
        let now = self.now();
        crate::keyed_transact!(
            self,
            keyed,
            sqlite_reservations,
            postgres_reservations,
            |tx, backend| {
                match backend::load(&mut tx, reservation_id).await? {
                    // Another client's reservation does not exist for this one.
                    None => (Err(CloseRefusal::NotFound), false),
                    Some(row) if row.client_id != owner => (Err(CloseRefusal::NotFound), false),
                    Some(row) if row.status == target => (Ok(row.view(now)), false),
                    Some(mut row) => match row.status_at(now) {
                        ReservationStatus::Active => {
                            let mut refused = None;
                            if let Some(ctx) = ctx {
                                let results = backend::apply_inputs(
                                    &mut tx,
                                    self.master_cache(),
                                    &row.sales(now),
                                    ctx,
                                    now,
                                )
                                .await?;
                                refused = results.into_iter().find(|r| !sale_counts(r));
                            }
                            match refused {
                                Some(result) => (
                                    Err(CloseRefusal::SaleNotApplied(format!(
                                        "{}: {}",
                                        result.event_id,
                                        result.reason.unwrap_or_default()
                                    ))),
                                    false,
                                ),
                                None => {
                                    backend::close(&mut tx, &mut row, target, now).await?;
                                    (Ok(row.view(now)), true)
                                }
                            }
                        }
                        ReservationStatus::Expired if row.status == ReservationStatus::Active => {
                            // Past its expiry but not yet swept: record it now.
                            backend::close(&mut tx, &mut row, ReservationStatus::Expired, now)
                                .await?;
                            (
                                Err(CloseRefusal::NotActive(ReservationStatus::Expired)),
                                true,
                            )
                        }
                        status => (Err(CloseRefusal::NotActive(status)), false),
                    },
                }
            }
        )
    }

    /// Moves every active reservation past its expiry to `expired`, in
    /// batches. Returns how many.
    pub async fn expire_due(&self) -> Result<usize, sqlx::Error> {
        // Look first (a read): most sweeps find nothing and need not take
        // the writer.
        let now = self.now();
        let due: Option<String> = crate::on_reader!(self.db(), |pool| {
            sqlx::query_scalar(
                "SELECT reservation_id FROM reservations WHERE status = 'active' \
                 AND expires_at <= $1 LIMIT 1",
            )
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        if due.is_none() {
            return Ok(0);
        }
        let mut expired = 0;
        loop {
            let now = self.now();
            let count = crate::transact!(
                self,
                sqlite_reservations,
                postgres_reservations,
                |tx, backend| {
                    let mut rows = backend::due(&mut tx, now, SWEEP_BATCH).await?;
                    for row in &mut rows {
                        backend::close(&mut tx, row, ReservationStatus::Expired, now).await?;
                    }
                    (rows.len(), !rows.is_empty())
                }
            )?;
            expired += count;
            if count < usize::try_from(SWEEP_BATCH).unwrap_or(usize::MAX) {
                return Ok(expired);
            }
        }
    }
}

/// Whether a fulfilment sale took effect (applied now, or by an earlier
/// attempt whose transaction committed).
fn sale_counts(result: &EventResult) -> bool {
    matches!(result.status, EventStatus::Applied | EventStatus::Duplicate)
}

/// The lines naming a sku or location the registry does not know: (line,
/// field, value).
fn unknown_lines(
    lines: &[ReservationLine],
    known_skus: &HashSet<String>,
    known_locations: &HashSet<String>,
) -> Vec<(usize, &'static str, String)> {
    let mut unknown = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if !known_skus.contains(&line.sku) {
            unknown.push((index, "sku", line.sku.clone()));
        }
        if !known_locations.contains(&line.location_id) {
            unknown.push((index, "location_id", line.location_id.clone()));
        }
    }
    unknown
}

/// The lines that do not fit in what is available now.
fn shortages(
    lines: &[ReservationLine],
    positions: &HashMap<Key, (PositionState, i64)>,
    held: &HashMap<Key, i64>,
) -> Vec<ShortLine> {
    lines
        .iter()
        .enumerate()
        .filter_map(|(index, line)| {
            let key: Key = (line.location_id.clone(), line.sku.clone());
            let available = positions.get(&key).map_or(0, |(state, safety)| {
                let mut state = state.clone();
                state.reserved = held.get(&key).copied().unwrap_or(0);
                state.view(*safety).available
            });
            (line.quantity > available).then(|| ShortLine {
                line: index,
                sku: line.sku.clone(),
                location_id: line.location_id.clone(),
                requested: line.quantity,
                available,
            })
        })
        .collect()
}
